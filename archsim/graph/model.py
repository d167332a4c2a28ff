"""ModelSpec: a transformer's shape, from workloads/*.yaml or a Hugging Face config.json."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from archsim.config.yamlio import load_yaml
from archsim.core.errors import ConfigError, ModelError, did_you_mean
from archsim.core.paths import data_dir

ALIASES = {
    "llama-70b": "llama3-70b",
    "llama-8b": "llama3-8b",
    "llama-405b": "llama3-405b",
    "llama3.1-8b": "llama3-8b",
    "llama3.1-70b": "llama3-70b",
    "llama3.1-405b": "llama3-405b",
    "mixtral": "mixtral-8x7b",
    "deepseek": "deepseek-v3",
}


@dataclass(frozen=True)
class MoESpec:
    """Mixture of experts: routed experts per MoE layer, and which layers stay dense."""

    num_experts: int  # routed experts per MoE layer
    experts_per_token: int  # top-k
    shared_experts: int  # always-on experts (DeepSeek)
    expert_intermediate_size: int  # FFN width of one expert
    first_dense_layers: int  # leading layers with a dense FFN (DeepSeek-V3: 3)


@dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank compressed Q and KV."""

    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@dataclass(frozen=True)
class ModelSpec:
    """Decoder-only transformer shape; every count is per model, every size in elements."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # dense FFN width
    vocab_size: int
    activation: str = "silu"  # silu | gelu
    gated_ffn: bool = True  # SwiGLU: gate and up projections
    attention: str = "gqa"  # mha | gqa | mla
    tie_embeddings: bool = False
    max_position_embeddings: int = 8192
    moe: MoESpec | None = None
    mla: MLASpec | None = None
    source: str = ""

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _positive(spec_name: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelError(f"model {spec_name!r}: {key} must be a positive integer, got {value!r}")
    return value


def _validate(spec: ModelSpec) -> ModelSpec:
    for key in (
        "hidden_size",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "intermediate_size",
        "vocab_size",
    ):
        _positive(spec.name, key, getattr(spec, key))
    if spec.num_heads % spec.num_kv_heads:
        raise ModelError(
            f"model {spec.name!r}: num_heads {spec.num_heads} is not a multiple of "
            f"num_kv_heads {spec.num_kv_heads}"
        )
    if spec.activation not in ("silu", "gelu"):
        raise ModelError(
            f"model {spec.name!r}: activation must be silu or gelu, got {spec.activation!r}"
        )
    if spec.attention not in ("mha", "gqa", "mla"):
        raise ModelError(
            f"model {spec.name!r}: attention must be mha, gqa or mla, got {spec.attention!r}"
        )
    if spec.attention == "mha" and spec.num_kv_heads != spec.num_heads:
        raise ModelError(f"model {spec.name!r}: mha needs num_kv_heads == num_heads")
    if (spec.attention == "mla") != (spec.mla is not None):
        raise ModelError(f"model {spec.name!r}: attention 'mla' and an 'mla:' block go together")
    if spec.mla is not None:
        for f in fields(spec.mla):
            _positive(spec.name, f"mla.{f.name}", getattr(spec.mla, f.name))
    if spec.moe is not None:
        m = spec.moe
        for key in ("num_experts", "experts_per_token", "expert_intermediate_size"):
            _positive(spec.name, f"moe.{key}", getattr(m, key))
        if m.experts_per_token > m.num_experts:
            raise ModelError(
                f"model {spec.name!r}: moe.experts_per_token {m.experts_per_token} "
                f"exceeds moe.num_experts {m.num_experts}"
            )
        if not 0 <= m.first_dense_layers <= spec.num_layers or m.shared_experts < 0:
            raise ModelError(
                f"model {spec.name!r}: moe.first_dense_layers/shared_experts out of range"
            )
    return spec


def _from_mapping(data: dict[str, Any], name: str) -> ModelSpec:
    data = dict(data)
    known = {f.name for f in fields(ModelSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        hint = did_you_mean(unknown[0], known)
        raise ModelError(
            f"model {name!r}: unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}{hint} (valid: {', '.join(sorted(known))})"
        )
    try:
        if data.get("moe") is not None:
            data["moe"] = MoESpec(**{"shared_experts": 0, "first_dense_layers": 0, **data["moe"]})
        if data.get("mla") is not None:
            data["mla"] = MLASpec(**data["mla"])
        data.setdefault("name", name)
        return _validate(ModelSpec(**data))
    except TypeError as exc:
        raise ModelError(f"model {name!r}: {exc}") from None


def model_names() -> list[str]:
    return sorted(p.stem for p in data_dir("workloads").glob("*.yaml"))


def from_hf_config(path: Path) -> ModelSpec:
    """Map a Hugging Face ``config.json`` (Llama, Mistral/Mixtral, DeepSeek-V3) to a ModelSpec."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read Hugging Face config {path}: {exc}") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"Hugging Face config {path}: expected a JSON object at the top level")
    try:
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        if not cfg.get("head_dim") and heads > 0 and hidden % heads:
            raise ModelError(
                f"Hugging Face config {path}: hidden_size {hidden} is not a multiple of "
                f"num_attention_heads {heads} and no head_dim is given"
            )
        spec: dict[str, Any] = {
            "name": cfg.get("_name_or_path") or path.parent.name or path.stem,
            "hidden_size": hidden,
            "num_layers": int(cfg["num_hidden_layers"]),
            "num_heads": heads,
            "num_kv_heads": int(cfg.get("num_key_value_heads") or heads),
            "head_dim": int(cfg.get("head_dim") or hidden // heads),
            "intermediate_size": int(cfg["intermediate_size"]),
            "vocab_size": int(cfg["vocab_size"]),
            "activation": "gelu" if "gelu" in str(cfg.get("hidden_act", "silu")) else "silu",
            "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
            "max_position_embeddings": int(cfg.get("max_position_embeddings", 8192)),
            "source": f"Hugging Face config {path}",
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"Hugging Face config {path}: missing or bad field {exc}") from None
    spec["attention"] = "gqa" if spec["num_kv_heads"] < heads else "mha"
    if cfg.get("kv_lora_rank"):
        spec["attention"] = "mla"
        spec["mla"] = {
            k: int(cfg[k])
            for k in (
                "q_lora_rank",
                "kv_lora_rank",
                "qk_nope_head_dim",
                "qk_rope_head_dim",
                "v_head_dim",
            )
        }
    experts = cfg.get("n_routed_experts") or cfg.get("num_local_experts")
    if experts:
        spec["moe"] = {
            "num_experts": int(experts),
            "experts_per_token": int(cfg.get("num_experts_per_tok", 2)),
            "shared_experts": int(cfg.get("n_shared_experts") or 0),
            "expert_intermediate_size": int(
                cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
            ),
            "first_dense_layers": int(cfg.get("first_k_dense_replace") or 0),
        }
    return _from_mapping(spec, str(path))


def load_model(name: str) -> ModelSpec:
    """A shipped model name or alias, a workloads-style YAML path, or an HF config.json path."""
    path = Path(name)
    if path.suffix == ".json":
        if not path.is_file():
            raise ModelError(f"model config file {name!r} not found")
        return from_hf_config(path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ModelError(f"model file {name!r} not found")
        try:
            return _from_mapping(load_yaml(path), path.stem)
        except ConfigError as exc:
            raise ModelError(str(exc)) from None
    canonical = ALIASES.get(name, name)
    shipped = data_dir("workloads") / f"{canonical}.yaml"
    if not shipped.is_file():
        hint = did_you_mean(name, [*model_names(), *ALIASES])
        raise ModelError(
            f"unknown model {name!r}{hint} (valid: {', '.join(model_names())}; "
            f"aliases: {', '.join(sorted(ALIASES))}; or a config.json path)"
        )
    return _from_mapping(load_yaml(shipped), canonical)
