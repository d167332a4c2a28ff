"""`archsim validate` against the measured H100 calibration data shipped in validation/."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from archsim.cli import main
from archsim.validate import run_validation


@pytest.fixture(scope="module")
def report():
    return run_validation()


def test_every_calibration_section_is_a_case(report):
    """Every row of every calibration section becomes a case (48 graph GEMMs, 10 x 3
    small-kernel ops, 7 x 2 eager streams, 9 graph copies)."""
    groups = {}
    for o in report.outcomes:
        groups[o.case.group] = groups.get(o.case.group, 0) + 1
    assert groups["gemm_graph"] == 48
    assert groups["small_kernels_graph"] == 30
    assert groups["hbm_stream_eager"] + groups["eager_launch_floor"] == 14
    assert groups["copy_engine_graph"] == 9


def test_graph_gemms_mean_error_under_6_percent(report):
    """Cold-L2 graph-timed GEMMs (m = 1..8192): MAPE < 6%, none off by more than 20%."""
    errs = [abs(o.error) for o in report.outcomes if o.case.group == "gemm_graph"]
    assert sum(errs) / len(errs) < 0.06
    assert max(errs) < 0.20


def test_large_hbm_streams_within_10_percent(report):
    """Copies and sums of 256 MiB..4 GiB (eager, launch cost included) within 10%."""
    for o in report.outcomes:
        if o.case.group == "hbm_stream_eager":
            assert abs(o.error) <= 0.10, o.case.id


def test_published_fa3_and_mamf_within_10_percent(report):
    """FA3 prefill (causal and not, 512..16k) and MAMF bf16/fp8 GEMMs within 10%."""
    for o in report.outcomes:
        if o.case.group.startswith("published"):
            assert abs(o.error) <= 0.10, o.case.id


def test_cli_json_and_strict():
    """--json prints one document with MAPE and worst case and exits 0; --strict exits 1
    while any scored case is out of tolerance."""
    r = CliRunner().invoke(main, ["validate", "--json"])
    assert r.exit_code == 0
    doc = json.loads(r.output)
    assert doc["scored"] > 100 and 0 < doc["mape"] < 0.1
    assert doc["worst"]["id"]
    strict = CliRunner().invoke(main, ["validate", "--strict", "--group", "hbm_stream_eager"])
    assert strict.exit_code == 0
    if doc["out_of_tolerance"]:
        assert CliRunner().invoke(main, ["validate", "--strict"]).exit_code == 1
