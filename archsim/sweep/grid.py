"""The grid of a sweep: the cartesian product of listed scenario values and overrides."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from archsim.config.yamlio import load_yaml, parse_scalar
from archsim.core.errors import ConfigError

SCENARIO_KEYS = ("arch", "model", "phase", "batch", "ctx", "seq", "precision", "chips", "layers")


@dataclass(frozen=True)
class SweepPoint:
    arch: str
    model: str
    phase: str = "decode"
    batch: int = 1
    ctx: int = 2048
    seq: int = 2048
    precision: str = "bf16"
    chips: str = "auto"
    layers: str = "all"
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def point_id(self) -> str:
        """Stable identity of the point (what a resumed sweep matches on)."""
        blob = json.dumps(asdict(self), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _values(raw: Any) -> list[Any]:
    """`1,8,64` or a YAML list -> list of scalars."""
    if isinstance(raw, list | tuple):
        return list(raw)
    if isinstance(raw, str) and "," in raw:
        return [parse_scalar(v.strip()) for v in raw.split(",") if v.strip()]
    return [raw]


def expand_grid(axes: dict[str, Any], overrides: dict[str, Any]) -> list[SweepPoint]:
    """Every combination of the listed values, in a deterministic order."""
    unknown = set(axes) - set(SCENARIO_KEYS)
    if unknown:
        raise ConfigError(
            f"sweep: unknown scenario keys {', '.join(sorted(unknown))} "
            f"(valid: {', '.join(SCENARIO_KEYS)})"
        )
    for key in ("arch", "model"):
        if not axes.get(key):
            raise ConfigError(f"sweep: '{key}' is required")
    scen_keys = [k for k in SCENARIO_KEYS if k in axes]
    over_keys = sorted(overrides)
    scen_vals = [_values(axes[k]) for k in scen_keys]
    over_vals = [_values(overrides[k]) for k in over_keys]
    points = []
    for combo in itertools.product(*scen_vals, *over_vals):
        scen = dict(zip(scen_keys, combo[: len(scen_keys)], strict=True))
        over = dict(zip(over_keys, combo[len(scen_keys) :], strict=True))
        scen = {
            k: (str(v) if k in ("arch", "model", "phase", "precision", "chips", "layers") else v)
            for k, v in scen.items()
        }
        points.append(SweepPoint(**scen, overrides=over))
    return points


def load_spec(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A sweep YAML: scenario keys (scalars or lists) and an optional `set:` mapping."""
    raw = load_yaml(Path(path))
    overrides = raw.pop("set", {}) or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path}: 'set' must map config keys to values or lists")
    return raw, overrides
