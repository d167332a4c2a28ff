"""simulate(): the whole pipeline, model + arch + scenario -> Result."""

from __future__ import annotations

import functools
import gc
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np

from archsim.config import load_arch, parse_overrides
from archsim.core.engine import simulate_stream
from archsim.core.errors import ScenarioError, UnsupportedOpError
from archsim.core.family import Family, Peak
from archsim.core.isa import START_START
from archsim.core.registry import get_family
from archsim.core.version import __version__
from archsim.graph.build import build_graph
from archsim.graph.model import ModelSpec, load_model
from archsim.graph.scenario import Precision, Scenario
from archsim.result import Result, git_revision

BOUNDS = ("compute", "memory", "communication", "overhead")
# refuse a step whose instruction stream would be larger than this (about 200 B each)
DEFAULT_MAX_INSTRUCTIONS = 20_000_000
# an instruction is overhead-bound when its ideal (roofline) time is under this share of it
OVERHEAD_SHARE = 0.5


def _chips_arg(chips: int | str | None) -> int | None:
    if chips is None or (isinstance(chips, str) and chips.strip().lower() == "auto"):
        return None
    try:
        value = int(chips)
    except (TypeError, ValueError):
        raise ScenarioError(f"chips must be a positive integer or 'auto', got {chips!r}") from None
    if value <= 0:
        raise ScenarioError(f"chips must be a positive integer or 'auto', got {chips!r}")
    return value


def _seconds(amount: np.ndarray, rate: float) -> np.ndarray:
    """amount / rate; 0 where the machine has no such resource (rate 0, e.g. no DRAM)."""
    return amount / rate if rate > 0 else np.zeros_like(amount, dtype=np.float64)


def onchip_ceiling(stream, peak: Peak) -> np.ndarray | None:
    """Per-instruction on-chip bandwidth ceiling (B/s): ``peak.onchip_bytes_per_s``, or a
    tighter one for the opcodes in ``peak.onchip_bytes_per_s_by_opcode`` (a unit fed by a
    narrower path than the whole SRAM, e.g. one MXM plane's weight streams)."""
    if not peak.onchip_bytes_per_s:
        return None
    rate = np.full(len(stream), float(peak.onchip_bytes_per_s))
    for name, bw in peak.onchip_bytes_per_s_by_opcode:
        if name in stream.opcode_names:
            rate[stream.opcode == stream.opcode_names.index(name)] = bw
    return rate


def compute_ceiling(stream, peak: Peak) -> np.ndarray:
    """Per-instruction compute ceiling (FLOP/s): ``peak.flops_per_s``, or a tighter one for
    the units of a kind in ``peak.flops_per_s_by_unit`` (a stage wired to a share of the
    chip's MAC arrays)."""
    rate = np.full(len(stream), float(peak.flops_per_s))
    if peak.flops_per_s_by_unit:
        kinds = np.array([_UNIT_KIND.sub("", u) for u in stream.unit_names])[stream.unit]
        for kind, flops_per_s in peak.flops_per_s_by_unit:
            rate[kinds == kind] = flops_per_s
    return rate


def shared_resource_bound(stream, timing, duration: np.ndarray) -> np.ndarray:
    """Instructions whose transfer over a shared resource lasted longer than their own work
    (they got a share of a bandwidth other flows were using): bool [n]."""
    if timing is None or not len(stream.res_idx):
        return np.zeros(len(stream), dtype=bool)
    moves = np.diff(stream.res_ptr) > 0
    flow = duration - timing.latency  # the flow phase (start to its last byte)
    return moves & (flow > timing.work)


def classify(stream, duration: np.ndarray, peak: Peak, clock_hz: float, timing=None):
    """Per instruction: (ideal compute, memory, link seconds) and its bound class index.

    An instruction is bound by whichever ideal time (at the family's ceilings) is largest,
    or by *overhead* when even that is under OVERHEAD_SHARE of its modelled time — unless
    the modelled time went to sharing a resource (``timing`` given: its transfer outlasted
    its own work), which is memory (or communication, for link bytes only) contention, not
    overhead."""
    t_c = _seconds(stream.flops, peak.flops_per_s)
    if peak.flops_per_s_by_unit:
        t_c = stream.flops / compute_ceiling(stream, peak)
    t_m = _seconds(stream.offchip_bytes, peak.offchip_bytes_per_s)
    onchip = onchip_ceiling(stream, peak)
    if onchip is not None:
        t_m = np.maximum(t_m, stream.onchip_bytes / onchip)
    t_l = _seconds(stream.link_bytes, peak.link_bytes_per_s)
    ideal = np.stack([t_c, t_m, t_l])
    cls = np.argmax(ideal, axis=0)
    secs = duration / clock_hz
    latency_bound = ideal.max(axis=0) < OVERHEAD_SHARE * secs
    # a latency-bound transfer is still communication; anything else is fixed overhead
    cls = np.where(latency_bound, np.where(stream.link_bytes > 0, 2, 3), cls)
    shared = shared_resource_bound(stream, timing, duration)
    links_only = (stream.link_bytes > 0) & (stream.offchip_bytes == 0) & (stream.onchip_bytes == 0)
    cls = np.where(latency_bound & shared, np.where(links_only, 2, 1), cls)
    return ideal, cls


