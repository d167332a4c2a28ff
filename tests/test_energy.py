"""Energy and power of a step (archsim/energy.py) and the energy/cost sections of the configs."""

from __future__ import annotations

import pytest

import archsim
from archsim.config import arch_names, load_arch
from archsim.core.errors import ArchsimError, ConfigError
from archsim.core.registry import family_names, get_family
from archsim.energy import compute_dtype, energy_figures, step_energy
from archsim.graph.scenario import Precision

SCENARIOS = (
    dict(phase="decode", batch=1, ctx=512),
    dict(phase="decode", batch=64, ctx=512),
    dict(phase="prefill", batch=1, seq=512),
)


def _counted_joules(r, fig) -> float:
    """The counted FLOPs and bytes at the figures, summed here from the Result's own totals."""
    pj = fig.pj_per_flop.get(compute_dtype(Precision.parse(r.precision)))
    return (r.flops * pj + sum(b * fig.pj_per_byte[t] for t, b in r.bytes_by_tier.items())) * 1e-12


@pytest.mark.parametrize("arch", arch_names())
def test_energy_lies_between_counted_work_and_tdp_times_step(arch):
    """For every preset and a few scenarios (decode at batch 1 and 64, a prefill), the energy
    of a step is at least the energy of its counted FLOPs and bytes and at most TDP x chips x
    the step's period: the per-op figures of every family fit its chip's power limit (a
    machine saturated in compute and memory must not draw more than its TDP). A preset whose
    TDP is not published (tpu-v5e, tpu-v6e) is held to the lower bound only."""
    params = load_arch(arch)
    family = get_family(params.family)
    checked = 0
    for sc in SCENARIOS:
        try:
            r = archsim.simulate(arch, "llama3-8b", layers=2, **sc)
        except ArchsimError:  # a scenario the machine refuses has no energy to check
            continue
        e = step_energy(r, params)
        assert e.unknown is None, (arch, sc, e.unknown)
        counted = _counted_joules(r, energy_figures(params, family, r.extra))
        assert e.dynamic_joules == pytest.approx(counted, rel=1e-9)
        assert counted <= e.joules
        assert e.static_joules > 0
        if e.tdp_w is not None:
            assert e.joules <= e.tdp_w * r.chips * e.period_s, (arch, sc, e.power_w_per_chip)
            assert not e.warnings
        checked += 1
    assert checked >= 2, arch


def test_every_family_has_a_preset_with_a_tdp():
    """The TDP bound above is exercised for every registered family, not only some."""
    with_tdp = {load_arch(a).family for a in arch_names() if step_tdp(a) is not None}
    assert with_tdp == set(family_names())


def step_tdp(arch: str):
    params = load_arch(arch)
    return energy_figures(params, get_family(params.family), {}).tdp_w


def test_energy_is_the_hand_count_of_its_figures():
    """matx-like with round figures: 2 pJ per bf16 FLOP, 10 pJ per HBM byte, 0 elsewhere,
    100 W static. E = FLOPs x 2e-12 + HBM bytes x 10e-12 + 100 W x chips x period, and the
    energy per token is E over the batch."""
    over = [
        "energy.static_w=100",
        "energy.pj_per_flop.bf16=2",
        "energy.pj_per_byte.hbm=10",
        "energy.pj_per_byte.scratchpad=0",
        "energy.pj_per_byte.link=0",
    ]
    r = archsim.simulate("matx-like", "llama3-8b", layers=1, batch=4, overrides=over)
    e = step_energy(r)
    period = 4 / r.tokens_per_s
    want = r.flops * 2e-12 + r.bytes_by_tier["hbm"] * 10e-12 + 100 * r.chips * period
    assert e.joules == pytest.approx(want, rel=1e-12)
    assert e.joules_per_token == pytest.approx(want / 4, rel=1e-12)
    assert e.power_w_per_chip == pytest.approx(want / period / r.chips, rel=1e-12)


