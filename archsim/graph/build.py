"""build_graph: ModelSpec x Scenario -> LayerGraph (networkx DiGraph of Op nodes).

FLOP counts use 2 FLOPs per multiply-accumulate. Attention FLOPs count Q K^T and P V
(4 * heads * head_dim per query-key pair), halved-plus-diagonal for causal prefill
(FlashAttention-2 paper, arXiv:2307.08691, section 4). Elementwise kernels are counted in
bytes only (their FLOPs are negligible next to the GEMMs).

Mixture-of-experts layers (Mixtral, arXiv:2401.04088; DeepSeek-V3, arXiv:2412.19437 section
2.1.2) replace the FFN by a router, the routed experts (one ``expert_ffn`` op whose rows,
experts touched and weight bytes follow the expected routing of archsim/graph/moe.py) and
DeepSeek's shared experts; DeepSeek-V3 keeps a dense FFN in its first 3 layers. Multi-head
latent attention (DeepSeek-V2 arXiv:2405.04434 section 2.1, V3 section 2.1.1) caches one
latent vector of kv_lora_rank + rope dims per token and layer.
"""

from __future__ import annotations

from dataclasses import replace

import networkx as nx

from archsim.core.errors import ModelError
from archsim.graph.model import ModelSpec
from archsim.graph.moe import ceil_rows, expert_load
from archsim.graph.ops import Op, OpKind
from archsim.graph.scenario import DTYPE_BYTES, Scenario

ELEM_BYTES = DTYPE_BYTES["bf16"]  # activations between kernels are stored in bf16


def _matmul(op_id: str, layer: int, m: int, n: int, k: int, sc: Scenario, tp_role: str) -> Op:
    """``tp_role``: column (split n across chips) or row (split k, then all-reduce)."""
    p = sc.precision
    return Op(
        id=op_id,
        kind=OpKind.MATMUL,
        layer=layer,
        shape={"m": m, "n": n, "k": k},
        flops=2.0 * m * n * k,
        params=n * k,
        weight_bytes=n * k * p.weight_bytes,  # [k, n] weights
        act_in_bytes=m * k * p.act_bytes,  # [m, k] inputs
        act_out_bytes=m * n * ELEM_BYTES,  # [m, n] outputs
        weight_dtype=p.weights,
        act_dtype=p.activations,
        tp_role=tp_role,
    )


def _elementwise(
    op_id: str,
    kind: OpKind,
    layer: int,
    m: int,
    n: int,
    reads: int,
    params: int = 0,
    sc: Scenario | None = None,
) -> Op:
    """``reads`` input tensors of [m, n] and one [m, n] output, all bf16."""
    wbytes = params * sc.precision.weight_bytes if (sc and params) else 0.0
    return Op(
        id=op_id,
        kind=kind,
        layer=layer,
        shape={"m": m, "n": n},
        params=params,
        weight_bytes=wbytes,
        act_in_bytes=reads * m * n * ELEM_BYTES,
        act_out_bytes=m * n * ELEM_BYTES,
    )


def _attention(op_id: str, layer: int, spec: ModelSpec, sc: Scenario) -> Op:
    b, d = sc.batch, spec.head_dim
    heads, kv_heads = spec.num_heads, spec.num_kv_heads
    q_len, kv_len = sc.new_tokens_per_seq, sc.kv_len
    causal = sc.phase == "prefill"
    # query-key pairs per (sequence, head): causal prefill sees i+1 keys at query i
    pairs = q_len * (q_len + 1) / 2 if causal else q_len * kv_len
    kv_tok_bytes = 2 * kv_heads * d * sc.precision.kv_bytes  # K and V of one token, one layer
    return Op(
        id=op_id,
        kind=OpKind.ATTENTION,
        layer=layer,
        shape={
            "batch": b,
            "heads": heads,
            "kv_heads": kv_heads,
            "head_dim": d,
            "q_len": q_len,
            "kv_len": kv_len,
            "causal": int(causal),
        },
        flops=4.0 * b * heads * d * pairs,
        act_in_bytes=b * q_len * heads * d * ELEM_BYTES,  # Q [b, q_len, heads, d]
        act_out_bytes=b * q_len * heads * d * ELEM_BYTES,  # O
        kv_read_bytes=b * kv_len * kv_tok_bytes,  # K, V [b, kv_len, kv_heads, d]
        kv_write_bytes=b * q_len * kv_tok_bytes,  # new K, V appended to the cache
        act_dtype=sc.precision.activations,
        weight_dtype=sc.precision.kv,
        tp_role="heads",
    )


