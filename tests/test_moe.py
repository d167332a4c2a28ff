"""Mixture of experts and MLA: routing in expectation (tokens per expert, experts touched,
ranks reached), the graph's MoE and MLA ops, expert parallelism and its all-to-all bytes,
and the families that run or refuse them. Every number is a hand count written out in the
docstring, or an independent brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import archsim
from archsim.compiler.partition import partition
from archsim.config import load_arch
from archsim.core.errors import ArchsimError, ScenarioError, UnsupportedOpError
from archsim.core.registry import get_family
from archsim.graph import build_graph, graph_totals, kv_bytes_per_token, param_count
from archsim.graph.model import load_model
from archsim.graph.moe import (
    expert_load,
    hottest_rank,
    rank_traffic,
    routing_probs,
    tokens_owned,
)
from archsim.graph.ops import A2A_PATTERNS, OpKind
from archsim.graph.scenario import Precision, Scenario
from archsim.graph.totals import active_param_count

# ---- routing in expectation ---------------------------------------------------------------


def test_uniform_tokens_per_expert():
    """Uniform routing: each expert gets T x k / E rows. Mixtral (E 8, top-2), 4 tokens: 1.0
    each, 8 rows in all; DeepSeek-V3 (E 256, top-8), 64 tokens: 2.0 each, 512 in all."""
    mx = expert_load(8, 2, 4, 0.0)
    assert mx.tokens_per_expert() == (1.0,) * 8 and mx.routed() == 8
    ds = expert_load(256, 8, 64, 0.0)
    assert set(ds.tokens_per_expert()) == {2.0} and ds.routed() == 512
    assert ds.hottest() == 2.0


def test_distinct_experts_touched_hand_counts():
    """E (1 - (1 - k/E)^T): Mixtral, 1 token: 8 x (1 - 6/8) = 2 (its top-2); 4 tokens:
    8 x (1 - 0.75^4) = 8 x 0.68359375 = 5.46875. DeepSeek-V3, 32 tokens:
    256 x (1 - (31/32)^32) = 256 x (1 - 0.362055) = 163.3138; 1024 tokens: all but 2e-12
    of 256."""
    assert expert_load(8, 2, 1, 0.0).active() == pytest.approx(2.0, rel=1e-12)
    assert expert_load(8, 2, 4, 0.0).active() == pytest.approx(5.46875, rel=1e-12)
    assert expert_load(256, 8, 32, 0.0).active() == pytest.approx(163.3138, rel=1e-6)
    assert expert_load(256, 8, 1024, 0.0).active() == pytest.approx(256.0, rel=1e-9)


@pytest.mark.parametrize("experts, top_k, tokens", [(4, 2, 2), (5, 2, 3), (6, 3, 2)])
def test_distinct_experts_against_brute_force(experts, top_k, tokens):
    """The expected number of distinct experts equals the mean over every equally likely
    routing (each token: one of the C(E, k) sets of experts), enumerated exhaustively."""
    sets = list(itertools.combinations(range(experts), top_k))
    total = sum(len(set().union(*combo)) for combo in itertools.product(sets, repeat=tokens))
    exact = total / len(sets) ** tokens
    assert expert_load(experts, top_k, tokens, 0.0).active() == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("experts, top_k, block", [(8, 2, 4), (6, 2, 2), (7, 3, 3)])
def test_probability_a_token_misses_a_rank_against_brute_force(experts, top_k, block):
    """Uniform: P(a token picks none of a block of experts) = C(E - |S|, k) / C(E, k), the
    share of the equally likely expert sets that avoid the block (enumerated)."""
    sets = list(itertools.combinations(range(experts), top_k))
    avoid = sum(all(e >= block for e in s) for s in sets) / len(sets)
    load = expert_load(experts, top_k, 1, 0.0).subset(0, block)
    assert load.miss() == pytest.approx(avoid, rel=1e-12)
    assert avoid == pytest.approx(math.comb(experts - block, top_k) / math.comb(experts, top_k))


def test_zipf_skew_probabilities_hand_counts():
    """s = 1, E 4, top-1: weights 1, 1/2, 1/3, 1/4 (sum 25/12) -> 12/25, 6/25, 4/25, 3/25.
    s = 3, top-2: 2 / (1 + 1/8 + 1/27 + 1/64) > 1 for expert 0, so it is capped at 1 and the
    other choice shares the rest: 1/8, 1/27, 1/64 over their sum 0.177662 -> 0.703583,
    0.208469, 0.087948."""
    assert routing_probs(4, 1, 1.0) == pytest.approx((12 / 25, 6 / 25, 4 / 25, 3 / 25))
    p = routing_probs(4, 2, 3.0)
    assert p == pytest.approx((1.0, 0.703583, 0.208469, 0.087948), rel=1e-5)
    assert sum(p) == pytest.approx(2.0)
    assert routing_probs(8, 2, 0.0) == (0.25,) * 8


def test_hottest_rank_under_skew():
    """Mixtral, 2 ranks, skew 1: p_e = 2 / H_8 / (e + 1) with H_8 = 2.717857; rank 0 holds
    experts 0-3, whose probabilities sum to 2 x 2.083333 / 2.717857 = 1.533070 rows per
    token (rank 1: 0.466930): rank 0 is the hottest; uniform, both get 1.0 per token and
    the tie goes to rank 0 (which also owns the odd token)."""
    load = expert_load(8, 2, 10, 1.0)
    assert hottest_rank(load, 2) == 0
    assert load.subset(0, 4).routed() == pytest.approx(15.33070, rel=1e-5)
    assert load.subset(4, 8).routed() == pytest.approx(4.66930, rel=1e-5)
    assert hottest_rank(expert_load(8, 2, 7, 0.0), 2) == 0
    assert [tokens_owned(7, 2, r) for r in range(2)] == [4, 3]


def test_dispatch_traffic_hand_count():
    """Mixtral on 2 ranks, 8 tokens, uniform: rank 0 owns 4; a token misses the other
    rank's 4 experts with probability C(4,2)/C(8,2) = 6/28, so it sends 4 x 22/28 = 22/7
    tokens and receives as many from rank 1's 4 tokens. DeepSeek-V3 on 8 ranks, 64 tokens:
    8 owned, each reaching 7 x (1 - C(224,8)/C(256,8)) other ranks."""
    t = rank_traffic(expert_load(8, 2, 8, 0.0), 2, 0)
    assert t.own == 4 and t.sent == pytest.approx(22 / 7) and t.received == pytest.approx(22 / 7)
    ds = rank_traffic(expert_load(256, 8, 64, 0.0), 8, 0)
    miss = math.comb(224, 8) / math.comb(256, 8)
    assert ds.own == 8 and ds.sent == pytest.approx(8 * 7 * (1 - miss), rel=1e-12)
    assert ds.received == pytest.approx(56 * (1 - miss), rel=1e-12)


# ---- the graph ----------------------------------------------------------------------------


def test_deepseek_v3_parameters_hand_count():
    """Attention per layer: 7168 x (1536 + 512 + 64) + 1536 + 512 (norms) + 1536 x 128 x 192
    + 512 x 128 x 256 + 128 x 128 x 7168 = 187,107,328, x 61 = 11,413,547,008; dense FFN
    3 x 7168 x 18432 x 3 layers = 1,189,085,184; MoE layer (256 routed + 1 shared) x
    44,040,192 + router 7168 x 256 = 11,320,164,352, x 58 = 656,569,532,416; layer norms
    61 x 2 x 7168 = 874,496; embedding + lm_head 2 x 129280 x 7168 = 1,853,358,080; final
    norm 7168: 671,026,404,352. Active (8 routed): 37,552,282,624 (the report's 37B)."""
    spec = load_model("deepseek-v3")
    assert param_count(spec) == 671_026_404_352
    assert active_param_count(spec) == 37_552_282_624
    mx = load_model("mixtral-8x7b")
    # 32 x (attention 41,943,040 + 8 experts x 176,160,768 + router 32,768 + norms 8,192)
    # + 2 x 32000 x 4096 + 4096 = 46,702,792,704; active: 2 experts -> 12,879,925,248
    assert param_count(mx) == 46_702_792_704 and active_param_count(mx) == 12_879_925_248


def test_mla_kv_bytes_per_token():
    """DeepSeek-V3 caches one latent of 512 + 64 dims per token and layer: 61 x 576 x 2 B =
    70,272 B at bf16 (about 70 KB), against 327,680 B for llama3-70b's GQA."""
    assert kv_bytes_per_token(load_model("deepseek-v3"), 2) == 70_272
    assert kv_bytes_per_token(load_model("llama3-70b"), 2) == 327_680


def test_mla_decode_op_hand_count():
    """Layer 0 of DeepSeek-V3, decode, 2 sequences at ctx 100 (kv_len 101): per sequence the
    absorbed path does 2 x 128 x 512 x (128 + 128) = 33,554,432 FLOPs of up-projections,
    2 x 128 x 101 x 576 = 14,893,056 of scores and 2 x 128 x 101 x 512 = 13,238,272 of P @
    latent: 61,685,760; it reads 2 x 101 x 1152 B of latent cache and appends 2 x 1152 B."""
    g = build_graph(load_model("deepseek-v3"), Scenario(batch=2, ctx=100), layers=1)
    op = g.nodes["L0.attention"]["op"]
    assert op.kind == OpKind.MLA_ATTENTION and op.dim("absorbed") == 1
    assert op.flops == 2 * 61_685_760
    assert op.kv_read_bytes == 2 * 101 * 1152 and op.kv_write_bytes == 2 * 1152
    assert op.params == 512 * 128 * 256


def test_moe_layer_ops_and_weight_bytes():
    """Mixtral layer 0, decode batch 4: a router (4 x 8 x 4096 x 2 FLOPs, 8 x 4096 weights),
    and the experts: 8 rows, 5.46875 experts touched, so 5.46875 x 3 x 4096 x 14336 x 2 B
    of weights read and 2 x 8 x 4096 x 14336 x 3 FLOPs; no dense FFN."""
    g = build_graph(load_model("mixtral-8x7b"), Scenario(batch=4, ctx=64), layers=1)
    kinds = {g.nodes[n]["op"].role: g.nodes[n]["op"].kind for n in g}
    assert kinds["router"] == OpKind.ROUTER and kinds["experts"] == OpKind.EXPERT_FFN
    assert "gate_up_proj" not in kinds
    router, experts = g.nodes["L0.router"]["op"], g.nodes["L0.experts"]["op"]
    assert router.flops == 2 * 4 * 8 * 4096 and router.params == 8 * 4096
    assert experts.dim("m") == 8 and experts.dim("active") == 5
    assert experts.weight_bytes == pytest.approx(5.46875 * 3 * 4096 * 14336 * 2)
    assert experts.flops == 2 * 8 * 4096 * 14336 * 3


def test_dense_first_layers_and_shared_experts():
    """DeepSeek-V3: layers 0-2 keep a dense FFN; layer 3 has the router, the experts and
    the shared expert (a dense gated FFN of width 2048) beside them."""
    g = build_graph(load_model("deepseek-v3"), Scenario(batch=1, ctx=16), layers=4)
    assert "L2.gate_up_proj" in g and "L2.router" not in g
    assert {"L3.router", "L3.experts", "L3.shared_gate_up", "L3.shared_down"} <= set(g)
    shared = g.nodes["L3.shared_gate_up"]["op"]
    assert (shared.dim("n"), shared.dim("k")) == (2 * 2048, 7168)


# ---- expert parallelism -------------------------------------------------------------------


def _ep_graph(model: str, batch: int, layers: int, chips: int, skew: float = 0.0):
    fam, p = get_family("h100-like"), load_arch("h100-like")
    sc = Scenario(batch=batch, ctx=64, routing_skew=skew)
    g = build_graph(load_model(model), sc, layers=layers)
    plan = fam.plan(g, p, chips)
    return plan, partition(g, plan)


def test_expert_parallel_all_to_all_bytes_hand_count():
    """Mixtral on 2 H100s (ep 2), 8 tokens: the hottest rank (0) owns 4; its dispatch sends
    22/7 tokens x 4096 x 2 B = 25,746.3 B and receives as many; the combine moves the
    same back; the reduce-scatter of o_proj sends the other rank's 4 rows (32,768 B) and
    the all-gather of the layer output sends its own 4 rows to the one peer (32,768 B)."""
    plan, pg = _ep_graph("mixtral-8x7b", 8, 1, 2)
    assert (plan.tp, plan.ep) == (2, 2)
    a2a = {pg.nodes[n]["op"].role: pg.nodes[n]["op"] for n in pg
           if pg.nodes[n]["op"].kind == OpKind.ALL_TO_ALL}  # fmt: skip
    assert set(a2a) == set(A2A_PATTERNS)
    token = 4096 * 2
    assert a2a["moe_dispatch"].link_bytes == pytest.approx(22 / 7 * token)
    assert a2a["moe_dispatch"].dim("recv_bytes") == round(22 / 7 * token)
    assert a2a["moe_combine"].link_bytes == pytest.approx(22 / 7 * token)
    assert a2a["reduce_scatter"].link_bytes == 4 * token
    assert a2a["all_gather"].link_bytes == 4 * token
    assert not any(pg.nodes[n]["op"].role == "all_reduce" for n in pg if "L0.o_proj" in n)


def test_expert_parallel_rank_runs_its_experts_and_its_tokens():
    """The simulated rank holds 4 of Mixtral's 8 experts (4 x 3 x 4096 x 14336 parameters)
    and gets 8 tokens x 2 x 4/8 = 8 rows; its norm, router and residual run on its 4
    tokens; attention keeps all 8 sequences with half the heads (tensor parallel)."""
    _, pg = _ep_graph("mixtral-8x7b", 8, 1, 2)
    experts = pg.nodes["L0.experts"]["op"]
    assert experts.params == 4 * 3 * 4096 * 14336 and experts.experts.routed() == 8.0
    assert pg.nodes["L0.ffn_norm"]["op"].dim("m") == 4
    assert pg.nodes["L0.router"]["op"].dim("m") == 4
    attn = pg.nodes["L0.attention"]["op"]
    assert (attn.dim("batch"), attn.dim("heads")) == (8, 16)


def test_skewed_routing_makes_the_hottest_rank_slower():
    """Skew 1 puts 1.533 of every token's 2 choices on rank 0's experts (uniform: 1.0), so
    the simulated rank's experts get 53% more rows: its grouped GEMM FLOPs grow by that
    ratio and the step is no faster."""
    _, uni = _ep_graph("mixtral-8x7b", 64, 1, 2)
    _, hot = _ep_graph("mixtral-8x7b", 64, 1, 2, skew=1.0)
    f_uni, f_hot = uni.nodes["L0.experts"]["op"].flops, hot.nodes["L0.experts"]["op"].flops
    assert f_hot / f_uni == pytest.approx(1.533070, rel=1e-5)
    kw = dict(batch=64, ctx=64, layers=1, chips=2)
    assert (
        archsim.simulate("h100-like", "mixtral-8x7b", routing_skew=1.0, **kw).seconds
        >= archsim.simulate("h100-like", "mixtral-8x7b", **kw).seconds
    )


def test_mla_latent_is_replicated_under_tensor_parallelism():
    """DeepSeek-V3 layer 0 on 8 GPUs: each holds 16 of the 128 heads and their share of
    kv_b_proj, but the whole latent cache of every sequence (it is one per token)."""
    fam, p = get_family("h100-like"), load_arch("h100-like")
    g = build_graph(load_model("deepseek-v3"), Scenario(batch=4, ctx=100), layers=1)
    plan = fam.plan(g, p, 8)
    whole, local = g.nodes["L0.attention"]["op"], partition(g, plan).nodes["L0.attention"]["op"]
    assert local.dim("heads") == 16 and local.kv_read_bytes == whole.kv_read_bytes
    assert local.params == whole.params // 8


# ---- families -----------------------------------------------------------------------------


def test_h100_runs_deepseek_v3_with_expert_parallelism():
    """The whole model at bf16 (1.34 TB) needs 24 H100s: 8-way within a node (experts over
    the 8, 32 each) x 3 pipeline stages; a decode step has a per-token latency and its
    MoE layers' all-to-alls on the critical path."""
    r = archsim.simulate("h100-like", "deepseek-v3", batch=1, ctx=2048)
    assert (r.chips, r.tp, r.pp, r.meta["plan"]["ep"]) == (24, 8, 3, 8)
    assert r.tpot_s > 0 and {"moe_dispatch", "moe_combine", "experts"} <= set(r.time_by_op_kind)


def test_mixtral_fits_one_h100_node():
    """Mixtral bf16 (93.4 GB of weights) takes 2 of a node's 8 H100s, experts split 4 + 4."""
    r = archsim.simulate("h100-like", "mixtral-8x7b", batch=8, ctx=2048)
    assert r.chips <= 8 and r.meta["plan"]["ep"] == r.tp and r.pp == 1


def test_gpu_step_flops_are_the_models_under_uniform_routing():
    """With uniform routing every rank is the hottest, so the step's FLOPs (the simulated
    rank's x its ranks) equal the graph's: experts, router and the rest."""
    kw = dict(batch=16, ctx=64, layers=2)
    r = archsim.simulate("h100-like", "mixtral-8x7b", chips=2, **kw)
    g = build_graph(load_model("mixtral-8x7b"), Scenario(batch=16, ctx=64), layers=2)
    assert r.flops == pytest.approx(graph_totals(g).flops, rel=1e-9)


def test_groq_expert_slices_install_every_expert():
    """Mixtral layer 0 on groq-like (8-chip tensor groups, 2 stages): the 8 experts are cut
    into 2 slices of 4 on the 2 stages, the router's stage dispatching to the other. A
    static schedule installs every expert of a slice: per expert gate/up 4096 x (2 x
    14336 / 8) = ceil(4096/320) x ceil(3584/320) = 13 x 12 = 156 tiles and down 1792 x 4096
    = 6 x 13 = 78 tiles: 4 x 234 = 936 tiles for the slice, at batch 1."""
    r = archsim.simulate("groq-like", "mixtral-8x7b", batch=1, ctx=64, layers=1)
    assert (r.tp, r.pp, r.meta["plan"]["ep"]) == (8, 2, 2)
    s = r.stream
    mxm = [i for i in range(len(s)) if s.op_names[s.op[i]] == "L0.experts.c0"
           and s.opcode_names[s.opcode[i]] == "mxm"]  # fmt: skip
    assert int(s.n[mxm].sum()) == 936
    assert {"moe_dispatch", "moe_combine"} & set(r.op_roles.values())


@pytest.mark.slow
def test_groq_runs_deepseek_v3_whole_model():
    """The whole model at bf16 on groq-like: thousands of chips, experts sliced over many
    stages of each MoE layer; about 3 s to simulate."""
    r = archsim.simulate("groq-like", "deepseek-v3", batch=1, ctx=2048)
    assert r.chips > 5000 and r.meta["plan"]["ep"] > 8
    assert r.extra["per_token_latency_s"] > 0


def test_groq_runs_deepseek_v3_moe_layer():
    """Four layers of DeepSeek-V3 (three dense, one MoE with MLA) on groq-like."""
    r = archsim.simulate("groq-like", "deepseek-v3", batch=2, ctx=128, layers=4)
    assert r.meta["plan"]["ep"] > 1 and r.extra["per_token_latency_s"] > 0
    assert {"experts", "router", "attention"} <= set(r.time_by_op_kind)


def test_etched_runs_mixtral_only_with_the_host_routing():
    """etched-like refuses MoE routing in one line naming the router; with
    admission.moe_host_fallback the whole model runs (a PCIe round trip per MoE layer);
    DeepSeek's MLA is refused either way."""
    with pytest.raises(UnsupportedOpError, match="L0.router"):
        archsim.simulate("etched-like", "mixtral-8x7b", batch=4, ctx=64, layers=1)
    r = archsim.simulate(
        "etched-like", "mixtral-8x7b", batch=4, ctx=64, precision="fp8",
        overrides={"admission.moe_host_fallback": True},
    )  # fmt: skip
    host = get_family("etched-like").opcode_mask(r.stream, "host")
    assert int(host.sum()) == 32 and r.seconds > 0
    with pytest.raises(UnsupportedOpError, match="mla_attention"):
        archsim.simulate("etched-like", "deepseek-v3", batch=4, ctx=64, layers=1)


@pytest.mark.parametrize("arch", ["cerebras-like", "dmatrix-like", "matx-like", "tpu-v5e"])
@pytest.mark.parametrize("model", ["mixtral-8x7b", "deepseek-v3"])
def test_sram_wafer_and_systolic_families_run_moe_and_mla(arch, model):
    """cerebras-like, dmatrix-like and matx-like (and its TPU presets) lower every new kind:
    DeepSeek's first MoE layer (layer 3) and Mixtral's run. Their FLOPs are the graph's,
    plus, on a tensor group of tp chips, (tp - 1) more copies at most of the replicated ops
    every chip runs whole (the router, MLA's down-projections); under uniform routing every
    expert-parallel rank is the hottest, so none is lost."""
    layers = 4 if model == "deepseek-v3" else 1
    r = archsim.simulate(arch, model, batch=2, ctx=64, layers=layers)
    g = build_graph(load_model(model), Scenario(batch=2, ctx=64), layers=layers)
    assert r.seconds > 0 and {"router", "experts"} <= set(r.op_roles.values())
    model_flops = graph_totals(g).flops
    replicated = sum(d["op"].flops for _, d in g.nodes(data=True)
                     if d["op"].tp_role == "replicated")  # fmt: skip
    assert model_flops * (1 - 1e-9) <= r.flops <= model_flops + (r.tp - 1) * replicated + 1


def test_routing_skew_is_validated():
    """A negative or non-numeric skew is a ScenarioError."""
    for bad in (-1.0, float("nan"), "x"):
        with pytest.raises(ScenarioError):
            Scenario(routing_skew=bad)
    with pytest.raises(ArchsimError):
        archsim.simulate("h100-like", "mixtral-8x7b", layers=1, routing_skew=-0.5)


def test_fp8_dispatch_is_half_the_bf16_bytes():
    """At --precision fp8 activations are one byte: the dispatch carries half the bytes of
    bf16, the combine (bf16 outputs) the same."""
    fam, p = get_family("h100-like"), load_arch("h100-like")
    out = {}
    for prec in ("bf16", "fp8"):
        sc = Scenario(batch=8, ctx=64, precision=Precision.parse(prec))
        g = build_graph(load_model("mixtral-8x7b"), sc, layers=1)
        pg = partition(g, fam.plan(g, p, 2))
        out[prec] = [pg.nodes[f"L0.{n}"]["op"].link_bytes
                     for n in ("router.dispatch", "experts.combine")]  # fmt: skip
    assert out["fp8"][0] == pytest.approx(out["bf16"][0] / 2)
    assert out["fp8"][1] == pytest.approx(out["bf16"][1])
    assert np.isfinite(out["fp8"]).all()
