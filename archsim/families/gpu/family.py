"""h100-like: an HBM GPU modelled at the grain of kernels and CTA waves.

``lower.py`` turns each op of the partitioned graph into the kernels a serving stack
launches; ``timing.py`` times each kernel from tiles, waves, bandwidths and fixed costs; the
shared engine serialises them on the SM array in stream order. With CUDA graphs (the default
for decode, as serving engines run it) each kernel pays only the GPU-side gap; eagerly, a
host unit issues each launch and the GPU waits for it when kernels are short.
"""

from __future__ import annotations

from typing import Any

import networkx as nx
import numpy as np

from archsim.core.engine import Timeline
from archsim.core.errors import UnsupportedOpError
from archsim.core.family import Family, Peak
from archsim.core.isa import InstructionStream, Timing
from archsim.core.plan import Plan
from archsim.core.registry import register_arch
from archsim.families.gpu import lower as gpu_lower
from archsim.families.gpu import plan as gpu_plan
from archsim.families.gpu.params import GpuParams
from archsim.families.gpu.timing import (
    CLOCK_CODE,
    choice_clock_hz,
    decode_allreduce_choice,
    decode_gemm_choice,
    gpu_timing,
)
from archsim.graph.ops import OpKind
from archsim.graph.scenario import Scenario

# a kernel timed alone starts on an idle GPU (a benchmark after a pause), whatever the launch
_GRAPHS = {
    "kernel.decode_cuda_graphs": True,
    "kernel.prefill_cuda_graphs": True,
    "power.start_from_idle": True,
}
_EAGER = {
    "kernel.decode_cuda_graphs": False,
    "kernel.prefill_cuda_graphs": False,
    "power.start_from_idle": True,
}


