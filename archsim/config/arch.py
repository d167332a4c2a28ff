"""Architecture configs: one frozen pydantic schema per family, values only from YAML.

A YAML names its family (``family: h100-like``) and may ``extends:`` another preset; keys of
the child override the parent's. ``--set a.b=c`` overrides any key the family's schema has;
a key the schema does not have is an error that lists the valid ones.
"""

from __future__ import annotations

import copy
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, ValidationError

from archsim.config.yamlio import load_yaml, parse_scalar
from archsim.core.errors import ConfigError, did_you_mean
from archsim.core.paths import data_dir
from archsim.core.registry import get_family


def field(description: str, *, unit: str = "", gt: float | None = 0, **kw: Any) -> Any:
    """A config field: a one-line description, its unit, and (by default) strictly positive."""
    extra = {"unit": unit} if unit else {}
    return Field(..., description=description, gt=gt, json_schema_extra=extra, **kw)


class Section(BaseModel):
    """A group of related parameters (chip, memory, links, ...). Frozen; unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def optional(description: str, *, unit: str = "", **kw: Any) -> Any:
    """An optional config field (``None``: not given), with its description and unit."""
    extra = {"unit": unit} if unit else {}
    return Field(None, description=description, json_schema_extra=extra, **kw)


class EnergyParams(Section):
    """Energy figures of one chip for the comparison layer (``archsim compare``,
    ``archsim.energy``): a step's energy is its counted FLOPs and bytes at these figures plus
    the static power of every chip over the step's period. Every field is optional; a figure
    the family's own config already holds (``Family.energy_figures``, e.g. h100-like's
    ``power.*``; any section's ``tdp_w``) comes from there and must not be repeated here."""

    pj_per_flop: dict[str, NonNegativeFloat] = Field(
        default_factory=dict,
        description="dynamic energy per FLOP by the precision the MACs run at (bf16, fp16, "
        "fp8, int8, int4)",
        json_schema_extra={"unit": "pJ/FLOP"},
    )
    pj_per_byte: dict[str, NonNegativeFloat] = Field(
        default_factory=dict,
        description="dynamic energy per byte moved, by memory tier or link as the family's "
        "Result names them in bytes_by_tier (hbm, l2, nvlink; sram, c2c; ...)",
        json_schema_extra={"unit": "pJ/B"},
    )
    static_w: float | None = optional(
        "power each chip draws through the whole step whatever it computes (leakage, idle, "
        "clocks, control)",
        unit="W",
        ge=0,
    )
    tdp_w: float | None = optional(
        "power limit per chip, where the family's schema has no tdp_w of its own", unit="W", gt=0
    )

    def __hash__(self) -> int:  # frozen configs are hashed (cache keys): tables as items
        return hash(
            (
                tuple(sorted(self.pj_per_flop.items())),
                tuple(sorted(self.pj_per_byte.items())),
                self.static_w,
                self.tdp_w,
            )
        )


class CostParams(Section):
    """How chips are packaged and priced, for tokens/s per rack and cost per token. Every
    field is optional; a cost per chip-hour comes from ``usd_per_chip_hour`` (a rental or
    all-in price) or from ``price_usd_per_chip`` over ``amortization_years``; electricity at
    ``usd_per_kwh`` is added to the latter only (a rental price includes it)."""

    chips_per_node: int | None = optional("chips in one server / tray / node", gt=0)
    chips_per_rack: int | None = optional("chips in one rack", gt=0)
    usd_per_chip_hour: float | None = optional(
        "price of one chip for one hour (cloud on-demand or all-in)", unit="USD/h", gt=0
    )
    price_usd_per_chip: float | None = optional(
        "purchase price of one chip (its share of the system)", unit="USD", gt=0
    )
    amortization_years: float | None = optional(
        "years over which the purchase price is written off", unit="year", gt=0
    )
    usd_per_kwh: float | None = optional(
        "electricity price (applied to the simulated power when the cost is a purchase price)",
        unit="USD/kWh",
        ge=0,
    )


