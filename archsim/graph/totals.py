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


def param_count(spec: ModelSpec) -> int:
    """Parameters of a dense or hybrid (attention + Mamba-2) model, counted from the spec
    (not from a graph)."""
    h, d = spec.hidden_size, spec.head_dim
    attn = h * spec.num_heads * d * 2 + h * spec.num_kv_heads * d * 2  # q, o, k, v
    ffn = h * spec.intermediate_size * (3 if spec.gated_ffn else 2)
    per_layer = ffn + 2 * h  # + two RMSNorm gains
    embed = spec.vocab_size * h * (1 if spec.tie_embeddings else 2)
    n_attn = spec.num_attention_layers
    mixers = n_attn * attn
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
    return spec.num_layers * per_layer + mixers + embed + h  # + final norm


def kv_bytes_per_token(spec: ModelSpec, kv_dtype_bytes: float) -> float:
    """KV-cache bytes one token adds across all attention layers: 2 (K, V) x attention
    layers x kv_heads x d."""
    return 2 * spec.num_attention_layers * spec.num_kv_heads * spec.head_dim * kv_dtype_bytes
