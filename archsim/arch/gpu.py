"""h100-like: an HBM GPU modelled at the grain of kernels and CTA waves.

Lowering turns each op of the partitioned graph into the kernels a serving stack launches
(GEMM, FlashAttention decode/prefill with its KV-cache write, fused elementwise kernels,
NVLink all-reduce); ``gpu_timing`` times each kernel from tiles, waves, bandwidths and fixed
costs; the shared engine serialises them on the SM array in stream order. With CUDA graphs
(the default for decode, as serving engines run it) each kernel pays only the GPU-side gap;
eagerly, a host unit issues each launch and the GPU waits for it when kernels are short.
"""

from __future__ import annotations

import math
from typing import Any

import networkx as nx
import numpy as np

from archsim.arch import register_arch
from archsim.arch.base import Family
from archsim.arch.gpu_params import GpuParams
from archsim.compiler.partition import plan_memory_bound
from archsim.compiler.plan import Plan
from archsim.engine import Timeline
from archsim.graph.build import ops_in_order
from archsim.graph.ops import Op, OpKind
from archsim.isa import InstructionStream, StreamBuilder
from archsim.scenario import Scenario

# dtype code -> index into the rate / element-size tables passed to the kernel
DTYPE_CODE = {"bf16": 0, "fp16": 0, "fp32": 0, "fp8": 1, "int8": 2, "int4": 3}
ELEMENTS_PER_CTA = 2048  # elementwise kernels: 256 threads x 8 elements (one 16 B vector each)


