"""Lowering for groq-like: each op of the partitioned graph -> passes of functional slices.

Grain: one instruction per (op, chip, functional unit) pass over a tensor, e.g. one MXM plane
streaming its share of an op's weight tiles, one VXM chain over an op's vectors, one C2C
transfer of an op's activations. The per-vector pipelining inside a pass is counted by the
timing equations (``timing.py``). The stream holds chip 0 of each pipeline stage (the chips of
a tensor group are symmetric); units are named per slice: ``chip3.mxm0``, ``chip3.vxm``,
``chip3.sxm``, ``chip3.mem``, ``chip3.c2c7``.

The compiler splits the ``batch`` sequences into ``plan.micro_batches`` micro-batches of
``plan.micro_batch`` that follow each other down the pipeline. :class:`Lowerer` emits one
micro-batch's trip; :func:`compile_program` replicates it into the program the chips run
(several micro-batches, one or two rounds) and gives every instruction its issue cycle with
the generic list scheduler.
"""

from __future__ import annotations

import math

import networkx as nx

from archsim.compiler.replay import LayerReplay, rotated_name, rotation_frame
from archsim.compiler.schedule import issue_order, list_schedule
from archsim.core.errors import ScenarioError, UnsupportedOpError
from archsim.core.isa import InstructionStream, StreamBuilder, Timing
from archsim.core.plan import Plan
from archsim.families.tsp.params import TspParams
from archsim.families.tsp.timing import MODE_FP8, MODE_FP16, MODE_INT8, OPCODES, tsp_timing
from archsim.graph.build import ops_in_order
from archsim.graph.ops import Op, OpKind
from archsim.graph.scenario import DTYPE_BYTES, Scenario

ACC_BYTES = 4  # MXM results leave as int32/fp32: 4 streams per 320 outputs (ISCA20 (r))


def mxm_mode(p: TspParams, weights: str, acts: str) -> int:
    """MXM arithmetic for a (weight, activation) storage pair; refuses what the chip lacks."""
    pair = {weights, acts}
    if pair <= {"int8"}:
        return MODE_INT8
    if pair <= {"fp8", "int8"}:
        if p.mxm.fp8_rate_fraction <= 0:
            raise UnsupportedOpError(
                f"{p.name} has no fp8 MXM mode (mxm.fp8_rate_fraction = 0); use --precision "
                "int8 or bf16, or an fp8-capable preset such as groq3-lpx"
            )
        return MODE_FP8
    if pair <= {"bf16", "fp16", "fp8", "int8"}:
        return MODE_FP16
    raise UnsupportedOpError(
        f"{p.name} cannot multiply {weights} weights by {acts} activations on its MXM "
        "(int8, fp8 where supported, fp16/bf16)"
    )


