"""Event engine, one feature per test, on streams of a few instructions whose cycles are
counted by hand in each docstring: in-order units, END_START and START_START dependencies
with lags, pipelined units, flows sharing resources max-min fairly, static-schedule
verification (blocked at t-1, allowed at t), and JIT / no-JIT equivalence."""

from __future__ import annotations

import os

import numpy as np
import pytest

from archsim.core.engine import simulate_stream
from archsim.core.errors import ScheduleError
from archsim.core.isa import COLUMNS, END_START, START_START, InstructionStream, Timing

pytestmark = pytest.mark.cycle_exact


def timing(stream, work, latency=None, interval=None, bw=None) -> Timing:
    """Timing from lists; ``bw`` maps resource name -> bytes per cycle."""
    n = len(stream)
    bw = bw or {}
    return Timing(
        work=np.asarray(work, dtype=np.int64),
        latency=np.zeros(n, np.int64) if latency is None else np.asarray(latency, np.int64),
        interval=np.full(n, -1, np.int64) if interval is None else np.asarray(interval, np.int64),
        resource_bw=np.array([bw[r] for r in stream.resource_names], dtype=np.float64),
    )


def _in_order(builder, issue=(-1, -1, -1)):
    """i0 on B (10 cycles); i1 on A waits for i0; i2 on A has no producer but A is in-order:
    i0 [0,10); i1 [10,14); i2 [14,15), not [0,1)."""
    builder.add("work", unit="B", op="i0", issue=issue[0])
    builder.add("work", unit="A", op="i1", deps=[0], issue=issue[1])
    builder.add("work", unit="A", op="i2", issue=issue[2])
    s = builder.build()
    return s, timing(s, [10, 4, 1])


def test_unit_is_in_order(builder):
    """A later instruction without producers does not overtake its unit's queue."""
    s, t = _in_order(builder)
    tl = simulate_stream(s, t)
    assert list(tl.start) == [0, 10, 14]
    assert list(tl.end) == [10, 14, 15]
    assert list(tl.release) == [10, 14, 15]
    assert list(tl.busy) == [10, 4 + 1]  # units in order of first use: B, A
    assert tl.unit_names == ["B", "A"]
    assert tl.cycles == 15


def test_end_start_lag(builder):
    """i0: work 5, latency 2 -> result at 7; i1 waits for it + lag 3 -> starts 10, work 4
    -> ends 14. i0 holds its unit until its result (interval -1): release 7."""
    builder.add("work", unit="A", op="i0")
    builder.add("work", unit="B", op="i1", lagged=[(0, END_START, 3)])
    s = builder.build()
    tl = simulate_stream(s, timing(s, [5, 4], latency=[2, 0]))
    assert list(tl.start) == [0, 10]
    assert list(tl.end) == [7, 14]
    assert list(tl.release) == [7, 14]


def test_start_start_lag_overlaps_and_holds_end(builder):
    """Streaming consumers: i0 on A, work 20 -> [0,20). i1 on B starts 4 cycles after i0
    starts (lag 4); its own work would end at 4+3=7 but its result waits for i0's + 4 = 24,
    and it holds B until then (interval -1), so i3 (B, work 1) starts at 24.
    i2 on C, lag 2, work 30: its own end 32 is later than 20+2=22, so it ends at 32."""
    builder.add("work", unit="A", op="i0")
    builder.add("work", unit="B", op="i1", lagged=[(0, START_START, 4)])
    builder.add("work", unit="C", op="i2", lagged=[(0, START_START, 2)])
    builder.add("work", unit="B", op="i3")
    s = builder.build()
    tl = simulate_stream(s, timing(s, [20, 3, 30, 1]))
    assert list(tl.start) == [0, 4, 2, 24]
    assert list(tl.end) == [20, 24, 32, 25]
    assert list(tl.busy) == [20, (24 - 4) + 1, 30]


def test_start_start_end_waits_for_a_flow_producer(builder):
    """i0 moves 1000 B at 10 B/cycle -> ends at 100 (known only when simulated time gets
    there); i1 streams from it (START_START, lag 0), work 5: starts 0, own end 5, but its
    result is ready only at 100."""
    builder.add("move", unit="A", op="i0", resources={"hbm": 1000.0})
    builder.add("work", unit="B", op="i1", lagged=[(0, START_START, 0)])
    s = builder.build()
    tl = simulate_stream(s, timing(s, [0, 5], bw={"hbm": 10.0}))
    assert list(tl.start) == [0, 0]
    assert list(tl.end) == [100, 100]


def test_pipelined_unit_interval(builder):
    """A pipelined unit: work 10 + latency 5 in flight, but a new instruction every
    interval=2 cycles. i0 [0,15) releases A at 2; i1 starts 2 -> ends 17, releases 4;
    i2 (interval -1, work 3) starts 4, ends and releases at 7. busy A = 2 + 2 + 3."""
    for i in range(3):
        builder.add("work", unit="A", op=f"i{i}")
    s = builder.build()
    tl = simulate_stream(s, timing(s, [10, 10, 3], latency=[5, 5, 0], interval=[2, 2, -1]))
    assert list(tl.start) == [0, 2, 4]
    assert list(tl.end) == [15, 17, 7]
    assert list(tl.release) == [2, 4, 7]
    assert list(tl.busy) == [7]