def ssm_state_bytes_per_seq(spec: ModelSpec) -> float:
    """Recurrent state one sequence keeps per SSM layer: the scan state [heads, head_dim,
    state] and the conv's last ``conv_kernel - 1`` inputs [conv_dim], in the model's bf16
    (mamba_ssm ``allocate_inference_cache``: the in_proj weights' dtype; vLLM keeps
    ``d_conv - 1`` conv inputs)."""
    s = spec.ssm
    return (s.inner_size * s.state_size + (s.conv_kernel - 1) * s.conv_dim) * ELEM_BYTES


def ssm_scan_flops_per_seq(spec: ModelSpec, sc: Scenario) -> float:
    """FLOPs of one sequence's conv and scan in one SSM layer this step.

    conv: 2 x conv_kernel FLOPs per channel and token. Decode (one token, the recurrence),
    per state element of every head: the decay (1 FLOP), the rank-1 update dt x B (2) and the
    readout C . state (2). Prefill (chunked SSD, arXiv:2405.21060 section 6), per chunk of
    q tokens: C B^T per group ([q, N] @ [N, q]), the masked (L o C B^T) X per head ([q, q] @
    [q, P]), the chunk's state B^T X per head ([N, q] @ [q, P]) and the outputs from the state
    carried in, C S per head ([q, N] @ [N, P]); the blocks are computed whole (the kernels
    mask, not skip), the O(heads x state) recurrence between chunks is neglected."""
    s = spec.ssm
    h, p, n, grp = s.num_heads, s.head_dim, s.state_size, s.n_groups
    q = sc.new_tokens_per_seq
    conv = 2.0 * s.conv_kernel * s.conv_dim * q
    if sc.phase == "decode":
        return conv + 5.0 * h * p * n
    full, rest = divmod(q, s.chunk_size)
    squares = full * s.chunk_size**2 + rest**2  # sum over chunks of (chunk length)^2
    return conv + 2.0 * squares * (grp * n + h * p) + 4.0 * q * h * n * p


def _ssm_scan(op_id: str, layer: int, spec: ModelSpec, sc: Scenario) -> Op:
    """The conv and scan of one SSM layer for the whole batch: reads x, B, C and dt from
    in_proj, writes y [tokens, inner]; a decode step reads and rewrites each sequence's
    state, a prefill (from an empty cache) writes it."""
    s, b, t = spec.ssm, sc.batch, sc.tokens
    state = b * ssm_state_bytes_per_seq(spec)
    params = s.conv_dim * (s.conv_kernel + 1) + 3 * s.num_heads  # conv w + b; A, D, dt bias
    return Op(
        id=op_id,
        kind=OpKind.SSM_SCAN,
        layer=layer,
        shape={
            "batch": b,
            "q_len": sc.new_tokens_per_seq,
            "m": t,
            "n": s.inner_size,
            "heads": s.num_heads,
            "head_dim": s.head_dim,
            "state": s.state_size,
            "groups": s.n_groups,
            "conv": s.conv_kernel,
            "conv_dim": s.conv_dim,
            "chunk": s.chunk_size,
        },
        flops=b * ssm_scan_flops_per_seq(spec, sc),
        params=params,
        weight_bytes=params * sc.precision.weight_bytes,
        act_in_bytes=t * (s.conv_dim + s.num_heads) * ELEM_BYTES,  # x, B, C and dt
        act_out_bytes=t * s.inner_size * ELEM_BYTES,  # y
        state_read_bytes=state if sc.phase == "decode" else 0.0,
        state_write_bytes=state,
        weight_dtype=sc.precision.weights,
        act_dtype=sc.precision.activations,
        tp_role="state_heads",
    )


