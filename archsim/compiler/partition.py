"""Partition: how many chips, how the model is split, and the communication that implies.

Tensor parallelism follows Megatron-LM (Shoeybi et al., arXiv:1909.08053, section 3):
qkv and gate/up projections are split by output columns, o and down projections by input
rows and followed by an all-reduce of the [tokens, hidden] activations; attention is split by
heads (KV heads are replicated when there are fewer than chips); the embedding is split by
vocabulary rows and all-reduced. Pipeline parallelism gives each stage a contiguous run of
decoder layers (the embedding joins the first stage, the final norm and lm_head the last)
and sends the [tokens, hidden] activations from one stage to the next.

Mixture of experts. ``plan.ep == 1``: each routed expert is split like a dense FFN (its width
over the chips; one all-reduce after the experts, one after the shared experts). ``plan.ep``
> 1 (= tp): expert parallelism with a sequence-parallel MoE block, as Megatron-Core's
all-to-all token dispatcher runs it (and DeepSeek-V3's prefill, arXiv:2412.19437 section
3.4.1): the o_proj partial sums are reduce-scattered so that each chip owns T/ep of the T
tokens; each chip normalises and routes its tokens, dispatches each to the chips holding its
experts (all-to-all), runs the grouped GEMMs of its E/ep experts over the rows it received,
returns the outputs to the tokens' owners (all-to-all), adds its shared experts (replicated
weights) and the residual for its tokens, and all-gathers the layer output for the next
tensor-parallel attention. Attention stays tensor-parallel (MLA's latent cache, one per
token, is replicated on every chip). The chips of a stage are no longer symmetric: the
partitioned graph is the hottest rank (archsim.graph.moe.hottest_rank: the most rows on its
experts), the one every other rank waits for at the combine; its time is the step's. Byte
and FLOP totals multiplied by the ranks are then exact for uniform routing and an upper
bound for a skewed one.
"""

from __future__ import annotations

import math

import networkx as nx

from archsim.core.errors import CapacityError, ScenarioError
from archsim.core.plan import MemoryNeed, Plan
from archsim.graph.build import ELEM_BYTES, expert_ffn_part
from archsim.graph.model import ModelSpec
from archsim.graph.moe import hottest_rank, rank_blocks, rank_traffic, tokens_owned
from archsim.graph.ops import (
    A2A_ALL_GATHER,
    A2A_COMBINE,
    A2A_DISPATCH,
    A2A_REDUCE_SCATTER,
    Op,
    OpKind,
    replace,
)
from archsim.graph.scenario import Scenario
from archsim.graph.totals import kv_bytes_per_token

ATTENTION_KINDS = (OpKind.ATTENTION, OpKind.MLA_ATTENTION)
# ops of an expert-parallel MoE layer that run on the tokens a chip owns (sequence parallel)
SEQUENCE_PARALLEL_ROLES = frozenset(
    {"attn_residual", "ffn_norm", "router", "shared_gate_up", "shared_act", "shared_down",
     "ffn_residual"}
)  # fmt: skip


def expert_parallel_degree(spec: ModelSpec | None, tp: int) -> int:
    """Expert parallelism over the ``tp`` chips of a stage for an MoE model whose experts
    divide evenly among them; 1 otherwise (experts tensor-split)."""
    if spec is None or spec.moe is None or tp == 1 or spec.moe.num_experts % tp:
        return 1
    return tp


def replicated_on_chip(op: Op, ep: int) -> bool:
    """Whether every chip of the stage holds the op's weights whole: the replicated ops
    that own weights (MLA's down-projections, the router; RMSNorm gains stay counted as
    split, as they always were: they are a few KB), and under expert parallelism the
    shared experts, which each chip runs on its own tokens."""
    if op.params and op.tp_role == "replicated" and op.kind != OpKind.NORM:
        return True
    return ep > 1 and op.role in SEQUENCE_PARALLEL_ROLES and op.kind == OpKind.MATMUL


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
        (o.act_in_bytes + o.act_out_bytes for o in ops if o.kind not in ATTENTION_KINDS),
        default=0.0,
    )
    logits = 4.0 * sc.batch * spec.vocab_size if g.graph.get("whole_model") else 0.0
    return MemoryNeed(
        weight_bytes=weights, kv_bytes=kv, act_bytes=widest + logits, state_bytes=state
    )


