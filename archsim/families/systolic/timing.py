"""Numba timing kernel of the matx-like family: cycles of each instruction.

A GEMM instruction runs on all arrays of a chip (``chipS.arrays``); its opcode names its
dataflow and split (``gemm.ws.s4``: weight-stationary, each array split into 4 x 4
sub-arrays). Its cycles are the fold model of SCALE-Sim (Samajdar et al., ISPASS 2020;
``scalesim/compute/systolic_compute_{ws,os,is}.py``), extended with splitting, several arrays
and double-buffered preload. For a GEMM ``[M, K] @ [K, N]`` on an r x c (sub-)array:

=========  ==============  ==============  =================
dataflow   spatial rows    spatial cols    streamed T
=========  ==============  ==============  =================
ws         K               N               M
os         M               N               K
is         K               M               N
=========  ==============  ==============  =================

``folds = ceil(rows / r) x ceil(cols / c)`` per GEMM instance; ``g`` instances' folds are
dealt to the ``arrays x s^2`` sub-arrays (when there are fewer folds than sub-arrays the
streamed dimension is cut into ``q`` parts that run on copies of the stationary tile). The
busiest sub-array runs ``f`` folds of ``T'`` streamed rows each:

* preload ``P = ceil(r / preload_rows_per_cycle)`` (ws, is: the stationary operand shifts in
  row by row; os: 0, both operands stream);
* one fold streams ``S = ceil(T' / rate)`` rows and its last result leaves ``r + c - 2``
  cycles after its last row entered (input skew and output drain), ``D = S + r + c - 2``;
* serial folds (SCALE-Sim): ``f x (P + D)`` — ws/is ``2r + c + T - 2`` per fold;
* double-buffered (``fold_overlap``): ``P + (f - 1) x max(S, P) + D``: the next fold's
  operand loads into shadow registers while this fold streams.

``tests/test_systolic_reference.py`` checks both against a cycle-stepped array, and
``tests/test_systolic_scalesim.py`` against SCALE-Sim's recorded cycles (SCALE-Sim reports
the index of the last cycle, one less than this count). Every helper of the kernel lives in
this file and every number arrives as an argument. Equations: docs/arch/matx-like.md.
"""

from __future__ import annotations

import math

import numpy as np

from archsim.core.isa import Timing
from archsim.core.jit import njit

DATAFLOWS = ("ws", "os", "is")
WS, OS, IS = range(3)
SPLITS = (1, 2, 4, 8, 16)
GEMM_OPCODES = [f"gemm.{df}.s{s}" for df in DATAFLOWS for s in SPLITS]
OTHER_OPCODES = [
    "vector",  # an elementwise pass or reduction on the vector units
    "dma.mnk",  # GEMM operand tiles HBM -> scratchpad, m blocks outermost
    "dma.nmk",  # GEMM operand tiles, n blocks (weight panels) outermost
    "dma.kv_read",  # KV-cache blocks HBM -> scratchpad
    "dma.kv_write",  # the step's new K and V scratchpad -> HBM
    "dma.gather",  # embedding rows HBM -> scratchpad
    "dma.spill",  # activations that do not fit the scratchpad, both ways
    "allreduce",  # ring all-reduce over the chip-to-chip links
    "send",  # activations to the next pipeline stage
    "join",  # an op's end: its last pass and its stream's last block (no work)
    "alltoall",  # MoE dispatch / combine among the chips of an expert-parallel group
]
OPCODES = GEMM_OPCODES + OTHER_OPCODES
VECTOR = len(GEMM_OPCODES)
DMA_FIRST, DMA_LAST = VECTOR + 1, VECTOR + 6
ALLREDUCE, SEND, JOIN, ALLTOALL = VECTOR + 7, VECTOR + 8, VECTOR + 9, VECTOR + 10
# precision modes of a GEMM (h column): index into the rate table
MODES = ("bf16", "fp8", "int8", "int4")


def gemm_opcode(dataflow: int, split: int) -> str:
    return GEMM_OPCODES[dataflow * len(SPLITS) + SPLITS.index(split)]


