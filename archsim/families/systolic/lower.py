"""Lowering for matx-like: each op of the partitioned graph -> DMA transfers, array passes,
vector passes and link transfers on one chip per pipeline stage.

Units per chip ``S`` (chip 0 of each tensor group): ``chipS.arrays`` (all systolic arrays),
``chipS.vector``, ``chipS.dma0..`` (the DMA engines, round robin), ``chipS.link``. Shared
resources: ``chipS.hbm`` (every DMA's bytes, max-min fair) and ``chipS.sram`` (the
scratchpad's ports: DMA writes, array operands, vector operands).

Residency (``pinned_weights``): walking each chip's ops in order, a GEMM's weights stay in the
scratchpad across steps while they fit ``mapping.pin_fraction`` of it; the rest stream from
HBM every step. An op's activations stay in the scratchpad when they fit half of what the
pinned weights leave; the other half (or all of it, for spilled activations) holds the
double-buffered tiles.

Double buffering, per op: a DMA of the first block, a DMA of the rest right behind it; the
array (or vector) pass starts once the first block has landed, and a ``join`` ends the op at
max(the pass's end, the last block landed + one block's work) — the end of a double-buffered
pipeline. An op's stream starts once the previous op's array pass has started (prefetch of
one op ahead) and the previous stream has moved its bytes (one DMA queue).
"""

from __future__ import annotations

import math

import networkx as nx

from archsim.compiler.replay import LayerReplay, rotated_name, rotation_frame
from archsim.core.isa import END_START, START_START, InstructionStream, StreamBuilder
from archsim.core.plan import Plan
from archsim.families.systolic.mapper import (
    ACC_BYTES,
    AttentionMapping,
    map_attention,
    map_gemm,
)
from archsim.families.systolic.params import SystolicParams
from archsim.families.systolic.timing import (
    OPCODES,
    gemm_opcode,
    hbm_bytes_per_cycle,
    vector_elements_per_cycle,
)
from archsim.graph.build import ELEM_BYTES, ops_in_order
from archsim.graph.ops import A2A_ALL_GATHER, A2A_REDUCE_SCATTER, Op, OpKind
from archsim.graph.scenario import DTYPE_BYTES, Scenario

SUPPORTED = frozenset(
    k.value
    for k in (
        OpKind.EMBEDDING,
        OpKind.MATMUL,
        OpKind.BMM,
        OpKind.ATTENTION,
        OpKind.NORM,
        OpKind.SOFTMAX,
        OpKind.ROPE,
        OpKind.ACTIVATION,
        OpKind.RESIDUAL,
        OpKind.ALL_REDUCE,
        OpKind.SEND_RECV,
        OpKind.ROUTER,
        OpKind.EXPERT_FFN,
        OpKind.ALL_TO_ALL,
        OpKind.MLA_ATTENTION,
    )
)
# ops whose weights the compiler may pin in the scratchpad across steps
PINNABLE = (OpKind.MATMUL, OpKind.NORM, OpKind.ROUTER, OpKind.EXPERT_FFN, OpKind.MLA_ATTENTION)

# Vector work per output element: (element ops, dependent ops), as the algorithm needs them
# (not hardware numbers). RMSNorm: square-accumulate, scale, weight; LayerNorm adds the mean
# pass; softmax: max, subtract, exp, sum, scale; SiLU*up: exp, add, divide, multiply by up;
# gelu (tanh form): ~8; rope: two multiplies and an add; residual: one add.
VECTOR_WORK = {
    "rmsnorm": (4, 4),
    "layernorm": (7, 6),
    "softmax": (5, 5),
    "silu_mul": (5, 4),
    "gelu": (8, 6),
    "rope": (3, 2),
    "residual": (1, 1),
}
# bit flags of a GEMM instruction's aux column
WEIGHTS_RESIDENT, ACTS_RESIDENT = 1, 2


