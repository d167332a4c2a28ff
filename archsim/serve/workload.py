"""Requests for the serving simulation: synthetic arrivals (Poisson, bursty gamma) with
prompt/output length distributions, shared prefixes and multi-turn conversations, or a
trace file (JSON lines or CSV).

A request's ``prompt`` counts every prompt token, history and shared prefix included
(as a chat template sends them); ``prefix``/``prefix_tokens`` name a shared leading part
(a system prompt) whose KV another request may already have computed, and
``conversation`` names the conversation whose previous turn's context (its prompt and
output) leads this prompt. Deterministic: the same seed gives the same requests.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from archsim.core.errors import ArchsimError

TRACE_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")
OPTIONAL_COLUMNS = ("conversation_id", "prefix_id", "prefix_tokens")


@dataclass(frozen=True)
class Request:
    """One request as it arrives: when, how long its prompt and its answer are."""

    id: int
    arrival_s: float
    prompt: int  # prompt tokens, history and shared prefix included
    output: int  # tokens to generate (the first comes from the prefill)
    conversation: str | None = None
    prefix: str | None = None  # shared-prefix id (e.g. one system prompt)
    prefix_tokens: int = 0  # leading prompt tokens that prefix covers


@dataclass(frozen=True)
class Lengths:
    """A token-count distribution: ``N`` (fixed), ``A:B`` (uniform integers, both ends
    included) or ``exp:MEAN`` (exponential, at least 1)."""

    kind: str
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, text: str | int, what: str) -> Lengths:
        s = str(text).strip().lower()
        try:
            if s.startswith("exp:"):
                mean = float(s[4:])
                if not (math.isfinite(mean) and mean >= 1):
                    raise ValueError
                return cls("exp", mean)
            if ":" in s:
                lo, hi = (int(x) for x in s.split(":", 1))
                if not 1 <= lo <= hi:
                    raise ValueError
                return cls("uniform", lo, hi)
            n = int(s)
            if n < 1:
                raise ValueError
            return cls("fixed", n)
        except ValueError:
            raise ArchsimError(
                f"{what} must be N, A:B (uniform, 1 <= A <= B) or exp:MEAN (MEAN >= 1), "
                f"got {text!r}"
            ) from None

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            return np.full(n, int(self.a), dtype=np.int64)
        if self.kind == "uniform":
            return rng.integers(int(self.a), int(self.b) + 1, n)
        return np.maximum(1, np.rint(rng.exponential(self.a, n))).astype(np.int64)

    @property
    def mean(self) -> float:
        return (self.a + self.b) / 2 if self.kind == "uniform" else self.a

    @property
    def max(self) -> float:
        """The largest value (exp: its 99.9th percentile)."""
        if self.kind == "uniform":
            return self.b
        return self.a if self.kind == "fixed" else math.ceil(self.a * math.log(1000))


def arrival_times(
    rng: np.random.Generator, n: int, rate: float, process: str, cv: float
) -> np.ndarray:
    """``n`` arrival times at ``rate`` per second. poisson: exponential gaps; gamma: gaps
    with coefficient of variation ``cv`` (cv > 1 is burstier than Poisson, shape 1/cv^2,
    as Vidur and DistServe generate bursts); uniform: evenly spaced."""
    if not (math.isfinite(rate) and rate > 0):
        raise ArchsimError(f"--rate must be a positive number of requests per second, got {rate}")
    if process == "poisson":
        gaps = rng.exponential(1.0 / rate, n)
    elif process == "gamma":
        if not (math.isfinite(cv) and cv > 0):
            raise ArchsimError(f"--cv must be positive, got {cv}")
        shape = 1.0 / cv**2
        gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
    elif process == "uniform":
        gaps = np.full(n, 1.0 / rate)
    else:
        raise ArchsimError(f"unknown arrival process {process!r} (poisson, gamma, uniform)")
    return np.cumsum(gaps) - gaps[0]  # the first request arrives at t = 0


def synthetic(
    n: int,
    rate: float,
    prompt: Lengths,
    output: Lengths,
    *,
    process: str = "poisson",
    cv: float = 1.0,
    seed: int = 0,
    prefix_tokens: int = 0,
    prefix_groups: int = 1,
    turns: int = 1,
    think_s: float = 0.0,
) -> list[Request]:
    """``n`` requests. ``prefix_tokens`` > 0: each prompt starts with one of
    ``prefix_groups`` shared prefixes of that length (added to its sampled length).
    ``turns`` > 1: requests form conversations of that many turns; turn j+1 arrives a
    mean ``think_s`` (exponential) after turn j's arrival and its prompt is turn j's
    context (prompt + output) plus a freshly sampled user message; conversations start at
    the arrival process's times."""
    if n < 1:
        raise ArchsimError(f"--requests must be at least 1, got {n}")
    if turns < 1 or prefix_groups < 1 or prefix_tokens < 0 or think_s < 0:
        raise ArchsimError("--turns and --prefix-groups must be >= 1, --prefix-tokens and "
                           "--think-s >= 0")  # fmt: skip
    rng = np.random.default_rng(seed)
    n_conv = math.ceil(n / turns)
    starts = arrival_times(rng, n_conv, rate / turns, process, cv)
    user = prompt.sample(rng, n)
    outs = output.sample(rng, n)
    groups = rng.integers(0, prefix_groups, n_conv)
    gaps = rng.exponential(think_s, n) if think_s > 0 else np.zeros(n)
    rows: list[tuple[float, int, int, str | None, str | None, int]] = []
    k = 0
    for c in range(n_conv):
        t, context = float(starts[c]), 0
        pid = f"p{groups[c]}" if prefix_tokens else None
        for j in range(turns):
            if k == n:
                break
            p = context + int(user[k]) + (prefix_tokens if j == 0 else 0)
            conv = f"c{c}" if turns > 1 else None
            rows.append((t, p, int(outs[k]), conv, pid, prefix_tokens if pid else 0))
            context = p + int(outs[k])
            t += float(gaps[k])
            k += 1
    rows.sort(key=lambda r: r[0])
    return [Request(i, *r) for i, r in enumerate(rows)]


