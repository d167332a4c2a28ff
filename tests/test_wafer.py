"""cerebras-like (wafer): hand-counted cycles of a GEMV on a 4x4 mesh and of the reduction
algorithms, fabric links shared between flows, wafer counts from SRAM capacity, and how
decode responds to hop latency, PE SRAM and region size.

Hand counts use the cerebras-like.yaml defaults unless a test overrides them
(shared/reference/cerebras-wse.md §1-§2): 1 GHz, 8-wide fp16 FMAC fed by 2 x 16-B reads + 1
x 16-B write per cycle, 25 cycles per DSD instruction, 100 per task, one cycle per hop,
T_R = 2 cycles of ramp (a dependent receive-add-send stage is 2 T_R + 1 = 5 cycles), one
fp16 value per 4-B wavelet, 200 cycles of route switch per collective, 24 colors per router
of which 6 reserved and 2 for the activation stream.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

import archsim
from archsim.config import load_arch
from archsim.core.engine import simulate_stream
from archsim.core.errors import ArchsimError, CapacityError
from archsim.core.isa import START_START, StreamBuilder
from archsim.core.registry import get_family
from archsim.graph import build_graph
from archsim.graph.model import load_model
from archsim.graph.scenario import Precision, Scenario
from archsim.graph.totals import param_count
from archsim.kernel import simulate_kernel

FAMILY = get_family("cerebras-like")
PARAMS = load_arch("cerebras-like")
BARE = {"pe.task_cycles": 0, "fabric.route_switch_cycles": 0}  # MACs, hops and stages only


def _plan(model: str, overrides=None, **scenario):
    p = load_arch("cerebras-like", overrides)
    sc = Scenario(**scenario)
    return FAMILY.plan(build_graph(load_model(model), sc), p, None)


# ---- hand counts --------------------------------------------------------------------------
@pytest.mark.cycle_exact
def test_gemv_on_a_4x4_mesh_is_its_macs_hops_and_reduction_stages():
    """y = W x with W 64 x 64 (bf16) on a 4 x 4 region, no task or route-switch cost.

    Each PE holds a 16 x 16 tile (64 / 4 inputs along x, 64 / 4 outputs along y) and its
    16-element input slice. Local phase: 16 fmach instructions (one per input element) of
    16 elements at 8 per cycle: 16 x (ceil(16 / 8) + 25) = 16 x 27 = 432 cycles.
    Reduction of the 16 partial sums along each row of 4 PEs, two-level tree: groups of
    q = ceil(sqrt 4) = 2 PEs, G = 2 groups. Hops on the critical path: 1 (into the group's
    middle) + 2 x 1 (group roots to the global root) + ceil(3 / 2) = 2 (broadcast back) = 5;
    dependent receive-add-send stages: 1 + 1 = 2, 5 cycles each = 10; ramp on and off 2 x 2
    = 4; the 16 wavelets stream through the root's link: 16. Reduction 5 + 10 + 4 + 16 = 35.
    Total 432 + 35 = 467 cycles."""
    r = simulate_kernel(
        "cerebras-like", "gemm", m=1, n=64, k=64,
        overrides={"mapping.region_cols": 4, "mapping.region_rows": 4, **BARE},
    )  # fmt: skip
    assert (r.choice["region_cols"], r.choice["region_rows"]) == (4, 4)
    assert r.choice["compute_cycles"] == 432
    assert r.choice["reduction_cycles"] == 35
    assert r.total_cycles == 467


@pytest.mark.cycle_exact
def test_gemv_on_a_4x4_mesh_with_task_and_route_costs():
    """The same GEMV with the default fixed costs: the local phase is one task (+100), the
    reduction a task (+100) after a route switch (+200): 532 + 335 = 867 cycles. With the
    chain (pipeline) reduction instead: hops 2 x 3 = 6, stages 3 x 5 = 15, ramps 4, 16
    wavelets, 300 fixed: 341, total 873."""
    shape = dict(m=1, n=64, k=64)
    over = {"mapping.region_cols": 4, "mapping.region_rows": 4}
    r = simulate_kernel("cerebras-like", "gemm", overrides=over, **shape)
    assert (r.choice["compute_cycles"], r.choice["reduction_cycles"]) == (532, 335)
    assert r.total_cycles == 867
    chain = simulate_kernel("cerebras-like", "gemm", overrides=over,
                            options={"allreduce": "pipeline"}, **shape)  # fmt: skip
    assert chain.total_cycles == 873


def _one_allreduce(pes: int, wavelets: int, algo: str, overrides=None) -> int:
    p = load_arch("cerebras-like", {**BARE, "mapping.allreduce_algo": algo, **(overrides or {})})
    b = StreamBuilder(FAMILY.opcodes)
    alg = ["two_level", "tree", "ring", "pipeline"].index(algo)
    b.add("allreduce", unit="r", op="ar", m=pes, n=wavelets, g=alg, h=1, aux=1,
          resources={"r.x#1": 4.0 * wavelets})  # fmt: skip
    s = b.build()
    return simulate_stream(s, FAMILY.timing(s, p)).cycles


@pytest.mark.cycle_exact
def test_reduction_algorithms_on_a_line_of_420_pes():
    """64 wavelets reduced and broadcast along 420 PEs (WaferLLM's P = 420), ramps 4:

    * two-level (q = 21, G = 20): hops 10 + 21 x 10 + 210 = 430, stages 10 + 10 = 20 (x 5),
      streamed 64: 430 + 100 + 4 + 64 = 598 (cerebras-wse.md §4: "~ 550 cycles + v");
    * chain: hops 2 x 419 = 838, stages 419 x 5 = 2,095: 838 + 2095 + 4 + 64 = 3,001
      (§4: "~ 2,950");
    * binary tree: hops 2 x 210 = 420, stages ceil(log2 420) = 9 (x 5 = 45), the root takes
      64 wavelets from each of 9 children: 576; routes 10 <= 16 free: 420 + 45 + 4 + 576 =
      1,045;
    * folded ring: 2 x 419 = 838 steps of 2 hops (1,676) and a 20-cycle relay (16,760), each
      streaming ceil(64 / 420) = 1 wavelet (838): 1676 + 16760 + 4 + 838 = 19,278."""
    assert _one_allreduce(420, 64, "two_level") == 598
    assert _one_allreduce(420, 64, "pipeline") == 3001
    assert _one_allreduce(420, 64, "tree") == 1045
    assert _one_allreduce(420, 64, "ring") == 19278


@pytest.mark.cycle_exact
def test_a_route_budget_overrun_is_paid_in_software_relays():
    """A binary tree over 1024 PEs needs ceil(log2 1024) + 1 = 11 routes at its root. With
    12 colors per router (12 - 6 reserved - 2 stream = 4 free) the 7 missing routes are
    software relays of 20 cycles: +140 cycles over the same tree with routes to spare."""
    roomy = _one_allreduce(1024, 8, "tree")
    tight = _one_allreduce(1024, 8, "tree", {"fabric.colors_per_router": 12})
    assert tight - roomy == 7 * 20


@pytest.mark.cycle_exact
def test_a_shared_link_halves_each_flows_rate():
    """Two activation streams of 100 wavelets per lane over the same 4-lane region boundary
    (4 lanes x 4 B = 16 B per cycle, 1,600 B each): alone, one takes 100 cycles; started
    together they share the boundary max-min fairly, 8 B per cycle each, and both finish at
    cycle 200. A third stream over another boundary is untouched (100)."""
    b = StreamBuilder(FAMILY.opcodes)
    for unit, link in (("a", "b0#4"), ("b", "b0#4"), ("c", "b1#4")):
        b.add("xfer", unit=unit, op="x", m=3, n=100, h=4, resources={link: 1600.0})
    s = b.build()
    tl = simulate_stream(s, FAMILY.timing(s, PARAMS))
    assert list(tl.end) == [200, 200, 100]
    alone = StreamBuilder(FAMILY.opcodes)
    alone.add("xfer", unit="a", op="x", m=3, n=100, h=4, resources={"b0#4": 1600.0})
    one = alone.build()
    assert simulate_stream(one, FAMILY.timing(one, PARAMS)).cycles == 100


@pytest.mark.cycle_exact
def test_two_reductions_on_one_row_bundle_share_its_links():
    """Two 16-wavelet reductions on the same 2-line row bundle of a 4-PE-wide region (8 B per
    cycle): each alone is 16 streamed + 35 - 16 fixed (hand count above) = 35 cycles; started
    together each streams at half rate (32 cycles) and finishes at 32 + 19 = 51."""
    p = load_arch("cerebras-like", BARE)
    b = StreamBuilder(FAMILY.opcodes)
    for unit in ("a", "b"):
        b.add("allreduce", unit=unit, op="ar", m=4, n=16, h=2, aux=1,
              resources={"r.x#2": 2 * 16 * 4.0})  # fmt: skip
    s = b.build()
    assert list(simulate_stream(s, FAMILY.timing(s, p)).end) == [51, 51]


# ---- the whole model ----------------------------------------------------------------------
def test_wafer_counts_from_sram_capacity_at_bf16():
    """llama3-8b (16.1 GB of bf16 weights) fits one wafer and llama3-70b (141 GB) four, as
    Cerebras states. Three cannot hold 70B: 3 wafers x 755 x 1170 PEs x 45,056 usable B =
    119 GB < 141 GB."""
    usable = 755 * 1170 * (49152 - 4096)
    w70 = param_count(load_model("llama3-70b")) * 2
    assert w70 > 3 * usable
    assert _plan("llama3-8b").chips == 1
    assert _plan("llama3-70b").chips == 4


def test_doubling_pe_sram_lowers_the_wafer_count():
    """At 96 KB per PE (92,160 B usable) a wafer holds 81 GB: llama3-70b needs
    ceil(141 / 81) = 2 wafers instead of 4."""
    doubled = _plan("llama3-70b", {"pe.sram_bytes": 2 * 49152})
    assert doubled.chips == 2 < _plan("llama3-70b").chips


def test_kv_cache_lives_in_sram_so_batch_times_context_is_capacity():
    """llama3-8b's KV is 128 KiB per token: 64 sequences x 8K context = 69 GB of KV does not
    fit one wafer beside 16 GB of weights (a wafer holds 39.8 GB), so the compiler takes more
    wafers; pinned to one wafer it refuses with one line."""
    assert _plan("llama3-8b", batch=64, ctx=8192).chips > 1
    p = load_arch("cerebras-like")
    g = build_graph(load_model("llama3-8b"), Scenario(batch=64, ctx=8192))
    with pytest.raises(CapacityError) as exc:
        FAMILY.plan(g, p, 1)
    assert "\n" not in str(exc.value)


def test_raising_per_hop_latency_slows_decode():
    """Every reduction and every activation stream crosses hops: 2 cycles per hop instead
    of 1 lengthens a 4-layer decode step by at least the reductions' hops (nine per layer
    spanning a line of the region)."""
    base = archsim.simulate("cerebras-like", "llama3-8b", layers=4)
    slow = archsim.simulate("cerebras-like", "llama3-8b", layers=4,
                            overrides={"fabric.hop_cycles": 2})  # fmt: skip
    assert slow.cycles > base.cycles + 4 * 9 * min(base.extra["region_cols"], 100)


def test_adding_pes_to_a_region_beyond_a_point_slows_decode():
    """WaferLLM's effect (cerebras-wse.md §4): past the point where local work is small,
    every extra PE along a line adds hops to every reduction. Square regions of 300, 420,
    540 and 660 PEs a side: decode gets slower with each; and the minimal region (memory
    bound, ~104 x 104 for a llama3-8b layer) is slower than 300 x 300 (the U-shape)."""

    def layer(side: int) -> int:
        over = {"mapping.region_cols": side, "mapping.region_rows": side}
        return archsim.simulate("cerebras-like", "llama3-8b", layers=1, overrides=over).cycles

    t = {side: layer(side) for side in (104, 300, 420, 540, 660)}
    assert t[300] < t[420] < t[540] < t[660]
    assert t[104] > t[300]


def test_per_token_latency_parts_add_up_and_cross_wafers():
    """The parts (compute, reductions, on-wafer hops, off-wafer transfers) add up to the
    per-token latency; llama3-70b on 4 wafers crosses 3 wafer boundaries and sends the
    token back from wafer 3 to wafer 0: at least 4 x 3 us of off-wafer link latency."""
    r = archsim.simulate("cerebras-like", "llama3-70b")
    e = r.extra
    parts = sum(e[f"latency_{k}_s"] for k in
                ("compute", "reduction", "onwafer_hops", "offwafer", "weight_stream"))  # fmt: skip
    assert parts == pytest.approx(e["per_token_latency_s"], rel=1e-9)
    assert e["latency_offwafer_s"] >= 4 * 3e-6
    assert e["wafers"] == 4 and e["offwafer_bytes"] > 0
    assert r.tokens_per_s_per_user == pytest.approx(1 / e["per_token_latency_s"])


def test_activations_stream_region_to_region():
    """The first phase of each layer starts when the previous layer's activations arrive:
    a start-to-start dependency on the transfer, lagged by its flight (hops + 2 ramps)."""
    r = archsim.simulate("cerebras-like", "llama3-8b", layers=2)
    s = r.stream
    xfer = [i for i in range(len(s)) if s.opcode_names[s.opcode[i]] == "xfer"]
    assert xfer
    consumers = [(i, lag) for i in range(len(s)) for j, kind, lag in s.deps_of(i)
                 if j == xfer[0] and kind == START_START]  # fmt: skip
    assert consumers and all(lag == s.m[xfer[0]] * 1 + 2 * 2 for _, lag in consumers)
    assert all(u.startswith("wafer0.") for u in s.unit_names)


def test_weight_streaming_loses_for_small_batch_decode():
    """Weight streaming reads every weight from MemoryX per forward pass: llama3-70b at
    batch 1 takes at least 141 GB / 150 GB/s = 0.94 s per token, hundreds of times the
    layer-pipelined latency; at batch 16 (short context, KV on one wafer) the same pass
    serves 16 tokens."""
    over = {"mapping.mode": "weight_streaming"}
    one = archsim.simulate("cerebras-like", "llama3-70b", ctx=128, overrides=over)
    w = param_count(load_model("llama3-70b")) * 2
    assert one.seconds >= w / 1.5e11
    assert one.extra["latency_weight_stream_s"] > 0.99 * one.seconds
    piped = archsim.simulate("cerebras-like", "llama3-70b", ctx=128)
    assert one.seconds > 100 * piped.seconds
    many = archsim.simulate("cerebras-like", "llama3-70b", batch=16, ctx=128, overrides=over)
    assert many.tokens_per_s == pytest.approx(16 * one.tokens_per_s, rel=0.05)


def test_pipelined_micro_batches_raise_throughput():
    """Sixteen sequences flow down the layer regions as micro-batches: the system serves
    them at several times one sequence's rate, while each user's rate stays below one
    sequence's alone."""
    one = archsim.simulate("cerebras-like", "llama3-8b", layers=8)
    many = archsim.simulate("cerebras-like", "llama3-8b", layers=8, batch=16)
    assert many.extra["micro_batches"] * many.extra["micro_batch"] >= 16
    assert many.tokens_per_s > 4 * one.tokens_per_s
    assert many.tokens_per_s_per_user <= one.tokens_per_s_per_user


