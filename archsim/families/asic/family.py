"""etched-like: a fixed-function transformer ASIC (Etched Sohu) fed from HBM.

Pipeline: admission (``admission.py``: the graph against what the silicon runs) -> plan
(fewest chips by HBM capacity, tensor-parallel in the 8-chip server; ``plan.py``) ->
partition (Megatron shards, all-reduces) -> lower (one pass of a hardwired stage per tile of
sequences, streaming dependencies; ``lower.py``) -> timing (``timing.py``) -> the shared
engine, which overlaps the stages and shares HBM and links between them.
"""

from __future__ import annotations

import math
from typing import Any

import networkx as nx
import numpy as np

from archsim.core.engine import Timeline
from archsim.core.family import Family, Peak
from archsim.core.isa import InstructionStream, Timing
from archsim.core.plan import Plan
from archsim.core.registry import register_arch
from archsim.families.asic import admission
from archsim.families.asic import lower as asic_lower
from archsim.families.asic import plan as asic_plan
from archsim.families.asic.params import AsicParams
from archsim.families.asic.timing import OPCODES, asic_timing
from archsim.graph.scenario import Scenario

# the stages whose busy share is reported (summarize), in pipeline order
STAGES = (
    "embed", "attn_norm", "mxu_qkv", "rope", "attention", "mxu_o", "attn_residual", "ffn_norm",
    "mxu_gate_up", "act", "mxu_down", "ffn_residual", "norm", "link", "host",
)  # fmt: skip


@register_arch("etched-like")
class AsicFamily(Family):
    Params = AsicParams
    opcodes = OPCODES
    tiers = {"offchip_bytes": "hbm", "onchip_bytes": "sram", "link_bytes": "link"}
    static = False

    def supported_ops(self) -> frozenset[str]:
        return admission.LOWERABLE

    def check_graph(self, g: nx.DiGraph, p: AsicParams) -> None:
        admission.check(g, p, self.name)

    def clock_hz(self, p: AsicParams) -> float:
        return p.chip.clock_hz

    def plan(self, g: nx.DiGraph, p: AsicParams, chips: int | None) -> Plan:
        return asic_plan.plan(g, p, chips)

    def partition(self, g: nx.DiGraph, plan: Plan, p: AsicParams) -> nx.DiGraph:
        return asic_plan.split(g, plan)

    def lower(self, g: nx.DiGraph, plan: Plan, p: AsicParams, sc: Scenario) -> InstructionStream:
        return asic_lower.lower(g, plan, p, sc)

    def timing(self, stream: InstructionStream, p: AsicParams) -> Timing:
        return asic_timing(stream, p)

    @staticmethod
    def arrays(p: AsicParams) -> int:
        """MAC arrays on the chip: the four matrix engines and the attention unit."""
        return sum(asic_lower.engine_arrays(p).values()) + p.attention.arrays

    @staticmethod
    def rate(p: AsicParams, precision: str) -> float:
        return 1.0 if precision == "fp8" else p.chip.bf16_rate_fraction

    def peak(self, p: AsicParams, precision_weights: str) -> Peak:
        """Every array's MACs x 2 at the weights' rate; HBM; all links of a chip, one way.
        Each stage is held to its own arrays: a projection engine or the attention unit
        cannot use the others'."""
        per_array = 2.0 * p.chip.array_dim**2 * self.rate(p, precision_weights) * p.chip.clock_hz
        stages = {f"mxu_{e}": a for e, a in asic_lower.engine_arrays(p).items()}
        stages["attention"] = p.attention.arrays
        return Peak(
            flops_per_s=self.arrays(p) * per_array,
            offchip_bytes_per_s=p.memory.hbm_peak_bw_bytes_per_s,
            link_bytes_per_s=p.links.links_per_chip * p.links.link_bw_bytes_per_s,
            flops_per_s_by_unit=tuple((k, a * per_array) for k, a in stages.items()),
        )

    # ---- outputs ----------------------------------------------------------------------------
    @staticmethod
    def stage_busy(stream: InstructionStream, tl: Timeline, timing: Timing) -> dict[str, float]:
        """Share of the step each stage's datapath works (its passes' own cycles, not the
        cycles it waits for its producer's rows or for HBM), mean over pipeline stages."""
        work = np.bincount(stream.unit, weights=timing.work, minlength=len(stream.unit_names))
        per: dict[str, list[float]] = {}
        for name, w in zip(stream.unit_names, work, strict=True):
            per.setdefault(name.split(".", 1)[1], []).append(float(w) / max(tl.cycles, 1))
        return {k: float(np.mean(per[k])) if k in per else 0.0 for k in STAGES}

    def summarize(
        self, stream: InstructionStream, tl: Timeline, plan: Plan, p: AsicParams, sc: Scenario
    ) -> dict[str, Any]:
        timing = asic_timing(stream, p)
        busy = self.stage_busy(stream, tl, timing)
        arrays = asic_lower.engine_arrays(p)
        n_arrays = sum(arrays.values())
        mxu = np.array([stream.unit_names[u].split(".", 1)[1].startswith("mxu_")
                        for u in stream.unit])  # fmt: skip
        dim, clock = p.chip.array_dim, p.chip.clock_hz
        seconds = tl.cycles / clock
        matrix_peak = 2.0 * n_arrays * dim**2 * self.rate(p, sc.precision.weights) * clock
        hbm = float(stream.offchip_bytes.sum()) / plan.pp / max(seconds, 1e-30)
        out: dict[str, Any] = {
            "servers": math.ceil(plan.chips / p.links.chips_per_server),
            "tiles": int(stream.meta.get("tiles", 1)),
            "tile_sequences": int(stream.meta.get("tile_sequences", sc.batch)),
            "residual_spill": stream.meta.get("residual_spill") == "True",
            "matrix_busy": sum(busy[f"mxu_{e}"] * a for e, a in arrays.items()) / n_arrays,
            "matrix_utilization": float(stream.flops[mxu].sum())
            / plan.pp
            / (matrix_peak * max(seconds, 1e-30)),
            "hbm_utilization": hbm / p.memory.hbm_peak_bw_bytes_per_s,
        }
        out.update({f"{k}_busy": v for k, v in busy.items()})
        # what limits the step: the busiest stage, or HBM / links when they are busier
        link = busy["link"]
        limits = {**busy, "hbm": out["hbm_utilization"] / p.memory.hbm_efficiency, "link": link}
        out["bottleneck"] = max(limits, key=limits.get)
        return out

    # ---- archsim kernel ---------------------------------------------------------------------
    def kernel_choice(self, stream: InstructionStream, timing: Timing, p: AsicParams) -> dict:
        """Which stages ran the op: a GEMM of no projection runs on all four engines, its
        columns in proportion to their arrays."""
        units = sorted({stream.unit_names[u].split(".", 1)[1] for u in stream.unit})
        gemm = self.opcode_mask(stream, "gemm")
        return {
            "stages": units,
            "arrays": int(stream.g[gemm].sum()) if gemm.any() else 0,
            "compute_cycles": int((timing.work + timing.latency).max()) if len(stream) else 0,
        }
