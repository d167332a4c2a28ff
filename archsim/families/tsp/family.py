"""groq-like: a statically scheduled SRAM-only Tensor Streaming Processor and its systems.

Pipeline: plan (chip count from SRAM capacity, tensor x pipeline split, compiler.tsp_partition)
-> partition (sharded ops, all-reduces, sends) -> lower (passes of functional slices,
compiler.tsp_lower) -> schedule (issue cycle of every instruction, compiler.tsp_schedule) ->
the shared engine executes the schedule and verifies it (ScheduleError on any conflict).
The step simulated is one micro-batch travelling through every stage: its makespan is the
per-token latency; pipelining many micro-batches sets system throughput (``summarize``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import networkx as nx
import numpy as np

from archsim.arch import register_arch
from archsim.arch.base import Family
from archsim.arch.tsp_params import TspParams
from archsim.arch.tsp_timing import serialise_cycles
from archsim.compiler.plan import Plan
from archsim.engine import Timeline
from archsim.isa import InstructionStream
from archsim.scenario import Scenario


def usable_sram_bytes(p: TspParams) -> float:
    """SRAM left for weights, KV and activations once the code slices are reserved."""
    return p.chip.sram_bytes * (1.0 - p.mem.code_slices / p.mem.slices)


def link_cycles(p: TspParams) -> tuple[int, int]:
    """(serialisation cycles per vector per link, flight cycles per hop)."""
    c, ln = p.chip, p.links
    ser = serialise_cycles(c.vector_bytes, c.clock_hz, ln.link_bw_bytes_per_s)
    return ser, round(ln.link_latency_s * c.clock_hz)


# a longer round must beat the best by more than this to win the micro-batch search
MICRO_BATCH_TOLERANCE = 0.01


@register_arch("groq-like")
class TspFamily(Family):
    Params = TspParams
    opcodes = ["mxm", "vxm", "sxm", "mem", "c2c"]
    tiers = {"offchip_bytes": "dram", "onchip_bytes": "sram", "link_bytes": "c2c"}
    strict_static = True

    def clock_hz(self, p: TspParams) -> float:
        return p.chip.clock_hz

    def plan(self, g: nx.DiGraph, p: TspParams, chips: int | None) -> Plan:
        from archsim.compiler.tsp_partition import plan_sram

        s = p.system
        plan = plan_sram(g, usable_sram_bytes(p), chips, s.chips_per_node, s.max_chips)
        return self.tune_micro_batch(g, plan, p)

    # ---- micro-batching: the compiler picks the size that maximises throughput --------------
    @staticmethod
    def with_micro_batch(plan: Plan, batch: int, mb: int) -> Plan:
        """``plan`` with the batch cut into micro-batches of ``mb`` sequences."""
        extra = {**plan.extra, "micro_batch": mb, "micro_batches": -(-batch // mb)}
        return replace(plan, extra=extra)

    def round_cycles(self, g: nx.DiGraph, plan: Plan, p: TspParams) -> tuple[float, int]:
        """(cycles of one round — every micro-batch advances a token —, cycles of one
        micro-batch's trip through the pipeline) of ``plan``, compiled and timed."""
        from archsim.engine import simulate_stream

        stream = self.lower(self.partition(g, plan), plan, p, g.graph["scenario"])
        tl = simulate_stream(stream, self.durations(stream, p), strict_static=True)
        occ = self.stage_occupancy(stream, tl, p)
        return max(tl.cycles, plan.extra["micro_batches"] * float(occ.max())), tl.cycles

    def tune_micro_batch(self, g: nx.DiGraph, plan: Plan, p: TspParams) -> Plan:
        """Pick the micro-batch size whose compiled, timed round is shortest: scan 1, 2, 4, ...
        sequences (and the plan's one-micro-batch-per-stage size) until a round is longer than
        the best by more than MICRO_BATCH_TOLERANCE (past the best size rounds only grow);
        rounds within the tolerance go to the shorter trip (lower per-token latency). Small
        micro-batches keep more of them in flight, hiding hop latency; large ones stream each
        stage's weights through the MXMs fewer times per round."""
        batch = g.graph["scenario"].batch
        if batch == 1:
            return plan
        tol = MICRO_BATCH_TOLERANCE
        cost: dict[int, tuple[float, int]] = {}

        def evaluate(mb: int) -> tuple[float, int]:
            if mb not in cost:
                cost[mb] = self.round_cycles(g, self.with_micro_batch(plan, batch, mb), p)
            return cost[mb]

        def better(a: int, b: int) -> bool:
            (ra, la), (rb, lb) = evaluate(a), evaluate(b)
            return ra < rb * (1 - tol) or (ra <= rb * (1 + tol) and la < lb)

        best = int(plan.extra["micro_batch"])
        mb = 1
        while mb <= batch:
            if better(mb, best):
                best = mb
            elif evaluate(mb)[0] > evaluate(best)[0] * (1 + tol) and mb > best:
                break
            mb *= 2
        return self.with_micro_batch(plan, batch, best)

    def partition(self, g: nx.DiGraph, plan: Plan) -> nx.DiGraph:
        from archsim.compiler.tsp_partition import partition_sram

        return partition_sram(g, plan)

    def peak(self, p: TspParams, precision_weights: str) -> dict[str, Any]:
        """Ceilings a roofline holds each instruction to: the chip's MXM MACs x 2 at the weights'
        rate; on chip, every MEM slice reading and writing one vector per cycle — and, tighter,
        for an MXM pass the weight feed of its plane (its weight streams x 320 B per cycle),
        which is what a weight-streaming pass is bound by; all links of a chip, one direction.
        No off-chip memory."""
        c, x = p.chip, p.mxm
        rate = {"int8": x.int8_rate_fraction, "fp8": x.fp8_rate_fraction}.get(
            precision_weights, x.fp16_rate_fraction
        )
        rate = rate if rate > 0 else x.fp16_rate_fraction
        return {
            "flops_per_s": x.planes * x.plane_dim**2 * 2.0 * rate * c.clock_hz,
            "offchip_bytes_per_s": 0.0,
            "onchip_bytes_per_s": self.sram_bytes_per_s(p),
            "onchip_bytes_per_s_by_opcode": {
                "mxm": x.weight_streams_per_plane * c.vector_bytes * c.clock_hz
            },
            "link_bytes_per_s": p.links.links_per_chip * p.links.link_bw_bytes_per_s,
        }

    @staticmethod
    def sram_read_bytes_per_s(p: TspParams) -> float:
        """Every MEM slice reading one vector per cycle."""
        m = p.mem
        return m.slices * m.reads_per_slice_per_cycle * p.chip.vector_bytes * p.chip.clock_hz

    @staticmethod
    def sram_bytes_per_s(p: TspParams) -> float:
        """Every MEM slice reading and writing its vectors each cycle (both ports)."""
        m = p.mem
        per_cycle = m.reads_per_slice_per_cycle + m.writes_per_slice_per_cycle
        return m.slices * per_cycle * p.chip.vector_bytes * p.chip.clock_hz

    # ---- compile: lower + schedule -----------------------------------------------------------
    def lower(self, g: nx.DiGraph, plan: Plan, p: TspParams, sc: Scenario) -> InstructionStream:
        from archsim.compiler.tsp_lower import Lowerer
        from archsim.compiler.tsp_schedule import asap_issue

        b = Lowerer(g, plan, p, sc, self.opcodes).lower()
        b.meta.update(family=self.name, micro_batch=str(plan.extra.get("micro_batch", 1)))
        stream = b.build()
        dur = self.durations(stream, p)
        issue = asap_issue(
            stream.unit, dur, stream.dep_ptr, stream.dep_idx, len(stream.unit_names), 0
        )
        stream.cols["issue"][:] = issue
        return stream

    def durations(self, stream: InstructionStream, p: TspParams) -> np.ndarray:
        from archsim.arch.tsp_timing import tsp_durations

        c, m, v, x, pl, ln = p.chip, p.mem, p.vxm, p.mxm, p.place, p.links
        ser, flight = link_cycles(p)
        rate = np.array([x.int8_rate_fraction, x.fp8_rate_fraction, x.fp16_rate_fraction])
        rate = np.where(rate > 0, rate, 1e-30)  # an absent mode is refused at lowering
        s = stream
        return tsp_durations(
            s.opcode, s.m, s.n, s.k, s.g, s.h, s.aux, rate,
            c.stream_hop_slices, c.stream_hop_cycles, m.read_latency_cycles,
            m.write_latency_cycles, (c.superlanes - 1) * c.superlane_skew_cycles,
            pl.weight_feed_slices, pl.act_feed_slices, pl.result_slices,
            x.weight_streams_per_plane, x.latency_cycles, x.buffer_swap_cycles,
            v.alus_per_lane, v.int_latency_cycles, v.fp_latency_cycles, v.cast_latency_cycles,
            v.transcendental_latency_cycles, p.sxm.latency_cycles,
            ser, flight, ln.receive_cycles, ln.forward_cycles,
        )  # fmt: skip

    # ---- outputs ----------------------------------------------------------------------------
    def stage_occupancy(self, stream: InstructionStream, tl: Timeline, p: TspParams) -> np.ndarray:
        """Cycles the busiest unit of each stage is occupied by one micro-batch. A link port is
        occupied while it serialises; flight time is in the wire, not the port."""
        ser, _ = link_cycles(p)
        is_c2c = stream.opcode == self.opcodes.index("c2c")
        occ = np.where(is_c2c, stream.m * ser, tl.duration).astype(np.float64)
        n_units = len(stream.unit_names)
        busy = np.bincount(stream.unit, weights=occ, minlength=n_units)
        unit_chip = np.zeros(n_units, dtype=np.int64)
        unit_chip[stream.unit] = stream.chip
        stages = int(stream.chip.max()) + 1 if len(stream) else 1
        out = np.zeros(stages)
        np.maximum.at(out, unit_chip, busy)
        return out

    def summarize(
        self, stream: InstructionStream, tl: Timeline, plan: Plan, p: TspParams, sc: Scenario
    ) -> dict[str, Any]:
        clock, s = p.chip.clock_hz, p.system
        occ = self.stage_occupancy(stream, tl, p)
        n_mb = int(plan.extra.get("micro_batches", 1))
        latency = tl.cycles
        # a round: every micro-batch advances one token; bounded by a token's trip through the
        # pipeline and by the slowest stage serving all micro-batches in turn
        round_cycles = max(latency, n_mb * float(occ.max()))
        round_s = round_cycles / clock
        nodes = math.ceil(plan.chips / s.chips_per_node)
        peak = self.peak(p, sc.precision.weights)
        per_round = n_mb * plan.tp  # copies of the simulated work done in one round
        vxm_units = [i for i, u in enumerate(stream.unit_names) if u.endswith(".vxm")]
        mxm_units = [i for i, u in enumerate(stream.unit_names) if ".mxm" in u]
        return {
            "nodes": nodes,
            "racks": math.ceil(nodes / s.nodes_per_rack),
            "per_token_latency_s": latency / clock,
            "per_token_latency_cycles": int(latency),
            "stage_cycles": [int(x) for x in occ],
            "slowest_stage_cycles": int(occ.max()),
            "micro_batches": n_mb,
            "micro_batch": int(plan.extra.get("micro_batch", sc.batch)),
            "round_s": round_s,
            "tokens_in_flight": sc.tokens * latency / round_cycles,
            "step_copies": n_mb,  # the stream is one micro-batch; a round serves them all
            "step_period_s": round_s,
            "tokens_per_s_per_user_at_load": sc.new_tokens_per_seq / round_s,
            "pipeline_full": bool(n_mb * occ.max() >= latency),
            "sram_bytes_per_chip": p.chip.sram_bytes,
            "sram_usable_bytes_per_chip": usable_sram_bytes(p),
            "fullest_chip_bytes": plan.extra.get("fullest_chip_bytes"),
            "sram_bw_used_bytes_per_s": float(stream.onchip_bytes.sum()) * n_mb / plan.pp / round_s,
            "sram_bw_peak_bytes_per_s": self.sram_read_bytes_per_s(p),
            "mxm_feed_peak_bytes_per_s": peak["onchip_bytes_per_s_by_opcode"]["mxm"] * p.mxm.planes,
            "mxm_utilization": float(stream.flops.sum())
            * per_round
            / (peak["flops_per_s"] * plan.chips * round_s),
            "mxm_busy_fraction": float(tl.busy[mxm_units].sum())
            * n_mb
            / (max(len(mxm_units), 1) * round_cycles),
            "vxm_utilization": float(tl.busy[vxm_units].sum()) * n_mb / (plan.pp * round_cycles),
            "link_utilization": float(stream.link_bytes.sum())
            * per_round
            / round_s
            / (plan.chips * p.links.links_per_chip * p.links.link_bw_bytes_per_s),
        }
