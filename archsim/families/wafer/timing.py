"""Numba timing kernel of the cerebras-like family: cycles of each instruction.

One instruction is one phase of a layer on its region of PEs, timed for the representative
PE (every PE of a region runs the same program on its own tile) or the representative line
of PEs (every row, or every column, reduces at once over its own links):

* ``mac`` / ``vec``: local vector (DSD) instructions on one PE. ``m`` instructions of ``n``
  elements each at the SIMD width of class ``g`` (limited by the SRAM ports), each paying a
  fixed issue cost, plus ``aux`` task activations::

      cycles = m x (ceil(n / width[g]) + dsd_op_overhead) + aux x task_cycles

* ``allreduce``: a reduction and broadcast of ``n`` wavelets along a line of ``m`` PEs with
  algorithm ``g`` (``k`` = 1: a broadcast only). Priced as HPDC24's model
  ``max(C, L) + (2 T_R + 1) D`` split into its parts: hops H (critical path, alpha each),
  dependent receive-add-send stages S, software relays R (beta each) and C wavelets
  streamed through the busiest link or ramp. ``work`` is C (the part that shares link
  bandwidth with other flows); ``latency`` is the rest::

      work    = C
      latency = H x hop + S x (2 ramp + 1) + R x relay + 2 ramp + aux x route_switch + task

  ==============  ====================================  ================  ==================
  algorithm       hops H                                stages S          streamed C
  ==============  ====================================  ================  ==================
  pipeline        2 (N - 1)                             N - 1             v
  two_level       ceil((q-1)/2) + q ceil((G-1)/2)       ceil((q-1)/2)     v
  (K=2 tree)      + ceil((N-1)/2); q = ceil(sqrt N),    + ceil((G-1)/2)
                  G = ceil(N / q)
  tree (binary)   2 ceil((N - 1) / 2)                   ceil(log2 N)      v ceil(log2 N)
  ring (folded)   4 (N - 1); relays R = 2 (N - 1)       0                 2 (N-1) ceil(v/N)
  ==============  ====================================  ================  ==================

  Routes a router needs: 2 (pipeline, ring), 3 (two_level, at the root), ceil(log2 N) + 1
  (tree); beyond the colors left free (``colors_per_router - reserved_colors -
  stream_colors``) every missing route is a software relay (R += 1 each).

* ``xfer``: ``n`` wavelets per lane from one region to another over ``h`` parallel lanes,
  ``m`` hops away. ``work`` = n; the flight (``m x hop + 2 ramp``) is the lag of the consumer's
  streaming dependency, or, for a transfer nobody on the wafer consumes (``k`` = 1), its
  latency.
* ``wafer_xfer``: the same across a wafer boundary: ``link_bytes`` over the system's
  off-wafer I/O, ``m`` on-wafer hops to and from the wafer edges; ``work`` = the longer of the
  link serialisation and the fabric streaming; flight = link latency + hops.
* ``weight_load``: ``offchip_bytes`` of weights from MemoryX at its bandwidth; ``latency`` =
  ``aux`` SwarmX levels x memoryx_latency.
* ``gemm`` (prefill, MeshGEMM after WaferLLM §5): ``m`` compute-shift steps, each ``h`` DSD
  instructions of ``n`` elements against a shift of ``k`` wavelets over 2 hops::

      cycles = (m x hop + k) + m x max(h x (ceil(n / width[mac]) + o), k + 2 hop + 2 ramp) + task

Equations and sources: docs/arch/cerebras-like.md; shared/reference/cerebras-wse.md §1, §2, §4.
"""

from __future__ import annotations

import math

import numpy as np

from archsim.core.isa import Timing
from archsim.core.jit import njit

OPCODES = ["mac", "vec", "allreduce", "xfer", "wafer_xfer", "weight_load", "gemm"]
MAC, VEC, ALLREDUCE, XFER, WAFER_XFER, WEIGHT_LOAD, GEMM = range(7)
# SIMD classes (g column of mac / vec)
CLS_MAC, CLS_ADD16, CLS_ADD32, CLS_MAX16 = range(4)
# reduction algorithms (g column of allreduce), in the order of WaferMapping.allreduce_algo
ALGOS = ["two_level", "tree", "ring", "pipeline"]
TWO_LEVEL, TREE, RING, PIPELINE = range(4)
ACC_BYTES = 2  # @fmach accumulates fp16 partial sums in SRAM (WaferLLM decode kernels)


