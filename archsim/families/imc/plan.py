"""Placement for dmatrix-like: which weights live in compute SRAM, which stream from LPDDR.

Auto (``chips=None``): the fewest cards whose SRAM holds every weight, the KV cache (when it
lives in SRAM) and the working activations, in block-format bytes — the generic capacity
packing of ``archsim.compiler.packing`` (op-granular stages, wide ops sliced) over tensor
groups of up to one bridged card pair. Given ``chips``: the ops are cut into that many
balanced stages; a card whose stage does not fit keeps its KV, its small weights and a
stream buffer in SRAM, holds as many of its projection weights as the rest allows (the same
share of every projection, ``resident_fraction``) and streams the others from its LPDDR every
step. Then the compiler picks the micro-batch size whose compiled, timed round is shortest.
"""

from __future__ import annotations

import math
from dataclasses import replace

import networkx as nx
import numpy as np

from archsim.compiler.packing import (
    PACKING_GRAIN,
    balanced_cuts,
    chip_bytes,
    greedy_stages,
    merge_expert_slices,
    split_wide_ops,
    wide_op_chunks,
)
from archsim.compiler.partition import memory_need
from archsim.compiler.schedule import issue_order, list_schedule
from archsim.core.engine import Timeline, simulate_stream
from archsim.core.errors import CapacityError, ScenarioError
from archsim.core.isa import InstructionStream
from archsim.core.plan import MemoryNeed, Plan
from archsim.families.imc.lower import (
    Formats,
    block_formats,
    lower_trip,
    mla_layouts,
    stream_buffer_bytes,
    usable_sram_bytes,
)
from archsim.families.imc.params import ImcParams
from archsim.families.imc.timing import imc_timing
from archsim.graph.build import ops_in_order
from archsim.graph.ops import Op, OpKind

# ops whose weights a streaming card holds in part and streams the rest of from LPDDR
PROJECTIONS = (OpKind.MATMUL, OpKind.ROUTER, OpKind.EXPERT_FFN, OpKind.MLA_ATTENTION)
# a longer round must beat the best by more than this to win the micro-batch search
MICRO_BATCH_TOLERANCE = 0.01


def tp_options(g: nx.DiGraph, p: ImcParams) -> list[int]:
    """Tensor-group sizes: powers of two up to ``compiler.max_tensor_cards`` that divide
    the heads."""
    heads = g.graph["model"].num_heads
    top = int(math.log2(max(1, p.compiler.max_tensor_cards)))
    return [t for t in (2**i for i in range(top + 1)) if heads % t == 0]


class Sizer:
    """Block-format bytes each op puts on a card of a ``tp``-card tensor group."""

    def __init__(self, g: nx.DiGraph, p: ImcParams) -> None:
        sc = g.graph["scenario"]
        self.fm: Formats = block_formats(p, sc.precision)
        self.kv_factor = self.fm.kv_store / sc.precision.kv_bytes
        self.kv_in_sram = p.memory.kv_tier == "sram"

    def kv(self, op: Op, tp: int) -> float:
        """The KV cache of an attention op on a card (MLA: the latents, whole on every card
        of the group, in both tile layouts, ``lower.mla_layouts``)."""
        if op.kind == OpKind.MLA_ATTENTION:
            return op.kv_read_bytes * self.kv_factor * mla_layouts(op)
        return chip_bytes(op, tp, 0.0) * self.kv_factor if op.kind == OpKind.ATTENTION else 0.0

    def weights(self, op: Op, tp: int) -> float:
        """Weights an op puts on a card (every expert of an expert slice; MLA's kv_b_proj
        split by heads)."""
        if op.kind == OpKind.ATTENTION:
            return 0.0
        if op.kind == OpKind.MLA_ATTENTION:
            heads = op.dim("heads")
            return op.params * self.fm.w_store * math.ceil(heads / tp) / heads
        return chip_bytes(op, tp, self.fm.w_store)

    def weights_read(self, op: Op, tp: int) -> float:
        """Of ``weights``, what a step multiplies: for routed experts only the touched ones
        (in expectation), for any other op all."""
        if op.kind == OpKind.EXPERT_FFN and op.experts is not None and op.experts.experts:
            return self.weights(op, tp) * op.experts.active() / op.experts.experts
        return self.weights(op, tp)

    def sram(self, op: Op, tp: int) -> float:
        return self.weights(op, tp) + (self.kv(op, tp) if self.kv_in_sram else 0.0)


