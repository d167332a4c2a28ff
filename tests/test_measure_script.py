"""The H100 measuring script and the path its output takes through `archsim validate`.

The script itself needs a GPU; here it must import without torch, plan every held-out kind
over the stated ranges, and its case format must be predicted by the whole-model path."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

import archsim
from archsim.core.paths import data_dir
from archsim.validate import _case, load_cases, predict, run_validation


def _model_case(case_id: str, measured_s: float, **params):
    """A whole-model case in the measuring script's output format (one GPU unless given)."""
    raw = {"id": case_id, "kind": "model", "params": {"chips": 1, **params},
           "measured_s": measured_s}  # fmt: skip
    return _case(raw, "synthetic")


@pytest.fixture(scope="module")
def script():
    path = data_dir("validation") / "measure_h100.py"
    spec = importlib.util.spec_from_file_location("measure_h100", path)
    mod = importlib.util.module_from_spec(spec)
    blocked = sys.modules.get("torch", None)
    sys.modules["torch"] = None  # importing torch would now fail: the script must not
    try:
        spec.loader.exec_module(mod)
    finally:
        if blocked is None:
            del sys.modules["torch"]
        else:
            sys.modules["torch"] = blocked
    return mod


def test_plan_covers_the_held_out_ranges(script):
    """8b decode batch 1..512 x ctx 512..8192, 8b prefill 512..8192, 70b layer decode batch
    1..2048 and prefill 16..16384 -- both in the full and the --quick plan."""
    for quick in (False, True):
        cases = dict(script.plan(quick))
        dec = [p for i, p in cases.items() if i.startswith("8b_decode")]
        assert {min(p["batch"] for p in dec), max(p["batch"] for p in dec)} == {1, 512}
        assert {min(p["ctx"] for p in dec), max(p["ctx"] for p in dec)} == {512, 8192}
        pre = [p["seq"] for i, p in cases.items() if i.startswith("8b_prefill")]
        assert min(pre) == 512 and max(pre) == 8192
        l70 = [p for i, p in cases.items() if i.startswith("70b_layer_decode")]
        assert min(p["batch"] for p in l70) == 1 and max(p["batch"] for p in l70) >= 1024
        assert all(p["layers"] == 1 for p in l70)
        lp = [p["seq"] for i, p in cases.items() if i.startswith("70b_layer_prefill")]
        assert min(lp) == 16 and max(lp) == 16384


def test_measured_case_is_predicted_by_the_whole_model_path(tmp_path):
    """A case in the script's output format predicts exactly what `archsim run` gives."""
    params = {
        "model": "llama3-8b",
        "phase": "decode",
        "batch": 4,
        "ctx": 512,
        "layers": None,
        "chips": 1,
        "precision": "bf16",
    }
    doc = {
        "source": "[M] synthetic",
        "cases": [
            {
                "id": "8b_decode/b4/ctx512",
                "group": "8b_decode",
                "kind": "model",
                "timing": "graph",
                "params": params,
                "measured_s": 0.0065,
                "tolerance": 0.1,
                "scored": True,
            }
        ],
    }
    (tmp_path / "measured").mkdir()
    (tmp_path / "measured" / "h100_steps.json").write_text(json.dumps(doc))
    cases = [c for c in load_cases(tmp_path) if c.kind == "model"]
    assert len(cases) == 1
    run = archsim.simulate("h100-like", "llama3-8b", batch=4, ctx=512, chips=1)
    from archsim.config import load_arch
    from archsim.core.registry import get_family

    got = predict(cases[0], get_family("h100-like"), load_arch("h100-like"))
    assert got == run.seconds
    report = run_validation(cases=cases)
    assert report.outcomes[0].error == pytest.approx(run.seconds / 0.0065 - 1)


def test_overrides_reach_whole_model_predictions():
    """`validate --set` changes whole-model predictions too (doubling HBM bandwidth speeds a
    weight-bound batch-1 step)."""
    case = _model_case("x", 0.006, model="llama3-8b", batch=1, ctx=256)
    base = run_validation(cases=[case]).outcomes[0].predicted_s
    fast = run_validation(cases=[case], overrides={"memory.hbm_bw_bytes_per_s": 6e12})
    assert fast.outcomes[0].predicted_s < 0.8 * base


def test_refused_measured_case_is_reported_not_fatal():
    """A measured case archsim cannot simulate (here: 405B on one GPU) is listed as refused
    with its reason; the other cases are still predicted and averaged."""
    ok = _model_case("ok", 0.006, model="llama3-8b", batch=1, ctx=256)
    bad = _model_case("bad", 0.1, model="llama3-405b")
    report = run_validation(cases=[ok, bad])
    assert report.to_dict()["refused"].keys() == {"bad"}
    assert "does not fit" in report.to_dict()["refused"]["bad"]
    assert [o.case.id for o in report.failures if o.refused] == ["bad"]
    assert report.worst.case.id == "ok" and report.mape == abs(report.outcomes[0].error)
    json.dumps(report.to_dict(), allow_nan=False)  # valid JSON: no NaN for refused cases


def test_measured_cases_may_use_all_of_hbm():
    """A case that ran on the GPU fits its 85.0 GB: batch 448 x 1025 tokens of llama3-8b
    (60.2 GB KV + 16.1 GB weights = 76.3 GB) is over a serving engine's 90% reserve
    (76.5 GB usable leaves no room for activations) but is predicted in validation."""
    case = _model_case("b448", 0.03, model="llama3-8b", batch=448, ctx=1024)
    assert not run_validation(cases=[case]).outcomes[0].refused


def test_main_saves_every_case_and_resumes(script, tmp_path, monkeypatch):
    """The measuring loop (GPU calls stubbed): results are on disk after every case, a
    missing output folder is created, a case that fails is skipped, and a rerun after a kill
    measures only what is missing."""
    import types

    class OOM(RuntimeError):
        pass

    fake = types.SimpleNamespace(
        __version__="0.0", version=types.SimpleNamespace(cuda="0"),
        cuda=types.SimpleNamespace(
            is_available=lambda: True, empty_cache=lambda: None, OutOfMemoryError=OOM,
            get_device_properties=lambda i: types.SimpleNamespace(
                name="fake", multi_processor_count=132)))  # fmt: skip
    monkeypatch.setattr(script, "_torch", lambda: fake)
    calls = []

    def measure(model, phase, batch, length, layers, iters):
        calls.append((model, phase, batch, length, layers))
        if model == "llama3-70b" and batch == 1024:
            raise OOM("too big")
        if len(calls) == 5:
            raise KeyboardInterrupt  # the device's time limit, mid-run
        return 1e-3 * batch

    monkeypatch.setattr(script, "measure", measure)
    out = tmp_path / "new" / "steps.json"
    with pytest.raises(KeyboardInterrupt):
        script.main(["--quick", "--out", str(out)])
    first = json.loads(out.read_text())["cases"]
    assert len(first) == 4  # the four cases before the kill were kept
    assert script.main(["--quick", "--out", str(out)]) == 0
    ids = [c["id"] for c in json.loads(out.read_text())["cases"]]
    planned = [cid for cid, _ in script.plan(True)]
    assert ids[:4] == [c["id"] for c in first]  # not measured twice
    assert len(ids) == len(set(ids)) == len(planned) - 1  # all but the OOM case
    assert len(calls) == len(planned) + 1  # the killed case was retried once
