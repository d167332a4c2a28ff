"""matx-like: a scratchpad accelerator with splittable systolic arrays, HBM behind DMA engines.

Pipeline: plan (chips from where the weights live: the scratchpads or HBM; ``plan.py``) ->
partition (Megatron shards, all-reduces, sends between stages) -> the mapper picks each
GEMM's dataflow, array split, tiles and loop order (``mapper.py``) -> lower (DMA, array,
vector and link instructions of one micro-batch's trip; ``lower.py``) -> the fold model and
the other durations (``timing.py``) -> the shared engine (HBM and scratchpad ports are
resources shared by concurrent transfers). The same model runs the TPU presets.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import networkx as nx
import numpy as np

from archsim.core.engine import Timeline
from archsim.core.family import Family, Peak, StepModel
from archsim.core.isa import InstructionStream, Timing
from archsim.core.plan import Plan
from archsim.core.registry import register_arch
from archsim.families.systolic import lower as sys_lower
from archsim.families.systolic import plan as sys_plan
from archsim.families.systolic.params import SystolicParams
from archsim.families.systolic.timing import (
    ALLREDUCE,
    ALLTOALL,
    DATAFLOWS,
    DMA_FIRST,
    DMA_LAST,
    GEMM_OPCODES,
    JOIN,
    OPCODES,
    SEND,
    VECTOR,
    decode_gemm_opcode,
    fold_parts,
    rates,
    sram_bytes_per_cycle,
    systolic_timing,
)
from archsim.graph.scenario import Scenario


@register_arch("matx-like")
class SystolicFamily(Family):
    Params = SystolicParams
    opcodes = OPCODES
    tiers = {"offchip_bytes": "hbm", "onchip_bytes": "scratchpad", "link_bytes": "link"}
    static = False

    def supported_ops(self) -> frozenset[str]:
        return sys_lower.SUPPORTED

    def clock_hz(self, p: SystolicParams) -> float:
        return p.chip.clock_hz

    def plan(self, g: nx.DiGraph, p: SystolicParams, chips: int | None) -> Plan:
        return sys_plan.plan(g, p, chips)

    def partition(self, g: nx.DiGraph, plan: Plan, p: SystolicParams) -> nx.DiGraph:
        return sys_plan.split(g, plan, p)

    def lower(
        self, g: nx.DiGraph, plan: Plan, p: SystolicParams, sc: Scenario
    ) -> InstructionStream:
        return sys_lower.lower(g, plan, p, sc)

    def timing(self, stream: InstructionStream, p: SystolicParams) -> Timing:
        return systolic_timing(stream, p)

    def peak(self, p: SystolicParams, precision_weights: str) -> Peak:
        """All arrays' MACs x 2 at the rate of the weights' precision as the presets pair it
        (bf16 for int4 = W4A16; a mode the arrays lack runs at bf16); HBM; all links one way;
        the scratchpad's ports."""
        mode = sys_lower.gemm_mode(
            p, precision_weights, "bf16" if precision_weights == "int4" else precision_weights
        )
        a = p.systolic
        rate = [a.rate_bf16, a.rate_fp8, a.rate_int8, a.rate_int4][mode]
        clock = p.chip.clock_hz
        return Peak(
            flops_per_s=a.arrays * a.rows * a.cols * 2.0 * rate * clock,
            offchip_bytes_per_s=p.hbm.bw_bytes_per_s,
            link_bytes_per_s=p.links.count * p.links.bw_bytes_per_s,
            onchip_bytes_per_s=sram_bytes_per_cycle(p) * clock,
        )

    # ---- the step: one micro-batch's trip, micro-batches interleaved through the stages -----
    @staticmethod
    def stage_cycles(stream: InstructionStream, tl: Timeline) -> np.ndarray:
        """Cycles each stage's chip is busy with the micro-batch (first start to last end)."""
        stages = int(stream.chip.max()) + 1 if len(stream) else 1
        first = np.full(stages, np.iinfo(np.int64).max)
        last = np.zeros(stages, dtype=np.int64)
        np.minimum.at(first, stream.chip, tl.start)
        np.maximum.at(last, stream.chip, tl.end)
        return np.where(last > 0, last - np.minimum(first, last), 0)

    def step(
        self, stream: InstructionStream, tl: Timeline, plan: Plan, p: SystolicParams, sc: Scenario
    ) -> StepModel:
        """Latency: one micro-batch's trip. Period between steps: the trip, or every
        micro-batch passing the slowest stage, whichever is longer."""
        clock = p.chip.clock_hz
        trip = float(tl.cycles)
        n_mb = plan.micro_batches
        period = max(trip, n_mb * float(self.stage_cycles(stream, tl).max(initial=0)))
        return StepModel(
            latency_s=trip / clock, period_s=max(period, 1.0) / clock, copies=float(n_mb)
        )

    def summarize(
        self, stream: InstructionStream, tl: Timeline, plan: Plan, p: SystolicParams, sc: Scenario
    ) -> dict[str, Any]:
        step = self.step(stream, tl, plan, p, sc)
        clock = p.chip.clock_hz
        stages = self.stage_cycles(stream, tl)
        pinned = [float(x) for x in stream.meta.get("pinned_bytes_per_stage", "0").split(",")]
        weights = [float(x) for x in stream.meta.get("weight_bytes_per_stage", "0").split(",")]
        gemm = stream.opcode < len(GEMM_OPCODES)
        flows = Counter(decode_gemm_opcode(int(o))[0] for o in stream.opcode[gemm])
        splits = Counter(str(decode_gemm_opcode(int(o))[1]) for o in stream.opcode[gemm])
        arrays = [i for i, u in enumerate(stream.unit_names) if u.endswith(".arrays")]
        tokens = sc.tokens
        hbm = float(stream.offchip_bytes.sum()) * step.copies
        spad = float(stream.onchip_bytes.sum()) * step.copies
        return {
            "nodes": math.ceil(plan.chips / p.links.chips_per_node),
            "weight_home": plan.extra.get("weight_home", "sram"),
            "per_token_latency_s": step.latency_s,
            "per_token_latency_cycles": int(tl.cycles),
            "micro_batches": plan.micro_batches,
            "micro_batch": plan.micro_batch or sc.batch,
            "stage_cycles": [int(x) for x in stages],
            "slowest_stage_cycles": int(stages.max(initial=0)),
            "tokens_per_s_per_user_at_load": sc.new_tokens_per_seq / step.period_s,
            "scratchpad_bytes_per_chip": p.scratchpad.bytes,
            "pinned_weight_bytes_per_chip": max(pinned),
            "weights_resident_fraction": sum(pinned) / sum(weights) if sum(weights) else 1.0,
            "hbm_bytes_per_chip_per_step": hbm / plan.pp,
            "scratchpad_bytes_per_chip_per_step": spad / plan.pp,
            "hbm_bytes_per_token": hbm * plan.tp / max(tokens, 1),
            "array_busy_fraction": float(tl.busy[arrays].sum())
            * step.copies
            / (max(len(arrays), 1) * step.period_s * clock),
            "limit_by_op_kind": op_limits(stream, tl, p),
            "gemm_dataflows": dict(sorted(flows.items())),
            "gemm_splits": dict(sorted(splits.items(), key=lambda kv: int(kv[0]))),
        }

    # ---- archsim kernel -----------------------------------------------------------------------
    def kernel_choice(
        self, stream: InstructionStream, timing: Timing, p: SystolicParams
    ) -> dict[str, Any]:
        """The mapping of the op's first call: dataflow and split of each array pass, tiles
        and loop order of its operand stream, what stays resident; ``compute_cycles``: array
        and vector cycles per call (no memory stall)."""
        calls = max(1, len({stream.op_names[o] for o in stream.op}))
        first = stream.op == stream.op[0] if len(stream) else np.zeros(0, bool)
        gemm = np.flatnonzero(first & (stream.opcode < len(GEMM_OPCODES)))
        compute = stream.opcode <= VECTOR
        out: dict[str, Any] = {
            "compute_cycles": float(timing.work[compute].sum()) / calls,
            "array_cycles": float(timing.work[stream.opcode < len(GEMM_OPCODES)].sum()) / calls,
            "vector_cycles": float(timing.work[stream.opcode == VECTOR].sum()) / calls,
        }
        a = p.systolic
        passes = []
        for i in gemm:
            df, s = decode_gemm_opcode(int(stream.opcode[i]))
            passes.append(
                {
                    "dataflow": df,
                    "split": s,
                    "sub_array": f"{a.rows // s}x{a.cols // s}",
                    "sub_arrays": a.arrays * s * s,
                    "cycles": int(timing.work[i]),
                }
            )
        if passes:
            out.update({k: passes[0][k] for k in ("dataflow", "split", "sub_array", "sub_arrays")})
            if len(passes) > 1:
                out["passes"] = passes
            aux = int(stream.aux[gemm[0]])
            out["weights_resident"] = bool(aux & sys_lower.WEIGHTS_RESIDENT)
            out["activations_resident"] = bool(aux & sys_lower.ACTS_RESIDENT)
        dma = np.flatnonzero(
            first & np.isin(stream.opcode, [OPCODES.index("dma.mnk"), OPCODES.index("dma.nmk")])
        )
        if len(dma):
            j = int(dma[0])
            out.update(
                tile_m=int(stream.m[j]),
                tile_n=int(stream.g[j]),
                tile_k=int(stream.k[j]),
                loop_order=OPCODES[stream.opcode[j]].split(".")[1],
                double_buffered=True,
                dma_descriptors=int(stream.n[j]),
            )
        elif len(gemm):
            i = int(gemm[0])
            out.update(
                tile_m=int(stream.m[i]),
                tile_n=int(stream.n[i]),
                tile_k=int(stream.k[i]),
                loop_order="resident",
                double_buffered=False,
            )
        kv = np.flatnonzero(first & (stream.opcode == OPCODES.index("dma.kv_read")))
        if len(kv):
            out.update(kv_block_tokens=int(stream.m[kv[0]]), double_buffered=True)
        return out


