"""Numba timing kernels of the h100-like family: seconds per kernel, from its mechanisms.

Every helper a kernel calls lives in this file (a cached kernel does not see a changed helper
in another file). No module globals are read inside kernels; every number is an argument.
Equations and sources: docs/arch/h100-like.md and shared/reference/h100-mechanisms.md.

Two passes: ``kernel_seconds`` times every kernel at the boost clock and at the clock its
power would be capped to, with its power draw; ``power_clocks`` then runs the board power
through the limiter's first-order filter in program order and picks, per kernel, how much
of it ran at which clock.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from archsim.core.isa import Timing
from archsim.core.jit import njit

# opcodes (the order of lower.OPCODES)
GEMM, ATTN_DECODE, ATTN_PREFILL, ELEMENTWISE, ALL_REDUCE, SEND_RECV, LAUNCH, ALL_TO_ALL = range(8)
# elementwise kernel classes (lower.py sets them in the ``g`` column)
VECTORISED, STRIDED, RMSNORM_ROWS, SOFTMAX_ROWS, LAYERNORM_ROWS = range(5)
# a kernel's choice code carries its mean SM clock in MHz above this (tile/split below it)
CLOCK_CODE = 1_000_000_000


class GpuTiming(NamedTuple):
    """Every scalar the kernels need, resolved from the h100-like config (GpuFamily.timing).

    One typed record instead of dozens of positional arguments; numba compiles and caches a
    NamedTuple argument like a tuple. Flags are floats (1.0 true, 0.0 false)."""

    sms: int
    f_boost: float  # Hz, highest SM clock
    max_threads_sm: int
    max_ctas_sm: int
    fp32_lanes: int  # FP32 results per SM per clock
    m_gran: int  # rows of the smallest MMA tile
    b_multicast: float  # share of the B panel each CTA loads at m >= 512 (0.5: TMA multicast)
    attn_eff: float  # main-loop efficiency of the chosen prefill attention kernel
    hbm_bw: float  # B/s
    per_sm_bw: float  # B/s
    l2_bw_clk: float  # B per clock, whole chip
    l2_bytes: float  # B
    per_sm_l2_bw: float  # B/s
    strided_l2_bw: float  # B/s
    strided_hbm_bw: float  # B/s
    row_rt: float  # s, one dependent load of a row walk
    row_reduce: float  # s, block reduction ending a pass
    rms_threads: int
    rms_vec: int
    rms_passes: int
    ln_threads: int
    ln_vec: int
    ln_passes: int
    sm_max_threads: int
    sm_vec: int
    sm_passes: int
    gap: float  # s
    eager_launch: float  # s
    eager_gemm_launch: float  # s
    gemm_fixed: float  # s
    ew_fixed: float  # s
    attn_fixed: float  # s
    attn_cta_fixed: float  # s
    p: float  # overlap exponent
    max_split: int
    stream_k: float
    bk: int
    blk: int
    max_kv_splits: int
    nvlink_bw: float  # B/s, per GPU per direction (NCCL's bus bandwidth)
    nccl_channels: int
    ll_base: float  # s
    ll128_base: float
    simple_base: float
    ll_hop: float  # s
    ll128_hop: float
    simple_hop: float
    ll_eff: float
    ll128_eff: float
    ll_max_bw: float  # B/s
    ll128_ch_bw: float  # B/s per channel
    ll128_on: float
    nvls_on: float  # NVLink SHARP all-reduce available (NVSwitch gen 3+)
    nvls_lat: float  # s
    nvls_eff: float  # algorithm bandwidth / bus bandwidth of NVLS
    nccl_threads: int
    nccl_ll128_threads: int
    ll_thr: float  # B per thread per rank
    ll128_thr: float  # B per thread
    simple_thr: float  # B per thread
    so_bw: float  # B/s per GPU (its NIC)
    so_lat: float  # s, endpoints of one message between domains
    so_hops: int  # scale-out switches a message crosses
    so_switch_lat: float  # s per switch
    domain: int  # GPUs on one NVLink domain
    tdp: float  # W
    idle_w: float
    hbm_j_per_b: float
    sm_dyn_w: float
    tensor_dyn_w: float
    clock_exp: float
    tau: float  # s
    from_idle: float


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
    b_multicast,
    stream_k,
):
    """Fastest (BM, BN, split-K) a cuBLAS/CUTLASS-like library would pick for ``batch``
    independent [M, K] @ [K, N] products (1: a plain GEMM; more: strided-batched); returns
    (seconds, bm, bn, split, tensor seconds).

    Per candidate: tiles T = ceil(M/BM) ceil(N/BN) S, waves ceil(T/SMs); tensor time = waves x
    one tile's MACs at the MMA rate of the kernel's clock ``f_mma``; HBM time = compulsory
    bytes / bandwidth of the active SMs; L2 time = every tile's A and B panel loads (B shared
    by ``b_multicast`` when M >= 512: 0.5 with 2x1 cluster TMA multicast, 1 without);
    kernel = smooth_max(tensor, max(HBM, L2)) + prologue/epilogue + gap; split-K adds fp32
    partials and a reduce kernel. With ``stream_k`` a data-parallel + stream-K hybrid is also
    a candidate (split code 0): whole waves of tiles, then the last partial wave's MAC-loop
    iterations shared evenly by all SMs, partial tiles fixed up through fp32 partials in the
    same kernel (Stream-K, PPoPP 2023; CUTLASS SM90 stream-K scheduler, §2.4).
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
            for s in range(0 if stream_k != 0.0 else 1, max_split + 1):
                base = mt * nt * batch
                if s == 0 and base % sms == 0:
                    continue  # no partial wave: stream-K is the data-parallel kernel
                tiles = base * max(s, 1)
                if s > 1 and base * (s - 1) >= sms:
                    break  # more splits only add partials once the SMs are full
                kiters = ((K + max(s, 1) - 1) // max(s, 1) + bk - 1) // bk
                waves = (tiles + sms - 1) // sms
                iter_clk = bk * bm * bn * 2.0 / (rate * mma_eff)
                if s == 0:  # whole waves, then the partial wave's iterations over all SMs
                    iters = (base // sms) * kiters + (((base % sms) * kiters + sms - 1) // sms)
                    t_c = iters * iter_clk / f_mma
                else:
                    t_c = waves * kiters * iter_clk / f_mma
                active = min(tiles, sms) if s > 0 else sms
                partials = 4.0 * M * N * s * batch if s > 1 else 0.0
                if s == 0:  # each SM leaves at most one partial fp32 tile, read back once
                    partials = 2.0 * 4.0 * bm * bn * min(base % sms, sms)
                hbm = batch * (N * K * w_el + M * K * a_el + M * N * 2.0) + partials
                t_h = hbm / _stream_bw(active, hbm_bw, per_sm_bw)
                b_share = b_multicast if M >= 512 else 1.0
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
    f_mma,
    eff,
    hbm_bw,
    per_sm_bw,
    fixed,
    gap,
    ew_fixed,
    p,
    blk,
    max_splits,
    m_gran,
):
    """Flash-Decoding: B x Hk CTAs (query heads of a KV head packed into one tile, padded to
    the MMA's row granularity: 64 for wgmma, 16 for mma.sync), split over the context so the
    grid fills the SMs; streams K and V once; tensor work at the kernel's clock ``f_mma``."""
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
    g_rows = (Hq // Hk) * q_len
    rows = ((g_rows + m_gran - 1) // m_gran) * m_gran
    flops = 4.0 * B * Hk * rows * L * d
    t_c = flops / (rate * eff * min(ctas, sms) * f_mma)
    t = _smooth_max(t_c, t_m, p) + fixed + gap
    if s > 1:  # combine kernel: read fp32 partial O and LSE, write O
        t += gap + ew_fixed + (4.0 * B * Hq * q_len * d * s + 2.0 * B * Hq * q_len * d) / hbm_bw
    return t, s, t_c


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
    """FlashAttention forward (FA3 or FA2: ``eff`` is the chosen kernel's main-loop
    efficiency): B x Hq x ceil(S/blk) CTAs, CTA j streams (j+1) K/V blocks when causal (all
    blocks otherwise); longest CTAs first onto the least-loaded SM (LPT)."""
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
def row_walk_seconds(
    rows, row_bytes, passes, threads, vec, rt, reduce, sms, max_thr, max_ctas, l2_bytes, hbm_bw
):
    """A row-reduction kernel (RMSNorm, LayerNorm, block softmax): one CTA per row of
    ``threads`` threads walks its row ``passes`` times; a pass is one dependent load per
    vector each thread loads (``ceil(row_bytes / (threads x vec))`` round trips) and a block
    reduction. CTAs resident per SM are set by occupancy; rows run in waves of them. Re-reads
    of a row come from L2 while the rows in flight fit in it, else from HBM.
    Returns (seconds of the walks, seconds of re-reads that miss L2)."""
    loads = (row_bytes + threads * vec - 1) // (threads * vec)
    pass_t = loads * rt + reduce
    per_sm = max(1, min(max_thr // threads, max_ctas))
    slots = sms * per_sm
    waves = (rows + slots - 1) // slots
    walk = waves * passes * pass_t
    in_flight = min(rows, slots) * row_bytes
    miss = 0.0
    if passes > 1 and in_flight > l2_bytes:
        miss = (passes - 1) * rows * row_bytes / hbm_bw
    return walk, miss


@njit
def softmax_threads(row_bytes, vec, max_threads):
    """PyTorch's block softmax size: the power of two covering one vector per thread of the
    row, at least a warp, at most ``max_threads`` (SoftMax_getBlockSize)."""
    want = min(max(row_bytes // vec, 1), max_threads)
    t = 1
    while t < want:
        t *= 2
    return max(t, 32)


@njit
def elementwise_seconds(
    nbytes,
    in_l2,
    kclass,
    rows,
    cols,
    row_bytes,
    ctas,
    ops,
    q,
):
    """A bandwidth-bound kernel: gap + fixed + smooth_max(stream, row walk + arithmetic).

    Tier (``in_l2``, decided by the lowering): data written or read by the previous kernels
    stays in the write-back L2 while the op's distinct bytes fit in it (decode activations;
    buffers replayed in a graph); a cyclic stream larger than the L2 misses every time under
    LRU, so the cut is sharp.
    VECTORISED: vectorised contiguous kernel (residual add, copy, gelu, fused kernels): the
    tier's bandwidth, capped by the per-SM fill rate (Little's law) of its active SMs.
    STRIDED: PyTorch's non-vectorised TensorIterator path (inputs are strided views, e.g.
    silu(gate) * up on chunks of the fused gate_up output): fewer bytes in flight per SM.
    RMSNORM/SOFTMAX/LAYERNORM_ROWS: a row reduction (``row_walk_seconds``): its CTAs' walks
    over their rows, with the re-reads that miss L2 added to the stream.
    Arithmetic: ``ops`` FP32 instructions per element (conversions, exp, Welford updates, as
    the kernel's source has them) over the active SMs' FP32 lanes; it overlaps the stream like
    a GEMM's tensor work does (overlap exponent p).
    """
    active = min(max(ctas, 1), q.sms)
    l2_bw = q.l2_bw_clk * q.f_boost
    if kclass == STRIDED:
        bw = q.strided_l2_bw if in_l2 else q.strided_hbm_bw
    elif in_l2:
        bw = min(l2_bw, active * q.per_sm_l2_bw)
    else:
        bw = min(q.hbm_bw, active * q.per_sm_bw)
    stream = nbytes / bw
    work = rows * cols * ops / (active * q.fp32_lanes * q.f_boost)
    if kclass >= RMSNORM_ROWS:
        if kclass == RMSNORM_ROWS:
            threads, vec, passes = q.rms_threads, q.rms_vec, q.rms_passes
        elif kclass == LAYERNORM_ROWS:
            threads, vec, passes = q.ln_threads, q.ln_vec, q.ln_passes
        else:
            vec, passes = q.sm_vec, q.sm_passes
            threads = softmax_threads(row_bytes, vec, q.sm_max_threads)
        walk, miss = row_walk_seconds(
            rows, row_bytes, passes, threads, vec, q.row_rt, q.row_reduce, q.sms,
            q.max_threads_sm, q.max_ctas_sm, q.l2_bytes, q.hbm_bw,
        )  # fmt: skip
        stream += miss
        work += walk
    return q.gap + q.ew_fixed + _smooth_max(stream, work, q.p)


@njit
def nccl_channels_used(nbytes, channels, threads, bytes_per_thread):
    """NCCL's ring channel tuning (enqueue.cc topoGetAlgoInfo): drop channels, then halve the
    threads of a channel, while the message is under channels x threads x threshold."""
    nc = channels
    nt = threads
    while nbytes < nc * nt * bytes_per_thread and nc >= 2:
        nc -= 1
    while nbytes < nc * nt * bytes_per_thread and nt % 128 == 0:
        nt //= 2
    return nc, nt


@njit
def allreduce_seconds(nbytes, ranks, q):
    """NCCL ring all-reduce inside one NVLink (or PCIe) domain, with NCCL's own model
    (tuning.cc): per protocol, latency = base + 2(n-1) x hop and bus bandwidth = LL: min(LL
    cap, bus x 0.5); LL128: min(bus x 0.92, channels x per-channel cap); Simple: bus; the
    algorithm bandwidth is bus x n / 2(n-1). NCCL picks the protocol with the least modelled
    time at full channels; the kernel then runs on the channels (and threads) left after
    its small-message tuning (enqueue.cc), each carrying 1/channels of the bandwidth.
    With NVLink SHARP (``nccl_nvls_enabled``) NCCL's NVLS algorithm is a fourth choice.
    Returns (seconds, protocol: 0 LL, 1 LL128, 2 Simple, 3 NVLS, channels used)."""
    if ranks <= 1:
        return 0.0, 0, 0
    steps = 2 * (ranks - 1)
    ratio = ranks / steps
    bus = q.nvlink_bw
    bws = np.zeros(4)
    lats = np.zeros(4)
    bws[0] = min(q.ll_max_bw, bus * q.ll_eff) * ratio
    lats[0] = q.ll_base + steps * q.ll_hop
    bws[1] = min(bus * q.ll128_eff, q.nccl_channels * q.ll128_ch_bw) * ratio
    lats[1] = q.ll128_base + steps * q.ll128_hop
    bws[2] = bus * ratio
    lats[2] = q.simple_base + steps * q.simple_hop
    # NVLS: the NVSwitch reduces in the fabric (NVLink SHARP), so the latency does not grow
    # with the ranks: NCCL charges hwLat[NVLINK][NVLS][Simple] and bus x 5/6 (tuning.cc)
    bws[3] = bus * q.nvls_eff
    lats[3] = q.nvls_lat
    best = 0
    best_t = 1e30
    for proto in range(4):
        if proto == 1 and q.ll128_on == 0.0:
            continue
        if proto == 3 and q.nvls_on == 0.0:
            continue
        t = lats[proto] + nbytes / bws[proto]
        if t < best_t:
            best_t = t
            best = proto
    if best == 0:
        threads, thr = q.nccl_threads, q.ll_thr * ranks
    elif best == 1:
        threads, thr = q.nccl_ll128_threads, q.ll128_thr
    else:
        threads, thr = q.nccl_threads, q.simple_thr
    nc, _ = nccl_channels_used(nbytes, q.nccl_channels, threads, thr)
    bw = bws[best] * nc / q.nccl_channels
    return q.gap + lats[best] + nbytes / bw, best, nc


@njit
def scaleout_message_seconds(q):
    """One message between NVLink domains: its endpoints (NIC, RDMA, software) and every
    switch it crosses."""
    return q.so_lat + q.so_hops * q.so_switch_lat


@njit
def scaleout_seconds(nbytes, steps, q):
    """A phase of a collective over the scale-out network: ``steps`` dependent rounds of
    messages, each GPU pushing ``nbytes`` in all through its own NIC (the GPUs of a domain
    use their NICs in parallel). For the MoE all-to-all across domains: steps = 1 and
    nbytes = the bytes a GPU sends to other domains."""
    if nbytes <= 0.0 and steps <= 0:
        return 0.0
    return steps * scaleout_message_seconds(q) + nbytes / q.so_bw


@njit
def domain_ranks(ranks, domain):
    """Ranks of a collective that share one NVLink domain: the largest divisor of ``ranks``
    not above the domain (128 ranks on 72-GPU domains: 2 groups of 64)."""
    d = min(ranks, max(domain, 1))
    while ranks % d != 0:
        d -= 1
    return d


@njit
def collective_all_to_all_seconds(busier_bytes, ranks, q):
    """An all-to-all over ``ranks`` GPUs (MoE dispatch/combine). Inside one NVLink domain:
    ``all_to_all_seconds``. Across domains, a GPU's bytes go to every peer alike, so the
    share bound for other domains, (ranks - d) / (ranks - 1), leaves through its NIC
    (``scaleout_seconds``) while the rest crosses NVLink, both at once."""
    d = domain_ranks(ranks, q.domain)
    if ranks <= d:
        return all_to_all_seconds(busier_bytes, q.gap, q.ll_base, q.nvlink_bw)
    outside = busier_bytes * (ranks - d) / max(ranks - 1, 1)
    inside = all_to_all_seconds(busier_bytes - outside, 0.0, q.ll_base, q.nvlink_bw)
    return q.gap + max(inside, scaleout_seconds(outside, 1, q))


@njit
def collective_allreduce_seconds(nbytes, ranks, q):
    """All-reduce of ``nbytes`` per GPU over ``ranks`` GPUs. Inside one NVLink domain: NCCL's
    ring (``allreduce_seconds``). Across domains, hierarchically (NCCL's tree / NVLS-tree
    structure): a reduce-scatter inside each domain of d ranks, an all-reduce of each GPU's
    1/d shard across the g = ranks/d domains on the scale-out network (a ring: 2(g-1)
    dependent messages, 2(g-1)/g of the shard through each NIC), an all-gather inside the
    domain. Reduce-scatter + all-gather over a ring move what one ring all-reduce moves, so
    the two NVLink phases cost one intra-domain all-reduce. Returns (seconds, protocol,
    channels, domains)."""
    d = domain_ranks(ranks, q.domain)
    g = ranks // d
    t, proto, nc = allreduce_seconds(nbytes, d, q)
    if g <= 1:
        return t, proto, nc, 1
    shard = nbytes / d
    t += scaleout_seconds(2.0 * (g - 1) / g * shard, 2 * (g - 1), q)
    if d == 1:
        t += q.gap  # no NVLink phase launched the kernel
    return t, proto, nc, g


@njit
def kernel_seconds(
    i, opcode, m, n, k, g, h, aux, offchip, onchip, link, dtype_rate, dtype_el, dtype_eff, q,
    f_mma, choice,
):  # fmt: skip
    """Seconds of instruction ``i`` with its tensor work at clock ``f_mma``, and the part of
    it the tensor cores are busy."""
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
            m[i], n[i], k[i], max(g[i], 1), a_el, w_el, rate, q.sms, q.f_boost, f_mma,
            dtype_eff[aux[i]], q.hbm_bw, q.per_sm_bw, q.l2_bw_clk, q.gemm_fixed, q.gap,
            q.ew_fixed, q.p, q.max_split, q.bk, q.b_multicast, q.stream_k,
        )  # fmt: skip
        choice[i] = bm * 1000000 + bn * 1000 + s
    elif op == ATTN_DECODE:
        t, s, tc = attn_decode_seconds(
            g[i], h[i], aux[i], m[i], n[i], k[i], offchip[i], dtype_rate[0], q.sms, f_mma,
            q.attn_eff, q.hbm_bw, q.per_sm_bw, q.attn_fixed, q.gap, q.ew_fixed, q.p, q.blk,
            q.max_kv_splits, q.m_gran,
        )  # fmt: skip
        choice[i] = s
    elif op == ATTN_PREFILL:
        t, tc = attn_prefill_seconds(
            g[i], h[i], m[i], n[i], k[i], aux[i] == 1, offchip[i], dtype_rate[0], q.sms, f_mma,
            q.attn_eff, q.hbm_bw, q.attn_cta_fixed, q.attn_fixed, q.gap, q.p, q.blk,
        )  # fmt: skip
    elif op == ELEMENTWISE:
        t = elementwise_seconds(
            offchip[i] + onchip[i], onchip[i] > 0.0, g[i], m[i], n[i], h[i], aux[i], k[i], q
        )
    elif op == ALL_REDUCE:
        t, proto, nc, domains = collective_allreduce_seconds(link[i], g[i], q)
        choice[i] = (domains - 1) * 1000000 + proto * 1000 + nc
    elif op == SEND_RECV:
        if aux[i] == 1:  # the next stage is in another NVLink domain
            t = q.gap + scaleout_seconds(link[i], 1, q)
        else:
            t = q.gap + q.ll_base + link[i] / q.nvlink_bw
    elif op == LAUNCH:
        t = q.eager_gemm_launch if aux[i] == 1 else q.eager_launch
    elif op == ALL_TO_ALL:
        t = collective_all_to_all_seconds(float(k[i]), g[i], q)
    return t, tc


@njit
def kernel_power(t, tc, hbm_bytes, on_sms, q):
    """Board power (W) of a kernel at the boost clock: idle + HBM traffic + the SMs' dynamic
    power (tensor cores in proportion to the time they are busy)."""
    dyn = 0.0
    if on_sms:
        dyn = q.sm_dyn_w + q.tensor_dyn_w * min(1.0, tc / t)
    return q.idle_w + q.hbm_j_per_b * hbm_bytes / t, dyn


@njit
def filter_pass(idx, t_b, t_c, p_b, q, p0, secs, clock, f_cap):
    """Run the limiter over the kernels ``idx`` (one GPU, program order) from filtered power
    ``p0``: a kernel whose boost power is under the TDP runs at boost and pulls the filtered
    power toward its own; one over it runs at boost until the filtered power reaches the TDP
    (t* = tau ln((P - P0) / (P - TDP))), then at its capped clock. Returns the end power;
    writes each kernel's seconds and mean clock."""
    pf = p0
    for j in range(idx.shape[0]):
        i = idx[j]
        if p_b[i] <= q.tdp:
            secs[i] = t_b[i]
            clock[i] = q.f_boost
            pf = p_b[i] + (pf - p_b[i]) * math.exp(-t_b[i] / q.tau)
        elif pf >= q.tdp:
            secs[i] = t_c[i]
            clock[i] = f_cap[i]
            pf = q.tdp
        else:
            t_star = q.tau * math.log((p_b[i] - pf) / (p_b[i] - q.tdp))
            if t_star >= t_b[i]:
                secs[i] = t_b[i]
                clock[i] = q.f_boost
                pf = p_b[i] + (pf - p_b[i]) * math.exp(-t_b[i] / q.tau)
            else:
                x = t_star / t_b[i]
                secs[i] = t_star + (1.0 - x) * t_c[i]
                clock[i] = (t_star * q.f_boost + (secs[i] - t_star) * f_cap[i]) / secs[i]
                pf = q.tdp
    return pf


@njit
def power_clocks(chip, is_gpu, t_b, t_c, p_b, f_cap, q):
    """Per GPU, the filtered power at the start of the stream: idle (a benchmark after a
    pause), or the periodic steady state of back-to-back identical steps (the start power
    equals the end power: bisection on the monotone map start -> end)."""
    n_ins = t_b.shape[0]
    secs = t_b.copy()
    clock = np.full(n_ins, q.f_boost)
    if n_ins == 0 or not np.any(p_b > q.tdp):
        return secs, clock  # no kernel reaches the limit: every kernel at the boost clock
    chips = chip.max() + 1
    for c in range(chips):
        idx = np.nonzero((chip == c) & is_gpu)[0]
        if idx.shape[0] == 0:
            continue
        if q.from_idle != 0.0:
            filter_pass(idx, t_b, t_c, p_b, q, q.idle_w, secs, clock, f_cap)
            continue
        lo = q.idle_w
        hi = max(q.tdp, q.idle_w)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            end = filter_pass(idx, t_b, t_c, p_b, q, mid, secs, clock, f_cap)
            if end > mid:
                lo = mid
            else:
                hi = mid
            if hi - lo < 1e-6:
                break
        filter_pass(idx, t_b, t_c, p_b, q, 0.5 * (lo + hi), secs, clock, f_cap)
    return secs, clock


@njit
def gpu_durations(
    opcode, chip, m, n, k, g, h, aux, offchip, onchip, link, dtype_rate, dtype_el, dtype_eff, q
):  # fmt: skip
    """Cycles (at the boost clock) of every instruction, and its choice (tile/split, with
    the kernel's mean SM clock in MHz above CLOCK_CODE).

    Column meanings per opcode (set by lower.py): GEMM m, n, k, g = batch, aux = dtype code;
    attention g = batch, h = query heads, m = q_len, n = kv_len, k = head_dim, aux = KV heads
    (decode) or 1 (causal prefill); ELEMENTWISE aux = CTAs, g = kernel class, m = rows,
    n = columns, h = bytes of one row (row kernels), k = FP32 instructions per element;
    ALL_REDUCE g = ranks; LAUNCH aux = 1 for a cuBLAS GEMM dispatch.
    Clock (h100-mechanisms §1.1): each kernel draws idle + HBM + SM/tensor dynamic power; one
    whose power at boost exceeds the TDP is held at the clock that meets it,
    f = boost x ((TDP - idle - HBM) / dynamic) ** (1 / clock_exponent), once the limiter's
    filtered power has reached the TDP (``power_clocks``).
    """
    n_ins = opcode.shape[0]
    choice = np.zeros(n_ins, dtype=np.int64)
    t_b = np.zeros(n_ins)
    t_c = np.zeros(n_ins)
    p_b = np.zeros(n_ins)
    f_cap = np.full(n_ins, q.f_boost)
    is_gpu = np.zeros(n_ins, dtype=np.bool_)
    for i in range(n_ins):
        t, tc = kernel_seconds(
            i, opcode, m, n, k, g, h, aux, offchip, onchip, link, dtype_rate, dtype_el,
            dtype_eff, q, q.f_boost, choice,
        )  # fmt: skip
        t_b[i] = t
        t_c[i] = t
        op = opcode[i]
        if op == LAUNCH or t <= 0.0:
            continue
        is_gpu[i] = True
        static, dyn = kernel_power(t, tc, offchip[i], op != SEND_RECV, q)
        p_b[i] = static + dyn
        if p_b[i] > q.tdp and dyn > 0.0:
            r = max((q.tdp - static) / dyn, 1e-3)
            f_cap[i] = q.f_boost * r ** (1.0 / q.clock_exp)
            keep = choice[i]
            t2, _ = kernel_seconds(
                i, opcode, m, n, k, g, h, aux, offchip, onchip, link, dtype_rate, dtype_el,
                dtype_eff, q, f_cap[i], choice,
            )  # fmt: skip
            choice[i] = keep  # the tile chosen at boost is reported
            t_c[i] = max(t2, t)
    secs, clock = power_clocks(chip, is_gpu, t_b, t_c, p_b, f_cap, q)
    cycles = np.zeros(n_ins, dtype=np.int64)
    for i in range(n_ins):
        cycles[i] = math.ceil(secs[i] * q.f_boost)
        if is_gpu[i]:
            choice[i] += int(round(clock[i] / 1e6)) * CLOCK_CODE
    return cycles, choice


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
    c, m, k, ln, pw = p.chip, p.memory, p.kernel, p.links, p.power
    fa3 = k.attention_kernel == "fa3"
    return GpuTiming(
        sms=c.sms,
        f_boost=c.boost_clock_hz,
        max_threads_sm=c.max_threads_per_sm,
        max_ctas_sm=c.max_ctas_per_sm,
        fp32_lanes=c.fp32_lanes_per_sm,
        m_gran=c.mma_m_granularity,
        b_multicast=0.5 if c.tma_multicast else 1.0,
        attn_eff=c.fa3_mma_efficiency if fa3 else c.fa2_mma_efficiency,
        hbm_bw=m.hbm_bw_bytes_per_s,
        per_sm_bw=m.per_sm_bw_bytes_per_s,
        l2_bw_clk=m.l2_bw_bytes_per_clk,
        l2_bytes=m.l2_bytes,
        per_sm_l2_bw=m.per_sm_l2_bw_bytes_per_s,
        strided_l2_bw=m.strided_l2_bw_bytes_per_s,
        strided_hbm_bw=m.strided_hbm_bw_bytes_per_s,
        row_rt=m.row_round_trip_s,
        row_reduce=m.row_reduce_s,
        rms_threads=k.rmsnorm_threads,
        rms_vec=k.rmsnorm_vector_bytes,
        rms_passes=k.rmsnorm_passes,
        ln_threads=k.layernorm_threads,
        ln_vec=k.layernorm_vector_bytes,
        ln_passes=k.layernorm_passes,
        sm_max_threads=k.softmax_max_threads,
        sm_vec=k.softmax_vector_bytes,
        sm_passes=k.softmax_passes,
        gap=k.graph_launch_gap_s,
        eager_launch=k.eager_launch_s,
        eager_gemm_launch=k.eager_gemm_launch_s,
        gemm_fixed=k.gemm_fixed_s,
        ew_fixed=k.elementwise_fixed_s,
        attn_fixed=k.attention_fixed_s,
        attn_cta_fixed=k.attention_cta_fixed_s,
        p=k.overlap_exponent,
        max_split=k.max_split_k,
        stream_k=1.0 if k.stream_k else 0.0,
        bk=k.gemm_tile_k,
        blk=k.attention_block,
        max_kv_splits=k.max_kv_splits,
        nvlink_bw=ln.nvlink_bw_bytes_per_s,
        nccl_channels=ln.nccl_channels,
        ll_base=ln.nccl_ll_base_s,
        ll128_base=ln.nccl_ll128_base_s,
        simple_base=ln.nccl_simple_base_s,
        ll_hop=ln.nccl_ll_hop_s,
        ll128_hop=ln.nccl_ll128_hop_s,
        simple_hop=ln.nccl_simple_hop_s,
        ll_eff=ln.nccl_ll_efficiency,
        ll128_eff=ln.nccl_ll128_efficiency,
        ll_max_bw=ln.nccl_ll_max_bw_bytes_per_s,
        ll128_ch_bw=ln.nccl_ll128_channel_bw_bytes_per_s,
        ll128_on=1.0 if ln.nccl_ll128_enabled else 0.0,
        nvls_on=1.0 if ln.nccl_nvls_enabled else 0.0,
        nvls_lat=ln.nccl_nvls_latency_s,
        nvls_eff=ln.nccl_nvls_efficiency,
        nccl_threads=ln.nccl_threads,
        nccl_ll128_threads=ln.nccl_ll128_threads,
        ll_thr=ln.nccl_ll_bytes_per_thread,
        ll128_thr=ln.nccl_ll128_bytes_per_thread,
        simple_thr=ln.nccl_simple_bytes_per_thread,
        so_bw=ln.scaleout_bw_bytes_per_s,
        so_lat=ln.scaleout_latency_s,
        so_hops=ln.scaleout_switch_hops,
        so_switch_lat=ln.scaleout_switch_latency_s,
        domain=ln.scale_up_domain,
        tdp=pw.tdp_w,
        idle_w=pw.idle_w,
        hbm_j_per_b=pw.hbm_energy_j_per_byte,
        sm_dyn_w=pw.sm_dynamic_w,
        tensor_dyn_w=pw.tensor_dynamic_w,
        clock_exp=pw.clock_exponent,
        tau=pw.time_constant_s,
        from_idle=1.0 if pw.start_from_idle else 0.0,
    )


def dtype_tables(p) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per DTYPE_CODE (bf16, fp8, int8, int4 = W4A16 dequantised to bf16 in the main loop):
    tensor rate per SM clock, bytes per weight element, main-loop efficiency."""
    c = p.chip
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
    return rate, np.array([2.0, 1.0, 1.0, 0.5]), eff


def gpu_timing(stream, p) -> Timing:
    """Every kernel's cycles (at the boost clock) and choice; a kernel holds its unit (the SM
    array, the host thread or the copy path) until it finishes."""
    rate, el, eff = dtype_tables(p)
    s = stream
    cycles, choice = gpu_durations(
        s.opcode, s.chip, s.m, s.n, s.k, s.g, s.h, s.aux, s.offchip_bytes, s.onchip_bytes,
        s.link_bytes, rate, el, eff, timing_record(p),
    )  # fmt: skip
    return Timing.fixed(cycles, choice=choice)


def choice_clock_hz(code: int) -> float:
    """The mean SM clock a kernel's choice code carries (0 for host launches)."""
    return float(code // CLOCK_CODE) * 1e6


def decode_gemm_choice(code: int) -> dict[str, int]:
    """The tile and split-K a GEMM's choice code holds (bm x 1e6 + bn x 1e3 + split)."""
    code %= CLOCK_CODE
    return {"tile_m": code // 1_000_000, "tile_n": code // 1000 % 1000, "split_k": code % 1000}


def decode_allreduce_choice(code: int) -> dict[str, object]:
    """The NCCL protocol, channels and NVLink domains an all-reduce's choice code holds
    ((domains - 1) x 1e6 + protocol x 1e3 + channels)."""
    code %= CLOCK_CODE
    return {
        "nccl_protocol": ("LL", "LL128", "Simple", "NVLS")[code // 1000 % 1000],
        "nccl_channels": code % 1000,
        "nvlink_domains": code // 1_000_000 + 1,
    }