def gemm_mode(p: SystolicParams, weights: str, acts: str) -> int:
    """Index into ``timing.MODES`` of the arithmetic a (weights, activations) pair runs at: the
    wider of the two (int4 weights with bf16 activations run at bf16); a mode the arrays lack
    (rate 0) falls back to int8 (for int4), then bf16."""
    a = p.systolic
    wide = max(DTYPE_BYTES[weights], DTYPE_BYTES[acts])
    if wide >= 2:
        return 0
    if wide == 0.5 and a.rate_int4 > 0:
        return 3
    if wide <= 1 and "fp8" in (weights, acts) and a.rate_fp8 > 0:
        return 1
    if wide <= 1 and "fp8" not in (weights, acts) and a.rate_int8 > 0:
        return 2
    return 0


def held_weight_bytes(op: Op) -> float:
    """Weight bytes of ``op`` a chip holds: what a step reads, except for routed experts,
    where a step reads only the experts its tokens touch but the chip holds all of its
    experts."""
    if op.kind == OpKind.EXPERT_FFN:
        return op.params * DTYPE_BYTES[op.weight_dtype]
    return op.weight_bytes


def pinned_weights(ops: list[Op], p: SystolicParams) -> dict[str, bool]:
    """Op id -> its weights stay resident in the scratchpad (ops of each chip in order,
    while they fit ``pin_fraction`` of it; all of a chip's experts, touched or not).
    Embedding tables stay in HBM (a step gathers only a few rows)."""
    budget = p.scratchpad.bytes * p.mapping.pin_fraction
    used: dict[int, float] = {}
    out: dict[str, bool] = {}
    for op in ops:
        held = held_weight_bytes(op)
        if op.kind not in PINNABLE or held <= 0:
            continue
        have = used.get(op.stage, 0.0)
        if have + held <= budget:
            used[op.stage] = have + held
            out[op.id] = True
    return out


class _SystolicState:
    """What lowering carries from op to op: each stage's last array pass, last stream DMA and
    next DMA engine (a rotation), and each op's end instructions (``out_of``). The
    pinned-weights set is fixed before the loop but differs between layers (a stage's first
    layers pin their weights, later ones stream them): a run's flags are in its snapshot, and
    so is the scratchpad its stages have left beside their pinned weights (activations that
    fit in half of it stay there). The weight bytes (meta) are not read by lowering.

    A run's frame is its first stage and where each of its stages' DMA rotation stands: a
    layer replays on other stages, from another first engine, with chips and engines
    renamed (compiler/replay.py)."""

    def __init__(self, lw: Lowerer) -> None:
        self.lw = lw
        self.engines = lw.p.dma.engines
        self.out_of: dict[str, list[int]] = {}
        self.last_array: dict[int, int] = {}
        self.last_stream: dict[int, int] = {}
        self.next_dma: dict[int, int] = {}

    def frame(self, run: list[Op]) -> tuple:
        return rotation_frame(run, self.next_dma)

    def snapshot(self, ref, run: list[Op], frame: tuple) -> tuple:
        base, first = frame
        per_stage = tuple(
            (
                ref(self.last_array.get(base + i, -1)),
                ref(self.last_stream.get(base + i, -1)),
                (self.next_dma.get(base + i, 0) - at) % self.engines,
                self.lw.free_bytes(base + i),
            )
            for i, at in enumerate(first)
        )
        return per_stage, tuple(bool(self.lw.pinned.get(op.id)) for op in run)

    def restore(self, snap: tuple, frame: tuple) -> None:
        base, first = frame
        for i, ((array, stream, turned, _), at) in enumerate(zip(snap[0], first, strict=True)):
            if array >= 0:
                self.last_array[base + i] = array
            if stream >= 0:
                self.last_stream[base + i] = stream
            self.next_dma[base + i] = (at + turned) % self.engines

    def op_state(self, op: str, ref) -> tuple:
        return tuple(ref(i) for i in self.out_of[op])

    def set_op_state(self, op: str, state: tuple) -> None:
        self.out_of[op] = list(state)

    def relative_name(self, name: str, frame: tuple) -> str:
        return rotated_name(name, frame, -1, "dma", self.engines)

    def absolute_name(self, name: str, frame: tuple) -> str:
        return rotated_name(name, frame, 1, "dma", self.engines)


