"""Scenario and precision: what a step is, and what `--precision` means."""

from __future__ import annotations

import pytest

from archsim.core.errors import ScenarioError
from archsim.graph.scenario import Precision, Scenario


@pytest.mark.parametrize(
    "text, triple",
    [
        ("bf16", ("bf16", "bf16", "bf16")),
        ("fp8", ("fp8", "fp8", "fp8")),  # W8A8 with an fp8 KV cache
        ("int8", ("int8", "int8", "int8")),
        ("int4", ("int4", "bf16", "bf16")),  # W4A16, weight-only quantisation
        ("w=int4,kv=fp8", ("int4", "bf16", "fp8")),
        (" FP8 ", ("fp8", "fp8", "fp8")),
    ],
)
def test_precision_presets_and_explicit_form(text, triple):
    """Presets map to (weights, activations, KV); the explicit form defaults to bf16."""
    p = Precision.parse(text)
    assert (p.weights, p.activations, p.kv) == triple


def test_precision_bytes_and_label():
    """Bytes per element: int4 packs two per byte; a mixed precision labels itself."""
    p = Precision.parse("w=int4,a=bf16,kv=fp8")
    assert (p.weight_bytes, p.act_bytes, p.kv_bytes) == (0.5, 2.0, 1.0)
    assert p.label == "w=int4,a=bf16,kv=fp8" and Precision.parse("int4").label == "int4"


@pytest.mark.parametrize("text", ["fp5", "w=int3", "q=bf16", ""])
def test_bad_precision(text):
    """Unknown formats or roles are ScenarioErrors."""
    with pytest.raises(ScenarioError):
        Precision.parse(text)


def test_decode_and_prefill_lengths():
    """decode: batch tokens, attending over ctx + 1; prefill: batch x seq tokens over seq."""
    d = Scenario(phase="decode", batch=8, ctx=100, seq=999)
    assert (d.tokens, d.kv_len, d.new_tokens_per_seq) == (8, 101, 1)
    p = Scenario(phase="prefill", batch=2, seq=512, ctx=999)
    assert (p.tokens, p.kv_len, p.new_tokens_per_seq) == (1024, 512, 512)


@pytest.mark.parametrize(
    "kw", [dict(batch=0), dict(seq=-1), dict(ctx=1.5), dict(batch=True), dict(phase="train")]
)
def test_bad_scenarios(kw):
    """Non-positive or non-integer sizes and unknown phases are refused."""
    with pytest.raises(ScenarioError):
        Scenario(**kw)
