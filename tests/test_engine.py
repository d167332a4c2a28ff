"""Event engine: cycle-exact timing of small streams counted by hand, static-schedule
verification (blocked at t-1, allowed at t), and JIT / no-JIT equivalence."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from archsim.core.engine import simulate_stream
from archsim.core.errors import ScheduleError
from archsim.core.isa import Timing

pytestmark = pytest.mark.cycle_exact


def _diamond(builder, issue=(-1, -1, -1, -1, -1)):
    """Two units A, B. Hand count with durations 5, 3, 2, 4, 1:
    i0 A [0,5); i1 B [0,3); i2 A after i1: A free at 5 -> [5,7);
    i3 B after i0: B free at 3, i0 ends 5 -> [5,9); i4 A after i3: [9,10)."""
    builder.add("work", unit="A", op="i0", issue=issue[0])
    builder.add("work", unit="B", op="i1", issue=issue[1])
    builder.add("work", unit="A", op="i2", deps=[1], issue=issue[2])
    builder.add("work", unit="B", op="i3", deps=[0], issue=issue[3])
    builder.add("work", unit="A", op="i4", deps=[3], issue=issue[4])
    return builder.build(), Timing.fixed(np.array([5, 3, 2, 4, 1]))


def test_dynamic_diamond_hand_count(builder):
    """Start/end cycles, busy cycles and makespan match the hand count."""
    s, d = _diamond(builder)
    tl = simulate_stream(s, d)
    assert list(tl.start) == [0, 0, 5, 5, 9]
    assert list(tl.end) == [5, 3, 7, 9, 10]
    assert list(tl.busy) == [5 + 2 + 1, 3 + 4]
    assert tl.cycles == 10


def test_static_schedule_allowed_at_ready_cycle(builder):
    """A static schedule issuing each instruction exactly when ready passes verification."""
    s, d = _diamond(builder, issue=(0, 0, 5, 5, 9))
    assert simulate_stream(s, d, static=True).cycles == 10


def test_static_schedule_blocked_one_cycle_early(builder):
    """Issuing i4 at cycle 8, one cycle before its producer i3 ends, is a compiler error."""
    s, d = _diamond(builder, issue=(0, 0, 5, 5, 8))
    with pytest.raises(ScheduleError, match="issued at cycle 8 but ready at 9"):
        simulate_stream(s, d, static=True)


def test_static_unit_conflict_detected(builder):
    """Two instructions issued on one unit in overlapping cycles are a conflict."""
    builder.add("work", unit="A", op="x", issue=0)
    builder.add("work", unit="A", op="y", issue=3)  # A is busy until 5
    with pytest.raises(ScheduleError, match="ready at 5"):
        simulate_stream(builder.build(), Timing.fixed(np.array([5, 5])), static=True)


def test_static_issue_later_than_ready_waits(builder):
    """A static instruction issued after it is ready starts at its issue cycle."""
    builder.add("work", unit="A", op="x", issue=0)
    builder.add("work", unit="B", op="y", deps=[0], issue=12)
    tl = simulate_stream(builder.build(), Timing.fixed(np.array([5, 2])), static=True)
    assert list(tl.start) == [0, 12] and tl.cycles == 14


def test_negative_duration_rejected(builder):
    """Durations must be non-negative cycles, one per instruction."""
    builder.add("work", unit="A", op="x")
    with pytest.raises(ValueError):
        simulate_stream(builder.build(), Timing.fixed(np.array([-1])))


_SCRIPT = """
import json, archsim
from archsim.config import arch_names
from archsim.core.errors import ArchsimError
from archsim.core.registry import family_names
out = {}
for arch in [f for f in family_names() if f in arch_names()]:
    for phase in ("decode", "prefill"):
        try:
            r = archsim.simulate(arch, "llama3-8b", phase=phase, batch=3, ctx=300, seq=200,
                                 layers=1)
        except ArchsimError as exc:
            out[f"{arch}/{phase}"] = str(exc)
            continue
        out[f"{arch}/{phase}"] = [r.cycles, r.chips, r.stream.dumps(r.timing)]
print(json.dumps(out))
"""


def run_with_and_without_jit(script: str) -> tuple:
    """The JSON ``script`` prints, run in a fresh interpreter with numba's JIT on, then off."""
    runs = []
    for flag in ("0", "1"):
        env = {**os.environ, "NUMBA_DISABLE_JIT": flag}
        out = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        runs.append(json.loads(out.stdout))
    return runs[0], runs[1]


def test_disable_jit_gives_identical_cycles():
    """NUMBA_DISABLE_JIT=1 (pure Python kernels) gives the same cycles and the same
    instruction streams with their timing, bit for bit, on every registered family."""
    jitted, plain = run_with_and_without_jit(_SCRIPT)
    assert jitted == plain
