"""Golden instruction streams: the lowering of small fixed programs, as diffable text.

A mismatch means the lowering changed. If the change is intended, regenerate with
`python tests/golden/regen.py`, read `git diff tests/golden`, and commit both together.
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "golden"
_spec = importlib.util.spec_from_file_location("golden_regen", HERE / "regen.py")
regen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regen)


@pytest.mark.parametrize("case", sorted(regen.CASES))
def test_stream_matches_golden(case):
    """The lowered stream is byte-identical to the committed golden text."""
    golden = (HERE / f"{case}.txt").read_text()
    now = regen.stream_text(case)
    if now != golden:
        diff = "".join(
            list(
                difflib.unified_diff(golden.splitlines(True), now.splitlines(True), "golden", "now")
            )[:60]
        )
        pytest.fail(f"lowering of {case} changed:\n{diff}")
