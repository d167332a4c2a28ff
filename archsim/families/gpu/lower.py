"""Lowering for h100-like: each op of the partitioned graph -> the kernels a serving stack
launches (GEMM, FlashAttention decode/prefill with its KV-cache append, elementwise kernels,
NCCL all-reduce, a send to the next pipeline stage).

Kernels of one GPU run one after another on its SM array (``gpu<s>.sm``); with CUDA graphs
each pays only the GPU-side gap, eagerly a host unit (``gpu<s>.host``) issues every launch
and the GPU waits for it when kernels are short. A send runs on the copy path
(``gpu<s>.nvlink``). Column meanings per opcode are listed in ``timing.gpu_timing``.
"""

from __future__ import annotations

import math
from typing import Any

import networkx as nx

from archsim.compiler.replay import LayerReplay
from archsim.core.errors import ScenarioError
from archsim.core.isa import InstructionStream, StreamBuilder
from archsim.core.plan import Plan
from archsim.families.gpu.params import GpuParams
from archsim.graph.build import ops_in_order
from archsim.graph.ops import Op, OpKind

OPCODES = [
    "gemm",
    "attn_decode",
    "attn_prefill",
    "elementwise",
    "all_reduce",
    "send_recv",
    "launch",
    "all_to_all",
]
# dtype code -> index into the rate / element-size tables passed to the timing kernel
DTYPE_CODE = {"bf16": 0, "fp16": 0, "fp32": 0, "fp8": 1, "int8": 2, "int4": 3}
ELEMENTS_PER_CTA = 2048  # elementwise kernels: 256 threads x 8 elements (one 16 B vector each)
# elementwise kernel classes (timing.elementwise_seconds; the same order as there)
VECTORISED, STRIDED, RMSNORM_ROWS, SOFTMAX_ROWS, LAYERNORM_ROWS = range(5)


def cuda_graphs(p: GpuParams, phase: str) -> bool:
    """Whether this phase's kernels are replayed from a CUDA graph (no host launch)."""
    return p.kernel.decode_cuda_graphs if phase == "decode" else p.kernel.prefill_cuda_graphs


def lower(g: nx.DiGraph, plan: Plan, p: GpuParams, phase: str) -> InstructionStream:
    """The kernels of every stage's GPU, in graph order. A decoder layer identical to an
    earlier one replays its kernels (archsim/compiler/replay.py)."""
    b = StreamBuilder(OPCODES)
    graphs = cuda_graphs(p, phase)
    b.meta.update(family="h100-like", cuda_graphs=str(graphs))
    st = _GpuState()
    last_kernel, last_launch, out_of = st.last_kernel, st.last_launch, st.out_of

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
        i = b.add(opcode, unit=f"gpu{s}.{unit}", op=op.id, chip=s, layer=op.layer, deps=deps, **kw)
        last_kernel[s] = i
        return i

    def lower_one(op: Op) -> None:
        out_of[op.id] = lower_op(op, emit, plan, p)

    LayerReplay(b, g, st).lower(ops_in_order(g), lower_one)
    return b.build()


class _GpuState:
    """What lowering carries from op to op: each stage's last kernel and host launch, and
    each op's last kernel."""

    def __init__(self) -> None:
        self.last_kernel: dict[int, int] = {}
        self.last_launch: dict[int, int] = {}
        self.out_of: dict[str, int] = {}

    def snapshot(self, ref, run: list[Op]) -> tuple:
        stages = sorted({op.stage for op in run})
        return tuple(
            (s, ref(self.last_kernel.get(s, -1)), ref(self.last_launch.get(s, -1))) for s in stages
        )

    def restore(self, snap: tuple) -> None:
        for s, kernel, launch in snap:
            for table, i in ((self.last_kernel, kernel), (self.last_launch, launch)):
                if i >= 0:
                    table[s] = i

    def op_state(self, op: str, ref) -> object:
        return ref(self.out_of[op])

    def set_op_state(self, op: str, state: int) -> None:
        self.out_of[op] = state


