"""Partition: how many chips, how the model is split, and the communication that implies.

Tensor parallelism follows Megatron-LM (Shoeybi et al., arXiv:1909.08053, section 3):
qkv and gate/up projections are split by output columns, o and down projections by input
rows and followed by an all-reduce of the [tokens, hidden] activations; attention is split by
heads (KV heads are replicated when there are fewer than chips); the embedding is split by
vocabulary rows and all-reduced. Pipeline parallelism gives each stage a contiguous run of
decoder layers (the embedding joins the first stage, the final norm and lm_head the last)
and sends the [tokens, hidden] activations from one stage to the next.
"""

from __future__ import annotations

import math
from dataclasses import replace

import networkx as nx

from archsim.core.errors import CapacityError, ScenarioError
from archsim.core.plan import MemoryNeed, Plan
from archsim.graph.build import ELEM_BYTES
from archsim.graph.model import ModelSpec
from archsim.graph.ops import Op, OpKind
from archsim.graph.scenario import Scenario
from archsim.graph.totals import kv_bytes_per_token


def split_layers(n_layers: int, pp: int) -> tuple[tuple[int, int], ...]:
    """Contiguous, balanced runs of layers per stage; earlier stages take the remainder."""
    base, extra = divmod(n_layers, pp)
    out, first = [], 0
    for s in range(pp):
        stop = first + base + (1 if s < extra else 0)
        out.append((first, stop))
        first = stop
    return tuple(out)


def memory_need(g: nx.DiGraph) -> MemoryNeed:
    """Resident bytes: all weights, the KV cache of every sequence, the recurrent state of
    every sequence in SSM layers (as resident as KV), and peak activations.

    Activations: the widest op's input and output for all tokens of the step (bf16), plus
    fp32 logits — the working set a serving engine reserves beside weights and KV.
    """
    spec: ModelSpec = g.graph["model"]
    sc: Scenario = g.graph["scenario"]
    ops = [d["op"] for _, d in g.nodes(data=True)]
    layers = len({o.layer for o in ops if 0 <= o.layer < spec.num_layers})
    weights = sum(o.params for o in ops) * sc.precision.weight_bytes
    kv_tokens = sc.batch * sc.kv_len
    if spec.ssm is None:
        kv = kv_tokens * kv_bytes_per_token(spec, sc.precision.kv_bytes) * layers / spec.num_layers
    else:  # only the attention layers of a hybrid hold a KV cache
        per_layer = kv_bytes_per_token(spec, sc.precision.kv_bytes) / spec.num_attention_layers
        kv = kv_tokens * per_layer * sum(o.kind == OpKind.ATTENTION for o in ops)
    state = sum(o.state_write_bytes for o in ops)
    widest = max(
        (o.act_in_bytes + o.act_out_bytes for o in ops if o.kind != OpKind.ATTENTION), default=0.0
    )
    logits = 4.0 * sc.batch * spec.vocab_size if g.graph.get("whole_model") else 0.0
    return MemoryNeed(
        weight_bytes=weights, kv_bytes=kv, act_bytes=widest + logits, state_bytes=state
    )


def _stage_need(
    g: nx.DiGraph, stage_layers: tuple[tuple[int, int], ...], tp: int, need: MemoryNeed
) -> float:
    """Bytes the fullest chip must hold: its stage's weights, KV and recurrent state / tp,
    plus activations."""
    sc: Scenario = g.graph["scenario"]
    n_layers = sum(stop - first for first, stop in stage_layers)
    ops = [d["op"] for _, d in g.nodes(data=True)]
    n_attn = sum(o.kind == OpKind.ATTENTION for o in ops)
    worst = 0.0
    for s, (first, stop) in enumerate(stage_layers):
        params, attn, state = 0, 0, 0.0
        for o in ops:
            owner = 0 if o.layer < 0 else (len(stage_layers) - 1 if o.layer >= n_layers else None)
            if owner == s or (owner is None and first <= o.layer < stop):
                params += o.params
                attn += o.kind == OpKind.ATTENTION
                state += o.state_write_bytes
        # the stage's share of the KV cache: its attention layers (every layer of a dense model)
        kv = need.kv_bytes * attn / max(n_attn, 1)
        worst = max(worst, (params * sc.precision.weight_bytes + kv + state) / tp + need.act_bytes)
    return worst