def test_non_16_bit_formats_are_refused_in_one_line():
    """No published WSE SIMD rates for fp8/int8/int4: a clear refusal, not a guess."""
    with pytest.raises(ArchsimError) as exc:
        archsim.simulate("cerebras-like", "llama3-8b", layers=1, precision="fp8")
    assert "\n" not in str(exc.value) and "16-bit" in str(exc.value)
    assert Precision.parse("bf16").weight_bytes == 2


# ---- command line ---------------------------------------------------------------------------
def test_show_placement_prints_the_regions():
    """`archsim run --show-placement` lists one line per region: embedding, 32 layers,
    lm_head for llama3-8b, all on wafer 0."""
    from archsim.cli import main

    out = CliRunner().invoke(main, ["run", "--arch", "cerebras-like", "--model", "llama3-8b",
                                    "--show-placement"])  # fmt: skip
    assert out.exit_code == 0, out.output
    lines = [ln for ln in out.output.splitlines() if ln.split()[:1] and
             ln.split()[0] in {"embed", "lm_head"} | {f"L{i}" for i in range(32)}]  # fmt: skip
    assert len(lines) == 34 and all(ln.split()[1] == "0" for ln in lines)


def test_kernel_gemm_json_is_local_phase_plus_reduction():
    """`archsim kernel --arch cerebras-like gemm --m 1 --n 8192 --k 8192 --json`: one JSON
    document; the call is its local phase then its reduction, and the local phase is the
    hand formula for the region chosen: ceil(8192 / cols) fmach of ceil(8192 / rows)
    elements, each ceil(len / 8) + 25 cycles, plus one 100-cycle task."""
    import json

    from archsim.cli import main

    out = CliRunner().invoke(main, ["kernel", "--arch", "cerebras-like", "gemm", "--m", "1",
                                    "--n", "8192", "--k", "8192", "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    d = json.loads(out.output)
    c = d["choice"]
    mt, nt = math.ceil(8192 / c["region_cols"]), math.ceil(8192 / c["region_rows"])
    assert c["compute_cycles"] == mt * (math.ceil(nt / 8) + 25) + 100
    assert d["cycles"] == c["compute_cycles"] + c["reduction_cycles"]
    assert d["flops"] == 2 * 8192 * 8192


def test_simd_width_follows_the_generation():
    """wse-2: 4-wide fp16 FMAC fed by 8-B ports (HC34); the same 64 x 64 GEMV's local phase
    on 4 x 4 PEs is 16 x (ceil(16 / 4) + 25) = 464 cycles instead of 432."""
    r = simulate_kernel(
        "wse-2", "gemm", m=1, n=64, k=64,
        overrides={"mapping.region_cols": 4, "mapping.region_rows": 4, **BARE},
    )  # fmt: skip
    assert r.choice["compute_cycles"] == 464
    assert np.isclose(r.clock_hz, 1.1e9)


# ---- mixture of experts and MLA -------------------------------------------------------------
def _layer_op(model: str, op_id: str, layers: int = 1, **scenario):
    g = build_graph(load_model(model), Scenario(**scenario), layers=layers)
    return g.nodes[op_id]["op"]


def _recipe(op, cols: int, rows: int, batch: int):
    from archsim.families.wafer.lower import Shape, env_of, op_recipe

    env = env_of(PARAMS, Scenario(batch=batch), batch)
    return op_recipe(op, Shape(cols, rows), env, "x", 1)


def _rows(rc) -> list[tuple]:
    return [(r["opcode"], int(r["m"]), int(r["n"])) + ((r["axis"],) if "axis" in r else ())
            for r in rc.rows]  # fmt: skip


def test_router_hand_count():
    """Mixtral's router, batch 4 decode, on a 64 x 32 region (input along x): the gate tile
    is ceil(4096/64) = 64 x ceil(8/32) = 1: 64 x 4 fmach instructions of 1 element, the 4
    tokens' logits reduced along x; then each PE's expert exp'd (8 + 1 vector passes per
    token), its top-2 kept (2 max passes), one (value, index) reduction of 2 x 2 x 4 = 16
    values along y merging the lists, and the 2 gates normalised (8 + 2 passes per token)."""
    rc = _recipe(_layer_op("mixtral-8x7b", "L0.router", batch=4), 64, 32, 4)
    assert _rows(rc) == [
        ("mac", 256, 1), ("allreduce", 64, 4, "x"), ("vec", 36, 1), ("vec", 8, 1),
        ("allreduce", 32, 16, "y"), ("vec", 40, 2),
    ]  # fmt: skip


def test_expert_gemvs_run_the_routed_rows_against_every_touched_tile():
    """Mixtral's experts, batch 4 decode, on a 64 x 32 region: 4 tokens x top-2 = 8 rows.
    gate/up tile per expert ceil(4096/64) = 64 x ceil(28672/32) = 896: 64 x 8 = 512 fmach
    instructions of 896 elements: 512 x (896/8 + 25) = 70,144 cycles; partial sums of 896 x
    8 rows reduced along x. SiLU x up x gate: (8 + 5) x 8 = 104 fp32 passes over 14336/32 =
    448 elements. down tile 448 x 64: 3,584 instructions of 64. The gated sum of a token's
    experts accumulates in the down GEMV, so the reduction along y carries one partial sum
    per token, 64 x 4 = 256 values. Every PE holds all 8 experts' tiles: 8 x (64 x 896 +
    448 x 64) x 2 B = 1,376,256 B."""
    from archsim.families.wafer.timing import cycles_of

    rc = _recipe(_layer_op("mixtral-8x7b", "L0.experts", batch=4), 64, 32, 4)
    assert _rows(rc) == [
        ("mac", 512, 896), ("allreduce", 64, 7168, "x"), ("vec", 104, 448), ("mac", 3584, 64),
        ("allreduce", 32, 256, "y"),
    ]  # fmt: skip
    assert rc.resident == 1_376_256
    local = [r for r in rc.rows if r["opcode"] in ("mac", "vec")]
    cols = {k: np.array([r.get(k, 0) for r in local]) for k in ("m", "n", "k", "g", "h", "aux")}
    cols["opcode"] = np.array([0 if r["opcode"] == "mac" else 1 for r in local])
    cols["link_bytes"] = cols["offchip_bytes"] = np.zeros(len(local))
    work, _ = cycles_of(cols, PARAMS)
    assert work[0] == 512 * (896 // 8 + 25) + 100  # + one task activation
    assert sum(r.get("flops", 0.0) for r in rc.rows) == pytest.approx(
        _layer_op("mixtral-8x7b", "L0.experts", batch=4).flops
    )


def test_mla_decode_phases_hand_count():
    """DeepSeek-V3 layer 0's MLA, batch 1, ctx 2048 (2,049 keys) decode, on a 64 x 32 region
    (heads and context along x, latent dims along y): 33 keys and 18 of the 576 latent +
    rope dims per PE, 2 heads per PE along x. Append the latent (1 x 18); q_nope @ W^UK:
    ceil(128 x 128 / 64) = 256 fmach of ceil(512/32) = 16 (a head on one PE along x: its 2 x
    16 outputs need no reduction); every head's latent query gathered
    along x (128 x 18 values); scores: 18 x 33 fmach over the 128 heads, reduced along y
    (128 x 33); row max and sum along x (128 each) around 9 exp passes over 128 x 33; P @
    latent: 16 x 33 fmach over the heads, reduced along x (128 x 16); @ W^UV: 2 x 16 fmach of
    128, reduced along y (2 x 128). Resident: the latents 33 x 18 x 2 B = 1,188 B and W^UK,
    W^UV tiles (256 x 16 + 2 x 16 x 128) x 2 B = 16,384 B."""
    op = _layer_op("deepseek-v3", "L0.attention", batch=1, ctx=2048)
    rc = _recipe(op, 64, 32, 1)
    assert _rows(rc) == [
        ("vec", 1, 18), ("mac", 256, 16), ("allreduce", 1, 32, "x"),
        ("allreduce", 64, 2304, "x"), ("mac", 594, 128), ("allreduce", 32, 4224, "y"),
        ("allreduce", 64, 128, "x"), ("vec", 9, 4224), ("allreduce", 64, 128, "x"),
        ("mac", 528, 128), ("allreduce", 64, 2048, "x"), ("mac", 32, 128),
        ("allreduce", 32, 256, "y"),
    ]  # fmt: skip
    assert rc.resident == 1_188 + 16_384
    assert sum(r.get("flops", 0.0) for r in rc.rows) == pytest.approx(op.flops)


def test_layers_of_another_kind_get_their_own_region_height():
    """DeepSeek-V3's first 4 layers: 3 dense and 1 MoE. The compiler shapes the regions of
    the most common kind (here the dense layers); the MoE layer, 29x the parameters, gets
    the fewest rows that hold its experts at the same width."""
    g = build_graph(load_model("deepseek-v3"), Scenario(batch=1, ctx=64), layers=4)
    plan = FAMILY.plan(g, PARAMS, None)
    regions = {r["name"]: r for r in plan.extra["regions"]}
    dense = {regions[f"L{i}"]["rows"] for i in range(3)}
    assert len(dense) == 1 and regions["L3"]["rows"] > dense.pop()
    assert len({r["cols"] for r in regions.values()}) == 1


@pytest.mark.parametrize("model", ["mixtral-8x7b", "deepseek-v3"])
@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_moe_and_mla_models_run_one_layer(model, phase):
    """Both MoE models run at one layer (DeepSeek's: MLA and a dense FFN) and DeepSeek at
    four (its first MoE layer), with the graph's FLOPs."""
    for layers in (1, 4) if model == "deepseek-v3" else (1,):
        r = archsim.simulate("cerebras-like", model, phase=phase, batch=2, ctx=64, seq=32,
                             layers=layers)  # fmt: skip
        g = build_graph(load_model(model), Scenario(phase=phase, batch=2, ctx=64, seq=32),
                        layers=layers)  # fmt: skip
        assert r.seconds > 0 and r.extra["per_token_latency_s"] > 0
        assert r.flops == pytest.approx(sum(d["op"].flops for _, d in g.nodes(data=True)))


def test_prefill_attention_does_every_query_rows_macs():
    """llama3-8b prefill of 2,048 tokens, one layer: the attention's MAC instructions, per PE,
    cover at least an even share of its causal work, 2 (QK^T and PV) x S(S+1)/2 query-key
    pairs x 4,096 query dims over the region's PEs; tiles rounded up to whole keys and dims
    may add up to 2x per rounded axis. (The attention op has no ``m``: its rows per sequence
    are its ``q_len``, not 1.)"""
    r = archsim.simulate("cerebras-like", "llama3-8b", phase="prefill", seq=2048, layers=1)
    s = r.stream
    names = [(s.op_names[s.op[i]], s.opcode_names[s.opcode[i]]) for i in range(len(s))]
    mac = [i for i, name in enumerate(names) if name == ("L0.attention", "mac")]
    per_pe = sum(int(s.m[i]) * int(s.n[i]) for i in mac)
    even_share = 2 * (2048 * 2049 / 2) * 4096 / r.extra["region_pes"]
    assert even_share <= per_pe <= 4 * even_share
