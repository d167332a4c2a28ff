"""matx-like (archsim/families/systolic): array splitting, scratchpad tiling, weight residency,
double buffering, links, presets against published peaks, the mapping in the kernel JSON and
the trace, and clean refusals. Numbers are hand counts written out in each docstring."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

import archsim
from archsim.config import load_arch
from archsim.core.errors import ArchsimError, ConfigError, UnsupportedOpError
from archsim.core.registry import get_family
from archsim.kernel import simulate_kernel
from archsim.pipeline import refuse_unsupported

# llama3-8b: one token of K and V in one layer is 2 x 8 KV heads x 128 x 2 B
KV_TOKEN_LAYER_BYTES = 2 * 8 * 128 * 2


@pytest.mark.cycle_exact
def test_splitting_the_array_speeds_a_batch1_decode_gemm():
    """[1, 8192] @ [8192, 8192] bf16 on matx-like (16 arrays of 256 x 256, bf16 at half a
    product per PE per cycle, weights resident). Weight-stationary, double-buffered folds:
    P + (f - 1) max(S, P) + S + r + c - 2 with S = ceil(1 / 0.5) = 2.
    Unsplit: r = c = 256, folds (8192/256)^2 = 1024 over 16 arrays = 64, P = 256:
    256 + 63 x 256 + 2 + 510 = 16,896 cycles. Split 4 x 4: r = c = 64, 256 sub-arrays,
    folds 128^2 = 16,384 / 256 = 64, P = 64: 64 + 63 x 64 + 2 + 126 = 4,224 cycles: the
    weight preload (injection) bound, 4x faster with 4x the array edge."""
    whole = simulate_kernel("matx-like", "gemm", m=1, n=8192, k=8192,
                            overrides=["systolic.max_split=1"])  # fmt: skip
    split = simulate_kernel("matx-like", "gemm", m=1, n=8192, k=8192)
    assert (whole.choice["dataflow"], whole.choice["split"]) == ("ws", 1)
    assert (split.choice["dataflow"], split.choice["split"], split.choice["sub_array"]) == (
        "ws", 4, "64x64",
    )  # fmt: skip
    assert whole.cycles == whole.compute_cycles == 16_896
    assert split.cycles == split.compute_cycles == 4_224
    assert split.bytes_by_tier["hbm"] == 0  # 128 MiB of weights stay in the scratchpad


def test_shrinking_the_scratchpad_forces_smaller_tiles_and_more_hbm_traffic():
    """[4096, 4096] @ [4096, 4096] bf16 on tpu-v5e (weights stream from HBM). With 128 MiB of
    VMEM the activations (32 MiB in + 32 MiB out) stay in the scratchpad and the weights are
    read once: 4096 x 4096 x 2 = 33,554,432 B. Shrinking VMEM spills the activations (at
    least A + B + C = 3 x 32 MiB) and then leaves only smaller tiles, each re-reading an
    operand more often: HBM traffic grows at every step, and once both operands stream the
    tiles shrink with the scratchpad."""
    traffic, volume = [], []
    for vmem in (128 * 2**20, 16 * 2**20, 4 * 2**20, 2**20):
        r = simulate_kernel("tpu-v5e", "gemm", m=4096, n=4096, k=4096,
                            overrides=[f"scratchpad.bytes={vmem}"])  # fmt: skip
        c = r.choice
        traffic.append(r.bytes_by_tier["hbm"])
        volume.append(c["tile_m"] * c["tile_n"] * c["tile_k"])
        assert c["double_buffered"] and c["loop_order"] in ("mnk", "nmk")
    assert traffic[0] == 4096 * 4096 * 2
    assert traffic[1] >= 3 * 4096 * 4096 * 2
    assert all(a < b for a, b in zip(traffic, traffic[1:], strict=False))
    assert all(a > b for a, b in zip(volume[1:], volume[2:], strict=False))


def test_decode_with_resident_weights_reads_only_the_kv_cache_from_hbm():
    """matx-like keeps every weight in the scratchpads (weight_home sram), so a decode step's
    HBM traffic is the KV cache alone: llama3-8b, 2 layers, batch 2, ctx 64: per layer read
    2 x 65 x 4096 B and write 2 x 1 x 4096 B -> 2 x (532,480 + 8,192) = 1,081,344 B."""
    r = archsim.simulate("matx-like", "llama3-8b", batch=2, ctx=64, layers=2)
    assert r.extra["weight_home"] == "sram" and r.extra["weights_resident_fraction"] == 1.0
    assert r.bytes_by_tier["hbm"] == 2 * (2 * 65 + 2 * 1) * KV_TOKEN_LAYER_BYTES


def test_streamed_weights_are_read_every_step():
    """tpu-v5e pins no weights (XLA streams them through VMEM): the same step reads every
    weight once plus the KV cache: 872,448,000 + 1,081,344 B."""
    r = archsim.simulate("tpu-v5e", "llama3-8b", batch=2, ctx=64, layers=2)
    assert r.extra["weight_home"] == "hbm" and r.extra["weights_resident_fraction"] == 0.0
    assert r.bytes_by_tier["hbm"] == r.weight_bytes + 2 * (2 * 65 + 2) * KV_TOKEN_LAYER_BYTES


def test_a_small_scratchpad_falls_back_to_streaming_weights():
    """When no packing of the weights into the scratchpads fits the system (1 MB each: one
    layer of llama3-8b would need 600 chips; the system is capped at 64), matx-like plans by
    HBM capacity and streams the weights it cannot pin."""
    r = archsim.simulate("matx-like", "llama3-8b", batch=1, ctx=64, layers=1,
                         overrides=["scratchpad.bytes=1e6", "links.max_chips=64"])  # fmt: skip
    assert r.extra["weight_home"] == "hbm" and r.chips == 1
    assert r.bytes_by_tier["hbm"] > r.weight_bytes


def test_double_buffering_overlaps_the_weight_stream_with_the_arrays():
    """[8, 8192] @ [8192, 8192] on tpu-v5e streams 128 MiB of weights at 546 B/cycle
    (819 GB/s at 1.5 GHz): 245,760 cycles of HBM; the arrays need 131,334. Double-buffered,
    the GEMM takes the longer of the two plus one block's fill and one block's work, far
    less than their sum."""
    r = simulate_kernel("tpu-v5e", "gemm", m=8, n=8192, k=8192)
    p = load_arch("tpu-v5e")
    hbm = r.bytes_by_tier["hbm"] / (p.hbm.bw_bytes_per_s / p.chip.clock_hz)
    assert r.bytes_by_tier["hbm"] == 8192 * 8192 * 2
    assert max(hbm, r.compute_cycles) < r.cycles < 1.01 * max(hbm, r.compute_cycles)
    assert r.cycles < 0.7 * (hbm + r.compute_cycles)
    assert r.choice["double_buffered"]


@pytest.mark.cycle_exact
def test_scratchpad_ports_stretch_an_array_pass():
    """With 1 B per port (matx-like: 256 banks x 2 ports = 512 B/cycle) the arrays of the
    split GEMM above wait on the scratchpad: cycles = ceil(scratchpad bytes / 512)."""
    r = simulate_kernel("matx-like", "gemm", m=1, n=8192, k=8192,
                        overrides=["scratchpad.port_bytes_per_cycle=1"])  # fmt: skip
    assert r.cycles == math.ceil(r.bytes_by_tier["scratchpad"] / 512) > r.compute_cycles


@pytest.mark.cycle_exact
def test_all_reduce_hand_counts():
    """16,384 B over 8 ranks. matx-like (all-to-all node, hop 0.5 us = 900 cycles, 62.5 B
    per cycle per link): two-shot, 2 x (900 + ceil(2048 / 62.5)) = 1,866 cycles. tpu-v5e
    (2D torus ring on 2 links, hop 1 us = 1,500 cycles, 30 B/cycle per link): 14 steps,
    14 x 1,500 + ceil(14 x 2048 / 60) = 21,478 cycles."""
    assert simulate_kernel("matx-like", "all-reduce", bytes=16384, ranks=8).cycles == 1_866
    assert simulate_kernel("tpu-v5e", "all-reduce", bytes=16384, ranks=8).cycles == 21_478


def test_decode_attention_streams_the_kv_cache():
    """Decode attention over 32,768 cached tokens of one KV head (16 MiB) cannot beat HBM:
    at least 16 MiB / 3,889 B/cycle on matx-like; the KV streams in blocks behind the
    arrays (double buffered)."""
    r = simulate_kernel("matx-like", "attention", batch=1, heads=8, kv_heads=1, head_dim=128,
                        ctx=32768)  # fmt: skip
    p = load_arch("matx-like")
    assert r.bytes_by_tier["hbm"] == 32768 * 2 * 128 * 2
    assert r.cycles >= r.bytes_by_tier["hbm"] / (p.hbm.bw_bytes_per_s / p.chip.clock_hz)
    assert r.choice["kv_block_tokens"] < 32768 and r.choice["double_buffered"]
    assert {x["dataflow"] for x in r.choice["passes"]} <= {"ws", "os", "is"}


@pytest.mark.parametrize(
    "arch, precision, published",
    [("tpu-v5e", "bf16", 197e12), ("tpu-v5e", "int8", 394e12), ("tpu-v4", "bf16", 275e12),
     ("tpu-v6e", "bf16", 918e12), ("tpu-v6e", "int8", 1836e12), ("matx-like", "fp8", 3.8e15)],
)  # fmt: skip
def test_presets_reach_their_published_peaks(arch, precision, published):
    """arrays x rows x cols x 2 x rate x clock equals the published per-chip peak (GCP,
    JAX-INFO; matx-like: the hardware-specs estimate) within 1%."""
    peak = get_family("matx-like").peak(load_arch(arch), precision).flops_per_s
    assert peak == pytest.approx(published, rel=0.01)


def test_mapping_shows_in_the_kernel_json_and_the_trace(tmp_path):
    """The kernel JSON names the dataflow, split, tiles, loop order, residency and compute
    cycles; the trace's opcode names carry each array pass's dataflow and split, and a DMA's
    m, k columns its tile."""
    from archsim.trace.hdf5 import read_trace, write_trace

    r = simulate_kernel("tpu-v5e", "gemm", m=512, n=4096, k=4096,
                        overrides=["scratchpad.bytes=8388608"])  # fmt: skip
    for key in ("dataflow", "split", "sub_array", "tile_m", "tile_n", "tile_k", "loop_order",
                "double_buffered", "weights_resident", "activations_resident",
                "compute_cycles"):  # fmt: skip
        assert key in r.choice, key
    assert r.to_dict()["compute_cycles"] == r.choice["compute_cycles"]
    res = archsim.simulate("tpu-v5e", "llama3-8b", phase="prefill", seq=512, layers=1)
    tr = read_trace(write_trace(res, tmp_path / "t.h5"))
    names = tr["names"]["opcodes"]
    used = {names[i] for i in np.unique(tr["events"]["opcode"])}
    assert "gemm.ws.s1" in used and {"dma.mnk", "dma.nmk"} & used
    dma = np.isin(tr["events"]["opcode"], [names.index(x) for x in ("dma.mnk", "dma.nmk")])
    assert (tr["events"]["m"][dma] % 8 == 0).all() and (tr["events"]["k"][dma] > 0).all()


def test_pipeline_interleaves_micro_batches():
    """With weights resident, a batch of 8 over the pipeline's stages runs as interleaved
    micro-batches: the step's period is the longer of one micro-batch's trip and every
    micro-batch passing the slowest stage, and system tokens/s is the batch over it."""
    r = archsim.simulate("matx-like", "llama3-8b", batch=8, ctx=128)
    e = r.extra
    assert r.pp > 1 and e["micro_batches"] > 1
    assert e["micro_batches"] * e["micro_batch"] >= 8
    period = max(e["per_token_latency_cycles"], e["micro_batches"] * e["slowest_stage_cycles"])
    assert r.tokens_per_s == pytest.approx(8 / (period / r.clock_hz))


def test_limits_name_what_holds_each_op():
    """Batch-1 decode on matx-like: the projections are bound by loading weights into the
    arrays (their stream of one row is shorter than the preload), attention by streaming
    the KV cache; on tpu-v5e the projections wait for HBM."""
    m = archsim.simulate("matx-like", "llama3-8b", batch=1, ctx=4096, layers=2)
    t = archsim.simulate("tpu-v5e", "llama3-8b", batch=1, ctx=4096, layers=2)
    assert m.extra["limit_by_op_kind"]["gate_up_proj"] == "array-preload"
    assert m.extra["limit_by_op_kind"]["attention"] == "hbm"
    assert t.extra["limit_by_op_kind"]["gate_up_proj"] == "hbm"


@pytest.mark.parametrize(
    "override, fragment",
    [("systolic.max_split=3", "max_split"), ("systolic.dataflow=xs", "dataflow"),
     ("systolic.max_split=32", "max_split"), ("mapping.pin_fraction=1.5", "pin_fraction")],
)  # fmt: skip
def test_bad_config_is_one_line(override, fragment):
    with pytest.raises(ConfigError) as exc:
        load_arch("matx-like", {override.split("=")[0]: override.split("=")[1]})
    assert "\n" not in str(exc.value) and fragment in str(exc.value)


def test_an_op_kind_it_does_not_know_is_refused():
    """supported_ops lists the kinds it lowers; a kind added later is refused in one line."""
    fam = get_family("matx-like")
    assert "matmul" in fam.supported_ops() and "moe_router" not in fam.supported_ops()
    op = SimpleNamespace(kind=SimpleNamespace(value="moe_router"), id="L0.router", layer=0)
    g = SimpleNamespace(nodes=lambda data: [("L0.router", {"op": op})])
    with pytest.raises(UnsupportedOpError, match="matx-like cannot run moe_router"):
        refuse_unsupported(g, fam)


def test_a_model_too_big_for_the_pod_is_refused():
    """llama3-405b at batch 512 and 128k context: one layer's KV cache is 512 x 131,073 x
    4,096 B = 275 GB, 34 GB per chip even split over its 8 KV heads, more than a tpu-v5e's
    16 GB: refused in one line."""
    with pytest.raises(ArchsimError) as exc:
        archsim.simulate("tpu-v5e", "llama3-405b", batch=512, ctx=131072, layers=4)
    assert "\n" not in str(exc.value)


# ---- mixture of experts and MLA -----------------------------------------------------------
def _instructions(r, op_id: str) -> list[int]:
    s = r.stream
    return [i for i in range(len(s)) if s.op_names[s.op[i]] == op_id]


def _opcode(r, i: int) -> str:
    return r.stream.opcode_names[r.stream.opcode[i]]


@pytest.mark.cycle_exact
def test_router_gemm_and_top_k_hand_count():
    """Mixtral's router on one tpu-v5e, batch 4 decode: the gate GEMM [4, 4096] @ [4096, 8]
    weight-stationary on 4 MXUs of 128 x 128: ceil(4096/128) x ceil(8/128) = 32 folds over
    4 arrays = 8 each, P = 128, S = 4 rows: 128 + 7 x 128 + 4 + 254 = 1,282 cycles,
    2 x 4 x 4096 x 8 = 262,144 FLOPs. The top-2 on the vector unit: 4 x 8 = 32 scores,
    softmax 5 ops + 2 per selection x 2 = 9 ops per element, 5 + 2 dependent: ceil(32 x 9 /
    1024) + 7 x 2 = 15 cycles."""
    r = archsim.simulate("tpu-v5e", "mixtral-8x7b", batch=4, ctx=64, layers=1, chips=1)
    ins = _instructions(r, "L0.router")
    gemm = [i for i in ins if _opcode(r, i).startswith("gemm")]
    vec = [i for i in ins if _opcode(r, i) == "vector"]
    assert len(gemm) == len(vec) == 1
    assert int(r.timing.work[gemm[0]]) == 1_282 and r.stream.flops[gemm[0]] == 262_144
    assert int(r.timing.work[vec[0]]) == 15


@pytest.mark.cycle_exact
def test_expert_grouped_gemm_reads_only_the_touched_experts():
    """Mixtral layer 0 on one tpu-v5e (weights streamed from HBM), batch 4 decode: 4 tokens
    x top-2 = 8 token-expert rows; uniform routing touches 8 (1 - (6/8)^4) = 5.47 experts,
    rounded to 5 GEMM instances of ceil(8 / 5) = 2 rows. gate/up [2, 4096] @ [4096, 28672]
    x 5: 32 x 224 folds x 5 = 35,840 over 4 MXUs = 8,960 each, P = 128, S = 2:
    128 + 8,959 x 128 + 2 + 254 = 1,147,136 cycles. HBM: the 5 touched experts' weights
    only, 5 x 4096 x 14336 x 3 x 2 B = 1,761,607,680 B (of 8 held); FLOPs: the expected 8
    rows, 2 x 8 x 4096 x 14336 x 3 = 2,818,572,288."""
    r = archsim.simulate("tpu-v5e", "mixtral-8x7b", batch=4, ctx=64, layers=1, chips=1)
    ins = _instructions(r, "L0.experts")
    s = r.stream
    gemm = [i for i in ins if _opcode(r, i).startswith("gemm")]
    assert [(int(s.m[i]), int(s.n[i]), int(s.k[i]), int(s.g[i])) for i in gemm] == [
        (2, 28672, 4096, 5), (2, 4096, 14336, 5),
    ]  # fmt: skip
    assert int(r.timing.work[gemm[0]]) == 1_147_136
    assert s.offchip_bytes[ins].sum() == 1_761_607_680
    assert s.flops[ins].sum() == 2 * 8 * 4096 * 14336 * 3


def test_resident_experts_are_all_pinned():
    """matx-like pins every expert of its slice in the scratchpad (the router picks at run
    time), so a Mixtral decode step reads no expert weights from HBM however few it
    touches: its HBM traffic is the KV cache alone, 4 x 65 tokens read and 4 written of
    8 KV heads x 128 x 2 (K, V) x 2 B = 4,096 B per token (the 8 chips of the tensor group
    one KV head each)."""
    r = archsim.simulate("matx-like", "mixtral-8x7b", batch=4, ctx=64, layers=1)
    assert r.extra["weights_resident_fraction"] == 1.0
    kv = (4 * 65 + 4) * 4096
    assert r.bytes_by_tier["hbm"] == kv


@pytest.mark.cycle_exact
def test_expert_parallel_all_to_all_on_the_torus_hand_count():
    """Mixtral on 8 tpu-v5e (experts over 8, one each), batch 8 decode. The hottest rank
    (all tie: rank 0) owns 1 token; it reaches another rank with P = 1 - (7/8)(6/7) = 1/4,
    so it dispatches 7 x 1/4 x 4096 x 2 B = 14,336 B and receives 7 x 1/4 x 8,192 = 14,336 B.
    On the ring (2 links of 30 B/cycle, hop 1,500 cycles) a share travels 16/7 hops on
    average: 4 x 1,500 + ceil(14,336 x 16/7 / 60) = 6,000 + 547 = 6,547 cycles. The
    reduce-scatter of o_proj's [8, 4096] partial sums (65,536 B) is a ring of 7 steps:
    7 x 1,500 + ceil(7 x 65,536 / 8 / 60) = 11,456 cycles."""
    r = archsim.simulate("tpu-v5e", "mixtral-8x7b", batch=8, ctx=64, layers=1, chips=8)
    assert r.meta["plan"]["ep"] == 8
    (d,) = _instructions(r, "L0.router.dispatch")
    (rs,) = _instructions(r, "L0.o_proj.reduce_scatter")
    assert r.stream.link_bytes[d] == pytest.approx(14_336)
    assert int(r.timing.work[d]) == 6_547 and int(r.timing.work[rs]) == 11_456


def test_mla_decode_streams_the_latent_cache_and_the_absorbed_weights():
    """DeepSeek-V3 layer 0 on one tpu-v5e, batch 2, ctx 64 decode: the attention op reads
    the latent cache 2 x 65 x (512 + 64) x 2 B = 149,760 B, appends 2 x 1,152 B, and streams
    W^UK and W^UV (128 heads x 512 x (128 + 128) x 2 B = 33,554,432 B); the absorbed
    q_nope @ W^UK is 128 GEMMs [2, 128] @ [128, 512] and the scores one instance per
    sequence, the 128 heads its query rows against 576-wide keys. FLOPs: the absorption
    2 x 2 x 128 x 128 x 512 x 2 (W^UK and W^UV) = 67,108,864, the scores 2 x 2 x 128 x 65
    x 576 = 19,169,280 and P @ latent 2 x 2 x 128 x 65 x 512 = 17,039,360."""
    r = archsim.simulate("tpu-v5e", "deepseek-v3", batch=2, ctx=64, layers=1, chips=1)
    ins = _instructions(r, "L0.attention")
    s = r.stream
    assert s.offchip_bytes[ins].sum() == 149_760 + 2 * 1_152 + 33_554_432
    gemm = [(int(s.m[i]), int(s.n[i]), int(s.k[i]), int(s.g[i])) for i in ins
            if _opcode(r, i).startswith("gemm")]  # fmt: skip
    assert gemm == [(2, 512, 128, 128), (128, 65, 576, 2), (128, 512, 65, 2), (2, 128, 512, 128)]
    assert s.flops[ins].sum() == pytest.approx(67_108_864 + 19_169_280 + 17_039_360)


@pytest.mark.parametrize("arch", ["matx-like", "tpu-v5e"])
@pytest.mark.parametrize("model", ["mixtral-8x7b", "deepseek-v3"])
@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_moe_and_mla_models_run_one_layer(arch, model, phase):
    """Both MoE models run (no refusal) at one layer (DeepSeek's: MLA and a dense FFN) and,
    for DeepSeek, at four (its first MoE layer), with the graph's FLOPs."""
    for layers in (1, 4) if model == "deepseek-v3" else (1,):
        r = archsim.simulate(arch, model, phase=phase, batch=2, ctx=64, seq=32, layers=layers)
        assert r.seconds > 0 and r.extra["per_token_latency_s"] > 0
        assert {"attention"} <= set(r.time_by_op_kind)