def refuse_unsupported(g, family: Family, params=None) -> None:
    """One line naming the first op the family cannot run (before any compiling): an op kind
    outside its ``supported_ops``, or, given the family's ``params``, whatever its
    ``check_graph`` refuses (a precision, an activation, a head size...)."""
    allowed = family.supported_ops()
    for _, d in g.nodes(data=True):
        op = d["op"]
        kind = op.kind.value
        if kind not in allowed:
            raise UnsupportedOpError(
                f"{family.name} cannot run {kind} ops (op {op.id}, layer {op.layer}); it runs: "
                + ", ".join(sorted(allowed))
            )
    if params is not None:
        family.check_graph(g, params)


def run_stream(family: Family, params, stream):
    """Time ``stream`` (a static family's schedule is first checked by the independent
    checker, then held to by the engine). Returns (timing, timeline)."""
    from archsim.core.engine.check import check_schedule

    timing = family.timing(stream, params)
    if family.static:
        check_schedule(stream, timing)
    return timing, simulate_stream(stream, timing, static=family.static)


def simulate(
    arch: str,
    model: str | ModelSpec,
    phase: str = "decode",
    batch: int = 1,
    ctx: int = 2048,
    seq: int = 2048,
    layers: int | None = None,
    precision: str | Precision = "bf16",
    chips: int | str | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    max_instructions: int = DEFAULT_MAX_INSTRUCTIONS,
    routing_skew: float = 0.0,
) -> Result:
    """Simulate one step. ``layers=None``: whole model; ``layers=N``: N decoder layers only.
    ``chips=None`` or ``"auto"``: the fewest chips that hold the model. A step whose stream
    the family estimates above ``max_instructions`` is refused before it is lowered.
    ``routing_skew``: a mixture-of-experts router's imbalance (0 uniform; s > 0 a Zipf law of
    exponent s over the experts, archsim/graph/moe.py)."""
    with paused_collection():
        return _simulate(
            arch, model, phase, batch, ctx, seq, layers, precision, chips, overrides,
            max_instructions, routing_skew,
        )  # fmt: skip


