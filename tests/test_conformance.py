"""Conformance: on every family, no instruction beats the datasheet ceilings its family
declares (peak FLOP/s at the weights' precision, each memory tier's bandwidth, the links);
a GPU step is its kernels one after another; a step's FLOPs are the model's."""

from __future__ import annotations

import numpy as np
import pytest

import archsim
from archsim.config import arch_names, load_arch
from archsim.core.errors import ArchsimError
from archsim.core.registry import get_family
from archsim.graph.scenario import Precision
from archsim.pipeline import onchip_ceiling

pytestmark = pytest.mark.conformance

CASES = [
    ("h100-like", "bf16"), ("h100-like", "fp8"), ("h100-like", "int4"),
    ("groq-like", "bf16"), ("groq-like", "int8"), ("groq3-lpx", "fp8"),
]  # fmt: skip
# every other shipped preset at bf16 (a preset that cannot run bf16 refuses with one line)
CASES += [(a, "bf16") for a in arch_names() if a not in {c[0] for c in CASES}]


def _floor(amount: np.ndarray, rate: float) -> np.ndarray:
    return amount / rate if rate > 0 else np.zeros_like(amount)


@pytest.mark.parametrize("arch, precision", CASES)
@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_no_instruction_beats_its_ceilings(arch, precision, phase):
    """duration >= FLOPs / peak, >= bytes / tier bandwidth, >= link bytes / link bandwidth."""
    try:
        r = archsim.simulate(
            arch, "llama3-8b", phase=phase, batch=4, ctx=256, seq=256, precision=precision,
            layers=2,
        )  # fmt: skip
    except ArchsimError as exc:
        assert "\n" not in str(exc)
        pytest.skip(f"{arch} refuses: {exc}")
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


def _family_presets() -> list[str]:
    """The preset named after each registered family (its default machine)."""
    from archsim.config import arch_names
    from archsim.core.registry import family_names

    return [f for f in family_names() if f in arch_names()]


@pytest.mark.parametrize("arch", _family_presets())
@pytest.mark.parametrize("batch", [1, 64])
def test_step_work_is_the_models_not_the_machines(arch, batch):
    """A step's FLOPs are the model's, on every family: the graph's count, or up to the
    rounding a family declares — a pipelined family that cuts the batch into whole
    micro-batches (e.g. 3 x 22 = 66 for 64 sequences) may count the padded sequences
    (``extra.micro_batches x extra.micro_batch``), and slices rounded up to whole columns
    add under 0.1%. A family that cannot run the model refuses with one line."""
    from archsim.core.errors import ArchsimError
    from archsim.graph import build_graph, graph_totals
    from archsim.graph.model import load_model
    from archsim.graph.scenario import Scenario

    kw = dict(phase="decode", batch=batch, ctx=128, layers=2)
    expected = graph_totals(
        build_graph(load_model("llama3-8b"), Scenario(batch=batch, ctx=128), layers=2)
    ).flops
    try:
        r = archsim.simulate(arch, "llama3-8b", **kw)
    except ArchsimError as exc:
        assert "\n" not in str(exc)
        pytest.skip(f"{arch} refuses: {exc}")
    served = r.extra.get("micro_batches", 1) * r.extra.get("micro_batch", batch) or batch
    assert expected * (1 - 1e-9) <= r.flops <= expected * max(served, batch) / batch * (1 + 1e-3)
