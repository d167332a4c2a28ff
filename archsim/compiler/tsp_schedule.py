"""Static scheduler of the groq-like compiler: every instruction gets its issue cycle.

List scheduling in program order (a topological order): an instruction issues at the first
cycle at which (a) its functional unit's queue has finished the unit's previous instruction
(each ICU queue issues in order, one instruction at a time at this grain) and (b) every
producer's result has been written to MEM (durations already include stream travel, MXM
weight installs, superlane skew and C2C flight). The cycle model then executes the schedule
and reports any instruction whose unit or operands are not ready at its issue cycle as a
ScheduleError: a conflict is a compiler bug, never absorbed.
"""

from __future__ import annotations

import numpy as np

from archsim._numba import njit


@njit
def asap_issue(unit, duration, dep_ptr, dep_idx, n_units, start):  # pragma: no cover - jitted
    """Issue cycle of each instruction; ``start`` is the cycle the program begins (deskewed)."""
    n = unit.shape[0]
    issue = np.zeros(n, dtype=np.int64)
    end = np.zeros(n, dtype=np.int64)
    unit_free = np.full(n_units, start, dtype=np.int64)
    for i in range(n):
        t = unit_free[unit[i]]
        for j in range(dep_ptr[i], dep_ptr[i + 1]):
            if end[dep_idx[j]] > t:
                t = end[dep_idx[j]]
        issue[i] = t
        end[i] = t + duration[i]
        unit_free[unit[i]] = end[i]
    return issue
