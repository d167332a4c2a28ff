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


def test_chunks_keep_points_that_share_a_graph_together():
    """2 batches x 2 contexts x 3 bandwidths = 12 points, 4 graphs of 3 points each; on one
    worker the cap is 12 // 4 = 3, so each chunk is one graph's three points, in grid order;
    on two workers the cap is 12 // 8 = 1 (every point its own chunk)."""
    from archsim.sweep.run import chunks

    grid = {"arch": "h100-like", "model": "llama3-8b", "batch": "1,2", "ctx": "128,256"}
    points = expand_grid(grid, {"memory.hbm_bw_bytes_per_s": "1e12,2e12,3e12"})
    tasks = [(p, str(i), None) for i, p in enumerate(points)]
    got = chunks(tasks, 1)
    assert [[t[1] for t in c] for c in got] == [[str(3 * j + k) for k in range(3)]
                                               for j in range(4)]  # fmt: skip
    assert all(len({(t[0].batch, t[0].ctx) for t in c}) == 1 for c in got)
    assert [len(c) for c in chunks(tasks, 2)] == [1] * 12


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


GROQ = {"arch": "groq-like", "model": "llama3-8b", "batch": "1,2,4", "layers": "1", "ctx": 64}
SRAM = {"chip.sram_bytes": "1e8,2.3068672e8"}


def _sorted(rows):
    return sorted(rows, key=lambda r: r["point_id"])


def test_hdf5_table_has_every_input_and_result_column(tmp_path):
    """A 2 x 3 sweep of chip.sram_bytes x batch on groq-like writes 6 rows to HDF5, each with
    its scenario, its --set value as a numeric column, the chips chosen and the results;
    a rerun runs nothing."""
    from archsim.sweep import read_table

    out = tmp_path / "s.h5"
    assert run_sweep(expand_grid(GROQ, SRAM), out, progress=lambda m: None)["done"] == 6
    rows = read_table(out)
    assert len(rows) == 6 and len({r["point_id"] for r in rows}) == 6
    assert {r["chip.sram_bytes"] for r in rows} == {1e8, 2.3068672e8}
    assert {r["batch"] for r in rows} == {1, 2, 4}
    assert all(r["chips"] >= 1 and r["seconds"] > 0 and r["error"] == "" for r in rows)
    # more SRAM per chip, fewer chips (the count falls out of capacity)
    small = {r["batch"]: r["chips"] for r in rows if r["chip.sram_bytes"] == 1e8}
    big = {r["batch"]: r["chips"] for r in rows if r["chip.sram_bytes"] > 1e8}
    assert all(big[b] < small[b] for b in small)
    assert run_sweep(expand_grid(GROQ, SRAM), out, progress=lambda m: None)["skipped"] == 6


def test_hdf5_row_beyond_the_committed_count_is_redone(tmp_path):
    """HDF5 datasets longer than the committed row count (a kill between writing a row and
    committing it) are ignored: that point runs again and the table ends with 6 rows."""
    import h5py

    from archsim.sweep import read_table

    out = tmp_path / "s.h5"
    run_sweep(expand_grid(GROQ, SRAM), out, progress=lambda m: None)
    with h5py.File(out, "a") as f:
        f["table"].attrs["rows"] = 5
    assert run_sweep(expand_grid(GROQ, SRAM), out, progress=lambda m: None)["done"] == 1
    rows = read_table(out)
    assert len(rows) == 6 and len({r["point_id"] for r in rows}) == 6


@pytest.mark.skipif(not __import__("pathlib").Path("/proc").is_dir(), reason="needs /proc")
def test_sigkill_midway_then_rerun_loses_and_duplicates_nothing(tmp_path):
    """SIGKILL a 2-worker sweep into HDF5 after its first rows: the rerun completes the grid
    with every point exactly once, and no worker of the killed run is left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from archsim.sweep import read_table
    from tests.test_reliability import _children, _running

    out = tmp_path / "s.h5"
    cmd = [sys.executable, "-m", "archsim.cli", "sweep", "--arch", "groq-like", "--model",
           "llama3-8b", "--layers", "1", "--ctx", "64", "--batch", "1,2,4",
           "--set", "chip.sram_bytes=1e8,2.3068672e8", "--workers", "2", "--out", str(out),
           "--progress", "lines"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, rows, kids = time.time() + 120, [], set()
    while time.time() < deadline and len(rows) < 2:
        kids |= _children(proc.pid)
        time.sleep(0.1)
        try:
            rows = read_table(out)
        except ArchsimError:
            rows = []
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(rows) < 6 or proc.returncode is not None
    time.sleep(2)
    assert not [k for k in kids if _running(k)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = read_table(out)
    assert len(rows) == 6 and len({r["point_id"] for r in rows}) == 6


def test_dask_local_cluster_gives_the_same_table(tmp_path):
    """The same grid on the local process pool and on a Dask LocalCluster: identical rows
    (in completion order, so compared by key)."""
    from archsim.sweep import read_table

    grid = expand_grid(AXES, {"memory.hbm_bw_bytes_per_s": "2e12,3e12"})
    run_sweep(grid, tmp_path / "pool.h5", workers=2, progress=lambda m: None)
    run_sweep(grid, tmp_path / "dask.h5", workers=1, scheduler="local", progress=lambda m: None)
    assert _sorted(read_table(tmp_path / "pool.h5")) == _sorted(read_table(tmp_path / "dask.h5"))


def test_parquet_and_jsonl_tables_resume(tmp_path):
    """Parquet and JSONL tables hold the same rows as HDF5 and a rerun skips them all."""
    from archsim.sweep import read_table

    grid = expand_grid(AXES, {})
    tables = {}
    for ext in ("parquet", "jsonl", "h5"):
        out = tmp_path / f"s.{ext}"
        assert run_sweep(grid, out, progress=lambda m: None)["done"] == 2
        assert run_sweep(grid, out, progress=lambda m: None)["skipped"] == 2
        tables[ext] = _sorted(read_table(out))
    assert tables["parquet"] == tables["jsonl"] == tables["h5"]


def test_point_timeout_records_the_point_and_goes_on(tmp_path):
    """A point over --point-timeout becomes a row naming the timeout; the sweep goes on."""
    from archsim.sweep import read_table

    out = tmp_path / "s.csv"
    grid = expand_grid({**AXES, "batch": "1", "layers": "all"}, {})
    counts = run_sweep(grid, out, point_timeout_s=1e-3, progress=lambda m: None)
    rows = read_table(out)
    assert counts["failed"] == 1 and "timed out after 0.001 s" in rows[0]["error"]


def test_pareto_front_by_hand():
    """Lower x and higher y better: of (1,1) (2,3) (3,2) (4,5) (2.5,3), the front is (1,1),
    (2,3), (4,5): (3,2) is beaten by (2,3), (2.5,3) ties it on y but is worse on x."""
    import numpy as np

    from archsim.plot import pareto_front

    xs, ys = np.array([1.0, 2, 3, 4, 2.5]), np.array([1.0, 3, 2, 5, 3])
    assert list(pareto_front(xs, ys, x_max=False, y_max=True)) == [0, 1, 3]
    assert list(pareto_front(xs, ys, x_max=True, y_max=True)) == [3]
