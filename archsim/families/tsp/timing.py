"""Numba timing kernel of the groq-like family: cycles of each instruction, issue to last write.

One instruction is one pass of a functional slice over a tensor (a tile pass of an MXM plane,
a chain of vector ops on the VXM, a lane reduction on the SXM, a burst of MEM writes, a C2C
transfer). The per-vector pipelining inside a pass is counted analytically: a stream of V
vectors through a pipeline of depth D takes D + V - 1 cycles. Every helper of the kernel lives
in this file and every number arrives as an argument. Equations: docs/arch/groq-like.md;
hand counts they reproduce: shared/reference/groq-tsp.md §6.
"""

from __future__ import annotations

import math

import numpy as np

from archsim.core.isa import Timing
from archsim.core.jit import njit

# opcodes, in this order
OPCODES = ["mxm", "vxm", "sxm", "mem", "c2c"]
MXM, VXM, SXM, MEM, C2C = range(5)
# MXM modes (g column of an mxm instruction)
MODE_INT8, MODE_FP8, MODE_FP16 = range(3)


def serialise_cycles(vector_bytes: int, clock_hz: float, link_bw: float) -> int:
    """Cycles one link needs to put one vector on the wire."""
    return math.ceil(vector_bytes * clock_hz / link_bw - 1e-9)


