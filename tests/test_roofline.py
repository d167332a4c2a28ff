"""`archsim roofline`: the rule's critical batch from datasheet ceilings and parameter
counts (hand counts), the knee of a swept cycle model, and the command's JSON and plot."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from archsim.cli import main
from archsim.core.errors import ArchsimError
from archsim.roofline import SweepPoint, critical_batch, knee, rule, sweep_batches

# h100-like: 4096 bf16 FLOP/clk/SM x 132 SMs x 1.98 GHz = 1.0705e15 FLOP/s over 3.35e12 B/s
H100_RIDGE = 4096 * 132 * 1.98e9 / 3.35e12  # 319.56 FLOP/B


def test_rule_for_a_dense_model_is_the_ridge():
    """llama3-70b at bf16 on an H100: every parameter active, 2 B per weight, so the
    critical batch is the HBM ridge point, 319.6 (the rule's "about 300")."""
    peak, tiers, weights, total, active, wb, _ = rule("h100-like", "llama3-70b")
    assert weights == "hbm" and total == active and wb == 2.0
    hbm = next(t for t in tiers if t.name == "hbm")
    assert hbm.ridge_flops_per_byte == pytest.approx(H100_RIDGE, rel=1e-12)
    assert peak == pytest.approx(4096 * 132 * 1.98e9)


def test_rule_for_deepseek_is_18x_larger():
    """DeepSeek-V3: 671,026,404,352 parameters of which 37,552,282,624 active: the rule's
    batch is 17.87 x the dense one (5,710 on an H100)."""
    _, _, _, total, active, _, _ = rule("h100-like", "deepseek-v3")
    assert total / active == pytest.approx(671_026_404_352 / 37_552_282_624)
    assert H100_RIDGE * total / active == pytest.approx(5710.3, rel=1e-4)


def test_rule_at_fp8_is_unchanged():
    """fp8 doubles the peak (8192 FLOP/clk/SM) and halves the bytes per weight: the ridge
    doubles to 639.1 FLOP/B and the critical batch, ridge x w / 2, stays 319.6."""
    cb_fp8 = rule("h100-like", "llama3-70b", precision="fp8")
    hbm = next(t for t in cb_fp8[1] if t.name == "hbm")
    assert hbm.ridge_flops_per_byte == pytest.approx(2 * H100_RIDGE)
    assert hbm.ridge_flops_per_byte * cb_fp8[5] / 2 == pytest.approx(H100_RIDGE)


def test_rule_on_an_sram_machine_uses_its_sram():
    """groq-like has no DRAM: its weights stream from SRAM, 88 slices x 2 ports x 320 B x
    0.9 GHz = 50.69 TB/s, against 4 planes x 320^2 x 2 x 0.25 x 0.9 GHz = 184.3 TFLOP/s
    at bf16: a ridge of 3.64 FLOP/B."""
    peak, tiers, weights, *_ = rule("groq-like", "llama3-70b")
    assert weights == "sram"
    sram = next(t for t in tiers if t.name == "sram")
    assert sram.bytes_per_s == pytest.approx(88 * 2 * 320 * 0.9e9)
    assert sram.ridge_flops_per_byte == pytest.approx(4 * 320**2 * 2 * 0.25 / (88 * 2 * 320))


def test_knee_interpolates_in_log_batch():
    """Floor 1.0 (batch 1); 1.05 at 4 and 1.2 at 8: +10% is a third of the way from 4 to
    8 in log2(batch), batch 2^(2 + 1/3) = 5.04; a sweep that never rises has no knee."""
    pts = [SweepPoint(b, s, s, b / s, "memory", 1) for b, s in
           ((1, 1.0), (2, 1.0), (4, 1.05), (8, 1.2))]  # fmt: skip
    batch, at = knee(pts, 0.1)
    assert batch == pytest.approx(2 ** (2 + 1 / 3)) and at == pytest.approx(1.1)
    assert knee(pts[:3], 0.1) == (None, None)
    assert sweep_batches(12) == [1, 2, 4, 8, 12]


def test_one_llama3_70b_layer_on_one_h100_bends_where_a_real_one_does():
    """One llama3-70b decoder layer on one H100 at context 128: a real H100's step is flat
    from batch 1 to about 128, about 30% higher at 256 and linear from about 320. The cycle
    model: under +10% up to 128, +20..50% at 256, more than doubled at 512; its knee
    (+10%) lies between 64 and 256, near the rule's 320."""
    cb = critical_batch(
        "h100-like", "llama3-70b", ctx=128, layers=1, chips=1, max_batch=512, rise=0.1
    )
    rel = {p.batch: p.period_s / cb.floor_s for p in cb.points}
    assert rel[128] < 1.1 + 0.01 and 1.2 < rel[256] < 1.5 and rel[512] > 2.0
    assert 64 < cb.knee_batch < 256
    assert cb.rule_batch == pytest.approx(H100_RIDGE)


def test_kv_pressure_stops_the_sweep():
    """llama3-70b on 2 H100s at context 2048: 141 GB of weights leave room for the KV cache
    of about 16 sequences (671 MB each), so the sweep stops at the first batch that does
    not fit and says so."""
    cb = critical_batch("h100-like", "llama3-70b", ctx=2048, chips=2, max_batch=64)
    assert cb.max_batch_run == 16 and cb.points[-1].seconds is None
    assert "does not fit" in cb.points[-1].error


def test_roofline_refuses_a_model_that_never_fits():
    """One H100 cannot hold llama3-70b even at batch 1: one error line."""
    with pytest.raises(ArchsimError, match="does not decode"):
        critical_batch("h100-like", "llama3-70b", chips=1, max_batch=4)


def test_roofline_cli_json_and_plot(tmp_path):
    """--json prints one document with the rule, the tiers, the knee and the points;
    --plot writes a figure."""
    out = tmp_path / "cb.png"
    r = CliRunner().invoke(
        main,
        ["roofline", "--arch", "h100-like", "--model", "llama3-8b", "--layers", "1",
         "--chips", "1", "--max-batch", "16", "--ctx", "128", "--json", "--plot", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["rule_batch"] == pytest.approx(H100_RIDGE) and doc["sparsity"] == 1.0
    assert {"tiers", "knee_batch", "floor_s", "points", "chips"} <= set(doc)
    assert [p["batch"] for p in doc["points"]] == [1, 2, 4, 8, 16]
    assert out.stat().st_size > 0
