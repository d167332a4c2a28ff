"""Event engine: dependency + unit-occupancy timing shared by every family."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from archsim.errors import ScheduleError
from archsim.isa import InstructionStream


@dataclass
class Timeline:
    """Per-instruction start/end cycles and per-unit busy cycles."""

    start: np.ndarray  # int64 [n]
    end: np.ndarray  # int64 [n]
    duration: np.ndarray  # int64 [n]
    busy: np.ndarray  # int64 [n_units]
    unit_names: list[str]

    @property
    def cycles(self) -> int:
        return int(self.end.max()) if len(self.end) else 0


def simulate_stream(
    stream: InstructionStream, duration: np.ndarray, strict_static: bool = True
) -> Timeline:
    """Time ``stream`` given per-instruction durations (cycles)."""
    from archsim.engine.kernel import run_events

    duration = np.ascontiguousarray(duration, dtype=np.int64)
    if duration.shape != (len(stream),) or (len(duration) and duration.min() < 0):
        raise ValueError("durations must be one non-negative int64 per instruction")
    start, end, busy, n_late, first_late = run_events(
        stream.unit, duration, stream.issue, stream.dep_ptr, stream.dep_idx, len(stream.unit_names)
    )
    if strict_static and n_late:
        i = int(first_late)
        raise ScheduleError(
            f"static schedule violated: {n_late} instruction(s) not ready at their issue cycle; "
            f"first is #{i} {stream.opcode_names[stream.opcode[i]]} of "
            f"{stream.op_names[stream.op[i]]} on {stream.unit_names[stream.unit[i]]}, issued "
            f"at cycle {int(stream.issue[i])} but ready at {int(start[i])}"
        )
    return Timeline(start, end, duration, busy, list(stream.unit_names))
