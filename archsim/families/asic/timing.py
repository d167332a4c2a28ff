"""Numba timing kernel of the etched-like family: cycles of every pass of a fixed stage.

Every helper a kernel calls lives in this file; no module globals are read inside kernels
(every number is an argument). Equations: docs/arch/etched-like.md.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from archsim.core.isa import Timing
from archsim.core.jit import njit

OPCODES = ["gemm", "attn", "vec", "allreduce", "send", "host"]
GEMM, ATTN, VEC, ALLREDUCE, SEND, HOST = range(6)
# rate codes (the ``aux`` column of a GEMM, ``h`` of an attention pass)
RATE_FP8, RATE_16BIT = 0, 1


class AsicTiming(NamedTuple):
    """The config's scalars as the one record the numba kernel takes."""

    dim: int  # array side
    load: int  # cycles to install one weight tile
    mx_latency: int
    bf16_rate: float  # rows per cycle at 16 bit (fp8: 1)
    attn_macs: float  # MACs per cycle of the attention unit at fp8
    exp_rate: float
    kv_rate: float  # B per cycle
    attn_latency: int
    lanes: float
    vec_latency: int
    link_bpc: float  # B per cycle, one link
    link_latency: int
    pcie_bpc: float
    pcie_latency: int


def _cycles(seconds: float, clock_hz: float) -> int:
    """Whole cycles of a duration (1e-5 s x 1.5 GHz is 15,000, not 15,001)."""
    return math.ceil(seconds * clock_hz - 1e-6)


def timing_record(p) -> AsicTiming:
    c, m, a, v, ln, h = p.chip, p.matrix, p.attention, p.vector, p.links, p.host
    f = c.clock_hz
    return AsicTiming(
        dim=c.array_dim,
        load=m.weight_load_cycles,
        mx_latency=m.pipeline_latency_cycles,
        bf16_rate=c.bf16_rate_fraction,
        attn_macs=float(a.arrays * c.array_dim**2),
        exp_rate=float(a.exp_per_cycle),
        kv_rate=a.kv_bytes_per_cycle,
        attn_latency=a.latency_cycles,
        lanes=float(v.lanes),
        vec_latency=v.latency_cycles,
        link_bpc=ln.link_bw_bytes_per_s / f,
        link_latency=_cycles(ln.link_latency_s, f),
        pcie_bpc=h.pcie_bw_bytes_per_s / f,
        pcie_latency=_cycles(h.pcie_round_trip_s, f),
    )


def latency_cycles(opcode: str, q: AsicTiming) -> int:
    """Cycles from a stage starting a pass to its first results reaching the next stage (the
    lag of a streaming dependency) and from its last input to its last result."""
    return {
        "gemm": q.mx_latency,
        "attn": q.attn_latency,
        "vec": q.vec_latency,
        "allreduce": 2 * q.link_latency,  # reduce-scatter, then all-gather
        "send": q.link_latency,
        "host": q.pcie_latency,
    }[opcode]


@njit
def gemm_cycles(rows, n, k, arrays, rate, dim, load):
    """One engine's pass over [rows, k] @ [k, n]: ceil(k/D) x ceil(n/D) weight tiles of D x D
    spread over its arrays; each array streams the rows through one installed tile per pass
    (``rate`` rows per cycle) while the next tile loads behind it (double-buffered), so a pass
    lasts max(rows / rate, load)."""
    tiles = ((k + dim - 1) // dim) * ((n + dim - 1) // dim)
    passes = (tiles + arrays - 1) // arrays
    per_pass = max(math.ceil(rows / rate), load)
    return passes * per_pass


@njit
def asic_durations(opcode, m, n, k, g, h, aux, flops, q):
    """(work, latency) in cycles of every instruction.

    Columns per opcode (lower.py): GEMM m rows, n, k, g = arrays, aux = rate code; ATTN
    flops, k = softmax exponentials, aux = K/V bytes consumed, h = rate code; VEC m x n
    elements; ALLREDUCE aux = bytes over each link; SEND aux = bytes; HOST aux = PCIe bytes."""
    n_ins = opcode.shape[0]
    work = np.zeros(n_ins, dtype=np.int64)
    latency = np.zeros(n_ins, dtype=np.int64)
    for i in range(n_ins):
        op = opcode[i]
        if op == GEMM:
            rate = 1.0 if aux[i] == 0 else q.bf16_rate
            work[i] = gemm_cycles(m[i], n[i], k[i], g[i], rate, q.dim, q.load)
            latency[i] = q.mx_latency
        elif op == ATTN:
            rate = 1.0 if h[i] == 0 else q.bf16_rate
            macs = math.ceil(flops[i] / (2.0 * q.attn_macs * rate))
            exps = math.ceil(k[i] / q.exp_rate)
            kv = math.ceil(aux[i] / q.kv_rate)
            work[i] = max(macs, max(exps, kv))
            latency[i] = q.attn_latency
        elif op == VEC:
            work[i] = math.ceil(m[i] * n[i] / q.lanes)
            latency[i] = q.vec_latency
        elif op == ALLREDUCE:
            work[i] = math.ceil(aux[i] / q.link_bpc)
            latency[i] = 2 * q.link_latency
        elif op == SEND:
            work[i] = math.ceil(aux[i] / q.link_bpc)
            latency[i] = q.link_latency
        elif op == HOST:
            work[i] = math.ceil(aux[i] / q.pcie_bpc)
            latency[i] = q.pcie_latency
    return work, latency


def resource_bandwidths(names: list[str], p) -> np.ndarray:
    """Bytes per cycle of each stream resource, by its kind (``chip3.hbm`` -> the HBM)."""
    f = p.chip.clock_hz
    per_kind = {
        "hbm": p.memory.hbm_peak_bw_bytes_per_s * p.memory.hbm_efficiency / f,
        "link": p.links.link_bw_bytes_per_s / f,
        "pcie": p.host.pcie_bw_bytes_per_s / f,
    }
    return np.array([per_kind[name.rsplit(".", 1)[-1]] for name in names], dtype=np.float64)


def asic_timing(stream, p) -> Timing:
    """Every pass holds its stage until its result is ready (interval -1): a stage takes the
    next tile only once this one has streamed through it."""
    s = stream
    work, latency = asic_durations(
        s.opcode, s.m, s.n, s.k, s.g, s.h, s.aux, s.flops, timing_record(p)
    )
    return Timing(
        work=work,
        latency=latency,
        interval=np.full(len(s), -1, dtype=np.int64),
        resource_bw=resource_bandwidths(s.resource_names, p),
    )