def test_gpu_energy_comes_from_its_power_model():
    """h100-like holds its figures in power.* (one source per number): at the 1.98 GHz boost
    clock, pJ per bf16 FLOP = 950 W / (4096 FLOP/clk x 132 SMs x 1.98e9 Hz) = 0.8875 pJ, static
    = 80 W idle + 90 W SM dynamic = 170 W, HBM = 31.2 pJ/B; at half the clock the FLOP energy
    falls 4x (V^2 ~ f^2) and the SM power 8x (f^3): 80 + 11.25 W."""
    p = load_arch("h100-like")
    fam = get_family("h100-like")
    at_boost = energy_figures(p, fam, {"mean_sm_clock_hz": 1.98e9})
    assert at_boost.pj_per_flop["bf16"] == pytest.approx(950 / (4096 * 132 * 1.98e9) * 1e12)
    assert at_boost.pj_per_flop["fp8"] == pytest.approx(at_boost.pj_per_flop["bf16"] / 2)
    assert at_boost.static_w == pytest.approx(170.0)
    assert at_boost.pj_per_byte["hbm"] == pytest.approx(31.2)
    assert at_boost.pj_per_byte["nvlink"] == 44.0  # from the energy: section
    assert at_boost.tdp_w == 700.0
    half = energy_figures(p, fam, {"mean_sm_clock_hz": 0.99e9})
    assert half.pj_per_flop["bf16"] == pytest.approx(at_boost.pj_per_flop["bf16"] / 4)
    assert half.static_w == pytest.approx(80 + 90 / 8)


@pytest.mark.parametrize(
    "over, message",
    [
        ("energy.static_w=100", "energy.static_w is given twice"),
        ("energy.pj_per_byte.hbm=30", "energy.pj_per_byte.hbm is given twice"),
        ("energy.tdp_w=500", "energy.tdp_w is given twice"),
    ],
)
def test_a_figure_given_twice_is_an_error(over, message):
    """A figure h100-like's power model already holds, set again in energy:, is refused
    with one line naming it (one source of truth per number)."""
    r = archsim.simulate("h100-like", "llama3-8b", layers=1, overrides=[over])
    with pytest.raises(ConfigError, match=message):
        step_energy(r)


def test_energy_names_only_the_family_tiers():
    """energy.pj_per_byte.dram on h100-like (tiers hbm, l2, nvlink) is refused at load."""
    with pytest.raises(ConfigError, match="has no tier 'dram'.*hbm, l2, nvlink"):
        load_arch("h100-like", {"energy.pj_per_byte.dram": 1.0})


def test_a_missing_figure_makes_the_energy_unknown_with_its_reason():
    """Without a static power the energy is not a number but a reason naming the key."""
    r = archsim.simulate("groq-like", "llama3-8b", layers=1, overrides=["energy.static_w=null"])
    e = step_energy(r)
    assert e.joules is None and "energy.static_w" in e.unknown


def test_power_above_the_tdp_is_a_warning():
    """A FLOP energy far above what the chip's TDP allows shows as a warning, not a crash."""
    over = ["energy.pj_per_flop.bf16=1000", "energy.pj_per_flop.fp16=1000"]
    r = archsim.simulate("groq-like", "llama3-8b", layers=1, phase="prefill", seq=512,
                         overrides=over)  # fmt: skip
    e = step_energy(r)
    assert e.power_w_per_chip > 300 and "exceeds its TDP of 300 W" in e.warnings[0]


def test_compute_precision_is_the_wider_operand():
    """W4A16 multiplies in bf16; W8A8 fp8 in fp8; int4 weights with int8 activations in int8."""
    assert compute_dtype(Precision.parse("int4")) == "bf16"
    assert compute_dtype(Precision.parse("fp8")) == "fp8"
    assert compute_dtype(Precision.parse("w=int4,a=int8,kv=int8")) == "int8"
