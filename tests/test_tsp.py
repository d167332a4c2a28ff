"""groq-like (TSP): hand-counted cycles, static schedule verification, chip counts from SRAM
capacity, and how latency and throughput respond to links and pipelining.

Hand counts use the groq-like.yaml defaults (shared/reference/groq-tsp.md §6): 0.9 GHz,
one stream stage per slice, 1-cycle MEM read and write, 320x320 planes fed by 16 weight
streams, 20-cycle array latency, 20 superlanes (19 cycles of skew), 15 GB/s links
(20 cycles per 320-B vector) and 240 ns (216 cycles) per link hop.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import archsim
from archsim.config import load_arch
from archsim.core.engine import simulate_stream
from archsim.core.errors import CapacityError, ScheduleError, UnsupportedOpError
from archsim.core.isa import StreamBuilder, Timing
from archsim.core.registry import get_family
from archsim.families.tsp import plan as tsp_plan
from archsim.families.tsp.plan import usable_sram_bytes
from archsim.graph.build import build_graph
from archsim.graph.model import load_model
from archsim.graph.scenario import Precision, Scenario
from archsim.graph.totals import param_count

FAMILY = get_family("groq-like")
PARAMS = load_arch("groq-like")
INT8 = 0  # MXM mode code of int8 x int8


def _builder() -> StreamBuilder:
    return StreamBuilder(FAMILY.opcodes)


def _matvec(b: StreamBuilder, unit="chip0.mxm0", rows=1, tiles=1, warm=0, issue=0, deps=()):
    return b.add(
        "mxm", unit=unit, op="matvec", m=rows, n=tiles, k=320, g=INT8, h=1, aux=warm,
        issue=issue, deps=list(deps),
    )  # fmt: skip


def _cycles(stream) -> list[int]:
    return [int(x) for x in FAMILY.timing(stream, PARAMS).work]


def _fixed(stream) -> Timing:
    """Every pass holding its unit to the end (as the hand counts assume)."""
    return Timing.fixed(FAMILY.timing(stream, PARAMS).work)


@pytest.mark.cycle_exact
def test_cold_matvec_on_one_plane_takes_83_cycles():
    """One 320x320 int8 weight tile times one activation vector, weights still in MEM
    (groq-tsp.md §6.1): weights read (1) and cross 17 slices to the MXM edge (17) = 18;
    installed by 16 streams in 320/16 = 20 cycles -> 38 (the activation, 1 + 18 hops = 19
    cycles away, was issued to arrive then); array 20 -> 58; results cross 5 slices (5) and
    are written (1) -> 64; the last superlane finishes 19 cycles later -> 83."""
    b = _builder()
    _matvec(b)
    stream = b.build()
    assert _cycles(stream) == [83]
    assert simulate_stream(stream, FAMILY.timing(stream, PARAMS), static=True).cycles == 83


@pytest.mark.cycle_exact
def test_installed_tile_streams_m_rows_in_m_plus_63_cycles():
    """Weights already installed: activation read (1) + 18 hops, M rows one per cycle (the
    last enters M - 1 cycles after the first), array 20, 5 hops + write 1, skew 19:
    1 + 18 + (M - 1) + 20 + 6 + 19 = M + 63 (groq-tsp.md §7 verification hook 2)."""
    b = _builder()
    for rows in (1, 100):
        _matvec(b, rows=rows, warm=1, issue=-1)
    assert _cycles(b.build()) == [64, 163]


@pytest.mark.cycle_exact
def test_each_further_weight_tile_costs_one_install():
    """At one activation row the plane is install-bound: after the first tile (83 cycles),
    each of the next 3 tiles is loaded into the LW buffer while the previous one computes and
    costs max(20 install, 1 row + 1 swap) = 20 cycles: 83 + 3 x 20 = 143."""
    b = _builder()
    _matvec(b, tiles=4)
    assert _cycles(b.build()) == [143]


@pytest.mark.cycle_exact
def test_one_vector_between_two_chips_takes_279_cycles():
    """groq-tsp.md §6.2: Read 1, 20 slices to the C2C block 20, serialise 320 B at
    15 GB/s / 0.9 GHz = 16.7 B/cycle -> 20, flight 240 ns = 216, Receive 1, 20 slices to the
    destination slice 20, Write 1: 279. Through an intermediate chip add its turn-around
    (30), one more vector serialisation (20) and one more flight (216): 545."""
    b = _builder()
    for hops in (1, 2):
        b.add("c2c", unit="chip0.c2c0", op="send", m=1, n=hops, aux=40, issue=-1)
    assert _cycles(b.build()) == [279, 545]


@pytest.mark.cycle_exact
def test_two_chip_program_schedule_is_hand_count():
    """A matrix-vector product on chip 0 (83 cycles) whose result vector then goes to chip 1
    (279 cycles): the scheduler issues the transfer at 83 and the program ends at 362."""
    from archsim.compiler.schedule import list_schedule

    b = _builder()
    mv = _matvec(b, issue=-1)
    b.add("c2c", unit="chip0.c2c0", op="send", m=1, n=1, aux=40, deps=[mv], issue=-1)
    stream = b.build()
    timing = FAMILY.timing(stream, PARAMS)
    issue = list_schedule(stream, timing)
    assert list(issue) == [0, 83]
    stream.cols["issue"][:] = issue
    assert simulate_stream(stream, timing, static=True).cycles == 362


def test_two_instructions_on_one_unit_in_one_cycle_is_a_schedule_error():
    """The cycle model executes the static schedule and refuses a unit conflict: a second
    pass issued on the same MXM plane at the same cycle is a compiler bug."""
    b = _builder()
    _matvec(b, issue=0)
    _matvec(b, issue=0)
    stream = b.build()
    with pytest.raises(ScheduleError, match="not ready at their issue cycle"):
        simulate_stream(stream, FAMILY.timing(stream, PARAMS), static=True)


def test_issue_before_the_producer_finishes_is_a_schedule_error():
    """Data arriving late is reported: a transfer issued at cycle 82, one cycle before the
    matrix-vector product it sends has written its result (83), is refused; at 83 it runs."""
    for issue, late in ((82, True), (83, False)):
        b = _builder()
        mv = _matvec(b, issue=0)
        b.add("c2c", unit="chip0.c2c0", op="send", m=1, n=1, aux=40, deps=[mv], issue=issue)
        stream = b.build()
        timing = FAMILY.timing(stream, PARAMS)
        if late:
            with pytest.raises(ScheduleError):
                simulate_stream(stream, timing, static=True)
        else:
            assert simulate_stream(stream, timing, static=True).cycles == 83 + 279


def _program(batch: int, micro_batch: int, chips: int, layers: int = 2, cap: int = 16):
    """The compiled program of llama3-8b (``layers`` layers, int8, ctx 128) on ``chips`` chips
    with the batch cut into micro-batches of ``micro_batch``, and its plan."""
    from archsim.families.tsp.lower import compile_program, program_shape

    sc = Scenario(batch=batch, ctx=128, precision=Precision.parse("int8"))
    g = build_graph(load_model("llama3-8b"), sc, layers=layers)
    plan = tsp_plan.with_micro_batch(FAMILY.plan(g, PARAMS, chips), batch, micro_batch)
    pg = FAMILY.partition(g, plan, PARAMS)
    k, rounds = program_shape(plan.micro_batches, cap)
    stream, timing = compile_program(pg, plan, PARAMS, sc, k, rounds)
    return stream, timing, plan


def test_compiled_program_passes_the_independent_checker_and_a_shift_does_not():
    """The compiled two-stage program (several micro-batches, two rounds) has no hazard by
    the independent checker (which shares no code with the scheduler); moving any one
    instruction that waits on a producer one cycle earlier is caught as a dependency or unit
    hazard."""
    from archsim.core.engine.check import find_hazards

    s, timing, _ = _program(batch=8, micro_batch=2, chips=16)
    assert (s.issue >= 0).all() and s.meta["rounds"] == "2" and s.meta["copies"] == "4"
    assert len(set(s.chip)) == 2  # two pipeline stages
    assert find_hazards(s, timing) == []
    bound = np.nonzero(np.diff(s.dep_ptr) > 0)[0]
    for i in bound[:: max(1, len(bound) // 25)]:
        s.cols["issue"][i] -= 1
        kinds = {h.kind for h in find_hazards(s, timing)}
        s.cols["issue"][i] += 1
        assert kinds & {"dependency", "unit"}, i


def _plan(model: str, precision: str, overrides=None, chips=None):
    p = load_arch("groq-like", overrides)
    sc = Scenario(phase="decode", batch=1, ctx=2048, precision=Precision.parse(precision))
    spec = load_model(model)
    return FAMILY.plan(build_graph(spec, sc), p, chips), spec, p


def test_llama2_70b_chip_count_follows_from_sram_capacity():
    """llama2-70b at bf16: at least ceil(2 B x 69e9 params / usable SRAM) chips, i.e. over
    600 for the weights alone (692 with 12 of 88 MEM slices kept for code), and a bounded
    packing loss; at int8 about half as many."""
    bf16, spec, p = _plan("llama2-70b", "bf16")
    int8, _, _ = _plan("llama2-70b", "int8")
    floor = math.ceil(2 * param_count(spec) / usable_sram_bytes(p))
    assert floor >= 600
    assert floor <= bf16.chips <= 1.15 * floor
    assert 0.4 <= int8.chips / bf16.chips <= 0.6


def test_doubling_sram_roughly_halves_the_chip_count():
    """Capacity sets the chip count: twice the SRAM per chip, about half the chips."""
    base, _, p = _plan("llama2-70b", "int8")
    big, _, _ = _plan("llama2-70b", "int8", {"chip.sram_bytes": 2 * p.chip.sram_bytes})
    assert 0.4 <= big.chips / base.chips <= 0.6


def test_too_few_chips_is_a_capacity_error():
    """A model that cannot fit the chips asked for is refused with one line."""
    with pytest.raises(CapacityError, match="does not fit on 8 chip"):
        _plan("llama2-70b", "int8", chips=8)


def test_link_latency_raises_latency_but_not_filled_pipeline_throughput():
    """Per-token latency includes every link hop of the token's trip: +240 ns per hop adds at
    least 240 ns per pipeline-stage boundary. At a batch that fills the pipeline (the slowest
    stage, serving every micro-batch in turn, is the bound) system tokens/s stays within 2%."""
    kw = dict(model="llama3-8b", precision="int8", ctx=128)
    slow = {"links.link_latency_s": 4.8e-7}
    a1 = archsim.simulate("groq-like", batch=1, **kw)
    b1 = archsim.simulate("groq-like", batch=1, overrides=slow, **kw)
    assert b1.seconds - a1.seconds >= 2.4e-7 * (a1.pp - 1)
    big = 1024  # at ctx 128, enough sequences that the slowest stage bounds the round
    a = archsim.simulate("groq-like", batch=big, **kw)
    b = archsim.simulate("groq-like", batch=big, overrides=slow, **kw)
    assert a.extra["pipeline_full"] and b.extra["pipeline_full"]
    assert b.seconds > a.seconds
    assert abs(b.tokens_per_s / a.tokens_per_s - 1) < 0.02


def test_groq3_lpx_preset_extends_groq_like_and_runs_fp8():
    """groq3-lpx inherits the v1 timing model, overrides SRAM (512 MB) and racks (256 chips),
    and has the fp8 MXM mode v1 lacks."""
    p = load_arch("groq3-lpx")
    assert p.family == "groq-like" and p.chip.sram_bytes == 5.12e8
    assert p.system.chips_per_node * p.system.nodes_per_rack == 256
    r = archsim.simulate("groq3-lpx", "llama3-8b", precision="fp8", batch=1, ctx=128, layers=2)
    assert r.cycles > 0
    with pytest.raises(UnsupportedOpError, match="no fp8"):
        archsim.simulate("groq-like", "llama3-8b", precision="fp8", layers=1)


def test_kv_cache_larger_than_a_tensor_group_is_split_by_sequences():
    """1024 sequences x 2049 tokens of int8 KV is 537 MB per layer per chip at 8-way tensor
    split, more than one chip holds: attention is cut by sequences across stages and the
    plan still fits, with at least ceil(total bytes / usable SRAM) chips."""
    from archsim.compiler.packing import plan_sram

    p = load_arch("groq-like")
    sc = Scenario(phase="decode", batch=1024, ctx=2048, precision=Precision.parse("int8"))
    g = build_graph(load_model("llama3-70b"), sc)
    s = p.system  # the packing alone (the micro-batch search is not what this pins)
    plan = plan_sram(g, usable_sram_bytes(p), None, s.chips_per_node, s.max_chips)
    assert any(".attention.c" in op for op in plan.extra["stage_first_op"]) or any(
        k.endswith(".attention") for k in plan.extra["op_chunks"]
    )
    assert plan.chips >= math.ceil(plan.need.total / usable_sram_bytes(p))


def test_reported_ceilings_are_hand_counts():
    """Summary ceilings from the v1 datasheet figures: MXM weight feed 4 planes x 16 streams
    x 320 B x 0.9 GHz = 18.432 TB/s; SRAM reads 88 slices x 320 B x 0.9 GHz = 25.344 TB/s."""
    r = archsim.simulate("groq-like", "llama3-8b", batch=1, ctx=64, layers=1)
    assert r.extra["mxm_feed_peak_bytes_per_s"] == pytest.approx(4 * 16 * 320 * 0.9e9)
    assert r.extra["sram_bw_peak_bytes_per_s"] == pytest.approx(88 * 320 * 0.9e9)


def test_micro_batch_search_is_optimal_among_powers_of_two():
    """The compiler's micro-batch size gives a round no longer (beyond the 1% tolerance)
    than any other power-of-two size, each compiled and timed the same way."""
    from archsim.families.tsp.plan import MICRO_BATCH_TOLERANCE, SEARCH_MICRO_BATCHES

    g = build_graph(
        load_model("llama3-8b"),
        Scenario(batch=64, ctx=128, precision=Precision.parse("int8")),
        layers=4,
    )
    plan = FAMILY.plan(g, PARAMS, None)

    def round_of(cand):
        return tsp_plan.round_cycles(g, cand, PARAMS, SEARCH_MICRO_BATCHES)[0]

    chosen = round_of(plan)
    for mb in (1, 2, 4, 8, 16, 32, 64):
        other = round_of(tsp_plan.with_micro_batch(plan, 64, mb))
        assert chosen <= other * (1 + MICRO_BATCH_TOLERANCE), mb


def test_micro_batch_search_beats_one_per_stage_when_latency_bound():
    """With few stages and a large batch, one micro-batch per stage leaves the pipeline
    latency-bound (round = one micro-batch's trip); the search keeps more, smaller
    micro-batches in flight and the round is at least 1.5x shorter."""
    g = build_graph(
        load_model("llama3-8b"), Scenario(batch=256, ctx=128, precision=Precision.parse("int8"))
    )
    plan = FAMILY.plan(g, PARAMS, None)
    per_stage = tsp_plan.with_micro_batch(plan, 256, -(-256 // plan.pp))
    naive_round, naive_trip = tsp_plan.round_cycles(g, per_stage, PARAMS, 4)
    tuned_round, _ = tsp_plan.round_cycles(g, plan, PARAMS, 4)
    assert naive_round == naive_trip  # latency-bound
    assert tuned_round * 1.5 <= naive_round


@pytest.mark.parametrize(
    "batch, micro_batch, chips, layers",
    [(32, 2, 16, 2), (64, 4, 16, 2), (64, 2, 32, 4), (128, 4, 32, 4)],
)
def test_round_period_from_the_timeline_and_its_extrapolation(batch, micro_batch, chips, layers):
    """Every micro-batch simulated over two rounds: the round's period is read off the
    timeline (the second round's last micro-batch finishes one period after the first
    round's), and it is at least one trip and at least the busiest unit's work for every
    micro-batch (the work is a timing-pass figure, independent of the engine). Only 8 of them
    simulated: the extrapolated period max(trip, micro_batches x busiest unit per
    micro-batch) agrees with the full simulation within 8%."""
    n = batch // micro_batch
    s, timing, plan = _program(batch, micro_batch, chips, layers, cap=n)
    tl = simulate_stream(s, timing, static=True)
    ends = tsp_plan.copy_ends(s, tl)
    assert s.meta["copies"] == str(n) and s.meta["rounds"] == "2"
    full = tsp_plan.round_period(ends, n, n, tsp_plan.busiest_unit_cycles(s, tl))
    assert full == ends[2 * n - 1] - ends[n - 1]
    held = np.where(timing.interval >= 0, timing.interval, timing.work + timing.latency)
    busiest = np.bincount(s.unit, weights=held).max() / (2 * n)
    assert full >= n * busiest - 1e-9 and full >= ends[0]
    s8, t8, _ = _program(batch, micro_batch, chips, layers, cap=8)
    tl8 = simulate_stream(s8, t8, static=True)
    assert s8.meta["copies"] == "8"
    ends8 = tsp_plan.copy_ends(s8, tl8)
    extrapolated = tsp_plan.round_period(ends8, n, 8, tsp_plan.busiest_unit_cycles(s8, tl8))
    assert abs(extrapolated / full - 1) <= 0.08
