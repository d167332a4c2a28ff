"""groq-like: a statically scheduled SRAM-only Tensor Streaming Processor and its systems.

Pipeline: plan (chip count from SRAM capacity, tensor x pipeline split, micro-batch size;
``plan.py``) -> partition (sharded ops, all-reduces, sends) -> lower (passes of functional
slices, ``lower.py``) replicated into the program every chip runs (micro-batches interleaved
through the stages, one or two rounds) -> the generic list scheduler gives every issue
cycle -> the pipeline checks the schedule independently and the engine executes it. Per-token
latency is one micro-batch's trip; the period between rounds (every micro-batch advancing a
token) comes from the simulated timeline (``plan.round_period``).
"""

from __future__ import annotations

import math
from typing import Any

import networkx as nx
import numpy as np

from archsim.core.engine import Timeline
from archsim.core.family import Family, Peak, StepModel
from archsim.core.isa import InstructionStream, Timing
from archsim.core.plan import Plan
from archsim.core.registry import register_arch
from archsim.families.tsp import plan as tsp_plan
from archsim.families.tsp.lower import compile_program, program_shape
from archsim.families.tsp.params import TspParams
from archsim.families.tsp.timing import OPCODES, tsp_timing
from archsim.graph.ops import OpKind
from archsim.graph.scenario import Scenario


