"""Op: one node of the layer graph, with its shapes, FLOPs and bytes per operand."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from enum import StrEnum

from archsim.graph.moe import ExpertLoad

_LAYER_PREFIX = re.compile(r"^L\d+\.")
_SLICE_SUFFIX = re.compile(r"(\.c\d+)+$")


class OpKind(StrEnum):
    EMBEDDING = "embedding"  # row gather from the token table
    MATMUL = "matmul"  # [m, k] @ [k, n] with a weight operand
    BMM = "bmm"  # batch x ([m, k] @ [k, n]), both operands activations
    ATTENTION = "attention"  # softmax(Q K^T) V over the KV cache
    NORM = "norm"  # RMSNorm (or LayerNorm: shape["layernorm"] = 1) over rows of width n
    SOFTMAX = "softmax"  # softmax over rows of width n
    ROPE = "rope"  # rotary embedding on q and k
    ACTIVATION = "activation"  # silu(gate) * up (shape["gated"] = 1), or gelu
    RESIDUAL = "residual"  # x + f(x)
    ALL_REDUCE = "all_reduce"  # tensor-parallel sum across the chips of a stage
    SEND_RECV = "send_recv"  # activations to the next pipeline stage
    # a Mamba-2 mixer's core (SSD, arXiv:2405.21060): the short causal depthwise conv over
    # x, B, C with its SiLU, then the selective state-space scan with the D skip; it reads and
    # writes a recurrent state per sequence (state_read_bytes / state_write_bytes)
    SSM_SCAN = "ssm_scan"
    # mixture of experts (archsim/graph/moe.py): the router's gate GEMM [tokens, hidden] @
    # [hidden, experts] with its softmax/sigmoid and top-k; the routed experts' FFNs as grouped
    # GEMMs over the rows each expert gets (gate/up, activation, down and the weighted sum of
    # each token's expert outputs), ``Op.experts`` holding the expected rows per expert
    ROUTER = "router"
    EXPERT_FFN = "expert_ffn"
    # a collective in which every rank sends a different part of its data to each peer:
    # MoE dispatch and combine, and the all-gather / reduce-scatter that bracket an
    # expert-parallel MoE block (shape["pattern"]: A2A_PATTERNS)
    ALL_TO_ALL = "all_to_all"
    # multi-head latent attention (DeepSeek-V2/V3): attention over a compressed latent KV
    # cache [tokens, kv_lora_rank + rope dims] shared by every head, with the per-head
    # up-projections of K and V (kv_b_proj) inside the op: absorbed into the query and the
    # output in decode, expanding the latent into K and V in prefill
    MLA_ATTENTION = "mla_attention"


# shape["pattern"] of an all_to_all op
A2A_DISPATCH, A2A_COMBINE, A2A_ALL_GATHER, A2A_REDUCE_SCATTER = range(4)
A2A_PATTERNS = ("moe_dispatch", "moe_combine", "all_gather", "reduce_scatter")


@dataclass(frozen=True)
class Op:
    """One operation for the whole batch of the step.

    Shapes follow the op kind: matmul ``m x k @ k x n``; elementwise ops ``m`` rows of ``n``;
    attention has ``batch, heads, kv_heads, head_dim, q_len, kv_len, causal`` in ``shape``; an
    SSM scan ``batch, q_len, m`` (tokens), ``n`` (heads x head_dim), ``heads, head_dim, state,
    groups, conv, conv_dim, chunk``; a router ``m`` tokens, ``n`` experts, ``k`` hidden,
    ``topk``; an expert FFN ``m`` rows (token-expert pairs, rounded up), ``n`` hidden, ``k`` the
    expert's FFN width, ``experts`` held, ``active`` (experts touched, rounded), ``tokens``,
    ``topk``, ``gated``; an MLA attention ``batch, heads, kv_heads`` (1: the latent is shared),
    ``q_len, kv_len, causal, latent, rope, nope, v_dim, absorbed``; an all-to-all ``m`` rows
    it sends, ``n`` hidden, ``ranks``, ``pattern`` (A2A_PATTERNS), ``recv_bytes``.
    Bytes are what the op must read/write at least once (its compulsory traffic); a cycle
    model adds the re-reads its tiling causes.
    """

    id: str
    kind: OpKind
    layer: int  # decoder layer, -1 before the first (embedding), num_layers after (lm_head)
    shape: dict[str, int] = field(default_factory=dict)
    flops: float = 0.0
    params: int = 0  # parameters this op owns (stored once per chip that holds the op)
    weight_bytes: float = 0.0  # weight bytes read per step
    act_in_bytes: float = 0.0  # activation bytes read
    act_out_bytes: float = 0.0  # activation bytes written
    kv_read_bytes: float = 0.0  # KV-cache bytes read
    kv_write_bytes: float = 0.0  # KV-cache bytes appended
    # recurrent state (an SSM's scan and conv states) read at the start of the step and
    # written at its end; the state written is what stays resident between steps, as KV does
    state_read_bytes: float = 0.0
    state_write_bytes: float = 0.0
    link_bytes: float = 0.0  # bytes each chip sends (communication ops)
    weight_dtype: str = "bf16"
    act_dtype: str = "bf16"
    # how tensor parallelism splits it: column|row|heads|vocab|state_heads (an SSM scan: its
    # heads and their states)|replicated
    tp_role: str = "replicated"
    stage: int = 0  # pipeline stage after partitioning
    group: int = 1  # chips that run this op together (tensor-parallel degree)
    # an expert_ffn op: the experts it holds and the expected rows each gets this step
    experts: ExpertLoad | None = None

    @property
    def mem_bytes(self) -> float:
        """All compulsory memory traffic of the op."""
        return (
            self.weight_bytes
            + self.act_in_bytes
            + self.act_out_bytes
            + self.kv_read_bytes
            + self.kv_write_bytes
            + self.state_read_bytes
            + self.state_write_bytes
        )

    def dim(self, key: str) -> int:
        return int(self.shape.get(key, 0))

    @property
    def role(self) -> str:
        """What the op is in the layer, for breakdowns: ``L3.qkv_proj`` -> qkv_proj, a slice
        ``L3.gate_up_proj.c2`` -> gate_up_proj; communication ops by their kind."""
        if self.kind in (OpKind.ALL_REDUCE, OpKind.SEND_RECV):
            return self.kind.value
        if self.kind == OpKind.ALL_TO_ALL:
            return A2A_PATTERNS[self.dim("pattern")]
        return _SLICE_SUFFIX.sub("", _LAYER_PREFIX.sub("", self.id))


_OP_FIELDS = frozenset(f.name for f in fields(Op))


def replace(op: Op, **changes) -> Op:
    """``dataclasses.replace`` for an Op, as a field copy (an Op has no ``__post_init__``):
    the partition passes make thousands of them per whole-model plan."""
    unknown = set(changes) - _OP_FIELDS
    if unknown:
        raise TypeError(f"Op has no field(s) {', '.join(sorted(unknown))}")
    new = object.__new__(Op)
    new.__dict__.update(op.__dict__)
    new.__dict__.update(changes)
    return new
