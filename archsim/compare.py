"""archsim compare: several machines on one model, side by side, on one accounting.

One row per machine (``archsim compare``, docs/compare.md): chips and racks, the per-token
latency, tokens/s per user, per system, per chip and per rack, the bound, memory used per
chip, bandwidth used per tier, power per chip (against its TDP), energy per token and,
where the config prices the chips, cost per million tokens. A value that cannot be given
is the string ``"unknown: <reason>"``, never a silent blank; a machine that refuses the
scenario keeps its row, every value unknown with the refusal as the reason.

``--slo-tpot S`` picks, per machine, the largest decode batch whose TPOT at load (the time
between a user's tokens when the machine runs flat out: batch / tokens_per_s) is at most S.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archsim.config.arch import ArchParams, CostParams
from archsim.core.errors import ArchsimError, CapacityError, ScenarioError
from archsim.energy import params_of, period_s, step_energy
from archsim.result import Result

HOURS_PER_YEAR = 8760.0


@dataclass(frozen=True)
class Column:
    key: str  # JSON / CSV key
    header: str  # table header
    kind: str  # how the table prints it: int, time, rate, bytes, bw, watts, joules, usd, text


# the comparison's columns, in the order tables and CSV files show them
COLUMNS = (
    Column("arch", "arch", "text"),
    Column("family", "family", "text"),
    Column("batch", "batch", "int"),
    Column("chips", "chips", "int"),
    Column("racks", "racks", "int"),
    Column("latency_s", "latency/token", "time"),
    Column("tpot_at_load_s", "TPOT at load", "time"),
    Column("tokens_per_s_per_user", "tok/s/user", "rate"),
    Column("tokens_per_s", "tok/s", "rate"),
    Column("tokens_per_s_per_chip", "tok/s/chip", "rate"),
    Column("tokens_per_s_per_rack", "tok/s/rack", "rate"),
    Column("bound", "bound", "text"),
    Column("memory_bytes_per_chip", "mem/chip", "bytes"),
    Column("memory_used_fraction", "mem used", "share"),
    Column("bandwidth_by_tier", "B/s per chip", "bw"),
    Column("power_w_per_chip", "W/chip", "watts"),
    Column("tdp_w_per_chip", "TDP", "watts"),
    Column("power_w", "W (system)", "watts"),
    Column("energy_j_per_token", "J/token", "joules"),
    Column("cost_usd_per_mtok", "$/Mtok", "usd"),
    Column("cost_basis", "cost basis", "text"),
)
KEYS = tuple(c.key for c in COLUMNS)


def unknown(reason: str) -> str:
    return f"unknown: {reason}"


def is_known(value: Any) -> bool:
    return not (isinstance(value, str) and value.startswith("unknown:"))


# ---- one row ----------------------------------------------------------------------------
def row_of(result: Result, params: ArchParams | None = None) -> dict[str, Any]:
    """The comparison row of one simulated step."""
    params = params if params is not None else params_of(result)
    energy = step_energy(result, params)
    cost = params.cost or CostParams()
    tokens = result.batch * (result.seq if result.phase == "prefill" else 1)
    per_rack = cost.chips_per_rack
    racks: Any = unknown(f"no cost.chips_per_rack in the {result.arch} config (not published)")
    rack_rate: Any = racks
    if per_rack:
        racks = math.ceil(result.chips / per_rack)
        # a system smaller than a rack uses its share of one: tokens/s per rack of chips
        rack_rate = result.tokens_per_s / result.chips * per_rack
    capacity = float(result.meta["plan"]["capacity_bytes_per_chip"])
    used = (result.weight_bytes + result.kv_bytes) / result.chips
    row: dict[str, Any] = {
        "arch": result.arch,
        "family": result.family,
        "model": result.model,
        "phase": result.phase,
        "precision": result.precision,
        "batch": result.batch,
        "chips": result.chips,
        "tp": result.tp,
        "pp": result.pp,
        "racks": racks,
        "latency_s": result.seconds,
        "tpot_at_load_s": tokens / result.tokens_per_s
        if result.phase == "decode"
        else unknown("a prefill step has no TPOT"),
        "tokens_per_s_per_user": result.tokens_per_s_per_user,
        "tokens_per_s": result.tokens_per_s,
        "tokens_per_s_per_chip": result.tokens_per_s / result.chips,
        "tokens_per_s_per_rack": rack_rate,
        "bound": result.bound,
        "memory_bytes_per_chip": used,
        "memory_used_fraction": used / capacity if capacity > 0 else unknown("no capacity"),
        "bandwidth_by_tier": dict(result.bandwidth_by_tier),
        "warnings": list(energy.warnings),
    }
    if energy.joules is None:
        why = unknown(energy.unknown or "no energy figures")
        row.update(power_w_per_chip=why, power_w=why, energy_j_per_token=why)
    else:
        row.update(
            power_w_per_chip=energy.power_w_per_chip,
            power_w=energy.power_w_per_chip * result.chips,
            energy_j_per_token=energy.joules_per_token,
        )
    row["tdp_w_per_chip"] = (
        energy.tdp_w
        if energy.tdp_w is not None
        else unknown(f"no TDP published for {result.arch} (or none in its config)")
    )
    row["cost_usd_per_mtok"], row["cost_basis"] = cost_per_mtok(
        result, cost, row["power_w"], result.arch
    )
    return row


def cost_per_mtok(result: Result, cost: CostParams, power_w: Any, arch: str) -> tuple[Any, Any]:
    """USD per million tokens at the system's tokens/s, and what the price is."""
    if cost.usd_per_chip_hour is not None:
        per_hour = cost.usd_per_chip_hour * result.chips
        basis = f"rental ${cost.usd_per_chip_hour:g}/chip-h"
    elif cost.price_usd_per_chip is not None:
        if cost.amortization_years is None:
            why = unknown(f"{arch}: a purchase price without cost.amortization_years")
            return why, why
        chip_hour = cost.price_usd_per_chip / (cost.amortization_years * HOURS_PER_YEAR)
        per_hour = chip_hour * result.chips
        basis = f"purchase ${cost.price_usd_per_chip:,.0f}/chip over {cost.amortization_years:g} y"
        if cost.usd_per_kwh is not None:
            if not is_known(power_w):
                return power_w, basis
            per_hour += power_w / 1000.0 * cost.usd_per_kwh
            basis += f" + power at ${cost.usd_per_kwh:g}/kWh"
    else:
        why = unknown(f"no price in the {arch} config (none published)")
        return why, why
    return per_hour / (result.tokens_per_s * 3600.0) * 1e6, basis