class Lowerer:
    """Emits the instructions of one micro-batch through every pipeline stage."""

    def __init__(self, g: nx.DiGraph, plan: Plan, p: TspParams, sc: Scenario, opcodes) -> None:
        self.g, self.plan, self.p, self.sc = g, plan, p, sc
        self.b = StreamBuilder(opcodes)
        self.mb = plan.micro_batch or sc.batch
        self.f = self.mb / sc.batch  # share of the batch in one micro-batch
        self.out_of: dict[str, list[int]] = {}
        self.next_plane: dict[int, int] = {}
        c = p.chip
        self.vb = c.vector_bytes
        self.reduce_steps = math.ceil(math.log2(c.superlanes * c.lanes_per_superlane))

    # ---- helpers ----------------------------------------------------------------------------
    def vectors(self, nbytes: float) -> int:
        return max(1, math.ceil(nbytes / self.vb - 1e-9))

    def rows(self, op: Op) -> int:
        return max(1, math.ceil(op.dim("m") * self.f - 1e-9))

    def emit(self, opcode: str, unit: str, op: Op, deps, **kw) -> int:
        s = op.stage
        return self.b.add(
            opcode, unit=f"chip{s}.{unit}", op=op.id, chip=s, layer=op.layer, deps=deps, **kw
        )

    def vxm(self, op: Op, deps, vectors: int, *, i=0, fp=0, cast=0, tr=0, slices=None) -> int:
        sl = 2 * self.p.place.vxm_operand_slices if slices is None else slices
        return self.emit(
            "vxm", "vxm", op, deps, m=vectors, n=i, k=fp, g=cast, h=tr, aux=sl,
            onchip_bytes=2.0 * vectors * self.vb,
        )  # fmt: skip

    def sxm(self, op: Op, deps, vectors: int, steps: int) -> int:
        sl = 2 * self.p.place.vxm_operand_slices
        return self.emit(
            "sxm", "sxm", op, deps, m=vectors, n=steps, aux=sl, onchip_bytes=2.0 * vectors * self.vb
        )

    def mxm(self, op, deps, rows, tiles, k_rows, mode, w_el, wbytes, flops, in_bytes) -> list[int]:
        """Spread ``tiles`` weight tiles over the planes (rotating the first plane per op)."""
        planes = self.p.mxm.planes
        used = min(planes, tiles)
        first = self.next_plane.get(op.stage, 0)
        self.next_plane[op.stage] = (first + used) % planes
        out = []
        for j in range(used):
            t = tiles // used + (1 if j < tiles % used else 0)
            share = t / tiles
            out.append(
                self.emit(
                    "mxm",
                    f"mxm{(first + j) % planes}",
                    op,
                    deps,
                    m=rows,
                    n=t,
                    k=k_rows,
                    g=mode,
                    h=int(w_el),
                    onchip_bytes=wbytes * share + in_bytes,
                    flops=flops * share,
                )  # fmt: skip
            )
        return out

    def requant(self, op: Op, deps, outputs: float) -> int:
        """MXM int32/fp32 results -> the activation type, on the VXM."""
        pl = self.p.place
        return self.vxm(
            op, deps, self.vectors(outputs * ACC_BYTES), cast=1,
            slices=pl.mxm_to_vxm_slices + pl.vxm_operand_slices,
        )  # fmt: skip

    # ---- hops and ports ---------------------------------------------------------------------
    def hops(self, src_stage: int, dst_stage: int) -> int:
        s, tp = self.p.system, self.plan.tp
        a, b = src_stage * tp, dst_stage * tp
        node_a, node_b = a // s.chips_per_node, b // s.chips_per_node
        if node_a == node_b:
            return s.hops_in_node
        if node_a // s.nodes_per_group == node_b // s.nodes_per_group:
            return s.hops_in_group
        return s.hops_between_groups

    def port(self, src_stage: int, dst_stage: int) -> int:
        s, tp, ln = self.p.system, self.plan.tp, self.p.links
        a, b = src_stage * tp, dst_stage * tp
        if a // s.chips_per_node == b // s.chips_per_node:
            return (b - a) % s.chips_per_node - 1  # local port toward that chip
        return ln.local_ports + (dst_stage - src_stage - 1) % ln.global_ports

    def transfer(self, op: Op, deps, port: int, nbytes: float, hops: int) -> int:
        ln = self.p.links
        per_link = -(-self.vectors(nbytes) // ln.links_per_port)
        return self.emit(
            "c2c", f"c2c{port}", op, deps, m=per_link, n=hops,
            aux=2 * self.p.place.c2c_stream_slices, link_bytes=nbytes, onchip_bytes=2.0 * nbytes,
        )  # fmt: skip

    # ---- ops --------------------------------------------------------------------------------
    def lower(self) -> StreamBuilder:
        """Every op in graph order; a decoder layer identical to an earlier one, with the
        MXM planes rotated to the same place, replays its passes (compiler/replay.py)."""
        LayerReplay(self.b, self.g, self).lower(ops_in_order(self.g), self.lower_one)
        return self.b

    def lower_one(self, op: Op) -> None:
        deps = [i for pred in self.g.predecessors(op.id) for i in self.out_of[pred]]
        self.out_of[op.id] = self.lower_op(op, deps)

    # ---- the state replay.LayerReplay reads (compiler/replay.py). A run's frame is its first
    # stage and where each of its stages' MXM plane rotation stands: the passes of a layer
    # replay on other stages and from another first plane, with the chips and planes renamed.
    # Where a transfer's destination sits (its port and hops) is in the snapshot.
    def frame(self, run: list[Op]) -> tuple:
        return rotation_frame(run, self.next_plane)

    def snapshot(self, ref, run: list[Op], frame: tuple) -> tuple:
        base, first = frame
        planes = self.p.mxm.planes
        turned = tuple(
            (self.next_plane.get(base + i, 0) - at) % planes for i, at in enumerate(first)
        )
        routes = tuple(
            (self.port(op.stage, op.dim("dst_stage")), self.hops(op.stage, op.dim("dst_stage")))
            for op in run
            if "dst_stage" in op.shape
        )
        return turned, routes

    def restore(self, snap: tuple, frame: tuple) -> None:
        base, first = frame
        planes = self.p.mxm.planes
        for i, (at, turned) in enumerate(zip(first, snap[0], strict=True)):
            self.next_plane[base + i] = (at + turned) % planes

    def op_state(self, op: str, ref) -> tuple:
        return tuple(ref(i) for i in self.out_of[op])

    def set_op_state(self, op: str, state: tuple) -> None:
        self.out_of[op] = list(state)

    def relative_name(self, name: str, frame: tuple) -> str:
        return rotated_name(name, frame, -1, "mxm", self.p.mxm.planes)

    def absolute_name(self, name: str, frame: tuple) -> str:
        return rotated_name(name, frame, 1, "mxm", self.p.mxm.planes)

    def lower_op(self, op: Op, deps: list[int]) -> list[int]:
        kind, f = op.kind, self.f
        if kind == OpKind.MATMUL:
            return [self.matmul(op, deps)]
        if kind == OpKind.ATTENTION:
            return [self.attention(op, deps)]
        if kind == OpKind.NORM and op.dim("layernorm"):
            # mean (sum, lane reduction), then x - mean, its squares and their reduction,
            # then rsqrt and the scale and shift
            v = self.vectors(op.act_in_bytes * f)
            a = self.vxm(op, deps, v, fp=1)
            r = self.sxm(op, [a], self.rows(op), self.reduce_steps)
            c = self.vxm(op, [r], v, fp=2)
            r2 = self.sxm(op, [c], self.rows(op), self.reduce_steps)
            return [self.vxm(op, [r2], v, fp=2, tr=1, cast=1)]
        if kind == OpKind.NORM:  # sum of squares, lane reduction, rsqrt and two scales
            v = self.vectors(op.act_in_bytes * f)
            a = self.vxm(op, deps, v, fp=2)
            r = self.sxm(op, [a], self.rows(op), self.reduce_steps)
            return [self.vxm(op, [r], v, fp=2, tr=1, cast=1)]
        if kind == OpKind.SOFTMAX:  # exp (max-subtracted), row sums, reciprocal and scale
            v = self.vectors(op.act_in_bytes * f)
            e = self.vxm(op, deps, v, fp=2, tr=1)
            s = self.sxm(op, [e], self.rows(op), self.reduce_steps)
            return [self.vxm(op, [s], v, fp=1, tr=1, cast=1)]
        if kind == OpKind.BMM:
            return [self.bmm(op, deps)]
        if kind == OpKind.ROPE:  # pair permute, then x*cos + rot(x)*sin
            v = self.vectors(op.act_in_bytes * f)
            r = self.sxm(op, deps, v, 1)
            return [self.vxm(op, [r], v, fp=3)]
        if kind == OpKind.ACTIVATION and not op.dim("gated"):
            # gelu (tanh form): 0.5 x (1 + tanh(c (x + 0.044715 x^3)))
            return [self.vxm(op, deps, self.vectors(op.act_in_bytes * f), fp=5, tr=1)]
        if kind == OpKind.ACTIVATION:  # silu(gate) * up = g / (1 + exp(-g)) * up
            return [self.vxm(op, deps, self.vectors(op.act_in_bytes * f), fp=3, tr=2)]
        if kind == OpKind.RESIDUAL:
            return [self.vxm(op, deps, self.vectors(op.act_out_bytes * f), fp=1)]
        if kind == OpKind.EMBEDDING:  # gather the token rows from MEM
            v = self.vectors(op.act_out_bytes * f)
            return [
                self.emit("mem", "mem", op, deps, m=v, aux=2 * self.p.place.vxm_operand_slices,
                          onchip_bytes=2.0 * v * self.vb)
            ]  # fmt: skip
        if kind == OpKind.ALL_REDUCE:
            return self.all_reduce(op, deps)
        if kind == OpKind.SEND_RECV:
            dst = op.dim("dst_stage")
            port = self.port(op.stage, dst)
            return [self.transfer(op, deps, port, op.link_bytes * f, self.hops(op.stage, dst))]
        if kind == OpKind.SSM_SCAN:
            return [self.ssm_scan(op, deps)]
        if kind == OpKind.ROUTER:
            return [self.router(op, deps)]
        if kind == OpKind.EXPERT_FFN:
            return [self.expert_ffn(op, deps)]
        if kind == OpKind.ALL_TO_ALL:
            return self.all_to_all(op, deps)
        if kind == OpKind.MLA_ATTENTION:
            return [self.mla_attention(op, deps)]
        raise UnsupportedOpError(f"groq-like cannot lower {kind} ({op.id})")

    def matmul(self, op: Op, deps: list[int]) -> int:
        """[rows, k] @ [k, n]: ceil(k/D) x ceil(n/D) weight tiles of D x D (D = plane side)."""
        dim = self.p.mxm.plane_dim
        mode = mxm_mode(self.p, op.weight_dtype, op.act_dtype)
        kt, nt = math.ceil(op.dim("k") / dim), math.ceil(op.dim("n") / dim)
        rows = self.rows(op)
        planes = self.mxm(
            op, deps, rows, kt * nt, math.ceil(op.dim("k") / kt), mode,
            DTYPE_BYTES[op.weight_dtype], op.weight_bytes, op.flops * self.f,
            op.act_in_bytes * self.f,
        )  # fmt: skip
        return self.requant(op, planes, rows * op.dim("n"))

    def bmm(self, op: Op, deps: list[int]) -> int:
        """batch x ([m, k] @ [k, n]): each [k, n] operand is installed in the MXM as weights
        (ceil(k/D) x ceil(n/D) tiles per batch element) and its m rows streamed through."""
        dim = self.p.mxm.plane_dim
        mode = mxm_mode(self.p, op.act_dtype, op.act_dtype)
        el = DTYPE_BYTES[op.act_dtype]
        batch = max(1, op.dim("batch"))
        kt, nt = math.ceil(op.dim("k") / dim), math.ceil(op.dim("n") / dim)
        rhs = batch * op.dim("k") * op.dim("n") * el  # the installed operand
        planes = self.mxm(
            op, deps, self.rows(op), batch * kt * nt, math.ceil(op.dim("k") / kt), mode, el,
            rhs * self.f, op.flops * self.f, (op.act_in_bytes - rhs) * self.f,
        )  # fmt: skip
        return self.requant(op, planes, batch * self.rows(op) * op.dim("n"))

    def attention(self, op: Op, deps: list[int]) -> int:
        """softmax(Q K^T) V with the KV cache installed in the MXM as weights: K^T [d, L] and
        V [L, d] per (sequence, KV head); the query heads sharing a KV head are the rows."""
        dim = self.p.mxm.plane_dim
        mb = max(1, math.ceil(op.dim("batch") * self.f - 1e-9))  # sequences of this micro-batch
        heads, kvh, d = op.dim("heads"), op.dim("kv_heads"), op.dim("head_dim")
        q_len, kv_len = op.dim("q_len"), op.dim("kv_len")
        rows = max(1, heads // kvh) * q_len
        mode = mxm_mode(self.p, op.weight_dtype, op.act_dtype)  # weight_dtype = KV dtype
        el = DTYPE_BYTES[op.weight_dtype]
        # causal prefill skips the key tiles above the diagonal
        frac = (q_len + 1) / (2.0 * kv_len) if op.dim("causal") else 1.0
        f = self.f
        kv_new = op.kv_write_bytes * f
        append = self.emit(
            "mem", "mem", op, deps, m=self.vectors(kv_new),
            aux=2 * self.p.place.vxm_operand_slices, onchip_bytes=2.0 * kv_new,
        ) if kv_new > 0 else None  # fmt: skip
        lt = math.ceil(kv_len / dim)
        qk_tiles = max(1, round(mb * kvh * math.ceil(d / dim) * lt * frac))
        kv_half = op.kv_read_bytes * f / 2
        first = [append] if append is not None else deps  # the new token's K is in the cache
        qk = self.mxm(
            op, first, rows, qk_tiles, min(d, dim), mode, el, kv_half, op.flops * f / 2,
            op.act_in_bytes * f,
        )  # fmt: skip
        scores = mb * heads * q_len * kv_len * frac * ACC_BYTES
        v = self.vectors(scores)
        e = self.vxm(op, qk, v, fp=2, tr=1, slices=self.p.place.mxm_to_vxm_slices)
        s = self.sxm(op, [e], mb * heads * q_len, self.reduce_steps)
        pn = self.vxm(op, [s], v, fp=1, tr=1, cast=1)
        pv_tiles = max(1, round(mb * kvh * lt * math.ceil(d / dim) * frac))
        pv = self.mxm(
            op, [pn], rows, pv_tiles, math.ceil(kv_len / lt), mode, el, kv_half,
            op.flops * f / 2, scores / ACC_BYTES * el,
        )  # fmt: skip
        return self.requant(op, pv, mb * heads * q_len * d)

    def ssm_scan(self, op: Op, deps: list[int]) -> int:
        """A Mamba-2 conv and scan as its recurrence on the VXM, the state held in MEM (no
        chunked SSD on the MXM): the causal conv (conv_kernel multiply-adds per channel) and
        its SiLU over x, B, C; then per token and state element of every head the decay, the
        rank-1 update and the readout product (three fp ops over the bf16 state), and the
        readout's sum over the state dimension on the SXM."""
        f = self.f
        conv = self.vxm(op, deps, self.vectors(op.act_in_bytes * f), fp=op.dim("conv") + 1, tr=1)
        tokens = op.dim("m") * f
        state_elements = tokens * op.dim("n") * op.dim("state")  # [tokens, heads x P, N]
        v = self.vectors(state_elements * 2)
        scan = self.emit(
            "vxm", "vxm", op, [conv], m=v, k=3, aux=2 * self.p.place.vxm_operand_slices,
            onchip_bytes=2.0 * v * self.vb, flops=op.flops * f,
        )  # fmt: skip
        steps = math.ceil(math.log2(max(op.dim("state"), 2)))
        return self.sxm(op, [scan], v, steps)

    # ---- mixture of experts and MLA (kinds added with issue 12) ----------------------------
    def weight_gemm(self, op, deps, rows, k, n, copies, mode, w_el, flops, in_bytes) -> int:
        """``copies`` weight matrices [k, n] (experts, heads) each multiplied by ``rows``
        activation rows: ceil(k/D) x ceil(n/D) tiles per copy, spread over the planes; the
        results requantised on the VXM."""
        dim = self.p.mxm.plane_dim
        kt, nt = math.ceil(k / dim), math.ceil(n / dim)
        planes = self.mxm(
            op, deps, rows, copies * kt * nt, math.ceil(k / kt), mode, w_el,
            copies * k * n * w_el, flops, in_bytes,
        )  # fmt: skip
        return self.requant(op, planes, copies * rows * n)

    def router(self, op: Op, deps: list[int]) -> int:
        """The gate GEMM on the MXM, the scores (exp or sigmoid) on the VXM, and the top-k
        as k max-reductions over the experts' lanes on the SXM."""
        mode = mxm_mode(self.p, op.weight_dtype, op.act_dtype)
        rows, experts = self.rows(op), op.dim("n")
        gemm = self.weight_gemm(
            op, deps, rows, op.dim("k"), experts, 1, mode, DTYPE_BYTES[op.weight_dtype],
            op.flops * self.f, op.act_in_bytes * self.f,
        )  # fmt: skip
        v = self.vectors(rows * experts * 2)
        e = self.vxm(op, [gemm], v, fp=1, tr=1)
        steps = math.ceil(math.log2(max(experts, 2)))
        return self.sxm(op, [e], rows * op.dim("topk"), steps)

    def expert_ffn(self, op: Op, deps: list[int]) -> int:
        """A slice's routed experts under a static schedule: the compiler cannot know which
        experts the router will pick, so every expert of the slice is installed in the MXM
        for every micro-batch and multiplies a fixed number of rows, its capacity
        C = min(tokens, ceil(capacity_factor x tokens x top-k / experts)); gate/up, the
        activation, down, and the gated sum of each token's outputs. The FLOPs column holds
        the useful (expected) work; the passes take the provisioned rows."""
        load = op.experts
        tokens = max(1, math.ceil(op.dim("tokens") * self.f - 1e-9))
        cf = self.p.compiler.expert_capacity_factor
        cap = min(tokens, math.ceil(cf * tokens * load.top_k / load.num_experts - 1e-9))
        experts, h, width = op.dim("experts"), op.dim("n"), op.dim("k")
        mats = 3 if op.dim("gated") else 2
        up = (mats - 1) * width
        mode = mxm_mode(self.p, op.weight_dtype, op.act_dtype)
        w_el = DTYPE_BYTES[op.weight_dtype]
        flops = op.flops * self.f
        gate_up = self.weight_gemm(
            op, deps, cap, h, up, experts, mode, w_el, flops * (mats - 1) / mats,
            experts * cap * h * DTYPE_BYTES[op.act_dtype],
        )  # fmt: skip
        act = self.vxm(op, [gate_up], self.vectors(experts * cap * up * 2), fp=3, tr=2)
        down = self.weight_gemm(
            op, [act], cap, width, h, experts, mode, w_el, flops / mats,
            experts * cap * width * DTYPE_BYTES[op.act_dtype],
        )  # fmt: skip
        return self.vxm(op, [down], self.vectors(experts * cap * h * 2), fp=2)

    def all_to_all(self, op: Op, deps: list[int]) -> list[int]:
        """One pair of stages' part of an MoE dispatch or combine (packing inserts one per
        pair): a transfer toward the destination stage. Without a destination (an
        all-to-all among the chips of one node): each peer gets an equal share on its own
        link."""
        nbytes = op.link_bytes * self.f
        if "dst_stage" in op.shape:
            dst = op.dim("dst_stage")
            port = self.port(op.stage, dst)
            return [self.transfer(op, deps, port, nbytes, self.hops(op.stage, dst))]
        peers = max(1, op.group - 1)
        if op.group > self.p.system.chips_per_node:
            raise ScenarioError(
                f"groq-like exchanges all-to-all inside one fully connected node of "
                f"{self.p.system.chips_per_node} chips; {op.group} ranks asked"
            )
        hops = self.p.system.hops_in_node
        return [self.transfer(op, deps, j, nbytes / peers, hops) for j in range(peers)]

    def mla_attention(self, op: Op, deps: list[int]) -> int:
        """MLA on the MXM. The new latents are written to MEM. Decode (absorbed): q_nope @
        W^UK per head (the heads' [nope, latent] matrices installed as weights), the scores
        against each sequence's latent cache (K^T [latent + rope, L] installed as weights,
        every local head a row), softmax on the VXM/SXM, P @ latent ([L, latent] installed),
        then @ W^UV per head. Prefill: kv_b_proj expands each position's latent into K_nope
        and V, then causal attention as for dense models (K^T and V installed per sequence
        and head, the diagonal's upper tiles skipped)."""
        f, dim = self.f, self.p.mxm.plane_dim
        mb = max(1, math.ceil(op.dim("batch") * f - 1e-9))
        heads, q_len, kv_len = op.dim("heads"), op.dim("q_len"), op.dim("kv_len")
        latent, rope, nope, v = op.dim("latent"), op.dim("rope"), op.dim("nope"), op.dim("v_dim")
        mode = mxm_mode(self.p, op.weight_dtype, op.act_dtype)
        kv_mode = mxm_mode(self.p, self.sc.precision.kv, op.act_dtype)
        w_el, kv_el = DTYPE_BYTES[op.weight_dtype], DTYPE_BYTES[self.sc.precision.kv]
        t = mb * q_len
        kv_new = op.kv_write_bytes * f
        start = deps
        if kv_new > 0:
            start = [self.emit(
                "mem", "mem", op, deps, m=self.vectors(kv_new),
                aux=2 * self.p.place.vxm_operand_slices, onchip_bytes=2.0 * kv_new,
            )]  # fmt: skip
        flops = op.flops * f
        lt = math.ceil(kv_len / dim)
        if op.dim("absorbed"):
            f_uk, f_uv = 2.0 * t * heads * nope * latent, 2.0 * t * heads * latent * v
            f_att = max(flops - f_uk - f_uv, 0.0)
            qk_share = (latent + rope) / (2 * latent + rope)
            uk = self.weight_gemm(op, start, t, nope, latent, heads, mode, w_el, f_uk,
                                  t * heads * nope * 2)  # fmt: skip
            qk_tiles = mb * math.ceil((latent + rope) / dim) * lt
            qk = self.mxm(
                op, [uk], heads * q_len, qk_tiles, min(latent + rope, dim), kv_mode, kv_el,
                op.kv_read_bytes * f, f_att * qk_share, t * heads * (latent + rope) * 2,
            )  # fmt: skip
            scores = mb * heads * q_len * kv_len * ACC_BYTES
            pn = self.softmax_passes(op, qk, scores, mb * heads * q_len)
            pv = self.mxm(
                op, [pn], heads * q_len, mb * lt * math.ceil(latent / dim),
                math.ceil(kv_len / lt), kv_mode, kv_el, op.kv_read_bytes * f * latent
                / (latent + rope), f_att * (1 - qk_share), scores / ACC_BYTES * kv_el,
            )  # fmt: skip
            o = self.requant(op, pv, t * heads * latent)
            return self.weight_gemm(op, [o], t, latent, v, heads, mode, w_el, f_uv,
                                    t * heads * latent * 2)  # fmt: skip
        rows = mb * kv_len
        f_expand = 2.0 * rows * latent * heads * (nope + v)
        f_att = max(flops - f_expand, 0.0)
        kv = self.weight_gemm(op, start, rows, latent, heads * (nope + v), 1, mode, w_el,
                              f_expand, op.kv_read_bytes * f)  # fmt: skip
        frac = (q_len + 1) / (2.0 * kv_len) if op.dim("causal") else 1.0
        qk_dim = nope + rope
        qk_share = qk_dim / (qk_dim + v)
        qk = self.mxm(
            op, [kv], q_len, max(1, round(mb * heads * math.ceil(qk_dim / dim) * lt * frac)),
            min(qk_dim, dim), mode, 2.0, rows * heads * qk_dim * 2.0, f_att * qk_share,
            op.act_in_bytes * f,
        )  # fmt: skip
        scores = mb * heads * q_len * kv_len * frac * ACC_BYTES
        pn = self.softmax_passes(op, qk, scores, mb * heads * q_len)
        pv = self.mxm(
            op, [pn], q_len, max(1, round(mb * heads * lt * math.ceil(v / dim) * frac)),
            math.ceil(kv_len / lt), mode, 2.0, rows * heads * v * 2.0, f_att * (1 - qk_share),
            scores / ACC_BYTES * 2.0,
        )  # fmt: skip
        return self.requant(op, pv, mb * heads * q_len * v)

    def softmax_passes(self, op: Op, deps: list[int], scores: float, rows: int) -> int:
        """exp of the max-subtracted scores, the row sums, and the normalisation."""
        v = self.vectors(scores)
        e = self.vxm(op, deps, v, fp=2, tr=1, slices=self.p.place.mxm_to_vxm_slices)
        s = self.sxm(op, [e], rows, self.reduce_steps)
        return self.vxm(op, [s], v, fp=1, tr=1, cast=1)

    def all_reduce(self, op: Op, deps: list[int]) -> list[int]:
        """One-shot reduce-scatter + all-gather over the fully connected tensor group: each
        phase sends 1/tp of the tensor to each of the tp-1 peers on its own link."""
        tp = op.group
        if tp > self.p.system.chips_per_node:
            raise ScenarioError(
                f"groq-like all-reduces inside one fully connected node of "
                f"{self.p.system.chips_per_node} chips; {tp} ranks asked"
            )
        chunk = op.link_bytes * self.f / tp
        hops = self.p.system.hops_in_node
        scatter = [self.transfer(op, deps, j, chunk, hops) for j in range(tp - 1)]
        add = self.vxm(op, scatter, self.vectors(chunk), fp=tp - 1)
        return [self.transfer(op, [add], j, chunk, hops) for j in range(tp - 1)]


def program_shape(micro_batches: int, cap: int) -> tuple[int, int]:
    """(micro-batches simulated, rounds simulated) of a step of ``micro_batches``.

    One micro-batch: one round (the next token waits for this one: the period is the trip).
    More: two rounds of up to ``cap`` of them, so that the second round's start waits both
    for the first round's tokens (latency) and for the stages to drain the other
    micro-batches (throughput). Up to ``cap`` the period between rounds comes out of the
    timeline; above it, it is extrapolated (``plan.round_period``)."""
    if micro_batches == 1:
        return 1, 1
    return min(micro_batches, cap), 2


def lower_micro_batch(g: nx.DiGraph, plan: Plan, p: TspParams, sc: Scenario) -> InstructionStream:
    """One micro-batch's trip through every pipeline stage (no issue cycles yet)."""
    b = Lowerer(g, plan, p, sc, OPCODES).lower()
    b.meta.update(family="groq-like", micro_batch=str(plan.micro_batch or sc.batch))
    return b.build()


def compile_program(
    g: nx.DiGraph,
    plan: Plan,
    p: TspParams,
    sc: Scenario,
    micro_batches: int,
    rounds: int,
    trip: InstructionStream | None = None,
) -> tuple[InstructionStream, Timing]:
    """The statically scheduled program: ``rounds`` x ``micro_batches`` copies of one
    micro-batch's trip (``trip``, lowered here if not given). The list scheduler lets each
    functional unit take the next ready pass of any micro-batch (earlier micro-batches
    first), as the compiler interleaves them; the program is then put in issue order, so that
    every unit's queue runs in order."""
    trip = lower_micro_batch(g, plan, p, sc) if trip is None else trip
    stream = trip.replicated(micro_batches, rounds)
    timing = tsp_timing(stream, p)
    if micro_batches * rounds == 1:  # one trip: the units run it in program order
        stream.cols["issue"][:] = list_schedule(stream, timing)
        return stream, timing
    issue = list_schedule(stream, timing, reorder=True)
    stream.cols["issue"][:] = issue
    order = issue_order(stream, issue)
    return stream.permuted(order), _take(timing, order)


def _take(timing: Timing, order) -> Timing:
    """The timing of a permuted stream."""
    choice = None if timing.choice is None else timing.choice[order]
    return Timing(timing.work[order], timing.latency[order], timing.interval[order],
                  timing.resource_bw, choice)  # fmt: skip
