"""`archsim serve`, `archsim kv-tiers` and `archsim plot serve` from the command line: the
JSON document, its documentation, traces, the request table, one-line errors (exit 2), and
(slow) the speed the issue asks for: 2000 requests in under ten seconds."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from archsim.cli import main

DOCS = Path(__file__).resolve().parent.parent / "docs"
SMALL = ["--requests", "60", "--rate", "4", "--prompt-tokens", "256", "--output-tokens", "32"]


def cli(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.stdout, r.stderr


def serve_json(*args: str) -> dict:
    code, out, err = cli("serve", *SMALL, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def _keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(k)
        if isinstance(v, dict) and k not in ("deployment", "tiers", "utilization"):
            out |= _keys(v, k + ".")
    return out


def test_serve_json_is_complete_and_documented():
    """Every key of `serve --json` (nested ones too; with reuse, speculation and a
    disaggregated deployment) appears backticked in docs/serving.md."""
    doc = (DOCS / "serving.md").read_text()
    reports = [
        serve_json("--prefix-tokens", "64", "--draft", "self", "--draft-layers", "8",
                   "--spec-k", "2", "--slo-tpot", "0.02"),
        serve_json("--prefill-arch", "h100-like", "--decode-arch", "h200"),
    ]  # fmt: skip
    keys = set().union(*(_keys(r) for r in reports))
    keys |= set(reports[0]["deployment"]) | set(reports[0]["reuse"]["tiers"]["device"])
    missing = sorted(k for k in keys if f"`{k}`" not in doc)
    assert not missing, f"undocumented serve output keys in docs/serving.md: {missing}"
    r = reports[0]
    for m in ("ttft_s", "tpot_s", "e2e_s"):
        assert set(r[m]) == {"mean", "p50", "p90", "p99"}
        assert r[m]["p50"] <= r[m]["p90"] <= r[m]["p99"]


def test_serve_table_prints_percentiles():
    """The table names TTFT, TPOT and end to end with p50/p90/p99, and the throughput."""
    code, out, _ = cli("serve", *SMALL)
    assert code == 0
    for word in ("TTFT", "TPOT", "end to end", "p50", "p90", "p99", "throughput"):
        assert word in out


def test_trace_jsonl_and_csv_agree(tmp_path):
    """The same requests as JSON lines and as CSV give the same run; the request table has
    one row per request."""
    rows = [{"arrival_s": 0.1 * i, "prompt_tokens": 100 + 10 * i, "output_tokens": 8 + i,
             "conversation_id": f"c{i % 2}"} for i in range(12)]  # fmt: skip
    jl = tmp_path / "t.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cs = tmp_path / "t.csv"
    with cs.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    table = tmp_path / "req.csv"
    code, out_a, err = cli("serve", "--trace", str(jl), "--json", "--csv", str(table))
    assert code == 0, err
    code, out_b, err = cli("serve", "--trace", str(cs), "--json")
    assert code == 0, err
    a, b = json.loads(out_a), json.loads(out_b)
    assert a["ttft_s"] == b["ttft_s"] and a["requests"] == 12
    lines = table.read_text().splitlines()
    assert len(lines) == 13 and lines[0].startswith("id,arrival_s,prompt_tokens")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--spec-k", "4"], "--draft"),
        (["--draft", "self", "--spec-k", "2"], "--draft-layers"),
        (["--preempt", "swap"], "--kv-tiers"),
        (["--kv-tiers", "nope"], "unknown kv tiers"),
        (["--rate", "0"], "--rate"),
        (["--prompt-tokens", "0"], "--prompt-tokens"),
        (["--trace", "/no/such/trace.jsonl"], "not found"),
        (["--chips", "two"], "--chips"),
        (["--kv-precision", "fp5"], "--kv-precision"),
        (["--kv-compression", "0.5"], "--kv-compression"),
        (["--model", "nope"], "unknown model"),
        (["--kv-link", "carrier-pigeon", "--prefill-arch", "h100-like"], "unknown link"),
        (["--find-max-rate"], "--slo-ttft"),
    ],
)
def test_bad_serve_input_is_one_line_exit_2(args, message):
    """Bad input ends with one line naming the problem and exit status 2."""
    code, out, err = cli("serve", "--requests", "20", *args)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and message in err


def test_find_max_rate_meets_the_slo():
    """The rate found meets the attainment target; twice the tolerance above it does not
    (the search brackets the boundary)."""
    r = serve_json("--slo-ttft", "0.05", "--slo-tpot", "0.02", "--find-max-rate")
    rate = r["max_rate_rps"]
    assert rate > 0
    by_rate = {p["rate"]: p["attainment"] for p in r["probes"]}
    assert by_rate[rate] >= 0.9
    above = [a for x, a in by_rate.items() if x > rate]
    assert above and all(a < 0.9 for a in above)


def test_kv_tiers_table():
    """`archsim kv-tiers` prints each tier with its drain time."""
    code, out, _ = cli("kv-tiers", "--tiers", "groq-node", "--arch", "none")
    assert code == 0
    assert "dram" in out and "nvme" in out and "drain" in out


def test_plot_serve_writes_a_figure(tmp_path):
    """`archsim plot serve` runs each rate and writes the figure; --json gives the points
    (latency percentiles grow with the rate)."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "serve.png"
    code, stdout, err = cli("plot", "serve", *SMALL, "--rates", "2,40", "--out", str(out),
                            "--json")  # fmt: skip
    assert code == 0, err
    assert out.stat().st_size > 0
    pts = json.loads(stdout)
    assert [p["rate"] for p in pts] == [2.0, 40.0]
    assert pts[1]["ttft_p99"] >= pts[0]["ttft_p99"]


