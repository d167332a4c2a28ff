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


def test_published_h100_cases_within_their_tolerance(report):
    """FA3 and FA2 prefill (causal and not, 512..16k) and MAMF bf16/fp8 GEMMs within 10%;
    NCCL all-reduces (vLLM PR tables, TP 4 and 6, 0.5-4 MiB) within 25%."""
    published = [o for o in report.outcomes if o.case.group.startswith("published")]
    assert len(published) == 27
    for o in published:
        assert o.ok, o.case.id


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


def test_calibration_and_validation_are_reported_apart(report):
    """Each H100 case has a role: the 60 cases constants were read from (24 graph GEMMs of
    qkv and down, 14 eager GEMVs, 9 small kernels, 2 4-GiB streams, the graph gap, MAMF bf16
    and fp8, the 6 FA3 causal points, FA3 and FA2 at 16k non-causal/causal) are calibration;
    every other scored case is validation. The JSON gives MAPE per role; a case file may
    not invent a role."""
    doc = report.to_dict()
    assert doc["scored_by_role"]["calibration"] == 60
    assert doc["scored_by_role"]["validation"] == len(report.predicted) - 60
    for role in ("calibration", "validation"):
        errs = [abs(o.error) for o in report.predicted if o.case.role == role]
        assert doc["mape_by_role"][role] == pytest.approx(sum(errs) / len(errs))
    assert {g["role"] for g in doc["groups"].values()} == {"calibration", "validation"}
    assert doc["mape_by_role"]["validation"] < 0.08


def test_each_preset_validates_its_own_cases():
    """a100-like, h200 and b200 are checked against their own published cases only: the A100
    operators (LLMCompass) and the H200 GEMMs are validation, the MAMF points their presets'
    efficiencies were read from are calibration; b200 has calibration cases only."""
    a100 = run_validation("a100-like").to_dict()
    assert a100["scored_by_role"]["calibration"] == 2
    assert a100["scored_by_role"]["validation"] > 50
    assert a100["mape_by_role"]["validation"] < 0.20
    h200 = run_validation("h200").to_dict()
    assert h200["scored_by_role"] == {"calibration": 1, "validation": 3}
    assert h200["mape_by_role"]["validation"] < 0.10
    b200 = run_validation("b200").to_dict()
    assert b200["scored_by_role"] == {"calibration": 2, "validation": 0}


def test_a_preset_without_cases_is_one_line(tmp_path):
    """A preset nobody measured is refused with one line naming the presets that have cases
    (exit 2 on the command line)."""
    y = tmp_path / "my-gpu.yaml"
    y.write_text("extends: h100-like\n")
    r = CliRunner().invoke(main, ["validate", "--arch", str(y)])
    assert r.exit_code == 2
    assert "no validation cases for 'my-gpu'" in r.output and "a100-like" in r.output