def stored_need(g: nx.DiGraph, sizer: Sizer) -> MemoryNeed:
    """Weights and KV of the whole model in their block formats; activations as built."""
    need = memory_need(g)
    weights = sum(sizer.weights(d["op"], 1) for _, d in g.nodes(data=True))
    return MemoryNeed(weights, need.kv_bytes * sizer.kv_factor, need.act_bytes)


def sram_cards(g: nx.DiGraph, p: ImcParams, sizer: Sizer, act: float) -> tuple[int, int] | None:
    """(tp, pp) of the fewest cards whose SRAM holds the model (ties: the larger tensor
    group, for lower latency), or None if no system of up to max_cards does."""
    ops = ops_in_order(g)
    best = None
    for tp in tp_options(g, p):
        cap = usable_sram_bytes(p) - act / tp
        if cap <= 0:
            continue
        chunks = wide_op_chunks(ops, tp, cap, PACKING_GRAIN, sizer.fm.w_store)
        sizes = [sizer.sram(o, tp) for o in ops_in_order(split_wide_ops(g, chunks))]
        pp = greedy_stages(sizes, cap)
        if pp is not None and (best is None or tp * pp <= best[0] * best[1]):
            best = (tp, pp)
    if best is None or best[0] * best[1] > p.system.max_cards:
        return None
    return best


def _stage_layers(ops: list[Op], starts: list[int], n_layers: int) -> tuple[tuple[int, int], ...]:
    bounds = [*starts, len(ops)]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        layers = [min(max(o.layer, 0), n_layers - 1) for o in ops[a:b]]
        out.append((min(layers), max(layers) + 1))
    return tuple(out)


