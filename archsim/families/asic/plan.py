"""Placement for etched-like: the fewest chips whose HBM holds weights + KV + state +
activations, tensor-parallel inside one fully connected server first, then pipeline stages
across servers (generic memory-bound partition, Megatron splits)."""

from __future__ import annotations

import networkx as nx

from archsim.compiler.partition import partition, plan_memory_bound
from archsim.core.plan import Plan
from archsim.families.asic.params import AsicParams


def plan(g: nx.DiGraph, p: AsicParams, chips: int | None) -> Plan:
    cap = p.memory.hbm_bytes * p.memory.hbm_usable_fraction
    return plan_memory_bound(g, cap, chips, p.links.chips_per_server)


def split(g: nx.DiGraph, plan: Plan) -> nx.DiGraph:
    """Each stage's graph (one chip of its tensor group): shards, all-reduces, sends."""
    return partition(g, plan)