def load_trace(path: str | Path) -> list[Request]:
    """Requests from a JSON-lines or CSV file with columns ``arrival_s``, ``prompt_tokens``,
    ``output_tokens`` and optionally ``conversation_id``, ``prefix_id``, ``prefix_tokens``
    (rows sorted by arrival here)."""
    path = Path(path)
    if not path.is_file():
        raise ArchsimError(f"trace {path} not found")
    text = path.read_text()
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((i, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise ArchsimError(f"trace {path} line {i}: not JSON ({exc.msg})") from None
    elif path.suffix.lower() == ".csv":
        rows = [(i, r) for i, r in enumerate(csv.DictReader(text.splitlines()), 2)]
    else:
        raise ArchsimError(f"trace {path}: expected a .jsonl or .csv file")
    reqs = [_trace_row(path, i, r) for i, r in rows]
    if not reqs:
        raise ArchsimError(f"trace {path} has no requests")
    reqs.sort(key=lambda r: (r[0], r[1]))
    return [Request(k, *r[0:1], *r[2:]) for k, r in enumerate(reqs)]


def _trace_row(path: Path, line: int, row: dict) -> tuple:
    if not isinstance(row, dict):
        raise ArchsimError(f"trace {path} line {line}: expected an object with named columns")
    missing = [c for c in TRACE_COLUMNS if row.get(c) in (None, "")]
    if missing:
        raise ArchsimError(f"trace {path} line {line}: missing {', '.join(missing)}")
    try:
        t = float(row["arrival_s"])
        p, o = int(row["prompt_tokens"]), int(row["output_tokens"])
        ptok = int(row.get("prefix_tokens") or 0)
    except (TypeError, ValueError):
        raise ArchsimError(f"trace {path} line {line}: arrival_s, prompt_tokens, output_tokens "
                           "and prefix_tokens must be numbers") from None  # fmt: skip
    if not (math.isfinite(t) and t >= 0) or p < 1 or o < 1 or not 0 <= ptok <= p:
        raise ArchsimError(f"trace {path} line {line}: need arrival_s >= 0, prompt_tokens and "
                           "output_tokens >= 1, 0 <= prefix_tokens <= prompt_tokens")  # fmt: skip
    conv = row.get("conversation_id")
    pid = row.get("prefix_id")
    conv = None if conv in (None, "") else str(conv)
    pid = None if pid in (None, "") else str(pid)
    if pid is not None and ptok == 0:
        raise ArchsimError(f"trace {path} line {line}: prefix_id needs prefix_tokens > 0")
    return (t, line, p, o, conv, pid, ptok if pid else 0)
