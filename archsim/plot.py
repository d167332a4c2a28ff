"""Plots (matplotlib, the `plot` extra): a roofline of one run, the time breakdown of several
machines, and any two columns of a sweep table. Data functions are separate from drawing so
their numbers can be tested; every figure is written to a file (PNG, SVG or PDF)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from archsim.core.errors import ArchsimError
from archsim.outputs import check_target, write_with
from archsim.result import Result


@dataclass(frozen=True)
class RooflinePoint:
    role: str  # qkv_proj, attention, ...
    intensity: float  # FLOP per byte of the bounding memory tier
    achieved: float  # FLOP/s while the role's instructions run


@dataclass(frozen=True)
class Roofline:
    peak_flops: float  # FLOP/s
    peak_bw: float  # B/s of the bounding memory tier
    tier: str  # its name (hbm, sram, ...)
    points: list[RooflinePoint]

    def ceiling(self, intensity: float) -> float:
        return min(self.peak_flops, intensity * self.peak_bw)


def roofline(result: Result) -> Roofline:
    """Per op role: total FLOPs over the bytes of the machine's bounding tier (off-chip memory,
    or on-chip SRAM for a machine without it) and over the time its instructions take. The
    ceilings come from the resolved config the result recorded (overrides included)."""
    from archsim.core.registry import get_family
    from archsim.graph.scenario import Precision

    family = get_family(result.family)
    params = family.Params.model_validate(result.meta["arch_config"])
    peak = family.peak(params, Precision.parse(result.precision).weights)
    s, secs = result.stream, result.timeline.duration / result.clock_hz
    if peak.offchip_bytes_per_s > 0:
        col, bw = "offchip_bytes", peak.offchip_bytes_per_s
    else:
        col, bw = "onchip_bytes", peak.onchip_bytes_per_s
    roles = np.array([result.op_roles.get(n, n) for n in s.op_names])[s.op]
    points = []
    for role in dict.fromkeys(roles):
        sel = (roles == role) & (s.flops > 0)
        flops, nbytes, t = s.flops[sel].sum(), s.cols[col][sel].sum(), secs[sel].sum()
        if flops > 0 and nbytes > 0 and t > 0:
            points.append(RooflinePoint(str(role), float(flops / nbytes), float(flops / t)))
    return Roofline(peak.flops_per_s, bw, family.tiers[col], points)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ArchsimError("archsim plot needs matplotlib: pip install 'archsim[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_output(out: str | Path) -> Path:
    """A figure path archsim can write (checked before any simulation runs)."""
    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ArchsimError(f"plot output must end in .png, .svg or .pdf, got {out.name!r}")
    return check_target(out, "figure")


def _save(fig, out: str | Path) -> Path:
    out = check_output(out)
    fmt = out.suffix.lower().lstrip(".")
    return write_with(out, lambda tmp: fig.savefig(tmp, dpi=150, bbox_inches="tight",
                                                   format=fmt), "figure")  # fmt: skip


def plot_roofline(result: Result, out: str | Path) -> Path:
    plt = _pyplot()
    rl = roofline(result)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lo = min([p.intensity for p in rl.points] + [0.1]) / 4
    hi = max([p.intensity for p in rl.points] + [rl.peak_flops / rl.peak_bw]) * 4
    x = np.geomspace(lo, hi, 200)
    ax.loglog(x, [rl.ceiling(v) for v in x], color="black", lw=1.5,
              label=f"ceiling: {rl.peak_flops / 1e12:.0f} TFLOP/s, "
                    f"{rl.peak_bw / 1e12:.2f} TB/s {rl.tier}")  # fmt: skip
    stacked: dict[float, int] = {}  # labels of points at one intensity are stacked
    for p in sorted(rl.points, key=lambda q: -q.achieved):
        k = stacked[round(np.log10(p.intensity), 1)] = stacked.get(
            round(np.log10(p.intensity), 1), -1) + 1  # fmt: skip
        ax.loglog(p.intensity, p.achieved, "o")
        ax.annotate(p.role, (p.intensity, p.achieved), fontsize=8, xytext=(6, 4 - 10 * k),
                    textcoords="offset points")  # fmt: skip
    ax.set_xlabel(f"arithmetic intensity (FLOP per byte of {rl.tier})")
    ax.set_ylabel("achieved FLOP/s (per chip)")
    ax.set_title(f"{result.arch} · {result.model} · {result.phase} batch {result.batch}")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    path = _save(fig, out)
    plt.close(fig)
    return path


def plot_breakdown(results: list[Result], out: str | Path) -> Path:
    """One stacked bar per machine: critical-path time by op role, in ms."""
    plt = _pyplot()
    roles = list(dict.fromkeys(r for res in results for r in res.time_by_op_kind))
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(results) + 1.8))
    left = np.zeros(len(results))
    colors = plt.get_cmap("tab20").colors
    for i, role in enumerate(roles):
        ms = np.array([res.time_by_op_kind.get(role, 0.0) * 1e3 for res in results])
        ax.barh([f"{r.arch} ({r.chips} chips)" for r in results], ms, left=left, label=role,
                color=colors[i % len(colors)])  # fmt: skip
        left += ms
    ax.set_xlabel("critical-path time per step (ms)")
    ax.set_title(f"{results[0].model} · {results[0].phase} batch {results[0].batch}")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    path = _save(fig, out)
    plt.close(fig)
    return path


def sweep_rows(path: str | Path) -> list[dict[str, Any]]:
    """Finished rows of a sweep table (any format); refused points are left out."""
    from archsim.sweep.store import read_table

    return [r for r in read_table(path) if not r.get("error")]


def _column(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    """A numeric column: a result or scenario key, or an override key (`--set` name)."""
    values = []
    for r in rows:
        value = r.get(key)
        if value is None:
            value = json.loads(r.get("overrides") or "{}").get(key)
        try:
            values.append(float(value))
        except (TypeError, ValueError):
            raise ArchsimError(f"sweep column {key!r} is missing or not a number") from None
    return np.array(values)


def plot_sweep(path: str | Path, x: str, y: str, group: str, out: str | Path,
               logx: bool = False, logy: bool = False) -> Path:  # fmt: skip
    """``y`` against ``x``, one line per value of ``group``; where the chip count changes
    along a line the new count is written beside its point."""
    rows = sweep_rows(path)
    if not rows:
        raise ArchsimError(f"sweep table {path} has no finished points to plot")
    plt = _pyplot()
    xs, ys = _column(rows, x), _column(rows, y)
    chips = _column(rows, "chips") if all(r.get("chips") is not None for r in rows) else None
    keys = [
        str(r.get(group) or json.loads(r.get("overrides") or "{}").get(group, "")) for r in rows
    ]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k in dict.fromkeys(keys):
        sel = np.array([kk == k for kk in keys])
        order = np.argsort(xs[sel])
        lx, ly = xs[sel][order], ys[sel][order]
        ax.plot(lx, ly, "o-", label=f"{group}={k}" if k else y)
        if chips is not None:
            lc = chips[sel][order]
            for i in range(len(lc)):
                if i == 0 or lc[i] != lc[i - 1]:
                    ax.annotate(f"{int(lc[i])} chips", (lx[i], ly[i]), fontsize=7,
                                textcoords="offset points", xytext=(4, 4))  # fmt: skip
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    path_out = _save(fig, out)
    plt.close(fig)
    return path_out


def pareto_front(xs: np.ndarray, ys: np.ndarray, x_max: bool, y_max: bool) -> np.ndarray:
    """Indices of the points no other point beats on both axes (``x_max``/``y_max``: larger
    is better on that axis), in order of x."""
    sx = xs if x_max else -xs
    sy = ys if y_max else -ys
    order = np.lexsort((-sy, -sx))  # best x first, ties: best y first
    front, best_y = [], -np.inf
    for i in order:
        if sy[i] > best_y:
            front.append(i)
            best_y = sy[i]
    return np.array(sorted(front, key=lambda i: xs[i]), dtype=int)


def plot_pareto(path: str | Path, x: str, y: str, out: str | Path, x_max: bool = False,
                y_max: bool = True, logx: bool = False, logy: bool = False,
                label: str = "arch") -> tuple[Path, list[dict[str, Any]]]:  # fmt: skip
    """Every finished point of a sweep as ``y`` against ``x``, the Pareto front (no other
    point better on both) drawn and returned as rows."""
    rows = sweep_rows(path)
    if not rows:
        raise ArchsimError(f"sweep table {path} has no finished points to plot")
    plt = _pyplot()
    xs, ys = _column(rows, x), _column(rows, y)
    front = pareto_front(xs, ys, x_max, y_max)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(xs, ys, s=14, alpha=0.5, label="design points")
    ax.plot(xs[front], ys[front], "o-", color="C3", label="Pareto front")
    for i in front:
        ax.annotate(str(rows[i].get(label, "")), (xs[i], ys[i]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))  # fmt: skip
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    ax.set_xlabel(f"{x} ({'higher' if x_max else 'lower'} is better)")
    ax.set_ylabel(f"{y} ({'higher' if y_max else 'lower'} is better)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    path_out = _save(fig, out)
    plt.close(fig)
    return path_out, [rows[i] for i in front]


# ---- serving curve: latency percentiles against arrival rate (archsim plot serve) ----------
def serve_curve(cfg, make_requests, rates: list[float]) -> list[dict[str, Any]]:
    """One serving run per arrival rate (the step model is shared): its TTFT, TPOT and
    end-to-end percentiles and throughput."""
    from archsim.serve import Server, serve

    server = Server(cfg)
    points = []
    for rate in rates:
        report, _ = serve(cfg, make_requests(rate), server)
        points.append({
            "rate": rate,
            **{f"{m}_{p}": report[f"{m}_s"][p] for m in ("ttft", "tpot", "e2e")
               for p in ("p50", "p90", "p99")},
            "output_tokens_per_s": report["throughput"]["output_tokens_per_s"],
            "slo_attainment": report["slo"]["attainment"],
        })  # fmt: skip
    return points


def plot_serve(points: list[dict[str, Any]], out: str | Path) -> Path:
    """Three panels (TTFT, TPOT, end to end): p50/p90/p99 in seconds against the rate."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    rates = [p["rate"] for p in points]
    for ax, metric, title in zip(axes, ("ttft", "tpot", "e2e"),
                                 ("time to first token", "time per output token",
                                  "end to end"), strict=True):  # fmt: skip
        for pct, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^:")):
            ys = [p[f"{metric}_{pct}"] for p in points]
            ax.plot(rates, [np.nan if y is None else y for y in ys], style, label=pct)
        ax.set_yscale("log")
        ax.set_xlabel("arrival rate (requests/s)")
        ax.set_ylabel("seconds")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = _save(fig, out)
    plt.close(fig)
    return path


