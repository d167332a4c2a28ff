"""The shared event engine: times a stream on units, given each instruction's duration.

Each unit executes its instructions in program order, one at a time; an instruction starts
when its unit is free and its producers have finished (and, for static families, not before
its compiler-assigned issue cycle). Because every unit is in-order and dependencies point
backwards, one pass in program order computes exactly what a discrete-event simulation with
a (time, sequence) heap would: instruction i cannot start before any earlier instruction of
its unit has started, so the heap never reorders a unit's queue.
"""

from __future__ import annotations

import numpy as np

from archsim._numba import njit


@njit
def run_events(unit, duration, issue, dep_ptr, dep_idx, n_units):  # pragma: no cover - jitted
    """Returns (start, end, busy[n_units], n_late, first_late).

    unit[i] int32, duration[i] int64 cycles, issue[i] int64 (-1 = dynamic).
    A static instruction whose inputs or unit are not ready at its issue cycle is *late*:
    it is counted, and the first one reported, and it is timed as if it had waited.
    """
    n = unit.shape[0]
    start = np.zeros(n, dtype=np.int64)
    end = np.zeros(n, dtype=np.int64)
    unit_free = np.zeros(n_units, dtype=np.int64)
    busy = np.zeros(n_units, dtype=np.int64)
    n_late = 0
    first_late = -1
    for i in range(n):
        u = unit[i]
        ready = unit_free[u]
        for j in range(dep_ptr[i], dep_ptr[i + 1]):
            e = end[dep_idx[j]]
            if e > ready:
                ready = e
        s = ready
        if issue[i] >= 0:
            if ready > issue[i]:
                n_late += 1
                if first_late < 0:
                    first_late = i
            else:
                s = issue[i]
        start[i] = s
        end[i] = s + duration[i]
        unit_free[u] = end[i]
        busy[u] += duration[i]
    return start, end, busy, n_late, first_late