def refused_row(arch: str, reason: str) -> dict[str, Any]:
    """A machine that cannot run the scenario: every column unknown, with the reason."""
    why = unknown(f"refused: {reason}")
    row: dict[str, Any] = {c.key: why for c in COLUMNS}
    row.update(arch=arch, error=reason, warnings=[])
    return row


# ---- the largest batch meeting a TPOT target --------------------------------------------
@dataclass(frozen=True)
class SloPick:
    batch: int
    result: Result
    limit: str  # why no larger batch was taken


def tpot_at_load(result: Result) -> float:
    """Seconds between one user's tokens at load: the step's batch over system tokens/s."""
    return period_s(result)


def largest_batch(run: Callable[[int], Result], slo_s: float, max_batch: int) -> SloPick:
    """The largest decode batch whose TPOT at load meets ``slo_s``: batches double from 1
    until one misses the target, does not fit (or is refused) or passes ``max_batch``, then
    bisect between the last that met it and the first that did not. Assumes the TPOT at load
    grows with the batch (a machine whose chip count changes with the batch may break that:
    the check is only at the batches tried)."""
    first = run(1)
    if tpot_at_load(first) > slo_s:
        raise ScenarioError(
            f"no batch meets TPOT <= {slo_s:g} s: batch 1 already takes "
            f"{tpot_at_load(first):.4g} s per token"
        )
    good, best, bad, limit = 1, first, None, f"--max-batch {max_batch} reached"

    def attempt(b: int) -> tuple[Result | None, str]:
        try:
            r = run(b)
        except (CapacityError, ScenarioError) as exc:
            return None, f"batch {b}: {exc}"
        if tpot_at_load(r) <= slo_s:
            return r, ""
        return None, f"batch {b}: TPOT at load {tpot_at_load(r):.4g} s"

    b = 2
    while b <= max_batch:
        r, why = attempt(b)
        if r is None:
            bad, limit = b, why
            break
        good, best = b, r
        b *= 2
    if bad is None and good < max_batch:  # the doubling stopped short of the cap
        bad = max_batch + 1
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        r, why = attempt(mid)
        if r is None:
            bad, limit = mid, why
        else:
            good, best = mid, r
    return SloPick(good, best, limit)