@register_arch("h100-like")
class GpuFamily(Family):
    Params = GpuParams
    opcodes = [
        "gemm",
        "attn_decode",
        "attn_prefill",
        "elementwise",
        "all_reduce",
        "send_recv",
        "launch",
    ]
    tiers = {"offchip_bytes": "hbm", "onchip_bytes": "l2", "link_bytes": "nvlink"}
    strict_static = True  # nothing is statically issued; kept for uniformity

    def clock_hz(self, p: GpuParams) -> float:
        return p.chip.boost_clock_hz

    def plan(self, g: nx.DiGraph, p: GpuParams, chips: int | None) -> Plan:
        cap = p.memory.hbm_bytes * p.memory.hbm_usable_fraction
        return plan_memory_bound(g, cap, chips, p.links.scale_up_domain)

    # ---- lowering --------------------------------------------------------------------------
    def lower(self, g: nx.DiGraph, plan: Plan, p: GpuParams, sc: Scenario) -> InstructionStream:
        b = StreamBuilder(self.opcodes)
        graphs = self.cuda_graphs(p, sc)
        b.meta.update(family=self.name, cuda_graphs=str(graphs))
        last_kernel: dict[int, int] = {}
        last_launch: dict[int, int] = {}
        out_of: dict[str, int] = {}  # op id -> index of its last instruction
        domain = p.links.scale_up_domain

        def emit(op: Op, opcode: str, unit: str = "sm", **kw: Any) -> int:
            s = op.stage
            deps = [last_kernel.get(s, -1)] + [out_of[x] for x in g.predecessors(op.id)]
            if not graphs:
                launch = b.add(
                    "launch",
                    unit=f"gpu{s}.host",
                    op=op.id,
                    chip=s,
                    layer=op.layer,
                    deps=[last_launch.get(s, -1)],
                )
                last_launch[s] = launch
                deps.append(launch)
            i = b.add(
                opcode, unit=f"gpu{s}.{unit}", op=op.id, chip=s, layer=op.layer, deps=deps, **kw
            )
            last_kernel[s] = i
            return i

        for op in ops_in_order(g):
            out_of[op.id] = self._lower_op(op, emit, plan, p, sc, domain)
        return b.build()

    @staticmethod
    def cuda_graphs(p: GpuParams, sc: Scenario) -> bool:
        return p.kernel.decode_cuda_graphs if sc.phase == "decode" else p.kernel.prefill_cuda_graphs

    def _lower_op(self, op: Op, emit, plan: Plan, p: GpuParams, sc: Scenario, domain: int) -> int:
        kind = op.kind
        if kind == OpKind.MATMUL:
            return emit(
                op,
                "gemm",
                m=op.dim("m"),
                n=op.dim("n"),
                k=op.dim("k"),
                aux=DTYPE_CODE[op.weight_dtype],
                offchip_bytes=op.mem_bytes,
                flops=op.flops,
            )
        if kind == OpKind.ATTENTION:
            # the KV-cache append (reshape_and_cache): read new K, V and write them to the cache
            emit(
                op,
                "elementwise",
                m=op.dim("batch") * op.dim("q_len"),
                aux=self._ctas(op.kv_write_bytes),
                offchip_bytes=2 * op.kv_write_bytes,
            )
            attn = "attn_prefill" if op.dim("causal") else "attn_decode"
            return emit(
                op,
                attn,
                m=op.dim("q_len"),
                n=op.dim("kv_len"),
                k=op.dim("head_dim"),
                g=op.dim("batch"),
                h=op.dim("heads"),
                aux=op.dim("causal") if op.dim("causal") else op.dim("kv_heads"),
                offchip_bytes=op.kv_read_bytes + op.act_in_bytes + op.act_out_bytes,
                flops=op.flops,
            )
        if kind in (OpKind.NORM, OpKind.EMBEDDING):  # one CTA per row
            reps = p.kernel.norm_kernels if kind == OpKind.NORM else 1
            return self._repeat(op, emit, reps, ctas=op.dim("m"))
        if kind == OpKind.ACTIVATION:
            return self._repeat(
                op, emit, p.kernel.activation_kernels, ctas=self._ctas(op.act_out_bytes)
            )
        if kind in (OpKind.ROPE, OpKind.RESIDUAL):
            return self._repeat(op, emit, 1, ctas=self._ctas(op.act_out_bytes))
        if kind == OpKind.ALL_REDUCE:
            return emit(
                op,
                "all_reduce",
                unit="nvlink",
                g=op.group,
                m=op.dim("m"),
                n=op.dim("n"),
                link_bytes=op.link_bytes,
                offchip_bytes=op.mem_bytes,
            )
        if kind == OpKind.SEND_RECV:
            first_chip = op.stage * plan.tp
            crosses = first_chip // domain != (first_chip + plan.tp) // domain
            return emit(
                op,
                "send_recv",
                unit="nvlink",
                aux=int(crosses),
                m=op.dim("m"),
                n=op.dim("n"),
                link_bytes=op.link_bytes,
                offchip_bytes=op.mem_bytes,
            )
        raise AssertionError(f"h100-like cannot lower {kind}")

    @staticmethod
    def _ctas(out_bytes: float) -> int:
        return max(1, math.ceil(out_bytes / 2 / ELEMENTS_PER_CTA))

    @staticmethod
    def _repeat(op: Op, emit, reps: int, ctas: int) -> int:
        """``reps`` kernels share the op's bytes (an unfused op is several passes)."""
        last = -1
        for _ in range(reps):
            last = emit(
                op,
                "elementwise",
                m=op.dim("m"),
                n=op.dim("n"),
                aux=ctas,
                offchip_bytes=op.mem_bytes / reps,
            )
        return last

    # ---- timing ----------------------------------------------------------------------------
    def durations(self, stream: InstructionStream, p: GpuParams) -> np.ndarray:
        cycles, _ = self.durations_and_choices(stream, p)
        return cycles

    def durations_and_choices(self, stream: InstructionStream, p: GpuParams):
        from archsim.arch.gpu_timing import gpu_durations

        c, m, k, ln = p.chip, p.memory, p.kernel, p.links
        rate = np.array(
            [
                c.tensor_flops_per_clk_per_sm_bf16,
                c.tensor_flops_per_clk_per_sm_fp8,
                c.tensor_ops_per_clk_per_sm_int8,
                c.tensor_flops_per_clk_per_sm_bf16,
            ]
        )
        el = np.array([2.0, 1.0, 1.0, 0.5])
        s = stream
        return gpu_durations(
            s.opcode,
            s.m,
            s.n,
            s.k,
            s.g,
            s.h,
            s.aux,
            s.offchip_bytes,
            s.link_bytes,
            rate,
            el,
            c.sms,
            c.boost_clock_hz,
            c.sustained_clock_hz,
            c.boost_window_s,
            c.mma_efficiency,
            c.attention_mma_efficiency,
            m.hbm_bw_bytes_per_s,
            m.per_sm_bw_bytes_per_s,
            m.l2_bw_bytes_per_clk,
            k.graph_launch_gap_s,
            k.eager_launch_s,
            k.gemm_fixed_s,
            k.elementwise_fixed_s,
            k.attention_fixed_s,
            k.attention_cta_fixed_s,
            k.overlap_exponent,
            k.max_split_k,
            k.gemm_tile_k,
            k.attention_block,
            k.max_kv_splits,
            ln.nvlink_bw_bytes_per_s,
            ln.allreduce_base_s,
            ln.allreduce_hop_s,
            ln.scaleout_bw_bytes_per_s,
            ln.scaleout_latency_s,
        )

    def peak(self, p: GpuParams, precision_weights: str) -> dict[str, float]:
        """Datasheet ceilings a roofline uses (FLOP/s at boost clock, B/s)."""
        c = p.chip
        per_clk = {
            "fp8": c.tensor_flops_per_clk_per_sm_fp8,
            "int8": c.tensor_ops_per_clk_per_sm_int8,
        }.get(precision_weights, c.tensor_flops_per_clk_per_sm_bf16)
        return {
            "flops_per_s": per_clk * c.sms * c.boost_clock_hz,
            "offchip_bytes_per_s": p.memory.hbm_peak_bw_bytes_per_s,
            "link_bytes_per_s": p.links.nvlink_bw_bytes_per_s,
        }

    def summarize(
        self, stream: InstructionStream, tl: Timeline, plan: Plan, p: GpuParams, sc: Scenario
    ) -> dict[str, Any]:
        kernels = int(np.sum(stream.opcode != self.opcodes.index("launch")))
        return {"kernels_per_gpu": kernels, "cuda_graphs": self.cuda_graphs(p, sc)}