def mla_kv_bytes_per_token_layer(spec: ModelSpec, kv_dtype_bytes: float) -> float:
    """MLA caches one latent per token and layer: the compressed KV (kv_lora_rank) and the
    decoupled RoPE key (qk_rope_head_dim), shared by every head (DeepSeek-V2 section 2.1.3)."""
    return (spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim) * kv_dtype_bytes


def mla_attention_flops_per_seq(spec: ModelSpec, sc: Scenario) -> float:
    """FLOPs of one sequence's MLA attention in one layer this step, per the path each phase
    takes (DeepSeek-V2 section 2.1.2 / appendix: W^UK absorbed into the query, W^UV into
    the output at inference):

    decode (absorbed): q_nope [heads, nope] @ W^UK [nope, latent] per head; scores over the
    latent + rope dims (MQA over one shared 576-wide key); P @ latent [kv_len, latent]; the
    result [heads, latent] @ W^UV [latent, v] per head.
    prefill (not absorbed): the latent of every position expanded to K_nope and V by
    kv_b_proj [latent, heads x (nope + v)], then causal attention with q/k dims nope + rope
    and v dims v_dim (4 x pairs x heads x (qk + v) / 2)."""
    m, h = spec.mla, spec.num_heads
    q_len, kv_len = sc.new_tokens_per_seq, sc.kv_len
    if sc.phase == "decode":
        absorb = 2.0 * q_len * h * m.kv_lora_rank * (m.qk_nope_head_dim + m.v_head_dim)
        scores = 2.0 * q_len * h * kv_len * (m.kv_lora_rank + m.qk_rope_head_dim)
        return absorb + scores + 2.0 * q_len * h * kv_len * m.kv_lora_rank
    pairs = q_len * (q_len + 1) / 2
    expand = 2.0 * kv_len * m.kv_lora_rank * h * (m.qk_nope_head_dim + m.v_head_dim)
    qk = m.qk_nope_head_dim + m.qk_rope_head_dim
    return expand + 2.0 * pairs * h * (qk + m.v_head_dim)


def _mla_attention(op_id: str, layer: int, spec: ModelSpec, sc: Scenario) -> Op:
    """Attention over the latent cache with kv_b_proj's per-head up-projections inside (its
    weights [latent, heads x (nope + v)] are owned here: split by heads under tensor
    parallelism, while the latent cache, one per token, is replicated on every chip)."""
    m, b, h = spec.mla, sc.batch, spec.num_heads
    q_len, kv_len = sc.new_tokens_per_seq, sc.kv_len
    decode = sc.phase == "decode"
    latent_tok = mla_kv_bytes_per_token_layer(spec, sc.precision.kv_bytes)
    params = m.kv_lora_rank * h * (m.qk_nope_head_dim + m.v_head_dim)
    qk = m.qk_nope_head_dim + m.qk_rope_head_dim
    return Op(
        id=op_id,
        kind=OpKind.MLA_ATTENTION,
        layer=layer,
        shape={
            "batch": b,
            "heads": h,
            "kv_heads": 1,
            "head_dim": qk,
            "q_len": q_len,
            "kv_len": kv_len,
            "causal": int(not decode),
            "latent": m.kv_lora_rank,
            "rope": m.qk_rope_head_dim,
            "nope": m.qk_nope_head_dim,
            "v_dim": m.v_head_dim,
            "absorbed": int(decode),
        },
        flops=b * mla_attention_flops_per_seq(spec, sc),
        params=params,
        weight_bytes=params * sc.precision.weight_bytes,
        act_in_bytes=b * q_len * h * qk * ELEM_BYTES,  # Q [b, q_len, heads, nope + rope]
        act_out_bytes=b * q_len * h * m.v_head_dim * ELEM_BYTES,  # O [b, q_len, heads, v]
        kv_read_bytes=b * kv_len * latent_tok,  # the latent cache [b, kv_len, latent + rope]
        kv_write_bytes=b * q_len * latent_tok,  # this step's latents appended
        weight_dtype=sc.precision.weights,
        act_dtype=sc.precision.activations,
        tp_role="heads",
    )