def plan(g: nx.DiGraph, p: ImcParams, chips: int | None) -> Plan:
    spec, sc = g.graph["model"], g.graph["scenario"]
    sizer = Sizer(g, p)
    need = stored_need(g, sizer)
    fits = sram_cards(g, p, sizer, need.act_bytes)
    if chips is None:
        if fits is None:
            raise CapacityError(
                f"{spec.name} does not fit in the SRAM of any dmatrix-like system of up to "
                f"{p.system.max_cards} cards (weights {need.weight_bytes / 1e9:.1f} GB + KV "
                f"{need.kv_bytes / 1e9:.1f} GB); give --chips to stream weights from LPDDR"
            )
        tp, pp = fits
    else:
        tp = max(t for t in tp_options(g, p) if chips % t == 0)
        pp = chips // tp
    cap = usable_sram_bytes(p) - need.act_bytes / tp
    if cap <= 0:
        raise CapacityError(
            f"the working activations ({need.act_bytes / 1e9:.2f} GB) do not fit a card's "
            f"{usable_sram_bytes(p) / 1e9:.2f} GB of usable SRAM"
        )
    chunks = wide_op_chunks(ops_in_order(g), tp, cap, PACKING_GRAIN, sizer.fm.w_store)
    ops = ops_in_order(split_wide_ops(g, chunks))  # the order partition_sram walks
    if pp > len(ops):
        raise ScenarioError(f"{tp * pp} cards would need {pp} pipeline stages for {len(ops)} ops")
    starts = balanced_cuts([sizer.sram(o, tp) for o in ops], pp)
    bounds = [*starts, len(ops)]
    stages = [ops[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    resident = [residency(stage, tp, cap, p, sizer, s) for s, stage in enumerate(stages)]
    n_layers = max(1, len({o.layer for o in ops if 0 <= o.layer < spec.num_layers}))
    fullest = max(sum(sizer.sram(o, tp) for o in stage) for stage in stages)
    first_ids = [ops[i].id for i in starts]
    expert_stages: dict[str, int] = {}  # stages each MoE layer's experts span
    if any(o.kind == OpKind.EXPERT_FFN for o in ops):
        _, expert_stages = merge_expert_slices(g, chunks, first_ids)
    return Plan(
        tp=tp,
        pp=pp,
        stage_layers=_stage_layers(ops, starts, n_layers),
        need=need,
        capacity_bytes_per_chip=usable_sram_bytes(p),
        micro_batch=sc.batch,
        micro_batches=1,
        ep=max(expert_stages.values(), default=1),
        extra={
            "stage_first_op": first_ids,
            "op_chunks": chunks,
            "resident_fraction": [r for r, _ in resident],
            "streamed_bytes": [x for _, x in resident],
            "sram_cards": None if fits is None else fits[0] * fits[1],
            "fullest_card_bytes": min(fullest, cap) + need.act_bytes / tp,
        },
    )


def residency(
    stage: list[Op], tp: int, cap: float, p: ImcParams, sizer: Sizer, s: int
) -> tuple[float, float]:
    """(share of the stage's projection weights resident in SRAM, bytes streamed per step).

    A stage that fits keeps everything. Else the card keeps its KV cache (when it lives in
    SRAM), its other weights (norm gains, the embedding table) and the stream buffer, and
    fills the rest with the same share of every projection (router, experts and MLA's
    kv_b_proj included); the others stream from LPDDR, which holds the rest of every
    expert, while a step streams only the touched experts' rest."""
    total = sum(sizer.sram(o, tp) for o in stage)
    kv_lpddr = 0.0 if sizer.kv_in_sram else sum(sizer.kv(o, tp) for o in stage)
    lpddr = p.memory.lpddr_bytes
    if total <= cap:
        if kv_lpddr > lpddr:
            raise CapacityError(
                f"stage {s}: its KV cache ({kv_lpddr / 1e9:.1f} GB) exceeds a card's "
                f"{lpddr / 1e9:.0f} GB of LPDDR"
            )
        return 1.0, 0.0
    proj = sum(sizer.weights(o, tp) for o in stage if o.kind in PROJECTIONS)
    fixed = total - proj + stream_buffer_bytes(p)
    if fixed > cap:
        raise CapacityError(
            f"stage {s} cannot stream its weights: its KV cache, small weights and the stream "
            f"buffer need {fixed / 1e9:.2f} GB of a card's {cap / 1e9:.2f} GB of SRAM; use more "
            "cards, a shorter context or --set memory.kv_tier=lpddr"
        )
    share = min(1.0, (cap - fixed) / proj) if proj > 0 else 1.0
    held = (1.0 - share) * proj  # in LPDDR: every expert's share, touched or not
    if held + kv_lpddr > lpddr:
        raise CapacityError(
            f"stage {s} needs {(held + kv_lpddr) / 1e9:.1f} GB of LPDDR but a card has "
            f"{lpddr / 1e9:.0f} GB; use more cards"
        )
    read = sum(sizer.weights_read(o, tp) for o in stage if o.kind in PROJECTIONS)
    return share, (1.0 - share) * read


# ---- the program the cards run and the micro-batch search ------------------------------------
def program_shape(micro_batches: int, cap: int) -> tuple[int, int]:
    """(micro-batches simulated, rounds simulated): one micro-batch is one round (the next
    token waits for this one); more run two rounds of up to ``cap`` of them, so that round 2
    waits both for round 1's tokens and for the stages to drain."""
    if micro_batches == 1:
        return 1, 1
    return min(micro_batches, cap), 2


def compile_program(
    g: nx.DiGraph, plan: Plan, p: ImcParams, trip: InstructionStream | None = None
) -> InstructionStream:
    """``rounds`` x ``micro-batches`` copies of one micro-batch's trip. The compiler
    interleaves the copies on each card as the generic priority list scheduler orders them
    (a unit takes the ready instruction of any micro-batch, earlier micro-batches first);
    the stream is put in that order and the engine then times it dynamically (each unit in
    program order, shared resources at their fair share)."""
    sc = g.graph["scenario"]
    trip = lower_trip(g, plan, p, sc) if trip is None else trip
    k, rounds = program_shape(plan.micro_batches, p.compiler.max_simulated_micro_batches)
    stream = trip.replicated(k, rounds)
    if k * rounds == 1:
        return stream
    issue = list_schedule(stream, imc_timing(stream, p), reorder=True)
    stream = stream.permuted(issue_order(stream, issue))
    stream.cols["issue"][:] = -1  # the order is the compiler's; the timing is the engine's
    return stream


def copy_ends(stream: InstructionStream, tl: Timeline) -> np.ndarray:
    """Cycle at which each copy (round x micro-batch) of the program has finished."""
    ends = np.zeros(int(stream.copy.max()) + 1 if len(stream) else 1, dtype=np.int64)
    np.maximum.at(ends, stream.copy, tl.end)
    return ends


def busiest_cycles(stream: InstructionStream, tl: Timeline) -> float:
    """Cycles per copy that the busiest unit is held or the busiest resource (an LPDDR, a
    link) carries a flow: a stage serves micro-batches no faster than this."""
    if not len(stream):
        return 0.0
    copies = int(stream.copy.max()) + 1
    held = (tl.release - tl.start).astype(np.float64)
    units = np.bincount(stream.unit, weights=held).max()
    res = tl.resource_busy.max() if len(tl.resource_busy) else 0
    return float(max(units, res)) / copies


def round_period(ends: np.ndarray, micro_batches: int, simulated: int, busiest: float) -> float:
    """Cycles between rounds (every micro-batch advancing one token) at load: the trip for
    one micro-batch; the timeline's own figure when every micro-batch is simulated (round
    2's last finish minus round 1's); else max(trip, micro_batches x busiest)."""
    if micro_batches == 1:
        return float(ends[0])
    if simulated == micro_batches:
        return float(ends[2 * simulated - 1] - ends[simulated - 1])
    return max(float(ends[0]), micro_batches * busiest)


def with_micro_batch(plan: Plan, batch: int, mb: int) -> Plan:
    return replace(plan, micro_batch=mb, micro_batches=-(-batch // mb))


def evaluate(pg: nx.DiGraph, plan: Plan, p: ImcParams) -> tuple[float, int]:
    """(round period, first micro-batch's trip) of ``plan``, compiled and timed."""
    stream = compile_program(pg, plan, p)
    tl = simulate_stream(stream, imc_timing(stream, p))
    k, _ = program_shape(plan.micro_batches, p.compiler.max_simulated_micro_batches)
    ends = copy_ends(stream, tl)
    return round_period(ends, plan.micro_batches, k, busiest_cycles(stream, tl)), int(ends[0])


def tune_micro_batch(pg: nx.DiGraph, plan: Plan, p: ImcParams) -> Plan:
    """The micro-batch size with the shortest round (ties within MICRO_BATCH_TOLERANCE: the
    shorter trip). Candidates, smallest first: powers of two, one micro-batch per stage,
    the whole batch; the scan stops at the first size past the best whose round is longer
    than the best's by more than the tolerance (past the best, rounds grow). Small
    micro-batches keep every stage busy; large ones pass each tile fewer times per round (a
    pass serves several vectors) and stream LPDDR weights once per round."""
    batch = pg.graph["scenario"].batch
    if batch == 1 or plan.pp == 1:
        return with_micro_batch(plan, batch, batch)
    powers = {2**i for i in range(batch.bit_length()) if 2**i < batch}
    cost: dict[int, tuple[float, int]] = {}
    best = None
    for mb in sorted({batch, -(-batch // plan.pp)} | powers):
        cost[mb] = evaluate(pg, with_micro_batch(plan, batch, mb), p)
        if best is None or cost[mb][0] < cost[best][0]:
            best = mb
        elif cost[mb][0] > cost[best][0] * (1 + MICRO_BATCH_TOLERANCE):
            break
    near = [mb for mb in cost if cost[mb][0] <= cost[best][0] * (1 + MICRO_BATCH_TOLERANCE)]
    chosen = min(near, key=lambda mb: (cost[mb][1], cost[mb][0]))
    return with_micro_batch(plan, batch, chosen)
