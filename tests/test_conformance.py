"""Conformance: on every family, no instruction beats the datasheet ceilings its family
declares (peak FLOP/s at the weights' precision, each memory tier's bandwidth, the links);
a GPU step is its kernels one after another; a step's FLOPs are the model's."""

from __future__ import annotations

import numpy as np
import pytest

import archsim
from archsim.config import load_arch
from archsim.core.registry import get_family
from archsim.graph.scenario import Precision
from archsim.pipeline import onchip_ceiling

pytestmark = pytest.mark.conformance

CASES = [
    ("h100-like", "bf16"), ("h100-like", "fp8"), ("h100-like", "int4"),
    ("groq-like", "bf16"), ("groq-like", "int8"), ("groq3-lpx", "fp8"),
]  # fmt: skip


def _floor(amount: np.ndarray, rate: float) -> np.ndarray:
    return amount / rate if rate > 0 else np.zeros_like(amount)


@pytest.mark.parametrize("arch, precision", CASES)
@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_no_instruction_beats_its_ceilings(arch, precision, phase):
    """duration >= FLOPs / peak, >= bytes / tier bandwidth, >= link bytes / link bandwidth."""
    r = archsim.simulate(
        arch, "llama3-8b", phase=phase, batch=4, ctx=256, seq=256, precision=precision, layers=2
    )
    s = r.stream
    peak = get_family(r.family).peak(load_arch(arch), Precision.parse(r.precision).weights)
    secs = r.timeline.duration / r.clock_hz
    slack = 1 + 1e-9  # cycles are rounded up, never down
    assert np.all(secs * slack >= _floor(s.flops, peak.flops_per_s))
    assert np.all(secs * slack >= _floor(s.offchip_bytes, peak.offchip_bytes_per_s))
    assert np.all(secs * slack >= _floor(s.link_bytes, peak.link_bytes_per_s))
    onchip = onchip_ceiling(s, peak)  # whole SRAM, or a unit's own feed (one MXM plane)
    if onchip is not None:
        assert np.all(secs * slack >= s.onchip_bytes / onchip)


@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_gpu_step_is_its_kernels_one_after_another(phase):
    """One GPU runs its kernels one at a time on its SM array: a single-GPU step replayed from
    a CUDA graph lasts the sum of its kernels' cycles as the timing pass gives them. Fails if
    the engine overlapped kernels of one unit or left gaps between them."""
    r = archsim.simulate(
        "h100-like", "llama3-8b", phase=phase, batch=4, ctx=256, seq=256, layers=2,
        overrides={"kernel.prefill_cuda_graphs": True},
    )  # fmt: skip
    sm = np.array([u.endswith(".sm") for u in r.stream.unit_names])[r.stream.unit]
    assert r.cycles == int(r.timing.work[sm].sum() + r.timing.latency[sm].sum())


@pytest.mark.parametrize("batch", [1, 64])
def test_step_work_is_the_models_not_the_machines(batch):
    """A step's FLOPs are the model's: equal on every family (groq-like simulates one
    micro-batch and scales it by the micro-batches of a round, which may round the batch up
    to a whole number of micro-batches, e.g. 3 x 22 = 66 for 64 sequences; its slices also
    round their widths up to whole columns, under 0.1%), and equal to the graph's count."""
    from archsim.graph import build_graph, graph_totals
    from archsim.graph.model import load_model
    from archsim.graph.scenario import Scenario

    kw = dict(phase="decode", batch=batch, ctx=128, layers=2)
    expected = graph_totals(
        build_graph(load_model("llama3-8b"), Scenario(batch=batch, ctx=128), layers=2)
    ).flops
    gpu = archsim.simulate("h100-like", "llama3-8b", **kw)
    tsp = archsim.simulate("groq-like", "llama3-8b", **kw)
    assert gpu.flops == pytest.approx(expected, rel=1e-9)
    served = tsp.extra["micro_batches"] * tsp.extra["micro_batch"]
    assert expected <= tsp.flops * (1 + 1e-9) <= expected * served / batch * (1 + 1e-3)
