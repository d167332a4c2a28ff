"""Hybrid state-space models (Mamba-2 layers beside attention): the model spec, the SSM scan
op's FLOPs and state bytes against hand counts and an independent chunked-SSD reference,
memory need and tensor split, and runs on the families that lower the op."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import archsim
from archsim.compiler.partition import memory_need, shard
from archsim.core.errors import ModelError
from archsim.graph import build_graph, graph_totals, kv_bytes_per_token, param_count
from archsim.graph.build import ssm_scan_flops_per_seq, ssm_state_bytes_per_seq
from archsim.graph.model import ModelSpec, SSMSpec, load_model
from archsim.graph.ops import OpKind
from archsim.graph.scenario import Scenario


@pytest.fixture(scope="module")
def bamba() -> ModelSpec:
    return load_model("bamba-9b")


def test_bamba_parameters_are_the_model_cards(bamba):
    """9.78 B parameters (model card), by hand:
    embedding + lm_head 2 x 128,256 x 4,096 = 1,050,673,152; SwiGLU MLPs 32 x 3 x 4,096 x
    14,336 = 5,637,144,576; norms 2 x 4,096 x 32 + 4,096 = 266,240; 3 attention layers x
    (2 x 4,096^2 + 2 x 4,096 x 1,024) = 125,829,120; 29 Mamba-2 layers x (in_proj 4,096 x
    16,768 [2 x 8,192 + 2 x 128 + 128] + conv 8,448 x 5 + A, D, dt bias 384 + gate-norm 8,192
    + out_proj 8,192 x 4,096 = 102,286,976) = 2,966,322,304. Total 9,780,235,392."""
    assert param_count(bamba) == 9_780_235_392
    g = build_graph(bamba, Scenario(phase="decode", batch=1, ctx=16))
    assert graph_totals(g).params == 9_780_235_392


def test_layers_are_attention_or_ssm_as_listed(bamba):
    """Layers 9, 18, 27 have attention; the other 29 an SSM scan, and no attention."""
    g = build_graph(bamba, Scenario(phase="decode", batch=1, ctx=16))
    kinds: dict[int, set[str]] = {}
    for _, d in g.nodes(data=True):
        kinds.setdefault(d["op"].layer, set()).add(d["op"].kind.value)
    attn = [i for i in range(32) if "attention" in kinds[i]]
    ssm = [i for i in range(32) if "ssm_scan" in kinds[i]]
    assert attn == [9, 18, 27] and len(ssm) == 29 and not set(attn) & set(ssm)


def test_decode_state_bytes_and_flops_by_hand(bamba):
    """Per sequence and SSM layer, bf16: scan state 128 heads x 64 x 128 = 1,048,576
    elements + conv state 3 x 8,448 = 25,344 -> 2,147,840 B. A decode step reads and rewrites
    it: batch 2 -> 4,295,680 B each way per layer, x 29 layers = 124,574,720 B.
    FLOPs per sequence: conv 2 x 4 x 8,448 = 67,584; recurrence 5 x 128 x 64 x 128 =
    5,242,880 (decay 1, rank-1 update 2, readout 2 per state element) -> 5,310,464."""
    assert ssm_state_bytes_per_seq(bamba) == 2_147_840
    g = build_graph(bamba, Scenario(phase="decode", batch=2, ctx=100))
    op = g.nodes["L0.ssm_scan"]["op"]
    assert op.kind == OpKind.SSM_SCAN
    assert op.state_read_bytes == op.state_write_bytes == 4_295_680
    assert op.flops == 2 * 5_310_464
    t = graph_totals(g)
    assert t.state_read_bytes == t.state_write_bytes == 124_574_720


def test_prefill_writes_the_state_and_counts_chunked_ssd(bamba):
    """Prefill of one 600-token sequence from an empty cache: no state read, 2,147,840 B
    written. Chunks of 256: 256, 256, 88 -> sum of squares 2 x 65,536 + 7,744 = 138,816.
    conv 2 x 4 x 8,448 x 600 = 40,550,400; C B^T and (L o CB^T) X: 2 x 138,816 x (1 x 128
    + 128 x 64) = 2,309,898,240; chunk states and C S: 4 x 600 x 128 x 128 x 64 =
    2,516,582,400 -> 4,867,031,040."""
    sc = Scenario(phase="prefill", batch=1, seq=600)
    op = build_graph(bamba, sc, layers=1).nodes["L0.ssm_scan"]["op"]
    assert op.state_read_bytes == 0 and op.state_write_bytes == 2_147_840
    assert op.flops == 4_867_031_040


def _chunked_ssd(x, a, b, c, chunk, groups):
    """An independent minimal SSD (Mamba-2 paper, listing 1, with groups and a short last
    chunk), every product through ``mm`` which counts 2 m n k FLOPs. x [T, H, P], a [T, H]
    (log decay per step), b and c [T, G, N]. Returns (y [T, H, P], FLOPs)."""
    t_len, heads, p = x.shape
    per_group = heads // groups
    flops = [0.0]

    def mm(u, v):
        flops[0] += 2.0 * u.shape[0] * u.shape[1] * v.shape[1]
        return u @ v

    y = np.zeros_like(x)
    state = np.zeros((heads, b.shape[2], p))  # [H, N, P] carried between chunks
    for s0 in range(0, t_len, chunk):
        s1 = min(s0 + chunk, t_len)
        cum = np.cumsum(a[s0:s1], axis=0)  # [q, H]
        cb = [mm(c[s0:s1, gi], b[s0:s1, gi].T) for gi in range(groups)]  # [q, q] per group
        for hh in range(heads):
            gi = hh // per_group
            seg = cum[:, hh][:, None] - cum[:, hh][None, :]  # decay from s to l
            mask = np.tril(np.exp(np.where(np.tril(np.ones_like(seg)) > 0, seg, -np.inf)))
            y_diag = mm(mask * cb[gi], x[s0:s1, hh])  # [q, P]
            y_off = np.exp(cum[:, hh])[:, None] * mm(c[s0:s1, gi], state[hh])
            y[s0:s1, hh] = y_diag + y_off
            decay_to_end = np.exp(cum[-1, hh] - cum[:, hh])  # [q]
            new = mm((b[s0:s1, gi] * decay_to_end[:, None]).T, x[s0:s1, hh])  # [N, P]
            state[hh] = np.exp(cum[-1, hh]) * state[hh] + new
    return y, flops[0]


def test_ssd_flops_match_an_independent_chunked_scan():
    """A tiny Mamba-2 (4 heads of 3 channels, state 5, 2 groups, chunks of 4) over 10 tokens:
    the reference chunked SSD gives the same outputs as the token-by-token recurrence
    h_t = exp(a_t) h_(t-1) + B_t x_t^T, y_t = C_t h_t, and its counted products plus the conv
    (2 x 4 taps x 32 channels x 10 tokens) equal the graph's FLOPs."""
    ssm = SSMSpec(state_size=5, num_heads=4, head_dim=3, n_groups=2, conv_kernel=4, chunk_size=4)
    spec = ModelSpec(
        name="tiny-ssm", hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=4,
        intermediate_size=16, vocab_size=32, attention="mha", ssm=ssm, attention_layers=(1,),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    t_len = 10
    x = rng.standard_normal((t_len, 4, 3))
    a = -rng.uniform(0.1, 1.0, (t_len, 4))
    b = rng.standard_normal((t_len, 2, 5))
    c = rng.standard_normal((t_len, 2, 5))
    y, counted = _chunked_ssd(x, a, b, c, chunk=4, groups=2)
    h = np.zeros((4, 5, 3))
    for t in range(t_len):
        for hh in range(4):
            h[hh] = np.exp(a[t, hh]) * h[hh] + np.outer(b[t, hh // 2], x[t, hh])
            np.testing.assert_allclose(y[t, hh], c[t, hh // 2] @ h[hh], rtol=1e-9, atol=1e-9)
    conv = 2 * 4 * (4 * 3 + 2 * 2 * 5) * t_len
    assert ssm_scan_flops_per_seq(spec, Scenario(phase="prefill", seq=t_len)) == counted + conv


def test_memory_need_counts_kv_of_attention_layers_and_ssm_state(bamba):
    """Decode, batch 4, context 1000: KV only in the 3 attention layers: 4 x 1,001 tokens x
    2 x 3 x 8 x 128 x 2 B = 49,201,152; state 4 x 29 x 2,147,840 = 249,149,440. With only the
    first 10 layers (one attention layer, 9 SSM): KV 16,400,384, state 77,322,240."""
    assert kv_bytes_per_token(bamba, 2) == 2 * 3 * 8 * 128 * 2
    sc = Scenario(phase="decode", batch=4, ctx=1000)
    need = memory_need(build_graph(bamba, sc))
    assert need.kv_bytes == 49_201_152 and need.state_bytes == 249_149_440
    assert need.total == need.weight_bytes + need.kv_bytes + need.act_bytes + need.state_bytes
    part = memory_need(build_graph(bamba, sc, layers=10))
    assert part.kv_bytes == 16_400_384 and part.state_bytes == 77_322_240


def test_tensor_split_gives_each_chip_its_heads_and_their_state(bamba):
    """tp 8: 128 / 8 = 16 heads per chip, with an eighth of the state and of the FLOPs."""
    op = build_graph(bamba, Scenario(phase="decode", batch=2, ctx=100)).nodes["L0.ssm_scan"]
    local = shard(op["op"], 8)
    assert local.dim("heads") == 16 and local.dim("n") == 16 * 64
    assert local.state_write_bytes == op["op"].state_write_bytes / 8
    assert local.flops == op["op"].flops / 8 and local.group == 8


def test_hf_config_maps_to_the_shipped_spec(bamba, tmp_path):
    """A Bamba-style config.json (transformers BambaConfig keys) gives the same shape as the
    shipped YAML."""
    cfg = {
        "model_type": "bamba", "hidden_size": 4096, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
        "vocab_size": 128256, "hidden_act": "silu", "tie_word_embeddings": False,
        "max_position_embeddings": 4096, "attn_layer_indices": [9, 18, 27],
        "mamba_n_heads": 128, "mamba_d_head": 64, "mamba_n_groups": 1, "mamba_d_state": 128,
        "mamba_d_conv": 4, "mamba_expand": 2, "mamba_chunk_size": 256,
    }  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    spec = load_model(str(path))
    assert spec.ssm == bamba.ssm and spec.attention_layers == bamba.attention_layers
    assert param_count(spec) == param_count(bamba)


def test_bad_hybrid_specs_are_refused_in_one_line(bamba):
    """An attention layer out of range, or an ssm block without attention_layers."""
    from archsim.graph.model import _validate

    with pytest.raises(ModelError, match="attention_layers"):
        _validate(replace(bamba, attention_layers=(9, 40)))
    with pytest.raises(ModelError, match="both"):
        _validate(replace(bamba, attention_layers=None))


@pytest.mark.parametrize("arch", ["h100-like", "groq-like"])
@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_hybrid_runs_on_families_that_lower_the_scan(arch, phase):
    """The first two layers (both Mamba-2) simulate; the step's FLOPs are the graph's (every
    FLOP of the scan is lowered somewhere)."""
    kw = dict(phase=phase, batch=2, ctx=64, seq=64, layers=2)
    prec = "int8" if arch == "groq-like" else "bf16"
    r = archsim.simulate(arch, "bamba-9b", precision=prec, **kw)
    assert r.cycles > 0 and r.seconds > 0
    from archsim.graph.scenario import Precision

    sc = Scenario(phase=phase, batch=2, ctx=64, seq=64, precision=Precision.parse(prec))
    expected = graph_totals(build_graph(load_model("bamba-9b"), sc, layers=2)).flops
    served = r.extra.get("micro_batches", 1) * r.extra.get("micro_batch", 2) or 2
    assert expected * (1 - 1e-9) <= r.flops <= expected * max(served, 2) / 2 * (1 + 1e-3)