_ROLE = re.compile(r"^L\d+\.|(\.c\d+)+$")  # "L3.gate_up_proj.c2" -> "gate_up_proj"
LIMITS = (
    "array-preload",
    "array-stream",
    "array-fill",
    "scratchpad-ports",
    "hbm",
    "vector",
    "link",
)


def instruction_limit(stream: InstructionStream, i: int, duration: int, p: SystolicParams) -> str:
    """What holds instruction ``i`` up: an array pass is stretched by the scratchpad ports,
    or spends its folds loading the stationary operand (the stream is shorter than the
    preload: weight injection), streaming, or filling and draining the array; a DMA is HBM; a
    vector pass the vector units; a transfer the links."""
    op = int(stream.opcode[i])
    if op < len(GEMM_OPCODES):
        a = p.systolic
        df, s = decode_gemm_opcode(op)
        folds, st, pre, skew = fold_parts(
            int(stream.m[i]),
            int(stream.n[i]),
            int(stream.k[i]),
            int(stream.g[i]),
            DATAFLOWS.index(df),
            s,
            float(rates(p)[stream.h[i]]),
            a.rows,
            a.cols,
            a.arrays,
            a.preload_rows_per_cycle,
        )
        steady = folds * max(st, pre)
        work = pre + (folds - 1) * max(st, pre) + st + skew
        if duration > work:
            return "scratchpad-ports"
        if steady < pre + skew + st:
            return "array-fill"
        return "array-preload" if pre > st else "array-stream"
    if DMA_FIRST <= op <= DMA_LAST:
        return "hbm"
    if op in (ALLREDUCE, SEND, ALLTOALL):
        return "link"
    return "vector"