@register_arch("h100-like")
class GpuFamily(Family):
    Params = GpuParams
    opcodes = gpu_lower.OPCODES
    tiers = {"offchip_bytes": "hbm", "onchip_bytes": "l2", "link_bytes": "nvlink"}
    static = False

    def supported_ops(self) -> frozenset[str]:
        return frozenset(k.value for k in OpKind)

    def check_graph(self, g: nx.DiGraph, p: GpuParams) -> None:
        """GEMM activations of 4 bits: no tensor-core path in the modelled stacks (Hopper has
        no int4 MMA; W4A16, ``--precision int4``, keeps bf16 activations)."""
        for _, d in g.nodes(data=True):
            op = d["op"]
            if op.kind in (OpKind.MATMUL, OpKind.BMM) and op.act_dtype == "int4":
                raise UnsupportedOpError(
                    f"{p.name} cannot run {op.id} ({op.kind.value}, layer {op.layer}): int4 "
                    "activations have no tensor-core GEMM here (W4A16 is --precision int4)"
                )

    def clock_hz(self, p: GpuParams) -> float:
        return p.chip.boost_clock_hz

    def plan(self, g: nx.DiGraph, p: GpuParams, chips: int | None) -> Plan:
        return gpu_plan.plan(g, p, chips)

    def partition(self, g: nx.DiGraph, plan: Plan, p: GpuParams) -> nx.DiGraph:
        return gpu_plan.split(g, plan)

    def lower(self, g: nx.DiGraph, plan: Plan, p: GpuParams, sc: Scenario) -> InstructionStream:
        return gpu_lower.lower(g, plan, p, sc.phase)

    def timing(self, stream: InstructionStream, p: GpuParams) -> Timing:
        return gpu_timing(stream, p)

    def peak(self, p: GpuParams, precision_weights: str) -> Peak:
        """Datasheet ceilings a roofline uses (FLOP/s at boost clock, B/s)."""
        c = p.chip
        per_clk = {
            "fp8": c.tensor_flops_per_clk_per_sm_fp8,
            "int8": c.tensor_ops_per_clk_per_sm_int8,
        }.get(precision_weights, c.tensor_flops_per_clk_per_sm_bf16)
        return Peak(
            flops_per_s=per_clk * c.sms * c.boost_clock_hz,
            offchip_bytes_per_s=p.memory.hbm_peak_bw_bytes_per_s,
            link_bytes_per_s=p.links.nvlink_bw_bytes_per_s,
        )

    def summarize(
        self, stream: InstructionStream, tl: Timeline, plan: Plan, p: GpuParams, sc: Scenario
    ) -> dict[str, Any]:
        kernels = int(np.sum(~self.opcode_mask(stream, "launch")))
        return {
            "kernels_per_gpu": kernels,
            "cuda_graphs": gpu_lower.cuda_graphs(p, sc.phase),
            "mean_sm_clock_hz": _mean_clock(stream, tl.duration, self._timing_choice(stream, p)),
        }

    def energy_figures(self, p: GpuParams, extra: dict[str, Any]) -> dict[str, Any]:
        """The power model's figures (``power.*``, the source of the SM clock) at the run's
        time-weighted mean SM clock f, s = f / boost: static = idle + SM dynamic x s^e (the SMs
        run kernels through the whole step), pJ per FLOP = tensor dynamic W x s^(e-1) / the
        tensor FLOP/s at boost (energy per operation ~ V^2 ~ f^(e-1)), HBM pJ per byte as the
        power model charges it. e = power.clock_exponent."""
        pw, c = p.power, p.chip
        f = float(extra.get("mean_sm_clock_hz") or c.boost_clock_hz)
        s = min(f / c.boost_clock_hz, 1.0)
        rates = {
            "bf16": c.tensor_flops_per_clk_per_sm_bf16,
            "fp16": c.tensor_flops_per_clk_per_sm_bf16,
            "fp8": c.tensor_flops_per_clk_per_sm_fp8,
            "int8": c.tensor_ops_per_clk_per_sm_int8,
        }
        per_op = pw.tensor_dynamic_w * s ** (pw.clock_exponent - 1.0) * 1e12
        return {
            "tdp_w": pw.tdp_w,
            "static_w": pw.idle_w + pw.sm_dynamic_w * s**pw.clock_exponent,
            "pj_per_flop": {
                k: per_op / (r * c.sms * c.boost_clock_hz) for k, r in rates.items() if r > 0
            },
            "pj_per_byte": {"hbm": pw.hbm_energy_j_per_byte * 1e12},
        }

    def _timing_choice(self, stream: InstructionStream, p: GpuParams) -> np.ndarray:
        return gpu_timing(stream, p).choice

    # ---- archsim kernel ---------------------------------------------------------------------
    def kernel_options(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``--launch graph``: GPU time of kernels replayed in a CUDA graph (the gap between
        kernels, no host); ``--launch eager``: each launch issued by the host first."""
        return {"launch": {"graph": _GRAPHS, "eager": _EAGER}}

    def kernel_choice(self, stream: InstructionStream, timing: Timing, p: GpuParams) -> dict:
        out: dict[str, Any] = {"kernels": int(np.sum(~self.opcode_mask(stream, "launch")))}
        gemm = np.nonzero(self.opcode_mask(stream, "gemm"))[0]
        if len(gemm) and timing.choice is not None:
            out.update(decode_gemm_choice(int(timing.choice[gemm[0]])))
        attn = np.nonzero(self.opcode_mask(stream, "attn_decode"))[0]
        if len(attn) and timing.choice is not None:
            out["kv_splits"] = int(timing.choice[attn[0]] % CLOCK_CODE)
        ar = np.nonzero(self.opcode_mask(stream, "all_reduce"))[0]
        if len(ar) and timing.choice is not None:
            out.update(decode_allreduce_choice(int(timing.choice[ar[0]])))
        out["includes_host_launch"] = bool(np.any(self.opcode_mask(stream, "launch")))
        if timing.choice is not None:
            durations = timing.work + timing.latency
            out["sm_clock_hz"] = _mean_clock(stream, durations, timing.choice)
        return out


def _mean_clock(stream: InstructionStream, durations: np.ndarray, choice: np.ndarray) -> float:
    """Time-weighted mean SM clock of the GPU kernels (host launches excluded)."""
    gpu = choice >= CLOCK_CODE
    if not np.any(gpu):
        return 0.0
    clocks = np.array([choice_clock_hz(int(c)) for c in choice[gpu]])
    w = np.asarray(durations, dtype=float)[gpu]
    return float(np.sum(clocks * w) / max(np.sum(w), 1e-30))