def lower_op(op: Op, emit, plan: Plan, p: GpuParams) -> int:
    """Emit the kernels of one op; returns the index of the last one."""
    kind = op.kind
    l2 = p.memory.l2_bytes
    if kind in (OpKind.MATMUL, OpKind.BMM):
        # a batched GEMM (both operands activations) is one strided-batched cuBLAS kernel
        dtype = op.weight_dtype if kind == OpKind.MATMUL else op.act_dtype
        _check_tensor_dtype(dtype, p)
        return emit(
            op, "gemm", m=op.dim("m"), n=op.dim("n"), k=op.dim("k"),
            g=max(1, op.dim("batch")), aux=DTYPE_CODE[dtype],
            offchip_bytes=op.mem_bytes, flops=op.flops,
        )  # fmt: skip
    if kind == OpKind.ATTENTION:
        return _attention(op, emit, p, l2)
    kn = p.kernel
    if kind == OpKind.NORM:  # one CTA per row; the first kernel walks the rows
        if op.dim("layernorm"):  # PyTorch's vectorised LayerNorm: one kernel, two passes
            return _repeat(op, emit, 1, op.dim("m"), LAYERNORM_ROWS, l2, kn.layernorm_fp32_ops)
        rms = kn.rmsnorm_fp32_ops
        return _repeat(op, emit, kn.norm_kernels, op.dim("m"), RMSNORM_ROWS, l2, rms)
    if kind == OpKind.SOFTMAX:  # short rows: one warp per row in registers, one pass;
        # longer rows: one CTA per row, passes max / exp-sum / write (PyTorch SoftMax.cu)
        if op.dim("n") <= kn.softmax_warp_max_cols:
            ctas = _ctas(op.act_out_bytes)
            return _repeat(op, emit, 1, ctas, VECTORISED, l2, kn.softmax_fp32_ops)
        return _repeat(op, emit, 1, op.dim("m"), SOFTMAX_ROWS, l2, kn.softmax_fp32_ops)
    if kind == OpKind.EMBEDDING:
        return _repeat(op, emit, 1, op.dim("m"), VECTORISED, l2)
    if kind == OpKind.ACTIVATION:
        if not op.dim("gated"):  # gelu: one vectorised pass over [t, f]
            ctas = _ctas(op.act_out_bytes)
            return _repeat(op, emit, 1, ctas, VECTORISED, l2, kn.gelu_fp32_ops)
        return _activation(op, emit, p.kernel.activation_kernels, l2)
    if kind == OpKind.ROPE:
        ctas = _ctas(op.act_out_bytes / p.kernel.rope_kernels)
        return _repeat(op, emit, p.kernel.rope_kernels, ctas, VECTORISED, l2)
    if kind == OpKind.RESIDUAL:
        return _repeat(op, emit, 1, _ctas(op.act_out_bytes), VECTORISED, l2)
    if kind == OpKind.ALL_REDUCE:
        # NCCL kernels run on the SMs and the next GEMM needs the reduced sum, so the
        # all-reduce serialises with the compute stream (no overlap in a decode step); ranks
        # beyond the NVLink domain make it hierarchical (timing.collective_allreduce_seconds)
        return emit(
            op, "all_reduce", g=op.group, m=op.dim("m"), n=op.dim("n"),
            link_bytes=op.link_bytes, offchip_bytes=op.mem_bytes,
        )  # fmt: skip
    if kind == OpKind.SEND_RECV:
        domain = p.links.scale_up_domain
        first_chip = op.stage * plan.tp
        crosses = first_chip // domain != (first_chip + plan.tp) // domain
        return emit(
            op, "send_recv", unit="nvlink", aux=int(crosses), m=op.dim("m"), n=op.dim("n"),
            link_bytes=op.link_bytes, offchip_bytes=op.mem_bytes,
        )  # fmt: skip
    if kind == OpKind.SSM_SCAN:
        return _ssm_scan(op, emit, l2)
    if kind == OpKind.ROUTER:
        return _router(op, emit, p, l2)
    if kind == OpKind.EXPERT_FFN:
        return _expert_ffn(op, emit, l2)
    if kind == OpKind.ALL_TO_ALL:
        return _all_to_all(op, emit, p)
    if kind == OpKind.MLA_ATTENTION:
        return _mla_attention(op, emit, l2)
    raise AssertionError(f"h100-like cannot lower {kind} (supported_ops should refuse it)")


