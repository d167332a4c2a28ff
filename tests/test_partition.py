"""Partition: chip counts from memory capacity, Megatron TP shards, inserted communication."""

from __future__ import annotations

import pytest

from archsim.compiler.partition import (
    memory_need,
    partition,
    plan_memory_bound,
    shard,
    split_layers,
)
from archsim.core.errors import CapacityError, ScenarioError
from archsim.graph import OpKind, build_graph
from archsim.graph.model import load_model
from archsim.graph.scenario import Scenario

GB = 1e9


def _graph(name="llama3-70b", **sc):
    return build_graph(load_model(name), Scenario(**sc))


def test_split_layers_balanced():
    """80 layers over 3 stages: 27, 27, 26 contiguous layers."""
    assert split_layers(80, 3) == ((0, 27), (27, 54), (54, 80))


def test_auto_chips_70b_bf16():
    """llama3-70b bf16 weights (141.1 GB) need 2 chips of 72 GB usable (80 GB x 0.9):
    one chip holds 72 GB < 141 GB; two hold 70.6 GB of weights + 0.3 GB KV each."""
    plan = plan_memory_bound(_graph(batch=1, ctx=2048), 72 * GB, None, tp_max=8)
    assert (plan.tp, plan.pp, plan.chips) == (2, 1, 2)


def test_auto_chips_405b_needs_two_nodes():
    """llama3-405b bf16 (811 GB of weights) does not fit 8 x 72 GB = 576 GB, so it takes a
    second pipeline stage: 8-way tensor x 2 stages = 16 chips (about 51 GB each)."""
    plan = plan_memory_bound(_graph("llama3-405b"), 72 * GB, None, tp_max=8)
    assert (plan.tp, plan.pp) == (8, 2)


def test_requested_chips_too_few():
    """Asking for 1 chip for a 141 GB model is a one-line CapacityError."""
    with pytest.raises(CapacityError, match="does not fit on 1 chip"):
        plan_memory_bound(_graph(), 72 * GB, 1, tp_max=8)


def test_requested_chips_more_stages_than_layers():
    """16 chips for a 1-layer graph would need more pipeline stages than layers."""
    g = build_graph(load_model("llama3-8b"), Scenario(), layers=1)
    with pytest.raises(ScenarioError, match="pipeline stages"):
        plan_memory_bound(g, 72 * GB, 16, tp_max=8)


def test_memory_need_kv():
    """Resident KV = batch x (ctx + 1) x 327,680 B for llama3-70b in bf16."""
    need = memory_need(_graph(batch=4, ctx=999))
    assert need.kv_bytes == 4 * 1000 * 327_680


def test_tp_shards_shapes():
    """4-way TP: qkv keeps m, k and splits n (10240 -> 2560); o_proj splits k (8192 -> 2048);
    attention keeps 16 of 64 query heads and 2 of 8 KV heads."""
    g = _graph(batch=2, ctx=100)
    qkv = shard(g.nodes["L0.qkv_proj"]["op"], 4)
    assert (qkv.dim("m"), qkv.dim("n"), qkv.dim("k")) == (2, 2560, 8192)
    o = shard(g.nodes["L0.o_proj"]["op"], 4)
    assert (o.dim("n"), o.dim("k")) == (8192, 2048)
    attn = shard(g.nodes["L0.attention"]["op"], 4)
    assert (attn.dim("heads"), attn.dim("kv_heads")) == (16, 2)
    assert attn.kv_read_bytes == g.nodes["L0.attention"]["op"].kv_read_bytes / 4


def test_tp_more_chips_than_kv_heads_replicates_kv():
    """With 16-way TP and 8 KV heads each chip keeps one KV head (replicated)."""
    attn = shard(_graph().nodes["L0.attention"]["op"], 16)
    assert attn.dim("kv_heads") == 1 and attn.dim("heads") == 4


def test_partition_inserts_allreduce_and_sends():
    """TP=2, PP=2 on llama3-8b: two all-reduces per layer (after o_proj and down_proj) plus
    one for the vocab-parallel embedding; one send between the two stages."""
    g = _graph("llama3-8b")
    plan = plan_memory_bound(g, 1e15, 4, tp_max=2)
    assert (plan.tp, plan.pp) == (2, 2)
    pg = partition(g, plan)
    kinds = [d["op"].kind for _, d in pg.nodes(data=True)]
    assert kinds.count(OpKind.ALL_REDUCE) == 2 * 32 + 1
    assert kinds.count(OpKind.SEND_RECV) == 1
    send = next(d["op"] for _, d in pg.nodes(data=True) if d["op"].kind == OpKind.SEND_RECV)
    assert send.link_bytes == 1 * 4096 * 2  # [tokens, hidden] bf16
    stages = {d["op"].stage for n, d in pg.nodes(data=True) if n.startswith("L20.")}
    assert stages == {1}
