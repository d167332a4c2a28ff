"""h100-like across GPU generations: the clock from power (first-order limiter, periodic
steady state), row kernels (softmax, layernorm) with their passes, Ampere vs Hopper features,
and the a100-like / h200 / b200 presets. Numbers are hand counts from the formulas in
docs/arch/h100-like.md with the presets' values, or the issue's acceptance criteria."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

import archsim
from archsim.config import load_arch
from archsim.core.errors import ArchsimError
from archsim.families.gpu.timing import (
    filter_pass,
    power_clocks,
    row_walk_seconds,
    softmax_threads,
    timing_record,
)


def _record(**changes):
    return timing_record(load_arch("h100-like"))._replace(**changes)


def test_limiter_holds_boost_until_the_filtered_power_reaches_the_tdp():
    """One kernel of 5 ms at boost drawing 1000 W on a 700 W board, from 80 W idle, tau 2 ms:
    the filtered power reaches 700 W at t* = 2 ln((1000 - 80) / (1000 - 700)) = 2.241 ms; the
    rest of its work runs at the capped clock, where the whole kernel would take 6 ms:
    2.241 + (1 - 2.241 / 5) x 6 = 5.552 ms. A 300 W kernel after it runs at boost."""
    q = _record(tdp=700.0, idle_w=80.0, tau=2e-3)
    t_b = np.array([5e-3, 1e-3])
    t_c = np.array([6e-3, 1e-3])
    p_b = np.array([1000.0, 300.0])
    f_cap = np.array([1.7e9, q.f_boost])
    secs, clock = np.zeros(2), np.zeros(2)
    filter_pass(np.arange(2), t_b, t_c, p_b, q, 80.0, secs, clock, f_cap)
    t_star = 2e-3 * math.log(920 / 300)
    assert secs[0] == pytest.approx(t_star + (1 - t_star / 5e-3) * 6e-3)
    assert clock[0] == pytest.approx((t_star * q.f_boost + (secs[0] - t_star) * 1.7e9) / secs[0])
    assert secs[1] == 1e-3 and clock[1] == q.f_boost


def test_periodic_steady_state_starts_where_it_ends():
    """Steps run back to back: the filtered power a step starts with is the power it ends
    with. Kernel 1 (2 ms at boost, 1000 W, 2.4 ms if capped), then kernel 2 (8 ms, 200 W),
    tau 2 ms, TDP 700 W. Kernel 1 reaches the TDP before its end and leaves the filter at
    700 W; kernel 2 pulls it to 200 + 500 e^-4 = 209.16 W, the start power of the next step.
    From there kernel 1 runs t* = 2 ln((1000 - 209.16) / 300) = 1.9385 ms at boost and the
    rest capped: 1.9385 + (1 - 1.9385/2) x 2.4 = 2.0123 ms. From idle (80 W) it would have
    run longer at boost."""
    q = _record(tdp=700.0, idle_w=80.0, tau=2e-3, from_idle=0.0)
    t_b, t_c = np.array([2e-3, 8e-3]), np.array([2.4e-3, 8e-3])
    p_b, f_cap = np.array([1000.0, 200.0]), np.array([1.7e9, q.f_boost])
    one_gpu, on_sms = np.zeros(2, dtype=np.int64), np.ones(2, dtype=np.bool_)
    secs, _ = power_clocks(one_gpu, on_sms, t_b, t_c, p_b, f_cap, q)
    p0 = 200 + 500 * math.exp(-4)
    t_star = 2e-3 * math.log((1000 - p0) / 300)
    assert secs[0] == pytest.approx(t_star + (1 - t_star / 2e-3) * 2.4e-3, rel=1e-6)
    assert secs[1] == 8e-3
    cold, _ = power_clocks(one_gpu, on_sms, t_b, t_c, p_b, f_cap, q._replace(from_idle=1.0))
    assert cold[0] < secs[0]


def test_per_layer_prefill_time_does_not_depend_on_layers_simulated():
    """Issue 13 acceptance: --layers 1 and --layers 2 give per-layer times within 2% (the
    step is simulated at its periodic steady state, not from a cold start)."""
    t = {n: archsim.simulate("h100-like", "llama3-8b", phase="prefill", seq=8192, layers=n)
         for n in (1, 2)}  # fmt: skip
    assert t[2].seconds / 2 == pytest.approx(t[1].seconds, rel=0.02)


def test_h200_prefill_runs_at_the_h100_speed():
    """Issue 13 acceptance: an H200 is H100 silicon with the same 700 W limit, so its
    compute-bound prefill (llama3-8b, 8k tokens, one layer) runs within a few percent of the
    H100's (HBM3e only speeds the memory-bound kernels), at the same capped clock."""
    h100 = archsim.simulate("h100-like", "llama3-8b", phase="prefill", seq=8192, layers=1)
    h200 = archsim.simulate("h200", "llama3-8b", phase="prefill", seq=8192, layers=1)
    assert h200.seconds == pytest.approx(h100.seconds, rel=0.03)
    assert h200.seconds <= h100.seconds
    assert h200.extra["mean_sm_clock_hz"] == pytest.approx(h100.extra["mean_sm_clock_hz"],
                                                           rel=0.01)  # fmt: skip


