"""ModelSpec loading: shipped YAMLs, aliases, Hugging Face config.json, and validation."""

from __future__ import annotations

import json

import pytest

from archsim.core.errors import ModelError
from archsim.graph.model import load_model, model_names


def test_shipped_models_load():
    """Every shipped workload parses and validates, including the MoE and MLA fields."""
    names = model_names()
    for required in (
        "llama3-8b",
        "llama3-70b",
        "llama3-405b",
        "llama2-70b",
        "mixtral-8x7b",
        "deepseek-v3",
    ):
        assert required in names
    for name in names:
        assert load_model(name).name == name


def test_alias_resolves_to_llama3_70b():
    """`llama-70b` is an alias of llama3-70b."""
    assert load_model("llama-70b") == load_model("llama3-70b")


def test_moe_and_mla_fields_parsed():
    """DeepSeek-V3's MoE and MLA blocks carry the published config values."""
    ds = load_model("deepseek-v3")
    assert ds.moe.num_experts == 256 and ds.moe.experts_per_token == 8
    assert ds.moe.shared_experts == 1 and ds.moe.first_dense_layers == 3
    assert ds.mla.kv_lora_rank == 512 and ds.mla.qk_rope_head_dim == 64
    mx = load_model("mixtral-8x7b")
    assert mx.moe.num_experts == 8 and mx.moe.experts_per_token == 2


def test_unknown_model_lists_valid_names():
    """An unknown model name is a ModelError naming the valid ones."""
    with pytest.raises(ModelError, match="llama3-8b"):
        load_model("gpt-17")


# Llama-3.1-8B's Hugging Face config.json (the fields archsim reads)
HF_LLAMA3_8B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "max_position_embeddings": 131072,
}


def _hf(tmp_path, cfg):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return load_model(str(path))


def test_hf_config_json(tmp_path):
    """A Hugging Face config.json maps onto the same spec as the shipped YAML."""
    spec, ref = _hf(tmp_path, HF_LLAMA3_8B), load_model("llama3-8b")
    for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                "intermediate_size", "vocab_size", "attention"):  # fmt: skip
        assert getattr(spec, key) == getattr(ref, key), key


def test_hf_config_moe(tmp_path):
    """An HF Mixtral config yields an MoE spec (num_local_experts, num_experts_per_tok)."""
    mixtral = {**HF_LLAMA3_8B, "vocab_size": 32000, "num_local_experts": 8,
               "num_experts_per_tok": 2}  # fmt: skip
    spec = _hf(tmp_path, mixtral)
    assert spec.moe.num_experts == 8 and spec.moe.experts_per_token == 2


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"num_kv_heads": 7}, "not a multiple"),
        ({"hidden_size": -1}, "positive integer"),
        ({"activation": "relu6"}, "activation"),
        ({"bogus_key": 1}, "unknown key"),
    ],
)
def test_bad_model_yaml(tmp_path, patch, message):
    """Inconsistent or unknown fields in a model YAML are rejected with a clear message."""
    import yaml

    from archsim.core.paths import data_dir

    base = yaml.safe_load((data_dir("workloads") / "llama3-8b.yaml").read_text())
    base.update(patch)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(base))
    with pytest.raises(ModelError, match=message):
        load_model(str(path))


def test_missing_config_file():
    """A config path that does not exist is a ModelError, not a traceback."""
    with pytest.raises(ModelError, match="not found"):
        load_model("/nonexistent/config.json")


def test_hf_config_mla_deepseek(tmp_path):
    """A DeepSeek-V3 config.json (kv_lora_rank, n_routed_experts, first_k_dense_replace) maps
    onto the shipped deepseek-v3 spec's MLA and MoE blocks."""
    cfg = {"hidden_size": 7168, "num_hidden_layers": 61, "num_attention_heads": 128,
           "num_key_value_heads": 128, "intermediate_size": 18432, "vocab_size": 129280,
           "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
           "qk_rope_head_dim": 64, "v_head_dim": 128, "n_routed_experts": 256,
           "num_experts_per_tok": 8, "n_shared_experts": 1, "moe_intermediate_size": 2048,
           "first_k_dense_replace": 3}  # fmt: skip
    spec, ref = _hf(tmp_path, cfg), load_model("deepseek-v3")
    assert spec.attention == "mla" and spec.mla == ref.mla and spec.moe == ref.moe