_A2A_ROLES = (("dispatch", "moe_dispatch"), ("combine", "moe_combine"),
              ("reduce_scatter", "reduce_scatter"), ("all_gather", "all_gather"))  # fmt: skip


def transfer_role(name: str) -> str:
    """The role of a transfer by its op id: an MoE all-to-all (``L3.router.dispatch``,
    ``L3.experts.c1.combine_s4``) by its pattern, any other a send."""
    tail = name.rsplit(".", 1)[-1]
    return next((role for key, role in _A2A_ROLES if tail.startswith(key)), "send_recv")


def op_limits(stream: InstructionStream, tl: Timeline, p: SystolicParams) -> dict[str, str]:
    """Per op role, the limit its instructions spend the most cycles on (``LIMITS``)."""
    spent: dict[str, Counter] = {}
    dur = tl.end - tl.start
    for i in range(len(stream)):
        op = int(stream.opcode[i])
        if op == JOIN or dur[i] <= 0:
            continue
        if op == ALLREDUCE:
            role = "all_reduce"
        elif op in (SEND, ALLTOALL):
            role = transfer_role(stream.op_names[stream.op[i]])
        else:
            role = _ROLE.sub("", stream.op_names[stream.op[i]])
        spent.setdefault(role, Counter())[instruction_limit(stream, i, int(dur[i]), p)] += dur[i]
    return {role: c.most_common(1)[0][0] for role, c in sorted(spent.items())}