def test_memory_bound_decode_never_throttles():
    """A batch-1 decode step (weight-bound GEMVs at ~3 TB/s) draws well under 700 W:
    every kernel at the 1.98 GHz boost clock."""
    r = archsim.simulate("h100-like", "llama3-8b", batch=1, ctx=1024, layers=2)
    assert r.extra["mean_sm_clock_hz"] == pytest.approx(1.98e9)


def test_a100_gemm_holds_1410_mhz_at_its_datasheet_rate():
    """A100: a tensor-saturated GEMM stays at 1410 MHz within 400 W (Chips and Cheese), at
    the 0.88 per-clock efficiency read from MAMF: 8192^3 takes at least
    2 x 8192^3 / (108 x 2048 x 1.41e9 x 0.88) = 4.01 ms and at most 3% more."""
    r = archsim.simulate_kernel("a100-like", "gemm", m=8192, n=8192, k=8192, repeat=3)
    ideal = 2 * 8192**3 / (108 * 2048 * 1.41e9 * 0.88)
    assert ideal <= r.seconds <= 1.03 * ideal
    assert r.choice["sm_clock_hz"] == pytest.approx(1.41e9)


def test_softmax_rows_walk_three_passes_hand_count():
    """PyTorch's block softmax over 4096 x 4096 bf16 on an A100: 8 KB rows, 512 threads of
    16 B (one load each per pass), 2048 / 512 = 4 CTAs per SM, 432 rows at a time: 10 waves
    x 3 passes x (213 ns + 296 ns). The rows in flight (3.5 MB) fit in the 40 MB L2, so the
    re-reads do not go to HBM."""
    assert softmax_threads(8192, 16, 1024) == 512
    walk, miss = row_walk_seconds(4096, 8192, 3, 512, 16, 2.13e-7, 2.96e-7, 108, 2048, 32,
                                  4.194304e7, 1.8e12)  # fmt: skip
    assert walk == pytest.approx(10 * 3 * (2.13e-7 + 2.96e-7))
    assert miss == 0.0


def test_layernorm_rows_that_overflow_l2_reread_from_hbm():
    """LayerNorm over 4096 rows of 64 KB on an A100: 128-thread CTAs, 16 per SM, 1728 rows
    in flight = 113 MB > 40 MB of L2, so the second pass reads the 268 MB again from HBM."""
    walk, miss = row_walk_seconds(4096, 65536, 2, 128, 8, 2.13e-7, 2.96e-7, 108, 2048, 32,
                                  4.194304e7, 1.8e12)  # fmt: skip
    assert miss == pytest.approx(4096 * 65536 / 1.8e12)
    assert walk == pytest.approx(3 * 2 * (64 * 2.13e-7 + 2.96e-7))


