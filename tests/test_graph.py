"""Layer graph: parameter counts, KV bytes and FLOPs against hand-computed figures."""

from __future__ import annotations

import networkx as nx
import pytest

from archsim.core.errors import ModelError
from archsim.graph import (
    OpKind,
    build_graph,
    graph_totals,
    kv_bytes_per_token,
    ops_in_order,
    param_count,
)
from archsim.graph.model import load_model
from archsim.graph.scenario import Precision, Scenario

# Hand counts (see docs/validation.md): llama3-70b per layer
#   q 8192*8192 + k,v 2*8192*1024 + o 8192*8192 + mlp 3*8192*28672 + 2 norms * 8192
#   = 67,108,864 + 16,777,216 + 67,108,864 + 704,643,072 + 16,384 = 855,654,400
#   x 80 = 68,452,352,000; embed + lm_head 2 * 128256 * 8192 = 2,101,346,304; final norm 8192
LLAMA3_70B_PARAMS = 68_452_352_000 + 2_101_346_304 + 8_192  # 70,553,706,496
# llama3-8b per layer: 2*4096^2 + 2*4096*1024 + 3*4096*14336 + 2*4096 = 218,112,000
LLAMA3_8B_PARAMS = 32 * 218_112_000 + 2 * 128256 * 4096 + 4096  # 8,030,261,248


def test_param_counts_match_hand_counts():
    """llama3-70b has 70.55e9 parameters and llama3-8b 8.03e9."""
    assert param_count(load_model("llama3-70b")) == LLAMA3_70B_PARAMS
    assert param_count(load_model("llama3-8b")) == LLAMA3_8B_PARAMS
    assert round(LLAMA3_70B_PARAMS / 1e9, 2) == 70.55
    assert round(LLAMA3_8B_PARAMS / 1e9, 2) == 8.03


@pytest.mark.parametrize("name", ["llama3-8b", "llama3-70b", "llama2-70b", "llama3-405b"])
def test_graph_params_equal_formula(name):
    """The graph's ops own exactly the model's parameters (nothing double counted)."""
    spec = load_model(name)
    g = build_graph(spec, Scenario())
    assert graph_totals(g).params == param_count(spec)


def test_kv_bytes_per_token():
    """bf16 KV per token: 2 x layers x kv_heads x 128 x 2 B = 327,680 (70B), 131,072 (8B)."""
    assert kv_bytes_per_token(load_model("llama3-70b"), 2) == 327_680
    assert kv_bytes_per_token(load_model("llama3-8b"), 2) == 131_072


def test_graph_kv_traffic_decode():
    """A decode step reads batch x (ctx + 1) tokens of KV and appends batch tokens."""
    spec = load_model("llama3-8b")
    t = graph_totals(build_graph(spec, Scenario(phase="decode", batch=4, ctx=1000)))
    assert t.kv_read_bytes == 4 * 1001 * 131_072
    assert t.kv_write_bytes == 4 * 131_072


def test_decode_flops_formula():
    """Decode FLOPs = 2 x (params - embedding) x batch + attention 4 x b x heads x d x kv_len
    per layer (the embedding is a gather; lm_head counts once per sequence)."""
    spec = load_model("llama3-8b")
    b, ctx = 8, 511
    t = graph_totals(build_graph(spec, Scenario(phase="decode", batch=b, ctx=ctx)))
    matmul_params = LLAMA3_8B_PARAMS - 128256 * 4096 - (2 * 32 + 1) * 4096
    attention = 32 * 4 * b * 32 * 128 * (ctx + 1)
    assert t.flops == pytest.approx(2 * matmul_params * b + attention, rel=1e-12)


def test_prefill_attention_is_causal():
    """Causal prefill attention FLOPs: 4 x b x heads x d x S(S+1)/2 per layer."""
    spec = load_model("llama3-8b")
    g = build_graph(spec, Scenario(phase="prefill", batch=2, seq=100), layers=1)
    attn = g.nodes["L0.attention"]["op"]
    assert attn.flops == 4 * 2 * 32 * 128 * (100 * 101 / 2)


