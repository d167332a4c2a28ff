"""Lowering for etched-like: each op of the partitioned graph -> one pass of its hardwired
stage per tile of sequences.

The chip is a fixed pipeline of stages (units in the stream, per pipeline stage ``s``):
``chip<s>.mxu_qkv``, ``mxu_o``, ``mxu_gate_up``, ``mxu_down`` (four matrix engines, each a
fixed group of MAC arrays wired to one projection; lm_head runs on the gate/up engine),
``attention`` (Q K^T, softmax, P V), the vector stages ``attn_norm``, ``rope``,
``attn_residual``, ``ffn_norm``, ``act``, ``ffn_residual`` (one per position in the layer),
``norm`` (the final norm), ``embed`` (row gather), ``link`` (all-reduce, sends) and ``host``
(PCIe). All stages read HBM through one shared resource ``chip<s>.hbm``; between stages
activations pass through on-chip buffers.

The compiler cuts the batch into tiles of whole sequences (``pipeline.tile_tokens``) and
streams every tile through every stage, layer after layer, in layer-major order: a stage
takes tile j + 1 of a layer as soon as tile j has streamed through it. Each dependency is
start -> start with the producer's pipeline latency as lag (a stage consumes its producer's
rows as they come and finishes no earlier than the producer + lag), so one tile already
overlaps its stages and several tiles keep every stage busy. Weights stream from HBM into the
arrays for every tile (weight-stationary passes, double-buffered); the residual streams of
tiles parked between layers spill to HBM when they exceed the SRAM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import networkx as nx

from archsim.compiler.replay import LayerReplay
from archsim.core.errors import ScenarioError
from archsim.core.isa import COLUMNS, END_START, START_START, InstructionStream, StreamBuilder
from archsim.core.plan import Plan
from archsim.families.asic.params import AsicParams
from archsim.families.asic.timing import (
    HOST,
    OPCODES,
    RATE_16BIT,
    RATE_FP8,
    latency_cycles,
    timing_record,
)
from archsim.graph.build import ELEM_BYTES, ops_in_order
from archsim.graph.ops import Op, OpKind
from archsim.graph.scenario import DTYPE_BYTES, Scenario

OPCODE_COLUMN = list(COLUMNS).index("opcode")  # in a StreamBuilder row
ENGINES = ("qkv", "o", "gate_up", "down")
ENGINE_OF_ROLE = {
    "qkv_proj": "qkv",
    "o_proj": "o",
    "gate_up_proj": "gate_up",
    "down_proj": "down",
    "lm_head": "gate_up",
    "shared_gate_up": "gate_up",  # MoE shared experts: a dense gated FFN
    "shared_down": "down",
}
# vector stages: each position of the layer is its own hardwired stage (two norms, two
# residual adders); ops at no layer position (final norm, ``archsim kernel`` ops) run on the
# stage of their kind
VECTOR_STAGES = ("attn_norm", "rope", "attn_residual", "ffn_norm", "act", "ffn_residual")
VECTOR_UNIT = {
    OpKind.NORM: "norm",
    OpKind.ROPE: "rope",
    OpKind.ACTIVATION: "act",
    OpKind.RESIDUAL: "residual",
    OpKind.EMBEDDING: "embed",
}


def vector_stage(op: Op) -> str:
    return op.role if op.role in VECTOR_STAGES else VECTOR_UNIT[op.kind]


def engine_arrays(p: AsicParams) -> dict[str, int]:
    m = p.matrix
    return {
        "qkv": m.qkv_arrays,
        "o": m.o_arrays,
        "gate_up": m.gate_up_arrays,
        "down": m.down_arrays,
    }


def tile_sequences(g: nx.DiGraph, p: AsicParams, sc: Scenario) -> list[int]:
    """Sequences of each tile: whole sequences, ``tile_tokens // new tokens per sequence`` of
    them (at least one); an op graph of ``archsim kernel`` is one tile."""
    if "model" not in g.graph:
        return [sc.batch]
    per_tile = max(1, p.pipeline.tile_tokens // sc.new_tokens_per_seq)
    full, rest = divmod(sc.batch, per_tile)
    return [per_tile] * full + ([rest] if rest else [])


def residual_spills(g: nx.DiGraph, p: AsicParams, sc: Scenario, tiles: int) -> bool:
    """Whether the residual streams parked between layers (every tile's [tokens, hidden]
    bf16 while the other tiles pass through the layer) exceed the SRAM."""
    spec = g.graph.get("model")
    if spec is None or tiles == 1:
        return False
    return sc.tokens * spec.hidden_size * ELEM_BYTES > p.memory.sram_bytes


def split_columns(n: int, k: int, dim: int, arrays: dict[str, int]) -> dict[str, int]:
    """``n`` output columns shared by the engines in blocks of ``dim`` (one weight-tile
    column), each block to the engine whose passes (ceil(k / dim) tiles per block over its
    arrays) grow least: the engines finish together. Engines left without a block drop out."""
    blocks, k_tiles = -(-n // dim), -(-k // dim)
    count = dict.fromkeys(arrays, 0)
    for _ in range(blocks):
        best = min(arrays, key=lambda e: (-(-(count[e] + 1) * k_tiles // arrays[e]), -arrays[e]))
        count[best] += 1
    cols = {e: c * dim for e, c in count.items() if c}
    last = max(cols, key=lambda e: (count[e], arrays[e]))  # the partial block, if any
    cols[last] -= blocks * dim - n
    return cols


def rate_code(*dtypes: str) -> int:
    """Arrays take fp8 at one row per cycle; anything wider at the 16-bit rate."""
    return RATE_FP8 if all(d == "fp8" for d in dtypes) else RATE_16BIT


class Lowerer:
    """Emits every tile's passes through every stage, op by op (layer-major)."""

    def __init__(self, g: nx.DiGraph, plan: Plan, p: AsicParams, sc: Scenario) -> None:
        self.g, self.plan, self.p, self.sc = g, plan, p, sc
        self.b = StreamBuilder(OPCODES)
        self.q = timing_record(p)
        self.tiles = tile_sequences(g, p, sc)
        self.spill = residual_spills(g, p, sc, len(self.tiles))
        self.arrays = engine_arrays(p)
        self.state = _AsicState(self.b, self.q)
        self.lag = self.state.lag  # per instruction: the lag its streaming consumers take
        self.blocking = self.state.blocking  # instructions consumers wait for to end (host)
        self.out_of = self.state.out_of  # op -> per tile, its last instructions

    # ---- helpers ----------------------------------------------------------------------------
    def emit(self, opcode: str, unit: str, op: Op, deps, resource: str = "", nbytes=0.0, **kw):
        s = op.stage
        deps_ss = [(i, END_START if i in self.blocking else START_START, self.lag[i]) for i in deps]
        i = self.b.add(
            opcode,
            unit=f"chip{s}.{unit}",
            op=op.id,
            chip=s,
            layer=op.layer,
            lagged=deps_ss,
            resources={f"chip{s}.{resource}": nbytes} if resource and nbytes > 0 else None,
            **kw,
        )
        self.lag.append(latency_cycles(opcode, self.q))
        return i

    def rows(self, op: Op, f: float) -> int:
        return max(1, math.ceil(op.dim("m") * f - 1e-9))

    # ---- ops --------------------------------------------------------------------------------
    def lower(self) -> StreamBuilder:
        """Every op in graph order; a decoder layer identical to an earlier one replays its
        instructions (archsim/compiler/replay.py)."""
        batch, g, out_of = self.sc.batch, self.g, self.out_of

        def lower_one(op: Op) -> None:
            outs: list[list[int]] = []
            out_of[op.id] = outs
            for j, seqs in enumerate(self.tiles):
                deps = [i for pred in g.predecessors(op.id) for i in out_of[pred][j]]
                outs.append(self.lower_op(op, seqs / batch, seqs, deps))

        LayerReplay(self.b, g, self.state).lower(ops_in_order(g), lower_one)
        return self.b

    def lower_op(self, op: Op, f: float, seqs: int, deps: list[int]) -> list[int]:
        kind = op.kind
        if kind == OpKind.MATMUL:
            return self.matmul(op, f, deps)
        if kind == OpKind.ATTENTION:
            return [self.attention(op, f, seqs, deps)]
        if kind in VECTOR_UNIT:
            return self.vector(op, f, deps)
        if kind == OpKind.ALL_REDUCE:
            return [self.all_reduce(op, f, deps)]
        if kind == OpKind.ROUTER:
            return [self.host_route(op, self.rows(op, f), deps)]
        if kind == OpKind.EXPERT_FFN:
            return self.expert_ffn(op, f, deps)
        if kind == OpKind.ALL_TO_ALL:
            return [self.all_to_all(op, f, deps)]
        if kind == OpKind.SEND_RECV:
            nbytes = op.link_bytes * f
            return [
                self.emit("send", "link", op, deps, "link", nbytes, m=self.rows(op, f),
                          n=op.dim("n"), aux=math.ceil(nbytes), link_bytes=nbytes)
            ]  # fmt: skip
        raise AssertionError(f"etched-like cannot lower {kind} (admission should refuse it)")

    def matmul(self, op: Op, f: float, deps: list[int]) -> list[int]:
        """One pass of the op's engine over the tile's rows; its weights stream from HBM for
        every tile. A GEMM of no projection stage (``archsim kernel gemm``) is shared by the
        four engines in proportion to their arrays (output columns side by side)."""
        engine = ENGINE_OF_ROLE.get(op.role)
        n = op.dim("n")
        dim = self.p.chip.array_dim
        shares = {engine: n} if engine else split_columns(n, op.dim("k"), dim, self.arrays)
        rows, rate = self.rows(op, f), rate_code(op.weight_dtype, op.act_dtype)
        out = []
        for name, cols in shares.items():
            w = cols / n
            out.append(
                self.emit(
                    "gemm",
                    f"mxu_{name}",
                    op,
                    deps,
                    "hbm",
                    op.weight_bytes * w,
                    m=rows,
                    n=cols,
                    k=op.dim("k"),
                    g=self.arrays[name],
                    aux=rate,
                    flops=op.flops * f * w,
                    offchip_bytes=op.weight_bytes * w,
                    onchip_bytes=(op.act_in_bytes + op.act_out_bytes * w) * f,
                )  # fmt: skip
            )
        return out

    def attention(self, op: Op, f: float, seqs: int, deps: list[int]) -> int:
        """Q K^T, softmax and P V of the tile's sequences on the attention unit. Keys already
        in the cache are read from HBM; the tile's own new keys and values (all of them in a
        prefill) are attended on chip as the projection produces them, and appended to the
        cache in HBM."""
        heads, d = op.dim("heads"), op.dim("head_dim")
        pairs = op.flops / (4.0 * op.dim("batch") * heads * d)  # query-key pairs per head
        cached = (op.dim("kv_len") - op.dim("q_len")) / op.dim("kv_len")
        hbm = (op.kv_read_bytes * cached + op.kv_write_bytes) * f
        return self.emit(
            "attn", "attention", op, deps, "hbm", hbm,
            m=seqs * op.dim("q_len"), n=op.dim("kv_len"), k=math.ceil(seqs * heads * pairs),
            h=rate_code(op.weight_dtype, op.act_dtype), g=heads,
            aux=math.ceil(op.kv_read_bytes * f), flops=op.flops * f, offchip_bytes=hbm,
            onchip_bytes=(op.act_in_bytes + op.act_out_bytes + op.kv_read_bytes) * f,
        )  # fmt: skip

    def vector(self, op: Op, f: float, deps: list[int]) -> list[int]:
        """One pass of a vector stage over the tile's rows. Its HBM traffic: the norm gains
        (re-read per tile), the embedding rows gathered, and, when residual streams spill,
        the layer input a layer's first norm reads and the output its last residual writes."""
        rows = self.rows(op, f)
        hbm = op.weight_bytes * (f if op.kind == OpKind.EMBEDDING else 1.0)
        parked = rows * op.dim("n") * ELEM_BYTES
        if self.spill and op.kind == OpKind.NORM and self._crosses(self.g.predecessors(op.id), op):
            hbm += parked
        if (
            self.spill
            and op.kind == OpKind.RESIDUAL
            and self._crosses(self.g.successors(op.id), op)
        ):
            hbm += parked
        i = self.emit(
            "vec", vector_stage(op), op, deps, "hbm", hbm, m=rows, n=op.dim("n"),
            offchip_bytes=hbm, onchip_bytes=(op.act_in_bytes + op.act_out_bytes) * f,
        )  # fmt: skip
        return [i]

    def _crosses(self, neighbours, op: Op) -> bool:
        """Whether any neighbour op belongs to another layer (the residual crosses layers)."""
        return any(self.g.nodes[x]["op"].layer != op.layer for x in neighbours)

    def host_route(self, op: Op, rows: int, deps: list[int]) -> int:
        """MoE host fallback (the router op): the normalised hidden states [rows, hidden]
        bf16 go to the host over PCIe, the host routes them, the expert ids and gates
        [rows, top-k] (int32 + fp32) come back; the expert GEMMs wait for the whole round
        trip."""
        nbytes = rows * (op.dim("k") * ELEM_BYTES + op.dim("topk") * 8)
        i = self.emit("host", "host", op, deps, "pcie", nbytes, m=rows, aux=math.ceil(nbytes))
        self.blocking.add(i)
        return i

    def expert_ffn(self, op: Op, f: float, deps: list[int]) -> list[int]:
        """The routed experts on the FFN engines, as grouped GEMMs: the gate/up engine streams
        the touched experts' weight tiles (expected, for this tile's tokens) and each
        multiplies its expert's rows (the mean rows per touched expert); the activation
        stage; the down engine likewise. The touched experts' weights stream from HBM for
        every tile; the weighted sum of each token's outputs is left to the residual stage."""
        load = op.experts.with_tokens(max(1, math.ceil(op.dim("tokens") * f - 1e-9)))
        rows, active = load.routed(), load.active()
        if rows <= 0:
            return deps[-1:] if deps else []
        h, width = op.dim("n"), op.dim("k")
        mats = 3 if op.dim("gated") else 2
        per_expert = math.ceil(rows / max(active, 1.0) - 1e-9)
        touched = max(1, round(active))
        rate = rate_code(op.weight_dtype, op.act_dtype)
        w_expert = op.params / max(op.dim("experts"), 1) * DTYPE_BYTES[op.weight_dtype]
        flops = op.flops * rows / op.experts.routed()
        up = (mats - 1) * width
        passes = []
        gemms = (("gate_up", up, h, (mats - 1) / mats), ("down", h, width, 1 / mats))
        for engine, n, k, share in gemms:
            wbytes = active * w_expert * share
            prev = [self.emit(
                "gemm", f"mxu_{engine}", op, deps if not passes else passes[-1:], "hbm", wbytes,
                m=per_expert, n=touched * n, k=k, g=self.arrays[engine], aux=rate,
                flops=flops * share, offchip_bytes=wbytes,
                onchip_bytes=rows * (k + n) * ELEM_BYTES,
            )]  # fmt: skip
            passes += prev
            if engine == "gate_up":
                passes.append(self.emit(
                    "vec", "act", op, prev, m=math.ceil(rows), n=width,
                    onchip_bytes=rows * (up + width) * ELEM_BYTES,
                ))  # fmt: skip
        return passes[-1:]

    def all_to_all(self, op: Op, f: float, deps: list[int]) -> int:
        """An expert-parallel dispatch, combine, all-gather or reduce-scatter over the fully
        connected server: each peer's share on its own link, the busier direction's."""
        tp = op.group
        if tp - 1 > self.p.links.links_per_chip:
            raise ScenarioError(
                f"etched-like exchanges all-to-all over direct links: {tp} ranks need {tp - 1} "
                f"links, a chip has {self.p.links.links_per_chip}"
            )
        busier = max(op.link_bytes, float(op.dim("recv_bytes"))) * f
        per_link = busier / max(tp - 1, 1)
        return self.emit(
            "send", "link", op, deps, "link", per_link, m=self.rows(op, f), n=op.dim("n"),
            aux=math.ceil(per_link), link_bytes=op.link_bytes * f,
        )  # fmt: skip

    def all_reduce(self, op: Op, f: float, deps: list[int]) -> int:
        """One-shot reduce-scatter + all-gather over the fully connected server: each chip
        sends 1/tp of the buffer to each of the tp - 1 others on its own link, twice; the
        busiest link carries 2 x buffer / tp."""
        tp = op.group
        if tp - 1 > self.p.links.links_per_chip:
            raise ScenarioError(
                f"etched-like all-reduces over direct links: {tp} ranks need {tp - 1} links, "
                f"a chip has {self.p.links.links_per_chip}"
            )
        buffer = op.link_bytes * f * self.p.pipeline.allreduce_bytes_per_element / ELEM_BYTES
        per_link = 2.0 * buffer / tp
        return self.emit(
            "allreduce", "link", op, deps, "link", per_link, m=self.rows(op, f), n=op.dim("n"),
            g=tp, aux=math.ceil(per_link), link_bytes=per_link * (tp - 1),
        )  # fmt: skip