@contextmanager
def paused_collection() -> Iterator[None]:
    """Python's cyclic garbage collector off while a step is built: lowering keeps every
    instruction it appends alive, so each automatic collection rescans all of them (a
    llama3-70b groq-like trip lowered in 112 ms with collections, 44 ms without). Reference
    counting still frees what a step drops; the collector runs again afterwards."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@functools.lru_cache(maxsize=16)
def step_graph(spec: ModelSpec, sc: Scenario, layers: int | None) -> nx.DiGraph:
    """``build_graph``, kept for the next steps of the same model and scenario: a sweep over
    machine parameters, or ``compare`` over machines, builds each step's graph once. Plan,
    partition and lowering read the graph and never change it (the partitioned graph is a
    new one; tests/test_pipeline_graph.py checks every family)."""
    return build_graph(spec, sc, layers)


def _simulate(
    arch, model, phase, batch, ctx, seq, layers, precision, chips, overrides, max_instructions,
    routing_skew,
) -> Result:  # fmt: skip
    params = load_arch(arch, parse_overrides(overrides))
    spec = model if isinstance(model, ModelSpec) else load_model(model)
    prec = precision if isinstance(precision, Precision) else Precision.parse(precision)
    sc = Scenario(
        phase=phase, batch=batch, seq=seq, ctx=ctx, precision=prec, routing_skew=routing_skew
    )
    family = get_family(params.family)

    g = step_graph(spec, sc, layers)
    refuse_unsupported(g, family, params)
    plan = family.plan(g, params, _chips_arg(chips))
    pg = family.partition(g, plan, params)
    estimate = family.instruction_estimate(pg, plan, params, sc)
    if estimate > max_instructions:
        raise ScenarioError(
            f"this step would lower to about {estimate:,} instructions, over the limit of "
            f"{max_instructions:,} (--max-instructions); simulate fewer layers (--layers) or "
            "raise the limit if memory allows (~200 B per instruction)"
        )
    stream = family.lower(pg, plan, params, sc)
    timing, tl = run_stream(family, params, stream)
    return _result(_Run(arch, family, params, spec, sc, layers, plan, pg, stream, timing, tl))


@dataclass(frozen=True)
class _Run:
    """What the pipeline produced for one step, before it is summarised into a Result."""

    arch: str
    family: Any
    params: Any
    spec: ModelSpec
    sc: Scenario
    layers: int | None
    plan: Any
    pg: Any  # the partitioned graph
    stream: Any
    timing: Any
    tl: Any


def _result(run: _Run) -> Result:
    family, params, sc, plan, stream, tl = (
        run.family, run.params, run.sc, run.plan, run.stream, run.tl
    )  # fmt: skip
    clock = family.clock_hz(params)
    step = family.step(stream, tl, plan, params, sc)
    seconds, period = step.latency_s, step.period_s
    extra = family.summarize(stream, tl, plan, params, sc)
    roles = {name: d["op"].role for name, d in run.pg.nodes(data=True)}
    ranks = plan.tp * plan.dp  # chips that mirror each simulated one
    tps = sc.tokens / period
    user_tps = sc.new_tokens_per_seq / seconds if sc.phase == "prefill" else 1.0 / seconds

    scale = ranks * step.copies
    tier_bytes = {name: float(stream.cols[col].sum()) * scale for col, name in family.tiers.items()}
    bw = {name: b / plan.chips / period for name, b in tier_bytes.items()}
    peak = family.peak(params, sc.precision.weights)
    ideal, cls = classify(stream, tl.duration, peak, clock, run.timing)
    critical, critical_cycles = critical_time(stream, tl)
    secs = critical_cycles / clock  # the share of the step each instruction accounts for
    time_by_bound = {b: float(secs[critical & (cls == i)].sum()) for i, b in enumerate(BOUNDS)}
    bound = max(time_by_bound, key=time_by_bound.get)
    by_kind: dict[str, float] = {}
    kind_bounds: dict[str, np.ndarray] = {}
    for i in np.nonzero(critical)[0]:
        name = stream.op_names[stream.op[i]]
        kind = roles.get(name, name)  # the op's role in its layer (qkv_proj, all_reduce, ...)
        by_kind[kind] = by_kind.get(kind, 0.0) + float(secs[i])
        kind_bounds.setdefault(kind, np.zeros(len(BOUNDS)))[cls[i]] += secs[i]
    bound_by_kind = {k: BOUNDS[int(np.argmax(v))] for k, v in kind_bounds.items()}

    flops = float(stream.flops.sum()) * scale
    busy = _busy_by_unit_kind(tl)
    util = {
        "compute": flops / (peak.flops_per_s * period * plan.chips),
        "offchip_bw": bw[family.tiers["offchip_bytes"]] / peak.offchip_bytes_per_s
        if peak.offchip_bytes_per_s
        else 0.0,
        "units": busy,
    }
    need = plan.need
    return Result(
        arch=run.arch,
        family=family.name,
        model=run.spec.name,
        phase=sc.phase,
        batch=sc.batch,
        seq=sc.seq,
        ctx=sc.ctx,
        precision=sc.precision.label,
        layers="all" if run.layers is None else str(run.layers),
        chips=plan.chips,
        tp=plan.tp,
        pp=plan.pp,
        cycles=tl.cycles,
        clock_hz=clock,
        seconds=seconds,
        tokens_per_s=tps,
        tokens_per_s_per_user=user_tps,
        ttft_s=seconds if sc.phase == "prefill" else None,
        tpot_s=seconds if sc.phase == "decode" else None,
        flops=flops,
        weight_bytes=need.weight_bytes,
        kv_bytes=need.kv_bytes,
        bytes_by_tier=tier_bytes,
        bandwidth_by_tier=bw,
        utilization=util,
        bound=bound,
        time_by_bound=time_by_bound,
        time_by_op_kind=by_kind,
        bound_by_op_kind=bound_by_kind,
        extra=extra,
        meta={
            "archsim_version": __version__,
            "git_revision": git_revision(),
            "arch_digest": params.digest(),
            "model_digest": run.spec.digest(),
            "arch_config": params.model_dump(mode="json"),
            "model_spec": run.spec.to_dict(),
            "scenario": sc.to_dict(),
            "plan": plan.to_dict(),
        },
        stream=stream,
        timing=run.timing,
        timeline=tl,
        op_roles=roles,
    )


_UNIT_KIND = re.compile(r"^[^.]*\.|\d+$")  # "chip3.mxm2" -> "mxm", "gpu0.sm" -> "sm"


def _busy_by_unit_kind(tl) -> dict[str, dict[str, float]]:
    """Busy share of the makespan per kind of unit: mean and max over the units of that kind
    (every unit's own busy cycles are in the trace)."""
    shares: dict[str, list[float]] = {}
    for name, b in zip(tl.unit_names, tl.busy, strict=True):
        shares.setdefault(_UNIT_KIND.sub("", name), []).append(float(b) / max(tl.cycles, 1))
    return {k: {"mean": float(np.mean(v)), "max": max(v), "units": len(v)}
            for k, v in sorted(shares.items())}  # fmt: skip


def critical_time(stream, tl) -> tuple[np.ndarray, np.ndarray]:
    """The chain of binding constraints that ends at the last finisher, and the cycles of it
    each instruction accounts for (every cycle of the step at most once).

    From an instruction's end: if a streaming (start -> start) producer's end + lag is that
    end, the instruction was waiting for its producer's last rows: it accounts for the lag
    and the walk continues at the producer's end. Otherwise the instruction accounts for its
    whole duration and the walk continues at what bound its start: a producer's end + lag, a
    unit predecessor's release, or a streaming producer's start + lag (that producer then
    accounts for the lag and the walk continues at what bound its own start). On streams
    without streaming dependencies this is each critical instruction's duration."""
    n = len(stream)
    on = np.zeros(n, dtype=bool)
    cycles = np.zeros(n, dtype=np.float64)
    if n == 0:
        return on, cycles
    # the previous instruction of each one's unit, in program order
    by_unit = np.lexsort((np.arange(n), stream.unit))
    unit_prev = np.full(n, -1, dtype=np.int64)
    same = stream.unit[by_unit[1:]] == stream.unit[by_unit[:-1]]
    unit_prev[by_unit[1:][same]] = by_unit[:-1][same]
    # plain lists: the walk reads single elements, which numpy arrays serve slowly
    start_, end_, release = tl.start.tolist(), tl.end.tolist(), tl.release.tolist()
    ptr, idx = stream.dep_ptr.tolist(), stream.dep_idx.tolist()
    kinds, lags = stream.dep_kind.tolist(), stream.dep_lag.tolist()
    prev = unit_prev.tolist()
    i, at_end, cursor = int(np.argmax(tl.end)), True, 0
    while i >= 0:
        on[i] = True
        deps = [(idx[k], kinds[k], lags[k]) for k in range(ptr[i], ptr[i + 1])]
        if at_end:
            drained = next(
                (j for j, kind, lag in deps
                 if kind == START_START and end_[j] + lag == end_[i] and end_[j] < end_[i]),
                -1,
            )  # fmt: skip
            if drained >= 0:
                cycles[i] += end_[i] - end_[drained]
                i = drained
                continue
            cycles[i] += end_[i] - start_[i]
        else:
            cycles[i] += cursor - start_[i]
        start = start_[i]
        nxt, at_end = -1, True
        for j, kind, lag in deps:
            bound = (start_[j] if kind == START_START else end_[j]) + lag
            if bound == start:
                nxt, at_end, cursor = j, kind != START_START, start
                break
        if nxt < 0 and prev[i] >= 0 and release[prev[i]] == start:
            nxt = prev[i]
        i = nxt
    return on, cycles
    unit_prev = np.full(n, -1)
    last_on_unit: dict[int, int] = {}
    for i in range(n):
        u = int(stream.unit[i])
        unit_prev[i] = last_on_unit.get(u, -1)
        last_on_unit[u] = i
    i, at_end, cursor = int(np.argmax(tl.end)), True, 0
    while i >= 0:
        on[i] = True
        deps = stream.deps_of(i)
        if at_end:
            drained = next(
                (j for j, kind, lag in deps
                 if kind == START_START and tl.end[j] + lag == tl.end[i] and tl.end[j] < tl.end[i]),
                -1,
            )  # fmt: skip
            if drained >= 0:
                cycles[i] += tl.end[i] - tl.end[drained]
                i = drained
                continue
            cycles[i] += tl.end[i] - tl.start[i]
        else:
            cycles[i] += cursor - tl.start[i]
        start = tl.start[i]
        nxt, at_end = -1, True
        for j, kind, lag in deps:
            bound = (tl.start[j] if kind == START_START else tl.end[j]) + lag
            if bound == start:
                nxt, at_end, cursor = j, kind != START_START, start
                break
        if nxt < 0 and unit_prev[i] >= 0 and tl.release[unit_prev[i]] == start:
            nxt = int(unit_prev[i])
        i = nxt
    return on, cycles
