"""The event engine against an independent reference: a cycle-stepped simulator in exact
rational arithmetic, written here from the semantics alone (no code shared with the kernel).

The reference advances one cycle at a time. At each cycle it first retires the flows whose
bytes have all moved (a remainder of at most 1e-9 of the bytes counts as moved, the
engine's float epsilon; with exact fractions it only matters for remainders that small);
then, in program order, it starts every instruction whose unit is released and whose
producers' times allow it, fixes results and unit releases; then it splits each resource's
bandwidth max-min fairly among the flows active during that cycle (progressive filling with
fractions) and moves each flow's share for the whole cycle.

A flow keeps its share until the end of the cycle in which it finishes, exactly as the
engine (whose events fall on whole cycles) keeps rates until the next event, so the two must
agree *exactly*, cycle for cycle, on every stream, not only on streams whose flows finish on
whole cycles: the test asserts equality of every start, end, release, unit busy count,
resource busy count and byte count on 50 seeded random streams with flows over one or two of
three resources, END_START and START_START dependencies with lags, latencies, and pipelined
(interval >= 0) units.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from archsim.core.engine import simulate_stream
from archsim.core.isa import START_START, InstructionStream, StreamBuilder, Timing


def random_stream(
    rng: np.random.Generator, n: int | None = None
) -> tuple[InstructionStream, Timing]:
    """A small random stream on units A, B, C and resources hbm, link, noc: 60% of the
    instructions are flows over one or two resources (1-599 B each), a quarter of earlier
    instructions are producers (END_START or START_START, lag 0-5), half the instructions
    are pipelined (interval 0..work+latency)."""
    b = StreamBuilder(["work", "move"])
    n = n or int(rng.integers(3, 16))
    work, latency, interval = [], [], []
    for i in range(n):
        uses = {}
        if rng.random() < 0.6:
            names = rng.choice(["hbm", "link", "noc"], size=int(rng.integers(1, 3)), replace=False)
            uses = {str(r): float(rng.integers(1, 600)) for r in names}
        lagged = [
            (j, int(rng.integers(0, 2)), int(rng.integers(0, 6)) if rng.random() < 0.5 else 0)
            for j in range(i)
            if rng.random() < 0.25
        ]
        unit = str(rng.choice(["A", "B", "C"]))
        b.add("move" if uses else "work", unit=unit, op=f"i{i}", lagged=lagged, resources=uses)
        w = int(rng.integers(0, 40)) if rng.random() < 0.8 else 0
        lat = int(rng.integers(0, 6))
        work.append(w)
        latency.append(lat)
        interval.append(-1 if rng.random() < 0.5 else int(rng.integers(0, w + lat + 1)))
    s = b.build()
    base = {"hbm": 10.0, "link": 4.0, "noc": 25.0}  # bytes/cycle, scaled by 1-3 below
    bw = [base[r] * float(rng.integers(1, 4)) for r in s.resource_names]
    t = Timing(
        np.array(work, np.int64),
        np.array(latency, np.int64),
        np.array(interval, np.int64),
        np.array(bw, np.float64),
    )
    return s, t


def max_min_fair(flows, uses, caps, bw) -> dict[int, Fraction]:
    """Progressive filling, exactly: raise every unfrozen flow's progress rate together to
    the lowest level at which a flow reaches its cap or a resource fills; freeze those; repeat.
    uses[f]: [(resource, bytes on it per byte of progress)]; caps[f]: Fraction or None."""
    rate: dict[int, Fraction] = {}
    unfrozen = list(flows)
    while unfrozen:
        weight: dict[int, Fraction] = {}
        load: dict[int, Fraction] = {}
        for f in flows:
            for r, a in uses[f]:
                if f in rate:
                    load[r] = load.get(r, 0) + rate[f] * a
                else:
                    weight[r] = weight.get(r, 0) + a
        fill = {r: (bw[r] - load.get(r, 0)) / w for r, w in weight.items()}
        level = min([caps[f] for f in unfrozen if caps[f] is not None] + list(fill.values()))
        full = {r for r, x in fill.items() if x == level}
        still = []
        for f in unfrozen:
            if caps[f] == level or any(r in full for r, _ in uses[f]):
                rate[f] = level
            else:
                still.append(f)
        unfrozen = still
    return rate


def reference(stream: InstructionStream, timing: Timing) -> dict[str, list]:
    """Cycle-stepped simulation (see the module docstring)."""
    n = len(stream)
    unit = [int(u) for u in stream.unit]
    deps = [stream.deps_of(i) for i in range(n)]
    work, lat, iv = (list(map(int, a)) for a in (timing.work, timing.latency, timing.interval))
    bw = [Fraction(float(x)) for x in timing.resource_bw]
    uses, total, caps = [], [], []
    for i in range(n):
        mine = [
            (stream.resource_names.index(r), Fraction(x)) for r, x in stream.resources_of(i).items()
        ]
        m = max((x for _, x in mine), default=Fraction(0))
        total.append(m)
        uses.append([(r, x / m) for r, x in mine] if m > 0 else [])
        caps.append(m / work[i] if m > 0 and work[i] > 0 else None)
    prev, last = [-1] * n, {}
    for i in range(n):
        prev[i] = last.get(unit[i], -1)
        last[unit[i]] = i

    start, end, release, own_end = [None] * n, [None] * n, [None] * n, [None] * n
    left: dict[int, Fraction] = {}  # active flow -> bytes of progress still to move
    rate: dict[int, Fraction] = {}
    resource_busy = [0] * len(bw)
    resource_bytes = [Fraction(0)] * len(bw)
    t = 0
    while None in end or None in release:
        changed = False
        for f in sorted(left):
            if left[f] <= total[f] / 10**9:
                del left[f]
                own_end[f] = t + lat[f]
                changed = True
        for i in range(n):
            if start[i] is None:
                ok = prev[i] < 0 or (release[prev[i]] is not None and release[prev[i]] <= t)
                for j, kind, lag in deps[i]:
                    at = start[j] if kind == START_START else end[j]
                    ok = ok and at is not None and at + lag <= t
                if ok:
                    start[i] = t
                    if total[i] > 0:
                        left[i] = total[i]
                        changed = True
                        for r, a in uses[i]:
                            resource_bytes[r] += a * total[i]
                    else:
                        own_end[i] = t + work[i] + lat[i]
            if start[i] is not None and end[i] is None and own_end[i] is not None:
                held = [(end[j], lag) for j, kind, lag in deps[i] if kind == START_START]
                if all(e is not None for e, _ in held):
                    end[i] = max([own_end[i]] + [e + lag for e, lag in held])
            if release[i] is None and start[i] is not None:
                if iv[i] >= 0:
                    release[i] = start[i] + iv[i]
                elif end[i] is not None:
                    release[i] = end[i]
        if changed:
            rate = max_min_fair(sorted(left), uses, caps, bw)
        for r in {r for f in left for r, _ in uses[f]}:
            resource_busy[r] += 1
        for f in left:
            left[f] -= rate[f]
        t += 1
        assert t < 100_000, "reference did not finish"
    busy = [0] * len(stream.unit_names)
    for i in range(n):
        busy[unit[i]] += release[i] - start[i]
    return {
        "start": start,
        "end": end,
        "release": release,
        "busy": busy,
        "resource_busy": resource_busy,
        "resource_bytes": [float(x) for x in resource_bytes],
    }


def test_reference_hand_count(builder):
    """The reference itself on the hand-counted case of test_engine_v2: f0 alone at 10 B/cycle
    for 50 cycles, then 5 B/cycle shared with f1 -> ends 150; f1 ends 200."""
    builder.add("move", unit="A", op="f0", resources={"hbm": 1000.0})
    builder.add("work", unit="B", op="w")
    builder.add("move", unit="B", op="f1", resources={"hbm": 1000.0})
    s = builder.build()
    t = Timing(np.array([0, 50, 0]), np.zeros(3, np.int64), np.full(3, -1), np.array([10.0]))
    ref = reference(s, t)
    assert ref["end"] == [150, 50, 200]
    assert ref["resource_busy"] == [200]


@pytest.mark.parametrize("seed", range(50))
def test_engine_matches_reference(seed):
    """Engine == cycle-stepped exact reference on a seeded random stream (see module doc)."""
    s, t = random_stream(np.random.default_rng(seed))
    tl = simulate_stream(s, t)
    ref = reference(s, t)
    got = {
        "start": tl.start.tolist(),
        "end": tl.end.tolist(),
        "release": tl.release.tolist(),
        "busy": tl.busy.tolist(),
        "resource_busy": tl.resource_busy.tolist(),
        "resource_bytes": tl.resource_bytes.tolist(),
    }
    assert got == ref
