"""The matx-like mapper: for each GEMM and attention op, the dataflow, array split, scratchpad
tile sizes and loop order with the fewest cycles that fit the scratchpad.

Two decisions, made in this order:

1. **Array mapping** (dataflow x split): the fold model (``timing.fold_cycles``) gives the
   array cycles of each candidate; the array reads its operands from the scratchpad
   (``array_traffic``), so a candidate costs ``max(array cycles, scratchpad bytes / port
   bandwidth)``. Ties go to the smaller split, then ws, os, is.
2. **Scratchpad tiling** (only when an operand lives in HBM): blocks ``tile_m x tile_k`` of
   the activations and ``tile_k x tile_n`` of the weights are double-buffered in the
   scratchpad (DMA of block i+1 overlaps the arrays on block i) with an fp32 accumulator
   ``tile_m x tile_n`` (k innermost). The loop order over the m and n blocks decides which
   operand is re-read (``hbm_traffic``). Among the tilings whose buffers fit, the one with the
   lowest ``max(array cycles, HBM bytes / bandwidth) + first block's DMA`` wins; ties go to less
   HBM traffic, then to larger tiles. A smaller scratchpad leaves only smaller tiles, so more
   re-reads (tests/test_systolic.py).

Everything here is plain Python on scalars and small numpy arrays; results are cached per
(config, shape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from archsim.core.errors import CapacityError
from archsim.families.systolic.params import SystolicParams
from archsim.families.systolic.timing import (
    DATAFLOWS,
    IS,
    OS,
    SPLITS,
    WS,
    gemm_cycles,
    hbm_bytes_per_cycle,
    sram_bytes_per_cycle,
)

ACC_BYTES = 4  # partial sums are fp32 in the scratchpad
M_TILE_BASE = 8  # activation rows are staged in multiples of 8 (TPU (8, 128) blocks)
NK_TILE_BASE = 128  # weight blocks in multiples of 128 along n and k
LOOP_ORDERS = ("mnk", "nmk")  # outermost first; k is always innermost


@dataclass(frozen=True)
class ArrayMapping:
    dataflow: int
    split: int
    cycles: int  # array cycles (no memory stall)
    sram_bytes: float  # operand traffic between the scratchpad and the arrays


@dataclass(frozen=True)
class GemmMapping:
    array: ArrayMapping
    tile_m: int
    tile_n: int
    tile_k: int
    loop_order: str  # mnk | nmk, or "resident" (no operand in HBM)
    hbm_bytes: float  # operand traffic HBM <-> scratchpad per call
    fill_bytes: float  # the first blocks the arrays wait for (double buffering)
    descriptors: int  # block transfers the DMA engines issue
    footprint_bytes: float  # scratchpad the tile buffers take

    @property
    def streams(self) -> bool:
        return self.hbm_bytes > 0


@dataclass(frozen=True)
class AttentionMapping:
    qk: ArrayMapping  # scores = Q K^T per (sequence, KV head)
    pv: ArrayMapping  # out = P V
    block_tokens: int  # KV tokens per double-buffered block
    fill_bytes: float
    descriptors: int


def split_options(p: SystolicParams) -> list[int]:
    a = p.systolic
    return [s for s in SPLITS if s <= a.max_split and a.rows % s == 0 and a.cols % s == 0]


def dataflow_options(p: SystolicParams) -> list[int]:
    d = p.systolic.dataflow
    return [WS, OS, IS] if d == "auto" else [DATAFLOWS.index(d)]


def array_traffic(m, n, k, g, dataflow, r, c, wb, ab, ob) -> float:
    """Scratchpad bytes the arrays read and write for ``g`` GEMMs [m, k] @ [k, n] on r x c
    (sub-)arrays: the stationary operand once, the streamed operand once per fold of the
    other spatial dimension, partial sums read and written once per reduction fold."""
    ck, cn = math.ceil(k / r), math.ceil(n / c)
    if dataflow == WS:
        traffic = k * n * wb + m * k * ab * cn + m * n * ACC_BYTES * (2 * ck - 1)
    elif dataflow == OS:
        traffic = m * k * ab * cn + k * n * wb * math.ceil(m / r) + m * n * ob
    else:
        traffic = m * k * ab + k * n * wb * math.ceil(m / c) + m * n * ACC_BYTES * (2 * ck - 1)
    return float(g * traffic)


@lru_cache(maxsize=8192)
def map_array(
    p: SystolicParams, m: int, n: int, k: int, g: int, mode: int, wb: float, ab: float, ob: float
) -> ArrayMapping:
    """The dataflow and split with the fewest cycles, scratchpad ports included."""
    sram_bw = sram_bytes_per_cycle(p)
    best, best_key = None, None
    for s in split_options(p):
        r, c = p.systolic.rows // s, p.systolic.cols // s
        for df in dataflow_options(p):
            cyc = gemm_cycles(p, m, n, k, g, df, s, mode)
            traffic = array_traffic(m, n, k, g, df, r, c, wb, ab, ob)
            key = (max(cyc, traffic / sram_bw), traffic, s, df)
            if best_key is None or key < best_key:
                best, best_key = ArrayMapping(df, s, cyc, traffic), key
    return best


def _tile_values(d: int, base: int) -> np.ndarray:
    vals, x = [], base
    while x < d:
        vals.append(x)
        x *= 2
    vals.append(d)
    return np.array(vals, dtype=np.int64)


def hbm_traffic(order: str, m, n, k, g, tm, tn, tk, wb, ab, ob, w_res: bool, a_res: bool):
    """HBM bytes of one tiled GEMM (numpy-broadcast over tile candidates). k innermost: the
    accumulator stays in the scratchpad and outputs are written once. ``mnk`` keeps an
    activation block [tm, K] across the n loop when one k block covers K, and reads the
    weights once per m block unless they fit whole; ``nmk`` the other way round."""
    n_m, n_n, n_k = -(-m // tm), -(-n // tn), -(-k // tk)
    a_all, w_all = g * m * k * ab, g * k * n * wb
    one_k = n_k == 1
    if order == "mnk":
        a = np.where(one_k, 1, n_n) * a_all
        w = np.where(one_k & (n_n == 1), 1, n_m) * w_all
    else:
        w = np.where(one_k, 1, n_m) * w_all
        a = np.where(one_k & (n_m == 1), 1, n_n) * a_all
    out = 0.0 if a_res else g * m * n * ob
    return (0.0 if a_res else a) + (0.0 if w_res else w) + out


@lru_cache(maxsize=8192)
def map_gemm(
    p: SystolicParams,
    m: int,
    n: int,
    k: int,
    g: int,
    mode: int,
    wb: float,
    ab: float,
    ob: float,
    w_res: bool,
    a_res: bool,
    budget: float,
) -> GemmMapping:
    """Array mapping, then (when an operand lives in HBM) the tiling that fits ``budget``
    bytes of scratchpad with the fewest cycles: the shortest steady state (the arrays or the
    HBM stream, whichever is slower), then the least HBM traffic, then the shortest fill."""
    arr = map_array(p, m, n, k, g, mode, wb, ab, ob)
    if w_res and a_res:
        return GemmMapping(arr, m, n, k, "resident", 0.0, 0.0, 0, 0.0)
    bw = hbm_bytes_per_cycle(p)
    work = max(arr.cycles, arr.sram_bytes / sram_bytes_per_cycle(p))
    tm, tn, tk = np.meshgrid(
        _tile_values(m, M_TILE_BASE),
        _tile_values(n, NK_TILE_BASE),
        _tile_values(k, NK_TILE_BASE),
        indexing="ij",
    )
    tm, tn, tk = tm.ravel(), tn.ravel(), tk.ravel()
    a_buf = 0.0 if a_res else 2.0 * tm * tk * ab + 2.0 * tm * tn * ob
    w_buf = 0.0 if w_res else 2.0 * tk * tn * wb
    footprint = a_buf + w_buf + tm * tn * ACC_BYTES
    fill = (0.0 if a_res else tm * tk * ab) + (0.0 if w_res else tk * tn * wb)
    loads = g * (-(-m // tm)) * (-(-n // tn)) * (-(-k // tk)) * (2 - int(a_res) - int(w_res))
    fits = footprint <= budget
    if not fits.any():
        raise CapacityError(
            f"{p.name}: the scratchpad space left for tiles ({budget / 2**20:.2f} MiB) holds no "
            f"double-buffered tile of a [{m}, {k}] x [{k}, {n}] GEMM (the smallest needs "
            f"{float(footprint.min()) / 2**20:.2f} MiB)"
        )
    traffic = np.stack(
        [hbm_traffic(o, m, n, k, g, tm, tn, tk, wb, ab, ob, w_res, a_res) for o in LOOP_ORDERS]
    ) * np.ones((1, len(tm)))  # [orders, candidates]
    # steady state: the arrays or HBM (descriptors are issued one after another by the DMA
    # engines), then the least HBM traffic, then the shortest fill
    steady = np.maximum(np.maximum(work, traffic / bw), loads * p.dma.issue_cycles)
    order_idx = np.repeat(np.arange(len(LOOP_ORDERS)), len(tm))
    ok = np.tile(fits, len(LOOP_ORDERS))
    fill_all = np.tile(fill * np.ones(len(tm)), len(LOOP_ORDERS))
    rank = np.lexsort((order_idx, fill_all, traffic.ravel(), steady.ravel(), ~ok))
    j = int(rank[0])
    i = j % len(tm)
    return GemmMapping(
        arr,
        int(tm[i]),
        int(tn[i]),
        int(tk[i]),
        LOOP_ORDERS[order_idx[j]],
        float(traffic.ravel()[j]),
        float(fill[i]),
        int(loads[i]),
        float(footprint[i]),
    )


@lru_cache(maxsize=4096)
def map_attention(
    p: SystolicParams,
    q_rows: int,
    kv: int,
    d: int,
    g: int,
    mode: int,
    ab: float,
    kvb: float,
    from_hbm: bool,
    budget: float,
    dv: int = 0,
    token_elems: int = 0,
) -> AttentionMapping:
    """QK^T ([q_rows, d] x [d, kv]) and PV ([q_rows, kv] x [kv, dv]) per instance, each
    mapped on the arrays (``dv`` 0: d); K and V stream from HBM in double-buffered blocks of
    ``block_tokens`` (the largest power of two whose buffers for all ``g`` instances fit).
    ``token_elems``: cached elements of one token per instance (0: K and V, 2 d; MLA's
    latent, which serves as both, d)."""
    dv = dv or d
    qk = map_array(p, q_rows, kv, d, g, mode, kvb, ab, float(ACC_BYTES))
    pv = map_array(p, q_rows, dv, kv, g, mode, kvb, ab, ab)
    if not from_hbm:
        return AttentionMapping(qk, pv, kv, 0.0, 0)
    per_token = g * (token_elems or 2 * d) * kvb  # the cache of one token, every instance
    if 2 * per_token > budget:
        raise CapacityError(
            f"{p.name}: the scratchpad space left ({budget / 2**20:.2f} MiB) cannot "
            f"double-buffer one KV token of {g} attention instances"
        )
    # the block with the shortest stream: small blocks start the arrays sooner, each costs
    # a descriptor the DMA engines issue one after another
    bw, issue = hbm_bytes_per_cycle(p), p.dma.issue_cycles
    work = max(qk.cycles + pv.cycles, kv * per_token / bw)
    best, best_key, block = 1, None, 1
    while block <= kv and 2 * per_token * block <= budget:
        blocks = -(-kv // block)
        key = max(work, 2 * g * blocks * issue) + per_token * block / bw
        if best_key is None or key < best_key:
            best, best_key = block, key
        block *= 2
    return AttentionMapping(qk, pv, best, per_token * best, g * 2 * -(-kv // best))