def _check_tensor_dtype(dtype: str, p: GpuParams) -> None:
    """A GEMM in a precision the chip's tensor cores lack (rate 0 in the preset) is refused."""
    rate = {"fp8": p.chip.tensor_flops_per_clk_per_sm_fp8,
            "int8": p.chip.tensor_ops_per_clk_per_sm_int8}.get(dtype)  # fmt: skip
    if rate == 0:
        raise ScenarioError(
            f"{p.name} has no {dtype} tensor cores (chip.tensor_*_per_clk_per_sm_{dtype} = 0)"
        )


def _attention(op: Op, emit, p: GpuParams, l2: float) -> int:
    """The KV-cache append (read the new K, V and write them into the cache), then one
    FlashAttention kernel: Flash-Decoding over the cache, or FA3 causal prefill."""
    reps = p.kernel.kv_write_kernels
    if op.kv_write_bytes > 0:
        for _ in range(reps):
            emit(
                op, "elementwise", m=op.dim("batch") * op.dim("q_len"),
                aux=_ctas(op.kv_write_bytes / reps),
                **_tier(2 * op.kv_write_bytes / reps, 2 * op.kv_write_bytes, l2),
            )  # fmt: skip
    prefill = op.dim("q_len") > 1
    if prefill and p.kernel.attention_kernel == "fa3" and not p.chip.async_mma:
        raise ScenarioError(
            f"{p.name}: kernel.attention_kernel fa3 needs asynchronous warpgroup MMA "
            "(chip.async_mma); use fa2"
        )
    return emit(
        op, "attn_prefill" if prefill else "attn_decode",
        m=op.dim("q_len"), n=op.dim("kv_len"), k=op.dim("head_dim"), g=op.dim("batch"),
        h=op.dim("heads"), aux=op.dim("causal") if prefill else op.dim("kv_heads"),
        offchip_bytes=op.kv_read_bytes + op.act_in_bytes + op.act_out_bytes, flops=op.flops,
    )  # fmt: skip


def _ctas(out_bytes: float) -> int:
    return max(1, math.ceil(out_bytes / 2 / ELEMENTS_PER_CTA))


def _tier(nbytes: float, footprint: float, l2_bytes: float) -> dict[str, float]:
    """An elementwise kernel's bytes come from L2 when the op's distinct bytes fit in it
    (its inputs were just written by the previous kernel; L2 is write-back), else HBM."""
    if footprint <= l2_bytes:
        return {"onchip_bytes": nbytes}
    return {"offchip_bytes": nbytes}


def _repeat(op: Op, emit, reps: int, ctas: int, kclass: int, l2_bytes: float, ops: int = 0) -> int:
    """``reps`` kernels share the op's bytes (an unfused op is several passes). A row
    reduction's first kernel walks its rows of ``n`` bf16 elements, one CTA per row; the
    first kernel does ``ops`` FP32 instructions per element."""
    last = -1
    for r in range(reps):
        row = 2 * op.dim("n") if (kclass >= RMSNORM_ROWS and r == 0) else 0
        last = emit(
            op, "elementwise", m=op.dim("m"), n=op.dim("n"), k=ops if r == 0 else 0,
            g=kclass if r == 0 else VECTORISED, h=row, aux=ctas,
            **_tier(op.mem_bytes / reps, op.mem_bytes, l2_bytes),
        )  # fmt: skip
    return last


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
            op, "elementwise", m=op.dim("m"), n=op.dim("n"), g=kclass, aux=_ctas(unit),
            **_tier(nbytes, footprint, l2_bytes),
        )  # fmt: skip
    return last