def _stage_need(
    g: nx.DiGraph,
    stage_layers: tuple[tuple[int, int], ...],
    tp: int,
    need: MemoryNeed,
    ep: int = 1,
) -> float:
    """Bytes the fullest chip must hold: its stage's weights, KV and recurrent state / tp
    (whole where every chip holds them: replicated weights, MLA's latent cache), plus
    activations."""
    sc: Scenario = g.graph["scenario"]
    n_layers = sum(stop - first for first, stop in stage_layers)
    ops = [d["op"] for _, d in g.nodes(data=True)]
    n_attn = sum(o.kind in ATTENTION_KINDS for o in ops)
    worst = 0.0
    for s, (first, stop) in enumerate(stage_layers):
        params, whole, attn, latent, state = 0, 0, 0, 0, 0.0
        for o in ops:
            owner = 0 if o.layer < 0 else (len(stage_layers) - 1 if o.layer >= n_layers else None)
            if owner == s or (owner is None and first <= o.layer < stop):
                if replicated_on_chip(o, ep):
                    whole += o.params
                else:
                    params += o.params
                attn += o.kind == OpKind.ATTENTION
                latent += o.kind == OpKind.MLA_ATTENTION
                state += o.state_write_bytes
        # the stage's share of the KV cache: its attention layers (every layer of a dense model)
        kv = need.kv_bytes * attn / max(n_attn, 1)
        kv_whole = need.kv_bytes * latent / max(n_attn, 1)
        wb = sc.precision.weight_bytes
        chip = (params * wb + kv + state) / tp + whole * wb + kv_whole + need.act_bytes
        worst = max(worst, chip)
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
        ep = expert_parallel_degree(spec, tp)
        plan = Plan(
            tp=tp,
            pp=pp,
            stage_layers=stages,
            need=need,
            capacity_bytes_per_chip=capacity_bytes,
            ep=ep,
        )
        return plan, _stage_need(g, stages, tp, need, ep)

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
    if op.tp_role == "experts":
        # every routed expert split like a dense FFN: its width over the chips; each chip
        # reads all the routed rows and writes partial sums of every token (all-reduced)
        width = math.ceil(op.dim("k") / tp)
        out = _scaled(op, width / op.dim("k"), k=width)
        return replace(out, act_in_bytes=op.act_in_bytes, act_out_bytes=op.act_out_bytes, group=tp)
    raise ValueError(f"unknown tp_role {op.tp_role!r} of {op.id}")


def token_share(op: Op, own: int, tokens: int, group: int) -> Op:
    """The op on the ``own`` of ``tokens`` tokens a chip owns in a sequence-parallel block:
    rows, FLOPs and activations in proportion; weights whole (every chip holds them)."""
    f = own / tokens
    return replace(
        op,
        shape={**op.shape, "m": own},
        flops=op.flops * f,
        act_in_bytes=op.act_in_bytes * f,
        act_out_bytes=op.act_out_bytes * f,
        group=group,
    )


def a2a_op(
    op_id: str, src: Op, pattern: int, rows: int, sent: float, received: float, ranks: int
) -> Op:
    """An all-to-all of ``sent`` bytes out of and ``received`` bytes into this chip (the
    busier direction sets its time on links that carry both at once)."""
    return Op(
        id=op_id,
        kind=OpKind.ALL_TO_ALL,
        layer=src.layer,
        shape={
            "m": rows,
            "n": src.dim("n"),
            "ranks": ranks,
            "pattern": pattern,
            "recv_bytes": round(received),
        },
        link_bytes=sent,
        act_in_bytes=sent,
        act_out_bytes=received,
        stage=src.stage,
        group=ranks,
    )


class ExpertParallelLayer:
    """How the hottest rank of an ``ep``-chip group runs one MoE layer: the tokens it owns,
    the experts it holds with the rows they get, and the bytes of each collective.

    Hand counts (tests/test_moe.py): the dispatch sends each owned token's hidden state
    once to each other rank holding one of its experts; the rank receives from the tokens
    the others own those that pick one of its experts; the combine moves them back in bf16."""

    def __init__(self, experts: Op, spec: ModelSpec, sc: Scenario, ep: int) -> None:
        load = experts.experts
        self.ep, self.spec, self.sc = ep, spec, sc
        self.tokens = load.tokens
        self.rank = hottest_rank(load, ep)
        self.traffic = rank_traffic(load, ep, self.rank)
        self.own = tokens_owned(self.tokens, ep, self.rank)
        a, b = rank_blocks(load.num_experts, ep)[self.rank]
        self.first_expert, self.stop_expert = a, b

    def hidden_bytes(self, dtype_bytes: float) -> float:
        return self.spec.hidden_size * dtype_bytes

    def experts_op(self, op: Op) -> Op:
        """The rank's experts over the rows every rank sends them (its own tokens included);
        it reads the hidden state of each token that reached it and writes one partial sum
        per such token."""
        return replace(expert_ffn_part(op, self.first_expert, self.stop_expert), group=self.ep)

    def dispatch(self, router: Op) -> Op:
        t, ab = self.traffic, self.sc.precision.act_bytes
        return a2a_op(
            f"{router.id}.dispatch", router, A2A_DISPATCH, self.own,
            t.sent * self.hidden_bytes(ab), t.received * self.hidden_bytes(ab), self.ep,
        )  # fmt: skip

    def combine(self, experts: Op) -> Op:
        t = self.traffic
        return a2a_op(
            f"{experts.id}.combine", experts, A2A_COMBINE, self.own,
            t.received * self.hidden_bytes(ELEM_BYTES), t.sent * self.hidden_bytes(ELEM_BYTES),
            self.ep,
        )  # fmt: skip

    def reduce_scatter(self, o_proj: Op) -> Op:
        """Partial sums of the other ranks' tokens out, this rank's from every other in."""
        row = self.hidden_bytes(ELEM_BYTES)
        sent, received = (self.tokens - self.own) * row, self.own * row * (self.ep - 1)
        return a2a_op(
            f"{o_proj.id}.reduce_scatter", o_proj, A2A_REDUCE_SCATTER, self.own, sent,
            received, self.ep,
        )  # fmt: skip

    def all_gather(self, out: Op) -> Op:
        """This rank's rows to every other rank, theirs in: the layer output, whole."""
        row = self.hidden_bytes(ELEM_BYTES)
        sent, received = self.own * row * (self.ep - 1), (self.tokens - self.own) * row
        gather = a2a_op(
            f"{out.id}.all_gather", out, A2A_ALL_GATHER, self.own, sent, received, self.ep
        )
        return replace(gather, shape={**gather.shape, "m": self.tokens})


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