class ArchParams(Section):
    """Fields every architecture config has; families subclass it and add their sections."""

    name: str = Field(..., description="preset name, as given to --arch")
    family: str = Field(..., description="registered cycle model that runs this config")
    description: str = Field("", description="one line shown by `archsim list archs`")
    extends: str | None = Field(None, description="preset this one was derived from")
    energy: EnergyParams | None = Field(
        None, description="energy figures (archsim compare): pJ per FLOP and byte, static W"
    )
    cost: CostParams | None = Field(
        None, description="packaging and price (archsim compare): chips per rack, USD"
    )

    def digest(self) -> str:
        """Short hash of the resolved config, recorded in every output."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def arch_names() -> list[str]:
    """Shipped presets: the stems of arch_configs/*.yaml."""
    return sorted(p.stem for p in data_dir("arch_configs").glob("*.yaml"))


def _find(name: str, beside: Path | None = None) -> Path:
    """A YAML path, a preset beside the config that extends it, or a shipped preset."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    if beside is not None and (beside / f"{name}.yaml").is_file():
        return beside / f"{name}.yaml"
    shipped = data_dir("arch_configs") / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(
        f"unknown arch {name!r}{did_you_mean(name, arch_names())} "
        f"(valid: {', '.join(arch_names())}, or a YAML path)"
    )


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_raw(
    name: str, seen: tuple[str, ...] = (), beside: Path | None = None
) -> dict[str, Any]:
    """The raw mapping of preset ``name`` with its ``extends`` chain merged (a child's keys
    override its parent's); ``extends`` names a preset beside the child or a shipped one."""
    path = _find(name, beside)
    if path.stem in seen:
        raise ConfigError(f"arch config {path.stem!r}: 'extends' cycle through {' -> '.join(seen)}")
    raw = load_yaml(path)
    raw.setdefault("name", path.stem)
    parent = raw.get("extends")
    if parent:
        base = resolve_raw(str(parent), (*seen, path.stem), path.parent)
        base.pop("description", None)
        raw = _deep_merge(base, raw)
    return raw


def parse_overrides(items: list[str] | tuple[str, ...] | dict[str, Any] | None) -> dict[str, Any]:
    """``["a.b=1e9", ...]`` -> ``{"a.b": 1e9}``; a dict passes through."""
    if not items:
        return {}
    if isinstance(items, dict):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = parse_scalar(value.strip())
    return out


def _section_of(ann: Any) -> type[BaseModel] | None:
    """The Section a field holds (``X`` or ``X | None``), else None."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union:
        inner = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(inner) == 1:
            return _section_of(inner[0])
    return None


def _is_mapping(ann: Any) -> bool:
    return typing.get_origin(ann) is dict


def _schema_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        section = _section_of(info.annotation)
        if section is not None:
            keys.extend(_schema_keys(section, f"{prefix}{name}."))
        elif _is_mapping(info.annotation):
            keys.append(f"{prefix}{name}.<key>")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def apply_override(raw: dict[str, Any], schema: type[BaseModel], key: str, value: Any) -> None:
    parts = key.split(".")
    model: type[BaseModel] | None = schema
    node = raw
    for i, part in enumerate(parts):
        fields = model.model_fields if model is not None else {}
        if part not in fields or part in ("name", "family", "extends"):
            valid = [k for k in _schema_keys(schema) if k not in ("name", "family", "extends")]
            raise ConfigError(
                f"unknown config key {key!r} for {raw.get('name')}{did_you_mean(key, valid)}; "
                "valid keys: " + ", ".join(valid)
            )
        ann = fields[part].annotation
        last = i == len(parts) - 1
        section = _section_of(ann)
        if section is not None:
            if last:
                raise ConfigError(f"config key {key!r} is a section; set one of its fields")
            node = node.setdefault(part, {})
            model = section
        elif _is_mapping(ann) and i == len(parts) - 2:  # a table entry: energy.pj_per_byte.hbm
            node.setdefault(part, {})[parts[-1]] = value
            return
        elif not last:
            raise ConfigError(f"unknown config key {key!r}: {'.'.join(parts[: i + 1])} is a value")
        else:
            node[part] = value


def one_line_error(exc: ValidationError, name: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"arch config {name!r}: {loc}: {err['msg']}{shown}{more}"


def load_arch(name: str, overrides: dict[str, Any] | None = None) -> ArchParams:
    """Resolve preset ``name`` (or a YAML path), apply overrides, validate against the schema
    of the family the YAML names."""
    raw = resolve_raw(name)
    family = get_family(str(raw.get("family", "")))
    for key, value in (overrides or {}).items():
        apply_override(raw, family.Params, key, value)
    try:
        params = family.Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(one_line_error(exc, str(raw.get("name")))) from None
    _check_energy_tiers(params, family)
    return params


def _check_energy_tiers(params: ArchParams, family: Any) -> None:
    """``energy.pj_per_byte`` names only tiers the family's Result reports."""
    if params.energy is None:
        return
    tiers = sorted(family.tiers.values())
    for tier in params.energy.pj_per_byte:
        if tier not in tiers:
            raise ConfigError(
                f"arch config {params.name!r}: energy.pj_per_byte.{tier}: {family.name} has no "
                f"tier {tier!r}{did_you_mean(tier, tiers)} (its tiers: {', '.join(tiers)})"
            )