@register_arch("groq-like")
class TspFamily(Family):
    Params = TspParams
    opcodes = OPCODES
    tiers = {"offchip_bytes": "dram", "onchip_bytes": "sram", "link_bytes": "c2c"}
    static = True

    def supported_ops(self) -> frozenset[str]:
        return frozenset(k.value for k in OpKind)

    def clock_hz(self, p: TspParams) -> float:
        return p.chip.clock_hz

    def plan(self, g: nx.DiGraph, p: TspParams, chips: int | None) -> Plan:
        return tsp_plan.plan(g, p, chips)

    def partition(self, g: nx.DiGraph, plan: Plan, p: TspParams) -> nx.DiGraph:
        return tsp_plan.split(g, plan)

    def lower(self, g: nx.DiGraph, plan: Plan, p: TspParams, sc: Scenario) -> InstructionStream:
        k, rounds = program_shape(plan.micro_batches, p.compiler.max_simulated_micro_batches)
        stream, _ = compile_program(g, plan, p, sc, k, rounds)
        return stream

    def instruction_estimate(self, g: nx.DiGraph, plan: Plan, p: TspParams, sc: Scenario) -> int:
        """Up to ~10 passes per op of one trip (an attention is 7 plus its planes), times the
        micro-batches and rounds the program holds."""
        k, rounds = program_shape(plan.micro_batches, p.compiler.max_simulated_micro_batches)
        return 10 * g.number_of_nodes() * k * rounds

    def timing(self, stream: InstructionStream, p: TspParams) -> Timing:
        return tsp_timing(stream, p)

    def peak(self, p: TspParams, precision_weights: str) -> Peak:
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
        return Peak(
            flops_per_s=x.planes * x.plane_dim**2 * 2.0 * rate * c.clock_hz,
            offchip_bytes_per_s=0.0,
            link_bytes_per_s=p.links.links_per_chip * p.links.link_bw_bytes_per_s,
            onchip_bytes_per_s=sram_bytes_per_s(p),
            onchip_bytes_per_s_by_opcode=(
                ("mxm", x.weight_streams_per_plane * c.vector_bytes * c.clock_hz),
            ),
        )

    # ---- the step: latency and period from the simulated program ----------------------------
    @staticmethod
    def shape(stream: InstructionStream) -> tuple[int, int]:
        """(micro-batches, rounds) the program simulates."""
        return int(stream.meta.get("copies", 1)), int(stream.meta.get("rounds", 1))

    def step(
        self, stream: InstructionStream, tl: Timeline, plan: Plan, p: TspParams, sc: Scenario
    ) -> StepModel:
        """Latency: the first micro-batch's trip through an empty pipeline. Period: cycles
        between rounds, from the timeline (``plan.round_period``). The program holds
        ``k x rounds`` micro-batches' work; a step (a round) is ``micro_batches`` of them."""
        k, rounds = self.shape(stream)
        ends = tsp_plan.copy_ends(stream, tl)
        clock = p.chip.clock_hz
        busiest = tsp_plan.busiest_unit_cycles(stream, tl)
        period = tsp_plan.round_period(ends, plan.micro_batches, k, busiest)
        return StepModel(
            latency_s=float(ends[0]) / clock,
            period_s=period / clock,
            copies=plan.micro_batches / (k * rounds),
        )

    def stage_occupancy(self, stream: InstructionStream, tl: Timeline) -> np.ndarray:
        """Cycles the busiest unit of each stage is held per micro-batch (a link port is held
        while it serialises; flight time is in the wire, not the port)."""
        k, rounds = self.shape(stream)
        n_units = len(stream.unit_names)
        held = (tl.release - tl.start).astype(np.float64)
        busy = np.bincount(stream.unit, weights=held, minlength=n_units) / (k * rounds)
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
        step = self.step(stream, tl, plan, p, sc)
        k, rounds = self.shape(stream)
        occ = self.stage_occupancy(stream, tl)
        n_mb = plan.micro_batches
        latency = step.latency_s * clock
        round_cycles = step.period_s * clock
        round_s = step.period_s
        nodes = math.ceil(plan.chips / s.chips_per_node)
        peak = self.peak(p, sc.precision.weights)
        per_round = step.copies * plan.tp  # copies of the simulated work done in one round
        vxm_units = [i for i, u in enumerate(stream.unit_names) if u.endswith(".vxm")]
        mxm_units = [i for i, u in enumerate(stream.unit_names) if ".mxm" in u]
        mxm_feed = dict(peak.onchip_bytes_per_s_by_opcode)["mxm"]
        return {
            "nodes": nodes,
            "racks": math.ceil(nodes / s.nodes_per_rack),
            "per_token_latency_s": step.latency_s,
            "per_token_latency_cycles": int(latency),
            "stage_cycles": [int(x) for x in occ],
            "slowest_stage_cycles": int(occ.max()),
            "micro_batches": n_mb,
            "micro_batch": plan.micro_batch,
            "simulated_micro_batches": k,
            "simulated_rounds": rounds,
            "round_s": round_s,
            "tokens_in_flight": sc.tokens * latency / round_cycles,
            "tokens_per_s_per_user_at_load": sc.new_tokens_per_seq / round_s,
            "pipeline_full": bool(round_cycles > latency * (1 + 1e-9)),
            "sram_bytes_per_chip": p.chip.sram_bytes,
            "sram_usable_bytes_per_chip": tsp_plan.usable_sram_bytes(p),
            "fullest_chip_bytes": plan.extra.get("fullest_chip_bytes"),
            "sram_bw_used_bytes_per_s": float(stream.onchip_bytes.sum())
            * step.copies
            / plan.pp
            / round_s,
            "sram_bw_peak_bytes_per_s": sram_read_bytes_per_s(p),
            "mxm_feed_peak_bytes_per_s": mxm_feed * p.mxm.planes,
            "mxm_utilization": float(stream.flops.sum())
            * per_round
            / (peak.flops_per_s * plan.chips * round_s),
            "mxm_busy_fraction": float(tl.busy[mxm_units].sum())
            * step.copies
            / (max(len(mxm_units), 1) * round_cycles),
            "vxm_utilization": float(tl.busy[vxm_units].sum())
            * step.copies
            / (plan.pp * round_cycles),
            "link_utilization": float(stream.link_bytes.sum())
            * per_round
            / round_s
            / (plan.chips * p.links.links_per_chip * p.links.link_bw_bytes_per_s),
        }

    def kernel_choice(self, stream: InstructionStream, timing: Timing, p: TspParams) -> dict:
        """Which slices the op ran on: MXM planes and weight tiles, VXM/SXM passes, links."""
        mxm = self.opcode_mask(stream, "mxm")
        planes = sorted({stream.unit_names[u] for u in stream.unit[mxm]})
        return {
            "mxm_planes": len(planes),
            "mxm_tiles": int(stream.n[mxm].sum()),
            "mxm_mode": ["int8", "fp8", "fp16"][int(stream.g[mxm][0])] if mxm.any() else None,
            "vxm_passes": int(self.opcode_mask(stream, "vxm").sum()),
            "sxm_passes": int(self.opcode_mask(stream, "sxm").sum()),
            "c2c_transfers": int(self.opcode_mask(stream, "c2c").sum()),
        }


def sram_read_bytes_per_s(p: TspParams) -> float:
    """Every MEM slice reading one vector per cycle."""
    m = p.mem
    return m.slices * m.reads_per_slice_per_cycle * p.chip.vector_bytes * p.chip.clock_hz


def sram_bytes_per_s(p: TspParams) -> float:
    """Every MEM slice reading and writing its vectors each cycle (both ports)."""
    m = p.mem
    per_cycle = m.reads_per_slice_per_cycle + m.writes_per_slice_per_cycle
    return m.slices * per_cycle * p.chip.vector_bytes * p.chip.clock_hz
