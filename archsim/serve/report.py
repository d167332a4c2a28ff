"""Tables (rich) for ``archsim serve`` and ``archsim kv-tiers``; printed to stdout."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table

from archsim.report import _si, _time


def _pct(d: dict[str, Any]) -> list[str]:
    return [_time(d.get(k)) for k in ("p50", "p90", "p99", "mean")]


def _latency_table(title: str, rows: list[tuple[str, dict[str, Any]]]) -> Table:
    t = Table(title=title)
    t.add_column("")
    for col in ("p50", "p90", "p99", "mean"):
        t.add_column(col, justify="right")
    for name, d in rows:
        t.add_row(name, *_pct(d))
    return t


def serve_table(r: dict[str, Any]) -> None:
    console = Console()
    dep = r["deployment"]
    if "prefill" in dep:
        where = " + ".join(
            f"{role} {d['instances']} x {d['arch']} ({d['chips']} chips)" for role, d in dep.items()
        )
    else:
        where = f"{dep['instances']} x {dep['arch']} ({dep['chips']} chips)"
    console.print(
        f"archsim serve · {r['model']} on {where} · {r['requests']:,} requests over "
        f"{r['duration_s']:.1f} s · policy {r['policy']}"
    )
    console.print(_latency_table("latency", [("TTFT", r["ttft_s"]), ("TPOT", r["tpot_s"]),
                                              ("end to end", r["e2e_s"])]))  # fmt: skip
    t = Table(show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    th, slo, kv = r["throughput"], r["slo"], r["kv"]
    rows = [
        ("throughput", f"{th['requests_per_s']:.3f} req/s, {th['output_tokens_per_s']:,.1f} "
                       f"output tok/s, {th['total_tokens_per_s']:,.1f} tok/s in + out"),
        ("KV cache", f"{kv['dtype']}, x{kv['compression']:g} compression: "
                     f"{_si(kv['bytes_per_token'], 'B')} per token, "
                     f"{kv['capacity_tokens']:,} tokens ({_si(kv['capacity_bytes'], 'B')}), "
                     f"admissible batch {kv['admissible_batch']}, "
                     f"peak use {100 * kv['peak_used_fraction']:.1f} %"),
        ("preemptions", f"{r['preemptions']:,}" + (f" ({kv['swaps']:,} swapped)"
                                                    if kv["swaps"] else "")),
    ]  # fmt: skip
    if slo["ttft_s"] is not None or slo["tpot_s"] is not None:
        target = ", ".join(f"{k} <= {_time(slo[k + '_s'])}" for k in ("ttft", "tpot")
                           if slo[k + "_s"] is not None)  # fmt: skip
        rows.append(("SLO", f"{target}: {100 * slo['attainment']:.1f} % met, goodput "
                            f"{slo['goodput_rps']:.3f} req/s"))  # fmt: skip
    if "max_rate_rps" in r:
        rows.append(("max rate meeting SLO", f"{r['max_rate_rps']:.3f} req/s "
                     f"({100 * r['attainment_target']:.0f} % of requests)"))  # fmt: skip
    sm = r["step_model"]
    model = (f"{sm['simulations']} simulations ({sm['simulation_s']:.2f} s), "
             f"{sm['events']:,} events, {sm['wall_s']:.2f} s in all")  # fmt: skip
    rows.append(("step model", model))
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    if "reuse" in r:
        _reuse_table(console, r["reuse"])
    if "speculation" in r:
        s = r["speculation"]
        line = (f"speculation: draft {s['draft']}, k {s['k']}, acceptance {s['accept']:g} -> "
                f"{s['tokens_per_step']:.2f} tokens per step")  # fmt: skip
        if s.get("speedup_tpot") is not None:
            line += (
                f"; TPOT {_time(s['tpot_without_s']['mean'])} -> "
                f"{_time(r['tpot_s']['mean'])} (x{s['speedup_tpot']:.2f})"
            )
        console.print(line)
    if "disaggregation" in r:
        d = r["disaggregation"]
        console.print(f"KV hand-off over {d['link']} ({_si(d['link_bytes_per_s'], 'B/s')}): "
                      f"{_si(d['handoff_bytes'], 'B')} moved, "
                      f"{_time(d['handoff_s']['mean'])} per request on average")  # fmt: skip
        if "colocated" in d:
            c = d["colocated"]
            console.print(_latency_table(
                f"colocated on {c['instances']} x {c['arch']} ({c['chips']} chips)",
                [("TTFT", c["ttft_s"]), ("TPOT", c["tpot_s"]), ("end to end", c["e2e_s"])],
            ))  # fmt: skip


def _reuse_table(console: Console, u: dict[str, Any]) -> None:
    t = Table(title=f"KV reuse: {u['reused_tokens']:,} of {u['prompt_tokens']:,} prompt tokens "
                    f"({u['eligible_requests']:,} requests could reuse)")  # fmt: skip
    for col in ("tier", "hit rate", "tokens", "reloads", "recomputed", "read", "written"):
        t.add_column(col, justify="right" if col != "tier" else "left")
    for name, s in u["tiers"].items():
        t.add_row(
            name,
            f"{100 * s['hit_rate']:.1f} %",
            f"{s['hit_tokens']:,}",
            f"{s['loads']:,}",
            f"{s['recomputed']:,}",
            _si(s["bytes_read"], "B"),
            _si(s["bytes_written"], "B"),
        )
    console.print(t)
    if "ttft_without_reuse_s" in u:
        console.print(
            _latency_table(
                "TTFT with and without reuse",
                [("with reuse", u["ttft_with_reuse_s"]), ("without", u["ttft_without_reuse_s"])],
            )
        )


def _drain(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "- (unbounded)"
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return _time(s)


def tiers_table(name: str, rows: list[dict[str, Any]], links: dict[str, Any]) -> None:
    console = Console()
    t = Table(title=f"KV-cache tiers: {name} (drain = capacity / bandwidth of the path)")
    for col in ("tier", "capacity", "bandwidth", "latency", "link", "drain time"):
        t.add_column(col, justify="left" if col in ("tier", "link") else "right")
    for r in rows:
        cap = r["capacity_bytes"]
        t.add_row(r["tier"], _si(cap, "B") if math.isfinite(cap) else "unbounded",
                  _si(r["bandwidth_bytes_per_s"], "B/s"), _time(r["latency_s"]), r["link"],
                  _drain(r["drain_s"]))  # fmt: skip
    console.print(t)
    lt = Table(title="links")
    for col in ("link", "bandwidth", "latency"):
        lt.add_column(col)
    for lname, link in links.items():
        lt.add_row(lname, _si(link["bandwidth_bytes_per_s"], "B/s"), _time(link["latency_s"]))
    console.print(lt)
