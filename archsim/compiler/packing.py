"""Plan and partition for an SRAM-only machine (groq-like): the chip count falls out of capacity.

Every op is tensor-split over a group of ``tp`` chips (Megatron splits, archsim.compiler.
partition.shard) and the ops, in topological order, are cut into ``pp`` contiguous pipeline
stages. A stage boundary may fall inside a decoder layer (a 1.7 GB bf16 layer of a 70B model
does not fit the 8 chips of one node), so stages are runs of ops, not of layers. Each chip
must hold its share of its stage's weights and KV cache plus the working activations.

Auto (``chips=None``): for each tensor degree, the fewest stages a greedy first-fit packing
needs; the fewest chips overall wins (ties: the larger tensor degree, lower latency); then
the ops are re-cut into that many stages with the smallest largest stage (balanced pipeline).

Mixture of experts: an MoE layer's routed experts are cut, like any wide op, into slices of
whole experts that land on successive stages; the slices do not depend on each other, so
they run side by side on their stages — expert parallelism at the grain of a stage (a
tensor group splits each slice's experts by width). The router's stage dispatches to each
slice's stage the hidden states of the tokens that may reach it, and each slice returns its
outputs to the stage of the residual add (``all_to_all`` ops, one per pair of stages).
``plan.ep`` is the number of expert slices of an MoE layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import networkx as nx

from archsim.compiler.partition import memory_need, shard
from archsim.core.errors import CapacityError, ScenarioError
from archsim.core.plan import Plan
from archsim.graph.build import ELEM_BYTES, expert_ffn_part, ops_in_order
from archsim.graph.model import ModelSpec
from archsim.graph.moe import rank_blocks
from archsim.graph.ops import A2A_COMBINE, A2A_DISPATCH, Op, OpKind, replace
from archsim.graph.scenario import Scenario

# ops wider than 1/PACKING_GRAIN of a chip are cut into output slices of about that size, so
# that a stage can be filled close to its capacity (and an lm_head wider than a whole tensor
# group still fits)
PACKING_GRAIN = 8
# a tensor split that needs at most this share more chips than the fewest is preferred when
# its degree is larger: a few % more chips for several times lower per-token latency
PACKING_SLACK = 0.08


# bytes of an op one chip of a tp-chip group must hold in SRAM: size(op, tp, weight_bytes)
ChipBytes = Callable[[Op, int, float], float]

# the dimension each tensor-split role is sliced along when an op is cut across stages
_SPLIT_DIM = {
    "column": "n",
    "vocab": "vocab",
    "row": "k",
    "heads": "batch",
    "state_heads": "batch",
    "experts": "experts",
}


def _chunk(op: Op, parts: int, j: int) -> Op:
    """Slice ``j`` of ``parts`` of an op along the dimension its tensor split cuts: output
    columns (column), vocabulary rows (vocab), sequences (attention and SSM scans: each slice
    holds the KV cache or the recurrent state of its sequences) or the contraction (row: slices
    before the last emit partial sums that the next slice accumulates)."""
    if op.kind == OpKind.EXPERT_FFN:  # whole experts: a contiguous block of them
        first, stop = rank_blocks(op.dim("experts"), parts)[j]
        start = op.experts.first
        return expert_ffn_part(op, start + first, start + stop, f"{op.id}.c{j}")
    if op.kind == OpKind.MLA_ATTENTION:  # a slice of the sequences needs every head's weights
        return replace(_slice(op, parts, j), params=op.params, weight_bytes=op.weight_bytes)
    return _slice(op, parts, j)


def _slice(op: Op, parts: int, j: int) -> Op:
    key = _SPLIT_DIM[op.tp_role]
    full = op.dim(key)
    width = full // parts + (1 if j < full % parts else 0)  # parts <= full
    f = width / full
    shape = {**op.shape, key: width}
    if op.tp_role == "row" and j < parts - 1:
        shape["partial"] = 1
    return replace(
        op,
        id=f"{op.id}.c{j}",
        shape=shape,
        flops=op.flops * f,
        params=round(op.params * f),
        weight_bytes=op.weight_bytes * f,
        kv_read_bytes=op.kv_read_bytes * f,
        kv_write_bytes=op.kv_write_bytes * f,
        state_read_bytes=op.state_read_bytes * f,
        state_write_bytes=op.state_write_bytes * f,
        act_in_bytes=op.act_in_bytes
        * (f if op.tp_role in ("row", "heads", "state_heads") else 1.0),
        act_out_bytes=op.act_out_bytes
        * (f if op.tp_role in ("column", "heads", "state_heads") else 1.0),
    )


def wide_op_chunks(
    ops: list[Op], tp: int, cap: float, grain: int, wb: float, size: ChipBytes | None = None
) -> dict[str, int]:
    """Ops whose share on one chip exceeds cap/grain, and how many slices each is cut into so
    that slices can go to different stages (the packing grain). ``size``: the bytes of an op
    that must sit in SRAM (default ``chip_bytes``)."""
    size = size or chip_bytes
    out = {}
    for op in ops:
        b = size(op, tp, wb)
        if op.tp_role in _SPLIT_DIM and b > cap / grain:
            width = op.dim(_SPLIT_DIM[op.tp_role])
            whole = ("heads", "state_heads", "experts")
            most = width if op.tp_role in whole else max(1, width // tp)
            out[op.id] = min(math.ceil(b / (cap / grain)), most)
    return out


def split_wide_ops(g: nx.DiGraph, chunks: dict[str, int]) -> nx.DiGraph:
    """The graph with each op of ``chunks`` replaced by its slices (same position in the op
    order). Column and vocab slices run side by side and every consumer waits for all of
    them; row slices form a chain (each adds its partial sum to the previous one's) and
    consumers wait for the last."""
    if not chunks:
        return g
    out = nx.DiGraph(**g.graph)
    heads: dict[str, list[str]] = {}  # slices that read the op's inputs
    tails: dict[str, list[str]] = {}  # slices whose outputs its consumers read
    for node in g.nodes:
        op: Op = g.nodes[node]["op"]
        parts = chunks.get(node, 1)
        pieces = [op] if parts == 1 else [_chunk(op, parts, j) for j in range(parts)]
        for piece in pieces:
            out.add_node(piece.id, op=piece)
        names = [piece.id for piece in pieces]
        heads[node] = names
        tails[node] = names
        if op.tp_role == "row" and parts > 1:
            for a, b in zip(names[:-1], names[1:], strict=True):
                out.add_edge(a, b)
            tails[node] = names[-1:]
    for a, b in g.edges:
        for x in tails[a]:
            for y in heads[b]:
                out.add_edge(x, y)
    return out


def chip_bytes(op: Op, tp: int, wb: float) -> float:
    """Resident bytes ``op`` puts on each chip of a ``tp``-chip tensor group (the shares of
    compiler.partition.shard): its weight slice at ``wb`` bytes per weight and, for attention,
    the KV cache of its KV heads (replicated when there are fewer KV heads than chips); for an
    SSM scan, the recurrent state and conv weights of its heads."""
    if op.kind == OpKind.ATTENTION:
        kvh = op.dim("kv_heads")
        return op.kv_read_bytes * max(1, kvh // tp) / kvh
    if op.kind == OpKind.MLA_ATTENTION:  # the latent cache on every chip, the heads' weights split
        heads = op.dim("heads")
        return op.kv_read_bytes + op.params * wb * math.ceil(heads / tp) / heads
    if op.kind == OpKind.EXPERT_FFN:  # every expert of the slice, its width split
        width = op.dim("k")
        return op.params * wb * math.ceil(width / tp) / width
    if op.kind == OpKind.SSM_SCAN:
        heads = op.dim("heads")
        return (op.state_write_bytes + op.params * wb) * math.ceil(heads / tp) / heads
    if not op.params:
        return 0.0
    key = _SPLIT_DIM.get(op.tp_role)
    share = 1.0 if key is None or tp == 1 else math.ceil(op.dim(key) / tp) / op.dim(key)
    return op.params * share * wb


def op_sizes(
    ops: list[Op], tp: int, wb: float, chunks: dict[str, int], size: ChipBytes | None = None
) -> list[float]:
    """Per-chip bytes of each op, or of each of its slices where it is cut (in proportion to
    the slice's width: the planning estimate; the final check uses the slices themselves)."""
    size = size or chip_bytes
    out = []
    for op in ops:
        b, parts = size(op, tp, wb), chunks.get(op.id, 1)
        full = op.dim(_SPLIT_DIM.get(op.tp_role, "n")) or 1
        out.extend(b * (full // parts + (j < full % parts)) / full for j in range(parts))
    return out


def greedy_stages(sizes: list[float], cap: float) -> int | None:
    """Fewest contiguous stages of at most ``cap`` bytes (first fit); None if an op is too big."""
    stages, load = 1, 0.0
    for b in sizes:
        if b > cap:
            return None
        if load + b > cap:
            stages, load = stages + 1, 0.0
        load += b
    return stages


def balanced_cuts(sizes: list[float], parts: int) -> list[int]:
    """Start index of each of ``parts`` non-empty contiguous stages minimising the largest
    stage (binary search on the bound, greedy check)."""

    def cuts_for(bound: float) -> list[int] | None:
        starts, load = [0], 0.0
        for i, b in enumerate(sizes):
            left_ops, left_parts = len(sizes) - i, parts - len(starts)
            must_cut = left_ops == left_parts and i > starts[-1]
            if i > starts[-1] and (load + b > bound or must_cut):
                starts.append(i)
                load = 0.0
            load += b
        return starts if len(starts) == parts and load <= bound else None

    lo, hi = max(sizes), sum(sizes)
    best = cuts_for(hi)
    for _ in range(60):
        if hi - lo <= 1e-6 * hi:
            break
        mid = (lo + hi) / 2
        cuts = cuts_for(mid)
        if cuts is None:
            lo = mid
        else:
            hi, best = mid, cuts
    assert best is not None
    return best


def _tp_options(spec: ModelSpec, tp_max: int) -> list[int]:
    top = int(math.log2(max(tp_max, 1)))
    return [t for t in (2**i for i in range(top + 1)) if spec.num_heads % t == 0]


def _stage_layers(ops: list[Op], starts: list[int], n_layers: int) -> tuple[tuple[int, int], ...]:
    bounds = [*starts, len(ops)]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        layers = [min(max(o.layer, 0), n_layers - 1) for o in ops[a:b]]
        out.append((min(layers), max(layers) + 1))
    return tuple(out)


def plan_sram(
    g: nx.DiGraph,
    capacity_bytes: float,
    chips: int | None,
    tp_max: int,
    max_chips: int,
    size: ChipBytes | None = None,
) -> Plan:
    """Fewest chips whose SRAM holds weights + KV + activations (``chips=None``), or the split
    of exactly ``chips`` chips (CapacityError if it does not hold the model). The batch is
    split into micro-batches, one per stage as far as sequences go, that follow each other
    down the pipeline. ``size(op, tp, weight_bytes)``: the bytes of an op one chip must hold
    in SRAM (default ``chip_bytes``: its weight share and, for attention, its KV cache; a
    machine that keeps the KV cache elsewhere passes its own)."""
    size = size or chip_bytes
    spec: ModelSpec = g.graph["model"]
    sc: Scenario = g.graph["scenario"]
    ops = ops_in_order(g)
    need = memory_need(g)
    wb = sc.precision.weight_bytes

    def cap_for(tp: int) -> float:
        # working activations (widest op in + out, logits) spread over the tensor group
        return capacity_bytes - need.act_bytes / tp

    n_layers = max(1, len({o.layer for o in ops if 0 <= o.layer < spec.num_layers}))
    tps = _tp_options(spec, tp_max)
    if chips is not None:
        if chips <= 0:
            raise ScenarioError(f"chips must be a positive integer or 'auto', got {chips}")
        tp = max(t for t in tps if chips % t == 0)
        pp = chips // tp
    else:
        options = []  # (tensor degree, fewest stages)
        for tp in (t for t in tps if cap_for(t) > 0):
            cut = wide_op_chunks(ops, tp, cap_for(tp), PACKING_GRAIN, wb, size)
            pp_min = greedy_stages(op_sizes(ops, tp, wb, cut, size), cap_for(tp))
            if pp_min is not None:
                options.append((tp, pp_min))
        fewest = min((tp * pp for tp, pp in options), default=0)
        near = [o for o in options if o[0] * o[1] <= fewest * (1 + PACKING_SLACK)]
        best = max(near) if near else None
        if best is None or best[0] * best[1] > max_chips:
            raise CapacityError(
                f"{spec.name} does not fit on any system of up to {max_chips} chips "
                f"of {capacity_bytes / 1e6:.0f} MB usable SRAM (needs {need.total / 1e9:.1f} GB)"
            )
        tp, pp = best
    cap = cap_for(tp)
    chunks = wide_op_chunks(ops, tp, cap, PACKING_GRAIN, wb, size)
    ops = ops_in_order(split_wide_ops(g, chunks))  # the order partition_sram walks
    if pp > len(ops):
        raise ScenarioError(f"{tp * pp} chips would need {pp} pipeline stages for {len(ops)} ops")
    sizes = [size(op, tp, wb) for op in ops]

    def cut(stages: int) -> tuple[list[int], float]:
        starts = balanced_cuts(sizes, stages)
        bounds = [*starts, len(ops)]
        return starts, max(sum(sizes[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True))

    starts, fullest = cut(pp)
    # auto: the stage count came from the packing estimate (slices in proportion to their
    # width); the slices themselves round up, so a balanced cut can miss by a few bytes:
    # add stages until it fits
    while chips is None and fullest > cap and (pp + 1) * tp <= max_chips and pp < len(ops):
        pp += 1
        starts, fullest = cut(pp)
    if fullest > cap:
        raise CapacityError(
            f"{spec.name} does not fit on {tp * pp} chip(s): the fullest chip needs "
            f"{(capacity_bytes - cap + fullest) / 1e6:.1f} MB (weights "
            f"{need.weight_bytes / 1e9:.1f} GB + KV {need.kv_bytes / 1e9:.1f} GB in all) but "
            f"holds {capacity_bytes / 1e6:.1f} MB"
        )
    mb = -(-sc.batch // min(sc.batch, pp))  # one micro-batch per stage, as far as they go
    first_ids = [ops[i].id for i in starts]
    moe = any(d["op"].kind == OpKind.EXPERT_FFN for _, d in g.nodes(data=True))
    expert_stages = merge_expert_slices(g, chunks, first_ids)[1] if moe else {}
    return Plan(
        tp=tp,
        pp=pp,
        stage_layers=_stage_layers(ops, starts, n_layers),
        need=need,
        capacity_bytes_per_chip=capacity_bytes,
        micro_batch=mb,
        micro_batches=-(-sc.batch // mb),
        extra={
            "stage_first_op": first_ids,
            "op_chunks": chunks,
            "fullest_chip_bytes": capacity_bytes - cap + fullest,
        },
        ep=max(expert_stages.values(), default=1),
    )


def merge_expert_slices(
    g: nx.DiGraph, chunks: dict[str, int], first_ids: list[str]
) -> tuple[nx.DiGraph, dict[str, int]]:
    """The graph split as ``chunks`` says, with the slices of one expert op that landed on
    the same stage (stages start at ``first_ids``) merged into one op of their contiguous
    experts: one grouped GEMM, one dispatch, one all-reduce and one combine per stage.
    Also returns, per expert op, the stages its experts span (its expert parallelism)."""
    split = split_wide_ops(g, chunks)
    if not any(d["op"].kind == OpKind.EXPERT_FFN for _, d in g.nodes(data=True)):
        return split, {}  # a dense model: nothing to merge
    first, stage = set(first_ids), -1
    runs: dict[tuple[str, int], list[Op]] = {}
    for op in ops_in_order(split):
        stage += op.id in first
        if op.kind == OpKind.EXPERT_FFN and op.id not in g:
            parent = op.id.rsplit(".c", 1)[0]
            runs.setdefault((parent, stage), []).append(op)
    spans: dict[str, int] = {}
    for parent, _ in runs:
        spans[parent] = spans.get(parent, 0) + 1
    if all(len(r) == 1 for r in runs.values()):
        return split, spans
    alias: dict[str, str] = {n: n for n in split.nodes}
    merged: dict[str, Op] = {}
    for (parent, _), run in runs.items():
        head = run[0]
        lo, hi = run[0].experts.first, run[-1].experts.first + run[-1].experts.experts
        merged[head.id] = expert_ffn_part(g.nodes[parent]["op"], lo, hi, head.id)
        for op in run:
            alias[op.id] = head.id
    out = nx.DiGraph(**split.graph)
    for node in split.nodes:
        if alias[node] == node:
            out.add_node(node, op=merged.get(node, split.nodes[node]["op"]))
    for a, b in split.edges:
        if alias[a] != alias[b]:
            out.add_edge(alias[a], alias[b])
    return out, spans


def _a2a(src: Op, dst: Op, dst_stage: int, pattern: int, nbytes: float) -> Op:
    """One pair of stages' part of an MoE dispatch or combine: the hidden states of the tokens
    that may reach an expert slice, or the slice's outputs back."""
    name = src.id if pattern == A2A_COMBINE else dst.id
    what = "combine" if pattern == A2A_COMBINE else "dispatch"
    return Op(
        id=f"{name}.{what}_s{dst_stage}",
        kind=OpKind.ALL_TO_ALL,
        layer=src.layer,
        shape={"m": dst.dim("out_rows") if pattern == A2A_DISPATCH else src.dim("out_rows"),
               "n": src.dim("n"), "dst_stage": dst_stage, "pattern": pattern,
               "recv_bytes": round(nbytes), "ranks": 2},
        link_bytes=nbytes,
        act_in_bytes=nbytes,
        act_out_bytes=nbytes,
        stage=src.stage,
    )  # fmt: skip


def _send(src: Op, dst_stage: int) -> Op:
    nbytes = src.act_out_bytes  # this chip's share of the producer's output
    return Op(
        id=f"{src.id}.send_s{dst_stage}",
        kind=OpKind.SEND_RECV,
        layer=src.layer,
        shape={"m": src.dim("m"), "n": src.dim("n"), "dst_stage": dst_stage},
        link_bytes=nbytes,
        act_in_bytes=nbytes,
        act_out_bytes=nbytes,
        stage=src.stage,
    )


def _hop(src: Op, producer: Op, dst: Op, stage: int) -> Op:
    """What crosses from ``src``'s stage to ``dst``'s: an MoE dispatch into an expert slice
    (the hidden states and routing of the tokens that may reach it), a combine out of one
    (its outputs), or the producer's output (a send)."""
    if dst.kind == OpKind.EXPERT_FFN and producer.kind == OpKind.ROUTER:
        return _a2a(src, dst, stage, A2A_DISPATCH, dst.act_in_bytes)
    if producer.kind == OpKind.EXPERT_FFN:  # (its all-reduce, if any, carries the same)
        return _a2a(src, dst, stage, A2A_COMBINE, src.act_out_bytes)
    return _send(src, stage)


def _all_reduce(op: Op, tp: int) -> Op:
    rows = op.dim("out_rows") if op.kind == OpKind.EXPERT_FFN else op.dim("m")
    nbytes = rows * op.dim("n") * ELEM_BYTES
    return Op(
        id=f"{op.id}.all_reduce",
        kind=OpKind.ALL_REDUCE,
        layer=op.layer,
        shape={"m": rows, "n": op.dim("n")},
        link_bytes=nbytes,
        act_in_bytes=nbytes,
        act_out_bytes=nbytes,
        stage=op.stage,
        group=tp,
    )


def partition_sram(g: nx.DiGraph, plan: Plan) -> nx.DiGraph:
    """The graph chip 0 of each stage runs: sharded ops, all-reduces inside a tensor group and
    a direct send from a producer's stage to each later stage that consumes it."""
    g, _ = merge_expert_slices(g, plan.extra.get("op_chunks", {}), plan.extra["stage_first_op"])
    first = set(plan.extra["stage_first_op"])
    out = nx.DiGraph(**g.graph, plan=plan)
    carrier: dict[str, str] = {}  # op id -> node that now carries its output
    stage = -1
    for op in ops_in_order(g):
        stage += op.id in first
        local = replace(shard(op, plan.tp), stage=stage)
        inputs = []
        for pred in g.predecessors(op.id):
            src = carrier[pred]
            src_op: Op = out.nodes[src]["op"]
            if src_op.stage != stage:
                hop = _hop(src_op, g.nodes[pred]["op"], local, stage)
                if hop.id not in out:
                    out.add_node(hop.id, op=hop)
                    out.add_edge(src, hop.id)
                src = hop.id
            inputs.append(src)
        # added after its input hops, so that the insertion order stays topological
        out.add_node(op.id, op=local)
        out.add_edges_from((src, op.id) for src in inputs)
        carrier[op.id] = op.id
        if plan.tp > 1 and op.tp_role in ("row", "vocab", "experts") and not op.dim("partial"):
            ar = _all_reduce(local, plan.tp)
            out.add_node(ar.id, op=ar)
            out.add_edge(op.id, ar.id)
            carrier[op.id] = ar.id
    return out
