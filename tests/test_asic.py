"""etched-like: the fixed pipeline's cycles against hand counts, admission by the fixed
function set, tensor parallelism over the server's links, utilisation of the fixed units,
and the counting behind the published throughput claim."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

import archsim
from archsim.cli import main
from archsim.config import load_arch
from archsim.core.engine import simulate_stream
from archsim.core.errors import UnsupportedOpError
from archsim.core.registry import get_family
from archsim.families.asic import claim
from archsim.families.asic.lower import split_columns
from archsim.graph import build_graph
from archsim.graph.model import ModelSpec, load_model
from archsim.graph.scenario import Precision, Scenario
from archsim.kernel import simulate_kernel

# a tiny machine for hand counts: 128 x 128 arrays, 1/1/2/1 arrays per engine, HBM so fast
# that no flow waits for it
TINY = {
    "chip.array_dim": 128, "matrix.qkv_arrays": 1, "matrix.o_arrays": 1,
    "matrix.gate_up_arrays": 2, "matrix.down_arrays": 1, "matrix.weight_load_cycles": 128,
    "matrix.pipeline_latency_cycles": 10, "attention.arrays": 1, "attention.exp_per_cycle": 256,
    "attention.kv_bytes_per_cycle": 1024, "attention.latency_cycles": 20, "vector.lanes": 256,
    "vector.latency_cycles": 5, "memory.hbm_peak_bw_bytes_per_s": 1e18,
}  # fmt: skip
TINY_SPEC = ModelSpec(
    name="tiny", hidden_size=256, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=128,
    intermediate_size=512, vocab_size=1000, attention="mha",
)  # fmt: skip


@pytest.mark.cycle_exact
def test_one_layer_pipeline_is_its_hand_count():
    """One layer, one 256-token sequence, fp8, every stage streaming into the next (start ->
    start, lag = the producer's latency: vector 5, matrix 10, attention 20 cycles).

    Work (cycles): attn_norm 256 x 256 / 256 lanes = 256; qkv 768 x 256 -> 2 x 6 = 12 tiles on
    1 array, 12 passes x 256 rows = 3,072; rope 256 x 512 / 256 = 512; attention 4 x 2 heads
    x 128 x 32,896 pairs = 33,685,504 FLOP / (2 x 16,384) = 1,028 (exps 65,792 / 256 = 257,
    K/V 131,072 B / 1,024 = 128); o 2 x 2 tiles x 256 = 1,024; residuals and ffn_norm 256;
    gate_up 2 x 8 tiles / 2 arrays = 8 passes x 256 = 2,048; act 512; down 4 x 2 tiles x 256
    = 2,048.
    Starts: 0, 5, 15, 20, 40, 50, 55, 60, 70, 75, 85. qkv is the slowest: it ends at 5 +
    3,072 + 10 = 3,087 and every later stage drains one lag after its producer: + 10 (rope)
    + 5 (attention) + 20 (o) + 10 (attn_residual) + 5 (ffn_norm) + 5 (gate_up) + 10 (act)
    + 5 (down) + 10 (ffn_residual) = 3,167 cycles.
    Two sequences as two tiles: qkv takes the second tile when the first is out (3,087) and
    ends at 3,087 + 3,082 = 6,169; the same drain follows: 6,249 cycles."""
    r = archsim.simulate(
        "etched-like", TINY_SPEC, phase="prefill", batch=1, seq=256, layers=1,
        precision="fp8", overrides=TINY,
    )  # fmt: skip
    assert r.cycles == 3167
    assert list(r.timeline.start) == [0, 5, 15, 20, 40, 50, 55, 60, 70, 75, 85]
    r2 = archsim.simulate(
        "etched-like", TINY_SPEC, phase="prefill", batch=2, seq=256, layers=1,
        precision="fp8", overrides={**TINY, "pipeline.tile_tokens": 256},
    )  # fmt: skip
    assert r2.extra["tiles"] == 2 and r2.cycles == 6249


@pytest.mark.cycle_exact
def test_hbm_bound_gemm_is_its_bytes_over_bandwidth():
    """A [8, 1024] @ [1024, 1024] fp8 GEMM with HBM at 100 B/cycle (1.5e11 B/s at 1.5 GHz,
    efficiency 1): its 4 column blocks all go to the gate/up engine (27 arrays: one pass of
    max(8 rows, 256 load) cycles); the 1,048,576 weight bytes take ceil(10,485.76) = 10,486
    cycles, then the 512-cycle pipeline latency: 10,998."""
    k = simulate_kernel(
        "etched-like", "gemm", dtype="fp8", m=8, n=1024, k=1024,
        overrides={"memory.hbm_peak_bw_bytes_per_s": 1.5e11, "memory.hbm_efficiency": 1.0},
    )  # fmt: skip
    assert k.choice["stages"] == ["mxu_gate_up"] and k.total_cycles == 10998
    assert k.bound == "memory"


def test_kernel_gemm_json_shares_columns_across_engines():
    """`archsim kernel --arch etched-like gemm --m 4096 --n 8192 --k 8192 --json`: 32 column
    blocks of 256 over engines of 5/4/27/13 arrays, 32 weight tiles deep each; each block
    goes where the passes grow least: qkv 3 blocks (96 tiles / 5 arrays = 20 passes), o 2
    (64 / 4 = 16), gate/up 19 (608 / 27 = 23), down 8 (256 / 13 = 20); no split does better
    than 23 (1,024 tiles / 49 arrays = 20.9, and the 27-array engine jumps from 22 to 23).
    bf16 takes half a row per cycle: 23 passes x 8,192 + 512 = 188,928 cycles; fp8: 23 x
    4,096 + 512 = 94,720."""
    assert split_columns(8192, 8192, 256, {"qkv": 5, "o": 4, "gate_up": 27, "down": 13}) == {
        "qkv": 768, "o": 512, "gate_up": 4864, "down": 2048,
    }  # fmt: skip
    res = CliRunner().invoke(
        main, ["kernel", "--arch", "etched-like", "gemm", "--m", "4096", "--n", "8192", "--k",
               "8192", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["total_cycles"] == 188_928 and d["bound"] == "compute"
    assert d["flops"] == 2 * 4096 * 8192 * 8192
    fp8 = simulate_kernel("etched-like", "gemm", dtype="fp8", m=4096, n=8192, k=8192)
    assert fp8.total_cycles == 94_720


def test_ssm_model_is_refused_naming_the_op_layer_and_family():
    """Bamba-9B's first layer is a Mamba-2 layer: `archsim run` exits 2 with one line naming
    L0.ssm_scan, layer 0 and etched-like; h100-like runs the same model."""
    res = CliRunner().invoke(main, ["run", "--arch", "etched-like", "--model", "bamba-9b"])
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line
    assert all(s in line for s in ("etched-like", "ssm_scan", "L0.ssm_scan", "layer 0"))
    r = archsim.simulate("h100-like", "bamba-9b", phase="decode", batch=2, ctx=64, layers=2)
    assert r.cycles > 0


@pytest.mark.parametrize(
    "override, precision, named",
    [
        ({}, "int8", "L0.qkv_proj (matmul, layer 0): int8"),
        ({"admission.head_dims": [64]}, "fp8", "L0.attention (attention, layer 0): head size 128"),
        ({"admission.activations": ["gelu"]}, "fp8", "L0.act (activation, layer 0): silu"),
        ({"admission.attention_variants": ["mha"]}, "fp8", "(attention, layer 0): gqa"),
        ({"admission.op_kinds": ["matmul"]}, "fp8", "L0.attn_norm (norm, layer 0)"),
    ],
)  # fmt: skip
def test_admission_refuses_what_the_silicon_lacks(override, precision, named):
    """Each list of the admission config is checked before planning: the first op outside it
    is refused in one line with the op, its layer and the family."""
    with pytest.raises(UnsupportedOpError) as exc:
        archsim.simulate(
            "etched-like", "llama3-8b", batch=1, ctx=64, layers=1, precision=precision,
            overrides=override,
        )  # fmt: skip
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("etched-like cannot run ") and named in msg


def test_moe_routing_is_refused_unless_the_host_routes_it():
    """Refused by default (layer 0's router named); with admission.moe_host_fallback each MoE
    layer pays a PCIe round trip at its router: decode batch 4 sends 4 x (4,096 x 2 B
    hidden + 2 experts x 8 B ids and gates) = 32,832 B at 42.67 B/cycle (64 GB/s at
    1.5 GHz) = 770 cycles, plus the 10 us round trip = 15,000 cycles; the experts wait for
    it."""
    fam = get_family("etched-like")
    sc = Scenario(phase="decode", batch=4, ctx=64, precision=Precision.parse("fp8"))
    g = build_graph(load_model("mixtral-8x7b"), sc, layers=2)
    with pytest.raises(UnsupportedOpError, match=r"L0.router .*moe_host_fallback"):
        fam.check_graph(g, load_arch("etched-like"))
    p = load_arch("etched-like", {"admission.moe_host_fallback": True})
    fam.check_graph(g, p)
    plan = fam.plan(g, p, None)
    stream = fam.lower(fam.partition(g, plan, p), plan, p, sc)
    timing = fam.timing(stream, p)
    host = np.flatnonzero(fam.opcode_mask(stream, "host"))
    assert len(host) == 2
    assert list(timing.work[host]) == [770, 770] and list(timing.latency[host]) == [15000] * 2
    tl = simulate_stream(stream, timing)
    experts = [i for i in range(len(stream)) if stream.op_names[stream.op[i]] == "L0.experts"]
    assert tl.start[experts[0]] >= tl.end[host[0]]


def test_tensor_parallel_all_reduce_over_the_server_links():
    """8 chips, decode batch 64: each all-reduce of a [64, 8,192] bf16 buffer (1 MiB) sends
    2 x 1 MiB / 8 = 262,144 B over each of the 7 links (one-shot reduce-scatter +
    all-gather): ceil(262,144 / 120 B/cycle) = 2,185 cycles + 2 x 1,500 hop cycles. Two
    per layer and one after the vocabulary-split embedding: 161."""
    r = archsim.simulate(
        "etched-like", "llama3-70b", phase="decode", batch=64, ctx=2048, precision="fp8",
        chips=8,
    )  # fmt: skip
    assert (r.chips, r.tp, r.pp) == (8, 8, 1)
    ar = np.flatnonzero(get_family("etched-like").opcode_mask(r.stream, "allreduce"))
    assert len(ar) == 161
    assert set(r.timing.work[ar]) == {2185} and set(r.timing.latency[ar]) == {3000}
    assert r.stream.link_bytes[ar[0]] == 7 * 262_144


def test_decode_is_bound_by_hbm_streaming_the_weights_and_kv():
    """llama3-8b fp8 decode, batch 32, context 1,024, one chip: every stage's weights stream
    once per step and the KV cache is read; the step takes the HBM bytes over 0.9 x 4.8 TB/s
    plus under 3 % for the pipeline's fill and lags; HBM is the bottleneck."""
    r = archsim.simulate(
        "etched-like", "llama3-8b", phase="decode", batch=32, ctx=1024, precision="fp8"
    )
    ideal = r.bytes_by_tier["hbm"] / (0.9 * 4.8e12)
    assert ideal <= r.seconds <= 1.03 * ideal
    assert r.extra["bottleneck"] == "hbm" and r.extra["tiles"] == 1


def test_prefill_keeps_matrix_engines_busy_and_more_tiles_busier():
    """llama3-70b fp8 prefill of 2,048-token sequences (two layers): one sequence is one tile
    (the pipeline fills and drains around it); 16 tiles keep the engines busier, above 80 %,
    and the step's FLOPs on the matrix engines run near their peak."""
    kw = dict(phase="prefill", seq=2048, precision="fp8", layers=2)
    one = archsim.simulate("etched-like", "llama3-70b", batch=1, **kw)
    many = archsim.simulate("etched-like", "llama3-70b", batch=16, **kw)
    assert many.extra["tiles"] == 16 and many.extra["tile_sequences"] == 1
    assert one.extra["matrix_busy"] < many.extra["matrix_busy"]
    assert many.extra["matrix_busy"] > 0.8 and many.extra["matrix_utilization"] > 0.8
    assert many.bound == "compute"


@pytest.mark.slow
def test_done_when_large_batch_prefill_above_80_percent():
    """The issue's run: llama3-70b fp8 prefill, batch 64 x 2,048: matrix engines > 80 % busy."""
    r = archsim.simulate(
        "etched-like", "llama3-70b", phase="prefill", batch=64, seq=2048, precision="fp8"
    )
    assert r.extra["matrix_busy"] > 0.8 and r.extra["residual_spill"]


def test_tiles_are_whole_sequences():
    """tile_tokens 2,048: prefill at seq 512 packs 4 sequences per tile (64 -> 16 tiles); a
    longer sequence is a tile of its own; decode rows are one token per sequence."""
    from archsim.families.asic.lower import tile_sequences

    p = load_arch("etched-like")
    spec = load_model("llama3-8b")

    def tiles(**kw):
        sc = Scenario(**kw)
        return tile_sequences(build_graph(spec, sc, layers=1), p, sc)

    assert tiles(phase="prefill", batch=64, seq=512) == [4] * 16
    assert tiles(phase="prefill", batch=3, seq=8192) == [1, 1, 1]
    assert tiles(phase="decode", batch=5000, ctx=64) == [2048, 2048, 904]


def test_claim_counting_input_plus_output():
    """Etched's 500,000 tok/s at 2,048 in / 128 out counts both: 500,000 / 2,176 = 229.8
    requests/s, 29,412 output tok/s (etched-sohu §2-§3); output-only counting is 1/17 of
    the total. Static batching of 64 requests in a 0.5 s prefill and 128 decode steps of
    3 ms: 64 / 0.884 s = 72.4 requests/s."""
    s = claim.from_total(500_000, 2048, 128)
    assert s.requests_per_s == pytest.approx(229.78, abs=0.01)
    assert s.output_tokens_per_s == pytest.approx(29_411.8, abs=0.1)
    assert s.total_tokens_per_s / s.output_tokens_per_s == 17
    st = claim.static_batching(64, 0.5, 0.003, 2048, 128)
    assert st.requests_per_s == pytest.approx(64 / 0.884)
    assert math.isclose(st.to_dict()["total_tokens_per_s"], st.requests_per_s * 2176)
