"""The independent static-schedule checker (archsim.core.engine.check) and the generic list
scheduler (archsim.compiler.schedule): hazards counted by hand, issue cycles counted by hand,
and on random streams: a list schedule has no hazard and no late instruction in the engine,
and moving a scheduled instruction one cycle earlier is caught."""

from __future__ import annotations

import numpy as np
import pytest

from archsim.compiler.schedule import list_schedule
from archsim.core.engine import simulate_stream
from archsim.core.engine.check import Hazard, check_schedule, find_hazards
from archsim.core.errors import ScheduleError
from archsim.core.isa import START_START, Timing
from tests.test_engine_reference import random_stream


def timing(stream, work, latency=None, interval=None, bw=None) -> Timing:
    n = len(stream)
    bw = bw or {}
    return Timing(
        work=np.asarray(work, dtype=np.int64),
        latency=np.zeros(n, np.int64) if latency is None else np.asarray(latency, np.int64),
        interval=np.full(n, -1, np.int64) if interval is None else np.asarray(interval, np.int64),
        resource_bw=np.array([bw[r] for r in stream.resource_names], dtype=np.float64),
    )


# --- checker ---------------------------------------------------------------------------------
@pytest.mark.cycle_exact
def test_checker_unit_one_cycle_early(builder):
    """x holds A for 5 cycles [0,5); y issued on A at 4 is a unit hazard (earliest 5); at 5
    it is fine. The engine agrees: late at 4, on time at 5."""
    builder.add("work", unit="A", op="x", issue=0)
    builder.add("work", unit="A", op="y", issue=4)
    s = builder.build()
    t = timing(s, [5, 5])
    assert find_hazards(s, t) == [Hazard("unit", 1, 4, other=0, earliest=5)]
    with pytest.raises(
        ScheduleError,
        match="1 hazard.*unit: #1 work of y on A issued at "
        "cycle 4 but its unit is held by #0: earliest cycle 5",
    ):
        check_schedule(s, t)
    s.issue[1] = 5
    assert find_hazards(s, t) == []
    check_schedule(s, t)


@pytest.mark.cycle_exact
def test_checker_pipelined_unit(builder):
    """With interval 2, x releases A at 2 although its result is ready at 10: y may issue
    at 2, not at 1."""
    builder.add("work", unit="A", op="x", issue=0)
    builder.add("work", unit="A", op="y", issue=1)
    s = builder.build()
    t = timing(s, [10, 10], interval=[2, 2])
    assert find_hazards(s, t) == [Hazard("unit", 1, 1, other=0, earliest=2)]
    s.issue[1] = 2
    assert find_hazards(s, t) == []


@pytest.mark.cycle_exact
def test_checker_missing_dependency(builder):
    """p: work 5 + latency 2 -> result at 7; c (another unit, lag 1) issued at 7 is a
    dependency hazard (earliest 7 + 1 = 8)."""
    builder.add("work", unit="A", op="p", issue=0)
    builder.add("work", unit="B", op="c", lagged=[(0, 0, 1)], issue=7)
    s = builder.build()
    t = timing(s, [5, 1], latency=[2, 0])
    assert find_hazards(s, t) == [Hazard("dependency", 1, 7, other=0, earliest=8)]
    s.issue[1] = 8
    assert find_hazards(s, t) == []


@pytest.mark.cycle_exact
def test_checker_start_start(builder):
    """START_START lag 3 on p issued at 10: c may issue at 13, not 12. A second consumer d
    of c (END_START) sees c's end held to p's end + 3: p ends 10+20 = 30, so c (work 1)
    ends 33, and d at 32 is a hazard."""
    builder.add("work", unit="A", op="p", issue=10)
    builder.add("work", unit="B", op="c", lagged=[(0, START_START, 3)], issue=12)
    builder.add("work", unit="C", op="d", deps=[1], issue=32)
    s = builder.build()
    t = timing(s, [20, 1, 1])
    assert find_hazards(s, t) == [
        Hazard("dependency", 1, 12, other=0, earliest=13),
        Hazard("dependency", 2, 32, other=1, earliest=33),
    ]
    s.issue[1], s.issue[2] = 13, 33
    assert find_hazards(s, t) == []


@pytest.mark.cycle_exact
def test_checker_resource_oversubscribed(builder):
    """Two flows of 1000 B on 10 B/cycle: alone each runs 100 cycles at 10 B/cycle. Issued
    together they need 20 B/cycle: both starts are hazards (load 20, bandwidth 10). With the
    second at 99 they still overlap on [99,100); at 100 (a flow occupies [issue,
    issue + 100)) they do not."""
    builder.add("move", unit="A", op="f0", resources={"hbm": 1000.0}, issue=0)
    builder.add("move", unit="B", op="f1", resources={"hbm": 1000.0}, issue=0)
    s = builder.build()
    t = timing(s, [0, 0], bw={"hbm": 10.0})
    hz = find_hazards(s, t)
    assert [(h.kind, h.instruction, h.cycle, h.resource, h.load, h.bandwidth) for h in hz] == [
        ("resource", 0, 0, "hbm", 20.0, 10.0),
        ("resource", 1, 0, "hbm", 20.0, 10.0),
    ]
    s.issue[1] = 99
    assert [(h.instruction, h.cycle) for h in find_hazards(s, t)] == [(1, 99)]
    s.issue[1] = 100
    assert find_hazards(s, t) == []


