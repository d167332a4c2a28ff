"""The layer graph: a networkx DiGraph of Op nodes for one step of one model."""

from archsim.graph.build import build_graph, ops_in_order, ssm_state_bytes_per_seq
from archsim.graph.ops import Op, OpKind
from archsim.graph.totals import GraphTotals, graph_totals, kv_bytes_per_token, param_count

__all__ = [
    "GraphTotals",
    "Op",
    "OpKind",
    "build_graph",
    "graph_totals",
    "kv_bytes_per_token",
    "ops_in_order",
    "param_count",
    "ssm_state_bytes_per_seq",
]
