"""Human-readable tables (rich) for results, comparisons and traces; printed to stdout."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from archsim.result import Result


def _si(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _time(s: float | None) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.2f} us"


def _expert_parallel(r: Result) -> str:
    """The MoE layers' expert parallelism, where a plan has it (plan.ep > 1)."""
    ep = r.meta.get("plan", {}).get("ep", 1)
    return f"; experts over {ep} ranks, the hottest simulated" if ep > 1 else ""


def result_table(r: Result) -> None:
    console = Console()
    t = Table(title=f"archsim {r.arch} · {r.model} · {r.phase}", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    rows = [
        (
            "scenario",
            f"batch {r.batch}, "
            + (f"prompt {r.seq}" if r.phase == "prefill" else f"context {r.ctx}")
            + f", {r.precision}, layers {r.layers}",
        ),
        ("chips", f"{r.chips} (tensor {r.tp} x pipeline {r.pp}{_expert_parallel(r)})"),
        ("step time", f"{_time(r.seconds)}  ({r.cycles:,} cycles at {_si(r.clock_hz, 'Hz')})"),
        ("tokens/s (system)", f"{r.tokens_per_s:,.1f}"),
        ("tokens/s (per user)", f"{r.tokens_per_s_per_user:,.1f}"),
        (
            "bound",
            r.bound
            + "  ("
            + ", ".join(f"{k} {_time(v)}" for k, v in r.time_by_bound.items() if v > 0)
            + ")",
        ),
        ("weights resident", _si(r.weight_bytes, "B")),
        ("KV cache resident", _si(r.kv_bytes, "B")),
        ("FLOPs", _si(r.flops, "FLOP")),
    ]
    rows += [
        (f"{tier} traffic", f"{_si(b, 'B')}  ({_si(r.bandwidth_by_tier[tier], 'B/s')} per chip)")
        for tier, b in r.bytes_by_tier.items()
        if b > 0
    ]
    rows += [("compute utilisation", f"{100 * r.utilization['compute']:.1f} %")]
    for key, value in r.extra.items():
        if isinstance(value, int | float | str | bool):
            rows.append(
                (key.replace("_", " "), f"{value:,.4g}" if isinstance(value, float) else str(value))
            )
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    kinds = sorted(r.time_by_op_kind.items(), key=lambda kv: -kv[1])
    b = Table(title="time on the critical path by op")
    b.add_column("op")
    b.add_column("time", justify="right")
    b.add_column("share", justify="right")
    b.add_column("bound")
    total = sum(v for _, v in kinds) or 1.0
    for name, v in kinds:
        b.add_row(name, _time(v), f"{100 * v / total:.1f} %", r.bound_by_op_kind.get(name, ""))
    console.print(b)


def _cell(value: Any, kind: str, notes: dict[str, int]) -> str:
    """One table cell; an unknown value is '?' with a footnote number for its reason."""
    if isinstance(value, str) and value.startswith("unknown:"):
        reason = value.removeprefix("unknown:").strip()
        if reason.startswith("refused:"):
            return "-"
        n = notes.setdefault(reason, len(notes) + 1)
        return f"? [{n}]"
    if kind == "time":
        return _time(value)
    if kind == "rate":
        return f"{value:,.1f}" if value < 1e5 else _si(value, "")
    if kind == "bytes":
        return _si(value, "B")
    if kind == "share":
        return f"{100 * value:.2g} %"
    if kind == "watts":
        return _si(value, "W")
    if kind == "joules":
        return _si(value, "J") if value >= 1e-3 else f"{value * 1e3:.3g} mJ"
    if kind == "usd":
        return f"${value:,.3g}" if value < 1e3 else f"${value:,.0f}"
    if kind == "bw":  # B/s per tier, most used first
        busy = sorted(((b, t) for t, b in value.items() if b > 0), reverse=True)
        return ", ".join(f"{t} {_si(b, '').replace(' ', '')}" for b, t in busy) or "-"
    return str(value)


COMPARE_TABLES = (
    ("performance", ("arch", "batch", "chips", "racks", "latency_s", "tokens_per_s_per_user",
                     "tokens_per_s", "tokens_per_s_per_chip", "tokens_per_s_per_rack", "bound")),
    ("memory, power, energy and cost", ("arch", "memory_bytes_per_chip", "memory_used_fraction",
                                        "bandwidth_by_tier", "power_w_per_chip", "tdp_w_per_chip",
                                        "energy_j_per_token", "cost_usd_per_mtok")),
)  # fmt: skip


def compare_table(rows: list[dict[str, Any]]) -> None:
    """Two tables, one row per architecture: performance; memory, power, energy and cost.
    Unknown values are '?' with their reasons as numbered notes; refusals are listed below."""
    from archsim.compare import COLUMNS

    kinds = {c.key: (c.header, c.kind) for c in COLUMNS}
    console = Console()
    notes: dict[str, int] = {}
    for title, keys in COMPARE_TABLES:
        t = Table(title=f"archsim compare: {title}")
        for key in keys:
            t.add_column(kinds[key][0], justify="left" if key in ("arch", "bound") else "right")
        for r in rows:
            t.add_row(*[_cell(r.get(k, "unknown: missing"), kinds[k][1], notes) for k in keys])
        console.print(t)
    for reason, n in notes.items():
        console.print(f"[{n}] {reason}", soft_wrap=True, markup=False)
    for r in rows:
        if "error" in r:
            console.print(f"{r['arch']}: refused: {r['error']}", soft_wrap=True, markup=False)
        if r.get("slo_limit"):
            console.print(
                f"{r['arch']}: batch {r['batch']} meets TPOT <= {r['slo_tpot_s']:g} s "
                f"(stopped at {r['slo_limit']})", soft_wrap=True, markup=False,
            )  # fmt: skip


def trace_summary(tr: dict[str, Any]) -> None:
    a, s = tr["attrs"], tr["summary"]
    console = Console()
    console.print(
        f"trace schema {a['schema_version']}, archsim {a['archsim_version']} ({a['git_revision']})"
    )
    console.print(
        f"{a['arch']} ({a['family']}) · {a['model']} · {s['phase']} batch {s['batch']}"
        f" · {len(tr['events']['start']):,} instructions · {s['cycles']:,} cycles "
        f"= {_time(s['seconds'])}"
    )
    t = Table(title="units")
    t.add_column("unit")
    t.add_column("busy cycles", justify="right")
    t.add_column("busy", justify="right")
    total = max(int(s["cycles"]), 1)
    order = sorted(range(len(tr["names"]["units"])), key=lambda u: -tr["busy_cycles"][u])
    for u in order[:40]:
        t.add_row(
            tr["names"]["units"][u],
            f"{int(tr['busy_cycles'][u]):,}",
            f"{100 * tr['busy_cycles'][u] / total:.1f} %",
        )
    console.print(t)


def kernel_table(r) -> None:
    """One operator's timing (``archsim kernel``), per call."""
    t = Table(title=f"archsim kernel {r.op} · {r.arch}", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    shape = ", ".join(f"{k} {v}" for k, v in r.shape.items())
    rows = [
        ("shape", f"{shape}, {r.dtype}"),
        (
            "time per call",
            f"{_time(r.seconds)}  ({r.cycles:,.1f} cycles at {_si(r.clock_hz, 'Hz')})",
        ),
        ("calls", f"{r.repeat} back to back ({_time(r.total_seconds)} in all)"),
        ("bound", r.bound),
        ("FLOPs", _si(r.flops, "FLOP")),
    ]
    rows += [(f"{tier} traffic", _si(b, "B")) for tier, b in r.bytes_by_tier.items() if b > 0]
    if r.seconds > 0 and r.flops:
        rows.append(("achieved", _si(r.flops / r.seconds, "FLOP/s")))
    rows += [(k.replace("_", " "), str(v)) for k, v in {**r.options, **r.choice}.items()]
    for k, v in rows:
        t.add_row(k, v)
    Console().print(t)


def critical_batch_table(cb) -> None:
    """``archsim roofline``: the rule (ridge points, sparsity, critical batch), the knee, and
    the sweep's points."""
    console = Console()
    t = Table(title=f"archsim roofline {cb.arch} · {cb.model} · decode", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    rows = [
        ("scenario", f"context {cb.ctx}, {cb.precision}, layers {cb.layers}, {cb.chips} chips"),
        ("peak compute", _si(cb.peak_flops_per_s, "FLOP/s") + " per chip"),
    ]
    rows += [
        (f"ridge ({tier.name})", f"{tier.ridge_flops_per_byte:,.1f} FLOP/B  "
         f"({_si(tier.bytes_per_s, 'B/s')})")
        for tier in cb.tiers
    ]  # fmt: skip
    rows += [
        ("parameters", f"{cb.params_total / 1e9:.2f} B total, {cb.params_active / 1e9:.2f} B "
         f"active (sparsity {cb.sparsity:.2f})"),
        ("rule's critical batch", f"{cb.rule_batch:,.0f}  (ridge of {cb.weight_tier} x "
         f"{cb.weight_bytes_per_param:g} B/2 per weight x sparsity)"),
        ("step period floor (batch 1)", _time(cb.floor_s)),
        ("knee (cycle model)", "not reached by batch " + f"{cb.max_batch_run}"
         if cb.knee_batch is None else f"{cb.knee_batch:,.0f}  (step time +{cb.rise:.0%}, "
         f"{_time(cb.knee_s)})"),
    ]  # fmt: skip
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    s = Table(title="decode step vs batch")
    for col in ("batch", "latency", "step period", "x floor", "tokens/s", "bound"):
        s.add_column(col, justify="right" if col != "bound" else "left")
    for p in cb.points:
        if p.seconds is None:
            s.add_row(str(p.batch), "-", "-", "-", "-", p.error or "")
            continue
        s.add_row(str(p.batch), _time(p.seconds), _time(p.period_s),
                  f"{p.period_s / cb.floor_s:.2f}", f"{p.tokens_per_s:,.0f}", p.bound)  # fmt: skip
    console.print(s)
