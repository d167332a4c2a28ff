"""Energy and power of a simulated step, on one accounting for every family.

A step's energy is what it counted, at the config's figures, plus what the chips draw just by
being on for the period between steps (``docs/compare.md``)::

    E_step = sum_precision FLOPs x pJ/FLOP + sum_tier bytes x pJ/B + static W x chips x period
    power per chip = E_step / period / chips     (checked against the chip's TDP)
    energy per token = E_step / tokens of the step

FLOPs and bytes are the Result's (the whole batch, all chips); the period is the time between
steps at load (tokens / tokens_per_s), so a pipelined machine pays for every chip while its
micro-batches overlap. The figures come from the config's ``energy:`` section, or from the
family's own config where it already holds them (``Family.energy_figures``: h100-like's power
model; a ``tdp_w`` field in any section) — one source per number: a figure given in both
places is a ConfigError.

The dynamic part alone is a lower bound of the energy; TDP x chips x period is an upper bound
(tests/test_energy.py holds every family between them); a power per chip above the TDP is
reported as a warning (the figures, or the timing, are inconsistent with the chip's limit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from archsim.config.arch import ArchParams, EnergyParams
from archsim.core.errors import ConfigError
from archsim.core.family import Family
from archsim.core.registry import get_family
from archsim.graph.scenario import DTYPE_BYTES, Precision
from archsim.result import Result

# a precision the table lacks may use its twin (same width, same MACs on every modelled chip)
TWINS = {"fp16": "bf16", "bf16": "fp16"}
FIGURES = ("tdp_w", "static_w", "pj_per_flop", "pj_per_byte")


@dataclass(frozen=True)
class EnergyFigures:
    """The energy figures of one config, merged from its ``energy:`` section and what its
    family's own keys hold; ``origin`` says where each came from (for reports)."""

    pj_per_flop: dict[str, float]
    pj_per_byte: dict[str, float]
    static_w: float | None
    tdp_w: float | None
    origin: dict[str, str] = field(default_factory=dict)


def config_tdp(params: ArchParams) -> tuple[float | None, str | None]:
    """The ``tdp_w`` field of the family's own schema (``chip.tdp_w``, ``power.tdp_w`` ...),
    with its key; (None, None) where the schema has none, (None, key) where it is 0 (not
    published)."""
    found = []
    for name in type(params).model_fields:
        if name in ("energy", "cost"):
            continue
        section = getattr(params, name)
        if isinstance(section, BaseModel) and "tdp_w" in type(section).model_fields:
            found.append((float(section.tdp_w), f"{name}.tdp_w"))
    if not found:
        return None, None
    if len(found) > 1:
        raise ConfigError(
            f"arch config {params.name!r}: several tdp_w keys ({', '.join(k for _, k in found)})"
        )
    value, key = found[0]
    return (value if value > 0 else None), key


def energy_figures(params: ArchParams, family: Family, extra: dict[str, Any]) -> EnergyFigures:
    """Merge the config's ``energy:`` section with the figures the family's config holds."""
    section = params.energy or EnergyParams()
    own = dict(family.energy_figures(params, extra))
    origin: dict[str, str] = {k: f"{family.name} config" for k in own}
    tdp, tdp_key = config_tdp(params)
    if tdp_key is not None:
        own.setdefault("tdp_w", tdp)
        origin["tdp_w"] = tdp_key
    given = {
        "tdp_w": section.tdp_w,
        "static_w": section.static_w,
        "pj_per_flop": section.pj_per_flop or None,
        "pj_per_byte": section.pj_per_byte or None,
    }
    out: dict[str, Any] = {"pj_per_flop": {}, "pj_per_byte": {}, "static_w": None, "tdp_w": None}
    for key in FIGURES:
        mine, theirs = own.get(key), given[key]
        if isinstance(mine, dict) and isinstance(theirs, dict):
            twice = sorted(set(mine) & set(theirs))
            if twice:
                raise ConfigError(
                    f"arch config {params.name!r}: energy.{key}.{twice[0]} is given twice "
                    f"(the {family.name} config already holds it: {origin[key]})"
                )
            out[key] = {**theirs, **mine}
            origin[key] = f"{origin[key]} + energy.{key}"
        elif key in own and theirs is not None:
            raise ConfigError(
                f"arch config {params.name!r}: energy.{key} is given twice (the config already "
                f"holds it as {origin[key]})"
            )
        elif key in own:
            out[key] = mine if mine is not None else out[key]
        elif theirs is not None:
            out[key] = theirs
            origin[key] = f"energy.{key}"
    for dtype in out["pj_per_flop"]:
        if dtype not in DTYPE_BYTES:
            raise ConfigError(
                f"arch config {params.name!r}: energy.pj_per_flop.{dtype}: not a precision "
                f"(valid: {', '.join(DTYPE_BYTES)})"
            )
    return EnergyFigures(origin=origin, **out)


