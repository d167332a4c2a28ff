"""The serving step model on real families: deployments sized from the family's plan, grid
points that are the cycle model exactly, interpolation and composition close to direct
simulation (docs/serving.md, "Accuracy"), the period of a pipelined family."""

from __future__ import annotations

import numpy as np
import pytest

import archsim
from archsim.graph.model import load_model
from archsim.graph.scenario import Precision
from archsim.serve.check import fused_seconds
from archsim.serve.steps import FamilySteps, plan_deployment, step_parts

SPEC = load_model("llama3-8b")
BF16 = Precision()


def h100(precision=BF16, compression=1.0, chips=None):
    dep = plan_deployment("h100-like", SPEC, precision, chips=chips, overrides=(),
                          kv_compression=compression, pool_tokens=32 * 640,
                          token_budget=2048)  # fmt: skip
    return dep, FamilySteps(dep)


def test_h100_deployment_by_hand():
    """llama3-8b on h100-like: 1 GPU. KV capacity = (usable HBM 0.9 x 85.017 GB = 76.516 GB
    - weights 8.03 G params x 2 B = 16.061 GB - activations of a 2048-token prefill
    0.177 GB) / (2 x 32 layers x 8 KV heads x 128 x 2 B = 131,072 B per token) = 459,888."""
    dep, _ = h100()
    assert dep.chips == 1
    assert dep.kv_bytes_per_token == 131072
    assert dep.kv_capacity_tokens == pytest.approx(459_888, abs=200)


def test_kv_precision_and_compression_scale_bytes_and_capacity():
    """fp8 KV halves bytes per token and (weights and activations unchanged) doubles the
    tokens held; int4 quarters; a compression ratio of 2 on fp8 quarters again."""
    base, _ = h100()
    fp8, _ = h100(Precision("bf16", "bf16", "fp8"))
    int4, _ = h100(Precision("bf16", "bf16", "int4"))
    both, _ = h100(Precision("bf16", "bf16", "fp8"), compression=2.0)
    assert fp8.kv_bytes_per_token == base.kv_bytes_per_token / 2
    assert int4.kv_bytes_per_token == base.kv_bytes_per_token / 4
    assert both.kv_bytes_per_token == base.kv_bytes_per_token / 4
    assert fp8.kv_capacity_tokens == pytest.approx(2 * base.kv_capacity_tokens, abs=2)
    assert int4.kv_capacity_tokens == pytest.approx(4 * base.kv_capacity_tokens, abs=4)


def test_grid_points_are_the_cycle_model():
    """At a grid point (batch 16, context 1024; prefill 512) the step model returns the
    simulated period itself."""
    dep, steps = h100()
    r = archsim.simulate("h100-like", SPEC, phase="decode", batch=16, ctx=1024, chips=1)
    assert steps.decode_times(16, np.array([1024.0]))[0] == pytest.approx(step_parts(r)[0])
    r = archsim.simulate("h100-like", SPEC, phase="prefill", batch=1, seq=512, chips=1)
    assert steps.prefill_time(512) == pytest.approx(step_parts(r)[0])


@pytest.mark.parametrize("b, c", [(5, 1500), (20, 2600), (45, 900)])
def test_decode_interpolation_close_to_direct(b, c):
    """Off-grid decode steps interpolated bilinearly within 3% of the cycle model run at
    that exact shape (decode time is near affine in context between doublings)."""
    _, steps = h100()
    r = archsim.simulate("h100-like", SPEC, phase="decode", batch=b, ctx=c, chips=1)
    assert steps.decode_times(b, np.array([float(c)]))[0] == pytest.approx(
        step_parts(r)[0], rel=0.03
    )


@pytest.mark.parametrize("n", [300, 700, 1500])
def test_prefill_interpolation_close_to_direct(n):
    """Off-grid prefills within 3%: the token grid holds every multiple of 64 (and the
    count above it) to 1024, so GPU tile steps are not smoothed away."""
    _, steps = h100()
    r = archsim.simulate("h100-like", SPEC, phase="prefill", batch=1, seq=n, chips=1)
    assert steps.prefill_time(n) == pytest.approx(step_parts(r)[0], rel=0.03)


@pytest.mark.parametrize(
    "d, c, chunks",
    [(8, 1024, [(512, 0)]), (32, 2048, [(224, 0)]), (64, 1024, [(128, 0), (384, 1024)])],
)
def test_mixed_step_composition_matches_a_fused_graph(d, c, chunks):
    """A chunked-prefill step composed as L(all new tokens) + chunk attention over its
    cached prefix + the decodes' attention is within 2.5% of one fused forward pass (both
    attentions in every layer) timed by h100-like directly."""
    _, steps = h100()
    fused = fused_seconds("h100-like", SPEC, 1, d, c, chunks)
    assert steps.step_time(d, c, 1, chunks) == pytest.approx(fused, rel=0.025)


def test_pipelined_step_is_its_period():
    """groq-like at batch 8 runs micro-batches through its stages: the serving step is the
    period between rounds (``round_s`` = tokens / tokens_per_s: every sequence advances one
    token per round), not one micro-batch's trip (``seconds``); h100-like's period is its
    latency."""
    r = archsim.simulate("groq-like", SPEC, phase="decode", batch=8, ctx=256, layers=2)
    assert step_parts(r)[0] == pytest.approx(r.extra["round_s"])
    assert step_parts(r)[0] != pytest.approx(r.seconds, rel=0.01)
    g = archsim.simulate("h100-like", SPEC, phase="decode", batch=8, ctx=256, layers=2)
    assert step_parts(g)[0] == pytest.approx(g.seconds)


def test_layer_scaling_close_to_whole_model():
    """--sim-layers 2: two-layer steps scaled by the whole/2-layer ratio at one reference
    point (decode b=1 ctx 1024) stay within 1% of the whole model at another (b=32)."""
    from archsim.serve.run import layer_scale
    from archsim.serve.sim import SchedulerConfig

    dep, whole = h100()
    scaled = FamilySteps(dep, layers=2, scale=layer_scale(dep, 2, SchedulerConfig()))
    x = np.array([700.0])
    assert scaled.decode_times(32, x)[0] == pytest.approx(whole.decode_times(32, x)[0], rel=0.01)