def test_two_flows_share_a_resource(builder):
    """2 x 1000 B on one 10 B/cycle resource, started together: 5 B/cycle each, both end
    at 200 (alone, one would take 100). The resource is busy 200 cycles, 2000 B moved."""
    builder.add("move", unit="A", op="f0", resources={"hbm": 1000.0})
    builder.add("move", unit="B", op="f1", resources={"hbm": 1000.0})
    s = builder.build()
    tl = simulate_stream(s, timing(s, [0, 0], bw={"hbm": 10.0}))
    assert list(tl.start) == [0, 0]
    assert list(tl.end) == [200, 200]
    assert list(tl.resource_busy) == [200]
    assert list(tl.resource_bytes) == [2000.0]


def test_rates_recomputed_at_start_and_finish(builder):
    """f0 (1000 B) alone at 10 B/cycle over [0,50): 500 B left. f1 (1000 B) starts at 50
    after w (work 50): 5 B/cycle each; f0's 500 B take 100 more -> f0 ends 150, by then f1
    has 500 B left, alone again at 10 B/cycle -> 50 more -> f1 ends 200."""
    builder.add("move", unit="A", op="f0", resources={"hbm": 1000.0})
    builder.add("work", unit="B", op="w")
    builder.add("move", unit="B", op="f1", resources={"hbm": 1000.0})
    s = builder.build()
    tl = simulate_stream(s, timing(s, [0, 50, 0], bw={"hbm": 10.0}))
    assert list(tl.start) == [0, 0, 50]
    assert list(tl.end) == [150, 50, 200]
    assert list(tl.resource_busy) == [200]


def test_resource_busy_counts_only_active_cycles(builder):
    """f0 (1000 B, 10 B/cycle) is active [0,100); f1 (500 B) starts at 150 after w:
    active [150,200). The resource is busy 100 + 50 cycles, idle over [100,150)."""
    builder.add("move", unit="A", op="f0", resources={"hbm": 1000.0})
    builder.add("work", unit="B", op="w")
    builder.add("move", unit="B", op="f1", resources={"hbm": 500.0})
    s = builder.build()
    tl = simulate_stream(s, timing(s, [0, 150, 0], bw={"hbm": 10.0}))
    assert list(tl.end) == [100, 150, 200]
    assert list(tl.resource_busy) == [150]


def test_max_min_fairness_with_a_capped_flow(builder):
    """f0 moves 300 B with work 100: capped at 3 B/cycle. f1 moves 1400 B uncapped. On
    10 B/cycle, max-min gives f0 3 and f1 the other 7 (an equal split would give 5 each).
    f0 ends 300/3 = 100; f1 has moved 700 by then, 700 left at 10 -> ends 170."""
    builder.add("move", unit="A", op="f0", resources={"hbm": 300.0})
    builder.add("move", unit="B", op="f1", resources={"hbm": 1400.0})
    s = builder.build()
    tl = simulate_stream(s, timing(s, [100, 0], bw={"hbm": 10.0}))
    assert list(tl.end) == [100, 170]


def test_flow_over_two_resources(builder):
    """f0 moves 1000 B over hbm (20 B/cycle) and 400 B over link (2 B/cycle); f1 moves
    1000 B over hbm. Per unit of f0's progress (1 B of its 1000), it uses 0.4 B of link:
    link saturates at progress 2/0.4 = 5 B/cycle, hbm (both rising) at 20/2 = 10, so f0 is
    frozen at 5 by the link and f1 takes the other 15 of hbm: 1000/15 = 66.7 -> ends at 67
    (whole cycles). f0 stays link-bound: 1000/5 -> ends 200. Bytes: hbm 2000, link 400."""
    builder.add("move", unit="A", op="f0", resources={"hbm": 1000.0, "link": 400.0})
    builder.add("move", unit="B", op="f1", resources={"hbm": 1000.0})
    s = builder.build()
    tl = simulate_stream(s, timing(s, [0, 0], bw={"hbm": 20.0, "link": 2.0}))
    assert list(tl.end) == [200, 67]
    assert s.resource_names == ["hbm", "link"]
    assert list(tl.resource_busy) == [200, 200]
    assert list(tl.resource_bytes) == [2000.0, 400.0]


