"""Smoke: every shipped architecture x every shipped model at small sizes either simulates
to a finite, positive result or refuses with one ArchsimError line."""

from __future__ import annotations

import math

import pytest

import archsim
from archsim.config import arch_names
from archsim.core.errors import ArchsimError, UnsupportedOpError
from archsim.graph.model import load_model, model_names

pytestmark = pytest.mark.smoke


@pytest.mark.parametrize("arch", arch_names())
@pytest.mark.parametrize("model", model_names())
@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_every_arch_every_model(arch, model, phase):
    """Small scenario, one decoder layer: sane numbers, or a clean one-line refusal (an op
    kind the family's supported_ops lacks, or a model the graph cannot build yet)."""
    spec = load_model(model)
    try:
        r = archsim.simulate(arch, model, phase=phase, batch=2, ctx=64, seq=32, layers=1)
    except UnsupportedOpError as exc:  # the family's supported_ops lacks an op of the model
        assert "\n" not in str(exc) and "cannot run" in str(exc)
        return
    except ArchsimError as exc:
        assert spec.is_moe or spec.mla is not None, f"unexpected refusal: {exc}"
        assert "\n" not in str(exc)
        return
    assert r.cycles > 0 and r.chips >= 1
    assert math.isfinite(r.seconds) and r.seconds > 0
    assert r.tokens_per_s > 0 and r.bound in ("compute", "memory", "communication", "overhead")