# ---- many machines ----------------------------------------------------------------------
def compare(
    names: list[str],
    simulate: Callable[..., Result],
    model: str,
    scenario: dict[str, Any],
    slo_tpot_s: float | None = None,
    max_batch: int = 1024,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per machine. ``simulate`` is ``archsim.simulate`` (passed in so tests and
    callers can wrap it); with ``slo_tpot_s`` each machine's batch is its largest meeting
    the target (``scenario["batch"]`` is ignored)."""
    if slo_tpot_s is not None:
        if scenario.get("phase", "decode") != "decode":
            raise ScenarioError("--slo-tpot picks a decode batch: use --phase decode")
        if slo_tpot_s <= 0:
            raise ScenarioError(f"--slo-tpot must be positive, got {slo_tpot_s:g}")
        if max_batch <= 0:
            raise ScenarioError(f"--max-batch must be positive, got {max_batch}")
    rows = []
    for name in names:
        if progress:
            progress(name)
        try:
            if slo_tpot_s is None:
                row = row_of(simulate(name, model, **scenario))
            else:
                pick = largest_batch(
                    lambda b, n=name: simulate(n, model, **{**scenario, "batch": b}),
                    slo_tpot_s,
                    max_batch,
                )
                row = row_of(pick.result)
                row["slo_tpot_s"] = slo_tpot_s
                row["slo_limit"] = pick.limit
        except ArchsimError as exc:  # one machine's refusal does not stop the comparison
            row = refused_row(name, str(exc))
        rows.append(row)
    return rows


# ---- files ------------------------------------------------------------------------------
def tiers_of(rows: list[dict[str, Any]]) -> list[str]:
    tiers: dict[str, None] = {}
    for r in rows:
        if isinstance(r.get("bandwidth_by_tier"), dict):
            tiers.update(dict.fromkeys(r["bandwidth_by_tier"]))
    return list(tiers)


def csv_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the CSV form: bandwidth per tier as one column per tier (empty
    where the machine has no such tier), warnings joined with '; '."""
    tiers = tiers_of(rows)
    header = [k for k in KEYS if k != "bandwidth_by_tier"]
    header += [f"bandwidth_{t}_bytes_per_s" for t in tiers] + ["warnings"]
    out = []
    for r in rows:
        bw = r.get("bandwidth_by_tier")
        line = [r.get(k, "") for k in KEYS if k != "bandwidth_by_tier"]
        if isinstance(bw, dict):
            line += [bw.get(t, "") for t in tiers]
        else:
            line += [bw] * len(tiers)
        line.append("; ".join(r.get("warnings", [])))
        out.append(line)
    return header, out


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    import csv
    import io

    from archsim.outputs import write_text

    header, lines = csv_table(rows)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(lines)
    return write_text(path, buf.getvalue(), "CSV table")


def plot_compare(rows: list[dict[str, Any]], out: str | Path, title: str = "") -> Path:
    """Bars per machine (tokens/s per user and per chip, W per chip, J per token, $ per
    million tokens) and a scatter of per-token latency against tokens/s per chip. Machines
    with an unknown value are left out of that panel."""
    from archsim.plot import _pyplot, _save

    plt = _pyplot()
    bars = (
        ("tokens_per_s_per_user", "tokens/s per user", True),
        ("tokens_per_s_per_chip", "tokens/s per chip", True),
        ("power_w_per_chip", "W per chip (bar) and TDP (tick)", True),
        ("energy_j_per_token", "J per token", True),
        ("cost_usd_per_mtok", "$ per million tokens", True),
    )
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, (key, label, log) in zip(axes.flat, bars, strict=False):
        pts = [(r["arch"], r[key]) for r in rows if is_known(r.get(key, unknown("")))]
        if pts:
            ax.barh([a for a, _ in pts], [v for _, v in pts], color="tab:blue")
            if log:
                ax.set_xscale("log")
        if key == "power_w_per_chip":
            for i, (a, _) in enumerate(pts):
                tdp = next(r["tdp_w_per_chip"] for r in rows if r["arch"] == a)
                if is_known(tdp):
                    ax.plot([tdp, tdp], [i - 0.4, i + 0.4], color="black", lw=2)
        ax.set_xlabel(label)
        ax.invert_yaxis()
        ax.grid(True, axis="x", which="both", alpha=0.3)
    ax = axes.flat[-1]
    for r in rows:
        x, y = r.get("latency_s"), r.get("tokens_per_s_per_chip")
        if is_known(x) and is_known(y):
            ax.loglog(x * 1e3, y, "o")
            ax.annotate(r["arch"], (x * 1e3, y), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")  # fmt: skip
    ax.set_xlabel("latency per token (ms)")
    ax.set_ylabel("tokens/s per chip")
    ax.grid(True, which="both", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = _save(fig, out)
    plt.close(fig)
    return path