def compute_dtype(precision: Precision) -> str:
    """The precision the MACs run at: the wider of the weights and the activations (W4A16
    multiplies in bf16; W8A8 in 8 bits)."""
    w, a = precision.weights, precision.activations
    return w if DTYPE_BYTES[w] >= DTYPE_BYTES[a] else a


@dataclass(frozen=True)
class StepEnergy:
    """Energy of one step of a Result at its config's figures. ``joules`` is None (and
    ``unknown`` says why) when a figure the step needs is missing."""

    joules: float | None  # whole system, one period
    dynamic_joules: float | None  # the counted FLOPs and bytes alone
    static_joules: float | None  # static power x chips x period
    joules_per_token: float | None
    power_w_per_chip: float | None
    tdp_w: float | None
    period_s: float
    by_part: dict[str, float]  # J per step: "flops", then each tier
    unknown: str | None = None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, warnings=list(self.warnings))


def period_s(result: Result) -> float:
    """Seconds between steps at load: the step's tokens over the system's tokens/s."""
    tokens = result.batch * (result.seq if result.phase == "prefill" else 1)
    return tokens / result.tokens_per_s


def params_of(result: Result) -> ArchParams:
    """The resolved config a Result recorded (overrides included)."""
    family = get_family(result.family)
    return family.Params.model_validate(result.meta["arch_config"])


def step_energy(result: Result, params: ArchParams | None = None) -> StepEnergy:
    """Energy, power per chip and energy per token of ``result``'s step."""
    params = params if params is not None else params_of(result)
    family = get_family(result.family)
    fig = energy_figures(params, family, result.extra)
    period = period_s(result)
    tokens = result.batch * (result.seq if result.phase == "prefill" else 1)
    missing: list[str] = []
    parts: dict[str, float] = {}
    dtype = compute_dtype(Precision.parse(result.precision))
    pj = fig.pj_per_flop.get(dtype, fig.pj_per_flop.get(TWINS.get(dtype, ""), None))
    if result.flops > 0:
        if pj is None:
            missing.append(f"no pJ per {dtype} FLOP (energy.pj_per_flop.{dtype})")
        else:
            parts["flops"] = result.flops * pj * 1e-12
    for tier, nbytes in result.bytes_by_tier.items():
        if nbytes <= 0:
            continue
        if tier not in fig.pj_per_byte:
            missing.append(f"no pJ per byte of {tier} (energy.pj_per_byte.{tier})")
        else:
            parts[tier] = nbytes * fig.pj_per_byte[tier] * 1e-12
    if fig.static_w is None:
        missing.append("no static power per chip (energy.static_w)")
    if missing:
        return StepEnergy(
            None, None, None, None, None, fig.tdp_w, period, parts, unknown="; ".join(missing)
        )
    dynamic = sum(parts.values())
    static = fig.static_w * result.chips * period
    total = dynamic + static
    power = total / period / result.chips
    warnings = ()
    if fig.tdp_w is not None and power > fig.tdp_w:
        warnings = (
            f"{result.arch}: {power:,.0f} W per chip exceeds its TDP of {fig.tdp_w:,.0f} W "
            "(the energy figures or the timing do not fit the chip's power limit)",
        )
    return StepEnergy(
        joules=total,
        dynamic_joules=dynamic,
        static_joules=static,
        joules_per_token=total / tokens,
        power_w_per_chip=power,
        tdp_w=fig.tdp_w,
        period_s=period,
        by_part=parts,
        warnings=warnings,
    )
