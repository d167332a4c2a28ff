"""cerebras-like: a wafer-scale 2D mesh of PEs where decode is bound by hops, not bytes.

Pipeline: plan (regions of PEs per block sized by their weights and KV, their shape chosen
by pricing candidates with the stream's own recipes; blocks packed onto wafers; micro-batches;
``plan.py``) -> partition (each op's stage = its wafer) -> lower (phases of each op on its
region: local multiply-accumulate, reductions and broadcasts along the mesh, activation
streams between regions and wafers; ``lower.py``), replicated into the program of several
micro-batches over two rounds -> timing (cycle formulas per phase, ``timing.py``) -> the
shared engine (regions and links as units, row/column bundles, region boundaries and
wafer links as shared resources). Per-token latency is the first micro-batch's trip; the
period between steps comes from the timeline.
"""

from __future__ import annotations

from typing import Any

import networkx as nx
import numpy as np

from archsim.core.engine import Timeline
from archsim.core.family import Family, Peak, StepModel
from archsim.core.isa import START_START, InstructionStream, Timing
from archsim.core.plan import Plan
from archsim.core.registry import register_arch
from archsim.families.wafer import plan as wafer_plan
from archsim.families.wafer.lower import SUPPORTED, lower
from archsim.families.wafer.params import WaferParams
from archsim.families.wafer.timing import (
    ALGOS,
    OPCODES,
    allreduce_terms,
    free_routes,
    simd_widths,
    wafer_timing,
)
from archsim.graph.scenario import Scenario

# latency parts: the class of each opcode on the critical path
PART_OF = {
    "mac": "compute", "vec": "compute", "gemm": "compute", "allreduce": "reduction",
    "xfer": "onwafer_hops", "wafer_xfer": "offwafer", "weight_load": "weight_stream",
}  # fmt: skip
PARTS = ("compute", "reduction", "onwafer_hops", "offwafer", "weight_stream")
LOCAL = ("mac", "vec", "gemm")