def test_work_bound_and_resource_bound_alone(builder):
    """Alone, a flow takes ceil(max(work, bytes / bw)): f0 1000 B at 10 B/cycle with work
    150 -> 150 (work-bound); f1 1000 B with work 50 -> 100 (resource-bound); f2 1001 B with
    work 0 -> ceil(100.1) = 101. Same unit, so they run back to back: ends 150, 250, 351;
    latency 2 on f2 -> result at 353."""
    for i, nbytes in enumerate((1000.0, 1000.0, 1001.0)):
        builder.add("move", unit="A", op=f"f{i}", resources={"hbm": nbytes})
    s = builder.build()
    tl = simulate_stream(s, timing(s, [150, 50, 0], latency=[0, 0, 2], bw={"hbm": 10.0}))
    assert list(tl.start) == [0, 150, 250]
    assert list(tl.end) == [150, 250, 353]


def test_flow_latency_and_pipelined_flows(builder):
    """Two flows on one pipelined unit (interval 0): both start at 0 and share 10 B/cycle
    -> both finish moving at 200; latency 7 -> results at 207. A consumer of f1 starts 207."""
    builder.add("move", unit="A", op="f0", resources={"hbm": 1000.0})
    builder.add("move", unit="A", op="f1", resources={"hbm": 1000.0})
    builder.add("work", unit="B", op="c", deps=[1])
    s = builder.build()
    tl = simulate_stream(
        s, timing(s, [0, 0, 1], latency=[7, 7, 0], interval=[0, 0, -1], bw={"hbm": 10.0})
    )
    assert list(tl.start) == [0, 0, 207]
    assert list(tl.end) == [207, 207, 208]


def test_static_schedule_allowed_at_ready_cycle(builder):
    """Issue cycles equal to the ready cycles of test_unit_is_in_order: no error, same
    times."""
    s, t = _in_order(builder, issue=(0, 10, 14))
    assert list(simulate_stream(s, t, static=True).start) == [0, 10, 14]


def test_static_schedule_blocked_one_cycle_early(builder):
    """i2 issued at 13, one cycle before A is released at 14: a compiler error."""
    s, t = _in_order(builder, issue=(0, 10, 13))
    with pytest.raises(
        ScheduleError,
        match=r"1 instruction.*#2 work of i2 on A, issued at "
        r"cycle 13 but ready at 14",
    ):
        simulate_stream(s, t, static=True)


def test_static_dependency_one_cycle_early(builder):
    """i1 issued at 9, one cycle before its producer i0 ends at 10; i2 then cannot start
    before 9 + 4 = 13 and is late as well: two late, the first is i1."""
    s, t = _in_order(builder, issue=(0, 9, 13))
    with pytest.raises(
        ScheduleError,
        match=r"2 instruction.*#1 .* issued at cycle 9 but "
        r"ready at 10",
    ):
        simulate_stream(s, t, static=True)


def test_static_issue_later_than_ready_waits(builder):
    """A static instruction issued after it is ready starts at its issue cycle; without
    static mode the issue column is ignored and it starts when ready."""
    s, t = _in_order(builder, issue=(0, 12, 20))
    assert list(simulate_stream(s, t, static=True).start) == [0, 12, 20]
    assert list(simulate_stream(s, t).start) == [0, 10, 14]


def test_static_needs_every_issue_cycle(builder):
    """Static mode with an instruction that has no issue cycle is a ScheduleError."""
    s, t = _in_order(builder, issue=(0, -1, 14))
    with pytest.raises(ScheduleError, match="1 instruction.*no issue cycle.*#1"):
        simulate_stream(s, t, static=True)


def test_deadlock_guard():
    """A (malformed) cycle of dependencies never resolves: RuntimeError, not a hang."""
    cols = {name: np.zeros(2, dtype=dtype) for name, dtype in COLUMNS.items()}
    cols["unit"] = np.array([0, 1], dtype=np.int32)
    s = InstructionStream(["work"], ["A", "B"], ["x"], cols, np.array([0, 1, 2]), np.array([1, 0]))
    with pytest.raises(RuntimeError, match="2 instruction"):
        simulate_stream(s, Timing.fixed(np.array([1, 1])))


def test_timing_is_checked(builder):
    """A timing with the wrong length is rejected before the kernel runs."""
    builder.add("work", unit="A", op="x")
    with pytest.raises(ValueError):
        simulate_stream(builder.build(), Timing.fixed(np.array([1, 2])))


_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
from tests.test_engine_reference import random_stream
from archsim.core.engine import simulate_stream
out = []
for seed in range(8):
    s, t = random_stream(np.random.default_rng(seed), 40)
    tl = simulate_stream(s, t)
    out.append([tl.start.tolist(), tl.end.tolist(), tl.release.tolist(), tl.busy.tolist(),
                tl.resource_busy.tolist(), tl.resource_bytes.tolist()])
print(json.dumps(out))
"""


def test_disable_jit_gives_identical_timeline():
    """NUMBA_DISABLE_JIT=1 (the kernel as plain Python) gives the same Timeline, number for
    number, as the jitted kernel, on random streams with flows, lags and intervals."""
    from tests.test_engine import run_with_and_without_jit

    jitted, plain = run_with_and_without_jit(_SCRIPT.format(tests=os.path.dirname(__file__)))
    assert jitted == plain
    assert any(any(x > 0 for x in run[5]) for run in jitted)  # flows were exercised