def _mla_mixer(i: int, spec: ModelSpec, sc: Scenario) -> list[Op]:
    """DeepSeek-V3 attention as vLLM/SGLang run it: one fused down-projection of the hidden
    state to the query latent, the KV latent and the RoPE key (q_a_proj and
    kv_a_proj_with_mqa, replicated on every tensor-parallel chip), their RMSNorms, the
    query up-projection (column split), RoPE on the query's and the key's rope dims, the
    latent attention, and o_proj (row split)."""
    m, t, h, heads = spec.mla, sc.tokens, spec.hidden_size, spec.num_heads
    qk = m.qk_nope_head_dim + m.qk_rope_head_dim
    down = m.q_lora_rank + m.kv_lora_rank + m.qk_rope_head_dim
    return [
        _elementwise(f"L{i}.attn_norm", OpKind.NORM, i, t, h, 1, params=h, sc=sc),
        _matmul(f"L{i}.qkv_a_proj", i, t, down, h, sc, "replicated"),
        _elementwise(f"L{i}.q_a_norm", OpKind.NORM, i, t, m.q_lora_rank, 1, m.q_lora_rank, sc),
        _elementwise(f"L{i}.kv_a_norm", OpKind.NORM, i, t, m.kv_lora_rank, 1, m.kv_lora_rank, sc),
        _matmul(f"L{i}.q_b_proj", i, t, heads * qk, m.q_lora_rank, sc, "column"),
        replace(
            _elementwise(f"L{i}.rope", OpKind.ROPE, i, t, (heads + 1) * m.qk_rope_head_dim, 1),
            tp_role="column",
        ),
        _mla_attention(f"L{i}.attention", i, spec, sc),
        _matmul(f"L{i}.o_proj", i, t, h, heads * m.v_head_dim, sc, "row"),
        _elementwise(f"L{i}.attn_residual", OpKind.RESIDUAL, i, t, h, 2),
    ]


def is_moe_layer(spec: ModelSpec, layer: int) -> bool:
    """Whether decoder layer ``layer`` has routed experts (DeepSeek-V3's first 3 are dense)."""
    return spec.moe is not None and layer >= spec.moe.first_dense_layers


def _router(op_id: str, layer: int, spec: ModelSpec, sc: Scenario) -> Op:
    """The gate GEMM [tokens, hidden] @ [hidden, experts] (bf16 logits; DeepSeek-V3 keeps its
    gate in full precision), the scores (softmax or sigmoid) and the top-k; it writes each
    token's expert ids (int32) and gates (fp32)."""
    t, h, e, k = sc.tokens, spec.hidden_size, spec.moe.num_experts, spec.moe.experts_per_token
    return Op(
        id=op_id,
        kind=OpKind.ROUTER,
        layer=layer,
        shape={"m": t, "n": e, "k": h, "topk": k},
        flops=2.0 * t * e * h,
        params=e * h,
        weight_bytes=e * h * sc.precision.weight_bytes,
        act_in_bytes=t * h * sc.precision.act_bytes,
        act_out_bytes=t * k * 8.0,  # ids int32 + gates fp32
        weight_dtype=sc.precision.weights,
        act_dtype=sc.precision.activations,
        tp_role="replicated",
    )


