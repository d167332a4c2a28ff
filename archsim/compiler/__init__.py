"""Compiler passes: partition (graph -> split graph), lower (-> stream), schedule."""

from archsim.compiler.partition import memory_need, partition, plan_memory_bound, split_layers
from archsim.core.plan import MemoryNeed, Plan

__all__ = ["MemoryNeed", "Plan", "memory_need", "partition", "plan_memory_bound", "split_layers"]
