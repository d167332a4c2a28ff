"""dmatrix-like (DIMC): hand-counted DIMC passes, the two memory tiers (SRAM-resident vs
LPDDR-streaming), card counts from SRAM capacity, block formats, and the calibrated
published operating points.

Hand counts use the dmatrix-like.yaml defaults (shared/reference/dmatrix-dimc.md §2.1, §7):
1.144 GHz; 64 x 64 weight tiles; a core touches 512 weight bits per cycle and forms 32,768
weight-bit x input-bit products per cycle, so an MXINT8 tile is swept in 64 x 64 x 8 / 512 =
64 cycles and one sweep (a pass) serves 32768 / (512 x 8) = 8 input vectors (512 MAC/cycle);
12 cycles of adder tree + accumulate after the last pass; 256 cores x 8 chiplets per card;
SIMD: 1,024 lanes per chiplet, 16 cycles of latency.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

import archsim
from archsim.compiler.partition import memory_need
from archsim.config import load_arch
from archsim.core.engine import simulate_stream
from archsim.core.errors import CapacityError, UnsupportedOpError
from archsim.core.isa import StreamBuilder
from archsim.core.registry import get_family
from archsim.graph.build import build_graph
from archsim.graph.model import load_model
from archsim.graph.scenario import Precision, Scenario
from archsim.graph.totals import kv_bytes_per_token, param_count

FAMILY = get_family("dmatrix-like")
PARAMS = load_arch("dmatrix-like")
CLOCK = 1.144e9
MXINT8_BYTES = (8 + 8 / 64) / 8  # 8-bit mantissas + one 8-bit scale per 64 elements
MXINT4_BYTES = (4 + 8 / 64) / 8


def _dimc(b: StreamBuilder, vectors: int, tiles: int, w_bits: int = 8, in_bits: int = 8) -> int:
    return b.add("dimc", unit="card0.dimc", op="mvm", m=vectors, n=tiles, g=w_bits, h=in_bits)


def _core_cycles(vectors: int, tiles: int = 1, w_bits: int = 8, in_bits: int = 8,
                 params=PARAMS) -> int:  # fmt: skip
    """One DIMC instruction alone through the timing pass and the engine."""
    b = StreamBuilder(FAMILY.opcodes)
    _dimc(b, vectors, tiles, w_bits, in_bits)
    stream = b.build()
    return simulate_stream(stream, FAMILY.timing(stream, params)).cycles


# ---- one core ---------------------------------------------------------------------------------
@pytest.mark.cycle_exact
def test_single_core_mxint8_matvec_is_one_sweep_plus_the_tree():
    """One 64x64 MXINT8 tile times one vector on one core: the tile's 64 x 64 x 8 = 32,768
    bits are touched at 512 bits/cycle = 64 cycles, then 12 cycles of adder tree,
    shift-accumulate and conversion: 76. Eight vectors share the sweep (8 lanes): still 76.
    A ninth needs a second pass: 2 x 64 + 12 = 140. Four tiles on the core, 8 vectors:
    4 x 64 + 12 = 268."""
    assert _core_cycles(1) == 76
    assert _core_cycles(8) == 76
    assert _core_cycles(9) == 140
    assert _core_cycles(8, tiles=4) == 268


@pytest.mark.cycle_exact
def test_block_format_sets_sweep_and_lanes():
    """MXINT4 weights: a tile is 64 x 64 x 4 = 16,384 bits, swept in 32 cycles. With 4-bit
    inputs a pass serves 32768 / (512 x 4) = 16 vectors (2,048 MAC/cycle = 9.6 POPS per
    card): 16 vectors 32 + 12 = 44, 17 vectors 2 x 32 + 12 = 76. With 8-bit inputs (W4A8) it
    serves 8: 9 vectors take 76."""
    assert _core_cycles(16, w_bits=4, in_bits=4) == 44
    assert _core_cycles(17, w_bits=4, in_bits=4) == 76
    assert _core_cycles(9, w_bits=4, in_bits=8) == 76


@pytest.mark.cycle_exact
def test_readings_of_the_dimc_bandwidth_and_bit_serial_inputs():
    """Reading B (in place: only the MAC rate binds): one vector through an MXINT8 tile is
    4096 x 8 x 8 / 32768 = 8 cycles (+12 = 20), 1/8 of reading A; 9 vectors 72 + 12 = 84.
    Bit-serial inputs under reading A: each touched row is held 8 cycles (one input bit per
    cycle) and a pass serves 8 x 8 = 64 vectors: 64 x 8 + 12 = 524 for 1 to 64 vectors,
    2 x 512 + 12 = 1036 for 65."""
    in_place = load_arch("dmatrix-like", {"dimc.touch_model": "in_place"})
    assert _core_cycles(1, params=in_place) == 20
    assert _core_cycles(9, params=in_place) == 84
    serial = load_arch("dmatrix-like", {"dimc.input_mode": "bit_serial"})
    assert _core_cycles(1, params=serial) == 524
    assert _core_cycles(64, params=serial) == 524
    assert _core_cycles(65, params=serial) == 1036


@pytest.mark.cycle_exact
def test_kernel_gemm_on_one_core_is_the_hand_count():
    """archsim kernel gemm 1 x 64 x 64: one tile on one core of one chiplet: 64 + 12 = 76
    cycles of DIMC, then the SIMD pass converting its 64 outputs to FP16 ends one SIMD
    latency (16) after them: 92 cycles."""
    r = archsim.simulate_kernel("dmatrix-like", "gemm", m=1, n=64, k=64)
    assert r.total_cycles == 92
    assert r.compute_cycles == 76
    assert r.choice["tiles_on_busiest_core"] == 1 and r.choice["vectors"] == 1


# ---- a card -----------------------------------------------------------------------------------
@pytest.mark.cycle_exact
def test_gemv_8192_json_on_a_card():
    """archsim kernel gemm --m 1 --n 8192 --k 8192 --json (bf16 -> BFP16, 8-bit mantissas):
    128 x 128 tiles; columns split over 8 chiplets -> 16 column tiles x 128 K tiles = 2,048
    per chiplet = 8 per core: 8 x 64 + 12 = 524 cycles, weight-touch (memory) bound (64 MiB
    of mantissas at 150 TB/s is 0.45 us). Each core pre-adds its 8 K tiles, so 128 / 8 = 16
    partial sums per output; the SIMD pass (16 ops x 1,024 outputs per chiplet / 1,024
    lanes) ends 16 cycles after the DIMC: 540 cycles = 0.472 us."""
    out = subprocess.run(
        [sys.executable, "-m", "archsim.cli", "kernel", "--arch", "dmatrix-like", "gemm",
         "--m", "1", "--n", "8192", "--k", "8192", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["total_cycles"] == 540 and doc["compute_cycles"] == 524
    assert doc["seconds"] == pytest.approx(540 / CLOCK)
    assert doc["bound"] == "memory" and doc["flops"] == 2 * 8192**2
    assert doc["choice"]["tiles_on_busiest_core"] == 8


@pytest.mark.cycle_exact
def test_batch_multiplies_passes_past_eight_vectors():
    """The same gemv with 8 rows costs the same 540 cycles (one pass serves 8); 9 rows need a
    second pass per tile: 8 x 128 + 12 = 1036, and the SIMD pass (16 x 9 x 1024 / 1024 = 144
    cycles, from cycle 16) still ends 16 after: 1052. MXINT4 weights (W4A16: 8-bit inputs)
    halve the sweep: 8 x 32 + 12 + 16 = 284. Reading B: 8 tiles x 8 cycles + 12 + 16 = 92."""

    def cycles(**kw):
        return archsim.simulate_kernel("dmatrix-like", "gemm", n=8192, k=8192, **kw).total_cycles

    assert cycles(m=8) == 540
    assert cycles(m=9) == 1052
    assert cycles(m=1, dtype="int4") == 284
    assert cycles(m=1, overrides={"dimc.touch_model": "in_place"}) == 92


@pytest.mark.cycle_exact
def test_lpddr_is_a_shared_resource_behind_two_queues():
    """Two 400,000-byte reloads on a card's LPDDR read queue and a 400,000-byte K/V store on
    its write queue, all ready at cycle 0, LPDDR at 400 B/cycle (bandwidth set to 400 x
    1.144e9 B/s). The first reload and the store share it, 200 B/cycle each: both have moved
    their bytes at 2,000 and are ready 172 cycles later (150 ns first access = 171.6 cycles,
    rounded up): 2,172. The read queue streams one chunk at a time, so the second reload
    starts then and runs alone: 2,172 + 1,000 + 172 = 3,344."""
    p = load_arch("dmatrix-like", {"memory.lpddr_bw_bytes_per_s": 400 * CLOCK})
    b = StreamBuilder(FAMILY.opcodes)
    for opcode, queue in (("load", "lpddr"), ("load", "lpddr"), ("store", "lpddr_wr")):
        b.add(opcode, unit=f"card0.{queue}", op="reload", m=512, offchip_bytes=4e5,
              resources={"card0.lpddr": 4e5})  # fmt: skip
    stream = b.build()
    tl = simulate_stream(stream, FAMILY.timing(stream, p))
    assert [int(x) for x in tl.end] == [2172, 3344, 2172]


@pytest.mark.cycle_exact
def test_bridge_all_reduce_is_bytes_hops_and_adds():
    """all-reduce of 65,536 bytes over a bridged card pair: each card sends 2 x 1/2 of the
    tensor = 65,536 B at 128 GB/s = 111.9 B/cycle -> 586 cycles, plus 2 hops x 0.5 us
    (572 cycles each) = 1,730; then the adds of the half it owns (16,384 FP16 elements over
    8 chiplets x 1,024 lanes = 2 cycles + 16): 1,748."""
    r = archsim.simulate_kernel("dmatrix-like", "all-reduce", bytes=65536, ranks=2)
    assert r.total_cycles == 1748
    assert r.bound == "communication"


# ---- two memory tiers -------------------------------------------------------------------------
def _run(model="llama3-8b", **kw):
    return archsim.simulate("dmatrix-like", model, precision=kw.pop("precision", "int8"), **kw)


def test_auto_is_the_fewest_cards_that_hold_the_weights_in_sram():
    """llama3-8b, MXINT8, batch 1, context 2048: 8.03e9 parameters x 8.125 bits = 8.16 GB of
    weights, 2,049 tokens x 64 KiB of K/V x 8.125/8 = 0.136 GB of cache; a card holds 1.9 GB
    (5% of 2 GB reserved) less the working activations: at least ceil(8.3 / 1.9) = 5 cards,
    and 5 suffice. On 4 cards the weights no longer fit: some stream from LPDDR."""
    spec = load_model("llama3-8b")
    sc = Scenario(batch=1, ctx=2048, precision=Precision.parse("int8"))
    act = memory_need(build_graph(spec, sc)).act_bytes
    weights = param_count(spec) * MXINT8_BYTES
    kv = 2049 * kv_bytes_per_token(spec, 1.0) * MXINT8_BYTES
    lower_bound = math.ceil((weights + kv) / (0.95 * 2e9 - act))
    r = _run()
    assert r.chips == lower_bound == 5
    assert r.extra["weight_residency"] == "sram" and not r.extra["lpddr_bound"]
    fewer = _run(chips=4)
    assert fewer.extra["weight_residency"] == "lpddr-streaming"
    assert fewer.extra["cards_for_sram_residency"] == 5


def test_fewer_cards_stream_from_lpddr_and_say_so():
    """llama3-70b at MXINT4 on one card (dmatrix-dimc.md §5: ~37 GB of weights, ~88 ms per
    step): the card keeps its KV cache, its norms and embedding, a stream buffer of 12.5% of
    its 1.9 GB and as much of every projection as fits; the rest, W_proj - resident, streams
    at 400 GB/s every step. The step is LPDDR-bound: at least streamed / 400 GB/s, and
    within 2% of it plus the fixed step and layer latencies (0.69 ms + 80 x 4.7 us)."""
    spec = load_model("llama3-70b")
    r = _run("llama3-70b", precision="int4", chips=1)
    h, v = spec.hidden_size, spec.vocab_size
    embed = v * h * MXINT4_BYTES
    norms = (2 * spec.num_layers + 1) * h * MXINT4_BYTES
    proj = param_count(spec) * MXINT4_BYTES - embed - norms
    kv = 2049 * kv_bytes_per_token(spec, 2.0) * (8 + 8 / 64) / 8 / 2  # bf16 KV as BFP16
    sc = Scenario(batch=1, ctx=2048, precision=Precision.parse("int4"))
    act = memory_need(build_graph(spec, sc)).act_bytes
    usable = 0.95 * 2e9
    resident = usable - act - 0.125 * usable - embed - norms - kv
    streamed = proj - resident
    assert r.extra["weights_streamed_bytes_per_step"] == pytest.approx(streamed, rel=1e-3)
    floor = streamed / 4e11
    assert floor <= r.seconds <= floor * 1.02 + 0.69e-3 + 80 * 4.7e-6
    assert r.extra["lpddr_bound"] and r.bound == "memory"
    assert r.seconds == pytest.approx(0.088, rel=0.03)  # the reference's 88 ms


def test_halving_lpddr_bandwidth_only_slows_the_streaming_run():
    """An SRAM-resident run (llama3-8b on its 5 cards) never touches LPDDR: halving its
    bandwidth leaves every cycle unchanged. The same model on 2 cards streams 2.5 GB per card
    per step and is LPDDR-bound: its LPDDR time doubles, so the step grows by at least 1.8x
    (the fixed latencies and DIMC passes do not)."""
    half = {"memory.lpddr_bw_bytes_per_s": 2e11}
    resident, resident_half = _run(), _run(overrides=half)
    assert resident.extra["weight_residency"] == "sram"
    assert resident_half.cycles == resident.cycles
    streaming, streaming_half = _run(chips=2), _run(chips=2, overrides=half)
    assert streaming.extra["lpddr_bound"]
    assert streaming_half.seconds > 1.8 * streaming.seconds


def test_kv_cache_in_lpddr_is_streamed_every_step():
    """With memory.kv_tier=lpddr the KV cache leaves SRAM (the plan counts only weights) and
    every step reads it from LPDDR: batch 16 x 1,025 tokens x 32 layers x 8 KV heads x 128 x
    2 (K, V) x 8.125/8 bytes ~= 2.18 GB over the model's cards, plus the new tokens' K/V
    written back. Halving LPDDR bandwidth then slows the step."""
    kw = dict(batch=16, ctx=1024, overrides={"memory.kv_tier": "lpddr"})
    r = _run(**kw)
    cache = 16 * 1025 * 32 * 8 * 128 * 2 * MXINT8_BYTES
    new = 16 * 32 * 8 * 128 * 2 * MXINT8_BYTES
    assert r.bytes_by_tier["lpddr"] == pytest.approx(cache + new, rel=1e-6)
    assert _run(batch=16, ctx=1024).bytes_by_tier["lpddr"] == 0
    slower = _run(batch=16, ctx=1024, overrides={**kw["overrides"],
                                                 "memory.lpddr_bw_bytes_per_s": 2e11})  # fmt: skip
    assert slower.seconds > r.seconds


def test_a_card_that_cannot_keep_its_kv_refuses_in_one_line():
    """llama3-8b, batch 64, context 1024 on one card: 4.3 GB of K/V cannot stay in 1.9 GB of
    SRAM beside the stream buffer: one CapacityError line naming the way out."""
    with pytest.raises(CapacityError, match="kv_tier=lpddr") as exc:
        _run(chips=1, batch=64, ctx=1024)
    assert "\n" not in str(exc.value)


# ---- formats ----------------------------------------------------------------------------------
def test_precisions_map_to_block_formats_and_fp8_is_refused():
    """int8 -> MXINT8 (W8A8, 512 MAC/cycle/core), int4 -> MXINT4 weights with BFP16 (8-bit)
    inputs (1,024 MAC/cycle), bf16 -> BFP16 (8-bit mantissas, 512). fp8: Corsair has no
    MXFP8 rate -> one UnsupportedOpError line, exit status 2 on the CLI."""
    e8 = _run(layers=1).extra
    assert (e8["weight_format"], e8["dimc_macs_per_cycle_per_core"]) == ("MXINT8", 512)
    e4 = _run(layers=1, precision="int4").extra
    assert (e4["weight_format"], e4["dimc_macs_per_cycle_per_core"]) == ("MXINT4", 1024)
    eb = _run(layers=1, precision="bf16").extra
    assert (eb["weight_format"], eb["kv_format"]) == ("BFP16", "BFP16")
    with pytest.raises(UnsupportedOpError, match="no MXFP8"):
        _run(layers=1, precision="fp8")
    out = subprocess.run(
        [sys.executable, "-m", "archsim.cli", "run", "--arch", "dmatrix-like", "--model",
         "llama3-8b", "--precision", "fp8", "--layers", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


def test_supported_ops_are_listed_not_all():
    """The family names the op kinds it lowers; a kind added later is refused up front."""
    assert FAMILY.supported_ops() == {
        "embedding", "matmul", "bmm", "attention", "norm", "softmax", "rope", "activation",
        "residual", "all_reduce", "send_recv", "router", "expert_ffn", "all_to_all",
        "mla_attention",
    }  # fmt: skip


# ---- batching and the published points ---------------------------------------------------------
def test_batch_is_nearly_free_until_a_pass_is_full():
    """One card (llama3-8b, 2 layers, MXINT8): batch 1 to 8 fill the same passes, so the
    step barely grows (< 15%: only the SIMD passes and exchanged bytes scale with it); batch
    9 needs a second pass per tile; batch 64 needs 8 and the step grows more than 2.5x from
    batch 8 while tokens/s rises far less than 8x: the DIMC is saturated."""

    def step(batch):
        return _run(layers=2, batch=batch, ctx=128, chips=1)

    s1, s8, s9, s64 = step(1), step(8), step(9), step(64)
    assert s8.seconds < 1.15 * s1.seconds
    assert s9.seconds > 1.1 * s8.seconds and s9.extra["passes_per_tile"] == 2
    assert s64.seconds > 2.5 * s8.seconds
    assert s64.tokens_per_s < 8 * 0.75 * s8.tokens_per_s
    assert s8.extra["passes_per_tile"] == 1 and s64.extra["passes_per_tile"] == 8


@pytest.mark.slow
def test_published_operating_points_are_the_fit():
    """dmatrix-dimc.md §6 rows 1-2 (MXINT8, batch 64, context 1024): llama3-8b on one 8-card
    server at 1 ms/token and 60,000 tok/s; llama3-70b on 64 cards at 2 ms/token and 30,000
    tok/s. compiler.step_overhead_s and layer_overhead_s were fitted to these two points
    (no degree of freedom is left: this pins the fit, it does not validate the model)."""
    r8 = _run(batch=64, ctx=1024, chips=8)
    r70 = _run("llama3-70b", batch=64, ctx=1024, chips=64)
    assert r8.extra["per_token_latency_s"] == pytest.approx(1e-3, rel=0.05)
    assert r70.extra["per_token_latency_s"] == pytest.approx(2e-3, rel=0.05)
    assert r8.tokens_per_s == pytest.approx(64 / r8.seconds)


# ---- mixture of experts and MLA -------------------------------------------------------------
def _first_trip(r, prefix: str) -> list[int]:
    s = r.stream
    return [i for i in range(len(s)) if s.copy[i] == 0 and s.op_names[s.op[i]].startswith(prefix)]


def _of(r, ids: list[int], opcode: str) -> list[int]:
    return [i for i in ids if r.stream.opcode_names[r.stream.opcode[i]] == opcode]


@pytest.mark.cycle_exact
def test_router_hand_count():
    """Mixtral's router on one card, batch 1 decode (BFP16: 8-bit mantissas): the gate
    [4096, 8] is 64 x 1 tiles on one chiplet, one tile per core: one pass of 64 cycles
    serves the token. The top-2 on the SIMD lanes: 8 scores, 2 + 2 x 2 = 6 ops and one exp
    each, one reciprocal for the row, over a 10-level reduction: ceil((8 x 6 + 8 x 4 + 4) /
    1024) = 1 cycle of work, 16 + 10 = 26 of latency."""
    r = archsim.simulate("dmatrix-like", "mixtral-8x7b", batch=1, ctx=64, layers=1, chips=1)
    ids = _first_trip(r, "L0.router")
    (dimc,) = _of(r, ids, "dimc")
    topk = _of(r, ids, "simd")[-1]
    assert (int(r.stream.m[dimc]), int(r.stream.n[dimc]), int(r.timing.work[dimc])) == (1, 1, 64)
    assert (int(r.stream.m[topk]), int(r.stream.n[topk]), int(r.stream.k[topk])) == (8, 6, 1)
    assert (int(r.timing.work[topk]), int(r.timing.latency[topk])) == (1, 26)


@pytest.mark.cycle_exact
def test_expert_passes_cover_only_the_touched_experts():
    """Mixtral layer 0 on one card, batch 4 decode: 8 token-expert rows over 5 touched
    experts (8 (1 - (6/8)^4) = 5.47, rounded), 2 rows each. Every expert is resident; only
    the touched ones' tiles pass. gate/up [4096, 28672] per expert: 64 x 448 tiles, N over
    8 chiplets: 64 x 56 per chiplet; 5 experts' tiles over 256 cores: ceil(5 x 3584 / 256) =
    70 on the busiest, one pass each (2 vectors < 8 lanes): 70 x 64 = 4,480 cycles, touching
    5 x 8 x 3584 tiles x 4,096 B = 587,202,560 B. down [14336, 4096], K over the chiplets:
    28 x 64 per chiplet, ceil(5 x 1792 / 256) = 35 tiles: 2,240 cycles; then the 4 tokens'
    partial sums are all-reduced across the 8 chiplets: 2 phases x 7 x 4 x 4096 x 2 B =
    458,752 B."""
    r = archsim.simulate("dmatrix-like", "mixtral-8x7b", batch=4, ctx=64, layers=1, chips=1)
    ids = _first_trip(r, "L0.experts")
    s, t = r.stream, r.timing
    dimc = _of(r, ids, "dimc")
    assert [(int(s.m[i]), int(s.n[i]), int(t.work[i])) for i in dimc] == [
        (2, 70, 4_480), (2, 35, 2_240),
    ]  # fmt: skip
    assert s.onchip_bytes[dimc[0]] == 5 * 8 * 3584 * 4096
    (d2d,) = _of(r, ids, "d2d")
    assert s.link_bytes[d2d] == 2 * 7 * 4 * 4096 * 2


def test_a_streaming_card_streams_only_the_touched_experts():
    """Mixtral layer 0 on one card of 1 GB (it needs 1.43 GB): the card keeps a share r of
    every projection and every expert resident; a batch-4 step streams the rest of the 5
    touched experts only: (1 - r) x 5 x 4096 x 14336 x 3 x (8 + 8/64)/8 B."""
    r = archsim.simulate("dmatrix-like", "mixtral-8x7b", batch=4, ctx=64, layers=1, chips=1,
                         overrides={"card.sram_bytes": 1e9})  # fmt: skip
    (share,) = r.meta["plan"]["extra"]["resident_fraction"]
    assert 0 < share < 1 and r.extra["weight_residency"] == "lpddr-streaming"
    loads = _of(r, _first_trip(r, "L0.experts"), "load")
    expert = 4096 * 14336 * 3 * MXINT8_BYTES
    assert r.stream.offchip_bytes[loads].sum() == pytest.approx((1 - share) * 5 * expert)


@pytest.mark.cycle_exact
def test_mla_latents_sit_in_the_arrays_in_both_layouts():
    """DeepSeek-V3 layer 0 on one card, batch 2, ctx 64 decode. Each new latent is written
    as 576 K^T elements and 512 V elements at 8 bits + one 8-bit scale per 64: 2 x 1,088 x
    1.015625 = 2,210 B. The scores: the 128 heads are the query vectors of one instance per
    sequence, over ceil(576/64) x ceil(65/64) = 18 tiles per sequence (36, one per core):
    ceil(128 / 8) = 16 passes x 64 = 1,024 cycles, sweeping 36 x 4,096 B x 16 passes."""
    r = archsim.simulate("dmatrix-like", "deepseek-v3", batch=2, ctx=64, layers=1)
    assert r.chips == 1
    ids = _first_trip(r, "L0.attention")
    (write,) = _of(r, ids, "write")
    assert r.stream.onchip_bytes[write] == pytest.approx(2 * 1088 * MXINT8_BYTES)
    scores = _of(r, ids, "dimc")[1]
    assert (int(r.stream.m[scores]), int(r.timing.work[scores])) == (128, 1_024)
    assert r.stream.onchip_bytes[scores] == 36 * 4096 * 16


@pytest.mark.parametrize("model", ["mixtral-8x7b", "deepseek-v3"])
@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_moe_and_mla_models_run_one_layer(model, phase):
    """Both MoE models run at one layer (DeepSeek's: MLA and a dense FFN) and DeepSeek at
    four (its first MoE layer, whose 256 experts span several cards: ``plan.ep`` > 1)."""
    for layers in (1, 4) if model == "deepseek-v3" else (1,):
        r = archsim.simulate("dmatrix-like", model, phase=phase, batch=2, ctx=64, seq=32,
                             layers=layers)  # fmt: skip
        assert r.seconds > 0 and r.extra["per_token_latency_s"] > 0
        if layers == 4:
            assert r.meta["plan"]["ep"] > 1 and "moe_dispatch" in r.time_by_op_kind