def expert_parallel_layers(g: nx.DiGraph, plan: Plan) -> dict[int, ExpertParallelLayer]:
    """The MoE layers of the graph that run expert-parallel under ``plan``, by layer."""
    if plan.ep <= 1:
        return {}
    spec: ModelSpec = g.graph["model"]
    sc: Scenario = g.graph["scenario"]
    return {
        op.layer: ExpertParallelLayer(op, spec, sc, plan.ep)
        for _, d in g.nodes(data=True)
        if (op := d["op"]).kind == OpKind.EXPERT_FFN
    }


def _local_op(op: Op, plan: Plan, ep_layers: dict[int, ExpertParallelLayer]) -> Op:
    """The share of ``op`` the simulated chip runs."""
    layer = ep_layers.get(op.layer)
    if layer is None:
        return shard(op, plan.tp)
    if op.kind == OpKind.EXPERT_FFN:
        return layer.experts_op(op)
    if op.role in SEQUENCE_PARALLEL_ROLES:
        return token_share(op, layer.own, layer.tokens, plan.tp)
    return shard(op, plan.tp)


def partition(g: nx.DiGraph, plan: Plan) -> nx.DiGraph:
    """The graph one chip of each stage runs: sharded ops plus all-reduce and send/recv ops
    (and, for expert-parallel MoE layers, the reduce-scatter, dispatch, combine and
    all-gather all-to-alls).

    Chips of a tensor-parallel group are symmetric, so each stage is represented by one chip;
    with expert parallelism, by its hottest rank (module docstring).
    """
    out = nx.DiGraph(**g.graph, plan=plan)
    ep_layers = expert_parallel_layers(g, plan)
    rename: dict[str, str] = {}  # op id -> id of the node that now carries its output
    for node in nx.topological_sort(g):
        op: Op = g.nodes[node]["op"]
        stage = plan.stage_of_layer(op.layer)
        local = replace(_local_op(op, plan, ep_layers), stage=stage)
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
        after = _collective_after(op, local, plan, ep_layers.get(op.layer))
        if after is not None:
            out.add_node(after.id, op=after)
            out.add_edge(node, after.id)
            rename[node] = after.id
    return out


def _collective_after(
    op: Op, local: Op, plan: Plan, ep_layer: ExpertParallelLayer | None
) -> Op | None:
    """The communication that follows ``op`` on its chip, if any: the all-reduce of a
    row- or vocabulary-split op (and of tensor-split experts); in an expert-parallel MoE
    layer the reduce-scatter of o_proj, the dispatch after the router, the combine after
    the experts and the all-gather of the layer output."""
    if plan.tp == 1:
        return None
    if ep_layer is not None:
        if op.role == "o_proj":
            return ep_layer.reduce_scatter(local)
        if op.kind == OpKind.ROUTER:
            return ep_layer.dispatch(local)
        if op.kind == OpKind.EXPERT_FFN:
            return ep_layer.combine(local)
        if op.role == "ffn_residual":
            return ep_layer.all_gather(local)
        if op.role in SEQUENCE_PARALLEL_ROLES:
            return None
    if op.tp_role in ("row", "vocab", "experts"):
        if op.kind == OpKind.EXPERT_FFN:  # the summed outputs [tokens, hidden]
            op = replace(op, shape={**op.shape, "m": op.dim("out_rows")})
        m, n = op.dim("m"), op.dim("n")
        return _comm(
            f"{op.id}.all_reduce", OpKind.ALL_REDUCE, op, m * n * ELEM_BYTES, local.stage, plan.tp
        )
    return None
