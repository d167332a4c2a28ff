"""Invariants every family keeps, over random valid scenarios and configs (hypothesis, with
few examples so that the default run stays short): finite positive results, bit-identical
reruns, a latency no shorter than the roofline bound of the work on any one chip, and no
step made slower by more bandwidth or a faster clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import archsim
from archsim.config import arch_names, load_arch
from archsim.core.errors import ArchsimError
from archsim.core.registry import family_names, get_family

FAMILIES = [f for f in family_names() if f in arch_names()]
SETTINGS = settings(
    max_examples=6, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip

scenarios = st.fixed_dictionaries(
    {
        "phase": st.sampled_from(["decode", "prefill"]),
        "batch": st.sampled_from([1, 2, 8, 32]),
        "ctx": st.sampled_from([16, 300, 2048]),
        "seq": st.sampled_from([16, 128, 512]),
        "layers": st.sampled_from([1, 2]),
    }
)


def _run(arch: str, sc: dict, overrides: dict | None = None):
    """The result, or None where the family refuses the scenario with one line."""
    try:
        return archsim.simulate(arch, "llama3-8b", overrides=overrides or {}, **sc)
    except ArchsimError as exc:
        assert "\n" not in str(exc)
        return None


def _keys_with_unit(schema: type[BaseModel], units: set[str], prefix: str = "") -> list[str]:
    """Config keys whose field declares one of ``units``."""
    out = []
    for name, info in schema.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _keys_with_unit(ann, units, f"{prefix}{name}.")
        elif (info.json_schema_extra or {}).get("unit") in units:
            out.append(f"{prefix}{name}")
    return out


def _scaled(arch: str, units: set[str], factor: float) -> dict:
    """Every key of ``arch`` with one of ``units``, multiplied by ``factor``."""
    p = load_arch(arch)
    out = {}
    for key in _keys_with_unit(type(p), units):
        value = p
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = value * factor
    return out


@pytest.mark.parametrize("arch", FAMILIES)
@SETTINGS
@given(sc=scenarios)
def test_results_are_finite_positive_and_reproducible(arch, sc):
    """Every number of a run is finite and positive where it must be, and a rerun gives the
    same cycles and the same JSON, bit for bit."""
    a = _run(arch, sc)
    if a is None:
        return
    b = _run(arch, sc)
    assert a.cycles > 0 and a.chips >= 1
    for x in (a.seconds, a.tokens_per_s, a.tokens_per_s_per_user, a.flops):
        assert math.isfinite(x) and x > 0
    assert all(math.isfinite(v) and v >= 0 for v in a.bytes_by_tier.values())
    assert a.to_dict() == b.to_dict()


@pytest.mark.parametrize("arch", FAMILIES)
@SETTINGS
@given(sc=scenarios)
def test_latency_is_at_least_the_roofline_of_any_chip(arch, sc):
    """The step's latency covers each simulated chip's work at the family's own ceilings:
    its FLOPs over peak FLOP/s and its off-chip bytes over peak bandwidth (per copy of the
    simulated program where a family replicates it)."""
    r = _run(arch, sc)
    if r is None:
        return
    fam, s = get_family(r.family), r.stream
    peak = fam.peak(load_arch(arch), r.meta["scenario"]["precision"].split(",")[0])
    copies = int(s.copy.max()) + 1
    for chip in set(s.chip.tolist()):
        on = s.chip == chip
        bound = s.flops[on].sum() / peak.flops_per_s / copies
        if peak.offchip_bytes_per_s:
            bound = max(bound, s.offchip_bytes[on].sum() / peak.offchip_bytes_per_s / copies)
        assert r.seconds * (1 + 1e-9) >= bound


@pytest.mark.parametrize("arch", FAMILIES)
@SETTINGS
@given(sc=scenarios, factor=st.sampled_from([1.5, 4.0]))
def test_more_bandwidth_or_clock_never_slows_a_step(arch, sc, factor):
    """Scaling every bandwidth (B/s, B/clk keys) or every clock (Hz keys) of the machine up
    never lowers system tokens/s, and at batch 1 never lengthens the step. Slack: 1% of
    throughput, which a compiler may trade for a shorter trip when it picks among
    near-equal schedules (groq-like's micro-batch search, MICRO_BATCH_TOLERANCE); hypothesis
    found such a trade (prefill, batch 32, clock x4: -0.7%)."""
    base = _run(arch, sc)
    if base is None:
        return
    for units in ({"B/s", "B/clk"}, {"Hz"}):
        faster = _run(arch, sc, _scaled(arch, units, factor))
        assert faster is not None
        assert faster.tokens_per_s >= base.tokens_per_s * (1 - 0.01), units
        if sc["batch"] == 1:
            assert faster.seconds <= base.seconds * (1 + 1e-9), units


@pytest.mark.parametrize("arch", FAMILIES)
@SETTINGS
@given(sc=scenarios)
def test_a_decode_step_reads_every_weight_at_least_once(arch, sc):
    """On a machine whose weights are not stationary in its compute units, a decode step
    moves at least the weights it holds (all chips) through some memory tier."""
    if get_family(arch).weight_stationary or sc["phase"] != "decode":
        return
    r = _run(arch, sc)
    if r is None:
        return
    assert sum(r.bytes_by_tier.values()) >= r.weight_bytes * (1 - 1e-9)
