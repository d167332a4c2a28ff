"""What a serving run reports: TTFT, TPOT and end-to-end latency percentiles, throughput,
SLO attainment and goodput, and the per-request table."""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np

from archsim.serve.sim import Job

PERCENTILES = (50, 90, 99)
CSV_COLUMNS = (
    "id", "arrival_s", "prompt_tokens", "output_tokens", "conversation_id", "prefix_id",
    "first_token_s", "finish_s", "ttft_s", "tpot_s", "e2e_s", "preemptions",
    "max_itl_s", "reused_tokens", "reuse_tier", "reload_s", "handoff_s", "instance",
    "decode_instance",
    "meets_slo",
)  # fmt: skip


def tpot(job: Job) -> float | None:
    """Mean time between output tokens after the first (None for a one-token answer)."""
    if job.req.output <= 1:
        return None
    return (job.finish - job.first_token) / (job.req.output - 1)


def meets_slo(job: Job, slo_ttft: float | None, slo_tpot: float | None) -> bool:
    ok = slo_ttft is None or job.first_token - job.req.arrival_s <= slo_ttft
    t = tpot(job)
    return ok and (slo_tpot is None or t is None or t <= slo_tpot)


def distribution(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    a = np.asarray(values, dtype=np.float64)
    out = {"mean": float(a.mean())}
    out.update({f"p{p}": float(np.percentile(a, p)) for p in PERCENTILES})
    return out


def summarize(jobs: list[Job], slo_ttft: float | None, slo_tpot: float | None) -> dict[str, Any]:
    """Latency distributions and rates over the whole run (first arrival to last finish)."""
    jobs = sorted(jobs, key=lambda j: j.req.id)
    start = min(j.req.arrival_s for j in jobs)
    duration = max(j.finish for j in jobs) - start
    out_tokens = sum(j.req.output for j in jobs)
    in_tokens = sum(j.req.prompt for j in jobs)
    met = sum(meets_slo(j, slo_ttft, slo_tpot) for j in jobs)
    return {
        "requests": len(jobs),
        "duration_s": duration,
        "ttft_s": distribution([j.first_token - j.req.arrival_s for j in jobs]),
        "tpot_s": distribution([t for j in jobs if (t := tpot(j)) is not None]),
        "e2e_s": distribution([j.finish - j.req.arrival_s for j in jobs]),
        "max_itl_s": distribution([j.max_gap for j in jobs if j.req.output > 1]),
        "throughput": {
            "requests_per_s": len(jobs) / duration if duration > 0 else None,
            "output_tokens_per_s": out_tokens / duration if duration > 0 else None,
            "total_tokens_per_s": (in_tokens + out_tokens) / duration if duration > 0 else None,
        },
        "slo": {
            "ttft_s": slo_ttft,
            "tpot_s": slo_tpot,
            "attainment": met / len(jobs),
            "goodput_rps": met / duration if duration > 0 else None,
        },
        "preemptions": sum(j.preemptions for j in jobs),
    }


def request_rows(jobs: list[Job], slo_ttft: float | None, slo_tpot: float | None):
    for j in sorted(jobs, key=lambda j: j.req.id):
        r = j.req
        yield {
            "id": r.id,
            "arrival_s": r.arrival_s,
            "prompt_tokens": r.prompt,
            "output_tokens": r.output,
            "conversation_id": r.conversation or "",
            "prefix_id": r.prefix or "",
            "first_token_s": j.first_token,
            "finish_s": j.finish,
            "ttft_s": j.first_token - r.arrival_s,
            "tpot_s": "" if tpot(j) is None else tpot(j),
            "e2e_s": j.finish - r.arrival_s,
            "preemptions": j.preemptions,
            "max_itl_s": j.max_gap,
            "reused_tokens": j.reused,
            "reuse_tier": j.reuse_tier or "",
            "reload_s": j.reload_s,
            "handoff_s": j.handoff_s,
            "instance": j.instance,
            "decode_instance": j.decode_instance,
            "meets_slo": int(meets_slo(j, slo_ttft, slo_tpot)),
        }


def requests_csv(jobs: list[Job], slo_ttft: float | None, slo_tpot: float | None) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in request_rows(jobs, slo_ttft, slo_tpot):
        w.writerow(row)
    return buf.getvalue()
