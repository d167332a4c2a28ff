"""Placement for h100-like: the fewest GPUs whose HBM holds weights + KV + activations
(Megatron tensor parallelism inside the NVLink domain first, then pipeline stages)."""

from __future__ import annotations

import networkx as nx

from archsim.compiler.partition import partition, plan_memory_bound
from archsim.core.plan import Plan
from archsim.families.gpu.params import GpuParams


def plan(g: nx.DiGraph, p: GpuParams, chips: int | None) -> Plan:
    """The share of HBM a serving engine may fill bounds each GPU; tensor parallelism up to
    ``links.max_tensor_parallel`` (0: the NVLink domain)."""
    cap = p.memory.hbm_bytes * p.memory.hbm_usable_fraction
    return plan_memory_bound(g, cap, chips, max_tensor_parallel(p))


def max_tensor_parallel(p: GpuParams) -> int:
    """The planner's tensor-parallel limit: the configured one, or the NVLink domain."""
    return p.links.max_tensor_parallel or p.links.scale_up_domain


def split(g: nx.DiGraph, plan: Plan) -> nx.DiGraph:
    """Each GPU's graph: Megatron shards, all-reduces, sends between stages."""
    return partition(g, plan)
