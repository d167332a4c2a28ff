"""simulate_kernel(): time one operator on any family (``archsim kernel``).

The op is built machine-independently (``archsim.graph.kernels``), lowered by the family
exactly as inside a model, timed by its timing pass and the shared engine. ``repeat`` copies
run back to back, each waiting for the previous; the result is per call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from archsim.config import load_arch, parse_overrides
from archsim.core.errors import ScenarioError
from archsim.core.plan import MemoryNeed, Plan
from archsim.core.registry import get_family
from archsim.core.version import __version__
from archsim.graph.kernels import kernel_graph, kernel_shape
from archsim.graph.scenario import Precision
from archsim.pipeline import BOUNDS, classify, critical_time, refuse_unsupported
from archsim.result import git_revision


@dataclass
class KernelResult:
    """One operator on one machine, per call (``repeat`` calls back to back)."""

    arch: str
    family: str
    op: str
    shape: dict[str, int]
    dtype: str
    repeat: int
    seconds: float  # per call
    cycles: float  # per call (clock cycles of the family's clock)
    total_seconds: float  # all calls
    total_cycles: int
    clock_hz: float
    bound: str  # compute | memory | communication | overhead, by time on the critical path
    time_by_bound: dict[str, float]  # per call
    flops: float  # per call
    bytes_by_tier: dict[str, float]  # per call
    choice: dict[str, Any]  # what the family chose (tile, split, planes, launch, ...)
    # cycles with no memory stall, where the family separates them (its choice has the key)
    compute_cycles: float | None = None
    options: dict[str, str] = field(default_factory=dict)  # family kernel options used
    meta: dict[str, Any] = field(default_factory=dict)
    stream: Any = field(default=None, repr=False)
    timing: Any = field(default=None, repr=False)
    timeline: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        hidden = ("stream", "timing", "timeline")
        return {k: v for k, v in asdict(self).items() if k not in hidden}


def _plan(op: str, shape: dict[str, int], p) -> Plan:
    """One chip; an all-reduce's tensor group is its ranks; a send goes from chip 0 to the
    first chip of the next stage, ``ranks - 1`` chips away."""
    need = MemoryNeed(0.0, 0.0, 0.0)
    if op == "all-reduce":
        return Plan(tp=shape["ranks"], pp=1, stage_layers=((0, 1),), need=need,
                    capacity_bytes_per_chip=0.0)  # fmt: skip
    if op == "send-recv":
        return Plan(tp=shape["ranks"] - 1, pp=2, stage_layers=((0, 1), (1, 1)), need=need,
                    capacity_bytes_per_chip=0.0)  # fmt: skip
    return Plan(tp=1, pp=1, stage_layers=((0, 1),), need=need, capacity_bytes_per_chip=0.0)


def _options(family, options: dict[str, str] | None) -> tuple[dict[str, str], dict[str, Any]]:
    """Chosen family options (defaults filled in) and the config overrides they imply."""
    menu = family.kernel_options()
    chosen: dict[str, str] = {}
    overrides: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if value is None:
            continue
        if name not in menu:
            valid = ", ".join(f"--{k}" for k in menu) or "none"
            raise ScenarioError(
                f"{family.name} has no kernel option --{name} (its options: {valid})"
            )
        if value not in menu[name]:
            raise ScenarioError(
                f"--{name} must be one of {', '.join(menu[name])} for {family.name}, got {value!r}"
            )
        chosen[name] = value
    for name, values in menu.items():
        chosen.setdefault(name, next(iter(values)))
        overrides.update(values[chosen[name]])
    return chosen, overrides


def simulate_kernel(
    arch: str,
    op: str,
    dtype: str = "bf16",
    repeat: int = 1,
    overrides: dict[str, Any] | list[str] | None = None,
    options: dict[str, str] | None = None,
    **shape: int,
) -> KernelResult:
    """Time ``op`` (a key of ``archsim.graph.kernels.KERNEL_OPS``) with ``shape`` on ``arch``.

    ``dtype``: a precision (``bf16``, ``fp8``, ``int8``, ``int4`` = W4A16, or
    ``w=..,a=..,kv=..``). ``options``: family kernel options (h100-like: ``launch`` =
    ``graph`` | ``eager``). ``overrides``: config keys, as ``--set``."""
    from archsim.pipeline import run_stream

    user = parse_overrides(overrides)
    family = get_family(load_arch(arch, user).family)
    chosen, implied = _options(family, options)
    params = load_arch(arch, {**implied, **user})
    prec = Precision.parse(dtype)
    g = kernel_graph(op, shape, prec, repeat)
    refuse_unsupported(g, family, params)
    shape_used = kernel_shape(op, shape)
    if op == "attention":  # the defaults it resolved (kv_heads = heads, causal if q_len > 1)
        built = next(iter(g.nodes(data=True)))[1]["op"].shape
        shape_used.update(kv_heads=built["kv_heads"], causal=built["causal"])
    plan = _plan(op, shape_used, params)
    stream = family.lower(g, plan, params, g.graph["scenario"])
    timing, tl = run_stream(family, params, stream)
    clock = family.clock_hz(params)
    total = tl.cycles
    peak = family.peak(params, prec.weights)
    _, cls = classify(stream, tl.duration, peak, clock, timing)
    critical, critical_cycles = critical_time(stream, tl)
    secs = critical_cycles / clock
    by_bound = {b: float(secs[critical & (cls == i)].sum()) / repeat for i, b in enumerate(BOUNDS)}
    tiers = {name: float(stream.cols[col].sum()) / repeat for col, name in family.tiers.items()}
    choice = _plain(family.kernel_choice(stream, timing, params))
    return KernelResult(
        arch=arch,
        family=family.name,
        op=op,
        shape=shape_used,
        dtype=prec.label,
        repeat=repeat,
        seconds=total / clock / repeat,
        cycles=total / repeat,
        total_seconds=total / clock,
        total_cycles=int(total),
        clock_hz=clock,
        bound=max(by_bound, key=by_bound.get),
        time_by_bound=by_bound,
        flops=float(stream.flops.sum()) / repeat,
        bytes_by_tier=tiers,
        choice=choice,
        compute_cycles=choice.get("compute_cycles"),
        options=chosen,
        meta={
            "archsim_version": __version__,
            "git_revision": git_revision(),
            "arch_digest": params.digest(),
            "arch_config": params.model_dump(mode="json"),
        },
        stream=stream,
        timing=timing,
        timeline=tl,
    )


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.items()}