def _ssm_scan(op: Op, emit, l2: float) -> int:
    """A Mamba-2 conv and scan as the kernels mamba_ssm and vLLM launch: causal_conv1d (reads
    x, B, C and writes them convolved; decode also reads and rewrites the conv state), then
    decode: selective_state_update, one memory-bound pass over each sequence's state that
    reads it, updates it and writes it back; prefill: the SSD kernels of
    mamba_chunk_scan_combined as four strided-batched bf16 GEMMs (C B^T per group, the chunk
    states B^T X, the intra-chunk (L o C B^T) X and the inter-chunk C S per head, each with
    its operands' traffic) and one elementwise kernel for the decays and the state passing
    between chunks, which writes the final state. The op's FLOPs are shared among the
    kernels in proportion to their products."""
    b, q = op.dim("batch"), op.dim("q_len")
    heads, pdim, n, grp = op.dim("heads"), op.dim("head_dim"), op.dim("state"), op.dim("groups")
    inner = heads * pdim  # this chip's heads
    conv_local = op.dim("conv_dim") * inner / max(op.dim("conv_dim") - 2 * grp * n, 1)
    conv_state = (op.dim("conv") - 1) * conv_local
    conv_share = conv_state / (conv_state + inner * n)  # of the recurrent state bytes
    tokens = b * q
    conv_flops = 2.0 * op.dim("conv") * conv_local * tokens
    state_rw = op.state_read_bytes + op.state_write_bytes
    conv_bytes = 2 * op.act_in_bytes + op.weight_bytes + state_rw * conv_share
    if q == 1:
        parts = [conv_flops, max(op.flops - conv_flops, 0.0)]
    else:
        chunk = min(op.dim("chunk"), q)
        chunks = -(-q // chunk)
        states = b * chunks * inner * n  # the chunk states [chunks, heads, P, N] of each seq
        cb = b * chunks * grp * chunk * chunk  # C B^T of every chunk and group
        # (batch, m, n, k) of each SSD product and the distinct elements it reads and writes
        # (a group's C B^T and C are read by all its heads: they come from L2 after the first)
        gemms = [
            (b * chunks * grp, chunk, chunk, n, 2 * tokens * grp * n + cb),  # C B^T
            (b * chunks * heads, n, pdim, chunk, tokens * (inner + grp * n) + states),  # B^T X
            (b * chunks * heads, chunk, pdim, chunk, cb + 2 * tokens * inner),  # (L o CB^T) X
            (b * chunks * heads, chunk, pdim, n, tokens * grp * n + states + tokens * inner),
        ]
        parts = [conv_flops] + [2.0 * g_ * m_ * n_ * k_ for g_, m_, n_, k_, _ in gemms]
    scale = op.flops / sum(parts) if sum(parts) > 0 else 0.0
    emit(
        op, "elementwise", m=tokens, n=int(conv_local), g=VECTORISED,
        aux=_ctas(op.act_in_bytes), flops=parts[0] * scale,
        **_tier(conv_bytes, conv_bytes, l2),
    )  # fmt: skip
    scan_state = state_rw * (1 - conv_share)
    if q == 1:
        nbytes = scan_state + op.act_in_bytes + op.act_out_bytes
        return emit(
            op, "elementwise", m=tokens, n=inner, g=VECTORISED, aux=_ctas(scan_state / 2),
            flops=parts[1] * scale, offchip_bytes=nbytes,
        )  # fmt: skip
    for (g_, m_, n_, k_, elements), flops in zip(gemms, parts[1:], strict=True):
        emit(
            op, "gemm", m=m_, n=n_, k=k_, g=g_, aux=DTYPE_CODE["bf16"],
            offchip_bytes=2.0 * elements, flops=flops * scale,
        )  # fmt: skip
    passing = scan_state + 2.0 * 2 * states  # chunk states read and rewritten, final state out
    return emit(
        op, "elementwise", m=b * chunks, n=inner, g=VECTORISED, aux=_ctas(passing / 2),
        **_tier(passing, passing, l2),
    )  # fmt: skip


# ---- mixture of experts and MLA (kinds added with issue 12) ------------------------------
def _router(op: Op, emit, p: GpuParams, l2: float) -> int:
    """The gate GEMM [tokens, hidden] @ [hidden, experts], then one top-k kernel that reads
    the fp32 scores and writes each token's expert ids and gates (vLLM fused_topk /
    grouped_topk)."""
    t, experts = op.dim("m"), op.dim("n")
    scores = 4.0 * t * experts
    emit(
        op, "gemm", m=t, n=experts, k=op.dim("k"), g=1, aux=DTYPE_CODE[op.weight_dtype],
        offchip_bytes=op.weight_bytes + op.act_in_bytes + scores, flops=op.flops,
    )  # fmt: skip
    nbytes = scores + op.act_out_bytes
    # a row kernel over each token's fp32 scores, like a softmax (top-k keeps its winners)
    return emit(
        op, "elementwise", m=t, n=experts, k=p.kernel.softmax_fp32_ops, g=SOFTMAX_ROWS,
        h=4 * experts, aux=t, **_tier(nbytes, nbytes, l2),
    )  # fmt: skip


def _expert_ffn(op: Op, emit, l2: float) -> int:
    """The routed experts as vLLM's fused_moe runs them: a kernel that sorts the token-expert
    pairs by expert (moe_align_block_size), the grouped gate/up GEMM, silu-and-mul, the
    grouped down GEMM (gates applied), and the sum of each token's expert outputs
    (moe_sum). A grouped GEMM is timed as a strided-batched GEMM over the experts touched
    (``g``, rounded) with the mean rows per touched expert (``m``): weight bytes are the
    touched experts' (expected, in the byte column), tiles per expert ceil(rows / BM); the
    spread of rows between experts is not modelled."""
    rows = op.experts.routed()
    if rows <= 0:
        return emit(op, "elementwise", m=0, n=op.dim("n"), g=VECTORISED, aux=1)
    h, width, gated = op.dim("n"), op.dim("k"), op.dim("gated")
    mats = 3 if gated else 2
    active = max(1, op.dim("active"))
    m = math.ceil(rows / active - 1e-9)
    dtype = DTYPE_CODE[op.weight_dtype]
    a_el = 1.0 if op.act_dtype in ("fp8", "int8") else 2.0
    pairs = 8.0 * op.dim("tokens") * op.dim("topk")  # ids and gates, sorted copies
    emit(op, "elementwise", m=op.dim("tokens"), n=op.dim("topk"), g=VECTORISED, aux=1,
         **_tier(pairs, pairs, l2))  # fmt: skip
    up = (mats - 1) * width
    emit(
        op, "gemm", m=m, n=up, k=h, g=active, aux=dtype,
        offchip_bytes=op.weight_bytes * (mats - 1) / mats + rows * (h * a_el + up * 2.0),
        flops=op.flops * (mats - 1) / mats,
    )  # fmt: skip
    act = rows * (up + width) * 2.0
    emit(op, "elementwise", m=math.ceil(rows), n=width, g=VECTORISED, aux=_ctas(rows * width * 2),
         **_tier(act, act, l2))  # fmt: skip
    emit(
        op, "gemm", m=m, n=h, k=width, g=active, aux=dtype,
        offchip_bytes=op.weight_bytes / mats + rows * (width * 2.0 + h * 2.0),
        flops=op.flops / mats,
    )  # fmt: skip
    total = rows * h * 2.0 + op.act_out_bytes
    return emit(op, "elementwise", m=math.ceil(rows), n=h, g=VECTORISED,
                aux=_ctas(op.act_out_bytes), **_tier(total, total, l2))  # fmt: skip


def _all_to_all(op: Op, emit, p: GpuParams) -> int:
    """Dispatch, combine, all-gather or reduce-scatter (DeepEP-style kernels): every GPU
    sends to and receives from all peers at once, through the NVSwitch inside its NVLink
    domain and through its NIC to other domains (``timing.collective_all_to_all_seconds``);
    the busier direction's bytes are the ``k`` column."""
    busier = max(op.link_bytes, float(op.dim("recv_bytes")))
    return emit(
        op, "all_to_all", g=op.group, m=op.dim("m"), n=op.dim("n"), k=math.ceil(busier),
        h=op.dim("pattern"), link_bytes=op.link_bytes, offchip_bytes=op.mem_bytes,
    )  # fmt: skip


def _mla_attention(op: Op, emit, l2: float) -> int:
    """MLA as FlashMLA-style serving stacks run it. The new latents are appended to the
    cache (one kernel). Decode (absorbed): q_nope @ W^UK per head (a strided-batched GEMM),
    one decoding kernel over the latent cache shared by the GPU's heads (an MQA with one
    576-wide key and 512-wide value: the ``attn_decode`` kernel with one KV head, its
    head dim 544 = (576 + 512) / 2 giving the op's 2 x (576 + 512) FLOPs per head and key),
    then @ W^UV per head. Prefill: kv_b_proj expands the latent of every position into
    K_nope and V (a GEMM), then causal FlashAttention with q/k dims 192 and v dims 128
    (head dim 160 for the same reason)."""
    b, heads, q_len, kv_len = op.dim("batch"), op.dim("heads"), op.dim("q_len"), op.dim("kv_len")
    latent, rope, nope, v = op.dim("latent"), op.dim("rope"), op.dim("nope"), op.dim("v_dim")
    t = b * q_len
    dtype = DTYPE_CODE[op.weight_dtype]
    if op.kv_write_bytes > 0:
        emit(op, "elementwise", m=t, aux=_ctas(op.kv_write_bytes),
             **_tier(2 * op.kv_write_bytes, 2 * op.kv_write_bytes, l2))  # fmt: skip
    w_uk = op.weight_bytes * nope / (nope + v)
    if op.dim("absorbed"):
        f_uk = 2.0 * t * heads * nope * latent
        f_uv = 2.0 * t * heads * latent * v
        emit(
            op, "gemm", m=t, n=latent, k=nope, g=heads, aux=dtype,
            offchip_bytes=w_uk + t * heads * (nope + latent) * 2.0, flops=f_uk,
        )  # fmt: skip
        q_bytes = t * heads * (latent + rope + latent) * 2.0  # q latent in, o latent out
        emit(
            op, "attn_decode", m=q_len, n=kv_len, k=(latent + rope + latent) // 2, g=b, h=heads,
            aux=1, offchip_bytes=op.kv_read_bytes + q_bytes, flops=op.flops - f_uk - f_uv,
        )  # fmt: skip
        return emit(
            op, "gemm", m=t, n=v, k=latent, g=heads, aux=dtype,
            offchip_bytes=op.weight_bytes - w_uk + t * heads * (latent + v) * 2.0, flops=f_uv,
        )  # fmt: skip
    rows = b * kv_len
    expanded = rows * heads * (nope + v) * 2.0
    f_expand = 2.0 * rows * latent * heads * (nope + v)
    emit(
        op, "gemm", m=rows, n=heads * (nope + v), k=latent, g=1, aux=dtype,
        offchip_bytes=op.weight_bytes + op.kv_read_bytes + expanded, flops=f_expand,
    )  # fmt: skip
    k_rope = rows * rope * 2.0  # the shared rope key, broadcast to every head
    return emit(
        op, "attn_prefill", m=q_len, n=kv_len, k=(nope + rope + v) // 2, g=b, h=heads,
        aux=op.dim("causal"), offchip_bytes=expanded + k_rope + op.act_in_bytes + op.act_out_bytes,
        flops=op.flops - f_expand,
    )  # fmt: skip
