"""Numba timing kernels of the h100-like family: seconds per kernel, from its mechanisms.

Every helper a kernel calls lives in this file (a cached kernel does not see a changed helper
in another file). No module globals are read inside kernels; every number is an argument.
Equations and sources: docs/arch/h100-like.md and shared/reference/h100-mechanisms.md.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from archsim.core.isa import Timing
from archsim.core.jit import njit

# opcodes (the order of lower.OPCODES)
GEMM, ATTN_DECODE, ATTN_PREFILL, ELEMENTWISE, ALL_REDUCE, SEND_RECV, LAUNCH, ALL_TO_ALL = range(8)


class GpuTiming(NamedTuple):
    """Every scalar the kernels need, resolved from the h100-like config (GpuFamily.timing).

    One typed record instead of dozens of positional arguments; numba compiles and caches a
    NamedTuple argument like a tuple."""

    sms: int
    f_boost: float  # Hz, clock of short and memory-bound kernels
    f_sust: float  # Hz, power-capped clock
    boost_window: float  # s of compute-bound kernels per step before the cap applies
    attn_eff: float
    hbm_bw: float  # B/s
    per_sm_bw: float  # B/s
    l2_bw_clk: float  # B per clock, whole chip
    per_sm_l2_bw: float  # B/s
    strided_l2_bw: float  # B/s
    strided_hbm_bw: float  # B/s
    row_bw: float  # B/s
    gap: float  # s
    eager_launch: float  # s
    eager_gemm_launch: float  # s
    gemm_fixed: float  # s
    ew_fixed: float  # s
    attn_fixed: float  # s
    attn_cta_fixed: float  # s
    p: float  # overlap exponent
    max_split: int
    bk: int
    blk: int
    max_kv_splits: int
    nvlink_bw: float  # B/s
    ll_base: float  # s
    ll_hop: float  # s
    ll_bw: float  # B/s
    simple_base: float  # s
    simple_hop: float  # s
    so_bw: float  # B/s
    so_lat: float  # s


@njit
def _smooth_max(a, b, p):
    """(a^p + b^p)^(1/p): a kernel overlaps tensor work and memory traffic imperfectly."""
    if a <= 0.0:
        return b
    if b <= 0.0:
        return a
    hi = max(a, b)
    return hi * ((a / hi) ** p + (b / hi) ** p) ** (1.0 / p)


@njit
def _stream_bw(active_sms, hbm_bw, per_sm_bw):
    """HBM bandwidth reachable by ``active_sms`` SMs (each limited by its loads in flight)."""
    return min(hbm_bw, active_sms * per_sm_bw)


@njit
def gemm_seconds(
    M,
    N,
    K,
    batch,
    a_el,
    w_el,
    rate,
    sms,
    f_boost,
    f_mma,
    mma_eff,
    hbm_bw,
    per_sm_bw,
    l2_bw_clk,
    fixed,
    gap,
    ew_fixed,
    p,
    max_split,
    bk,
):
    """Fastest (BM, BN, split-K) a cuBLAS/CUTLASS-like library would pick for ``batch``
    independent [M, K] @ [K, N] products (1: a plain GEMM; more: strided-batched); returns
    (seconds, bm, bn, split, tensor seconds).

    Per candidate: tiles T = ceil(M/BM) ceil(N/BN) S, waves ceil(T/SMs); tensor time = waves x
    one tile's MACs at the sustained MMA rate; HBM time = compulsory bytes / bandwidth of the
    active SMs; L2 time = every tile's A and B panel loads (B halved by 2x1 cluster multicast
    when M >= 512); kernel = smooth_max(tensor, max(HBM, L2)) + prologue/epilogue + gap;
    split-K adds fp32 partials and a reduce kernel.
    """
    best_t = 1e30
    best_bm = 0
    best_bn = 0
    best_s = 1
    best_c = 0.0
    for bm in (64, 128, 256):
        if (bm == 64) != (M <= 64):
            continue  # BM = 64 only for m <= 64, else 128/256 (DeepGEMM heuristic, §2.2)
        rows = min(bm, M)
        mt = (M + bm - 1) // bm
        for bn in (16, 32, 64, 128, 192, 256):
            if bn < 64 and bm > 64:
                continue  # narrow N tiles only in the skinny (BM = 64) kernels
            nt = (N + bn - 1) // bn
            for s in range(1, max_split + 1):
                tiles = mt * nt * s * batch
                if s > 1 and mt * nt * batch * (s - 1) >= sms:
                    break  # more splits only add partials once the SMs are full
                kiters = ((K + s - 1) // s + bk - 1) // bk
                waves = (tiles + sms - 1) // sms
                tile_clk = kiters * bk * bm * bn * 2.0 / (rate * mma_eff)
                t_c = waves * tile_clk / f_mma
                active = min(tiles, sms)
                partials = 4.0 * M * N * s * batch if s > 1 else 0.0
                hbm = batch * (N * K * w_el + M * K * a_el + M * N * 2.0) + partials
                t_h = hbm / _stream_bw(active, hbm_bw, per_sm_bw)
                b_share = 0.5 if M >= 512 else 1.0
                l2 = tiles * kiters * bk * (rows * a_el + bn * w_el * b_share)
                t_l2 = l2 / (l2_bw_clk * f_boost)
                t = _smooth_max(t_c, max(t_h, t_l2), p) + fixed + gap
                if s > 1:  # reduce kernel: read fp32 partials, write bf16 output
                    t += gap + ew_fixed + (partials + 2.0 * M * N * batch) / hbm_bw
                if t < best_t:
                    best_t = t
                    best_bm = bm
                    best_bn = bn
                    best_s = s
                    best_c = t_c
    return best_t, best_bm, best_bn, best_s, best_c


@njit
def kv_splits(ctas, n_blocks, slots, max_splits):
    """FlashAttention-2 num_splits_heuristic: smallest split whose wave efficiency is within
    85% of the best (flash_api.cpp); no split when the grid already fills 80% of the slots."""
    if ctas >= 0.8 * slots:
        return 1
    top = min(max_splits, slots, n_blocks)
    best = 0.0
    for s in range(1, top + 1):
        w = ctas * s / slots
        e = w / math.ceil(w)
        if e > best:
            best = e
    for s in range(1, top + 1):
        w = ctas * s / slots
        if w / math.ceil(w) >= 0.85 * best:
            return s
    return 1


@njit
def attn_decode_seconds(
    B,
    Hq,
    Hk,
    q_len,
    L,
    d,
    kv_bytes,
    rate,
    sms,
    f_boost,
    eff,
    hbm_bw,
    per_sm_bw,
    fixed,
    gap,
    ew_fixed,
    p,
    blk,
    max_splits,
):
    """Flash-Decoding: B x Hk CTAs (query heads of a KV head packed into one tile, padded to
    64 rows), split over the context so the grid fills the SMs; streams K and V once."""
    n_blocks = (L + blk - 1) // blk
    base = B * Hk
    slots = 2 * sms  # two 128-thread decode CTAs per SM (FA2)
    s = kv_splits(base, n_blocks, slots, max_splits)
    ctas = base * s
    # memory: full waves at HBM speed, the last partial wave limited by its active SMs
    waves = (ctas + slots - 1) // slots
    per_cta = kv_bytes / ctas
    t_m = 0.0
    left = ctas
    for _ in range(waves):
        in_wave = min(left, slots)
        t_m += in_wave * per_cta / _stream_bw(min(in_wave, sms), hbm_bw, per_sm_bw)
        left -= in_wave
    rows = max(64, (Hq // Hk) * q_len)  # wgmma M granularity
    flops = 4.0 * B * Hk * rows * L * d
    t_c = flops / (rate * eff * min(ctas, sms) * f_boost)
    t = _smooth_max(t_c, t_m, p) + fixed + gap
    if s > 1:  # combine kernel: read fp32 partial O and LSE, write O
        t += gap + ew_fixed + (4.0 * B * Hq * q_len * d * s + 2.0 * B * Hq * q_len * d) / hbm_bw
    return t, s


@njit
def attn_prefill_seconds(
    B,
    Hq,
    S,
    L,
    d,
    causal,
    mem_bytes,
    rate,
    sms,
    f_mma,
    eff,
    hbm_bw,
    cta_fixed,
    fixed,
    gap,
    p,
    blk,
):
    """FlashAttention-3 forward: B x Hq x ceil(S/blk) CTAs, CTA j streams (j+1) K/V blocks when
    causal (all blocks otherwise); longest CTAs first onto the least-loaded SM (LPT)."""
    nq = (S + blk - 1) // blk
    nk = (L + blk - 1) // blk
    step = blk * blk * d * 4.0 / (rate * eff) / f_mma  # one Q-block x K/V-block step
    load = np.zeros(sms)
    for j in range(nq - 1, -1, -1):
        work = cta_fixed + step * ((j + 1 + nk - nq) if causal else nk)
        for _ in range(B * Hq):
            best = 0
            for q in range(1, sms):
                if load[q] < load[best]:
                    best = q
            load[best] += work
    t_c = load.max()
    t_m = mem_bytes / hbm_bw
    return _smooth_max(t_c, t_m, p) + fixed + gap, t_c


@njit
def elementwise_seconds(
    nbytes,
    in_l2,
    kclass,
    row_bytes,
    ctas,
    sms,
    hbm_bw,
    per_sm_bw,
    l2_bw,
    per_sm_l2_bw,
    strided_l2_bw,
    strided_hbm_bw,
    row_bw,
    fixed,
    gap,
):
    """A bandwidth-bound kernel: gap + fixed + (row walk) + bytes / achieved bandwidth.

    Tier (``in_l2``, decided by the lowering): data written or read by the previous kernels
    stays in the write-back L2 while the op's distinct bytes fit in it (decode activations;
    buffers replayed in a graph); a cyclic stream larger than the L2 misses every time under
    LRU, so the cut is sharp.
    kclass 0: vectorised contiguous kernel (residual add, copy, fused kernels): the tier's
    bandwidth, capped by the per-SM fill rate (Little's law) of its active SMs.
    kclass 1: PyTorch's non-vectorised TensorIterator path (inputs are strided views, e.g.
    silu(gate) * up on chunks of the fused gate_up output): fewer bytes in flight per SM.
    kclass 2: a row reduction (RMSNorm, one CTA per row, two passes over the row): the
    serial walk of one row (``row_bytes / row_bw``) is exposed before the stream drains.
    """
    active = min(max(ctas, 1), sms)
    if kclass == 1:
        bw = strided_l2_bw if in_l2 else strided_hbm_bw
    elif in_l2:
        bw = min(l2_bw, active * per_sm_l2_bw)
    else:
        bw = min(hbm_bw, active * per_sm_bw)
    t = gap + fixed + nbytes / bw
    if kclass == 2:
        t += row_bytes / row_bw
    return t


@njit
def allreduce_seconds(nbytes, ranks, gap, ll_base, ll_hop, ll_bw, simple_base, simple_hop, bw):
    """NCCL-style ring all-reduce over NVLink: 2(n-1) steps, each rank sends 2(n-1)/n of the
    buffer. The library picks the faster of LL (low latency, 8-byte stores with a 4-byte
    flag: half the link bandwidth) and Simple (full bandwidth, higher per-step latency);
    constants from NCCL src/graph/tuning.cc (h100-mechanisms §5.3)."""
    if ranks <= 1:
        return 0.0
    steps = 2 * (ranks - 1)
    share = steps / ranks * nbytes
    t_ll = ll_base + steps * ll_hop + share / ll_bw
    t_simple = simple_base + steps * simple_hop + share / bw
    return gap + min(t_ll, t_simple)


@njit
def gpu_durations(
    opcode, m, n, k, g, h, aux, offchip, onchip, link, dtype_rate, dtype_el, dtype_eff, q
):
    """Cycles (at the boost clock) of every instruction, and the choice made (tile/split).

    Column meanings per opcode (set by lower.py): GEMM m, n, k, g = batch, aux = dtype code;
    attention g = batch, h = query heads, m = q_len, n = kv_len, k = head_dim, aux = KV heads
    (decode) or 1 (causal prefill); ELEMENTWISE aux = CTAs, g = kernel class, h = bytes of
    one row walked serially, k = distinct bytes the op touches (L2 residency); ALL_REDUCE
    g = ranks; LAUNCH aux = 1 for a cuBLAS GEMM dispatch.
    """
    n_ins = opcode.shape[0]
    cycles = np.zeros(n_ins, dtype=np.int64)
    choice = np.zeros(n_ins, dtype=np.int64)
    # Clock: a run of tensor-saturated kernels longer than boost_window pulls the SM clock
    # down to the power-capped sustained clock (h100-mechanisms §1.1). Pass 0 times the step
    # at boost and adds up its tensor-bound time; pass 1 (only if that exceeds the window)
    # retimes it at the sustained clock.
    for clock_pass in range(2):
        f_mma = q.f_boost if clock_pass == 0 else q.f_sust
        hot = 0.0
        for i in range(n_ins):
            t, c = _one(
                i,
                opcode,
                m,
                n,
                k,
                g,
                h,
                aux,
                offchip,
                onchip,
                link,
                dtype_rate,
                dtype_el,
                dtype_eff,
                q,
                f_mma,
                choice,
            )
            if c >= 0.5 * t:
                hot += t
            cycles[i] = math.ceil(t * q.f_boost)
        if hot <= q.boost_window:
            break
    return cycles, choice


@njit
def _one(
    i,
    opcode,
    m,
    n,
    k,
    g,
    h,
    aux,
    offchip,
    onchip,
    link,
    dtype_rate,
    dtype_el,
    dtype_eff,
    q,
    f_mma,
    choice,
):
    """Seconds of instruction ``i`` and the part of it that is tensor-core time."""
    l2_bw = q.l2_bw_clk * q.f_boost  # B/s
    tc = 0.0
    op = opcode[i]
    t = 0.0
    if op == GEMM:
        # aux = dtype code: tensor rate per SM clock, bytes per weight element, and the
        # share of that rate a GEMM main loop sustains
        rate = dtype_rate[aux[i]]
        w_el = dtype_el[aux[i]]
        a_el = 1.0 if rate > dtype_rate[0] else 2.0  # fp8/int8 GEMMs take 8-bit inputs
        t, bm, bn, s, tc = gemm_seconds(
            m[i],
            n[i],
            k[i],
            max(g[i], 1),
            a_el,
            w_el,
            rate,
            q.sms,
            q.f_boost,
            f_mma,
            dtype_eff[aux[i]],
            q.hbm_bw,
            q.per_sm_bw,
            q.l2_bw_clk,
            q.gemm_fixed,
            q.gap,
            q.ew_fixed,
            q.p,
            q.max_split,
            q.bk,
        )
        choice[i] = bm * 1000000 + bn * 1000 + s
    elif op == ATTN_DECODE:
        rate = dtype_rate[0]
        t, s = attn_decode_seconds(
            g[i],
            h[i],
            aux[i],
            m[i],
            n[i],
            k[i],
            offchip[i],
            rate,
            q.sms,
            q.f_boost,
            q.attn_eff,
            q.hbm_bw,
            q.per_sm_bw,
            q.attn_fixed,
            q.gap,
            q.ew_fixed,
            q.p,
            q.blk,
            q.max_kv_splits,
        )
        choice[i] = s
    elif op == ATTN_PREFILL:
        t, tc = attn_prefill_seconds(
            g[i],
            h[i],
            m[i],
            n[i],
            k[i],
            aux[i] == 1,
            offchip[i],
            dtype_rate[0],
            q.sms,
            f_mma,
            q.attn_eff,
            q.hbm_bw,
            q.attn_cta_fixed,
            q.attn_fixed,
            q.gap,
            q.p,
            q.blk,
        )
    elif op == ELEMENTWISE:
        t = elementwise_seconds(
            offchip[i] + onchip[i],
            onchip[i] > 0.0,
            g[i],
            float(h[i]),
            aux[i],
            q.sms,
            q.hbm_bw,
            q.per_sm_bw,
            l2_bw,
            q.per_sm_l2_bw,
            q.strided_l2_bw,
            q.strided_hbm_bw,
            q.row_bw,
            q.ew_fixed,
            q.gap,
        )
    elif op == ALL_REDUCE:
        t = allreduce_seconds(
            link[i],
            g[i],
            q.gap,
            q.ll_base,
            q.ll_hop,
            q.ll_bw,
            q.simple_base,
            q.simple_hop,
            q.nvlink_bw,
        )
    elif op == SEND_RECV:
        crosses_nodes = aux[i] == 1
        lat = q.so_lat if crosses_nodes else q.ll_base
        t = q.gap + lat + link[i] / (q.so_bw if crosses_nodes else q.nvlink_bw)
    elif op == LAUNCH:
        t = q.eager_gemm_launch if aux[i] == 1 else q.eager_launch
    elif op == ALL_TO_ALL:
        t = all_to_all_seconds(float(k[i]), q.gap, q.ll_base, q.nvlink_bw)
    return t, tc


@njit
def all_to_all_seconds(busier_bytes, gap, base, bw):
    """An all-to-all inside one NVLink domain (MoE dispatch/combine, all-gather,
    reduce-scatter): each GPU sends to and receives from every peer at once through the
    switch, so the busier direction's bytes over its NVLink bandwidth, plus a base latency
    (NCCL's LL base, as for an all-reduce step)."""
    if busier_bytes <= 0.0:
        return gap + base
    return gap + base + busier_bytes / bw


# ---- glue: the config -> the kernels' arguments (plain Python) ------------------------------
def timing_record(p) -> GpuTiming:
    """The config's scalars as the one record the numba kernels take."""
    c, m, k, ln = p.chip, p.memory, p.kernel, p.links
    return GpuTiming(
        sms=c.sms,
        f_boost=c.boost_clock_hz,
        f_sust=c.sustained_clock_hz,
        boost_window=c.boost_window_s,
        attn_eff=c.attention_mma_efficiency,
        hbm_bw=m.hbm_bw_bytes_per_s,
        per_sm_bw=m.per_sm_bw_bytes_per_s,
        l2_bw_clk=m.l2_bw_bytes_per_clk,
        per_sm_l2_bw=m.per_sm_l2_bw_bytes_per_s,
        strided_l2_bw=m.strided_l2_bw_bytes_per_s,
        strided_hbm_bw=m.strided_hbm_bw_bytes_per_s,
        row_bw=m.norm_row_bw_bytes_per_s,
        gap=k.graph_launch_gap_s,
        eager_launch=k.eager_launch_s,
        eager_gemm_launch=k.eager_gemm_launch_s,
        gemm_fixed=k.gemm_fixed_s,
        ew_fixed=k.elementwise_fixed_s,
        attn_fixed=k.attention_fixed_s,
        attn_cta_fixed=k.attention_cta_fixed_s,
        p=k.overlap_exponent,
        max_split=k.max_split_k,
        bk=k.gemm_tile_k,
        blk=k.attention_block,
        max_kv_splits=k.max_kv_splits,
        nvlink_bw=ln.nvlink_bw_bytes_per_s,
        ll_base=ln.allreduce_base_s,
        ll_hop=ln.allreduce_hop_s,
        ll_bw=ln.allreduce_ll_bw_fraction * ln.nvlink_bw_bytes_per_s,
        simple_base=ln.allreduce_simple_base_s,
        simple_hop=ln.allreduce_simple_hop_s,
        so_bw=ln.scaleout_bw_bytes_per_s,
        so_lat=ln.scaleout_latency_s,
    )


def gpu_timing(stream, p) -> Timing:
    """Every kernel's cycles (at the boost clock) and choice; a kernel holds its unit (the SM
    array, the host thread or the copy path) until it finishes."""
    c = p.chip
    # per DTYPE_CODE: bf16, fp8, int8, int4 (W4A16 dequantises to bf16 in the main loop)
    rate = np.array(
        [
            c.tensor_flops_per_clk_per_sm_bf16,
            c.tensor_flops_per_clk_per_sm_fp8,
            c.tensor_ops_per_clk_per_sm_int8,
            c.tensor_flops_per_clk_per_sm_bf16,
        ]
    )
    eff = np.array(
        [c.mma_efficiency, c.mma_efficiency_fp8, c.mma_efficiency_int8, c.mma_efficiency]
    )
    el = np.array([2.0, 1.0, 1.0, 0.5])
    s = stream
    cycles, choice = gpu_durations(
        s.opcode, s.m, s.n, s.k, s.g, s.h, s.aux, s.offchip_bytes, s.onchip_bytes, s.link_bytes,
        rate, el, eff, timing_record(p),
    )  # fmt: skip
    return Timing.fixed(cycles, choice=choice)


def decode_gemm_choice(code: int) -> dict[str, int]:
    """The tile and split-K a GEMM's choice code holds (bm x 1e6 + bn x 1e3 + split)."""
    return {"tile_m": code // 1_000_000, "tile_n": code // 1000 % 1000, "split_k": code % 1000}
