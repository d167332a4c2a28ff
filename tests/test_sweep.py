"""Sweeps: grid expansion, appending as points finish, resuming, and refusing to clobber."""

from __future__ import annotations

import csv

import pytest

from archsim.core.errors import ArchsimError, ConfigError
from archsim.sweep import expand_grid, run_sweep
from archsim.sweep.run import COLUMNS

AXES = {"arch": "h100-like", "model": "llama3-8b", "batch": "1,16", "layers": "1", "ctx": 128}


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_grid_is_the_cartesian_product():
    """2 batches x 3 bandwidths = 6 distinct points, each with its own id."""
    pts = expand_grid(AXES, {"memory.hbm_bw_bytes_per_s": "2e12,3e12,4e12"})
    assert len(pts) == 6 and len({p.point_id for p in pts}) == 6
    assert {p.batch for p in pts} == {1, 16}
    assert {p.overrides["memory.hbm_bw_bytes_per_s"] for p in pts} == {2e12, 3e12, 4e12}


def test_unknown_axis_rejected():
    """A scenario key the sweep does not know is a one-line ConfigError."""
    with pytest.raises(ConfigError, match="bacth"):
        expand_grid({**AXES, "bacth": 2}, {})


def test_resume_skips_finished_points(tmp_path):
    """A rerun with a larger grid runs only the new points and keeps the old rows."""
    out = tmp_path / "s.csv"
    first = run_sweep(expand_grid(AXES, {}), out, progress=lambda m: None)
    assert first == {"done": 2, "skipped": 0, "failed": 0}
    bigger = expand_grid({**AXES, "batch": "1,16,64"}, {})
    second = run_sweep(bigger, out, progress=lambda m: None)
    assert second == {"done": 1, "skipped": 2, "failed": 0}
    rows = _rows(out)
    assert [int(r["batch"]) for r in rows] == [1, 16, 64]
    # more bandwidth-free work at a larger batch can only take longer
    assert float(rows[0]["seconds"]) <= float(rows[1]["seconds"]) <= float(rows[2]["seconds"])


def test_partial_last_line_is_dropped_and_rerun(tmp_path):
    """A row cut off by a killed run is discarded and its point simulated again."""
    out = tmp_path / "s.csv"
    run_sweep(expand_grid(AXES, {}), out, progress=lambda m: None)
    text = out.read_text()
    out.write_text(text[: len(text) - 20])  # cut the last row mid-way
    counts = run_sweep(expand_grid(AXES, {}), out, progress=lambda m: None)
    assert counts["done"] == 1 and len(_rows(out)) == 2


def test_refused_points_become_rows(tmp_path):
    """A point that cannot run (70B on one GPU) is recorded with its error; others proceed."""
    out = tmp_path / "s.jsonl"
    pts = expand_grid(
        {"arch": "h100-like", "model": "llama3-70b", "chips": "1,2", "layers": "all"}, {}
    )
    counts = run_sweep(pts, out, progress=lambda m: None)
    assert counts == {"done": 2, "skipped": 0, "failed": 1}


def test_foreign_file_not_overwritten(tmp_path):
    """An existing CSV that is not a sweep table is refused and left untouched."""
    out = tmp_path / "mine.csv"
    out.write_text("a,b\n1,2\n")
    with pytest.raises(ArchsimError, match="not an archsim sweep table"):
        run_sweep(expand_grid(AXES, {}), out, progress=lambda m: None)
    assert out.read_text() == "a,b\n1,2\n"
    assert COLUMNS[0] == "point_id"


def test_yaml_spec_with_lists_and_set(tmp_path):
    """A sweep YAML holds scenario keys (scalars or lists) and a `set:` mapping of config keys
    to values or lists; `archsim sweep spec.yaml` runs their product."""
    import subprocess
    import sys

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "arch: h100-like\nmodel: llama3-8b\nlayers: 1\nbatch: [1, 8]\n"
        "set:\n  memory.hbm_bw_bytes_per_s: [3.0e12, 4.0e12]\n"
    )
    out = tmp_path / "s.csv"
    done = subprocess.run([sys.executable, "-m", "archsim.cli", "sweep", str(spec), "--out",
                           str(out)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = _rows(out)
    assert len(rows) == 4 and not any(r["error"] for r in rows)
    fast = [float(r["seconds"]) for r in rows if "4000000000000" in r["overrides"]]
    slow = [float(r["seconds"]) for r in rows if "3000000000000" in r["overrides"]]
    assert all(f < s for f, s in zip(fast, slow, strict=True))  # more bandwidth, less time


def test_bad_yaml_spec(tmp_path):
    """`set:` that is not a mapping is a ConfigError naming the file."""
    from archsim.sweep import load_spec

    spec = tmp_path / "spec.yaml"
    spec.write_text("arch: h100-like\nmodel: llama3-8b\nset: [1, 2]\n")
    with pytest.raises(ConfigError, match="'set' must map"):
        load_spec(spec)
