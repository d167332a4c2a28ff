"""Placement for cerebras-like: regions on the mesh, wafers, micro-batches.

Layer-pipelined mode (the default, Cerebras' fast inference): every block of the model (the
embedding, each decoder layer, the final norm + lm_head) gets its own rectangle of PEs,
weight-stationary, with its KV cache in the same SRAM. A region must hold its block's
weight tiles, its KV tiles and its working buffers in ``pe.sram_bytes - pe.reserved_bytes``
per PE: that sets the smallest region. A larger region does less local work per PE but its
reductions span more hops — the U-shape WaferLLM reports — so the region's shape is a
decision: the compiler prices candidate shapes with the same recipes the stream is built from
(``lower.op_recipe``) and the same timing kernel, and keeps the fastest of those that need the
fewest wafers.

Packing: the wafer's program rectangle (``mesh - border``) is cut into columns of the region
width; blocks are stacked down a column, snaking (down the even columns, up the odd ones,
so consecutive blocks touch), column after column, wafer after wafer, in pipeline order.
Decoder layers share one region shape; the embedding and lm_head take the column width and
the height their tables need.

Weight-streaming mode: one wafer (per data-parallel replica) runs every block in turn on its
whole program rectangle; weights arrive from MemoryX layer by layer (``lower.weight_load``),
KV and activations stay on the wafer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import networkx as nx
import numpy as np

from archsim.compiler.partition import memory_need, split_layers
from archsim.core.engine import Timeline
from archsim.core.errors import CapacityError, ScenarioError
from archsim.core.isa import InstructionStream
from archsim.core.plan import MemoryNeed, Plan
from archsim.families.wafer.lower import (
    Env,
    Shape,
    block_axes,
    check_precision,
    env_of,
    op_recipe,
    seq_rows,
)
from archsim.families.wafer.params import WaferParams
from archsim.families.wafer.timing import OPCODES, cycles_of
from archsim.graph.build import ops_in_order
from archsim.graph.ops import Op, OpKind
from archsim.graph.scenario import Scenario

MIN_REGION_COLS = 8  # narrower regions are never the fastest (reductions down long columns)
MAX_COLUMN_SPLITS = 48  # region widths tried: program width / 1 .. / this


def program_rect(p: WaferParams) -> tuple[int, int]:
    """(cols, rows) of PEs a program may use on one wafer."""
    w = p.wafer
    return w.mesh_cols - w.border_cols, w.mesh_rows - w.border_rows


def usable_pe_bytes(p: WaferParams) -> int:
    return p.pe.sram_bytes - p.pe.reserved_bytes


def blocks_of(g: nx.DiGraph) -> list[tuple[int, list[Op]]]:
    """Ops grouped by block (layer index; -1 embedding; n_layers the tail), in order."""
    out: dict[int, list[Op]] = {}
    for op in ops_in_order(g):
        out.setdefault(op.layer, []).append(op)
    return sorted(out.items())


def block_name(layer: int, n_layers: int) -> str:
    return "embed" if layer < 0 else ("lm_head" if layer >= n_layers else f"L{layer}")


# ---- pricing candidate shapes ----------------------------------------------------------------
@dataclass(frozen=True)
class BlockPrice:
    cycles: np.ndarray  # [candidates] cycles of one micro-batch through the block
    bytes_per_pe: np.ndarray  # [candidates] resident + working bytes per PE
    kv_bytes_per_pe: np.ndarray  # [candidates] of which KV


def price_block(
    ops: list[Op], cols: Any, rows: Any, env: Env, sc: Scenario, p, timed: bool = True
) -> BlockPrice:
    """Cycles and bytes per PE of ``ops`` on regions of ``cols x rows`` PEs (ints or arrays
    of candidates), with the stream's own recipes and timing kernel (``timed=False``: bytes
    only, cycles left 0)."""
    n = int(np.broadcast(np.asarray(cols), np.asarray(rows)).size)
    axes = block_axes(ops)
    rows_all: list[dict[str, Any]] = []
    resident, kv, act = 0.0, 0.0, 0.0
    for op in ops:
        rc = op_recipe(op, Shape(cols, rows), env, axes[op.id], seq_rows(op, sc))
        resident = resident + rc.resident
        if op.kind == OpKind.ATTENTION:
            kv = kv + rc.resident
        elif op.kind == OpKind.MLA_ATTENTION:
            kv = kv + rc.kv
        act = np.maximum(act, rc.act)
        rows_all += rc.rows
    cycles = np.zeros(n, dtype=np.int64)
    if rows_all and timed:
        cols_: dict[str, np.ndarray] = {}
        for name in ("m", "n", "k", "g", "h", "aux"):
            arr = np.empty((len(rows_all), n), dtype=np.int64)
            for j, row in enumerate(rows_all):
                arr[j] = row.get(name, 0)
            cols_[name] = arr.ravel()
        cols_["opcode"] = np.repeat([OPCODES.index(r["opcode"]) for r in rows_all], n)
        cols_["link_bytes"] = cols_["offchip_bytes"] = np.zeros(n * len(rows_all))
        work, lat = cycles_of(cols_, p)
        cycles = (work + lat).reshape(len(rows_all), n).sum(axis=0)
    total = np.broadcast_to(np.asarray(resident + act, dtype=np.float64), (n,))
    return BlockPrice(cycles, total, np.broadcast_to(np.asarray(kv, dtype=np.float64), (n,)))


def min_rows(ops, cols: int, env: Env, sc: Scenario, p, limit: int) -> int:
    """Fewest rows a block needs at width ``cols`` (``limit + 1`` if none up to ``limit``)."""
    rows = np.arange(1, limit + 1)
    fits = price_block(ops, cols, rows, env, sc, p, timed=False).bytes_per_pe <= usable_pe_bytes(p)
    return int(rows[np.argmax(fits)]) if fits.any() else limit + 1


# ---- packing ---------------------------------------------------------------------------------
def pack(heights: list[int], ncols: int, height: int, wafers: int | None = None):
    """Stack blocks of the given heights down columns (snaking), column after column, wafer
    after wafer, in order. Returns [(wafer, column, y)] or None if ``wafers`` is exceeded."""
    out, wafer, col, y = [], 0, 0, 0
    for h in heights:
        if h > height:
            return None
        if y + h > height:
            col, y = col + 1, 0
            if col == ncols:
                wafer, col = wafer + 1, 0
        if wafers is not None and wafer >= wafers:
            return None
        out.append((wafer, col, y if col % 2 == 0 else height - y - h))
        y += h
    return out


def pack_balanced(heights: list[int], ncols: int, height: int, wafers: int, n_layers: int,
                  first: int) -> list | None:  # fmt: skip
    """Pack onto exactly ``wafers`` wafers: decoder layers split evenly (the embedding with
    the first wafer's, the tail with the last's); ``first`` = index of layer 0 in heights."""
    stages = split_layers(n_layers, wafers)
    out: list = []
    start = 0
    for w, (_, stop) in enumerate(stages):
        end = first + stop if w < wafers - 1 else len(heights)
        placed = pack(heights[start:end], ncols, height, 1)
        if placed is None:
            return None
        out += [(w, c, y) for _, c, y in placed]
        start = end
    return out


# ---- the plan --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    cols: int  # region width (all blocks)
    layer_rows: int  # decoder layer region height
    heights: list[int]  # per block
    slots: list  # per block (wafer, column, y)
    est_cycles: float

    @property
    def wafers(self) -> int:
        return max(w for w, _, _ in self.slots) + 1


def micro_batches(batch: int, stages: int, p: WaferParams) -> tuple[int, int]:
    """(micro-batches, sequences per micro-batch): by default one micro-batch per pipeline
    stage (block) at most, so that the batch keeps as many regions busy as it can."""
    mb = p.mapping.micro_batch or math.ceil(batch / min(batch, stages))
    mb = min(mb, batch)
    return math.ceil(batch / mb), mb


def _layout_for_width(blocks, cols, env, sc, p, chips, forced_rows, kinds) -> Layout | None:
    """The best layout whose blocks are ``cols`` wide (None if nothing fits). ``kinds``:
    ``block_kinds(blocks)``."""
    width, height = program_rect(p)
    ncols = width // cols
    if ncols == 0:
        return None
    n_layers = n_layers_of(blocks)
    layers = [i for i, (layer, _) in enumerate(blocks) if 0 <= layer < n_layers]
    shaped = template_layers(kinds, layers)  # the layers that share the optimised shape
    template = blocks[shaped[0]][1]
    sized: dict[int, int] = {}  # blocks of one kind need the same rows
    others = {i: _min_rows_of(ops, kinds[i], sized, cols, env, sc, p, height)
              for i, (_, ops) in enumerate(blocks) if i not in shaped}  # fmt: skip
    lo = min_rows(template, cols, env, sc, p, height)
    if forced_rows:
        if forced_rows < lo:
            return None
        lo = forced_rows
    if lo > height or any(h > height for h in others.values()):
        return None

    def place(h: int):
        heights = [others.get(i, h) for i in range(len(blocks))]
        if chips is None:
            return heights, pack(heights, ncols, height)
        return heights, pack_balanced(heights, ncols, height, chips, len(layers), layers[0])

    heights, slots = place(lo)
    if slots is None:
        return None
    need = max(w for w, _, _ in slots) + 1
    hi = lo
    if not forced_rows:  # the tallest layer region that needs no more wafers (bisection)
        a, b = lo, height
        while a < b:
            mid = (a + b + 1) // 2
            s = place(mid)[1]
            if s is not None and max(w for w, _, _ in s) + 1 <= need:
                a = mid
            else:
                b = mid - 1
        hi = a
    cand = np.arange(lo, hi + 1)
    layer = price_block(template, cols, cand, env, sc, p).cycles
    hop = p.fabric.hop_cycles
    est = len(shaped) * (layer + cand * hop)  # + one region's height of hops per layer
    best = int(np.argmin(est))
    h = int(cand[best])
    heights, slots = place(h)
    extra = sum(
        float(price_block(ops, cols, others[i], env, sc, p).cycles[0]) for i, (_, ops) in
        enumerate(blocks) if i not in shaped
    )  # fmt: skip
    return Layout(cols, h, heights, slots, float(est[best]) + extra)


def block_kinds(blocks) -> list[int]:
    """A number per block, equal for blocks that need the same region: the same ops' kinds,
    roles, shapes and parameters (whatever their layer index)."""
    seen: dict[tuple, int] = {}
    out = []
    for _, ops in blocks:
        key = tuple((o.kind.value, o.role, tuple(sorted(o.shape.items())), o.params) for o in ops)
        out.append(seen.setdefault(key, len(seen)))
    return out


def template_layers(kinds: list[int], layers: list[int]) -> list[int]:
    """The decoder layers whose region shape the compiler optimises: those of the most
    common kind (DeepSeek-V3's 58 MoE layers, not its 3 dense ones; ties: the later kind).
    Layers of any other kind get the fewest rows that hold them, as the embedding does."""
    count: dict[int, int] = {}
    for i in layers:
        count[kinds[i]] = count.get(kinds[i], 0) + 1
    best = max(layers, key=lambda i: (count[kinds[i]], i))
    return [i for i in layers if kinds[i] == kinds[best]]


def _min_rows_of(ops, kind: int, sized: dict, cols, env, sc, p, height) -> int:
    if kind not in sized:
        sized[kind] = min_rows(ops, cols, env, sc, p, height)
    return sized[kind]


def n_layers_of(blocks) -> int:
    """Decoder layers among the blocks (the tail block, if any, is numbered after them)."""
    layers = [layer for layer, _ in blocks if layer >= 0]
    tail = [layer for layer, ops in blocks if ops[-1].id == "lm_head"]
    return (tail[0] if tail else max(layers) + 1) if layers else 0


def choose_layout(blocks, env, sc, p, chips: int | None) -> Layout:
    width, height = program_rect(p)
    m = p.mapping
    if m.region_cols or m.region_rows:
        if not (m.region_cols and m.region_rows):
            raise ScenarioError("set both mapping.region_cols and mapping.region_rows (or neither)")
        if m.region_cols > width or m.region_rows > height:
            raise ScenarioError(
                f"a {m.region_cols} x {m.region_rows} region does not fit the {width} x "
                f"{height} program rectangle of {p.name}"
            )
        widths = [m.region_cols]
    else:
        widths = sorted({width // c for c in range(1, MAX_COLUMN_SPLITS + 1)
                         if width // c >= MIN_REGION_COLS})  # fmt: skip
    best: Layout | None = None
    kinds = block_kinds(blocks)
    for cols in widths:
        lay = _layout_for_width(blocks, cols, env, sc, p, chips, m.region_rows, kinds)
        if lay is None:
            continue
        if best is None or (lay.wafers, lay.est_cycles) < (best.wafers, best.est_cycles):
            best = lay
    if best is None or best.wafers > p.system.max_wafers:
        raise CapacityError(capacity_message(blocks, env, sc, p, chips))
    return best


def capacity_message(blocks, env, sc, p, chips) -> str:
    need = sum(
        float(price_block(ops, 1, 1, env, sc, p).bytes_per_pe[0]) for _, ops in blocks
    )  # bytes of the whole model on one PE-sized tile = its resident bytes
    width, height = program_rect(p)
    per_wafer = width * height * usable_pe_bytes(p)
    where = f"on {chips} wafer(s)" if chips else f"on up to {p.system.max_wafers} wafers"
    return (
        f"the model does not fit {where} of {p.name}: it needs about {need / 1e9:.1f} GB "
        f"(weights + KV for batch {sc.batch} x context {sc.kv_len}) and a wafer holds "
        f"{per_wafer / 1e9:.1f} GB ({usable_pe_bytes(p)} B usable per PE)"
    )


def plan(g: nx.DiGraph, p: WaferParams, chips: int | None) -> Plan:
    sc: Scenario = g.graph["scenario"]
    check_precision(sc)
    if p.mapping.mode == "weight_streaming":
        return plan_streaming(g, p, chips)
    blocks = blocks_of(g)
    n_mb, mb = micro_batches(sc.batch, len(blocks), p)
    env = env_of(p, sc, mb)
    n_layers = n_layers_of(blocks)
    if chips is not None and chips > n_layers:
        raise ScenarioError(
            f"{chips} wafers for {n_layers} decoder layer(s): at most one wafer per layer"
        )
    lay = choose_layout(blocks, env, sc, p, chips)
    width, height = program_rect(p)
    regions, per_wafer = [], {}
    for (layer, ops), h, (w, c, y) in zip(blocks, lay.heights, lay.slots, strict=True):
        price = price_block(ops, lay.cols, h, env, sc, p)
        name = block_name(layer, n_layers)
        index = per_wafer.get(w, 0)
        regions.append(region_record(layer, name, w, index, c * lay.cols, y, lay.cols, h, price))
        per_wafer[w] = index + 1
    wafers = lay.wafers
    stage_layers = []
    for w in range(wafers):
        ls = [r["block"] for r in regions if r["wafer"] == w and 0 <= r["block"] < n_layers]
        stage_layers.append((min(ls), max(ls) + 1) if ls else (0, 0))
    return Plan(
        tp=1, pp=wafers, stage_layers=tuple(stage_layers), need=_need(g),
        capacity_bytes_per_chip=float(width * height * usable_pe_bytes(p)),
        micro_batch=mb, micro_batches=n_mb,
        extra=dict(
            mode="layer_pipelined", allreduce_algo=p.mapping.allreduce_algo,
            wafer_cols=width, wafer_rows=height, region_cols=lay.cols,
            region_rows=lay.layer_rows, regions=regions,
        ),
    )  # fmt: skip


def region_record(layer, name, wafer, index, x, y, cols, rows, price: BlockPrice) -> dict:
    """A placed block as the plan records it (plain JSON: ``Plan.extra["regions"]``)."""
    return dict(
        block=layer, name=name, wafer=wafer, index=index, x=x, y=y, cols=cols, rows=rows,
        bytes_per_pe=float(price.bytes_per_pe[0]), kv_bytes_per_pe=float(price.kv_bytes_per_pe[0]),
        cycles=int(price.cycles[0]),
    )  # fmt: skip


def _need(g: nx.DiGraph) -> MemoryNeed:
    if "model" in g.graph:
        return memory_need(g)
    ops = [d["op"] for _, d in g.nodes(data=True)]
    sc = g.graph["scenario"]
    return MemoryNeed(sum(o.params for o in ops) * sc.precision.weight_bytes, 0.0, 0.0)


def plan_streaming(g: nx.DiGraph, p: WaferParams, chips: int | None) -> Plan:
    """Weight streaming: each wafer (a data-parallel replica) runs every block on its whole
    program rectangle; it holds two blocks' weights (the one computing, the next arriving),
    every layer's KV for its share of the batch, and the working buffers."""
    sc: Scenario = g.graph["scenario"]
    dp = chips or 1
    if dp > sc.batch:
        raise ScenarioError(f"{dp} data-parallel wafers for a batch of {sc.batch}")
    per = math.ceil(sc.batch / dp)
    width, height = program_rect(p)
    blocks = blocks_of(g)
    env = replace(env_of(p, sc, per), kv_seqs=per)
    prices = [price_block(ops, width, height, env, sc, p) for _, ops in blocks]
    weights = [float(x.bytes_per_pe[0] - x.kv_bytes_per_pe[0]) for x in prices]
    kv = sum(float(x.kv_bytes_per_pe[0]) for x in prices)
    need_pe = 2 * max(weights) + kv
    if need_pe > usable_pe_bytes(p):
        raise CapacityError(
            f"weight streaming on {p.name}: two blocks' weights and the KV of {per} "
            f"sequence(s) x {sc.kv_len} tokens need {need_pe:.0f} B per PE, "
            f"{usable_pe_bytes(p)} B are usable"
        )
    need = _need(g)
    if need.weight_bytes > p.system.memoryx_bytes:
        raise CapacityError(
            f"weights ({need.weight_bytes / 1e9:.0f} GB) exceed MemoryX "
            f"({p.system.memoryx_bytes / 1e9:.0f} GB)"
        )
    n_layers = n_layers_of(blocks)
    regions = [
        region_record(layer, block_name(layer, n_layers), 0, 0, 0, 0, width, height, pr)
        for (layer, _), pr in zip(blocks, prices, strict=True)
    ]
    for r in regions:  # two blocks' weights and every layer's KV share the wafer
        r["bytes_per_pe"] = need_pe
    return Plan(
        tp=1, pp=1, dp=dp, stage_layers=((0, max(n_layers, 1)),), need=need,
        capacity_bytes_per_chip=float(width * height * usable_pe_bytes(p)),
        micro_batch=per, micro_batches=1,
        extra=dict(
            mode="weight_streaming", allreduce_algo=p.mapping.allreduce_algo,
            wafer_cols=width, wafer_rows=height, region_cols=width, region_rows=height,
            regions=regions, batch_per_wafer=per,
        ),
    )  # fmt: skip


def kernel_plan(g: nx.DiGraph, plan: Plan, p: WaferParams) -> Plan:
    """``archsim kernel`` hands a bare plan: place the op's block (its first copy's weights
    are shared by the repeats) on the region the compiler would choose for it."""
    sc: Scenario = g.graph["scenario"]
    check_precision(sc)
    ops = ops_in_order(g)
    env = env_of(p, sc, sc.batch)
    blocks = [(0, ops[:1])]
    lay = choose_layout(blocks, env, sc, p, None)
    width, height = program_rect(p)
    price = price_block(ops[:1], lay.cols, lay.layer_rows, env, sc, p)
    region = region_record(0, ops[0].id, 0, 0, 0, 0, lay.cols, lay.layer_rows, price)
    extra = dict(
        mode="layer_pipelined", allreduce_algo=p.mapping.allreduce_algo, wafer_cols=width,
        wafer_rows=height, region_cols=lay.cols, region_rows=lay.layer_rows, regions=[region],
    )  # fmt: skip
    return replace(plan, micro_batch=sc.batch, micro_batches=1, extra=extra)


def with_stages(g: nx.DiGraph, plan: Plan) -> nx.DiGraph:
    """The graph with each op's stage set to the wafer its region is on."""
    wafer = {r["block"]: r["wafer"] for r in plan.extra["regions"]}
    out = g.copy()
    for _, d in out.nodes(data=True):
        op = d["op"]
        d["op"] = replace(op, stage=wafer.get(op.layer, 0))
    return out


# ---- the simulated program -------------------------------------------------------------------
def program_shape(micro_batches: int, cap: int) -> tuple[int, int]:
    """(micro-batches simulated, rounds): one trip for one micro-batch; otherwise up to
    ``cap`` micro-batches over two rounds (round 2 of each waits for its round 1)."""
    if micro_batches == 1:
        return 1, 1
    return min(micro_batches, cap), 2


def copy_ends(stream: InstructionStream, tl: Timeline) -> np.ndarray:
    ends = np.zeros(int(stream.copy.max()) + 1 if len(stream) else 1, dtype=np.int64)
    np.maximum.at(ends, stream.copy, tl.end)
    return ends


def busiest_unit_cycles(stream: InstructionStream, tl: Timeline) -> float:
    """Cycles the busiest unit (a region, a link) is held per micro-batch."""
    if not len(stream):
        return 0.0
    held = (tl.release - tl.start).astype(np.float64)
    copies = int(stream.copy.max()) + 1
    return float(np.bincount(stream.unit, weights=held).max()) / copies


def period_cycles(ends: np.ndarray, micro_batches: int, simulated: int, busiest: float) -> float:
    """Cycles between consecutive steps at load: the trip for one micro-batch; the
    timeline's own round when every micro-batch was simulated over two rounds; otherwise
    ``max(trip, micro_batches x busiest)`` — a round lasts at least a token's trip and at
    least the busiest unit serving every micro-batch."""
    if micro_batches == 1:
        return float(ends[0])
    if simulated == micro_batches:
        return float(ends[2 * simulated - 1] - ends[simulated - 1])
    return max(float(ends[0]), micro_batches * busiest)


def describe(plan: dict[str, Any], p: WaferParams) -> str:
    """The placement as text: one line per region (``archsim run --show-placement``)."""
    x = plan["extra"]
    lines = [
        f"{p.name}: {x['mode']}, {plan['chips']} wafer(s), program rectangle "
        f"{x['wafer_cols']} x {x['wafer_rows']} PEs, allreduce {x['allreduce_algo']}, "
        f"{plan['micro_batches']} micro-batch(es) of {plan['micro_batch']}",
        f"{'block':<8} {'wafer':>5} {'region':>6} {'x':>5} {'y':>5} {'cols':>5} {'rows':>5} "
        f"{'PEs':>8} {'KB/PE':>7} {'KV KB/PE':>8} {'cycles':>8}",
    ]
    for r in x["regions"]:
        lines.append(
            f"{r['name']:<8} {r['wafer']:>5} {r['index']:>6} {r['x']:>5} {r['y']:>5} "
            f"{r['cols']:>5} {r['rows']:>5} {r['cols'] * r['rows']:>8,} "
            f"{r['bytes_per_pe'] / 1024:>7.1f} {r['kv_bytes_per_pe'] / 1024:>8.1f} "
            f"{r['cycles']:>8,}"
        )
    return "\n".join(lines)
