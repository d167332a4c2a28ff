"""Lowering for dmatrix-like: each op of the partitioned graph -> DIMC passes, SIMD passes,
LPDDR transfers and die-to-die / card-to-card exchanges.

Grain: one instruction per (op, card, engine) — the DIMC cores of a card multiplying one op's
tiles (every chiplet in step: the stream times the busiest core), one SIMD pass, one LPDDR
chunk, one collective. The stream holds card 0 of each pipeline stage (the cards of a tensor
group are symmetric); units are named per card: ``card3.dimc``, ``card3.simd``,
``card3.lpddr`` (the LPDDR read queue), ``card3.lpddr_wr`` (K/V stores), ``card3.d2d``,
``card3.link``, ``card3.write`` (array writes, when they do not block the MACs),
``card3.ctrl`` (fixed latencies).

Inside a card the compiler splits every op over its chiplets as Megatron splits it over
chips (shared/reference/dmatrix-dimc.md §7: tensor parallel over 4 -> 8 -> 16 chiplets):
column-parallel projections by output columns, row-parallel ones by K with a die-to-die
all-reduce of the partial sums, attention by (sequence, KV head), and inside a chiplet the
tiles are spread evenly over its DIMC cores. Weights a card cannot hold stream from its
LPDDR through a double buffer in the arrays (``Lowerer.stream_in``).
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass

import networkx as nx

from archsim.compiler.replay import LayerReplay, run_base
from archsim.core.errors import UnsupportedOpError
from archsim.core.isa import START_START, InstructionStream, StreamBuilder
from archsim.core.plan import Plan
from archsim.families.imc.params import ImcParams
from archsim.families.imc.timing import BRIDGE, LINK_KINDS, NIC, OPCODES, PCIE
from archsim.graph.build import ops_in_order
from archsim.graph.ops import Op, OpKind
from archsim.graph.scenario import Precision, Scenario

ACC_BYTES = 2  # partial sums and outputs leave the cores as FP16 (DMXC BASIC config)
# names of the block format each storage dtype maps to (the bits come from the config)
FORMAT_NAMES = {"int8": "MXINT8", "int4": "MXINT4", "bf16": "BFP16", "fp16": "BFP16",
                "fp8": "MXFP8", "fp32": "FP32"}  # fmt: skip


@dataclass(frozen=True)
class Formats:
    """Block formats of one precision on this machine. ``in_bits``: width the DIMC inputs are
    fed at: the activation's, but never narrower than the stored operand's (the vendor
    publishes only the paired rates MXINT8 x MXINT8 and MXINT4 x MXINT4)."""

    weights: str  # format names, e.g. MXINT8
    inputs: str
    kv: str
    w_bits: int
    in_bits: int
    kv_bits: int
    kv_in_bits: int  # queries against K/V tiles
    w_store: float  # bytes per weight, the block's scale included
    kv_store: float  # bytes per K/V element, the block's scale included


def format_bits(p: ImcParams, dtype: str) -> int:
    return int(getattr(p.formats, f"{dtype}_bits"))


def block_formats(p: ImcParams, prec: Precision) -> Formats:
    """The formats ``prec`` maps to; a dtype with no format here is refused in one line."""
    fm = p.formats
    for role, dtype in (("weights", prec.weights), ("activations", prec.activations),
                        ("KV cache", prec.kv)):  # fmt: skip
        if format_bits(p, dtype) == 0:
            have = sorted({FORMAT_NAMES[d] for d in FORMAT_NAMES if format_bits(p, d) > 0})
            raise UnsupportedOpError(
                f"{p.name} cannot run {dtype} {role}: it has no {FORMAT_NAMES[dtype]} format "
                f"(it multiplies {', '.join(have)}); use --precision int8, int4 or bf16"
            )
    w, a, kv = (format_bits(p, d) for d in (prec.weights, prec.activations, prec.kv))

    def store(bits: int) -> float:
        return (bits + fm.scale_bits / fm.block_elements) / 8.0

    return Formats(
        weights=FORMAT_NAMES[prec.weights], inputs=FORMAT_NAMES[prec.activations],
        kv=FORMAT_NAMES[prec.kv], w_bits=w, in_bits=max(a, w), kv_bits=kv,
        kv_in_bits=max(a, kv), w_store=store(w), kv_store=store(kv),
    )  # fmt: skip


def usable_sram_bytes(p: ImcParams) -> float:
    """SRAM of a card left for weights, KV and activations."""
    return p.card.sram_bytes * (1.0 - p.card.sram_reserved_fraction)


def stream_buffer_bytes(p: ImcParams) -> float:
    """SRAM a streaming card keeps as the double buffer its LPDDR weights pass through."""
    return usable_sram_bytes(p) * p.memory.stream_buffer_fraction


@dataclass(frozen=True)
class Layout:
    """How one matmul's [k, n] weights sit on a card: ``used`` chiplets, each holding
    ``kt`` x ``nt`` tiles spread over its cores (``per_core`` on the busiest), ``partials``
    partial sums per output element to add across cores, ``n_out`` outputs per chiplet."""

    used: int
    kt: int
    nt: int
    per_core: int
    partials: int
    n_out: int


def layout(k: int, n: int, row_split: bool, p: ImcParams) -> Layout:
    """Row-parallel ops split K over the chiplets, others N. A core holds consecutive K tiles
    of one column group, so it pre-adds them in its accumulator."""
    d, chiplets = p.dimc, p.card.chiplets
    kt, nt = math.ceil(k / d.tile_rows), math.ceil(n / d.tile_cols)
    if row_split:
        used = min(chiplets, kt)
        kt = math.ceil(kt / used)
    else:
        used = min(chiplets, nt)
        nt = math.ceil(nt / used)
    per_core = math.ceil(kt * nt / d.cores_per_chiplet)
    partials = math.ceil(kt / min(per_core, kt))
    n_out = n if row_split else min(n, nt * d.tile_cols)
    return Layout(used, kt, nt, per_core, partials, n_out)


def mla_layouts(op: Op) -> float:
    """Bytes of MLA's latent cache in the arrays per byte of the graph's cache: a DIMC tile
    sums along its rows, so the scores need the latents as K^T [latent + rope, tokens]
    tiles and P V needs them as V [tokens, latent] tiles: (2 latent + rope) / (latent +
    rope)."""
    lat, rope = op.dim("latent"), op.dim("rope")
    return (2 * lat + rope) / (lat + rope)


def passes(p: ImcParams, vectors: int, in_bits: int) -> int:
    """Sweeps of a tile that serve ``vectors`` inputs (reading A; 1 under reading B)."""
    d = p.dimc
    if d.touch_model == "in_place":
        return 1
    lanes = max(1, d.bit_products_per_cycle // (d.touch_bits_per_cycle * in_bits))
    if d.input_mode == "bit_serial":
        lanes *= in_bits
    return math.ceil(vectors / lanes)


class Lowerer:
    """Emits one micro-batch's trip through every pipeline stage."""

    def __init__(self, g: nx.DiGraph, plan: Plan, p: ImcParams, sc: Scenario) -> None:
        self.g, self.plan, self.p, self.sc = g, plan, p, sc
        self.b = StreamBuilder(OPCODES)
        self.mb = plan.micro_batch or sc.batch
        self.f = self.mb / sc.batch  # share of the batch in one micro-batch
        self.fm = block_formats(p, sc.precision)
        self.kv_factor = self.fm.kv_store / sc.precision.kv_bytes  # stored / graph KV bytes
        c, d = p.card, p.dimc
        self.chiplets = c.chiplets
        self.card_cores = c.chiplets * d.cores_per_chiplet
        self.resident = plan.extra.get("resident_fraction", [1.0] * plan.pp)
        self.kv_lpddr = p.memory.kv_tier == "lpddr"
        self.buffer = stream_buffer_bytes(p)
        self.chunk = self.buffer / 2  # double buffering
        self.write_unit = "write" if d.simultaneous_write else "dimc"
        self.steps = math.ceil(math.log2(max(2, p.simd.lanes_per_chiplet)))
        # the SIMD pass that adds and converts a DIMC op's outputs streams behind it: it
        # starts one SIMD latency after the op and ends one SIMD latency after its last output
        self.tail = p.simd.latency_cycles
        model = g.graph.get("model")
        self.whole_model = bool(g.graph.get("whole_model"))
        # what lowering carries from op to op (``_ImcState``; these dicts are its own)
        self.state = st = _ImcState(self, model.num_layers if model is not None else 0)
        self.n_layers, self.synced, self.out_of = st.n_layers, st.synced, st.out_of
        self.in_buffer, self.buffered = st.in_buffer, st.buffered  # stage -> chunks in flight

    # ---- helpers ----------------------------------------------------------------------------
    def emit(self, opcode: str, unit: str, op: Op, deps, **kw) -> int:
        s = op.stage
        return self.b.add(
            opcode, unit=f"card{s}.{unit}", op=op.id, chip=s, layer=op.layer, deps=deps, **kw
        )

    def rows(self, op: Op) -> int:
        return max(1, math.ceil(op.dim("m") * self.f - 1e-9))

    def simd(
        self,
        op: Op,
        deps,
        elems: float,
        fp: int,
        tr: int = 0,
        *,
        rows: float = 0,
        row_tr: int = 0,
        steps: int = 0,
        spread: bool = False,
        lagged=(),
    ) -> int:
        """One SIMD pass: ``fp`` ops and ``tr`` transcendentals per element, ``row_tr`` per
        row, a cross-lane reduction of ``steps`` levels. ``spread``: the elements are split
        over the chiplets (else every chiplet works on the whole tensor)."""
        share = self.chiplets if spread else 1
        return self.emit(
            "simd", "simd", op, deps, lagged=lagged, m=math.ceil(elems / share - 1e-9), n=fp,
            k=tr, g=row_tr, aux=math.ceil(rows / share - 1e-9), h=steps,
        )  # fmt: skip

    def dimc(
        self,
        op: Op,
        deps,
        vectors: int,
        tiles: int,
        w_bits: int,
        in_bits: int,
        tiles_card: float,
        flops: float,
        lagged=(),
    ) -> int:
        """The card's cores multiply their tiles (``tiles`` on the busiest core) by
        ``vectors`` input vectors; ``tiles_card`` tiles in all sweep the SRAM."""
        d = self.p.dimc
        tile_bytes = d.tile_rows * d.tile_cols * w_bits / 8.0
        touched = tiles_card * tile_bytes * passes(self.p, vectors, in_bits)
        return self.emit(
            "dimc", "dimc", op, deps, lagged=lagged, m=vectors, n=tiles, g=w_bits, h=in_bits,
            onchip_bytes=touched, flops=flops,
        )  # fmt: skip

    def bits_per_core(self, nbytes: float) -> int:
        return math.ceil(nbytes * 8 / self.card_cores - 1e-9)

    def stream_in(self, op: Op, nbytes: float) -> list[tuple[int, float]]:
        """Load ``nbytes`` from the card's LPDDR into the arrays in chunks of half the stream
        buffer; a chunk waits until the buffer has room, i.e. until the computes that used
        the oldest chunks have finished. Returns (instruction the compute waits for, bytes)
        per chunk; the caller hands each chunk's consumer back with :meth:`release`."""
        s = op.stage
        queue = self.in_buffer.setdefault(s, deque())
        count = max(1, math.ceil(nbytes / self.chunk - 1e-9))
        part = nbytes / count
        out = []
        for _ in range(count):
            wait = []
            while queue and self.buffered.get(s, 0.0) + part > self.buffer * (1 + 1e-12):
                done_bytes, consumer = queue.popleft()
                self.buffered[s] -= done_bytes
                wait.append(consumer)
            self.buffered[s] = self.buffered.get(s, 0.0) + part
            bits = self.bits_per_core(part)
            ld = self.emit(
                "load", "lpddr", op, wait, m=bits, offchip_bytes=part,
                resources={f"card{s}.lpddr": part},
            )  # fmt: skip
            if not self.p.dimc.simultaneous_write:  # the writes take the arrays from the MACs
                ld = self.emit("write", "dimc", op, [ld], m=bits, onchip_bytes=part)
            out.append((ld, part))
        return out

    def release(self, op: Op, nbytes: float, consumer: int) -> None:
        self.in_buffer[op.stage].append((nbytes, consumer))

    def sync(self, op: Op, deps: list[int]) -> list[int]:
        """The fixed cost of each decoder layer on each card, before its first op."""
        key = (op.stage, op.layer)
        if not 0 <= op.layer < self.n_layers or key in self.synced:
            return deps
        self.synced.add(key)
        return [self.emit("sync", "ctrl", op, deps)]

    # ---- ops --------------------------------------------------------------------------------
    def lower(self) -> StreamBuilder:
        """Every op in graph order; a decoder layer identical to an earlier one, lowered in
        the same state, replays its instructions (archsim/compiler/replay.py)."""
        LayerReplay(self.b, self.g, self.state).lower(ops_in_order(self.g), self.lower_one)
        return self.b

    def lower_one(self, op: Op) -> None:
        st = self.state
        deps = [i for pred in self.g.predecessors(op.id) for i in self.out_of[pred]]
        if not deps and self.whole_model:  # the token step starts on the host
            if st.step_sync is None:
                st.step_sync = self.emit("sync", "ctrl", op, [], m=1)
            deps = [st.step_sync]
        self.out_of[op.id] = self.lower_op(op, self.sync(op, deps))

    def lower_op(self, op: Op, deps: list[int]) -> list[int]:
        kind, rows = op.kind, self.rows(op)
        n = op.dim("n")
        if kind == OpKind.MATMUL:
            return [self.matmul(op, deps)]
        if kind == OpKind.ATTENTION:
            return self.attention(op, deps)
        if kind == OpKind.BMM:
            return [self.bmm(op, deps)]
        if kind == OpKind.NORM:  # square + accumulate, rsqrt per row, scale, gain (+ mean)
            fp = 7 if op.dim("layernorm") else 4
            return [self.simd(op, deps, rows * n, fp, rows=rows, row_tr=1, steps=self.steps)]
        if kind == OpKind.SOFTMAX:  # exp, row sum, reciprocal per row, scale
            return [self.simd(op, deps, rows * n, 2, 1, rows=rows, row_tr=1, steps=self.steps)]
        if kind == OpKind.ROPE:  # x cos + rot(x) sin on each chiplet's heads
            return [self.simd(op, deps, rows * n, 3, spread=True)]
        if kind == OpKind.ACTIVATION and op.dim("gated"):  # g / (1 + exp(-g)) * up
            return [self.simd(op, deps, rows * n, 3, 2, spread=True)]
        if kind == OpKind.ACTIVATION:  # gelu, tanh form
            return [self.simd(op, deps, rows * n, 5, 1, spread=True)]
        if kind == OpKind.RESIDUAL:  # every chiplet holds the whole sum after the all-reduce
            return [self.simd(op, deps, rows * n, 1)]
        if kind == OpKind.EMBEDDING:  # gather on the chiplet holding each row, then share it
            gather = self.simd(op, deps, rows * n, 1, spread=True)
            return [self.d2d(op, [gather], rows * n * ACC_BYTES, phases=1)]
        if kind == OpKind.ALL_REDUCE:
            return [self.card_all_reduce(op, deps)]
        if kind == OpKind.SEND_RECV:
            return [self.send(op, deps)]
        if kind == OpKind.ROUTER:
            return [self.router(op, deps)]
        if kind == OpKind.EXPERT_FFN:
            return [self.expert_ffn(op, deps)]
        if kind == OpKind.ALL_TO_ALL:
            return [self.all_to_all(op, deps)]
        if kind == OpKind.MLA_ATTENTION:
            return self.mla_attention(op, deps)
        raise UnsupportedOpError(f"dmatrix-like cannot lower {kind} ({op.id})")

    def matmul(self, op: Op, deps: list[int]) -> int:
        """[rows, k] @ [k, n] on the card's cores; weights resident, or in part streamed from
        LPDDR (the stage's ``resident_fraction``), then the cross-core adds and output
        conversion on the SIMD units, then (row-parallel) the die-to-die all-reduce."""
        row = op.tp_role == "row"
        return self.weight_gemm(
            op, deps, self.rows(op), op.dim("k"), op.dim("n"), row, op.flops * self.f,
            reduce=row and not op.dim("partial"),
        )  # fmt: skip

    def weight_gemm(
        self, op: Op, deps: list[int], vectors: int, k: int, n: int, row_split: bool,
        flops: float, *, copies: int = 1, reduce: bool = False, reduce_rows: int = 0,
        extra_ops: int = 0,
    ) -> int:  # fmt: skip
        """``copies`` weight matrices [k, n] (touched experts, heads) each multiplied by
        ``vectors`` input vectors on the card's cores, laid out as ``layout`` places one
        (row-parallel ops split K over the chiplets, others N) and spread evenly over the
        cores; the stage's non-resident share of their weights streams from LPDDR. Then
        the cross-core adds and output conversion on the SIMD units (``extra_ops`` more per
        output element), and, with ``reduce``, the die-to-die all-reduce of the K-split
        partial sums of ``reduce_rows`` rows (0: every vector of every copy)."""
        fm, cores = self.fm, self.p.dimc.cores_per_chiplet
        lay = layout(k, n, row_split, self.p)
        per_core = math.ceil(copies * lay.kt * lay.nt / cores)
        tiles_card = copies * lay.used * lay.kt * lay.nt
        matrix = copies * k * n * fm.w_store
        streamed = (1.0 - self.resident[op.stage]) * copies * k * n * fm.w_store
        chunks = self.stream_in(op, streamed) if streamed > 0 else []
        # tiles per core whose weights arrive from LPDDR (at least one if any do)
        on_streamed = min(per_core, max(1, round(per_core * streamed / matrix)))
        on_streamed = on_streamed if chunks else 0
        groups = [(None, per_core - on_streamed, 0.0)] if per_core > on_streamed else []
        for j, (ld, part) in enumerate(chunks):
            tiles = on_streamed // len(chunks) + (1 if j < on_streamed % len(chunks) else 0)
            groups.append((ld, tiles, part))
        computes = []
        for ld, tiles, part in groups:
            share = tiles / per_core
            i = self.dimc(
                op, deps + ([ld] if ld is not None else []), vectors, tiles, fm.w_bits,
                fm.in_bits, tiles_card * share, flops * share,
            )  # fmt: skip
            if ld is not None:
                self.release(op, part, i)
            computes.append(i)
        lag = self.tail
        # (partials - 1) adds per output element across cores, one conversion to FP16
        out = self.simd(
            op, [], copies * vectors * lay.n_out, lay.partials + extra_ops,
            lagged=[(i, START_START, lag) for i in computes],
        )  # fmt: skip
        if reduce and lay.used > 1:
            rows = reduce_rows or copies * vectors
            out = self.d2d(op, [out], rows * n * ACC_BYTES, phases=2, ranks=lay.used)
        return out

    def bmm(self, op: Op, deps: list[int]) -> int:
        """batch x ([m, k] @ [k, n]), both operands activations: the [k, n] operands are
        written into the arrays, then multiplied like weights."""
        fm, d = self.fm, self.p.dimc
        batch = max(1, op.dim("batch"))
        k, n = op.dim("k"), op.dim("n")
        rhs = batch * k * n * (fm.in_bits / 8.0) * self.f
        wr = self.emit("write", self.write_unit, op, deps, m=self.bits_per_core(rhs),
                       onchip_bytes=rhs)  # fmt: skip
        tiles = batch * math.ceil(k / d.tile_rows) * math.ceil(n / d.tile_cols)
        per_core = math.ceil(tiles / self.card_cores)
        vectors = self.rows(op)
        c = self.dimc(op, [wr], vectors, per_core, fm.in_bits, fm.in_bits, tiles,
                      op.flops * self.f)  # fmt: skip
        partials = math.ceil(math.ceil(k / d.tile_rows) / max(1, min(per_core, k)))
        lag = self.tail
        return self.simd(op, [], batch * vectors * n, max(1, partials), spread=True,
                         lagged=[(c, START_START, lag)])  # fmt: skip

    def attention(self, op: Op, deps: list[int]) -> list[int]:
        """softmax(Q K^T) V with the K/V cache in the arrays as block-format tiles (K^T [d, L]
        and V [L, d] per sequence and KV head; the query heads sharing a KV head are the input
        vectors), spread over every core of the card. The new token's K/V is appended first
        (an array write), or stored to LPDDR when the cache lives there — then the cache is
        streamed in, chunk by chunk, each chunk's sequences attended on their own."""
        d, f = self.p.dimc, self.f
        mb = max(1, math.ceil(op.dim("batch") * f - 1e-9))
        heads, kvh, hd = op.dim("heads"), op.dim("kv_heads"), op.dim("head_dim")
        q_len, kv_len = op.dim("q_len"), op.dim("kv_len")
        vectors = max(1, heads // kvh) * q_len
        frac = (q_len + 1) / (2.0 * kv_len) if op.dim("causal") else 1.0
        dt, lt = math.ceil(hd / d.tile_rows), math.ceil(kv_len / d.tile_rows)
        qk_tiles = mb * kvh * dt * math.ceil(kv_len / d.tile_cols) * frac
        pv_tiles = mb * kvh * lt * math.ceil(hd / d.tile_cols) * frac
        first = self.append_kv(op, deps, op.kv_write_bytes * f * self.kv_factor)
        cache = op.kv_read_bytes * f * self.kv_factor
        scores = mb * heads * q_len * kv_len * frac
        outputs = mb * heads * q_len * hd
        half = op.flops * f / 2
        return self.attend(op, first, vectors, qk_tiles, pv_tiles, dt, lt, scores, outputs,
                           mb * heads * q_len, cache, half, half)  # fmt: skip

    def append_kv(self, op: Op, deps: list[int], append: float) -> list[int]:
        """The step's new K/V (or latents) written into the arrays (the attention waits for
        them), or stored to LPDDR when the cache lives there (no one waits)."""
        first = list(deps)
        if append > 0 and self.kv_lpddr:
            lp = {f"card{op.stage}.lpddr": append}
            self.emit("store", "lpddr_wr", op, deps, m=self.bits_per_core(append),
                      offchip_bytes=append, resources=lp)  # fmt: skip
        elif append > 0:
            first = [self.emit("write", self.write_unit, op, deps,
                               m=self.bits_per_core(append), onchip_bytes=append)]  # fmt: skip
        return first

    def attend(
        self, op: Op, first: list[int], vectors: int, qk_tiles: float, pv_tiles: float,
        dt: int, lt: int, scores: float, outputs: float, rows: float, cache: float,
        flops_qk: float, flops_pv: float, streamed: bool = True,
    ) -> list[int]:  # fmt: skip
        """Q K^T over ``qk_tiles`` cached tiles, the softmax on the SIMD units, P V over
        ``pv_tiles``, each input a group of ``vectors`` query vectors; with the cache in
        LPDDR (``streamed``) its ``cache`` bytes come in chunk by chunk, each chunk's
        sequences attended on their own."""
        fm = self.fm
        lpddr = streamed and self.kv_lpddr and cache > 0
        groups = self.stream_in(op, cache) if lpddr else [(None, cache)]
        lag = self.tail
        outs = []
        for ld, part in groups:
            share = part / cache if cache > 0 else 1.0
            wait = first + ([ld] if ld is not None else [])
            qk_core = math.ceil(qk_tiles * share / self.card_cores - 1e-9)
            pv_core = math.ceil(pv_tiles * share / self.card_cores - 1e-9)
            qk = self.dimc(op, wait, vectors, qk_core, fm.kv_bits, fm.kv_in_bits,
                           qk_tiles * share, flops_qk * share)  # fmt: skip
            qk_partials = math.ceil(dt / max(1, min(qk_core, dt)))
            # the cross-core adds of Q K^T, exp, row sums, a reciprocal per row, the scale
            sm = self.simd(op, [qk], scores * share, 1 + qk_partials, 1,
                           rows=rows * share, row_tr=1, steps=self.steps,
                           spread=True)  # fmt: skip
            pv = self.dimc(op, [sm] + ([ld] if ld is not None else []), vectors, pv_core,
                           fm.kv_bits, fm.kv_in_bits, pv_tiles * share,
                           flops_pv * share)  # fmt: skip
            if ld is not None:
                self.release(op, part, pv)
            pv_partials = math.ceil(lt / max(1, min(pv_core, lt)))
            outs.append(self.simd(op, [], outputs * share, pv_partials, spread=True,
                                  lagged=[(pv, START_START, lag)]))  # fmt: skip
        return outs

    # ---- mixture of experts and MLA ---------------------------------------------------------
    def router(self, op: Op, deps: list[int]) -> int:
        """The gate GEMM [tokens, hidden] @ [hidden, experts] on the DIMC cores (its weights
        resident like any projection's), then the scores and the top-k on the SIMD lanes of
        the chiplets holding the experts' logits: exp (or sigmoid), a reciprocal per row, and
        k max-selections over each token's experts (a compare-select and a mask each)."""
        t, experts, k = self.rows(op), op.dim("n"), op.dim("topk")
        g = self.weight_gemm(op, deps, t, op.dim("k"), experts, False, op.flops * self.f)
        return self.simd(op, [g], t * experts, 2 + 2 * k, 1, rows=t, row_tr=1, steps=self.steps)

    def expert_ffn(self, op: Op, deps: list[int]) -> int:
        """The routed experts of this stage, every one resident in the arrays (the router
        picks at run time): each token's hidden state goes to the cores of its experts (a
        SIMD gather of the token-expert pairs), the touched experts' gate/up tiles pass over
        their rows (``copies``: the expected experts touched, rounded; ``vectors``: the mean
        rows per touched expert), SiLU-and-multiply, the down tiles (K split over the
        chiplets), each row scaled by its gate and summed into its token (two more SIMD ops
        per output), and the die-to-die all-reduce of the tokens' partial sums. Untouched
        experts' tiles stay idle; a streaming stage brings in only the touched experts' share
        it does not hold."""
        load = op.experts.with_tokens(max(1, math.ceil(op.dim("tokens") * self.f - 1e-9)))
        rows = load.routed()
        h, width, gated = op.dim("n"), op.dim("k"), op.dim("gated")
        up = (2 if gated else 1) * width
        active = max(1, round(load.active()))
        m = max(1, math.ceil(rows / active - 1e-9))
        pairs = max(1, math.ceil(rows - 1e-9))
        flops, share = op.flops * self.f, (1.0 / 3 if gated else 0.5)
        tokens = max(1, math.ceil(op.dim("out_rows") * self.f - 1e-9))
        gather = self.simd(op, deps, pairs * h, 1, spread=True)
        gate_up = self.weight_gemm(op, [gather], m, h, up, False, flops * (1 - share),
                                   copies=active)  # fmt: skip
        act = self.simd(op, [gate_up], pairs * width, 3, 2 if gated else 1, spread=True)
        return self.weight_gemm(op, [act], m, width, h, True, flops * share, copies=active,
                                reduce=True, reduce_rows=tokens, extra_ops=2)  # fmt: skip

    def all_to_all(self, op: Op, deps: list[int]) -> int:
        """An MoE dispatch into, or combine out of, an expert slice on another stage's card
        (packing puts each slice's experts on a stage): a transfer over the bridge, PCIe or
        the NIC as the two cards sit, like a send. Among the cards of one tensor group (no
        destination stage): each card's share to the others over the group's link."""
        if "dst_stage" in op.shape:
            return self.send(op, deps)
        g = max(2, op.group)
        kind = self.link_kind(0, g - 1)
        nbytes = max(op.link_bytes, float(op.dim("recv_bytes"))) * self.f
        return self.emit(
            "link", "link", op, deps, m=1, n=kind, link_bytes=op.link_bytes * self.f,
            resources={f"card{op.stage}.{LINK_KINDS[kind]}": nbytes},
        )  # fmt: skip

    def mla_attention(self, op: Op, deps: list[int]) -> list[int]:
        """MLA with the latent cache in the arrays. A DIMC tile sums along its rows, so the
        latents are kept twice, as K^T [latent + rope, L] tiles for the scores and as V
        [L, latent] tiles for P V (``Sizer`` counts both); the step's latents are written in
        both layouts. Decode (absorbed): q_nope @ W^UK per head (the heads' [nope, latent]
        matrices resident like weights), the scores with every local head a query vector of
        one instance per sequence, the softmax, P @ latent, then @ W^UV per head. Prefill:
        kv_b_proj expands every position's latent into K_nope and V (resident weights), the
        expanded K and V are written into the arrays a head group at a time, then causal
        attention per (sequence, head) as for dense models."""
        d, f = self.p.dimc, self.f
        mb = max(1, math.ceil(op.dim("batch") * f - 1e-9))
        heads, q_len, kv_len = op.dim("heads"), op.dim("q_len"), op.dim("kv_len")
        lat, rope, nope, v = op.dim("latent"), op.dim("rope"), op.dim("nope"), op.dim("v_dim")
        t, flops = mb * q_len, op.flops * f
        both = mla_layouts(op)
        first = self.append_kv(op, deps, op.kv_write_bytes * f * self.kv_factor * both)
        lt = math.ceil(kv_len / d.tile_rows)
        if op.dim("absorbed"):
            f_uk, f_uv = 2.0 * t * heads * nope * lat, 2.0 * t * heads * lat * v
            f_att = flops - f_uk - f_uv
            qk_dim = lat + rope
            uk = self.weight_gemm(op, first, t, nope, lat, False, f_uk, copies=heads)
            dt = math.ceil(qk_dim / d.tile_rows)
            qk_tiles = mb * dt * math.ceil(kv_len / d.tile_cols)
            pv_tiles = mb * lt * math.ceil(lat / d.tile_cols)
            cache = op.kv_read_bytes * f * self.kv_factor * both
            qk_share = qk_dim / (qk_dim + lat)
            att = self.attend(
                op, [uk], heads * q_len, qk_tiles, pv_tiles, dt, lt, mb * heads * q_len * kv_len,
                mb * heads * q_len * lat, mb * heads * q_len, cache, f_att * qk_share,
                f_att * (1 - qk_share),
            )  # fmt: skip
            return [self.weight_gemm(op, att, t, lat, v, False, f_uv, copies=heads)]
        rows = mb * kv_len
        f_exp = 2.0 * rows * lat * heads * (nope + v)
        f_att = flops - f_exp
        expand = self.weight_gemm(op, first, rows, lat, heads * (nope + v), False, f_exp)
        qk_dim = nope + rope
        expanded = rows * heads * (qk_dim + v) * self.fm.in_bits / 8.0
        wr = self.emit("write", self.write_unit, op, [expand], m=self.bits_per_core(expanded),
                       onchip_bytes=expanded)  # fmt: skip
        frac = (q_len + 1) / (2.0 * kv_len) if op.dim("causal") else 1.0
        dt = math.ceil(qk_dim / d.tile_rows)
        qk_tiles = mb * heads * dt * math.ceil(kv_len / d.tile_cols) * frac
        pv_tiles = mb * heads * lt * math.ceil(v / d.tile_cols) * frac
        qk_share = qk_dim / (qk_dim + v)
        return self.attend(
            op, [wr], q_len, qk_tiles, pv_tiles, dt, lt, mb * heads * q_len * kv_len * frac,
            mb * heads * q_len * v, mb * heads * q_len, 0.0, f_att * qk_share,
            f_att * (1 - qk_share), streamed=False,
        )  # fmt: skip

    # ---- exchanges --------------------------------------------------------------------------
    def d2d(self, op: Op, deps, nbytes: float, phases: int, ranks: int | None = None) -> int:
        """An exchange among ``ranks`` chiplets of the card, all-to-all over the die-to-die
        links: an all-gather (one phase: each chiplet's share to every other) or a one-shot
        all-reduce (reduce-scatter, the adds on the SIMD lanes, all-gather)."""
        r = ranks or self.chiplets
        moved = phases * (r - 1) * nbytes  # all chiplets together, one direction
        adds = (r - 1) * nbytes / ACC_BYTES / r if phases == 2 else 0
        return self.emit(
            "d2d", "d2d", op, deps, m=phases, n=self.p.links.d2d_hops, k=math.ceil(adds),
            link_bytes=moved, resources={f"card{op.stage}.d2d": moved},
        )  # fmt: skip

    def link_kind(self, first_card: int, last_card: int) -> int:
        s = self.p.system
        if last_card // s.cards_per_bridge == first_card // s.cards_per_bridge:
            return BRIDGE
        if last_card // s.cards_per_server == first_card // s.cards_per_server:
            return PCIE
        return NIC

    def card_all_reduce(self, op: Op, deps: list[int]) -> int:
        """Partial sums of the cards of a tensor group (each card's own already reduced
        over its chiplets): a ring over the bridge (a card pair), PCIe or the NIC —
        2 (g - 1) steps, 2 (g - 1) / g of the tensor sent per card, then the adds."""
        g = max(2, op.group)
        kind = self.link_kind(0, g - 1)
        nbytes = op.link_bytes * self.f
        sent = 2 * (g - 1) / g * nbytes
        tr = self.emit(
            "link", "link", op, deps, m=2 * (g - 1), n=kind, link_bytes=sent,
            resources={f"card{op.stage}.{LINK_KINDS[kind]}": sent},
        )  # fmt: skip
        return self.simd(op, [tr], (g - 1) / g * nbytes / ACC_BYTES, 1, spread=True)

    def send(self, op: Op, deps: list[int]) -> int:
        """Activations to the next pipeline stage's card: PCIe inside a server, else the NIC."""
        tp = self.plan.tp
        src, dst = op.stage * tp, op.dim("dst_stage") * tp
        kind = self.link_kind(src, dst)
        nbytes = op.link_bytes * self.f
        return self.emit(
            "link", "link", op, deps, m=1, n=kind, link_bytes=nbytes,
            resources={f"card{op.stage}.{LINK_KINDS[kind]}": nbytes},
        )  # fmt: skip


class _ImcState:
    """What lowering carries from op to op: per stage the LPDDR chunks in the stream buffer
    (bytes, the compute that frees them) and their bytes, the (stage, layer) pairs whose
    fixed layer cost is paid, the step's host sync, and each op's last instructions.

    A run's frame is its first stage: a layer replays on other cards with the cards renamed
    (compiler/replay.py). What differs between stages is in the snapshot: the share of the
    weights each stage holds resident, and the link each transfer to another stage takes."""

    def __init__(self, lw: Lowerer, n_layers: int) -> None:
        self.lw = lw
        self.n_layers = n_layers
        self.in_buffer: dict[int, deque] = {}
        self.buffered: dict[int, float] = {}
        self.synced: set[tuple[int, int]] = set()
        self.step_sync: int | None = None
        self.out_of: dict[str, list[int]] = {}
        self._layer = 0  # the layer of the run last described (restore's synced pairs)

    def frame(self, run: list[Op]) -> tuple:
        return (run_base(run),)

    def snapshot(self, ref, run: list[Op], frame: tuple) -> tuple:
        """Per stage of the run (relative): its chunks in flight (None: never streamed), their
        bytes, whether the run's layer is synced there, its resident share; the links of the
        run's transfers; whether the layer pays the sync at all; the step's host sync."""
        layer = self._layer = run[0].layer
        base, lw = frame[0], self.lw
        per_stage = []
        for s in sorted({op.stage for op in run}):
            queue = self.in_buffer.get(s)
            chunks = None if queue is None else tuple((nb, ref(c)) for nb, c in queue)
            synced = (s, layer) in self.synced
            per_stage.append((s - base, chunks, self.buffered.get(s), synced, lw.resident[s]))
        tp = lw.plan.tp
        links = tuple(
            lw.link_kind(op.stage * tp, op.dim("dst_stage") * tp)
            for op in run
            if "dst_stage" in op.shape
        )
        step = None if self.step_sync is None else ref(self.step_sync)
        return (tuple(per_stage), links, 0 <= layer < self.n_layers, step)

    def restore(self, snap: tuple, frame: tuple) -> None:
        per_stage, _, _, step = snap
        for rel, chunks, buffered, synced, _ in per_stage:
            s = rel + frame[0]
            if chunks is None:
                self.in_buffer.pop(s, None)
            else:
                queue = self.in_buffer.setdefault(s, deque())
                queue.clear()
                queue.extend(chunks)
            if buffered is None:
                self.buffered.pop(s, None)
            else:
                self.buffered[s] = buffered
            if synced:
                self.synced.add((s, self._layer))
            else:
                self.synced.discard((s, self._layer))
        self.step_sync = step

    def op_state(self, op: str, ref) -> tuple:
        return tuple(ref(i) for i in self.out_of[op])

    def set_op_state(self, op: str, state: tuple) -> None:
        self.out_of[op] = list(state)

    def relative_name(self, name: str, frame: tuple) -> str:
        return _card_moved(name, -frame[0])

    def absolute_name(self, name: str, frame: tuple) -> str:
        return _card_moved(name, frame[0])


_CARD = re.compile(r"card(-?\d+)\.(.+)\Z")  # a stage's unit or resource: card3.lpddr


def _card_moved(name: str, delta: int) -> str:
    m = _CARD.match(name)
    return f"card{int(m.group(1)) + delta}.{m.group(2)}" if m else name


def lower_trip(g: nx.DiGraph, plan: Plan, p: ImcParams, sc: Scenario) -> InstructionStream:
    """One micro-batch's trip through every pipeline stage."""
    b = Lowerer(g, plan, p, sc).lower()
    b.meta.update(family="dmatrix-like", micro_batch=str(plan.micro_batch or sc.batch))
    return b.build()
