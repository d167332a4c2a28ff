"""Placement for groq-like: the chip count falls out of SRAM capacity (generic packing in
``archsim.compiler.packing``), then the compiler picks the micro-batch size whose compiled,
timed round is shortest."""

from __future__ import annotations

from dataclasses import replace

import networkx as nx
import numpy as np

from archsim.compiler.packing import partition_sram, plan_sram
from archsim.core.engine import Timeline, simulate_stream
from archsim.core.isa import InstructionStream
from archsim.core.plan import Plan
from archsim.families.tsp.lower import compile_program, lower_micro_batch, program_shape
from archsim.families.tsp.params import TspParams

# a longer round must beat the best by more than this to win the micro-batch search
MICRO_BATCH_TOLERANCE = 0.01
# micro-batches the coarse search compiles per candidate (the final program simulates more)
SEARCH_MICRO_BATCHES = 4


def usable_sram_bytes(p: TspParams) -> float:
    """SRAM left for weights, KV and activations once the code slices are reserved."""
    return p.chip.sram_bytes * (1.0 - p.mem.code_slices / p.mem.slices)


def plan(g: nx.DiGraph, p: TspParams, chips: int | None) -> Plan:
    s = p.system
    placed = plan_sram(g, usable_sram_bytes(p), chips, s.chips_per_node, s.max_chips)
    return tune_micro_batch(g, placed, p)


def split(g: nx.DiGraph, plan: Plan) -> nx.DiGraph:
    """Each stage's graph (chip 0 of its tensor group): shards, all-reduces, sends."""
    return partition_sram(g, plan)


def with_micro_batch(plan: Plan, batch: int, mb: int) -> Plan:
    """``plan`` with the batch cut into micro-batches of ``mb`` sequences."""
    return replace(plan, micro_batch=mb, micro_batches=-(-batch // mb))


def copy_ends(stream: InstructionStream, tl: Timeline) -> np.ndarray:
    """Cycle at which each copy (round x micro-batch) of the program has finished."""
    ends = np.zeros(int(stream.copy.max()) + 1 if len(stream) else 1, dtype=np.int64)
    np.maximum.at(ends, stream.copy, tl.end)
    return ends


def busiest_unit_cycles(stream: InstructionStream, tl: Timeline) -> float:
    """Cycles the busiest unit is held per micro-batch (per copy of the trip): a stage can
    serve micro-batches no faster than this."""
    held = (tl.release - tl.start).astype(np.float64)
    copies = int(stream.copy.max()) + 1 if len(stream) else 1
    return float(np.bincount(stream.unit, weights=held).max()) / copies if len(stream) else 0.0


def round_period(ends: np.ndarray, micro_batches: int, simulated: int, busiest: float) -> float:
    """Cycles between consecutive rounds (every micro-batch advancing one token) at load.

    One micro-batch: its trip. Every micro-batch simulated over two rounds: the second
    round's last micro-batch finishes one period after the first round's (the timeline's own
    figure). ``simulated`` < ``micro_batches``: the steady state is extrapolated as
    ``max(trip, micro_batches x busiest)`` — a round lasts at least one token's trip and at
    least the busiest unit serving every micro-batch — with the trip (``ends[0]``, under the
    load of the simulated micro-batches) and the busiest unit's cycles per micro-batch taken
    from the simulated program. Against full simulations of llama3-8b (2 to 8 stages, 16 to
    128 micro-batches) this is within 7% below the simulated period (tests/test_tsp.py)."""
    if micro_batches == 1:
        return float(ends[0])
    if simulated == micro_batches:
        return float(ends[2 * simulated - 1] - ends[simulated - 1])
    return max(float(ends[0]), micro_batches * busiest)


def round_cycles(
    g: nx.DiGraph, plan: Plan, p: TspParams, cap: int, trips: dict | None = None
) -> tuple[float, int]:
    """(cycles of one round, cycles of the first micro-batch's trip) of ``plan``, compiled
    and timed as ``program_shape`` says for at most ``cap`` micro-batches. ``trips`` caches
    the lowered trip per micro-batch size across calls."""
    sc = g.graph["scenario"]
    trips = {} if trips is None else trips
    if "graph" not in trips:  # the stage cuts do not depend on the micro-batch size
        trips["graph"] = split(g, plan)
    pg = trips["graph"]
    if plan.micro_batch not in trips:
        trips[plan.micro_batch] = lower_micro_batch(pg, plan, p, sc)
    k, rounds = program_shape(plan.micro_batches, cap)
    stream, timing = compile_program(pg, plan, p, sc, k, rounds, trips[plan.micro_batch])
    tl = simulate_stream(stream, timing, static=True)
    ends = copy_ends(stream, tl)
    busiest = busiest_unit_cycles(stream, tl)
    return round_period(ends, plan.micro_batches, k, busiest), int(ends[0])


def tune_micro_batch(g: nx.DiGraph, plan: Plan, p: TspParams) -> Plan:
    """Pick the micro-batch size whose compiled, timed round is shortest: scan 1, 2, 4, ...
    sequences per micro-batch (after the plan's one-micro-batch-per-stage size), each program
    compiled with at most SEARCH_MICRO_BATCHES micro-batches over two rounds
    (``round_period`` extrapolates the rest), until a round is longer than the best by more
    than MICRO_BATCH_TOLERANCE (past the best size rounds only grow); rounds within the
    tolerance go to the shorter trip (lower per-token latency). Small micro-batches keep more
    of them in flight, hiding hop latency; large ones stream each stage's weights through the
    MXMs fewer times per round."""
    batch = g.graph["scenario"].batch
    if batch == 1:
        return with_micro_batch(plan, 1, 1)
    tol = MICRO_BATCH_TOLERANCE
    trips: dict = {}
    cost: dict[int, tuple[float, int]] = {}

    def evaluate(mb: int) -> tuple[float, int]:
        if mb not in cost:
            cand = with_micro_batch(plan, batch, mb)
            cost[mb] = round_cycles(g, cand, p, SEARCH_MICRO_BATCHES, trips)
        return cost[mb]

    def better(a: int, b: int) -> bool:
        (ra, la), (rb, lb) = evaluate(a), evaluate(b)
        return ra < rb * (1 - tol) or (ra <= rb * (1 + tol) and la < lb)

    best = plan.micro_batch
    mb = 1
    while mb <= batch:
        if better(mb, best):
            best = mb
        elif evaluate(mb)[0] > evaluate(best)[0] * (1 + tol) and mb > best:
            break
        mb *= 2
    return with_micro_batch(plan, batch, best)
