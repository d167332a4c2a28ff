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
class SSMSpec:
    """A Mamba-2 mixer (SSD: Dao & Gu, arXiv:2405.21060; ``mamba_ssm.modules.mamba2.Mamba2``),
    used by the decoder layers of a hybrid model that are not attention layers.

    in_proj: [hidden] -> [z, x, B, C, dt] of 2 x inner + 2 x groups x state + heads; a causal
    depthwise conv of ``conv_kernel`` taps over x, B, C (``conv_dim`` channels); the scan over
    ``num_heads`` heads of ``head_dim`` channels, each with a [head_dim, state_size] state;
    B and C shared by the heads of a group; a gated RMSNorm over the inner width; out_proj
    back to hidden. Prefill uses the chunked SSD form with chunks of ``chunk_size`` tokens."""

    state_size: int  # N (d_state)
    num_heads: int  # H
    head_dim: int  # P; inner width = H x P
    n_groups: int  # G
    conv_kernel: int  # W
    chunk_size: int  # Q

    @property
    def inner_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the causal conv: x, B and C."""
        return self.inner_size + 2 * self.n_groups * self.state_size

    @property
    def in_proj_size(self) -> int:
        """Output width of in_proj: z, x, B, C and one dt per head."""
        return 2 * self.inner_size + 2 * self.n_groups * self.state_size + self.num_heads


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
    # hybrid state-space models: the layers listed in attention_layers have attention, the
    # others the ssm mixer (None, None: every layer has attention)
    ssm: SSMSpec | None = None
    attention_layers: tuple[int, ...] | None = None
    source: str = ""

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    def has_attention(self, layer: int) -> bool:
        """Whether decoder layer ``layer`` mixes tokens by attention (else by its SSM)."""
        return self.attention_layers is None or layer in self.attention_layers

    @property
    def num_attention_layers(self) -> int:
        return self.num_layers if self.attention_layers is None else len(self.attention_layers)

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
    if (spec.ssm is None) != (spec.attention_layers is None):
        raise ModelError(
            f"model {spec.name!r}: a hybrid model needs both 'ssm:' and 'attention_layers:'"
        )
    if spec.ssm is not None:
        for f in fields(spec.ssm):
            _positive(spec.name, f"ssm.{f.name}", getattr(spec.ssm, f.name))
        if spec.ssm.num_heads % spec.ssm.n_groups:
            raise ModelError(
                f"model {spec.name!r}: ssm.num_heads {spec.ssm.num_heads} is not a multiple of "
                f"ssm.n_groups {spec.ssm.n_groups}"
            )
        layers = spec.attention_layers
        if len(set(layers)) != len(layers) or any(
            isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < spec.num_layers
            for i in layers
        ):
            raise ModelError(
                f"model {spec.name!r}: attention_layers must be distinct layer indices in "
                f"0..{spec.num_layers - 1}, got {list(layers)}"
            )
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
        if data.get("ssm") is not None:
            data["ssm"] = SSMSpec(**data["ssm"])
        if data.get("attention_layers") is not None:
            if not isinstance(data["attention_layers"], list | tuple):
                raise ModelError(f"model {name!r}: attention_layers must be a list of layers")
            data["attention_layers"] = tuple(data["attention_layers"])
        data.setdefault("name", name)
        return _validate(ModelSpec(**data))
    except TypeError as exc:
        raise ModelError(f"model {name!r}: {exc}") from None


def model_names() -> list[str]:
    return sorted(p.stem for p in data_dir("workloads").glob("*.yaml"))


def from_hf_config(path: Path) -> ModelSpec:
    """Map a Hugging Face ``config.json`` (Llama, Mistral/Mixtral, DeepSeek-V3, and Mamba-2
    hybrids that name their attention layers: Bamba, Granite-4.0-H) to a ModelSpec."""
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
    if cfg.get("mamba_d_state"):
        spec.update(_hf_mamba2(cfg, spec))
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


def _hf_mamba2(cfg: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The ``ssm`` block and attention layers of a Bamba-style config (``mamba_*`` keys, the
    attention layers as ``attn_layer_indices`` or a per-layer ``layers_block_type`` /
    ``layer_types`` list; transformers BambaConfig)."""
    try:
        heads = int(cfg["mamba_n_heads"])
        inner = int(cfg.get("mamba_expand", 2)) * spec["hidden_size"]
        head_dim = cfg.get("mamba_d_head", "auto")
        head_dim = inner // heads if head_dim in (None, "auto") else int(head_dim)
        ssm = {
            "state_size": int(cfg["mamba_d_state"]),
            "num_heads": heads,
            "head_dim": head_dim,
            "n_groups": int(cfg.get("mamba_n_groups", 1)),
            "conv_kernel": int(cfg.get("mamba_d_conv", 4)),
            "chunk_size": int(cfg.get("mamba_chunk_size", 256)),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"Mamba-2 config: missing or bad field {exc}") from None
    types = cfg.get("layers_block_type") or cfg.get("layer_types")
    if cfg.get("attn_layer_indices") is not None:
        layers = [int(i) for i in cfg["attn_layer_indices"]]
    elif isinstance(types, list):
        layers = [i for i, t in enumerate(types) if t == "attention"]
    else:
        raise ModelError(
            "Mamba-2 config names no attention layers (attn_layer_indices, layers_block_type "
            "or layer_types)"
        )
    return {"ssm": ssm, "attention_layers": layers}


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