def _timed_serve(arch: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "archsim.cli", "serve", "--arch", arch,
                          "--model", "llama3-8b", "--rate", "5", "--requests", "2000"],
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    return time.perf_counter() - t0, out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["h100-like", "groq-like"])
def test_two_thousand_requests_under_ten_seconds(arch):
    """The issue's target: `archsim serve --arch A --model llama3-8b --rate 5 --requests
    2000` prints TTFT/TPOT p50/p90/p99 and throughput in under ten seconds (warm numba
    cache; a loaded shared machine can stretch the wall clock)."""
    seconds, out = _timed_serve(arch)
    assert seconds < 10, f"{arch}: {seconds:.1f} s"
    assert re.search(r"TTFT.*ms", out) and re.search(r"TPOT", out) and "throughput" in out


def test_request_longer_than_the_model_is_refused():
    """A prompt + answer beyond the model's positions is refused up front (one line)."""
    code, _, err = cli("serve", "--model", "llama2-70b", "--requests", "5",
                       "--prompt-tokens", "4000", "--output-tokens", "200")  # fmt: skip
    assert code == 2 and "max_position_embeddings 4096" in err


def test_named_pairing_sets_prefill_decode_and_link():
    """`--pair vera-rubin-lpx` (arch_configs/pairs/) is --prefill-arch rubin --decode-arch
    groq3-lpx over its KV link, with the colocated comparison on the prefill arch; an unknown
    pairing is one line naming the valid ones."""
    code, stdout, err = cli("serve", "--pair", "vera-rubin-lpx", "--model", "llama3-8b",
                            "--rate", "2", "--requests", "20", "--json")  # fmt: skip
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["deployment"]["prefill"]["arch"] == "rubin"
    assert doc["deployment"]["decode"]["arch"] == "groq3-lpx"
    assert doc["config"]["kv_link"] == "ib-xdr" and doc["config"]["machine"]["arch"] == "rubin"
    code, _, err = cli("serve", "--pair", "vera-rubin-lp")
    assert code == 2 and "did you mean 'vera-rubin-lpx'" in err
