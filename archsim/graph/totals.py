"""Analytical totals of a graph (FLOPs, parameters, weight and KV bytes)."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from archsim.graph.model import ModelSpec


@dataclass(frozen=True)
class GraphTotals:
    flops: float
    params: int
    weight_bytes: float  # weights read this step
    kv_read_bytes: float
    kv_write_bytes: float
    mem_bytes: float  # all compulsory traffic
    state_read_bytes: float = 0.0  # recurrent (SSM) state read
    state_write_bytes: float = 0.0  # recurrent (SSM) state written (what stays resident)


def graph_totals(g: nx.DiGraph) -> GraphTotals:
    ops = [d["op"] for _, d in g.nodes(data=True)]
    return GraphTotals(
        flops=sum(o.flops for o in ops),
        params=sum(o.params for o in ops),
        weight_bytes=sum(o.weight_bytes for o in ops),
        kv_read_bytes=sum(o.kv_read_bytes for o in ops),
        kv_write_bytes=sum(o.kv_write_bytes for o in ops),
        mem_bytes=sum(o.mem_bytes for o in ops),
        state_read_bytes=sum(o.state_read_bytes for o in ops),
        state_write_bytes=sum(o.state_write_bytes for o in ops),
    )


def _attention_params(spec: ModelSpec) -> int:
    """One attention layer's parameters: q, k, v, o; MLA: the fused down-projections
    (q_a, kv_a with the rope key), their two RMSNorm gains, q_b, kv_b and o."""
    h, d = spec.hidden_size, spec.head_dim
    if spec.mla is None:
        return h * spec.num_heads * d * 2 + h * spec.num_kv_heads * d * 2
    m, heads = spec.mla, spec.num_heads
    qk = m.qk_nope_head_dim + m.qk_rope_head_dim
    return (
        h * (m.q_lora_rank + m.kv_lora_rank + m.qk_rope_head_dim)
        + m.q_lora_rank
        + m.kv_lora_rank
        + m.q_lora_rank * heads * qk
        + m.kv_lora_rank * heads * (m.qk_nope_head_dim + m.v_head_dim)
        + heads * m.v_head_dim * h
    )


def expert_params(spec: ModelSpec) -> int:
    """One routed (or shared) expert's parameters: gate, up and down (up, down ungated)."""
    return spec.hidden_size * spec.moe.expert_intermediate_size * (3 if spec.gated_ffn else 2)


def _ffn_params(spec: ModelSpec, routed_per_layer: int) -> int:
    """FFN parameters of all layers, counting ``routed_per_layer`` routed experts in each
    MoE layer (all of them for the model's total, top-k for the active parameters)."""
    h = spec.hidden_size
    dense = h * spec.intermediate_size * (3 if spec.gated_ffn else 2)
    if spec.moe is None:
        return spec.num_layers * dense
    m = spec.moe
    moe_layers = spec.num_layers - m.first_dense_layers
    per_moe = (routed_per_layer + m.shared_experts) * expert_params(spec) + h * m.num_experts
    return m.first_dense_layers * dense + moe_layers * per_moe


def param_count(spec: ModelSpec) -> int:
    """Parameters of a dense, hybrid (attention + Mamba-2), MLA or mixture-of-experts model,
    counted from the spec (not from a graph)."""
    return _count(spec, None if spec.moe is None else spec.moe.num_experts)


def active_param_count(spec: ModelSpec) -> int:
    """Parameters one token uses: MoE layers count their top-k routed experts (plus shared
    experts and the router); the embedding and lm_head count whole, as the published
    figures do (Mixtral 12.9B of 46.7B; DeepSeek-V3 37B of 671B). Dense: param_count."""
    return _count(spec, None if spec.moe is None else spec.moe.experts_per_token)


def _count(spec: ModelSpec, routed_per_layer: int | None) -> int:
    h = spec.hidden_size
    ffn = _ffn_params(spec, routed_per_layer or 0)
    per_layer = 2 * h  # two RMSNorm gains
    embed = spec.vocab_size * h * (1 if spec.tie_embeddings else 2)
    n_attn = spec.num_attention_layers
    mixers = n_attn * _attention_params(spec)
    if spec.ssm is not None:
        s = spec.ssm
        # in_proj, conv weights and bias, A_log / D / dt_bias, gated-norm gain, out_proj
        ssm = (
            h * s.in_proj_size
            + s.conv_dim * (s.conv_kernel + 1)
            + 3 * s.num_heads
            + s.inner_size
            + s.inner_size * h
        )
        mixers += (spec.num_layers - n_attn) * ssm
    return spec.num_layers * per_layer + ffn + mixers + embed + h  # + final norm


def kv_bytes_per_token(spec: ModelSpec, kv_dtype_bytes: float) -> float:
    """KV-cache bytes one token adds across all attention layers: 2 (K, V) x attention
    layers x kv_heads x d; MLA: one latent of kv_lora_rank + rope dims per layer, shared by
    every head (DeepSeek-V3 at bf16: 61 x 576 x 2 B = 70,272 B)."""
    if spec.mla is not None:
        m = spec.mla
        return spec.num_attention_layers * (m.kv_lora_rank + m.qk_rope_head_dim) * kv_dtype_bytes
    return 2 * spec.num_attention_layers * spec.num_kv_heads * spec.head_dim * kv_dtype_bytes