def plot_critical_batch(cb, out: str | Path) -> Path:
    """Decode step time and system tokens/s against batch from an ``archsim roofline`` sweep
    (an archsim.roofline.CriticalBatch), the rule's critical batch and the cycle model's
    knee marked."""
    plt = _pyplot()
    ran = [p for p in cb.points if p.seconds is not None]
    if not ran:
        raise ArchsimError("the roofline sweep has no point to plot")
    batch = np.array([p.batch for p in ran], dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.loglog(batch, [p.period_s * 1e3 for p in ran], "o-", color="C0", label="step time")
    if any(p.seconds > p.period_s * (1 + 1e-9) for p in ran):  # pipelined: latency apart
        ax.loglog(batch, [p.seconds * 1e3 for p in ran], ".:", color="C0", alpha=0.6,
                  label="latency")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch (sequences per decode step)")
    ax.set_ylabel("step time: period between steps (ms)", color="C0")
    right = ax.twinx()
    right.loglog(batch, [p.tokens_per_s for p in ran], "s--", color="C1", label="tokens/s")
    right.set_xscale("log", base=2)
    right.set_ylabel("system tokens/s", color="C1")
    ax.axvline(cb.rule_batch, color="C3", lw=1.2,
               label=f"rule: {cb.rule_batch:,.0f} (ridge {cb.ridge:.0f} x sparsity "
                     f"{cb.sparsity:.1f})")  # fmt: skip
    if cb.knee_batch is not None:
        ax.axvline(cb.knee_batch, color="C2", lw=1.2, ls=":",
                   label=f"knee: {cb.knee_batch:,.0f} (+{cb.rise:.0%} over the floor)")  # fmt: skip
    ax.set_title(f"{cb.arch} · {cb.model} · decode ctx {cb.ctx} · {cb.precision} · "
                 f"{cb.chips} chips")  # fmt: skip
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    path = _save(fig, out)
    plt.close(fig)
    return path