def decode_gemm_opcode(index: int) -> tuple[str, int]:
    """(dataflow name, split) of a GEMM opcode index."""
    return DATAFLOWS[index // len(SPLITS)], SPLITS[index % len(SPLITS)]


@njit
def fold_parts(m, n, k, g, dataflow, split, rate, rows, cols, arrays, load_rows):
    """(folds of the busiest sub-array, stream cycles per fold, preload cycles, skew + drain
    cycles r + c - 2) of ``g`` independent GEMMs ``[m, k] @ [k, n]`` on ``arrays`` arrays of
    rows x cols, each split into split x split sub-arrays (module docstring)."""
    r = rows // split
    c = cols // split
    n_sub = arrays * split * split
    if dataflow == 0:  # ws
        sr, sc, t = k, n, m
    elif dataflow == 1:  # os
        sr, sc, t = m, n, k
    else:  # is
        sr, sc, t = k, m, n
    if g <= 0 or sr <= 0 or sc <= 0 or t <= 0:
        return 0, 0, 0, 0
    items = g * ((sr + r - 1) // r) * ((sc + c - 1) // c)
    q = 1
    if items < n_sub:  # idle sub-arrays take parts of the stream on copies of the tile
        q = min(t, n_sub // items)
    t_part = (t + q - 1) // q
    per_sub = (items * q + n_sub - 1) // n_sub
    stream = int(math.ceil(t_part / rate - 1e-9))
    preload = 0 if dataflow == 1 else (r + load_rows - 1) // load_rows
    return per_sub, stream, preload, r + c - 2


@njit
def fold_cycles(m, n, k, g, dataflow, split, overlap, rate, rows, cols, arrays, load_rows):
    """Cycles of the busiest sub-array (module docstring): serial folds
    ``f x (P + S + r + c - 2)``, double-buffered ``P + (f - 1) max(S, P) + S + r + c - 2``."""
    folds, stream, preload, skew = fold_parts(
        m, n, k, g, dataflow, split, rate, rows, cols, arrays, load_rows
    )
    if folds == 0:
        return 0
    drain = stream + skew
    if overlap:
        return preload + (folds - 1) * max(stream, preload) + drain
    return folds * (preload + drain)


@njit
def allreduce_cycles(nbytes, ranks, hop, link_bw, ar_links, n_links, all_to_all):
    """Ring: 2(ranks - 1) steps, each one hop and bytes / ranks over ``ar_links`` links.
    Directly linked peers (``all_to_all`` and a link to each): a two-shot all-reduce, the
    reduce-scatter and the all-gather each one hop with bytes / ranks on every link; the
    faster of the two."""
    if ranks <= 1:
        return 0
    steps = 2 * (ranks - 1)
    ring = steps * hop + int(math.ceil(steps * nbytes / ranks / (ar_links * link_bw) - 1e-9))
    if all_to_all and ranks - 1 <= n_links:
        shot = 2 * (hop + int(math.ceil(nbytes / ranks / link_bw - 1e-9)))
        return min(ring, shot)
    return ring


@njit
def alltoall_cycles(pattern, sent, nbytes, ranks, hop, link_bw, ar_links, n_links, all_to_all):
    """One chip's part of an all-to-all among ``ranks`` chips.

    MoE dispatch or combine (``pattern`` 0, 1): the chip sends ``sent`` bytes in all, an
    equal share to each peer, and sends or receives at most ``nbytes``. Directly linked
    peers (``all_to_all`` and a link to each): every share on its own link at once, one
    hop: hop + nbytes / (ranks - 1) / link_bw. Otherwise a bidirectional ring over
    ``ar_links`` links: a share travels floor(ranks^2 / 4) / (ranks - 1) hops on average
    (the shortest way round), so with every chip sending as this one does each link carries
    sent x that mean distance / ar_links, and the chip's own links carry at least its busier
    direction; the farthest share is floor(ranks / 2) hops away:
    floor(ranks / 2) hop + max(sent x mean hops, nbytes) / (ar_links x link_bw).

    All-gather or reduce-scatter of a tensor of ``nbytes`` (``pattern`` 2, 3): directly
    linked, one shot (every chip's share to every peer at once): hop + nbytes / ranks /
    link_bw; on a ring, ranks - 1 steps of nbytes / ranks over ``ar_links`` links:
    (ranks - 1) (hop + nbytes / ranks / (ar_links x link_bw))."""
    if ranks <= 1:
        return 0
    peers = ranks - 1
    direct = all_to_all and peers <= n_links
    if pattern >= 2:
        if direct:
            return hop + int(math.ceil(nbytes / ranks / link_bw - 1e-9))
        return peers * hop + int(math.ceil(peers * nbytes / ranks / (ar_links * link_bw) - 1e-9))
    if direct:
        return hop + int(math.ceil(nbytes / peers / link_bw - 1e-9))
    mean_hops = (ranks * ranks // 4) / peers
    load = max(sent * mean_hops, nbytes)
    return (ranks // 2) * hop + int(math.ceil(load / (ar_links * link_bw) - 1e-9))


@njit
def systolic_durations(
    opcode,
    m,
    n,
    k,
    g,
    h,
    link_bytes,
    rate,
    rows,
    cols,
    arrays,
    overlap,
    load_rows,
    n_splits,
    vec_per_cycle,
    vec_latency,
    dma_issue,
    hop,
    link_bw,
    ar_links,
    n_links,
    all_to_all,
):
    """Work cycles of every instruction.

    Columns: gemm m, n, k = GEMM dims, g = instances, h = precision mode; vector m =
    elements, n = ops per element, k = dependent ops; dma n = descriptors; allreduce g =
    ranks; send and allreduce move ``link_bytes``; alltoall m = pattern, g = ranks, k =
    bytes of its busier direction (dispatch, combine) or of the whole tensor (all-gather,
    reduce-scatter).
    """
    out = np.zeros(opcode.shape[0], dtype=np.int64)
    n_gemm = 3 * n_splits
    for i in range(opcode.shape[0]):
        op = opcode[i]
        if op < n_gemm:
            df = op // n_splits
            split = 1 << (op % n_splits)
            out[i] = fold_cycles(
                m[i],
                n[i],
                k[i],
                g[i],
                df,
                split,
                overlap,
                rate[h[i]],
                rows,
                cols,
                arrays,
                load_rows,
            )
        elif op == n_gemm:  # vector
            out[i] = (m[i] * n[i] + vec_per_cycle - 1) // vec_per_cycle + k[i] * vec_latency
        elif op <= n_gemm + 6:  # dma: issue its descriptors; HBM bandwidth is a resource
            out[i] = max(1, n[i]) * dma_issue
        elif op == n_gemm + 7:  # all-reduce
            out[i] = allreduce_cycles(
                link_bytes[i], g[i], hop, link_bw, ar_links, n_links, all_to_all
            )
        elif op == n_gemm + 8:  # send: one hop to the next stage's chip
            out[i] = hop + int(math.ceil(link_bytes[i] / link_bw - 1e-9))
        elif op == n_gemm + 10:  # all-to-all
            out[i] = alltoall_cycles(
                m[i], link_bytes[i], k[i], g[i], hop, link_bw, ar_links, n_links, all_to_all
            )
    return out


# ---- glue: the config -> the kernel's arguments (plain Python) ------------------------------
def rates(p) -> np.ndarray:
    """Products per PE per cycle of each mode (the lowering never picks a mode whose rate is
    0; it falls back, see lower.gemm_mode)."""
    a = p.systolic
    return np.array([a.rate_bf16, a.rate_fp8, a.rate_int8, a.rate_int4], dtype=np.float64)


def hbm_bytes_per_cycle(p) -> float:
    return p.hbm.bw_bytes_per_s / p.chip.clock_hz


def sram_bytes_per_cycle(p) -> float:
    s = p.scratchpad
    return float(s.banks * s.ports_per_bank * s.port_bytes_per_cycle)


def vector_elements_per_cycle(p) -> int:
    v = p.vector
    return v.units * v.lanes * v.sublanes * v.alus_per_lane


def hbm_latency_cycles(p) -> int:
    return round(p.hbm.latency_s * p.chip.clock_hz)


def gemm_cycles(p, m, n, k, g, dataflow: int, split: int, mode: int) -> int:
    """``fold_cycles`` with this config (the mapper's cost of one mapping)."""
    a = p.systolic
    return int(
        fold_cycles(
            m,
            n,
            k,
            g,
            dataflow,
            split,
            a.fold_overlap,
            float(rates(p)[mode]),
            a.rows,
            a.cols,
            a.arrays,
            a.preload_rows_per_cycle,
        )
    )


def resource_bandwidths(stream, p) -> np.ndarray:
    """Bytes per cycle of every resource of the stream (``chipS.hbm``, ``chipS.sram``)."""
    bw = {"hbm": hbm_bytes_per_cycle(p), "sram": sram_bytes_per_cycle(p)}
    return np.array([bw[name.rsplit(".", 1)[1]] for name in stream.resource_names], float)


def systolic_timing(stream, p) -> Timing:
    """Work of every instruction; a DMA's result is ready one HBM burst latency after its
    bytes have moved. Every instruction holds its unit until its result is ready."""
    a, ln, clock = p.systolic, p.links, p.chip.clock_hz
    s = stream
    work = systolic_durations(
        s.opcode,
        s.m,
        s.n,
        s.k,
        s.g,
        s.h,
        s.link_bytes,
        rates(p),
        a.rows,
        a.cols,
        a.arrays,
        a.fold_overlap,
        a.preload_rows_per_cycle,
        len(SPLITS),
        vector_elements_per_cycle(p),
        p.vector.latency_cycles,
        p.dma.issue_cycles,
        round(ln.hop_latency_s * clock),
        ln.bw_bytes_per_s / clock,
        ln.allreduce_links,
        ln.count,
        ln.all_to_all,
    )
    latency = np.zeros_like(work)
    dma = (s.opcode >= DMA_FIRST) & (s.opcode <= DMA_LAST)
    latency[dma] = hbm_latency_cycles(p)
    return Timing(
        work=work,
        latency=latency,
        interval=np.full(len(work), -1, dtype=np.int64),
        resource_bw=resource_bandwidths(s, p),
    )
