"""dmatrix-like: digital in-memory compute (d-Matrix Corsair-style) with an LPDDR capacity tier.

Pipeline: plan (``plan.py``: the fewest cards whose SRAM holds the weights, or the share each
card keeps resident when fewer are given; then the micro-batch size) -> partition (the
generic op-granular stage split: shards, all-reduces, sends) -> lower (``lower.py``: DIMC
passes, SIMD passes, LPDDR chunks through the stream buffer, die-to-die and card-to-card
exchanges) replicated into the program the cards run (micro-batches through the stages, one
or two rounds) -> timing (``timing.py``) -> the shared engine, dynamically (each unit runs
its instructions in program order; LPDDR, die-to-die and card links are shared resources).
"""

from __future__ import annotations

import math
from typing import Any

import networkx as nx
import numpy as np

from archsim.compiler.packing import partition_sram
from archsim.core.engine import Timeline
from archsim.core.family import Family, Peak, StepModel
from archsim.core.isa import InstructionStream, Timing
from archsim.core.plan import Plan
from archsim.core.registry import register_arch
from archsim.families.imc import plan as imc_plan
from archsim.families.imc.lower import block_formats, format_bits, passes, usable_sram_bytes
from archsim.families.imc.params import ImcParams
from archsim.families.imc.timing import OPCODES, imc_timing
from archsim.graph.ops import OpKind
from archsim.graph.scenario import Scenario

# a step is reported LPDDR-bound when the busiest card's LPDDR is moving data this share of it
LPDDR_BOUND_SHARE = 0.5