def expert_ffn_op(
    op_id: str, layer: int, spec: ModelSpec, sc: Scenario, load, hidden_rows: int
) -> Op:
    """The routed experts of ``load`` (an ExpertLoad) as one op: gate/up and down grouped
    GEMMs over the rows each expert gets, the activation between them, and the gated sum
    of each token's expert outputs. ``hidden_rows``: tokens whose [hidden] states the op
    reads and whose summed outputs it writes.

    FLOPs: 2 x rows x hidden x width x 3 (gated: gate, up, down) for the expected rows.
    Weights read: the experts touched (expected), each hidden x width x 3 (2 ungated)."""
    h, f = spec.hidden_size, spec.moe.expert_intermediate_size
    mats = 3 if spec.gated_ffn else 2
    p = sc.precision
    rows = load.routed()
    return Op(
        id=op_id,
        kind=OpKind.EXPERT_FFN,
        layer=layer,
        shape={
            "m": ceil_rows(rows) if rows > 0 else 0,
            "n": h,
            "k": f,
            "experts": load.experts,
            "active": round(load.active()),
            "tokens": load.tokens,
            "topk": load.top_k,
            "gated": int(spec.gated_ffn),
            "out_rows": hidden_rows,
        },
        flops=2.0 * rows * h * f * mats,
        params=load.experts * h * f * mats,
        weight_bytes=load.active() * h * f * mats * p.weight_bytes,
        act_in_bytes=hidden_rows * h * p.act_bytes + hidden_rows * load.top_k * 8.0,
        act_out_bytes=hidden_rows * h * ELEM_BYTES,
        weight_dtype=p.weights,
        act_dtype=p.activations,
        tp_role="experts",
        experts=load,
    )


def expert_ffn_part(op: Op, first: int, stop: int, op_id: str | None = None) -> Op:
    """The experts ``first .. stop - 1`` of an expert_ffn op (a rank's or a stage's share):
    rows and FLOPs follow the rows those experts get, weight bytes the experts of them
    touched, parameters their count, and activations the tokens that reach at least one of
    them (T x (1 - P(a token misses them all)))."""
    whole, part = op.experts, op.experts.subset(first, stop)
    rows, active = whole.routed(), whole.active()
    f_rows = part.routed() / rows if rows > 0 else 0.0
    f_active = part.active() / active if active > 0 else 0.0
    f_reach = (1.0 - part.miss()) / (1.0 - whole.miss())
    return replace(
        op,
        id=op_id or op.id,
        shape={
            **op.shape,
            "m": ceil_rows(part.routed()) if part.routed() > 0 else 0,
            "experts": part.experts,
            "active": round(part.active()),
            "out_rows": ceil_rows(op.dim("out_rows") * f_reach),
        },
        flops=op.flops * f_rows,
        params=round(op.params * part.experts / whole.experts),
        weight_bytes=op.weight_bytes * f_active,
        act_in_bytes=op.act_in_bytes * f_reach,
        act_out_bytes=op.act_out_bytes * f_reach,
        experts=part,
    )


def _moe_ffn(i: int, spec: ModelSpec, sc: Scenario) -> list[Op]:
    """Router, routed experts, and (DeepSeek) the shared experts as one dense gated FFN of
    shared_experts x expert width; every token's output is their sum."""
    t, h, moe = sc.tokens, spec.hidden_size, spec.moe
    load = expert_load(moe.num_experts, moe.experts_per_token, t, sc.routing_skew)
    ops = [
        _router(f"L{i}.router", i, spec, sc),
        expert_ffn_op(f"L{i}.experts", i, spec, sc, load, t),
    ]
    if moe.shared_experts:
        width = moe.shared_experts * moe.expert_intermediate_size
        mats = 2 if spec.gated_ffn else 1
        ops += [
            _matmul(f"L{i}.shared_gate_up", i, t, mats * width, h, sc, "column"),
            replace(
                _elementwise(f"L{i}.shared_act", OpKind.ACTIVATION, i, t, width, mats),
                shape={"m": t, "n": width, "gated": int(spec.gated_ffn)},
                tp_role="column",
            ),
            _matmul(f"L{i}.shared_down", i, t, h, width, sc, "row"),
        ]
    return ops


