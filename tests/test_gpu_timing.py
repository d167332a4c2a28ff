"""h100-like timing mechanisms against hand-worked formulas (h100-mechanisms.md)."""

from __future__ import annotations

import math

import pytest

import archsim
from archsim.config import load_arch
from archsim.core.isa import StreamBuilder
from archsim.core.registry import get_family

F = 1.98e9  # boost clock of the preset


def _one(opcode, **kw):
    fam = get_family("h100-like")
    p = load_arch("h100-like")
    b = StreamBuilder(fam.opcodes)
    b.add(opcode, unit="gpu0.sm", op="x", **kw)
    timing = fam.timing(b.build(), p)
    return int(timing.work[0]), int(timing.choice[0])


def test_allreduce_small_message_is_ring_ll_on_one_channel_cycle_exact():
    """16 KB over 8 GPUs, NCCL's model (tuning.cc): LL costs 6.6 + 14 x 0.6 us = 15.0 us of
    latency at min(141 GB/s, 0.5 x 370 GB/s) x 8/14 = 80.6 GB/s (LL128: 14 + 14 x 1.9 =
    40.6 us; Simple: 8.4 + 14 x 3.4 = 56 us), so LL. enqueue.cc then drops channels while
    16384 B < channels x 512 threads x (8 B x 8 ranks): one of the 32 channels is left, with
    1/32 of the bandwidth. Gap 1.26 us + 15.0 us + 16384 B / (80.6 GB/s / 32)."""
    alg = 1.41e11 * 8 / 14
    t = 1.26e-6 + 6.6e-6 + 14 * 0.6e-6 + 16384 / (alg / 32)
    cycles, choice = _one("all_reduce", g=8, link_bytes=16384.0)
    assert cycles == math.ceil(t * F)
    assert choice % 1_000_000_000 == 0 * 1000 + 1  # LL, one channel


def test_allreduce_protocol_follows_message_size():
    """4 MiB over 8 GPUs: LL128 (40.6 us + 4 MiB / (min(0.92 x 370, 32 x 36.7) GB/s x 8/14))
    beats Simple (56 us + 4 MiB / (370 x 8/14 GB/s)) and LL (15 us + 4 MiB / 80.6 GB/s),
    on all 32 channels (4 MiB >= 32 x 640 x 8 B). At 256 MB Simple wins: 56 us +
    256 MB / 211 GB/s, the full ring bandwidth."""
    nbytes = 4 * 2**20
    t = 1.26e-6 + 14e-6 + 14 * 1.9e-6 + nbytes / (0.92 * 3.7e11 * 8 / 14)
    cycles, choice = _one("all_reduce", g=8, link_bytes=float(nbytes))
    assert cycles == math.ceil(t * F)
    assert choice % 1_000_000_000 == 1 * 1000 + 32  # LL128, 32 channels
    big = 256e6
    simple = 1.26e-6 + 8.4e-6 + 14 * 3.4e-6 + big / (3.7e11 * 8 / 14)
    cycles, choice = _one("all_reduce", g=8, link_bytes=big)
    assert cycles == math.ceil(simple * F)
    assert choice % 1_000_000_000 == 2 * 1000 + 32  # Simple


def test_residual_add_l2_resident_cycle_exact():
    """A batch-1 residual add (hidden 4096: 24 KB, 2 CTAs) served from L2: gap 1.26 us +
    0.18 us fixed + 24576 B / (2 CTAs x 76 GB/s per SM)."""
    t = 1.26e-6 + 1.8e-7 + 24576 / (2 * 7.6e10)
    cycles, _ = _one("elementwise", aux=2, g=0, onchip_bytes=24576.0)
    assert cycles == math.ceil(t * F)


def test_rms_norm_walks_its_row():
    """One RMSNorm row of 8 KB (one CTA of 128 threads x 8 B loads: 8 dependent loads per
    pass, 2 passes) walks for 2 x (8 x 166 ns + 211 ns) = 3.078 us; it hides the 0.323 us
    stream of its 24 KB from L2 (smooth max, p = 4), so it costs that walk where a plain
    kernel of the same bytes costs the stream."""
    base, _ = _one("elementwise", aux=1, g=0, m=1, onchip_bytes=24576.0)
    norm, _ = _one("elementwise", aux=1, g=2, m=1, h=8192, onchip_bytes=24576.0)
    stream = 24576 / 7.6e10
    walk = 2 * (8 * 1.66e-7 + 2.11e-7)
    both = walk * (1 + (stream / walk) ** 4) ** 0.25
    assert abs((norm - base) / F - (both - stream)) < 2 / F


def test_fp8_gemm_rate_is_its_measured_efficiency():
    """A large compute-bound GEMM in fp8 runs at 2 x 0.66 / 0.75 of the bf16 rate (MAMF: fp8
    1.40 PF/s vs bf16 0.79 PF/s), not at twice it."""
    shape = dict(m=8192, n=8192, k=8192)
    bf16, _ = _one("gemm", aux=0, **shape)
    fp8, _ = _one("gemm", aux=1, **shape)
    assert bf16 / fp8 == pytest.approx(2 * 0.66 / 0.75, rel=0.04)


def test_skinny_gemm_uses_64_row_tiles_and_large_uses_128_or_more():
    """DeepGEMM/cuBLAS rule: BM = 64 only for m <= 64 (choice = BM*1e6 + BN*1e3 + split)."""
    _, small = _one("gemm", m=16, n=4096, k=4096, aux=0)
    _, large = _one("gemm", m=4096, n=4096, k=4096, aux=0)
    assert small % 1_000_000_000 // 1_000_000 == 64
    assert large % 1_000_000_000 // 1_000_000 in (128, 256)


def test_gemv_time_is_fixed_costs_plus_weights_over_hbm():
    """m = 1 on the 235 MB gate_up weights: 1.26 us gap + 2 us fixed + bytes / 3.03 TB/s,
    within 2% (the activation and output bytes are the rest)."""
    cycles, _ = _one("gemm", m=1, n=28672, k=4096, aux=0)
    t = 1.26e-6 + 2e-6 + 28672 * 4096 * 2 / 3.03e12
    assert cycles / F == pytest.approx(t, rel=0.02)


def test_decode_knee_of_a_70b_layer():
    """A llama3-70b layer's decode step is flat while the 1.7 GB of weights dominate (batch
    64 within 20% of batch 1) and grows with batch once compute does (batch 2048 > 10x)."""

    def t(b):
        return archsim.simulate(
            "h100-like", "llama3-70b", batch=b, ctx=1024, layers=1, chips=1
        ).seconds

    t1 = t(1)
    assert t(64) < 1.2 * t1
    assert t(2048) > 10 * t1