@pytest.mark.cycle_exact
def test_checker_resource_rates_fit(builder):
    """Rates that fit: 600 B with work 100 (6 B/cycle) beside 400 B with work 100 (4 B/cycle)
    on 10 B/cycle: no hazard. A third flow of 101 B (work 0: resource-bound, it runs at the
    full 10 B/cycle for 10.1 cycles, held 11) issued at 50 overloads it: 6 + 4 + 10."""
    builder.add("move", unit="A", op="f0", resources={"hbm": 600.0}, issue=0)
    builder.add("move", unit="B", op="f1", resources={"hbm": 400.0}, issue=0)
    s = builder.build()
    t = timing(s, [100, 100], bw={"hbm": 10.0})
    assert find_hazards(s, t) == []
    builder.add("move", unit="C", op="f2", resources={"hbm": 101.0}, issue=50)
    s = builder.build()
    t = timing(s, [100, 100, 0], bw={"hbm": 10.0})
    hz = find_hazards(s, t)
    assert [(h.kind, h.instruction, h.cycle) for h in hz] == [("resource", 2, 50)]
    assert hz[0].load == pytest.approx(6 + 4 + 10)


def test_checker_unscheduled(builder):
    """An instruction without an issue cycle is reported, and its consumer is not checked
    against it."""
    builder.add("work", unit="A", op="p", issue=-1)
    builder.add("work", unit="B", op="c", deps=[0], issue=0)
    s = builder.build()
    assert find_hazards(s, timing(s, [5, 1])) == [Hazard("unscheduled", 0, -1)]


# --- list scheduler --------------------------------------------------------------------------
@pytest.mark.cycle_exact
def test_list_schedule_hand_count(builder):
    """f0: 1000 B on hbm (10 B/cycle) -> [0,100) at the full 10 B/cycle. f1 (unit B, 500 B)
    does not fit beside it: issues at 100, runs [100,150). c (unit C) waits for f0's result
    (latency 2 -> 102) + lag 3: 105. d on A after f0 (interval -1): 102. With start=7
    everything moves by 7."""
    builder.add("move", unit="A", op="f0", resources={"hbm": 1000.0})
    builder.add("move", unit="B", op="f1", resources={"hbm": 500.0})
    builder.add("work", unit="C", op="c", lagged=[(0, 0, 3)])
    builder.add("work", unit="A", op="d")
    s = builder.build()
    t = timing(s, [0, 0, 1, 1], latency=[2, 0, 0, 0], bw={"hbm": 10.0})
    assert list_schedule(s, t).tolist() == [0, 100, 105, 102]
    assert list_schedule(s, t, start=7).tolist() == [7, 107, 112, 109]


@pytest.mark.cycle_exact
def test_list_schedule_shares_bandwidth(builder):
    """f0 (600 B, work 100: 6 B/cycle) and f1 (400 B, work 100: 4 B/cycle) fit together on
    10 B/cycle: both at 0. f2 (100 B, work 0: 10 B/cycle for 10 cycles) fits only after
    both end: 100. f3 (50 B, work 25: 2 B/cycle) fits at 110 after f2, not beside it."""
    for i, (nbytes, unit) in enumerate(((600.0, "A"), (400.0, "B"), (100.0, "C"), (50.0, "D"))):
        builder.add("move", unit=unit, op=f"f{i}", resources={"hbm": nbytes})
    s = builder.build()
    t = timing(s, [100, 100, 0, 25], bw={"hbm": 10.0})
    assert list_schedule(s, t).tolist() == [0, 0, 100, 110]


@pytest.mark.cycle_exact
def test_list_schedule_reserves_peak_rate(builder):
    """a moves 999 B at 10 B/cycle: 99.9 cycles, rounded to 100; its average rate over the
    100 cycles is 9.99 B/cycle, which leaves room (for the checker's rule) for g, 0.01 B in
    one cycle. But the engine runs a at its peak 10 B/cycle and shares it max-min fairly: g
    beside a would take 5 B/cycle for a whole cycle, and a would end at 101, not 100. The
    scheduler therefore reserves peak rates, and puts g at 100."""
    builder.add("move", unit="A", op="a", resources={"hbm": 999.0})
    builder.add("move", unit="B", op="g", resources={"hbm": 0.01})
    builder.add("work", unit="C", op="c", deps=[0])
    s = builder.build()
    t = timing(s, [0, 0, 1], bw={"hbm": 10.0})
    s.cols["issue"] = list_schedule(s, t)
    assert s.issue.tolist() == [0, 100, 100]
    assert simulate_stream(s, t, static=True).end.tolist() == [100, 101, 101]


@pytest.mark.parametrize("seed", range(40))
def test_list_schedule_is_valid_and_tight(seed):
    """On a random stream (flows, lags, intervals) the list schedule has no hazard for the
    checker and no late instruction for the engine (which starts each one at its issue
    cycle). And it is as early as it can be: issuing any instruction that moves no bytes one
    cycle earlier (if not already at `start`) is a unit or dependency hazard, and the engine
    finds it late."""
    s, t = random_stream(np.random.default_rng(1000 + seed), 25)
    s.cols["issue"] = list_schedule(s, t, start=3)
    assert find_hazards(s, t) == []
    assert simulate_stream(s, t, static=True).start.tolist() == s.issue.tolist()
    plain = [i for i in range(len(s)) if not s.resources_of(i) and s.issue[i] > 3]
    for i in plain[:3]:
        s.issue[i] -= 1
        assert {h.kind for h in find_hazards(s, t) if h.instruction == i} & {"unit", "dependency"}
        with pytest.raises(ScheduleError):
            simulate_stream(s, t, static=True)
        s.issue[i] += 1