@register_arch("cerebras-like")
class WaferFamily(Family):
    Params = WaferParams
    opcodes = OPCODES
    # link_bytes: bytes over links, on the wafer (fabric) and between wafers
    tiers = {"offchip_bytes": "memoryx", "onchip_bytes": "sram", "link_bytes": "links"}
    static = False
    weight_stationary = True  # weights live in the PEs' SRAM (weight streaming is an option)

    def supported_ops(self) -> frozenset[str]:
        return SUPPORTED

    def clock_hz(self, p: WaferParams) -> float:
        return p.wafer.clock_hz

    def plan(self, g: nx.DiGraph, p: WaferParams, chips: int | None) -> Plan:
        return wafer_plan.plan(g, p, chips)

    def partition(self, g: nx.DiGraph, plan: Plan, p: WaferParams) -> nx.DiGraph:
        return wafer_plan.with_stages(g, plan)

    def lower(self, g: nx.DiGraph, plan: Plan, p: WaferParams, sc: Scenario) -> InstructionStream:
        if "regions" not in plan.extra:  # archsim kernel: a bare plan for one op
            plan = wafer_plan.kernel_plan(g, plan, p)
        trip = lower(g, plan, p, sc)
        k, rounds = wafer_plan.program_shape(
            plan.micro_batches, p.mapping.max_simulated_micro_batches
        )
        return trip.replicated(k, rounds)

    def timing(self, stream: InstructionStream, p: WaferParams) -> Timing:
        return wafer_timing(stream, p)

    def peak(self, p: WaferParams, precision_weights: str) -> Peak:
        """Per wafer: every PE of the program rectangle doing fp16 FMACs at the SIMD width
        its SRAM ports feed; MemoryX streaming weights; every fabric link of every PE in
        one direction; every PE's SRAM ports."""
        pes = self.program_pes(p)
        clock, e = p.wafer.clock_hz, p.pe
        sram = (e.sram_reads_per_cycle + e.sram_writes_per_cycle) * e.sram_port_bytes
        return Peak(
            flops_per_s=pes * 2.0 * float(simd_widths(p)[0]) * clock,
            offchip_bytes_per_s=p.system.memoryx_bw_bytes_per_s,
            link_bytes_per_s=pes * p.fabric.links_per_pe * p.fabric.wavelet_bytes * clock,
            onchip_bytes_per_s=pes * sram * clock,
        )

    @staticmethod
    def program_pes(p: WaferParams) -> int:
        w, h = wafer_plan.program_rect(p)
        return w * h

    # ---- the step ------------------------------------------------------------------------------
    @staticmethod
    def shape(stream: InstructionStream) -> tuple[int, int]:
        return int(stream.meta.get("copies", 1)), int(stream.meta.get("rounds", 1))

    def step(
        self, stream: InstructionStream, tl: Timeline, plan: Plan, p: WaferParams, sc: Scenario
    ) -> StepModel:
        """Latency: the first micro-batch's trip through an empty pipeline (every region and
        wafer, and the sampled token back to the embedding). Period: cycles between steps at
        load, from the timeline (``plan.period_cycles``)."""
        k, rounds = self.shape(stream)
        ends = wafer_plan.copy_ends(stream, tl)
        busiest = wafer_plan.busiest_unit_cycles(stream, tl)
        period = wafer_plan.period_cycles(ends, plan.micro_batches, k, busiest)
        clock = p.wafer.clock_hz
        return StepModel(
            latency_s=float(ends[0]) / clock,
            period_s=max(period, 1.0) / clock,
            copies=plan.micro_batches / (k * rounds),
        )

    def summarize(
        self, stream: InstructionStream, tl: Timeline, plan: Plan, p: WaferParams, sc: Scenario
    ) -> dict[str, Any]:
        x, clock = plan.extra, p.wafer.clock_hz
        step = self.step(stream, tl, plan, p, sc)
        k, rounds = self.shape(stream)
        regions = x["regions"]
        wafers = plan.chips
        per_wafer = self.program_pes(p)
        streaming = x["mode"] == "weight_streaming"
        pes_used = per_wafer * wafers if streaming else sum(r["cols"] * r["rows"] for r in regions)
        scale = step.copies * plan.tp * plan.dp  # copies of the simulated work in one step
        period = step.period_s
        wx = self.opcode_mask(stream, "wafer_xfer")
        fabric = float(stream.link_bytes[~wx].sum()) * scale
        offwafer = float(stream.link_bytes[wx].sum()) * scale
        parts = latency_parts(stream, tl)
        peak = self.peak(p, sc.precision.weights)
        layer = [r for r in regions if r["name"].startswith("L")] or regions
        usable = wafer_plan.usable_pe_bytes(p)
        out: dict[str, Any] = {
            "mode": x["mode"],
            "allreduce_algo": x["allreduce_algo"],
            "wafers": wafers,
            "regions": len(regions),
            "region_cols": x["region_cols"],
            "region_rows": x["region_rows"],
            "region_pes": x["region_cols"] * x["region_rows"],
            "pes_per_wafer": per_wafer,
            "pes_used": pes_used,
            "pe_fraction_used": pes_used / (per_wafer * wafers),
            "sram_usable_bytes_per_pe": usable,
            "sram_used_bytes_per_pe": max(r["bytes_per_pe"] for r in regions),
            "kv_tokens_max": kv_tokens_max(layer, usable, sc),
            "micro_batches": plan.micro_batches,
            "micro_batch": plan.micro_batch,
            "simulated_micro_batches": k,
            "simulated_rounds": rounds,
            "per_token_latency_s": step.latency_s,
            "per_token_latency_cycles": int(round(step.latency_s * clock)),
            **{f"latency_{name}_s": parts[name] / clock for name in PARTS},
            "layer_cycles": layer_cycles(stream, tl),
            "period_s": period,
            "tokens_in_flight": sc.tokens * step.latency_s / period,
            "fabric_bytes": fabric,
            "offwafer_bytes": offwafer,
            "fabric_bw_used_bytes_per_s": fabric / period / wafers,
            "sram_bw_used_bytes_per_s": float(stream.onchip_bytes.sum()) * scale / period / wafers,
            "sram_bw_peak_bytes_per_s": peak.onchip_bytes_per_s,
            "pe_utilization": float(stream.flops.sum()) * scale
            / (peak.flops_per_s * wafers * period),
            "pe_compute_busy": compute_busy(stream, tl, regions, step, clock) / max(pes_used, 1),
        }  # fmt: skip
        out.update(route_budget(stream, p))
        return out

    # ---- placement -------------------------------------------------------------------------
    def describe_placement(self, plan: dict[str, Any], p: WaferParams) -> str | None:
        return wafer_plan.describe(plan, p)

    # ---- archsim kernel --------------------------------------------------------------------
    def kernel_options(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``--allreduce two_level | tree | ring | pipeline``: the reduction along the mesh."""
        return {"allreduce": {a: {"mapping.allreduce_algo": a} for a in ALGOS}}

    def kernel_choice(self, stream: InstructionStream, timing: Timing, p: WaferParams) -> dict:
        """The region the op ran on and its phases: local (no communication) cycles, the
        reductions' cycles, the algorithm."""
        cycles = timing.work + timing.latency
        local = np.isin(stream.opcode, [OPCODES.index(o) for o in LOCAL])
        red = self.opcode_mask(stream, "allreduce")
        mac = self.opcode_mask(stream, "mac") | self.opcode_mask(stream, "gemm")
        region = stream.meta.get("region", "")
        cols, _, rows = region.partition("x")
        return {
            "region_cols": int(cols or 0),
            "region_rows": int(rows or 0),
            "region_pes": int(cols or 0) * int(rows or 0),
            "allreduce_algo": p.mapping.allreduce_algo,
            "compute_cycles": int(cycles[local].sum()),
            "reduction_cycles": int(cycles[red].sum()),
            "reductions": int(red.sum()),
            "dsd_instructions_per_pe": int(stream.m[mac].sum()),
        }


# ---- outputs ---------------------------------------------------------------------------------
def latency_parts(stream: InstructionStream, tl: Timeline) -> dict[str, float]:
    """Cycles of the first micro-batch's trip by part, along its critical path: from the
    trip's last instruction, step to the constraint that set each start (a producer's end
    or start plus its lag, or the unit's release). Each instruction is charged the time
    from where the chain before it ended to its own end, so the parts add up to the trip.
    The flight of a streaming transfer (its consumer's lag) is charged to the transfer."""
    parts = dict.fromkeys(PARTS, 0.0)
    if not len(stream):
        return parts
    # copy 0 is the first block of a replicated program and comes first on every unit, so
    # its chain never leaves it
    n0 = int(np.count_nonzero(stream.copy == 0))
    i = int(np.argmax(tl.end[:n0]))
    unit_prev = np.full(n0, -1)
    last: dict[int, int] = {}
    for j, u in enumerate(stream.unit[:n0].tolist()):
        unit_prev[j] = last.get(u, -1)
        last[u] = j
    names = stream.opcode_names
    while i >= 0:
        own = PART_OF[names[stream.opcode[i]]]
        start, nxt, before, lag_part, lag = tl.start[i], -1, 0, own, 0
        for j, kind, lg in stream.deps_of(i):
            if (tl.start[j] if kind == START_START else tl.end[j]) + lg == start:
                nxt, before, lag = j, int(tl.end[j]), lg
                lag_part = PART_OF[names[stream.opcode[j]]]
                if lag_part not in ("onwafer_hops", "offwafer"):
                    lag_part = own
                break
        if nxt < 0 and unit_prev[i] >= 0 and tl.release[unit_prev[i]] == start:
            nxt, before = int(unit_prev[i]), int(start)
        span = float(tl.end[i] - before)
        flight = min(float(lag), span)
        parts[lag_part] += flight
        parts[own] += span - flight
        i = nxt
    return parts


def layer_cycles(stream: InstructionStream, tl: Timeline) -> int:
    """Median cycles one decoder layer takes in the first trip (its first phase's start to
    its last phase's end on its region)."""
    first = (stream.copy == 0) & np.isin(
        stream.opcode, [OPCODES.index(o) for o in (*LOCAL, "allreduce")]
    )
    layers = stream.layer[first]
    spans = []
    for layer in np.unique(layers[layers >= 0]):
        sel = first & (stream.layer == layer)
        spans.append(int(tl.end[sel].max() - tl.start[sel].min()))
    return int(np.median(spans)) if spans else 0


def compute_busy(stream, tl, regions, step, clock) -> float:
    """PE-cycles of local compute per step over the period (divided by PEs used: the share
    of PE time spent on local vector work)."""
    pes_of = {f"wafer{r['wafer']}.region{r['index']}": r["cols"] * r["rows"] for r in regions}
    pes = np.array([pes_of.get(u, 0) for u in stream.unit_names], dtype=np.float64)
    local = np.isin(stream.opcode, [OPCODES.index(o) for o in LOCAL])
    busy = float(((tl.end - tl.start) * pes[stream.unit])[local].sum())
    return busy * step.copies / (step.period_s * clock)


def kv_tokens_max(layer_regions, usable: int, sc: Scenario) -> int | None:
    """Cached tokens (sequences x context, every layer) the layer regions could hold with
    their weights and buffers in place; None without attention."""
    best = None
    tokens_now = sc.batch * sc.kv_len
    for r in layer_regions:
        kv = r["kv_bytes_per_pe"]
        if kv <= 0:
            continue
        per_token = kv / tokens_now  # per PE
        free = usable - (r["bytes_per_pe"] - kv)
        n = int(free / per_token)
        best = n if best is None else min(best, n)
    return best


def route_budget(stream: InstructionStream, p: WaferParams) -> dict[str, int]:
    """Routes the reduction algorithm needs at its longest line, routes left free per
    router, and the software relays each such reduction pays for the difference."""
    red = np.nonzero(stream.opcode == OPCODES.index("allreduce"))[0] if len(stream) else []
    longest = int(stream.m[red].max()) if len(red) else 1
    alg = ALGOS.index(p.mapping.allreduce_algo)
    need = allreduce_terms(alg, longest, 1, False)[4]
    free = free_routes(p)
    return {"routes_needed": int(need), "routes_free": int(free),
            "relays_per_reduction": max(0, int(need) - free)}  # fmt: skip
