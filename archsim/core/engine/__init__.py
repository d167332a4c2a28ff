"""The shared event engine: times an InstructionStream from its family's Timing.

API (stable): :class:`Timeline` and :func:`simulate_stream`. The implementation is the numba
kernel in ``kernel.py``; the independent checker of static schedules is ``check.py``.

Semantics. Units are in-order: a unit executes its instructions in program order. Instruction
``i`` starts at the first cycle ``s`` at which

1. the previous instruction of its unit has released the unit;
2. every END_START producer ``j`` has its result ready ``lag`` cycles before ``s``, and every
   START_START producer ``j`` started ``lag`` cycles before ``s``;
3. in static mode, ``s`` is its issue cycle; an instruction whose constraints fall later is
   *late*, and ``simulate_stream`` raises :class:`ScheduleError` naming the first one.

Its flow phase then lasts ``work`` cycles or, where it moves bytes over shared resources, until
they have moved: the active flows share each resource's bandwidth max-min fairly (a flow never
goes faster than its largest byte count over ``work``), rates are recomputed whenever a flow
starts or finishes, and a flow finishes on the first whole cycle at which its bytes have moved.
Its result is ready ``latency`` cycles later, and not before ``end[j] + lag`` for any
START_START producer ``j``. It holds its unit ``interval`` cycles from ``s`` (a pipelined unit),
or until its result is ready where ``interval`` is -1.

Outside static mode the ``issue`` column is ignored: the engine decides every start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from archsim.core.errors import ScheduleError
from archsim.core.isa import (
    InstructionStream,
    Timing,
    dep_arrays,
    resource_arrays,
    unit_arrays,
)


@dataclass
class Timeline:
    """Per-instruction start / result-ready / unit-release cycles, per-unit and per-resource
    use."""

    start: np.ndarray  # int64 [n] cycle the instruction started
    end: np.ndarray  # int64 [n] cycle its result was ready
    release: np.ndarray  # int64 [n] cycle it freed its unit
    busy: np.ndarray  # int64 [n_units] cycles each unit was held: sum of release - start
    unit_names: list[str]
    resource_names: list[str] = field(default_factory=list)
    # int64 [n_resources] cycles during which at least one flow was active on the resource
    resource_busy: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # float64 [n_resources] bytes moved over the resource
    resource_bytes: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def duration(self) -> np.ndarray:
        return self.end - self.start

    @property
    def cycles(self) -> int:
        return int(self.end.max()) if len(self.end) else 0


def _describe(stream: InstructionStream, i: int) -> str:
    return (
        f"#{i} {stream.opcode_names[stream.opcode[i]]} of {stream.op_names[stream.op[i]]} "
        f"on {stream.unit_names[stream.unit[i]]}"
    )


def simulate_stream(stream: InstructionStream, timing: Timing, static: bool = False) -> Timeline:
    """Time ``stream`` with ``timing``. ``static``: every instruction carries a compiler issue
    cycle and must start exactly then; one that is not ready then (or has no issue cycle) is
    a ScheduleError (a compiler bug)."""
    from archsim.core.engine.kernel import run_events

    timing.check(stream)
    if static and len(stream) and stream.issue.min() < 0:
        missing = np.flatnonzero(stream.issue < 0)
        raise ScheduleError(
            f"static schedule incomplete: {len(missing)} instruction(s) have no issue cycle; "
            f"first is {_describe(stream, int(missing[0]))}"
        )
    (start, end, release, busy, resource_busy, resource_bytes, n_late, first_late, n_unresolved) = (
        run_events(
            *unit_arrays(stream),
            np.ascontiguousarray(stream.issue, dtype=np.int64),
            bool(static),
            *dep_arrays(stream),
            *resource_arrays(stream, timing),
        )
    )
    if n_unresolved:
        raise RuntimeError(
            f"event engine deadlocked: {int(n_unresolved)} instruction(s) never finished "
            "(a dependency that does not point backwards?)"
        )
    if static and n_late:
        i = int(first_late)
        raise ScheduleError(
            f"static schedule violated: {int(n_late)} instruction(s) not ready at their issue "
            f"cycle; first is {_describe(stream, i)}, issued at cycle {int(stream.issue[i])} "
            f"but ready at {int(start[i])}"
        )
    return Timeline(
        start,
        end,
        release,
        busy,
        list(stream.unit_names),
        list(stream.resource_names),
        resource_busy,
        resource_bytes,
    )
