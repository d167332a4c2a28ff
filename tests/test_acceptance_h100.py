"""Foundation acceptance on h100-like: a decode step's time against the roofline that
bounds it, and how it grows with batch and context.

Bounds are computed here from the model's byte/FLOP counts and the datasheet peaks (3.35 TB/s
HBM, 989.4 TFLOP/s bf16 at 1.83 GHz; hardware-specs.md), not taken from the simulator.
"""

from __future__ import annotations

import pytest

import archsim
from archsim.graph import kv_bytes_per_token, param_count
from archsim.graph.model import load_model

pytestmark = pytest.mark.conformance

PEAK_BW = 3.35e12  # B/s, datasheet
PEAK_BF16 = 132 * 4096 * 1.98e9  # FLOP/s at the max boost clock: no kernel can beat it


def _decode(batch, ctx, **kw):
    return archsim.simulate(
        "h100-like", "llama3-8b", phase="decode", batch=batch, ctx=ctx, chips=1, **kw
    )


def test_llama3_8b_batch1_between_5_and_9_ms():
    """Batch-1 decode: ~16 GB of weights over ~3 TB/s achievable => 5..9 ms, and never
    faster than the weights over the datasheet peak (16.06 GB / 3.35 TB/s = 4.8 ms)."""
    spec = load_model("llama3-8b")
    weights = param_count(spec) * 2
    r = _decode(1, 1024)
    assert weights / PEAK_BW < r.seconds
    assert 5e-3 <= r.seconds <= 9e-3


def test_flat_then_rising_in_batch():
    """Weight-bound at small batch (doubling the batch adds < 5%); compute-bound at large
    batch, where the roofline's FLOP term doubles with the batch (> 1.5x from 512 to 1024)."""
    t = {b: _decode(b, 128).seconds for b in (1, 2, 512, 1024)}
    assert t[2] / t[1] < 1.05
    assert t[1024] / t[512] > 1.5


@pytest.mark.parametrize("batch", [1, 16, 128, 512])
def test_never_beats_the_roofline(batch):
    """Step time >= max(all bytes / peak BW, all FLOPs / peak FLOP/s) of the step."""
    spec = load_model("llama3-8b")
    ctx = 256
    r = _decode(batch, ctx)
    kv = batch * (ctx + 1) * kv_bytes_per_token(spec, 2)
    lower = max((param_count(spec) * 2 + kv) / PEAK_BW, r.flops / PEAK_BF16)
    assert r.seconds >= lower


def test_context_adds_kv_streaming_time():
    """Going from 512 to 8192 cached tokens at batch 8 adds the extra KV read: at least
    dKV / peak BW, and at most dKV / (half of peak) (long KV streams run near bandwidth)."""
    spec = load_model("llama3-8b")
    d_kv = 8 * (8192 - 512) * kv_bytes_per_token(spec, 2)
    dt = _decode(8, 8192).seconds - _decode(8, 512).seconds
    assert d_kv / PEAK_BW <= dt <= d_kv / (0.5 * PEAK_BW)


def test_each_kernel_within_roofline():
    """Every instruction takes at least its own FLOPs / peak and HBM bytes / peak."""
    for phase in ("decode", "prefill"):
        r = archsim.simulate(
            "h100-like", "llama3-8b", phase=phase, batch=4, ctx=512, seq=512, layers=2
        )
        s, secs = r.stream, r.timeline.duration / r.clock_hz
        assert (secs >= s.flops / PEAK_BF16).all()
        assert (secs >= s.offchip_bytes / PEAK_BW).all()


def test_tensor_parallel_splits_weight_time():
    """llama3-70b on 8 GPUs streams 1/8 of the weights per GPU: faster than on 2, but not 4x
    faster (all-reduces and fixed kernel costs do not shrink)."""
    t2 = archsim.simulate("h100-like", "llama3-70b", batch=1, ctx=1024, chips=2).seconds
    t8 = archsim.simulate("h100-like", "llama3-70b", batch=1, ctx=1024, chips=8).seconds
    assert t8 < t2 < 4 * t8


def test_bound_by_op_kind_follows_arithmetic_intensity():
    """At batch 1 a projection does 1 FLOP per weight byte (far below the ~300 FLOP/B ridge
    of 989 TFLOP/s / 3.35 TB/s): memory-bound. A 4096-token prefill does ~4096 FLOP/B:
    compute-bound."""
    dec = archsim.simulate("h100-like", "llama3-8b", batch=1, ctx=512, layers=1)
    pre = archsim.simulate("h100-like", "llama3-8b", phase="prefill", seq=4096, layers=1)
    assert dec.bound_by_op_kind["gate_up_proj"] == "memory"
    assert pre.bound_by_op_kind["gate_up_proj"] == "compute"


def test_h200_preset_gains_what_its_bandwidth_buys():
    """h200 = h100-like with 4.3 TB/s achieved HBM (vs 3.03): a batch-1 llama3-8b decode step
    streams ~16.1 GB of weights, so it saves at most 16.1 GB x (1/3.03 - 1/4.3) TB/s = 1.57 ms
    (fixed kernel costs are the same), and at least 75% of that (skinny GEMMs with few tiles
    are held by per-SM fill, not HBM)."""
    spec = load_model("llama3-8b")
    h100 = _decode(1, 1024)
    h200 = archsim.simulate("h200", "llama3-8b", batch=1, ctx=1024, chips=1)
    streamed = param_count(spec) * 2 + 1025 * kv_bytes_per_token(spec, 2)
    gain = streamed * (1 / 3.03e12 - 1 / 4.3e12)
    assert 0.75 * gain <= h100.seconds - h200.seconds <= 1.02 * gain
