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
# elementwise kernel classes (gpu_timing.elementwise_seconds)
VECTORISED, STRIDED, ROW_REDUCTION = 0, 1, 2


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
                    aux=int(opcode == "gemm"),  # torch.matmul dispatch costs more host time
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
        l2 = p.memory.l2_bytes
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
            # the KV-cache append: read the new K, V and write them into the cache
            reps = p.kernel.kv_write_kernels
            for _ in range(reps):
                emit(
                    op,
                    "elementwise",
                    m=op.dim("batch") * op.dim("q_len"),
                    aux=self._ctas(op.kv_write_bytes / reps),
                    **self._tier(2 * op.kv_write_bytes / reps, 2 * op.kv_write_bytes, l2),
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
        if kind == OpKind.NORM:  # one CTA per row; the first kernel walks the rows
            return self._repeat(op, emit, p.kernel.norm_kernels, op.dim("m"), ROW_REDUCTION, l2)
        if kind == OpKind.EMBEDDING:
            return self._repeat(op, emit, 1, op.dim("m"), VECTORISED, l2)
        if kind == OpKind.ACTIVATION:
            return self._activation(op, emit, p.kernel.activation_kernels, l2)
        if kind == OpKind.ROPE:
            ctas = self._ctas(op.act_out_bytes / p.kernel.rope_kernels)
            return self._repeat(op, emit, p.kernel.rope_kernels, ctas, VECTORISED, l2)
        if kind == OpKind.RESIDUAL:
            return self._repeat(op, emit, 1, self._ctas(op.act_out_bytes), VECTORISED, l2)
        if kind == OpKind.ALL_REDUCE:
            # NCCL kernels run on the SMs and the next GEMM needs the reduced sum, so the
            # all-reduce serialises with the compute stream (no overlap in a decode step)
            return emit(
                op,
                "all_reduce",
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
    def _tier(nbytes: float, footprint: float, l2_bytes: float) -> dict[str, float]:
        """An elementwise kernel's bytes come from L2 when the op's distinct bytes fit in it
        (its inputs were just written by the previous kernel; L2 is write-back), else HBM."""
        if footprint <= l2_bytes:
            return {"onchip_bytes": nbytes}
        return {"offchip_bytes": nbytes}

    @staticmethod
    def _repeat(op: Op, emit, reps: int, ctas: int, kclass: int, l2_bytes: float) -> int:
        """``reps`` kernels share the op's bytes (an unfused op is several passes). A row
        reduction's first kernel walks one row of ``n`` bf16 elements serially per CTA."""
        last = -1
        for r in range(reps):
            row = 2 * op.dim("n") if (kclass == ROW_REDUCTION and r == 0) else 0
            last = emit(
                op,
                "elementwise",
                m=op.dim("m"),
                n=op.dim("n"),
                g=kclass if r == 0 else VECTORISED,
                h=row,
                aux=ctas,
                **GpuFamily._tier(op.mem_bytes / reps, op.mem_bytes, l2_bytes),
            )
        return last

    @staticmethod
    def _activation(op: Op, emit, reps: int, l2_bytes: float) -> int:
        """Fused silu_and_mul is one vectorised pass over contiguous [t, 2f] rows. Unfused,
        each extra kernel reads and writes one [t, f] tensor (silu(gate) -> tmp) and the last
        reads tmp and up and writes the output; all run on strided chunk views."""
        unit = op.act_out_bytes  # one [t, f] bf16 tensor
        kclass = VECTORISED if reps == 1 else STRIDED
        footprint = op.mem_bytes + (reps - 1) * unit
        last = -1
        for r in range(reps):
            nbytes = op.mem_bytes if r == reps - 1 else 2 * unit
            last = emit(
                op,
                "elementwise",
                m=op.dim("m"),
                n=op.dim("n"),
                g=kclass,
                aux=GpuFamily._ctas(unit),
                **GpuFamily._tier(nbytes, footprint, l2_bytes),
            )
        return last

    # ---- timing ----------------------------------------------------------------------------
    def durations(self, stream: InstructionStream, p: GpuParams) -> np.ndarray:
        cycles, _ = self.durations_and_choices(stream, p)
        return cycles

    def durations_and_choices(self, stream: InstructionStream, p: GpuParams):
        from archsim.arch.gpu_timing import gpu_durations

        c = p.chip
        # per DTYPE_CODE: bf16, fp8, int8, int4 (W4A16 dequantises to bf16 in the main loop)
        rate = np.array(
            [
                c.tensor_flops_per_clk_per_sm_bf16,
                c.tensor_flops_per_clk_per_sm_fp8,
                c.tensor_ops_per_clk_per_sm_int8,
                c.tensor_flops_per_clk_per_sm_bf16,
            ]
        )
        eff = np.array(
            [c.mma_efficiency, c.mma_efficiency_fp8, c.mma_efficiency_int8, c.mma_efficiency]
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
            s.onchip_bytes,
            s.link_bytes,
            rate,
            el,
            eff,
            self.timing(p),
        )

    @staticmethod
    def timing(p: GpuParams):
        """The config's scalars as the one record the numba kernels take."""
        from archsim.arch.gpu_timing import GpuTiming

        c, m, k, ln = p.chip, p.memory, p.kernel, p.links
        return GpuTiming(
            sms=c.sms,
            f_boost=c.boost_clock_hz,
            f_sust=c.sustained_clock_hz,
            boost_window=c.boost_window_s,
            attn_eff=c.attention_mma_efficiency,
            hbm_bw=m.hbm_bw_bytes_per_s,
            per_sm_bw=m.per_sm_bw_bytes_per_s,
            l2_bw_clk=m.l2_bw_bytes_per_clk,
            per_sm_l2_bw=m.per_sm_l2_bw_bytes_per_s,
            strided_l2_bw=m.strided_l2_bw_bytes_per_s,
            strided_hbm_bw=m.strided_hbm_bw_bytes_per_s,
            row_bw=m.norm_row_bw_bytes_per_s,
            gap=k.graph_launch_gap_s,
            eager_launch=k.eager_launch_s,
            eager_gemm_launch=k.eager_gemm_launch_s,
            gemm_fixed=k.gemm_fixed_s,
            ew_fixed=k.elementwise_fixed_s,
            attn_fixed=k.attention_fixed_s,
            attn_cta_fixed=k.attention_cta_fixed_s,
            p=k.overlap_exponent,
            max_split=k.max_split_k,
            bk=k.gemm_tile_k,
            blk=k.attention_block,
            max_kv_splits=k.max_kv_splits,
            nvlink_bw=ln.nvlink_bw_bytes_per_s,
            ll_base=ln.allreduce_base_s,
            ll_hop=ln.allreduce_hop_s,
            ll_bw=ln.allreduce_ll_bw_fraction * ln.nvlink_bw_bytes_per_s,
            simple_base=ln.allreduce_simple_base_s,
            simple_hop=ln.allreduce_simple_hop_s,
            so_bw=ln.scaleout_bw_bytes_per_s,
            so_lat=ln.scaleout_latency_s,
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