def test_precision_scales_weight_bytes():
    """int8 weights are half of bf16; int4 a quarter."""
    spec = load_model("llama3-8b")
    w = {
        p: graph_totals(build_graph(spec, Scenario(precision=Precision.parse(p)))).weight_bytes
        for p in ("bf16", "int8", "int4")
    }
    assert w["int8"] == pytest.approx(w["bf16"] / 2)
    assert w["int4"] == pytest.approx(w["bf16"] / 4)


def test_one_layer_graph():
    """layers=1 is one decoder layer: 11 ops in a dependency chain, no embedding or lm_head."""
    g = build_graph(load_model("llama3-70b"), Scenario(), layers=1)
    ops = ops_in_order(g)
    assert len(ops) == 11 and nx.is_directed_acyclic_graph(g)
    assert ops[0].kind == OpKind.NORM and ops[-1].kind == OpKind.RESIDUAL
    assert "embed" not in g and "lm_head" not in g


def _lexicographic_order(g):
    order = {n: i for i, n in enumerate(g.nodes)}
    return list(nx.lexicographical_topological_sort(g, key=order.get))


@pytest.mark.parametrize(
    ("arch", "model"), [("h100-like", "llama3-70b"), ("groq-like", "mixtral-8x7b")]
)
def test_ops_in_order_is_the_lexicographic_topological_order(arch, model):
    """The fast path (insertion order, when every edge goes forward) gives exactly the
    lexicographic topological sort, on built and on partitioned graphs; a graph whose
    insertion order is not topological still gets a topological order."""
    from archsim.config import load_arch
    from archsim.core.registry import get_family

    g = build_graph(load_model(model), Scenario(batch=4), layers=2)
    assert [op.id for op in ops_in_order(g)] == _lexicographic_order(g)
    params = load_arch(arch)
    family = get_family(params.family)
    plan = family.plan(g, params, None)
    pg = family.partition(g, plan, params)
    assert [op.id for op in ops_in_order(pg)] == _lexicographic_order(pg)

    back = nx.DiGraph()  # consumers inserted before their producers
    for name in ("c", "b", "a"):
        back.add_node(name, op=name)
    back.add_edges_from([("a", "b"), ("b", "c")])
    assert ops_in_order(back) == ["a", "b", "c"]


@pytest.mark.parametrize("name", ["mixtral-8x7b", "deepseek-v3"])
def test_moe_and_mla_graph_params_equal_formula(name):
    """MoE and MLA models build, and their ops own exactly the model's parameters."""
    spec = load_model(name)
    assert graph_totals(build_graph(spec, Scenario())).params == param_count(spec)


def test_context_beyond_the_model_is_refused():
    """A context longer than the model's positions is a ModelError."""
    with pytest.raises(ModelError, match="max_position_embeddings"):
        build_graph(load_model("mixtral-8x7b"), Scenario(ctx=40_000))


def test_op_roles_for_breakdowns():
    """An op's role drops the layer prefix and slice suffixes; comm ops go by their kind."""
    from archsim.graph.ops import Op

    assert Op("L3.qkv_proj", OpKind.MATMUL, 3).role == "qkv_proj"
    assert Op("L3.gate_up_proj.c2", OpKind.MATMUL, 3).role == "gate_up_proj"
    assert Op("lm_head", OpKind.MATMUL, 80).role == "lm_head"
    assert Op("L3.down_proj.c1.all_reduce", OpKind.ALL_REDUCE, 3).role == "all_reduce"
    assert Op("L9.ffn_residual.send_s1", OpKind.SEND_RECV, 9).role == "send_recv"


@pytest.mark.parametrize("arch", ["h100-like", "groq-like"])
def test_breakdown_uses_roles(arch):
    """Every family's time_by_op_kind is keyed by the same layer roles."""
    import archsim

    r = archsim.simulate(arch, "llama3-8b", batch=2, ctx=64, layers=2)
    roles = {
        "attn_norm",
        "qkv_proj",
        "rope",
        "attention",
        "o_proj",
        "attn_residual",
        "ffn_norm",
        "gate_up_proj",
        "act",
        "down_proj",
        "ffn_residual",
        "all_reduce",
        "send_recv",
    }
    assert set(r.time_by_op_kind) <= roles
    assert {"qkv_proj", "attention", "down_proj"} <= set(r.time_by_op_kind)