@njit
def _ceil_div(a, b):
    return (a + b - 1) // b


@njit
def _log2_ceil(n):
    lv = 0
    while (1 << lv) < n:
        lv += 1
    return lv


@njit
def allreduce_terms(alg, n_pes, v, bcast_only):
    """(hops, stages, relays, streamed wavelets, routes needed) of one line's collective."""
    if n_pes <= 1:
        return 0, 0, 0, 0, 0
    if bcast_only:  # router multicast from the middle: no dependent stage
        return (n_pes - 1 + 1) // 2, 0, 0, v, 1
    if alg == PIPELINE:
        return 2 * (n_pes - 1), n_pes - 1, 0, v, 2
    if alg == TWO_LEVEL:
        q = 1
        while q * q < n_pes:
            q += 1
        groups = _ceil_div(n_pes, q)
        s1 = (q - 1 + 1) // 2
        s2 = (groups - 1 + 1) // 2
        return s1 + q * s2 + (n_pes - 1 + 1) // 2, s1 + s2, 0, v, 3
    if alg == TREE:
        lv = _log2_ceil(n_pes)
        return 2 * ((n_pes - 1 + 1) // 2), lv, 0, v * lv, lv + 1
    # RING: reduce-scatter + all-gather on a folded ring (neighbours at most 2 hops apart)
    steps = 2 * (n_pes - 1)
    return 2 * steps, 0, steps, steps * _ceil_div(v, n_pes), 2


@njit
def wafer_cycles(
    opcode,
    m,
    n,
    k,
    g,
    h,
    aux,
    link_bytes,
    offchip_bytes,
    width,
    o_instr,
    task,
    hop,
    ramp,
    relay,
    switch,
    free_routes,
    io_bytes_per_cycle,
    link_flight,
    memx_bytes_per_cycle,
    memx_latency,
):  # pragma: no cover - jitted
    """(work, latency) cycles of every instruction (column meanings: module docstring)."""
    n_ins = opcode.shape[0]
    work = np.zeros(n_ins, dtype=np.int64)
    lat = np.zeros(n_ins, dtype=np.int64)
    stage = 2 * ramp + 1
    for i in range(n_ins):
        op = opcode[i]
        if op in (MAC, VEC):
            work[i] = m[i] * (_ceil_div(n[i], width[g[i]]) + o_instr) + aux[i] * task
        elif op == ALLREDUCE:
            hops, stages, relays, c, routes = allreduce_terms(g[i], m[i], n[i], k[i] == 1)
            if m[i] > 1:
                if routes > free_routes:
                    relays += routes - free_routes
                work[i] = c
                lat[i] = (
                    hops * hop + stages * stage + relays * relay + 2 * ramp + aux[i] * switch + task
                )
        elif op == XFER:
            work[i] = n[i]
            if k[i] == 1:
                lat[i] = m[i] * hop + 2 * ramp
        elif op == WAFER_XFER:
            ser = np.int64(math.ceil(link_bytes[i] / io_bytes_per_cycle - 1e-9))
            work[i] = max(ser, n[i])
            if k[i] == 1:
                lat[i] = link_flight + m[i] * hop + 2 * ramp
        elif op == WEIGHT_LOAD:
            work[i] = np.int64(math.ceil(offchip_bytes[i] / memx_bytes_per_cycle - 1e-9))
            lat[i] = aux[i] * memx_latency
        elif op == GEMM:
            compute = h[i] * (_ceil_div(n[i], width[CLS_MAC]) + o_instr)
            shift = k[i] + 2 * hop + 2 * ramp
            work[i] = (m[i] * hop + k[i]) + m[i] * max(compute, shift) + task
    return work, lat


# ---- glue: the config -> the kernel's arguments (plain Python) ------------------------------
def simd_widths(p) -> np.ndarray:
    """Elements per cycle of each SIMD class: the datapath width, or fewer where the SRAM
    ports cannot feed it (2 reads + 1 write of ``sram_port_bytes`` per cycle; an fp16 FMAC
    reads a weight and a partial sum and writes the partial sum back)."""
    e = p.pe
    rd, wr = e.sram_reads_per_cycle * e.sram_port_bytes, e.sram_writes_per_cycle * e.sram_port_bytes
    w = [
        min(e.simd_fp16_fmac, rd // (2 + ACC_BYTES), wr // ACC_BYTES),
        min(e.simd_fp16_add, rd // 4, wr // 2),
        min(e.simd_fp32_add, rd // 8, wr // 4),
        min(e.simd_fp16_max, rd // 4, wr // 2),
    ]
    return np.array([max(1, x) for x in w], dtype=np.int64)


def free_routes(p) -> int:
    """Routes a router has left for one collective."""
    f = p.fabric
    return f.colors_per_router - f.reserved_colors - f.stream_colors


def xfer_flight_cycles(hops: int, p) -> int:
    """Cycles from a wavelet leaving its region to it reaching a PE ``hops`` away."""
    return int(hops) * p.fabric.hop_cycles + 2 * p.fabric.ramp_cycles


def wafer_flight_cycles(hops: int, p) -> int:
    """Same across a wafer boundary: link latency plus the on-wafer hops at both ends."""
    return round(p.system.wafer_link_latency_s * p.wafer.clock_hz) + xfer_flight_cycles(hops, p)


def io_bytes_per_cycle(p) -> float:
    return p.system.io_bw_bytes_per_s / p.wafer.clock_hz


def memx_bytes_per_cycle(p) -> float:
    return p.system.memoryx_bw_bytes_per_s / p.wafer.clock_hz


def cycles_of(cols: dict[str, np.ndarray], p) -> tuple[np.ndarray, np.ndarray]:
    """(work, latency) of instruction columns (a stream's, or candidate rows the planner
    builds to compare placements)."""
    f = p.fabric

    def col(name, dtype):
        return np.ascontiguousarray(cols[name], dtype=dtype)

    return wafer_cycles(
        col("opcode", np.int64), col("m", np.int64), col("n", np.int64), col("k", np.int64),
        col("g", np.int64), col("h", np.int64), col("aux", np.int64),
        col("link_bytes", np.float64), col("offchip_bytes", np.float64),
        simd_widths(p), p.pe.dsd_op_overhead_cycles, p.pe.task_cycles, f.hop_cycles,
        f.ramp_cycles, f.relay_cycles, f.route_switch_cycles, free_routes(p),
        io_bytes_per_cycle(p), round(p.system.wafer_link_latency_s * p.wafer.clock_hz),
        memx_bytes_per_cycle(p), round(p.system.memoryx_latency_s * p.wafer.clock_hz),
    )  # fmt: skip


def resource_bandwidths(stream, p) -> np.ndarray:
    """Bytes per cycle of each shared resource, from its name: a region's row or column
    bundle or a boundary between regions (``...#<lanes>``: lanes x one wavelet per cycle),
    the off-wafer link of a wafer pair (``wafer<a>>wafer<b>``), MemoryX (``memoryx``)."""
    out = np.zeros(len(stream.resource_names))
    for r, name in enumerate(stream.resource_names):
        if name == "memoryx":
            out[r] = memx_bytes_per_cycle(p)
        elif "#" in name:
            out[r] = int(name.rpartition("#")[2]) * p.fabric.wavelet_bytes
        else:
            out[r] = io_bytes_per_cycle(p)
    return out


def wafer_timing(stream, p) -> Timing:
    """Work and latency of every instruction. A region's PEs hold their unit until the
    result is ready; a transfer holds its link unit while it streams."""
    work, lat = cycles_of(stream.cols, p)
    return Timing(
        work=work,
        latency=lat,
        interval=np.full(len(work), -1, dtype=np.int64),
        resource_bw=resource_bandwidths(stream, p),
    )
