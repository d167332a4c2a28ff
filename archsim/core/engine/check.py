"""Independent checker of static schedules: re-derives every hazard of a scheduled stream.

It reads only the stream (its issue cycles, dependencies and resource uses) and the Timing,
and shares no code with the event engine or the list scheduler (plain numpy and Python), so
that a bug in one of them does not hide itself. Durations are standalone (the instruction
alone on the machine):

* flow phase: ``work`` cycles without resources; else ``ceil(max(work, max_r B_r / bw_r))``
  cycles, at least 1, where a remainder of at most 1e-9 of the bytes counts as moved;
* ``end = issue + flow + latency``, and not before ``end[j] + lag`` for a START_START
  producer ``j`` (its checked end);
* the unit is held ``interval`` cycles from the issue, or until ``end`` where -1.

Hazards: ``unscheduled`` (no issue cycle), ``unit`` (issued before the previous instruction
of its unit released it), ``dependency`` (END_START: before the producer's end + lag;
START_START: before the producer's issue + lag), ``resource`` (while the flow is active,
over ``[issue, issue + flow)``, the standalone byte rates ``B_r / flow`` of the flows on a
resource sum to more than its bandwidth, by over a relative 1e-9; found by a sweep line).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from archsim.core.errors import ScheduleError
from archsim.core.isa import START_START, InstructionStream, Timing

_KINDS = ("unscheduled", "unit", "dependency", "resource")


@dataclass(frozen=True)
class Hazard:
    """One violation of a static schedule."""

    kind: str  # "unscheduled" | "unit" | "dependency" | "resource"
    instruction: int  # the instruction issued too early (or not at all)
    cycle: int  # its issue cycle
    other: int = -1  # unit predecessor or producer it conflicts with (-1: none)
    earliest: int = -1  # unit/dependency: first cycle it could have issued
    resource: str = ""  # resource: the oversubscribed resource
    load: float = 0.0  # resource: bytes/cycle of the overlapping flows from `cycle` on
    bandwidth: float = 0.0  # resource: its bytes/cycle

    def describe(self, stream: InstructionStream) -> str:
        i = self.instruction
        who = (
            f"#{i} {stream.opcode_names[stream.opcode[i]]} of {stream.op_names[stream.op[i]]} "
            f"on {stream.unit_names[stream.unit[i]]}"
        )
        if self.kind == "unscheduled":
            return f"{who} has no issue cycle"
        if self.kind == "resource":
            return (
                f"{who} issued at cycle {self.cycle} oversubscribes {self.resource}: "
                f"{self.load:.6g} bytes/cycle over a bandwidth of {self.bandwidth:.6g}"
            )
        why = "its unit is held by" if self.kind == "unit" else "it depends on"
        return (
            f"{who} issued at cycle {self.cycle} but {why} #{self.other}: "
            f"earliest cycle {self.earliest}"
        )


def standalone_durations(
    stream: InstructionStream, timing: Timing
) -> tuple[np.ndarray, np.ndarray]:
    """(flow cycles int64 [n], standalone byte rate float64 [n_uses] of each resource use).

    A flow's rate on a resource is its bytes over ``max(work, max_r B_r / bw_r)`` — the rate
    it runs at while alone, before the last partial cycle is rounded up — not its bytes over
    the rounded flow cycles: a flow that moves 999 B at 10 B/cycle occupies 10 B/cycle for its
    100 cycles, and nothing may squeeze in beside it."""
    n = len(stream)
    owner = np.repeat(np.arange(n), np.diff(stream.res_ptr))
    bw = np.asarray(timing.resource_bw, dtype=np.float64)
    need = np.zeros(n)  # cycles the bytes need alone: max_r B_r / bw_r
    moving = stream.res_bytes > 0
    np.maximum.at(need, owner[moving], stream.res_bytes[moving] / bw[stream.res_idx[moving]])
    moves = np.zeros(n, dtype=bool)
    moves[owner[moving]] = True
    flow = timing.work.astype(np.int64).copy()
    bound = np.maximum(timing.work.astype(np.float64), need)[moves]
    flow[moves] = np.maximum(1, np.ceil(bound * (1.0 - 1e-9))).astype(np.int64)
    alone = np.maximum(timing.work.astype(np.float64), need)  # unrounded standalone cycles
    rate = stream.res_bytes / np.maximum(alone[owner], 1e-300)
    return flow, rate


def find_hazards(stream: InstructionStream, timing: Timing) -> list[Hazard]:
    """Every hazard of the static schedule in ``stream.issue``, in program order."""
    timing.check(stream)
    issue = np.asarray(stream.issue, dtype=np.int64)
    flow, rate = standalone_durations(stream, timing)
    hazards = _timing_hazards(stream, timing, issue, flow)
    hazards += _resource_hazards(stream, timing, issue, flow, rate)
    order = {k: r for r, k in enumerate(_KINDS)}
    hazards.sort(key=lambda h: (h.instruction, order[h.kind], h.other, h.resource))
    return hazards


def checked_ends(stream, timing, issue, flow) -> np.ndarray:
    """int64 [n]: issue + flow + latency, held to end[j] + lag for START_START producers j
    (-1 where not scheduled). Only instructions with such producers need a sequential pass."""
    end = np.where(issue >= 0, issue + flow + timing.latency, -1)
    owner = np.repeat(np.arange(len(stream)), np.diff(stream.dep_ptr))
    ss = np.flatnonzero(stream.dep_kind == START_START)
    for k in ss:  # program order: producers' ends are final before their consumers read them
        i, j = owner[k], stream.dep_idx[k]
        if issue[i] >= 0 and issue[j] >= 0:
            end[i] = max(end[i], end[j] + stream.dep_lag[k])
    return end


def _timing_hazards(stream, timing, issue, flow) -> list[Hazard]:
    """Unscheduled, unit and dependency hazards."""
    n = len(stream)
    end = checked_ends(stream, timing, issue, flow)
    out = [Hazard("unscheduled", int(i), int(issue[i])) for i in np.flatnonzero(issue < 0)]

    # unit: each scheduled instruction against the previous scheduled one of its unit
    held = np.where(timing.interval >= 0, issue + timing.interval, end)  # release cycle
    sched = np.flatnonzero(issue >= 0)
    by_unit = sched[np.argsort(stream.unit[sched], kind="stable")]  # program order per unit
    same = stream.unit[by_unit[1:]] == stream.unit[by_unit[:-1]]
    cur, prev = by_unit[1:][same], by_unit[:-1][same]
    for k in np.flatnonzero(issue[cur] < held[prev]):
        i, j = int(cur[k]), int(prev[k])
        out.append(Hazard("unit", i, int(issue[i]), other=j, earliest=int(held[j])))

    # dependency: END_START on the producer's end, START_START on its issue, plus lag
    owner = np.repeat(np.arange(n), np.diff(stream.dep_ptr))
    prod = stream.dep_idx
    ready = np.where(stream.dep_kind == START_START, issue[prod], end[prod]) + stream.dep_lag
    bad = (issue[owner] >= 0) & (issue[prod] >= 0) & (issue[owner] < ready)
    for k in np.flatnonzero(bad):
        i = int(owner[k])
        out.append(
            Hazard("dependency", i, int(issue[i]), other=int(prod[k]), earliest=int(ready[k]))
        )
    return out


def _resource_hazards(stream, timing, issue, flow, rate) -> list[Hazard]:
    """Per resource, a sweep over flow starts and ends (ends first at equal cycles: a flow
    occupies [issue, issue + flow)); each flow that starts while the sum of rates exceeds
    the bandwidth is a hazard."""
    n = len(stream)
    owner = np.repeat(np.arange(n), np.diff(stream.res_ptr))
    out: list[Hazard] = []
    for r, name in enumerate(stream.resource_names):
        use = (stream.res_idx == r) & (stream.res_bytes > 0) & (issue[owner] >= 0)
        who = owner[use]
        if len(who) == 0:
            continue
        t0 = issue[who]
        t1 = t0 + flow[who]
        times = np.concatenate([t0, t1])
        delta = np.concatenate([rate[use], -rate[use]])
        is_start = np.concatenate([np.ones(len(who), bool), np.zeros(len(who), bool)])
        order = np.lexsort((is_start, times))  # by cycle, ends before starts
        times, delta, is_start = times[order], delta[order], is_start[order]
        inst = np.concatenate([who, who])[order]
        level = 0.0
        bw = float(timing.resource_bw[r])
        k = 0
        while k < len(times):
            m = k
            while m < len(times) and times[m] == times[k]:
                level += delta[m]
                m += 1
            if level > bw * (1.0 + 1e-9):
                for q in range(k, m):
                    if is_start[q]:
                        out.append(
                            Hazard(
                                "resource",
                                int(inst[q]),
                                int(times[q]),
                                resource=name,
                                load=level,
                                bandwidth=bw,
                            )
                        )
            k = m
    return out


def check_schedule(stream: InstructionStream, timing: Timing) -> None:
    """Raise ScheduleError (one line: the first hazard and the count) if the static schedule
    in ``stream.issue`` has any hazard."""
    hazards = find_hazards(stream, timing)
    if hazards:
        raise ScheduleError(
            f"static schedule has {len(hazards)} hazard(s); first: "
            f"{hazards[0].kind}: {hazards[0].describe(stream)}"
        )
