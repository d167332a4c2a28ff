"""Placement for matx-like: how many chips, the tensor x pipeline split, the micro-batches.

``mapping.weight_home: sram`` (MatX: "weights in SRAM, KV in HBM"): the chip count falls out
of scratchpad capacity — the generic op-granular packing (``archsim.compiler.packing``, as
groq-like uses it) fills each chip's pinned share of the scratchpad (``pin_fraction``) with
weights, cutting wide ops (an lm_head) into slices across stages; the KV cache and the
embedding table (a step gathers a few of its rows) stay in HBM, which must hold them. When no
packing fits, weights stream from HBM instead (``hbm``). ``hbm`` (TPU): the fewest chips whose
HBM holds weights, KV and activations, tensor parallelism first (Megatron splits, up to
``links.scale_up_domain``), then pipeline stages of whole layers.

A pipeline whose weights stay resident serves its batch as ``min(batch, pp)`` micro-batches
interleaved through the stages; with streamed weights one micro-batch (each would re-read
every weight).
"""

from __future__ import annotations

import math
from dataclasses import replace

import networkx as nx

from archsim.compiler.packing import chip_bytes, partition_sram, plan_sram
from archsim.compiler.partition import (
    expert_parallel_degree,
    memory_need,
    partition,
    replicated_on_chip,
    split_layers,
)
from archsim.core.errors import CapacityError, ScenarioError
from archsim.core.plan import Plan
from archsim.families.systolic.params import SystolicParams
from archsim.graph.ops import OpKind


def pinnable_bytes(op, tp: int, wb: float) -> float:
    """Bytes of ``op`` one chip keeps in its scratchpad when weights live there: its weight
    share (not the KV cache or MLA's latent cache, not an embedding table; every expert of
    an expert slice, touched or not)."""
    if op.kind in (OpKind.EMBEDDING, OpKind.ATTENTION):
        return 0.0
    if op.kind == OpKind.MLA_ATTENTION:  # kv_b_proj, split by heads; the latents stay in HBM
        heads = op.dim("heads")
        return op.params * wb * math.ceil(heads / tp) / heads
    return chip_bytes(op, tp, wb)


def check_hbm(pg: nx.DiGraph, plan: Plan, p: SystolicParams) -> None:
    """Every chip's HBM holds what lives there: the KV cache and embedding share of its
    stage (and, with weights in HBM, every weight it does not pin), plus the activations."""
    sc = pg.graph["scenario"]
    wb = sc.precision.weight_bytes
    per_stage = [plan.need.act_bytes] * plan.pp
    for _, d in pg.nodes(data=True):
        op = d["op"]
        if op.kind in (OpKind.ATTENTION, OpKind.MLA_ATTENTION):
            per_stage[op.stage] += op.kv_read_bytes + op.kv_write_bytes
            if plan.extra.get("weight_home") == "hbm":
                per_stage[op.stage] += op.params * wb  # MLA's kv_b_proj
        elif op.kind == OpKind.EMBEDDING or plan.extra.get("weight_home") == "hbm":
            per_stage[op.stage] += op.params * wb
    cap = p.hbm.bytes * p.hbm.usable_fraction
    if max(per_stage) > cap:
        raise CapacityError(
            f"{pg.graph['model'].name} does not fit {plan.chips} chip(s) of {p.name}: the "
            f"fullest chip needs {max(per_stage) / 1e9:.1f} GB of HBM (KV cache, tables"
            f"{', weights' if plan.extra.get('weight_home') == 'hbm' else ''}, activations) "
            f"but holds {cap / 1e9:.1f} GB"
        )


