"""The KV-cache hierarchy below a serving instance's device memory: host DRAM, CXL, NVMe,
an object store, and the links between them (``kv_tiers/*.yaml``).

Each tier has a capacity (per serving instance: its share of the node), the bandwidth of its
medium, a first-byte latency, and the link its bytes cross to reach the device; a move
between the device and tier ``t`` runs at the slower of the two. The device tier itself
(HBM, or on-chip SRAM on a machine without HBM) comes from the arch: its KV capacity is
what the deployment leaves after weights and activations, its bandwidth the family's peak.
Drain time = capacity / bandwidth of the path that feeds the device (hardware-specs §8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from archsim.config.arch import Section, field
from archsim.config.yamlio import load_yaml
from archsim.core.errors import ConfigError, did_you_mean
from archsim.core.paths import data_dir


class Link(Section):
    bandwidth_bytes_per_s: float = field("one direction's bandwidth", unit="B/s")
    latency_s: float = field("first-byte latency of a transfer", unit="s", gt=None, ge=0)


class Tier(Section):
    name: str = Field(..., description="tier name (dram, cxl, nvme, object, ...)")
    capacity_bytes: float | None = Field(
        ..., description="capacity for KV per serving instance (null: unbounded, as an "
        "object store)", gt=0, json_schema_extra={"unit": "B"}
    )  # fmt: skip
    read_bytes_per_s: float = field("the medium's read bandwidth", unit="B/s")
    write_bytes_per_s: float = field("the medium's write bandwidth", unit="B/s")
    latency_s: float = field("first-byte latency of a read", unit="s", gt=None, ge=0)
    link: str = Field(..., description="the link (in links:) its bytes cross to the device")
    idle_demote_s: float | None = Field(
        None, description="an entry unused this long moves to the next tier (None: only "
        "when space is needed)", ge=0
    )  # fmt: skip


class TierFile(Section):
    name: str = Field(..., description="hierarchy name, as given to --kv-tiers")
    description: str = Field("", description="one line")
    links: dict[str, Link] = Field(..., description="named links")
    tiers: list[Tier] = Field(..., description="tiers below the device, fastest first")
    swap_tier: str = Field("dram", description="where a preempted request's KV is swapped")


@dataclass(frozen=True)
class TierPath:
    """A tier as the serving simulation uses it: bandwidths of the whole path to the device."""

    name: str
    capacity_bytes: float
    read_bytes_per_s: float  # tier -> device, min(medium, link)
    write_bytes_per_s: float  # device -> tier
    latency_s: float  # medium + link
    link: str
    idle_demote_s: float | None

    def read_s(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.read_bytes_per_s

    def write_s(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.write_bytes_per_s

    @property
    def drain_s(self) -> float:
        return self.capacity_bytes / self.read_bytes_per_s


@dataclass(frozen=True)
class Hierarchy:
    name: str
    description: str
    tiers: tuple[TierPath, ...]
    links: dict[str, Link]
    swap_tier: str
    source: str

    def tier(self, name: str) -> TierPath:
        for t in self.tiers:
            if t.name == name:
                return t
        raise ConfigError(f"kv tiers {self.name!r} have no tier {name!r}")

    def link(self, name: str) -> Link:
        if name not in self.links:
            raise ConfigError(
                f"unknown link {name!r}{did_you_mean(name, self.links)} in kv tiers "
                f"{self.name!r} (valid: {', '.join(self.links)})"
            )
        return self.links[name]


def tier_names() -> list[str]:
    return sorted(p.stem for p in data_dir("kv_tiers").glob("*.yaml"))


def load_tiers(name: str) -> Hierarchy:
    """A shipped hierarchy (``kv_tiers/NAME.yaml``) or a YAML path."""
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = data_dir("kv_tiers") / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"unknown kv tiers {name!r}{did_you_mean(name, tier_names())} "
                f"(valid: {', '.join(tier_names())}, or a YAML path)"
            )
    raw: dict[str, Any] = load_yaml(path)
    raw.setdefault("name", path.stem)
    try:
        spec = TierFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"kv tiers {path.stem!r}: {loc}: {err['msg']}") from None
    tiers = []
    for t in spec.tiers:
        if t.link not in spec.links:
            raise ConfigError(
                f"kv tiers {spec.name!r}: tier {t.name!r} crosses unknown link {t.link!r} "
                f"(links: {', '.join(spec.links)})"
            )
        link = spec.links[t.link]
        tiers.append(TierPath(
            name=t.name,
            capacity_bytes=math.inf if t.capacity_bytes is None else t.capacity_bytes,
            read_bytes_per_s=min(t.read_bytes_per_s, link.bandwidth_bytes_per_s),
            write_bytes_per_s=min(t.write_bytes_per_s, link.bandwidth_bytes_per_s),
            latency_s=t.latency_s + link.latency_s,
            link=t.link,
            idle_demote_s=t.idle_demote_s,
        ))  # fmt: skip
    if len({t.name for t in tiers}) != len(tiers):
        raise ConfigError(f"kv tiers {spec.name!r}: tier names must be distinct")
    h = Hierarchy(spec.name, spec.description, tuple(tiers), dict(spec.links), spec.swap_tier,
                  str(path))  # fmt: skip
    h.tier(spec.swap_tier)
    return h


@dataclass(frozen=True)
class DeviceTier:
    """The device's own memory as a KV tier: what the deployment leaves for KV."""

    name: str  # the family's name for its memory tier (hbm, sram, ...)
    capacity_bytes: float
    bandwidth_bytes_per_s: float

    @property
    def drain_s(self) -> float:
        return self.capacity_bytes / self.bandwidth_bytes_per_s


def device_tier(
    arch: str, overrides: list[str] | None = None, model: str = "llama3-8b"
) -> DeviceTier:
    """One chip's memory as the family reports it: the usable capacity its plan allows and
    its peak bandwidth (off-chip memory, or on-chip SRAM on a machine without it)."""
    from archsim.config import load_arch, parse_overrides
    from archsim.core.registry import get_family
    from archsim.pipeline import simulate

    params = load_arch(arch, parse_overrides(overrides))
    family = get_family(params.family)
    peak = family.peak(params, "bf16")
    r = simulate(arch, model, batch=1, ctx=1, layers=1, overrides=overrides)  # for its plan
    cap = float(r.meta["plan"]["capacity_bytes_per_chip"])
    if peak.offchip_bytes_per_s > 0:
        return DeviceTier(family.tiers["offchip_bytes"], cap, peak.offchip_bytes_per_s)
    return DeviceTier(family.tiers["onchip_bytes"], cap, peak.onchip_bytes_per_s)


def tier_rows(h: Hierarchy, device: DeviceTier | None) -> list[dict[str, Any]]:
    """One row per tier, fastest first: capacity, path bandwidth, latency, drain time."""
    rows = []
    if device is not None:
        rows.append({"tier": f"device ({device.name})", "capacity_bytes": device.capacity_bytes,
                     "bandwidth_bytes_per_s": device.bandwidth_bytes_per_s, "latency_s": 0.0,
                     "link": "-", "drain_s": device.drain_s})  # fmt: skip
    for t in h.tiers:
        drain = t.drain_s if math.isfinite(t.capacity_bytes) else None
        rows.append({"tier": t.name, "capacity_bytes": t.capacity_bytes,
                     "bandwidth_bytes_per_s": t.read_bytes_per_s, "latency_s": t.latency_s,
                     "link": t.link, "drain_s": drain})  # fmt: skip
    return rows