class _AsicState:
    """What lowering carries from op to op: each op's last instructions per tile
    (``out_of``) and, per instruction, the lag its streaming consumers take (``lag``) and
    whether they wait for its end instead (``blocking``: the host round trips). The lowering
    keeps no per-stage state (a stage runs its passes in program order; every dependency is
    an op's input), and tiles, spill and the timing record are fixed for the whole graph, so a
    run's snapshot is empty. ``lag`` and ``blocking`` are functions of an instruction's
    opcode alone: ``restore`` extends them over the instructions a replay appended."""

    def __init__(self, b: StreamBuilder, q) -> None:
        self.b = b
        self.lag: list[int] = []
        self.blocking: set[int] = set()
        # op -> per tile, its last instructions (lists as lowered, tuples as replayed)
        self.out_of: dict[str, Sequence[Sequence[int]]] = {}
        self._lag_of = [latency_cycles(name, q) for name in OPCODES]  # by opcode index

    def snapshot(self, ref, run: list[Op]) -> tuple:
        return ()

    def restore(self, snap: tuple) -> None:
        lag, lag_of, blocking = self.lag, self._lag_of, self.blocking
        for i, (row, _, _) in enumerate(self.b.segment(len(lag)), len(lag)):
            code = row[OPCODE_COLUMN]
            lag.append(lag_of[code])
            if code == HOST:
                blocking.add(i)

    def op_state(self, op: str, ref) -> tuple:
        return tuple(tuple(ref(i) for i in tile) for tile in self.out_of[op])

    def set_op_state(self, op: str, state: tuple) -> None:
        self.out_of[op] = state  # per tile, a tuple of indices: only read from here on


def lower(g: nx.DiGraph, plan: Plan, p: AsicParams, sc: Scenario) -> InstructionStream:
    low = Lowerer(g, plan, p, sc)
    b = low.lower()
    b.meta.update(
        family="etched-like",
        tiles=str(len(low.tiles)),
        tile_sequences=str(low.tiles[0]),
        residual_spill=str(low.spill),
    )
    return b.build()
