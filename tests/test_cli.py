"""The command line: JSON output, tables, listing, traces, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

REQUIRED_KEYS = {
    "arch",
    "model",
    "phase",
    "batch",
    "seq",
    "ctx",
    "precision",
    "chips",
    "cycles",
    "seconds",
    "tokens_per_s",
    "weight_bytes",
    "kv_bytes",
    "bytes_by_tier",
    "utilization",
    "bound",
}


def archsim(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "archsim.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=check,
    )


def test_run_json_has_required_keys():
    """`run --json` prints exactly one JSON object with the documented keys."""
    out = archsim(
        "run",
        "--arch",
        "h100-like",
        "--model",
        "llama3-8b",
        "--phase",
        "decode",
        "--batch",
        "64",
        "--ctx",
        "1024",
        "--json",
    )
    doc = json.loads(out.stdout)
    assert set(doc) >= REQUIRED_KEYS
    assert doc["batch"] == 64 and doc["ctx"] == 1024 and doc["model"] == "llama3-8b"
    assert doc["meta"]["arch_digest"] and doc["meta"]["archsim_version"]


def test_run_table_goes_to_stdout():
    """Without --json, run prints a readable table on stdout and nothing on stderr."""
    out = archsim("run", "--model", "llama3-8b", "--layers", "1")
    assert "step time" in out.stdout and out.stderr == ""


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "--arch", "nope"], "unknown arch 'nope'"),
        (["run", "--batch", "0"], "batch must be a positive integer"),
        (["run", "--set", "no.such.key=1"], "unknown config key 'no.such.key'"),
        (["run", "--model", "gpt-17"], "unknown model 'gpt-17'"),
        (["run", "--model", "llama3-70b", "--chips", "1"], "does not fit on 1 chip"),
        (["run", "--batch", "abc"], "'abc' is not a valid integer"),
        (["run", "--precision", "fp5"], "unknown precision"),
        (["run", "--layers", "0"], "--layers"),
        (["run", "--arch", "etched-like", "--model", "mixtral-8x7b"], "mixture-of-experts"),
        (["run", "--model", "mixtral-8x7b", "--routing-skew", "-1"], "routing skew"),
        (["run", "--ctx", "-5"], "ctx must be a positive integer"),
        (["trace", "show", "/nonexistent.h5"], "not found"),
    ],
)
def test_bad_input_one_line_exit_2(args, needle):
    """Bad input: exit status 2, one line on stderr naming the problem, no traceback."""
    out = archsim(*args, check=False)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("archsim: error:")
    assert needle in lines[0]
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_list_archs_and_models():
    """`list archs` shows the presets with their family; `list models` the workloads."""
    archs = archsim("list", "archs").stdout
    assert "h100-like" in archs
    models = archsim("list", "models").stdout
    assert "llama3-70b" in models and "llama-70b" in models  # alias shown


def test_trace_round_trip(tmp_path):
    """--trace writes an HDF5 timeline that `trace show` reads and `trace export` converts."""
    import h5py

    h5 = tmp_path / "run.h5"
    archsim("run", "--model", "llama3-8b", "--layers", "2", "--trace", str(h5))
    with h5py.File(h5) as f:
        assert f.attrs["schema_version"] == 2
        assert json.loads(f.attrs["scenario"])["phase"] == "decode"
        n = len(f["events/start"])
        assert n > 0 and len(f["events/end"]) == n and len(f["events/flops"]) == n
        assert f["events/start"].compression == "gzip"
        assert (f["events/end"][()] >= f["events/start"][()]).all()
    shown = archsim("trace", "show", str(h5)).stdout
    assert "instructions" in shown
    pf = tmp_path / "run.json"
    archsim("trace", "export", str(h5), "--perfetto", str(pf))
    events = json.loads(pf.read_text())["traceEvents"]
    assert sum(e["ph"] == "X" for e in events) == n
    # Trace Event Format: integer pid/tid, processes named by metadata
    assert all(isinstance(e["pid"], int) for e in events)
    assert {e["args"]["name"] for e in events if e["name"] == "process_name"} == {"gpu0"}


def test_trace_into_missing_folder_is_clean(tmp_path):
    """A trace path in a folder that does not exist is a one-line error, nothing written."""
    out = archsim("run", "--layers", "1", "--trace", str(tmp_path / "no" / "run.h5"), check=False)
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_compare_runs_every_arch():
    """`compare --json` returns one row per shipped preset (errors become rows, not crashes)."""
    from archsim.config import arch_names

    rows = json.loads(archsim("compare", "--model", "llama3-8b", "--layers", "1", "--json").stdout)
    assert [r["arch"] for r in rows] == arch_names()