@njit
def _hops(slices, hop_slices, hop_cyc):
    return ((slices + hop_slices - 1) // hop_slices) * hop_cyc


@njit
def mxm_cycles(
    rows, tiles, k_rows, mode, w_el, warm, rate, R, W, wf, af, res, streams, lat, swap, skew
):
    """One plane streams ``tiles`` weight tiles of ``k_rows`` x plane_dim and multiplies each
    by ``rows`` activation vectors.

    install I = ceil(k_rows x w_el / streams); rows cost C = rows / rate cycles;
    first row enters at t0 = max(R + wf + I, R + af) (cold) or R + af (warm);
    tiles after the first are loaded into the LW buffer while the plane computes, so each
    costs max(I, C + swap); the last row leaves ``lat`` cycles after it enters, its results
    cross ``res`` hops, are written (W), and the last superlane finishes ``skew`` later.
    """
    inst = (k_rows * w_el + streams - 1) // streams
    c = int(math.ceil(rows / rate[mode] - 1e-9))
    t0 = R + af if warm else max(R + wf + inst, R + af)  # warm: tile already installed
    period = max(inst, c + swap)
    return t0 + (tiles - 1) * period + (c - 1) + lat + res + W + skew


@njit
def vxm_cycles(vectors, n_int, n_fp, n_cast, n_tr, hops, R, W, alus, l_int, l_fp, l_cast, l_tr):
    """A chain of ALU ops over ``vectors`` vectors: the chain's ALUs take one vector per cycle
    each, so the stream occupies ceil(vectors x ops / alus) cycles plus the chain latency."""
    ops = n_int + n_fp + n_cast + n_tr
    work = (vectors * ops + alus - 1) // alus
    depth = n_int * l_int + n_fp * l_fp + n_cast * l_cast + n_tr * l_tr
    return R + hops + work + depth + W


@njit
def tsp_durations(
    opcode,
    m,
    n,
    k,
    g,
    h,
    aux,
    rate,
    hop_slices,
    hop_cyc,
    R,
    W,
    skew,
    wf_sl,
    af_sl,
    res_sl,
    streams,
    mxm_lat,
    swap,
    alus,
    l_int,
    l_fp,
    l_cast,
    l_tr,
    sxm_lat,
    ser,
    flight,
    recv,
    fwd,
):
    """Cycles of every instruction (issue -> last result written on the last superlane).

    Columns: mxm m=rows n=tiles k=k_rows g=mode h=weight bytes aux=warm;
    vxm m=vectors n/k/g/h = int/fp/cast/transcendental ops aux=slices travelled;
    sxm m=vectors n=shift steps aux=slices; mem m=vectors aux=slices;
    c2c m=vectors per link n=link hops aux=on-chip slices (both ends).
    """
    n_ins = opcode.shape[0]
    out = np.zeros(n_ins, dtype=np.int64)
    wf = _hops(wf_sl, hop_slices, hop_cyc)
    af = _hops(af_sl, hop_slices, hop_cyc)
    res = _hops(res_sl, hop_slices, hop_cyc)
    for i in range(n_ins):
        op = opcode[i]
        if op == MXM:
            warm = aux[i] == 1
            out[i] = mxm_cycles(
                m[i],
                n[i],
                k[i],
                g[i],
                h[i],
                warm,
                rate,
                R,
                W,
                wf,
                af,
                res,
                streams,
                mxm_lat,
                swap,
                skew,
            )
        elif op == VXM:
            hops = _hops(aux[i], hop_slices, hop_cyc)
            out[i] = vxm_cycles(
                m[i], n[i], k[i], g[i], h[i], hops, R, W, alus, l_int, l_fp, l_cast, l_tr
            )
        elif op == SXM:
            # log-depth lane reduction: each step a shift (SXM) and an add (VXM), rows pipelined
            hops = _hops(aux[i], hop_slices, hop_cyc)
            out[i] = R + hops + m[i] + n[i] * (sxm_lat + l_int) + W + skew
        elif op == MEM:
            out[i] = R + _hops(aux[i], hop_slices, hop_cyc) + m[i] + W
        elif op == C2C:
            # Read, stream to the C2C block, serialise every vector, fly each hop (an
            # intermediate chip receives, turns around and re-serialises one vector before
            # forwarding: cut-through), receive, stream to the slice, Write.
            hops = _hops(aux[i], hop_slices, hop_cyc)
            nh = n[i]
            out[i] = R + hops + m[i] * ser + nh * flight + (nh - 1) * (fwd + ser) + recv + W
    return out


# ---- glue: the config -> the kernel's arguments (plain Python) ------------------------------
def link_cycles(p) -> tuple[int, int]:
    """(serialisation cycles per vector per link, flight cycles per hop)."""
    c, ln = p.chip, p.links
    ser = serialise_cycles(c.vector_bytes, c.clock_hz, ln.link_bw_bytes_per_s)
    return ser, round(ln.link_latency_s * c.clock_hz)


def tsp_timing(stream, p) -> Timing:
    """Cycles of every pass. A pass holds its functional unit from issue to its last write,
    except a C2C transfer, whose port is free again once it has serialised its vectors (the
    flight and the receiving end are in the wire and the peer, not the port)."""
    c, m, v, x, pl, ln = p.chip, p.mem, p.vxm, p.mxm, p.place, p.links
    ser, flight = link_cycles(p)
    rate = np.array([x.int8_rate_fraction, x.fp8_rate_fraction, x.fp16_rate_fraction])
    rate = np.where(rate > 0, rate, 1e-30)  # an absent mode is refused at lowering
    s = stream
    cycles = tsp_durations(
        s.opcode, s.m, s.n, s.k, s.g, s.h, s.aux, rate,
        c.stream_hop_slices, c.stream_hop_cycles, m.read_latency_cycles,
        m.write_latency_cycles, (c.superlanes - 1) * c.superlane_skew_cycles,
        pl.weight_feed_slices, pl.act_feed_slices, pl.result_slices,
        x.weight_streams_per_plane, x.latency_cycles, x.buffer_swap_cycles,
        v.alus_per_lane, v.int_latency_cycles, v.fp_latency_cycles, v.cast_latency_cycles,
        v.transcendental_latency_cycles, p.sxm.latency_cycles,
        ser, flight, ln.receive_cycles, ln.forward_cycles,
    )  # fmt: skip
    interval = np.full(len(cycles), -1, dtype=np.int64)
    c2c = s.opcode == C2C
    # Read, the stream to the C2C block, then one vector serialised after another
    hops = -(-s.aux[c2c] // c.stream_hop_slices) * c.stream_hop_cycles
    interval[c2c] = m.read_latency_cycles + hops + s.m[c2c] * ser
    return Timing(
        work=cycles, latency=np.zeros_like(cycles), interval=interval, resource_bw=np.zeros(0)
    )