def _attention_mixer(i: int, spec: ModelSpec, sc: Scenario) -> list[Op]:
    t, h, d = sc.tokens, spec.hidden_size, spec.head_dim
    q_dim, kv_dim = spec.num_heads * d, spec.num_kv_heads * d
    return [
        _elementwise(f"L{i}.attn_norm", OpKind.NORM, i, t, h, 1, params=h, sc=sc),
        _matmul(f"L{i}.qkv_proj", i, t, q_dim + 2 * kv_dim, h, sc, "column"),
        replace(_elementwise(f"L{i}.rope", OpKind.ROPE, i, t, q_dim + kv_dim, 1), tp_role="column"),
        _attention(f"L{i}.attention", i, spec, sc),
        _matmul(f"L{i}.o_proj", i, t, h, q_dim, sc, "row"),
        _elementwise(f"L{i}.attn_residual", OpKind.RESIDUAL, i, t, h, 2),
    ]


def _ssm_mixer(i: int, spec: ModelSpec, sc: Scenario) -> list[Op]:
    """Mamba-2: norm, in_proj, conv + scan, gated RMSNorm (y x silu(z), then RMSNorm over
    the inner width: reads y and z), out_proj, residual."""
    t, h, inner = sc.tokens, spec.hidden_size, spec.ssm.inner_size
    gate_norm = _elementwise(f"L{i}.ssm_gate_norm", OpKind.NORM, i, t, inner, 2, inner, sc)
    return [
        _elementwise(f"L{i}.mixer_norm", OpKind.NORM, i, t, h, 1, params=h, sc=sc),
        _matmul(f"L{i}.in_proj", i, t, spec.ssm.in_proj_size, h, sc, "column"),
        _ssm_scan(f"L{i}.ssm_scan", i, spec, sc),
        replace(gate_norm, shape={"m": t, "n": inner, "gated": 1}, tp_role="column"),
        _matmul(f"L{i}.out_proj", i, t, h, inner, sc, "row"),
        _elementwise(f"L{i}.mixer_residual", OpKind.RESIDUAL, i, t, h, 2),
    ]


def _dense_ffn(i: int, spec: ModelSpec, sc: Scenario) -> list[Op]:
    t, h = sc.tokens, spec.hidden_size
    ffn = spec.intermediate_size
    return [
        _matmul(f"L{i}.gate_up_proj", i, t, (2 if spec.gated_ffn else 1) * ffn, h, sc, "column"),
        # silu(gate) * up reads [t, 2*ffn] and writes [t, ffn]; plain gelu reads [t, ffn]
        replace(
            _elementwise(f"L{i}.act", OpKind.ACTIVATION, i, t, ffn, 2 if spec.gated_ffn else 1),
            shape={"m": t, "n": ffn, "gated": int(spec.gated_ffn)},
            tp_role="column",
        ),
        _matmul(f"L{i}.down_proj", i, t, h, ffn, sc, "row"),
    ]


def _mixer(i: int, spec: ModelSpec, sc: Scenario) -> list[Op]:
    if not spec.has_attention(i):
        return _ssm_mixer(i, spec, sc)
    return _mla_mixer(i, spec, sc) if spec.mla is not None else _attention_mixer(i, spec, sc)


