"""Placement for h100-like: the fewest GPUs whose HBM holds weights + KV + activations
(Megatron tensor parallelism inside the NVLink domain first, then pipeline stages)."""

from __future__ import annotations

import networkx as nx

from archsim.compiler.partition import partition, plan_memory_bound
from archsim.core.plan import Plan
from archsim.families.gpu.params import GpuParams


def plan(g: nx.DiGraph, p: GpuParams, chips: int | None) -> Plan:
    """The share of HBM a serving engine may fill bounds each GPU."""
    cap = p.memory.hbm_bytes * p.memory.hbm_usable_fraction
    return plan_memory_bound(g, cap, chips, p.links.scale_up_domain)


def split(g: nx.DiGraph, plan: Plan) -> nx.DiGraph:
    """Each GPU's graph: Megatron shards, all-reduces, sends between stages."""
    return partition(g, plan)