def test_softmax_short_rows_take_the_one_pass_warp_kernel():
    """Rows of up to 1024 columns run PyTorch's warp softmax (one pass, registers): at 4096
    x 1024 the kernel is a vectorised stream, so it costs less per byte than 4096 x 2048,
    which walks its rows three times."""
    short = archsim.simulate_kernel("a100-like", "softmax", rows=4096, cols=1024)
    long = archsim.simulate_kernel("a100-like", "softmax", rows=4096, cols=2048)
    assert short.seconds / 1024 < long.seconds / 2048


@pytest.mark.parametrize(
    "op, shape",
    [
        ("gemm", dict(m=4096, n=4096, k=4096)),
        ("bmm", dict(batch=8, m=512, n=512, k=128)),
        ("softmax", dict(rows=4096, cols=4096)),
        ("layernorm", dict(rows=4096, cols=4096)),
        ("gelu", dict(rows=1, cols=2**24)),
        ("all-reduce", dict(bytes=2**20, ranks=4)),
    ],
)
def test_a100_kernel_menu_with_repeat_and_eager(op, shape):
    """Issue 13 acceptance: archsim kernel --arch a100-like covers these ops, --repeat and
    --launch eager. Ten back-to-back calls cost ten times one (all at 1410 MHz, under the
    A100's power limit); eagerly each call also waits for its host launch."""
    one = archsim.simulate_kernel("a100-like", op, **shape)
    ten = archsim.simulate_kernel("a100-like", op, repeat=10, **shape)
    eager = archsim.simulate_kernel("a100-like", op, options={"launch": "eager"}, **shape)
    assert ten.total_cycles == 10 * one.total_cycles
    assert eager.seconds > one.seconds and eager.choice["includes_host_launch"]


def test_a100_cli_all_reduce_four_ranks():
    """The CLI form of the acceptance criterion prints one JSON document with NCCL's
    protocol and channels."""
    out = subprocess.run(
        [sys.executable, "-m", "archsim.cli", "kernel", "--arch", "a100-like", "all-reduce",
         "--bytes", "1048576", "--ranks", "4", "--repeat", "3", "--launch", "eager", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert '"nccl_protocol"' in out.stdout and '"nccl_channels"' in out.stdout


def test_ampere_refuses_hopper_only_features():
    """a100-like has no fp8 tensor cores and no wgmma: an fp8 GEMM, or FA3 prefill
    attention asked for by --set, is refused with one line."""
    with pytest.raises(ArchsimError, match="no fp8 tensor cores") as exc:
        archsim.simulate_kernel("a100-like", "gemm", dtype="fp8", m=64, n=64, k=64)
    assert "\n" not in str(exc.value)
    with pytest.raises(ArchsimError, match="fa3 needs asynchronous warpgroup MMA"):
        archsim.simulate_kernel(
            "a100-like", "attention", batch=1, heads=8, head_dim=128, ctx=1024, q_len=1024,
            overrides={"kernel.attention_kernel": "fa3"},
        )  # fmt: skip


def test_tma_multicast_halves_b_panel_traffic_only_on_hopper():
    """Without TMA multicast (Ampere) a large-m GEMM loads every B panel per CTA: turning
    multicast off on the H100 never makes an L2-bound GEMM faster, and the A100 preset has
    it off."""
    shape = dict(m=4096, n=4096, k=4096)
    on = archsim.simulate_kernel("h100-like", "gemm", **shape).seconds
    off = archsim.simulate_kernel(
        "h100-like", "gemm", overrides={"chip.tma_multicast": False}, **shape
    ).seconds
    assert off >= on
    assert not load_arch("a100-like").chip.tma_multicast


def test_b200_preset_scales_the_tensor_rate():
    """b200: 148 SMs x 8192 bf16 FLOP/clk at 1.965 GHz and 0.74 efficiency: a 16384^2 x 8192
    GEMM (4.4 PFLOP) runs at most 2.25 PF/s x (1.965/1.86), and under the 1000 W limit from
    idle for its first 2 ms."""
    r = archsim.simulate_kernel("b200", "gemm", m=16384, n=16384, k=8192)
    peak = 148 * 8192 * 1.965e9
    assert r.flops / r.seconds <= 0.74 * peak * 1.0001
    assert r.flops / r.seconds >= 0.70 * peak