def _decoder_layer(g: nx.DiGraph, i: int, x_in: str | None, spec: ModelSpec, sc: Scenario) -> str:
    """Add one pre-norm decoder layer (attention, MLA or a hybrid's SSM mixer, then the
    dense or mixture-of-experts FFN); returns the id of its output op."""
    t, h = sc.tokens, spec.hidden_size
    mixer = _mixer(i, spec, sc)
    residual = mixer[-1].id
    norm = _elementwise(f"L{i}.ffn_norm", OpKind.NORM, i, t, h, 1, params=h, sc=sc)
    moe = is_moe_layer(spec, i)
    ffn = _moe_ffn(i, spec, sc) if moe else _dense_ffn(i, spec, sc)
    # the residual add reads the block input and every branch's output
    branches = 2 if moe and spec.moe.shared_experts else 1
    out = _elementwise(f"L{i}.ffn_residual", OpKind.RESIDUAL, i, t, h, 1 + branches)
    chain = [*mixer, norm, *(ffn[:2] if moe else ffn), out]
    prev = x_in
    for op in chain:
        g.add_node(op.id, op=op)
        if prev is not None:
            g.add_edge(prev, op.id)
        prev = op.id
    if moe and len(ffn) > 2:  # the shared experts: a branch beside the routed ones
        g.remove_edge(ffn[1].id, out.id)
        branch = norm.id
        for op in ffn[2:]:
            g.add_node(op.id, op=op)
            g.add_edge(branch, op.id)
            branch = op.id
        g.add_edge(ffn[1].id, out.id)
        g.add_edge(branch, out.id)
    # residual adds also read the layer's (or the mixer block's) input
    if x_in is not None:
        g.add_edge(x_in, residual)
    g.add_edge(residual, out.id)
    if not spec.has_attention(i):  # the gated norm reads z straight from in_proj
        g.add_edge(f"L{i}.in_proj", f"L{i}.ssm_gate_norm")
    return prev


def build_graph(spec: ModelSpec, sc: Scenario, layers: int | None = None) -> nx.DiGraph:
    """The step's op graph. ``layers=None``: the whole model (embedding, all decoder layers,
    final norm, lm_head). ``layers=N``: only the first N decoder layers."""
    if sc.kv_len > spec.max_position_embeddings:
        what = f"ctx {sc.ctx} + 1 new token" if sc.phase == "decode" else f"seq {sc.seq}"
        raise ModelError(
            f"{what} exceeds {spec.name}'s max_position_embeddings "
            f"{spec.max_position_embeddings} (the longest context it was trained for)"
        )
    if layers is not None and not 0 < layers <= spec.num_layers:
        raise ModelError(
            f"layers must be between 1 and {spec.num_layers} for {spec.name}, got {layers}"
        )
    g = nx.DiGraph(model=spec, scenario=sc, whole_model=layers is None)
    n_layers = spec.num_layers if layers is None else layers
    h, v = spec.hidden_size, spec.vocab_size
    prev: str | None = None
    if layers is None:
        p = sc.precision
        embed = Op(
            id="embed",
            kind=OpKind.EMBEDDING,
            layer=-1,
            shape={"m": sc.tokens, "n": h, "vocab": v},
            params=v * h,
            weight_bytes=min(sc.tokens, v) * h * p.weight_bytes,  # gathered rows only
            act_out_bytes=sc.tokens * h * ELEM_BYTES,
            weight_dtype=p.weights,
            tp_role="vocab",
        )
        g.add_node(embed.id, op=embed)
        prev = embed.id
    for i in range(n_layers):
        prev = _decoder_layer(g, i, prev, spec, sc)
    if layers is None:
        # logits only for the last position of each sequence, as serving engines compute
        tail = [
            _elementwise("final_norm", OpKind.NORM, n_layers, sc.tokens, h, 1, params=h, sc=sc),
            _matmul("lm_head", n_layers, sc.batch, v, h, sc, "column"),
        ]
        if spec.tie_embeddings:
            tail[1] = replace(tail[1], params=0)  # shares the embedding table
        for op in tail:
            g.add_node(op.id, op=op)
            g.add_edge(prev, op.id)
            prev = op.id
    return g


def ops_in_order(g: nx.DiGraph) -> list[Op]:
    """Ops in a deterministic topological order (insertion order breaks ties). When the
    insertion order is itself topological (every edge goes forward, as the graph builder and
    the partition passes make it), it is that order: the lexicographic sort would take the
    lowest unvisited index at every step, whose predecessors all come before it."""
    order = {n: i for i, n in enumerate(g.nodes)}
    if all(order[u] < order[v] for u, v in g.edges):
        nodes = g.nodes
        return [nodes[n]["op"] for n in order]
    return [g.nodes[n]["op"] for n in nx.lexicographical_topological_sort(g, key=order.get)]
