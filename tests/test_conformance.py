"""Conformance: on every family, no instruction beats the datasheet ceilings its family
declares (peak FLOP/s at the weights' precision, each memory tier's bandwidth, the links),
and a step is never shorter than its busiest unit."""

from __future__ import annotations

import numpy as np
import pytest

import archsim
from archsim.arch import get_family
from archsim.config import load_arch
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
    peak = get_family(r.family).peak(
        load_arch(arch), r.meta["scenario"]["precision"].split(",")[0].removeprefix("w=")
    )
    secs = r.timeline.duration / r.clock_hz
    slack = 1 + 1e-9  # cycles are rounded up, never down
    assert np.all(secs * slack >= _floor(s.flops, peak["flops_per_s"]))
    assert np.all(secs * slack >= _floor(s.offchip_bytes, peak["offchip_bytes_per_s"]))
    assert np.all(secs * slack >= _floor(s.link_bytes, peak["link_bytes_per_s"]))
    onchip = onchip_ceiling(s, peak)  # whole SRAM, or a unit's own feed (one MXM plane)
    if onchip is not None:
        assert np.all(secs * slack >= s.onchip_bytes / onchip)


@pytest.mark.parametrize("arch", ["h100-like", "groq-like"])
def test_step_at_least_its_busiest_unit(arch):
    """The makespan covers every unit's busy cycles (units execute one thing at a time)."""
    r = archsim.simulate(arch, "llama3-8b", batch=2, ctx=128, layers=2)
    assert r.cycles >= int(r.timeline.busy.max())
    assert r.cycles == int(r.timeline.end.max())