class Lowerer:
    """Emits one micro-batch's trip through every pipeline stage."""

    def __init__(self, g: nx.DiGraph, plan: Plan, p: SystolicParams, sc: Scenario) -> None:
        self.g, self.plan, self.p, self.sc = g, plan, p, sc
        self.b = StreamBuilder(OPCODES)
        mb = plan.micro_batch or sc.batch
        self.f = mb / sc.batch  # share of the batch in one micro-batch
        self.ops = ops_in_order(g)
        self.pinned = pinned_weights(self.ops, p)
        self.pinned_bytes: dict[int, float] = {}
        self.weight_bytes: dict[int, float] = {}
        for op in self.ops:
            held = held_weight_bytes(op)
            self.weight_bytes[op.stage] = self.weight_bytes.get(op.stage, 0.0) + held
            if self.pinned.get(op.id):
                self.pinned_bytes[op.stage] = self.pinned_bytes.get(op.stage, 0.0) + held
        self.state = _SystolicState(self)
        self.out_of = self.state.out_of
        self.last_array = self.state.last_array  # stage -> its last array pass (prefetch)
        self.last_stream = self.state.last_stream  # stage -> its last stream DMA (in order)
        self.next_dma = self.state.next_dma  # stage -> its next DMA engine (round robin)
        self.hbm_bw = hbm_bytes_per_cycle(p)

    # ---- helpers ----------------------------------------------------------------------------
    def free_bytes(self, stage: int) -> float:
        """Scratchpad not taken by pinned weights."""
        return self.p.scratchpad.bytes - self.pinned_bytes.get(stage, 0.0)

    def rows(self, n: int) -> int:
        """Rows of one micro-batch out of ``n`` rows for the whole batch."""
        return max(1, math.ceil(n * self.f - 1e-9))

    def inputs(self, op: Op) -> list[int]:
        return [i for pred in self.g.predecessors(op.id) for i in self.out_of[pred]]

    def emit(
        self, opcode: str, unit: str, op: Op, deps=(), lagged=(), sram=0.0, hbm=0.0, **kw
    ) -> int:
        s = op.stage
        res = {}
        if hbm > 0:
            res[f"chip{s}.hbm"] = hbm
        if sram > 0:
            res[f"chip{s}.sram"] = sram
        return self.b.add(
            opcode,
            unit=f"chip{s}.{unit}",
            op=op.id,
            chip=s,
            layer=op.layer,
            deps=list(deps),
            lagged=list(lagged),
            resources=res,
            offchip_bytes=hbm,
            onchip_bytes=sram,
            **kw,
        )

    def dma_unit(self, stage: int) -> str:
        i = self.next_dma.get(stage, 0)
        self.next_dma[stage] = (i + 1) % self.p.dma.engines
        return f"dma{i}"

    def prefetch_window(self, stage: int) -> list[tuple[int, int, int]]:
        """A stream may start once the previous array pass of its chip has started (one op
        of prefetch) and the previous stream has moved its bytes (the DMA queue is in order)."""
        j, k = self.last_array.get(stage, -1), self.last_stream.get(stage, -1)
        return [(j, START_START, 0)] * (j >= 0) + [(k, END_START, 0)] * (k >= 0)

    def stream(
        self, opcode: str, op: Op, nbytes: float, deps, descriptors: int, first_bytes: float, **kw
    ) -> tuple[int, int]:
        """A double-buffered stream of ``nbytes`` from HBM in ``descriptors`` blocks: the
        first block's DMA (the consumer starts once it has landed), then the rest's DMA
        right behind it (-1 when one block holds everything)."""
        s = op.stage
        first_bytes = min(first_bytes, nbytes)
        first = self.emit(
            opcode,
            self.dma_unit(s),
            op,
            deps=deps,
            lagged=self.prefetch_window(s),
            hbm=first_bytes,
            sram=first_bytes,
            n=1,
            **kw,
        )
        rest = nbytes - first_bytes
        self.last_stream[s] = first
        if descriptors <= 1 or rest <= 0:
            return first, -1
        transfer = self.p.dma.issue_cycles + math.ceil(first_bytes / self.hbm_bw)
        tail = self.emit(
            opcode,
            self.dma_unit(s),
            op,
            lagged=[(first, START_START, transfer)],
            hbm=rest,
            sram=rest,
            n=descriptors - 1,
            **kw,
        )
        self.last_stream[s] = tail
        return first, tail

    def join(self, op: Op, unit: str, last: int, tail: int, last_work: int) -> int:
        """The op is done when its last pass is, and not before the stream's last block has
        landed and been worked on (``last_work`` cycles): the end of a double-buffered
        pipeline, max(first block + work, last block + its work)."""
        if tail < 0:
            return last
        return self.emit("join", unit, op, deps=[last], lagged=[(tail, END_START, last_work)])

    def acts_fit(self, op: Op, nbytes: float) -> bool:
        return nbytes <= self.free_bytes(op.stage) / 2

    # ---- ops ----------------------------------------------------------------------------------
    def lower(self) -> InstructionStream:
        """Every op in graph order; a decoder layer identical to an earlier one replays its
        instructions (archsim/compiler/replay.py)."""

        def lower_one(op: Op) -> None:
            self.out_of[op.id] = self.lower_op(op)

        LayerReplay(self.b, self.g, self.state).lower(self.ops, lower_one)
        self.b.meta.update(
            family="matx-like",
            pinned_bytes_per_stage=",".join(
                f"{self.pinned_bytes.get(s, 0.0):.17g}" for s in range(self.plan.pp)
            ),
            weight_bytes_per_stage=",".join(
                f"{self.weight_bytes.get(s, 0.0):.17g}" for s in range(self.plan.pp)
            ),
        )
        return self.b.build()

    def lower_op(self, op: Op) -> list[int]:
        kind = op.kind
        if kind in (OpKind.MATMUL, OpKind.BMM):
            return self.gemm(op)
        if kind == OpKind.ATTENTION:
            return self.attention(op)
        if kind == OpKind.EMBEDDING:
            rows = self.rows(op.dim("m"))
            nbytes = op.weight_bytes * self.f
            i = self.emit(
                "dma.gather",
                self.dma_unit(op.stage),
                op,
                deps=self.inputs(op),
                hbm=nbytes,
                sram=nbytes,
                m=rows,
                n=rows,
            )
            return [i]
        if kind == OpKind.ALL_REDUCE:
            return [
                self.emit(
                    "allreduce",
                    "link",
                    op,
                    deps=self.inputs(op),
                    g=op.group,
                    link_bytes=op.link_bytes * self.f,
                )
            ]
        if kind == OpKind.SEND_RECV:
            return [
                self.emit(
                    "send", "link", op, deps=self.inputs(op), link_bytes=op.link_bytes * self.f
                )
            ]
        if kind == OpKind.ROUTER:
            return self.router(op)
        if kind == OpKind.EXPERT_FFN:
            return self.expert_ffn(op)
        if kind == OpKind.ALL_TO_ALL:
            return self.all_to_all(op)
        if kind == OpKind.MLA_ATTENTION:
            return self.mla_attention(op)
        return self.vector(op)

    def vector(self, op: Op) -> list[int]:
        """Norm, softmax, activation, rope, residual: one pass of the vector units over the
        op's output elements; spilled activations stream from and back to HBM, and so do a
        norm's weights when they are not pinned."""
        if op.kind == OpKind.NORM:
            name = "layernorm" if op.dim("layernorm") else "rmsnorm"
        elif op.kind == OpKind.ACTIVATION:
            name = "silu_mul" if op.dim("gated") else "gelu"
        else:
            name = op.kind.value
        ops, depth = VECTOR_WORK[name]
        elements = self.rows(op.dim("m")) * op.dim("n")
        acts = (op.act_in_bytes + op.act_out_bytes) * self.f
        weights = 0.0 if self.pinned.get(op.id) else op.weight_bytes
        return [
            self.vector_pass(op, self.inputs(op), elements, ops, depth, acts, op.weight_bytes,
                             weights)
        ]  # fmt: skip

    def vector_pass(
        self, op: Op, deps, elements: int, ops: int, depth: int, acts: float,
        weights: float = 0.0, streamed_weights: float = 0.0,
    ) -> int:  # fmt: skip
        """One pass of the vector units over ``elements`` elements (``ops`` element ops each,
        ``depth`` dependent), reading and writing ``acts`` bytes of activations and
        ``weights`` bytes of weights in the scratchpad; activations that do not fit and
        ``streamed_weights`` stream from and back to HBM in double-buffered blocks."""
        moved = acts + weights
        a_res = self.acts_fit(op, acts)
        spill = (0.0 if a_res else acts) + streamed_weights
        tail, last_work = -1, 0
        if spill > 0:  # weights alone need not wait for the activations
            block = self.free_bytes(op.stage) / 4  # double-buffered input and output blocks
            blocks = max(1, math.ceil(spill / block))
            last_work = math.ceil(elements * ops / vector_elements_per_cycle(self.p) / blocks)
            first, tail = self.stream(
                "dma.spill", op, spill, [] if a_res else deps, blocks, spill / blocks
            )
            deps = [*deps, first]
        i = self.emit("vector", "vector", op, deps=deps, sram=moved, m=elements, n=ops, k=depth)
        return self.join(op, "vector", i, tail, last_work)

    def gemm(self, op: Op) -> list[int]:
        bmm = op.kind == OpKind.BMM
        g = self.rows(op.dim("batch")) if bmm else 1
        m = op.dim("m") if bmm else self.rows(op.dim("m"))
        wdt = op.act_dtype if bmm else op.weight_dtype
        acts = (op.act_in_bytes + op.act_out_bytes) * self.f  # bmm: both operands are acts
        w_res = None if bmm else bool(self.pinned.get(op.id))
        flops = op.flops * self.f
        return [
            self.array_gemm(op, self.inputs(op), m, op.dim("n"), op.dim("k"), g, wdt, acts,
                            w_res, flops)
        ]  # fmt: skip

    def array_gemm(
        self, op: Op, deps, m: int, n: int, k: int, g: int, wdt: str, acts: float,
        w_res: bool | None, flops: float,
    ) -> int:  # fmt: skip
        """``g`` GEMMs [m, k] @ [k, n] with ``wdt`` weights (or a second activation
        operand: ``w_res`` None, resident when the activations are) on the arrays, as the
        mapper maps them; the operands that live in HBM stream in double-buffered tiles.
        ``acts``: activation bytes the GEMMs read and write. Returns the op's end."""
        p = self.p
        mode = gemm_mode(p, wdt, op.act_dtype)
        wb, ab = DTYPE_BYTES[wdt], DTYPE_BYTES[op.act_dtype]
        a_res = self.acts_fit(op, acts)
        w_res = a_res if w_res is None else w_res
        free = self.free_bytes(op.stage)
        budget = free / 2 if a_res else free
        mp = map_gemm(p, m, n, k, g, mode, wb, ab, float(ELEM_BYTES), w_res, a_res, budget)
        tail, last_work = -1, 0
        arr = mp.array
        if mp.streams:
            order = "dma.mnk" if mp.loop_order == "mnk" else "dma.nmk"
            blocks = max(1, -(-m // mp.tile_m) * -(-n // mp.tile_n) * -(-k // mp.tile_k) * g)
            last_work = math.ceil(arr.cycles / blocks)
            first, tail = self.stream(
                order,
                op,
                mp.hbm_bytes,
                [] if a_res else deps,
                mp.descriptors,
                mp.fill_bytes,
                m=mp.tile_m,
                k=mp.tile_k,
                g=mp.tile_n,
            )
            deps = [*deps, first]
        i = self.emit(
            gemm_opcode(arr.dataflow, arr.split),
            "arrays",
            op,
            deps=deps,
            sram=arr.sram_bytes,
            m=m,
            n=n,
            k=k,
            g=g,
            h=mode,
            flops=flops,
            aux=WEIGHTS_RESIDENT * int(w_res) + ACTS_RESIDENT * int(a_res),
        )
        self.last_array[op.stage] = i
        return self.join(op, "arrays", i, tail, last_work)

    def kv_append(self, op: Op, deps, write: float, rows: int, seqs: int) -> None:
        """The step's new K, V (or latents) leave for HBM beside the computation (no one
        waits for them)."""
        if write > 0:
            self.emit(
                "dma.kv_write",
                self.dma_unit(op.stage),
                op,
                deps=deps,
                hbm=write,
                sram=write,
                m=rows,
                n=seqs,
            )

    def attention(self, op: Op) -> list[int]:
        """The new K, V appended to the cache in HBM; K and V stream in blocks (decode: the
        cache is in HBM; prefill: from the scratchpad when this step's K, V fit there); per
        (sequence, KV head) the arrays compute Q K^T, the vector units the softmax (one block
        behind), the arrays P V."""
        b = self.rows(op.dim("batch"))
        heads, kvh, d = op.dim("heads"), op.dim("kv_heads"), op.dim("head_dim")
        q, kv = op.dim("q_len"), op.dim("kv_len")
        pairs = q * (kv - q) + q * (q + 1) / 2 if op.dim("causal") else q * kv
        kv_eff = max(1, math.ceil(pairs / q - 1e-9))  # keys per query on average
        q_rows = q * (heads // kvh)  # queries that share one KV head
        read = op.kv_read_bytes * self.f
        deps = self.inputs(op)
        self.kv_append(op, deps, op.kv_write_bytes * self.f, b * q, b)
        from_hbm = q == 1 or not self.acts_fit(op, read)
        att = self.attend(op, deps, b * kvh, q_rows, kv_eff, d, d, read, from_hbm,
                          op.weight_dtype, op.flops * self.f, 0.5)  # fmt: skip
        return [att]

    def attend(
        self, op: Op, deps, inst: int, q_rows: int, kv_eff: int, dk: int, dv: int,
        read: float, from_hbm: bool, kv_dtype: str, flops: float, qk_share: float,
        token_elems: int = 0,
    ) -> int:  # fmt: skip
        """``inst`` attention instances of ``q_rows`` query rows over ``kv_eff`` keys: the
        cache (``read`` bytes) streams in blocks from HBM (``from_hbm``) or is in the
        scratchpad; the arrays compute Q K^T ([q_rows, dk] x [dk, kv]), the vector units the
        softmax one block behind, the arrays P V ([q_rows, kv] x [kv, dv]). ``qk_share``:
        the share of ``flops`` in Q K^T; ``token_elems``: cached elements per token and
        instance (0: K and V, 2 dk)."""
        p = self.p
        kvb, ab = DTYPE_BYTES[kv_dtype], DTYPE_BYTES[op.act_dtype]
        mode = gemm_mode(p, kv_dtype, op.act_dtype)
        free = self.free_bytes(op.stage)
        mp: AttentionMapping = map_attention(
            p, q_rows, kv_eff, dk, inst, mode, ab, kvb, from_hbm, free / 2, dv=dv,
            token_elems=token_elems,
        )  # fmt: skip
        blocks = max(1, math.ceil(kv_eff / mp.block_tokens))
        tail, last_work = -1, math.ceil((mp.qk.cycles + mp.pv.cycles) / blocks)
        if from_hbm:
            first, tail = self.stream(
                "dma.kv_read",
                op,
                read,
                [],
                mp.descriptors,
                mp.fill_bytes,
                m=mp.block_tokens,
                k=dk,
                g=inst,
            )
            deps = [*deps, first]
        qk = self.emit(
            gemm_opcode(mp.qk.dataflow, mp.qk.split),
            "arrays",
            op,
            deps=deps,
            sram=mp.qk.sram_bytes,
            m=q_rows,
            n=kv_eff,
            k=dk,
            g=inst,
            h=mode,
            flops=flops * qk_share,
        )
        scores = inst * q_rows * kv_eff
        ops, depth = VECTOR_WORK["softmax"]
        qk_block = math.ceil(mp.qk.cycles / blocks)
        sm = self.emit(
            "vector",
            "vector",
            op,
            lagged=[(qk, START_START, qk_block)],
            sram=scores * (ACC_BYTES + ab),
            m=scores,
            n=ops,
            k=depth,
        )
        sm_block = math.ceil((scores * ops / vector_elements_per_cycle(p)) / blocks)
        pv = self.emit(
            gemm_opcode(mp.pv.dataflow, mp.pv.split),
            "arrays",
            op,
            lagged=[(sm, START_START, sm_block)],
            sram=mp.pv.sram_bytes,
            m=q_rows,
            n=dv,
            k=kv_eff,
            g=inst,
            h=mode,
            flops=flops * (1.0 - qk_share),
        )
        self.last_array[op.stage] = pv
        return self.join(op, "arrays", pv, tail, last_work)

    # ---- mixture of experts and MLA -----------------------------------------------------------
    def router(self, op: Op) -> list[int]:
        """The gate GEMM [tokens, hidden] @ [hidden, experts] on the arrays, then the scores
        (softmax or sigmoid) and the top-k on the vector units: k max-selections over each
        token's experts (a compare-select and a mask per element each)."""
        t, experts, h = self.rows(op.dim("m")), op.dim("n"), op.dim("k")
        ab, k = DTYPE_BYTES[op.act_dtype], op.dim("topk")
        gemm = self.array_gemm(
            op, self.inputs(op), t, experts, h, 1, op.weight_dtype,
            t * (h * ab + experts * ELEM_BYTES), bool(self.pinned.get(op.id)), op.flops * self.f,
        )  # fmt: skip
        ops, depth = VECTOR_WORK["softmax"]
        scores = t * experts
        acts = scores * ACC_BYTES + op.act_out_bytes * self.f
        return [self.vector_pass(op, [gemm], scores, ops + 2 * k, depth + k, acts)]

    def expert_ffn(self, op: Op) -> list[int]:
        """The routed experts of this chip as grouped GEMMs: the token-expert pairs gathered
        into expert order (a vector pass over their hidden states), gate/up over the experts
        the micro-batch touches (``g``: the expected count, rounded; ``m``: the mean rows per
        touched expert), SiLU-and-multiply, down, and each token's outputs scaled by their
        gates and summed (a vector pass). Pinned experts stay in the scratchpad (all of
        them: the router picks at run time); streamed ones bring only the touched experts'
        weights from HBM."""
        load = op.experts.with_tokens(self.rows(op.dim("tokens")))
        rows = load.routed()
        h, width, mats = op.dim("n"), op.dim("k"), 3 if op.dim("gated") else 2
        up = (mats - 1) * width
        active = max(1, round(load.active()))
        m = max(1, math.ceil(rows / active - 1e-9))
        pairs = max(1, math.ceil(rows - 1e-9))
        ab, f = DTYPE_BYTES[op.act_dtype], self.f
        flops, w_res = op.flops * f, bool(self.pinned.get(op.id))
        gather = self.vector_pass(op, self.inputs(op), pairs * h, 1, 1, 2 * pairs * h * ab)
        gate_up = self.array_gemm(
            op, [gather], m, up, h, active, op.weight_dtype,
            pairs * (h * ab + up * ELEM_BYTES), w_res, flops * (mats - 1) / mats,
        )  # fmt: skip
        ops, depth = VECTOR_WORK["silu_mul" if op.dim("gated") else "gelu"]
        act = self.vector_pass(op, [gate_up], pairs * width, ops, depth,
                               pairs * (up + width) * ELEM_BYTES)  # fmt: skip
        down = self.array_gemm(
            op, [act], m, h, width, active, op.weight_dtype,
            pairs * (width + h) * ELEM_BYTES, w_res, flops / mats,
        )  # fmt: skip
        out = pairs * h * ELEM_BYTES + op.act_out_bytes * f
        return [self.vector_pass(op, [down], pairs * h, 2, 2, out)]

    def all_to_all(self, op: Op) -> list[int]:
        """An MoE dispatch or combine. Between pipeline stages (expert slices packed onto
        stages, ``dst_stage``): a transfer to that stage's chip on the link the destination
        picks (a chip's links carry its transfers to several stages at once). Inside an
        expert-parallel group: every chip sends a share to each peer; the all-gather and
        reduce-scatter around an expert-parallel block move the whole [tokens, hidden]
        tensor as ring or one-shot collectives (``timing.alltoall_cycles``)."""
        nbytes = op.link_bytes * self.f
        deps = self.inputs(op)
        if "dst_stage" in op.shape:
            port = (op.dim("dst_stage") - op.stage) % self.p.links.count
            return [self.emit("send", f"link{port}", op, deps=deps, link_bytes=nbytes)]
        sent, received, peers = op.link_bytes, float(op.dim("recv_bytes")), max(1, op.group - 1)
        pattern = op.dim("pattern")
        if pattern == A2A_ALL_GATHER:  # the gathered tensor: what came in and the own share
            size = received + sent / peers
        elif pattern == A2A_REDUCE_SCATTER:
            size = sent + received / peers
        else:
            size = max(sent, received)
        return [
            self.emit("alltoall", "link", op, deps=deps, g=op.group, m=pattern,
                      k=math.ceil(size * self.f - 1e-9), link_bytes=nbytes)
        ]  # fmt: skip

    def mla_attention(self, op: Op) -> list[int]:
        """MLA. The step's latents are appended to the cache in HBM. Decode (absorbed):
        q_nope @ W^UK per head (``heads`` GEMMs [tokens, nope] @ [nope, latent]), attention
        over the latent cache streamed from HBM, every local head a query row of one
        instance per sequence (scores over latent + rope dims, P @ latent), then @ W^UV per
        head. Prefill: kv_b_proj expands every position's latent into K_nope and V (one GEMM;
        the result spills to HBM when it does not fit), then causal attention per (sequence,
        head) over K = [K_nope, rope key] and V."""
        b = self.rows(op.dim("batch"))
        heads, q, kv = op.dim("heads"), op.dim("q_len"), op.dim("kv_len")
        lat, rope, nope, v = op.dim("latent"), op.dim("rope"), op.dim("nope"), op.dim("v_dim")
        t, f, ab = b * q, self.f, DTYPE_BYTES[op.act_dtype]
        w_res, wdt = bool(self.pinned.get(op.id)), op.weight_dtype
        flops = op.flops * f
        deps = self.inputs(op)
        self.kv_append(op, deps, op.kv_write_bytes * f, t, b)
        if op.dim("absorbed"):
            f_uk, f_uv = 2.0 * t * heads * nope * lat, 2.0 * t * heads * lat * v
            q_acts = t * heads * (nope * ab + lat * ELEM_BYTES)
            uk = self.array_gemm(op, deps, t, lat, nope, heads, wdt, q_acts, w_res, f_uk)
            att = self.attend(
                op, [uk], b, heads * q, kv, lat + rope, lat, op.kv_read_bytes * f, True,
                self.sc.precision.kv, flops - f_uk - f_uv, (lat + rope) / (2 * lat + rope),
                lat + rope,
            )  # fmt: skip
            uv = self.array_gemm(op, [att], t, v, lat, heads, wdt,
                                 t * heads * (lat + v) * ELEM_BYTES, w_res, f_uv)  # fmt: skip
            return [uv]
        rows = b * kv  # positions whose latents are expanded
        f_exp = 2.0 * rows * lat * heads * (nope + v)
        kvb = DTYPE_BYTES[self.sc.precision.kv]
        expand = self.array_gemm(
            op, deps, rows, heads * (nope + v), lat, 1, wdt,
            rows * (lat * kvb + heads * (nope + v) * ELEM_BYTES), w_res, f_exp,
        )  # fmt: skip
        expanded = rows * heads * (nope + rope + v) * ELEM_BYTES  # K and V of every head
        pairs = q * (kv - q) + q * (q + 1) / 2 if op.dim("causal") else q * kv
        kv_eff = max(1, math.ceil(pairs / q - 1e-9))
        att = self.attend(
            op, [expand], b * heads, q, kv_eff, nope + rope, v, expanded,
            not self.acts_fit(op, expanded), "bf16", flops - f_exp,
            (nope + rope) / (nope + rope + v), nope + rope + v,
        )  # fmt: skip
        return [att]


def lower(g: nx.DiGraph, plan: Plan, p: SystolicParams, sc: Scenario) -> InstructionStream:
    return Lowerer(g, plan, p, sc).lower()
