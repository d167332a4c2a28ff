"""The critical batch of decode: the rule of thumb, and where a cycle model's step time bends.

Rule. A decode step reads (at least) every weight once and does 2 FLOPs per active parameter
per sequence. With P_total parameters stored at ``w`` bytes each, P_active of them used per
token, a chip's peak F FLOP/s and the bandwidth B B/s of the memory tier its weights stream
from, the step stays bandwidth-bound while

    2 x P_active x batch / F  <  P_total x w / B
    i.e.  batch  <  (F / B) x (w / 2) x (P_total / P_active)

F / B is the tier's ridge point (FLOP per byte). At bf16 (w = 2) the critical batch is the
ridge times P_total / P_active: about 320 for a dense model on an H100 (1,070 TFLOP/s at its
1.98 GHz boost over 3.35 TB/s), about 18 times that for DeepSeek-V3 (671B of which 37.6B
active). Its premises: every weight is read once per step (an MoE step reads only the
experts its tokens touch: all of them only at large batch), nothing else moves (KV-cache
reads grow with batch x context), and compute runs at peak.

Knee. ``critical_batch`` sweeps the batch (1, 2, 4, ... up to ``max_batch``) through the
cycle model, every point on the same chips, and finds where the step time has risen
``rise`` above its floor (its time at batch 1), interpolating in log2(batch) between the
sweep points. The step time is the period between steps at load (batch over system
tokens/s): the step's latency on a machine whose steps do not overlap, the round period of
a pipelined one (groq-like, cerebras-like, dmatrix-like keep micro-batches in flight).
docs/roofline.md derives the rule and says where each family departs from it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from archsim.config import load_arch, parse_overrides
from archsim.core.errors import ArchsimError, CapacityError, ScenarioError
from archsim.core.registry import get_family
from archsim.graph.model import load_model
from archsim.graph.scenario import Precision
from archsim.graph.totals import active_param_count, param_count
from archsim.pipeline import simulate

DEFAULT_RISE = 0.1  # the knee: the step time 10% above its floor
MAX_SWEEP_BATCH = 65536


@dataclass(frozen=True)
class Tier:
    """A memory tier (or the links) of the machine and its ridge point."""

    name: str
    bytes_per_s: float
    ridge_flops_per_byte: float  # peak FLOP/s over the tier's bandwidth


@dataclass(frozen=True)
class SweepPoint:
    batch: int
    seconds: float | None  # one sequence's latency through the step; None: did not run
    period_s: float | None  # time between steps at load (batch / system tokens/s)
    tokens_per_s: float | None
    bound: str | None
    chips: int | None
    error: str | None = None


@dataclass
class CriticalBatch:
    """The rule's critical batch and the cycle model's knee for one model on one machine."""

    arch: str
    family: str
    model: str
    precision: str
    ctx: int
    layers: str
    routing_skew: float
    peak_flops_per_s: float
    tiers: list[Tier]
    weight_tier: str  # the tier the rule takes the weights from
    params_total: int
    params_active: int
    weight_bytes_per_param: float
    rule_batch: float
    rise: float
    chips: int | None = None
    floor_s: float | None = None
    knee_batch: float | None = None  # None: not reached within the sweep
    knee_s: float | None = None
    max_batch_run: int | None = None  # the largest batch of the sweep that ran
    points: list[SweepPoint] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        """P_total / P_active: 1 for a dense model."""
        return self.params_total / self.params_active

    @property
    def ridge(self) -> float:
        return next(t.ridge_flops_per_byte for t in self.tiers if t.name == self.weight_tier)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sparsity"] = self.sparsity
        d["ridge_flops_per_byte"] = self.ridge
        return d


def rule(
    arch: str,
    model: str,
    precision: str = "bf16",
    overrides: dict[str, Any] | list[str] | None = None,
) -> tuple[float, list[Tier], str, int, int, float, str]:
    """(peak FLOP/s, tiers with their ridge points, the weights' tier, total and active
    parameters, bytes per weight, family name) of ``model`` on ``arch``. The weights' tier:
    off-chip memory (HBM, LPDDR) where a step streams them from there, on-chip SRAM on a
    machine without off-chip memory or whose weights stay in its compute units."""
    params = load_arch(arch, parse_overrides(overrides))
    family = get_family(params.family)
    spec = load_model(model)
    prec = Precision.parse(precision)
    peak = family.peak(params, prec.weights)
    tiers = []
    for col, rate in (
        ("offchip_bytes", peak.offchip_bytes_per_s),
        ("onchip_bytes", peak.onchip_bytes_per_s),
        ("link_bytes", peak.link_bytes_per_s),
    ):
        if rate > 0:
            tiers.append(Tier(family.tiers[col], rate, peak.flops_per_s / rate))
    # the tier a decode step streams the weights from: off-chip memory, or on-chip SRAM
    # where there is none or where the weights stay in the compute units
    on_chip = peak.offchip_bytes_per_s <= 0 or family.weight_stationary
    weights = family.tiers["onchip_bytes" if on_chip and peak.onchip_bytes_per_s > 0 else
                           "offchip_bytes"]  # fmt: skip
    return (
        peak.flops_per_s,
        tiers,
        weights,
        param_count(spec),
        active_param_count(spec),
        prec.weight_bytes,
        family.name,
    )


def sweep_batches(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to and including ``max_batch``."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return [*out, max_batch]


def knee(points: list[SweepPoint], rise: float) -> tuple[float | None, float | None]:
    """(batch, seconds) where the step time (the period between steps: the latency where
    steps do not overlap, less on a pipelined machine) first reaches (1 + rise) x its floor
    (the first point's), interpolated linearly in log2(batch) between the sweep points
    around it; (None, None) if the sweep never gets there."""
    ran = [p for p in points if p.period_s is not None]
    if not ran:
        return None, None
    target = ran[0].period_s * (1 + rise)
    for a, b in zip(ran, ran[1:], strict=False):
        if b.period_s >= target:
            if b.period_s == a.period_s:
                return float(b.batch), target
            f = (target - a.period_s) / (b.period_s - a.period_s)
            la, lb = math.log2(a.batch), math.log2(b.batch)
            return 2 ** (la + f * (lb - la)), target
    return None, None


def critical_batch(
    arch: str,
    model: str,
    *,
    precision: str = "bf16",
    ctx: int = 2048,
    layers: int | None = None,
    chips: int | str | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    max_batch: int | None = None,
    rise: float = DEFAULT_RISE,
    routing_skew: float = 0.0,
    progress=None,
) -> CriticalBatch:
    """The rule's critical batch and the knee of the cycle model's decode step time.

    Every sweep point runs on the same chips: ``chips`` if given, else the fewest that hold
    the largest batch of the sweep (``max_batch``, default 4 x the rule's batch as a power
    of two, at least 64); with a given chip count the sweep stops at the first batch that
    does not fit (its KV cache: the rule's first departure). ``progress(batch)`` is called
    before each point."""
    if not (isinstance(rise, int | float) and 0 < rise <= 10):
        raise ScenarioError(f"rise must be a number in (0, 10], got {rise!r}")
    peak, tiers, weights, total, active, wb, fam = rule(arch, model, precision, overrides)
    weight_tier = next(t for t in tiers if t.name == weights)
    rule_batch = weight_tier.ridge_flops_per_byte * (wb / 2.0) * total / active
    if max_batch is None:
        max_batch = min(MAX_SWEEP_BATCH, max(64, 2 ** math.ceil(math.log2(4 * rule_batch))))
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch <= 0:
        raise ScenarioError(f"max batch must be a positive integer, got {max_batch!r}")
    out = CriticalBatch(
        arch=arch, family=fam, model=load_model(model).name, precision=precision, ctx=ctx,
        layers="all" if layers is None else str(layers), routing_skew=routing_skew,
        peak_flops_per_s=peak, tiers=tiers, weight_tier=weights, params_total=total,
        params_active=active, weight_bytes_per_param=wb, rule_batch=rule_batch, rise=rise,
    )  # fmt: skip
    kw = dict(
        phase="decode", ctx=ctx, layers=layers, precision=precision, overrides=overrides,
        routing_skew=routing_skew,
    )  # fmt: skip
    batches = sweep_batches(max_batch)
    done = {}
    if chips in (None, "auto"):
        largest = _largest_that_fits(arch, model, batches, kw, progress)
        batches = [b for b in batches if b <= largest.batch]
        chips, done[largest.batch] = largest.chips, largest
    out.chips = int(chips)
    for b in batches:
        if progress is not None and b not in done:
            progress(b)
        try:
            r = done.get(b) or simulate(arch, model, batch=b, chips=chips, **kw)
        except CapacityError as exc:  # KV pressure: larger batches do not fit either
            out.points.append(SweepPoint(b, None, None, None, None, None, str(exc)))
            break
        period = b / r.tokens_per_s
        out.points.append(SweepPoint(b, r.seconds, period, r.tokens_per_s, r.bound, r.chips))
    ran = [p for p in out.points if p.seconds is not None]
    if not ran:
        raise ArchsimError(
            f"{model} does not decode on {out.chips} chip(s) of {arch} even at batch 1"
        )
    out.floor_s = ran[0].period_s
    out.max_batch_run = ran[-1].batch
    out.knee_batch, out.knee_s = knee(out.points, rise)
    return out


def _largest_that_fits(arch, model, batches, kw, progress):
    """The run of the sweep's largest batch on the fewest chips that hold it (the next
    smaller batch where no number of chips does)."""
    for b in reversed(batches):
        if progress is not None:
            progress(b)
        try:
            return simulate(arch, model, batch=b, **kw)
        except CapacityError:
            continue
    raise CapacityError(f"{model} does not fit on any number of {arch} chips even at batch 1")