@register_arch("dmatrix-like")
class ImcFamily(Family):
    Params = ImcParams
    opcodes = OPCODES
    tiers = {"offchip_bytes": "lpddr", "onchip_bytes": "sram", "link_bytes": "links"}
    static = False
    weight_stationary = True  # weights live in the DIMC arrays (LPDDR only below auto chips)

    def supported_ops(self) -> frozenset[str]:
        kinds = (
            OpKind.EMBEDDING, OpKind.MATMUL, OpKind.BMM, OpKind.ATTENTION, OpKind.NORM,
            OpKind.SOFTMAX, OpKind.ROPE, OpKind.ACTIVATION, OpKind.RESIDUAL,
            OpKind.ALL_REDUCE, OpKind.SEND_RECV, OpKind.ROUTER, OpKind.EXPERT_FFN,
            OpKind.ALL_TO_ALL, OpKind.MLA_ATTENTION,
        )  # fmt: skip
        return frozenset(k.value for k in kinds)

    def clock_hz(self, p: ImcParams) -> float:
        return p.card.clock_hz

    def plan(self, g: nx.DiGraph, p: ImcParams, chips: int | None) -> Plan:
        placed = imc_plan.plan(g, p, chips)
        return imc_plan.tune_micro_batch(self.partition(g, placed, p), placed, p)

    def partition(self, g: nx.DiGraph, plan: Plan, p: ImcParams) -> nx.DiGraph:
        return partition_sram(g, plan)

    def lower(self, g: nx.DiGraph, plan: Plan, p: ImcParams, sc: Scenario) -> InstructionStream:
        return imc_plan.compile_program(g, plan, p)

    def timing(self, stream: InstructionStream, p: ImcParams) -> Timing:
        return imc_timing(stream, p)

    def peak(self, p: ImcParams, precision_weights: str) -> Peak:
        """Per card: MACs x 2 at the weights' format with inputs as wide (the vendor's
        pairing: 2.4 POPS MXINT8, 9.6 POPS MXINT4); LPDDR; the die-to-die links of all
        chiplets (the widest path a card has); on chip, every core touching (or writing)
        its weights at its rate — and, under the in-place reading, a DIMC pass bound only by
        the MAC rate at the narrowest input."""
        c, d = p.card, p.dimc
        cores = c.chiplets * d.cores_per_chiplet
        bits = format_bits(p, precision_weights) or format_bits(p, "int8")
        macs = d.bit_products_per_cycle / (bits * bits) * cores * c.clock_hz
        sram = cores * max(d.touch_bits_per_cycle, d.write_bits_per_cycle) / 8 * c.clock_hz
        by_opcode: tuple[tuple[str, float], ...] = ()
        if d.touch_model == "in_place":
            narrowest = min(b for b in (format_bits(p, x) for x in
                            ("int8", "int4", "bf16", "fp16", "fp8", "fp32")) if b > 0)  # fmt: skip
            by_opcode = (("dimc", cores * d.bit_products_per_cycle / (8 * narrowest)
                          * c.clock_hz),)  # fmt: skip
        return Peak(
            flops_per_s=2.0 * macs,
            offchip_bytes_per_s=p.memory.lpddr_bw_bytes_per_s,
            link_bytes_per_s=p.links.d2d_bw_bytes_per_s * c.chiplets,
            onchip_bytes_per_s=sram,
            onchip_bytes_per_s_by_opcode=by_opcode,
        )

    # ---- the step -----------------------------------------------------------------------------
    @staticmethod
    def shape(stream: InstructionStream) -> tuple[int, int]:
        """(micro-batches, rounds) the program simulates."""
        return int(stream.meta.get("copies", 1)), int(stream.meta.get("rounds", 1))

    def step(
        self, stream: InstructionStream, tl: Timeline, plan: Plan, p: ImcParams, sc: Scenario
    ) -> StepModel:
        """One round: every micro-batch advances a token. Latency: a user's time between
        tokens at this load (the round); the program holds ``k x rounds`` micro-batches'
        work, a round ``micro_batches`` of them."""
        period = self.round_cycles(stream, tl, plan, p)
        k, rounds = self.shape(stream)
        clock = p.card.clock_hz
        return StepModel(
            latency_s=period / clock,
            period_s=max(period, 1.0) / clock,
            copies=plan.micro_batches / (k * rounds),
        )

    def round_cycles(self, stream, tl, plan: Plan, p: ImcParams) -> float:
        k, _ = self.shape(stream)
        ends = imc_plan.copy_ends(stream, tl)
        busiest = imc_plan.busiest_cycles(stream, tl)
        return imc_plan.round_period(ends, plan.micro_batches, k, busiest)

    @staticmethod
    def lpddr_share(
        stream: InstructionStream, tl: Timeline, per_round: float, period: float
    ) -> float:
        """Largest share of a card's active time (its first start to its last end in the
        simulated program) during which its LPDDR moves data — 1 for a card whose stage waits
        on its weights — or of the round, where the round is extrapolated from a busiest
        LPDDR (``per_round``: copies of the simulated program in one round)."""
        best = 0.0
        for r, name in enumerate(tl.resource_names):
            if not name.endswith(".lpddr"):
                continue
            mine = stream.chip == int(name[len("card") : -len(".lpddr")])
            window = int(tl.end[mine].max() - tl.start[mine].min()) if mine.any() else 0
            busy = float(tl.resource_busy[r])
            share = max(busy / max(window, 1), busy * per_round / max(period, 1))
            best = max(best, min(1.0, share))
        return best

    def summarize(
        self, stream: InstructionStream, tl: Timeline, plan: Plan, p: ImcParams, sc: Scenario
    ) -> dict[str, Any]:
        s, d, clock = p.system, p.dimc, p.card.clock_hz
        fm = block_formats(p, sc.precision)
        period = self.round_cycles(stream, tl, plan, p)
        k, rounds = self.shape(stream)
        per_round = plan.micro_batches / (k * rounds)  # simulated copies -> one round
        ends = imc_plan.copy_ends(stream, tl)
        servers = math.ceil(plan.chips / s.cards_per_server)
        dimc = [i for i, u in enumerate(tl.unit_names) if u.endswith(".dimc")]
        # the busiest card's DIMC cores: share of a round they multiply (or are written)
        dimc_busy = min(1.0, float(tl.busy[dimc].max()) * per_round / max(period, 1.0))
        lpddr_busy = self.lpddr_share(stream, tl, per_round, period)
        streamed = plan.extra.get("streamed_bytes", [0.0])
        lanes = d.bit_products_per_cycle // (d.touch_bits_per_cycle * fm.in_bits)
        if d.input_mode == "bit_serial":
            lanes *= fm.in_bits
        touched = float(stream.onchip_bytes[self.opcode_mask(stream, "dimc")].sum())
        return {
            "cards": plan.chips,
            "servers": servers,
            "racks": math.ceil(servers / s.servers_per_rack),
            "per_token_latency_s": period / clock,
            "trip_latency_s": float(ends[0]) / clock,
            "tokens_per_s_per_card": sc.tokens / (period / clock) / plan.chips,
            "micro_batches": plan.micro_batches,
            "micro_batch": plan.micro_batch,
            "simulated_micro_batches": k,
            "simulated_rounds": rounds,
            "weight_format": fm.weights,
            "input_format": f"{fm.inputs} ({fm.in_bits}-bit inputs)",
            "kv_format": fm.kv,
            "kv_tier": p.memory.kv_tier,
            "touch_model": d.touch_model,
            "input_mode": d.input_mode,
            "dimc_macs_per_cycle_per_core": d.bit_products_per_cycle / (fm.w_bits * fm.in_bits),
            "vectors_per_pass": lanes if d.touch_model == "weight_touch" else 1,
            "passes_per_tile": passes(p, plan.micro_batch or sc.batch, fm.in_bits),
            "weight_residency": "lpddr-streaming" if any(streamed) else "sram",
            "cards_for_sram_residency": plan.extra.get("sram_cards"),
            "resident_weight_fraction": min(plan.extra.get("resident_fraction", [1.0])),
            # every micro-batch's trip streams its stages' non-resident weights again
            "weights_streamed_bytes_per_step": float(sum(streamed)) * plan.tp * plan.micro_batches,
            "lpddr_busy_fraction": lpddr_busy,
            "lpddr_bound": bool(lpddr_busy >= LPDDR_BOUND_SHARE),
            "dimc_busy_fraction": dimc_busy,
            "sram_bytes_per_card": p.card.sram_bytes,
            "sram_usable_bytes_per_card": usable_sram_bytes(p),
            "fullest_card_bytes": plan.extra.get("fullest_card_bytes"),
            "dimc_touch_bytes_per_s": touched * per_round / plan.pp / (period / clock),
            "dimc_bw_peak_bytes_per_s": d.marketed_bw_bytes_per_s,
        }

    def kernel_choice(self, stream: InstructionStream, timing: Timing, p: ImcParams) -> dict:
        """How the op sat on the card: DIMC passes (tiles on the busiest core, vectors per
        pass), SIMD passes, LPDDR chunks, exchanges; ``compute_cycles``: the DIMC work."""
        dimc = self.opcode_mask(stream, "dimc")
        out: dict[str, Any] = {
            "dimc_passes": int(dimc.sum()),
            "tiles_on_busiest_core": int(stream.n[dimc].sum()),
            "compute_cycles": int(timing.work[dimc].sum() + timing.latency[dimc].sum()),
            "simd_passes": int(self.opcode_mask(stream, "simd").sum()),
            "lpddr_transfers": int(
                (self.opcode_mask(stream, "load") | self.opcode_mask(stream, "store")).sum()
            ),
            "exchanges": int(
                (self.opcode_mask(stream, "d2d") | self.opcode_mask(stream, "link")).sum()
            ),
        }
        if dimc.any():
            i = int(np.nonzero(dimc)[0][0])
            out["weight_bits"] = int(stream.g[i])
            out["input_bits"] = int(stream.h[i])
            out["vectors"] = int(stream.m[i])
        return out
