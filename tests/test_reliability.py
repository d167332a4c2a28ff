"""Reliability: the failures a new user met (issue 17), each pinned: outputs never damage a
file that is not theirs, sweeps resume and clean up, --chips auto picks a count that fits,
and the command line helps instead of failing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import archsim
from archsim.core.errors import ArchsimError, CapacityError
from archsim.sweep import expand_grid, run_sweep
from archsim.sweep.store import table_columns

AXES = {"arch": "h100-like", "model": "llama3-8b", "batch": "1,16", "layers": "1", "ctx": 128}


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "archsim.cli", *args], capture_output=True, text=True,
        timeout=300, **kw,
    )  # fmt: skip


def test_trace_onto_a_fifo_leaves_it_a_fifo(tmp_path):
    """A trace path that is not a regular file (a FIFO, like /dev/full) is refused before
    anything runs, and the node is still what it was: nothing renamed over it."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    out = cli("run", "--model", "llama3-8b", "--layers", "1", "--trace", str(fifo))
    assert out.returncode == 2 and "not a regular file" in out.stderr
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_perfetto_alone_writes_only_the_perfetto_file(tmp_path):
    """`run --perfetto x.json` writes x.json and nothing else (no x.json.h5 beside it)."""
    out = cli(
        "run", "--model", "llama3-8b", "--layers", "1", "--perfetto", str(tmp_path / "x.json")
    )
    assert out.returncode == 0, out.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
    assert json.loads((tmp_path / "x.json").read_text())["traceEvents"]


def test_bare_archsim_prints_its_help():
    """`archsim` alone prints the full help (commands listed, one per line) and exits 0."""
    out = cli()
    assert out.returncode == 0 and out.stderr == ""
    assert "Commands:" in out.stdout and "\n  run " in out.stdout


def test_debug_shows_the_traceback():
    """--debug turns the one-line error into the traceback that caused it."""
    plain, debug = cli("run", "--model", "nope"), cli("run", "--model", "nope", "--debug")
    assert plain.returncode == 2 and len(plain.stderr.strip().splitlines()) == 1
    assert "Traceback" in debug.stderr and "ModelError" in debug.stderr


def test_compare_refuses_an_unknown_arch_before_running_any():
    """`compare --arch h100-like,nope` exits 2 naming 'nope', without simulating h100-like."""
    out = cli("compare", "--arch", "h100-like,nope", "--layers", "1")
    assert out.returncode == 2 and "unknown arch 'nope'" in out.stderr
    assert "simulating" not in out.stderr


def test_jsonl_resume_trims_a_cut_off_line(tmp_path):
    """A JSONL table whose last row was cut off by a kill: the fragment is dropped, its point
    simulated again, and every line of the result is one complete row."""
    out = tmp_path / "s.jsonl"
    run_sweep(expand_grid(AXES, {}), out, progress=lambda m: None)
    text = out.read_text()
    out.write_text(text[: len(text) - 30])
    counts = run_sweep(expand_grid(AXES, {}), out, progress=lambda m: None)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    columns = set(table_columns([], {}))
    assert counts["done"] == 1 and len(rows) == 2 and all(set(r) == columns for r in rows)


def test_unrelated_jsonl_is_never_appended_to(tmp_path):
    """A JSONL file that is not an archsim sweep table is refused and left byte for byte."""
    out = tmp_path / "mine.jsonl"
    out.write_text('{"x": 1}\n')
    with pytest.raises(ArchsimError, match="not an archsim sweep table"):
        run_sweep(expand_grid(AXES, {}), out, progress=lambda m: None)
    assert out.read_text() == '{"x": 1}\n'


def _children(pid: int) -> set[int]:
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.add(int(stat.parent.name))
    return kids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_killed_sweep_leaves_no_worker_behind(tmp_path):
    """SIGKILL of a `sweep --workers 2` while its workers run: the workers end too."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "archsim.cli", "sweep", "--arch", "groq-like", "--model",
         "llama3-8b", "--batch", "1,2,4,8,16,32", "--ctx", "64,128", "--workers", "2",
         "--out", str(tmp_path / "s.csv")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 60
    kids: set[int] = set()
    while time.time() < deadline and len(kids) < 2:
        kids = _children(proc.pid)
        time.sleep(0.2)
    assert len(kids) >= 2, "the workers never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and [k for k in kids if _running(k)]:
        time.sleep(0.2)
    alive = [k for k in kids if _running(k)]
    assert not alive, f"workers still running: {alive}"


def _running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_groq_chips_auto_picks_a_count_that_fits():
    """llama3-70b at batch 4, ctx 4096 on groq-like: the packing estimate said 792 chips, whose
    balanced cut missed by 0.1 MB; auto now adds stages until the fullest chip fits."""
    from archsim.config import load_arch
    from archsim.core.registry import get_family
    from archsim.families.tsp.plan import usable_sram_bytes
    from archsim.graph.build import build_graph
    from archsim.graph.model import load_model
    from archsim.graph.scenario import Scenario

    p = load_arch("groq-like")
    g = build_graph(load_model("llama3-70b"), Scenario(batch=4, ctx=4096))
    plan = get_family("groq-like").plan(g, p, None)
    assert plan.extra["fullest_chip_bytes"] <= p.chip.sram_bytes * (1 - 12 / 88) * (1 + 1e-12)
    assert plan.chips >= 792 and usable_sram_bytes(p) > 0


def test_activation_refusal_does_not_contradict_itself():
    """A prefill whose activations alone exceed a GPU says so, instead of 'needs 243 GB, each
    chip holds 76 GB, up to 256 chips'."""
    with pytest.raises(CapacityError, match="working activations .* alone exceed"):
        archsim.simulate("h100-like", "llama3-8b", phase="prefill", seq=131072, batch=8)


def test_simulate_gives_the_garbage_collector_back():
    """simulate() pauses Python's cyclic collector while it lowers (pipeline.paused_collection)
    and turns it back on afterwards, after a refused input too; a caller that had it off
    keeps it off."""
    import gc

    assert gc.isenabled()
    archsim.simulate("h100-like", "llama3-8b", layers=1)
    assert gc.isenabled()
    with pytest.raises(ArchsimError):
        archsim.simulate("h100-like", "llama3-8b", layers=1, batch=0)
    assert gc.isenabled()
    gc.disable()
    try:
        archsim.simulate("h100-like", "llama3-8b", layers=1)
        assert not gc.isenabled()
    finally:
        gc.enable()