def _tp_options(spec: ModelSpec, tp_max: int) -> list[int]:
    """Powers of two up to tp_max that divide the attention heads."""
    return [t for t in (2**i for i in range(int(math.log2(tp_max)) + 1)) if spec.num_heads % t == 0]


def plan_memory_bound(
    g: nx.DiGraph,
    capacity_bytes: float,
    chips: int | None,
    tp_max: int,
    max_chips: int | None = None,
) -> Plan:
    """Fewest chips whose memory holds weights + KV + activations (chips=None), or check
    that the requested chip count holds them. Tensor parallelism first, up to ``tp_max``
    (the scale-up domain), then pipeline stages."""
    spec: ModelSpec = g.graph["model"]
    n_layers = len(
        {d["op"].layer for _, d in g.nodes(data=True) if 0 <= d["op"].layer < spec.num_layers}
    )
    need = memory_need(g)
    tps = _tp_options(spec, tp_max)

    def plan_for(tp: int, pp: int) -> tuple[Plan, float]:
        stages = split_layers(n_layers, pp)
        plan = Plan(
            tp=tp, pp=pp, stage_layers=stages, need=need, capacity_bytes_per_chip=capacity_bytes
        )
        return plan, _stage_need(g, stages, tp, need)

    if chips is not None:
        if chips <= 0:
            raise ScenarioError(f"chips must be a positive integer or 'auto', got {chips}")
        tp = max(t for t in tps if chips % t == 0)
        pp = chips // tp
        if pp > n_layers:
            raise ScenarioError(
                f"{chips} chips would need {pp} pipeline stages for {n_layers} layers"
            )
        plan, per_chip = plan_for(tp, pp)
        if per_chip > capacity_bytes:
            raise CapacityError(
                f"{spec.name} does not fit on {chips} chip(s): the fullest chip needs "
                f"{per_chip / 1e9:.1f} GB (weights {need.weight_bytes / 1e9:.1f} GB + KV "
                f"{need.kv_bytes / 1e9:.1f} GB in all) but holds {capacity_bytes / 1e9:.1f} GB"
            )
        return plan
    limit = max_chips or 1 << 20
    candidates = [(t, 1) for t in tps] + [(tps[-1], p) for p in range(2, n_layers + 1)]
    for tp, pp in candidates:
        if tp * pp > limit:
            break
        plan, per_chip = plan_for(tp, pp)
        if per_chip <= capacity_bytes:
            return plan
    tp, pp = tps[-1], min(n_layers, max(1, limit // tps[-1]))
    _, fullest = plan_for(tp, pp)  # the finest split tried
    if need.act_bytes >= capacity_bytes:
        why = (
            f"the step's working activations ({need.act_bytes / 1e9:.1f} GB, held by every "
            f"chip) alone exceed a chip's {capacity_bytes / 1e9:.1f} GB"
        )
    else:
        why = (
            f"split {tp} x {pp} ways the fullest chip still needs {fullest / 1e9:.1f} GB "
            f"({need.act_bytes / 1e9:.1f} GB of it activations, held by every chip) but "
            f"holds {capacity_bytes / 1e9:.1f} GB"
        )
    raise CapacityError(
        f"{spec.name} does not fit on any number of chips up to {tp * pp}: {why}; "
        "use a smaller batch or sequence"
    )


def _scaled(op: Op, f: float, **shape: int) -> Op:
    """The share ``f`` of an op that one chip runs, with its new shape entries."""
    return replace(
        op,
        shape={**op.shape, **shape},
        flops=op.flops * f,
        params=round(op.params * f),
        weight_bytes=op.weight_bytes * f,
        act_in_bytes=op.act_in_bytes * f,
        act_out_bytes=op.act_out_bytes * f,
        kv_read_bytes=op.kv_read_bytes * f,
        kv_write_bytes=op.kv_write_bytes * f,
        state_read_bytes=op.state_read_bytes * f,
        state_write_bytes=op.state_write_bytes * f,
    )


def shard(op: Op, tp: int) -> Op:
    """The part of ``op`` one chip of a ``tp``-way tensor-parallel group runs."""
    if tp == 1 or op.tp_role == "replicated":
        return replace(op, group=tp)
    if op.tp_role == "column":
        n = math.ceil(op.dim("n") / tp)
        out = _scaled(op, n / op.dim("n"), n=n)
        if op.kind == OpKind.MATMUL:  # every chip reads the whole input
            out = replace(out, act_in_bytes=op.act_in_bytes)
        return replace(out, group=tp)
    if op.tp_role == "row":
        k = math.ceil(op.dim("k") / tp)
        out = _scaled(op, k / op.dim("k"), k=k)
        return replace(out, act_out_bytes=op.act_out_bytes, group=tp)  # partial sums, full size
    if op.tp_role == "heads":
        heads = op.dim("heads") // tp
        kv_heads = max(1, op.dim("kv_heads") // tp)
        f_q, f_kv = heads / op.dim("heads"), kv_heads / op.dim("kv_heads")
        out = _scaled(op, f_q, heads=heads, kv_heads=kv_heads)
        return replace(
            out,
            kv_read_bytes=op.kv_read_bytes * f_kv,
            kv_write_bytes=op.kv_write_bytes * f_kv,
            group=tp,
        )
    if op.tp_role == "state_heads":
        # an SSM scan: each chip runs its heads with their states (Mamba-2 tensor parallelism,
        # mamba_ssm Mamba2 process_group); B and C, shared by a group of heads, are not
        # replicated here when there are fewer groups than chips (2 x groups x state of the
        # conv's channels, under 3% of a Bamba-9B layer's scan)
        heads = math.ceil(op.dim("heads") / tp)
        f = heads / op.dim("heads")
        return replace(_scaled(op, f, heads=heads, n=heads * op.dim("head_dim")), group=tp)
    if op.tp_role == "vocab":
        vocab = math.ceil(op.dim("vocab") / tp)
        out = _scaled(op, vocab / op.dim("vocab"), vocab=vocab)
        return replace(out, act_out_bytes=op.act_out_bytes, group=tp)
    raise ValueError(f"unknown tp_role {op.tp_role!r} of {op.id}")


def _comm(op_id: str, kind: OpKind, src: Op, nbytes: float, stage: int, group: int) -> Op:
    return Op(
        id=op_id,
        kind=kind,
        layer=src.layer,
        shape={"m": src.dim("m"), "n": src.dim("n")},
        link_bytes=nbytes,
        act_in_bytes=nbytes,
        act_out_bytes=nbytes,
        stage=stage,
        group=group,
    )


def partition(g: nx.DiGraph, plan: Plan) -> nx.DiGraph:
    """The graph one chip of each stage runs: sharded ops plus all-reduce and send/recv ops.

    Chips of a tensor-parallel group are symmetric, so each stage is represented by one chip.
    """
    out = nx.DiGraph(**g.graph, plan=plan)
    rename: dict[str, str] = {}  # op id -> id of the node that now carries its output
    for node in nx.topological_sort(g):
        op: Op = g.nodes[node]["op"]
        stage = plan.stage_of_layer(op.layer)
        local = replace(shard(op, plan.tp), stage=stage)
        out.add_node(node, op=local)
        for pred in g.predecessors(node):
            src = rename[pred]
            src_stage = out.nodes[src]["op"].stage
            if src_stage != stage:  # activations cross to the next pipeline stage
                x: Op = out.nodes[src]["op"]
                hop = _comm(
                    f"{src}.send_s{src_stage}",
                    OpKind.SEND_RECV,
                    x,
                    x.dim("m") * x.dim("n") * ELEM_BYTES,
                    src_stage,
                    1,
                )
                if hop.id not in out:
                    out.add_node(hop.id, op=hop)
                    out.add_edge(src, hop.id)
                src = hop.id
            out.add_edge(src, node)
        rename[node] = node
        if plan.tp > 1 and op.tp_role in ("row", "vocab"):
            m, n = op.dim("m"), op.dim("n")
            ar = _comm(
                f"{node}.all_reduce", OpKind.ALL_REDUCE, op, m * n * ELEM_BYTES, stage, plan.tp
            )
            out.add_node(ar.id, op=ar)
            out.add_edge(node, ar.id)
            rename[node] = ar.id
    return out
