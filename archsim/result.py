"""Result: what one simulated step reports, as a table, a dict/JSON and an HDF5 trace."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np


@cache
def git_revision() -> str:
    """The archsim source revision, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


@dataclass
class Result:
    """One step of one model on one machine: every sequence of the batch advances (decode) or
    its prompt is processed (prefill). ``seconds`` is one sequence's latency through the step;
    byte and FLOP totals cover the whole batch on all chips; bandwidths and utilisations are
    per chip at load (for a pipelined machine the steps overlap: tokens_per_s is the batch
    over the period between steps)."""

    arch: str
    family: str
    model: str
    phase: str
    batch: int
    seq: int
    ctx: int
    precision: str
    layers: str  # "all" or the number of decoder layers simulated
    chips: int
    tp: int
    pp: int
    cycles: int
    clock_hz: float
    seconds: float
    tokens_per_s: float  # whole system
    tokens_per_s_per_user: float
    ttft_s: float | None
    tpot_s: float | None
    flops: float
    weight_bytes: float  # resident weights, all chips
    kv_bytes: float  # resident KV cache, all chips
    bytes_by_tier: dict[str, float]  # moved this step, all chips
    bandwidth_by_tier: dict[str, float]  # achieved per chip, B/s
    utilization: dict[str, float]
    bound: str  # what limits the step: compute | memory | communication | overhead
    time_by_bound: dict[str, float]  # seconds of the critical stream in each class
    time_by_op_kind: dict[str, float]
    bound_by_op_kind: dict[str, str]  # what limits each op kind on the critical path
    extra: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    # not serialised: the stream, its timeline and each op's role, for traces and plots
    stream: Any = field(default=None, repr=False)
    timing: Any = field(default=None, repr=False)
    timeline: Any = field(default=None, repr=False)
    op_roles: dict[str, str] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        hidden = ("stream", "timing", "timeline", "op_roles")
        out = {k: v for k, v in self.__dict__.items() if k not in hidden}
        return _plain(out)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return x