def chip_hbm_bytes(op, tp: int, wb: float, ep: int = 1) -> float:
    """HBM bytes ``op`` puts on one chip of a ``tp``-chip group when weights live in HBM: its
    weight share and, for attention, the KV cache of its KV heads (replicated when there are
    fewer KV heads than chips, as ``compiler.partition.shard`` splits them); MLA's latent
    cache whole on every chip beside its heads' share of kv_b_proj. Under expert parallelism
    (``ep`` > 1) each chip holds E / ep experts whole and the shared experts whole
    (``compiler.partition.replicated_on_chip``)."""
    if op.kind == OpKind.ATTENTION:
        kvh = op.dim("kv_heads")
        return (op.kv_read_bytes + op.kv_write_bytes) * max(1, kvh // tp) / kvh
    if op.kind == OpKind.MLA_ATTENTION:
        return op.kv_write_bytes + chip_bytes(op, tp, wb)  # chip_bytes: latents + weights
    if ep > 1 and replicated_on_chip(op, ep):
        return op.params * wb
    return chip_bytes(op, tp, wb)


def plan_hbm(g: nx.DiGraph, p: SystolicParams, chips: int | None) -> Plan:
    """Fewest chips whose HBM holds weights, KV and activations: tensor parallelism first
    (up to the scale-up domain), then pipeline stages of whole layers (or the split of
    exactly ``chips``)."""
    spec = g.graph["model"]
    wb = g.graph["scenario"].precision.weight_bytes
    ops = [d["op"] for _, d in g.nodes(data=True)]
    n_layers = max(1, len({o.layer for o in ops if 0 <= o.layer < spec.num_layers}))
    need = memory_need(g)
    cap = p.hbm.bytes * p.hbm.usable_fraction
    tps = [
        t
        for t in (2**i for i in range(int(math.log2(p.links.scale_up_domain)) + 1))
        if spec.num_heads % t == 0
    ]

    per_layer: dict[int, dict[int, float]] = {}  # tp -> layer -> bytes on one chip
    for tp in tps:
        held = per_layer.setdefault(tp, {})
        ep = expert_parallel_degree(spec, tp)
        for op in ops:
            layer = min(max(op.layer, -1), n_layers)  # embedding -1, head n_layers
            held[layer] = held.get(layer, 0.0) + chip_hbm_bytes(op, tp, wb, ep)

    def fullest(tp: int, stages) -> float:
        held = per_layer[tp]
        last = len(stages) - 1
        return need.act_bytes + max(
            sum(held.get(x, 0.0) for x in range(first, stop))
            + (held.get(-1, 0.0) if s == 0 else 0.0)
            + (held.get(n_layers, 0.0) if s == last else 0.0)
            for s, (first, stop) in enumerate(stages)
        )

    if chips is not None:
        tp = max(t for t in tps if chips % t == 0)
        if chips // tp > n_layers:
            raise ScenarioError(
                f"{chips} chips would need {chips // tp} pipeline stages for {n_layers} layers"
            )
        candidates = [(tp, chips // tp)]
    else:
        # as compiler.partition.plan_memory_bound: tensor parallelism first, then stages of
        # the largest tensor split that does not replicate the KV cache (a split beyond the
        # KV heads copies it on every chip); then any split, fewest chips first
        t_kv = max([t for t in tps if t <= spec.num_kv_heads] or tps[:1])
        candidates = [(t, 1) for t in tps] + [(t_kv, pp) for pp in range(2, n_layers + 1)]
        candidates += sorted(
            ((t, pp) for t in tps for pp in range(2, n_layers + 1) if t != t_kv),
            key=lambda c: (c[0] * c[1], -c[0]),
        )
        candidates = [c for c in candidates if c[0] * c[1] <= p.links.max_chips]
    for tp, pp in candidates:
        stages = split_layers(n_layers, pp)
        if fullest(tp, stages) <= cap:
            return Plan(
                tp=tp,
                pp=pp,
                stage_layers=stages,
                need=need,
                capacity_bytes_per_chip=cap,
                extra={"weight_home": "hbm"},
                ep=expert_parallel_degree(spec, tp),
            )
    raise CapacityError(
        f"{spec.name} does not fit the HBM of {chips if chips else 'any number of'} "
        f"{p.name} chip(s) (needs {need.total / 1e9:.1f} GB in all, {cap / 1e9:.1f} GB per chip)"
    )


def _plan_sram(g: nx.DiGraph, p: SystolicParams, chips: int | None) -> Plan:
    pin = p.scratchpad.bytes * p.mapping.pin_fraction
    if pin <= 0:
        raise CapacityError(f"{p.name} pins no weights (mapping.pin_fraction = 0)")
    placed = plan_sram(
        g, pin, chips, p.links.scale_up_domain, p.links.max_chips, size=pinnable_bytes
    )
    return replace(
        placed,
        capacity_bytes_per_chip=p.hbm.bytes * p.hbm.usable_fraction,
        extra={**placed.extra, "weight_home": "sram"},
    )


def plan(g: nx.DiGraph, p: SystolicParams, chips: int | None) -> Plan:
    if p.mapping.weight_home == "sram":
        try:
            return _plan_sram(g, p, chips)
        except CapacityError:
            pass  # the weights stream from HBM instead
    placed = plan_hbm(g, p, chips)
    return replace(placed, micro_batch=g.graph["scenario"].batch, micro_batches=1)


def split(g: nx.DiGraph, plan: Plan, p: SystolicParams) -> nx.DiGraph:
    """Each stage's graph (chip 0 of its tensor group): shards, all-reduces, sends; refused
    when a chip's HBM cannot hold its share (``check_hbm``)."""
    pg = partition_sram(g, plan) if plan.extra.get("weight_home") == "sram" else partition(g, plan)
    check_hbm(pg, plan, p)
    return pg
