"""Lowering for cerebras-like: each op of the graph -> phases on its region of PEs.

A *region* is a rectangle of ``cols x rows`` PEs holding one block of the model (a decoder
layer, the embedding, or the final norm + lm_head), weight-stationary: every weight matrix
of the block is tiled in 2D over the whole region (WaferLLM §4). The activation vector of a
token is split along one axis of the region and replicated along the other; a matrix-vector
product multiplies each PE's tile by its input slice (``mac``), then reduces the partial
sums along the input axis and broadcasts them back (``allreduce``), which leaves the output
split along the other axis: consecutive products alternate axes, so no transpose is needed.

Grain: one instruction per phase of an op on its region, timed for the representative PE or
line of PEs (``timing.py``); PEs of a region are symmetric, so the Python cost is O(ops), not
O(PEs). A region is one unit (``wafer<w>.region<i>``: its PEs run one phase at a time); the
activation stream to the next region runs on the source region's link unit
(``wafer<w>.xfer<i>``), and across wafers on the wafer's I/O (``wafer<w>.io``). Shared
resources (their bandwidth, ``timing.resource_bandwidths``): each region's row and column
bundles (``...region<i>.x#<lanes>``), each boundary between regions, each wafer-to-wafer
link, MemoryX.

The recipes (``op_recipe``) take region extents as ints or as numpy arrays: the planner prices
many candidate region shapes at once with the same rows the stream is built from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx
import numpy as np

from archsim.compiler.replay import LayerReplay
from archsim.core.errors import ScenarioError
from archsim.core.isa import END_START, START_START, InstructionStream, StreamBuilder
from archsim.core.plan import Plan
from archsim.families.wafer.params import WaferParams
from archsim.families.wafer.timing import (
    ACC_BYTES,
    ALGOS,
    CLS_ADD16,
    CLS_ADD32,
    CLS_MAC,
    CLS_MAX16,
    OPCODES,
    wafer_flight_cycles,
    xfer_flight_cycles,
)
from archsim.graph.build import ops_in_order
from archsim.graph.ops import Op, OpKind
from archsim.graph.scenario import DTYPE_BYTES, Scenario

X, Y = "x", "y"
FP32 = 4  # partial sums and activation buffers are kept as fp32 words
SUPPORTED = frozenset(
    k.value
    for k in (
        OpKind.EMBEDDING, OpKind.MATMUL, OpKind.ATTENTION, OpKind.NORM, OpKind.SOFTMAX,
        OpKind.ROPE, OpKind.ACTIVATION, OpKind.RESIDUAL, OpKind.ROUTER, OpKind.EXPERT_FFN,
        OpKind.MLA_ATTENTION,
    )
)  # fmt: skip


def other(axis: str) -> str:
    return Y if axis == X else X


def cdiv(a: Any, b: Any) -> Any:
    """Ceiling division of ints or int arrays."""
    return -(-a // b)


def check_precision(sc: Scenario) -> None:
    """WSE SIMD rates are published for 16-bit formats only."""
    p = sc.precision
    bad = [d for d in (p.weights, p.activations, p.kv) if DTYPE_BYTES[d] != 2]
    if bad:
        raise ScenarioError(
            f"cerebras-like models 16-bit formats only (bf16, fp16): WSE SIMD rates for "
            f"{bad[0]} are not published; use --precision bf16"
        )


@dataclass(frozen=True)
class Env:
    """What a recipe needs besides the op and the region: the micro-batch and the machine."""

    mb: int  # sequences in one micro-batch
    batch: int  # sequences of the step (an op's FLOPs are the whole step's)
    kv_seqs: int  # sequences whose KV cache the region holds
    vpw: int  # 16-bit values per wavelet
    wavelet_bytes: int
    weight_bytes: float
    kv_bytes: float
    algo: int  # timing.ALGOS index
    exp_ops: int


def env_of(p: WaferParams, sc: Scenario, mb: int) -> Env:
    return Env(
        mb=mb, batch=sc.batch, kv_seqs=sc.batch, vpw=p.fabric.values_per_wavelet,
        wavelet_bytes=p.fabric.wavelet_bytes, weight_bytes=sc.precision.weight_bytes,
        kv_bytes=sc.precision.kv_bytes, algo=ALGOS.index(p.mapping.allreduce_algo),
        exp_ops=p.pe.exp_ops,
    )  # fmt: skip


@dataclass
class Recipe:
    """The phases of one op on one region, and what the op keeps in each PE's SRAM."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    axis: str = X  # axis the op's output is split along
    resident: Any = 0.0  # bytes per PE held for the whole run (weights, KV)
    act: Any = 0.0  # bytes per PE of working buffers while the op runs
    kv: Any = 0.0  # of ``resident``, the KV (MLA: latent) cache, where it is not all of it

    def local(self, opcode, m, n, cls, *, flops=0.0, onchip=0.0) -> None:
        self.rows.append(dict(opcode=opcode, m=m, n=n, g=cls, aux=1, flops=flops, onchip=onchip))

    def reduce(self, env: Env, axis: str, pes, lines, values, *, bcast: bool = False) -> None:
        """An allreduce (or a broadcast) of ``values`` 16-bit values per line, along ``axis``
        over ``pes`` PEs, on ``lines`` lines at once."""
        v = cdiv(values, env.vpw)
        hops = (pes - 1) * (1 if bcast else 2)  # links of a line each carry v one way / both
        self.rows.append(
            dict(
                opcode="allreduce", m=pes, n=v, g=env.algo, k=int(bcast), h=lines, aux=1,
                axis=axis, fabric=lines * hops * v * env.wavelet_bytes,
            )
        )  # fmt: skip


class Shape:
    """A region's extents (ints, or arrays of candidate extents)."""

    def __init__(self, cols: Any, rows: Any) -> None:
        self.cols, self.rows = cols, rows

    def ext(self, axis: str) -> Any:
        return self.cols if axis == X else self.rows

    @property
    def pes(self) -> Any:
        return self.cols * self.rows


def seq_rows(op: Op, sc: Scenario) -> int:
    """Tokens per sequence the op processes (1 in decode, the prompt in prefill)."""
    if op.kind == OpKind.EXPERT_FFN:  # its m is token-expert rows
        return max(1, op.dim("tokens") // max(sc.batch, 1))
    if op.kind == OpKind.ATTENTION:  # its queries per sequence (it has no m)
        return max(1, op.dim("q_len"))
    return max(1, op.dim("m") // max(sc.batch, 1)) if op.dim("m") else 1


def line_rows(r: int, q: int, lines: Any) -> Any:
    """Token rows one line of PEs handles: every row of the micro-batch in decode (the
    vector is replicated across the lines); in prefill the rows are split across the lines
    (activations [tokens, width] are spread over the whole region)."""
    return r if q == 1 else cdiv(r, lines)


def op_recipe(op: Op, s: Shape, env: Env, axis: str, q: int) -> Recipe:
    """Phases of ``op`` for one micro-batch of ``env.mb`` sequences of ``q`` tokens each, its
    input split along ``axis``."""
    r = env.mb * q  # rows (tokens) of the micro-batch
    f = env.mb / env.batch  # share of the step's op one micro-batch is
    kind, rc = op.kind, Recipe(axis=axis)
    a_in, a_out = s.ext(axis), s.ext(other(axis))
    if kind == OpKind.MATMUL:
        k, n = op.dim("k"), op.dim("n")
        mt, nt = cdiv(k, a_in), cdiv(n, a_out)  # weight tile [mt, nt] on every PE
        rc.resident = mt * nt * env.weight_bytes
        per_elem = env.weight_bytes + 2 * ACC_BYTES
        if q == 1:  # GEMV: one fmach per input element, then reduce along the input axis
            rc.local("mac", mt * r, nt, CLS_MAC, flops=op.flops * f,
                     onchip=s.pes * mt * r * nt * per_elem)  # fmt: skip
            rc.reduce(env, axis, a_in, a_out, nt * r)
            rc.act = r * (mt + nt) * FP32
            if op.id == "lm_head":  # greedy sampling: a max (value, index) along the output
                rc.reduce(env, other(axis), a_out, a_in, 2 * r)
        else:  # MeshGEMM: compute-shift steps (WaferLLM §5), no reduction of partial sums
            steps = np.maximum(s.cols, s.rows)
            m_t = cdiv(r, steps)
            shift = cdiv(m_t * (mt + nt), env.vpw)
            # each step: one fmach per k of the tile, a 2-D DSD walking the [m_t, nt] block
            rc.rows.append(dict(
                opcode="gemm", m=steps, n=m_t * nt, h=mt, k=shift, flops=op.flops * f,
                onchip=s.pes * steps * m_t * mt * nt * per_elem,
                fabric=s.pes * steps * shift * env.wavelet_bytes,
            ))  # fmt: skip
            rc.act = 2 * m_t * (mt + nt) * FP32 + cdiv(r * (k + n), s.pes) * 2
        rc.axis = other(axis)
    elif kind == OpKind.ATTENTION:
        attention(op, s, env, axis, q, rc)
    elif kind == OpKind.ROUTER:
        router(op, s, env, axis, q, rc)
    elif kind == OpKind.EXPERT_FFN:
        expert_ffn(op, s, env, axis, q, rc)
    elif kind == OpKind.MLA_ATTENTION:
        mla_attention(op, s, env, axis, rc)
    elif kind in (OpKind.NORM, OpKind.SOFTMAX):
        n = cdiv(op.dim("n"), a_in)
        rows = line_rows(r if kind == OpKind.NORM else max(1, round(op.dim("m") * f)), q, a_out)
        rc.resident = n * env.weight_bytes * (op.params > 0)
        if kind == OpKind.SOFTMAX:  # local max, max-allreduce, exp, sum-allreduce, scale
            rc.local("vec", rows, n, CLS_MAX16)
            rc.reduce(env, axis, a_in, a_out, rows)
            rc.local("vec", (env.exp_ops + 1) * rows, n, CLS_ADD16)
            rc.reduce(env, axis, a_in, a_out, rows)
            rc.local("vec", rows, n, CLS_ADD16)
        else:
            for _ in range(2 if op.dim("layernorm") else 1):  # (mean,) sum of squares
                rc.local("vec", rows, n, CLS_MAC)
                rc.reduce(env, axis, a_in, a_out, rows)
            rc.local("vec", 2 * rows, n, CLS_ADD16)  # x * rsqrt(ms) * gain
        rc.act = rows * n * FP32
    elif kind == OpKind.ROPE:  # x cos + rotate(x) sin: permute, two products, add
        rows, n = line_rows(r, q, a_out), cdiv(op.dim("n"), a_in)
        rc.local("vec", 4 * rows, n, CLS_ADD16)
        rc.act = rows * n * FP32
    elif kind == OpKind.ACTIVATION:  # silu(g) * u = g / (1 + exp(-g)) * u; gelu via tanh
        rows, n = line_rows(r, q, a_out), cdiv(op.dim("n"), a_in)
        rc.local("vec", (env.exp_ops + (4 if op.dim("gated") else 5)) * rows, n, CLS_ADD32)
        rc.act = 2 * rows * n * FP32
    elif kind == OpKind.RESIDUAL:
        rows, n = line_rows(r, q, a_out), cdiv(op.dim("n"), a_in)
        rc.local("vec", rows, n, CLS_ADD16)
        rc.act = 2 * rows * n * FP32
    elif kind == OpKind.EMBEDDING:
        # table [vocab, hidden]: vocab down the rows, hidden across the columns; each token's
        # row is copied out, then broadcast down the columns (split along x, replicated on y)
        vocab, hidden = op.dim("vocab"), op.dim("n")
        rc.resident = cdiv(vocab, s.rows) * cdiv(hidden, s.cols) * env.weight_bytes
        rows, n = line_rows(r, q, s.rows), cdiv(hidden, s.cols)
        rc.local("vec", rows, n, CLS_ADD16)
        rc.reduce(env, Y, s.rows, s.cols, n * rows, bcast=True)
        rc.axis = X
        rc.act = rows * n * FP32
    else:  # refused up front by supported_ops
        raise ScenarioError(f"cerebras-like cannot lower {kind.value} ops ({op.id})")
    return rc


def attention(op: Op, s: Shape, env: Env, axis: str, q: int, rc: Recipe) -> None:
    """Decode attention on the layer's region (WaferLLM §4): K and V tiles [kv_dim / P1 x
    ctx / P0] per PE, kv_dim split along ``axis`` (P1 PEs, as q is) and the context along the
    other (P0 PEs). Scores reduce along ``axis`` (only over the PEs sharing a head), softmax
    reduces max and sum along the context axis, P.V reduces along it too; the output is
    split along ``axis``. Causal prefill does the share of the query-key pairs it needs."""
    r = env.mb * q
    f = env.mb / env.batch
    heads, kvh, d = op.dim("heads"), op.dim("kv_heads"), op.dim("head_dim")
    kv_len = op.dim("kv_len")
    q_dim, kv_dim = heads * d, kvh * d
    p1, p0 = s.ext(axis), s.ext(other(axis))
    hp = cdiv(heads, p1)  # heads whose dims a PE holds (1 when a head spans several PEs)
    seg = cdiv(p1, heads)  # PEs sharing one head along the axis
    ctx = cdiv(kv_len, p0)  # keys per PE
    pairs = (q * (q + 1) / 2 + q * (kv_len - q)) if op.dim("causal") else q * kv_len
    ctx_used = np.maximum(1, np.ceil(ctx * pairs / (q * kv_len) - 1e-9).astype(np.int64))
    qd = cdiv(q_dim, p1)
    rc.resident = env.kv_seqs * ctx * cdiv(kv_dim, p1) * 2 * env.kv_bytes
    rc.local("vec", 2 * r, cdiv(kv_dim, p1), CLS_ADD16)  # append the new K and V
    rc.local("mac", qd * r, ctx_used, CLS_MAC, flops=op.flops * f / 2,
             onchip=s.pes * qd * r * ctx_used * (env.kv_bytes + 2 * ACC_BYTES))  # fmt: skip
    rc.reduce(env, axis, seg, p0, hp * ctx * r)
    rc.reduce(env, other(axis), p0, p1, hp * r)  # row max
    rc.local("vec", (env.exp_ops + 1) * hp * r, ctx_used, CLS_ADD16)
    rc.reduce(env, other(axis), p0, p1, hp * r)  # row sum
    rc.local(
        "mac",
        ctx_used * hp * r,
        cdiv(qd, hp),
        CLS_MAC,
        flops=op.flops * f / 2,
        onchip=s.pes * ctx_used * hp * r * cdiv(qd, hp) * (env.kv_bytes + 2 * ACC_BYTES),
    )
    rc.reduce(env, other(axis), p0, p1, qd * r)
    # buffers for the scores and output of the rows in flight (prefill streams its queries
    # through one per sequence at a time, flash-attention style)
    live = r if q == 1 else env.mb
    rc.act = live * (hp * ctx + qd) * FP32
    rc.axis = axis


# ---- mixture of experts and MLA ---------------------------------------------------------------
def router(op: Op, s: Shape, env: Env, axis: str, q: int, rc: Recipe) -> None:
    """The gate [hidden, experts] tiled over the region like any weight matrix (its GEMV or
    MeshGEMM, ``op_recipe``), which leaves each token's expert logits split along the other
    axis and replicated along this one. Then the top-k: each PE scores its experts (exp or
    sigmoid), keeps its own k best (k max passes), and one reduction along that axis merges
    the PEs' (value, index) lists into the token's k best; the k gates are normalised on
    every PE (softmax is monotonic: the top-k of the probabilities is that of the logits, and
    Mixtral's renormalised gates are a softmax over the k). The hidden state stays put."""
    gate = op_recipe(replace(op, kind=OpKind.MATMUL), s, env, axis, q)
    rc.rows += gate.rows
    rc.resident, rc.act = gate.resident, gate.act
    a_in, a_out = s.ext(axis), s.ext(other(axis))
    k = op.dim("topk")
    rows, n = line_rows(env.mb * q, q, a_in), cdiv(op.dim("n"), a_out)
    rc.local("vec", (env.exp_ops + 1) * rows, n, CLS_ADD16)
    rc.local("vec", k * rows, n, CLS_MAX16)
    rc.reduce(env, other(axis), a_out, a_in, 2 * k * rows)
    rc.local("vec", (env.exp_ops + 2) * rows, k, CLS_ADD16)
    rc.axis = axis


def expert_ffn(op: Op, s: Shape, env: Env, axis: str, q: int, rc: Recipe) -> None:
    """The routed experts of a layer, every expert's matrices tiled over the whole region as
    a dense FFN's are (each PE holds a tile of every expert: the router picks at run time).
    The hidden state is already on every line, so dispatch costs nothing: each PE runs the
    rows routed to each expert against that expert's tile. Decode: gate/up GEMVs over the
    micro-batch's token-expert rows (one fmach per input element and row), their partial
    sums reduced along the input axis, SiLU-and-multiply scaled by the row's gate, the down
    GEMVs accumulating each token's experts into one partial sum, reduced along the other
    axis: the combine is that reduction. Prefill: MeshGEMM compute-shift steps for each
    touched expert over its rows. Untouched experts cost SRAM, not time."""
    a_in, a_out = s.ext(axis), s.ext(other(axis))
    h, width, gated = op.dim("n"), op.dim("k"), op.dim("gated")
    up = (2 if gated else 1) * width
    load = op.experts.with_tokens(env.mb * q)
    rows = max(1, int(np.ceil(load.routed() - 1e-9)))
    r = env.mb * q
    f = env.mb / env.batch
    share = 1.0 / 3 if gated else 0.5  # of the FLOPs in the down GEMMs
    mt, nt = cdiv(h, a_in), cdiv(up, a_out)  # gate/up tile, per expert
    mt2, nt2 = cdiv(width, a_out), cdiv(h, a_in)  # down tile
    rc.resident = op.dim("experts") * (mt * nt + mt2 * nt2) * env.weight_bytes
    per_elem = env.weight_bytes + 2 * ACC_BYTES
    act_ops = env.exp_ops + (5 if gated else 6)  # silu(g) * u (or gelu), x the gate
    if q == 1:
        rc.local("mac", mt * rows, nt, CLS_MAC, flops=op.flops * f * (1 - share),
                 onchip=s.pes * mt * rows * nt * per_elem)  # fmt: skip
        rc.reduce(env, axis, a_in, a_out, nt * rows)
        rc.local("vec", act_ops * rows, cdiv(width, a_out), CLS_ADD32)
        rc.local("mac", mt2 * rows, nt2, CLS_MAC, flops=op.flops * f * share,
                 onchip=s.pes * mt2 * rows * nt2 * per_elem)  # fmt: skip
        rc.reduce(env, other(axis), a_out, a_in, nt2 * r)
        # the tokens' input and output slices; the routed rows' gate/up outputs
        rc.act = (r * (mt + nt2) + rows * (nt + mt2)) * FP32
    elif not mesh_pays(load, s):
        # prefill with few rows per expert: the GEMV phases over every row, each row a
        # 2-D DSD is not worth the MeshGEMM's steps (below one row per step)
        rc.local("mac", mt * rows, nt, CLS_MAC, flops=op.flops * f * (1 - share),
                 onchip=s.pes * mt * rows * nt * per_elem)  # fmt: skip
        rc.reduce(env, axis, a_in, a_out, nt * cdiv(rows, a_out))
        rc.local("vec", act_ops * cdiv(rows, a_in), cdiv(width, a_out), CLS_ADD32)
        rc.local("mac", mt2 * rows, nt2, CLS_MAC, flops=op.flops * f * share,
                 onchip=s.pes * mt2 * rows * nt2 * per_elem)  # fmt: skip
        rc.reduce(env, other(axis), a_out, a_in, nt2 * cdiv(r, a_in))
        # the rows' activations spread over the region, one row's slices in flight
        rc.act = cdiv(rows * (h + up + width) + r * h, s.pes) * 2 + (mt + nt + mt2 + nt2) * FP32
    else:
        active = max(1, round(load.active()))
        steps = np.maximum(s.cols, s.rows)
        m_t = cdiv(cdiv(rows, active), steps)  # rows of one expert per step
        for (k_t, n_t), fl in (((mt, nt), 1 - share), ((mt2, nt2), share)):
            shift = cdiv(m_t * (k_t + n_t), env.vpw)
            rc.rows.append(dict(
                opcode="gemm", m=steps * active, n=m_t * n_t, h=k_t, k=shift,
                flops=op.flops * f * fl,
                onchip=s.pes * steps * active * m_t * k_t * n_t * per_elem,
                fabric=s.pes * steps * active * shift * env.wavelet_bytes,
            ))  # fmt: skip
            if fl != share:
                rc.local("vec", act_ops * cdiv(rows, a_in), cdiv(width, a_out), CLS_ADD32)
        rc.act = 2 * m_t * (mt + nt) * FP32 + cdiv(rows * (h + up), s.pes) * 2
    rc.axis = axis


def mesh_pays(load, s: Shape) -> bool:
    """Whether MeshGEMM beats row-by-row GEMVs for the experts of a prefill step: its
    compute-shift steps (the region's longer side) cost the same whatever the rows, so it
    pays once each touched expert has at least a row per step, on every candidate shape."""
    per_expert = load.routed() / max(1.0, round(load.active()))
    return bool(np.all(per_expert >= np.maximum(s.cols, s.rows)))


def mla_attention(op: Op, s: Shape, env: Env, axis: str, rc: Recipe) -> None:
    """MLA on the layer's region. The latent cache [tokens, latent + rope] is split with the
    context along ``axis`` and the latent dims along the other axis (no copy: every head
    reads the same latent). The query arrives with its heads split along ``axis``.

    Decode (absorbed): q_nope @ W^UK per head (each PE holds its heads' slice of W^UK
    against a slice of the latent dims, reduced over the PEs sharing a head), the latent
    queries of every head gathered along ``axis`` (a broadcast), the scores against the
    PE's latent slice for its context slice (reduced along the latent axis), the softmax
    along the context, P @ latent (reduced along the context), then @ W^UV per head
    (reduced along the latent axis), which leaves the heads' outputs split along ``axis``
    as o_proj expects. Prefill: kv_b_proj expands the latents (MeshGEMM), then causal
    attention over the expanded K and V as for dense models (``attention``, with the true
    prompt length); the expanded K and V are working buffers, the cache stays latent."""
    heads, kv_len, q = op.dim("heads"), op.dim("kv_len"), op.dim("q_len")
    lat, rope, nope, v = op.dim("latent"), op.dim("rope"), op.dim("nope"), op.dim("v_dim")
    f = env.mb / env.batch
    r = env.mb * q
    p1, p0 = s.ext(axis), s.ext(other(axis))
    ctx = cdiv(kv_len, p1)
    lat_o = cdiv(lat + rope, p0)  # latent + rope dims per PE
    hp, seg = cdiv(heads, p1), cdiv(p1, heads)  # heads per PE, PEs per head along axis
    latent = env.kv_seqs * ctx * lat_o * env.kv_bytes
    w_uk = cdiv(heads * nope, p1) * cdiv(lat, p0)  # W^UK tile
    w_uv = hp * cdiv(lat, p0) * cdiv(v, seg)  # W^UV tile
    rc.local("vec", r if q == 1 else cdiv(r, p1), lat_o, CLS_ADD16)  # append the latents
    per_elem = env.kv_bytes + 2 * ACC_BYTES
    if op.dim("absorbed"):
        t = r  # the micro-batch's tokens
        f_uk, f_uv = 2.0 * t * heads * nope * lat, 2.0 * t * heads * lat * v
        f_att = op.flops * f - f_uk - f_uv
        qk_share = (lat + rope) / (2 * lat + rope)
        rc.resident = latent + (w_uk + w_uv) * env.weight_bytes
        rc.local("mac", cdiv(heads * nope, p1) * t, cdiv(lat, p0), CLS_MAC, flops=f_uk,
                 onchip=s.pes * w_uk * t * per_elem)  # fmt: skip
        rc.reduce(env, axis, seg, p0, hp * cdiv(lat, p0) * t)
        rc.reduce(env, axis, p1, p0, heads * lat_o * t, bcast=True)  # every head's query
        # scores [heads, ctx] += q[heads, d] K[d, ctx]: one fmach per (d, and the shorter of
        # heads and ctx), a (strided) DSD along the longer
        few, many = np.minimum(heads, ctx), np.maximum(heads, ctx)
        rc.local("mac", lat_o * t * few, many, CLS_MAC, flops=f_att * qk_share,
                 onchip=s.pes * heads * lat_o * t * ctx * per_elem)  # fmt: skip
        rc.reduce(env, other(axis), p0, p1, heads * ctx * t)
        rc.reduce(env, axis, p1, p0, heads * t)  # row max
        rc.local("vec", (env.exp_ops + 1) * t, heads * ctx, CLS_ADD16)  # [heads, ctx] DSDs
        rc.reduce(env, axis, p1, p0, heads * t)  # row sum
        rc.local("mac", cdiv(lat, p0) * t * few, many, CLS_MAC, flops=f_att * (1 - qk_share),
                 onchip=s.pes * ctx * heads * t * cdiv(lat, p0) * per_elem)  # fmt: skip
        rc.reduce(env, axis, p1, p0, heads * cdiv(lat, p0) * t)
        rc.local("mac", hp * cdiv(lat, p0) * t, cdiv(v, seg), CLS_MAC, flops=f_uv,
                 onchip=s.pes * w_uv * t * per_elem)  # fmt: skip
        rc.reduce(env, other(axis), p0, p1, hp * cdiv(v, seg) * t)
        # the micro-batch's tokens pass one at a time (each sequence has its own latents):
        # one token's latent queries, scores and latent outputs for every head
        rc.act = heads * (lat_o + ctx + cdiv(lat, p0)) * FP32
        rc.kv = latent
    else:
        rows = env.mb * kv_len  # positions whose latents are expanded
        f_exp = 2.0 * rows * lat * heads * (nope + v)
        kt, nt = cdiv(lat, p1), cdiv(heads * (nope + v), p0)
        steps = np.maximum(s.cols, s.rows)
        m_t = cdiv(rows, steps)
        shift = cdiv(m_t * (kt + nt), env.vpw)
        rc.rows.append(dict(
            opcode="gemm", m=steps, n=m_t * nt, h=kt, k=shift, flops=f_exp,
            onchip=s.pes * steps * m_t * kt * nt * (env.weight_bytes + 2 * ACC_BYTES),
            fabric=s.pes * steps * shift * env.wavelet_bytes,
        ))  # fmt: skip
        expanded = replace(
            op, kind=OpKind.ATTENTION, flops=op.flops - f_exp / f,
            shape={"batch": op.dim("batch"), "heads": heads, "kv_heads": heads,
                   "head_dim": (nope + rope + v) // 2, "q_len": q, "kv_len": kv_len,
                   "causal": op.dim("causal")},
        )  # fmt: skip
        sub = Recipe(axis=axis)
        attention(expanded, s, env, axis, q, sub)
        rc.rows += sub.rows
        kv_pe = cdiv(rows * heads * (nope + rope + v), s.pes) * 2  # expanded K, V (bf16)
        rc.resident = latent + kt * nt * env.weight_bytes
        rc.kv = latent
        rc.act = np.maximum(sub.act, 2 * m_t * (kt + nt) * FP32) + kv_pe
    rc.axis = axis


def block_axes(ops: list[Op]) -> dict[str, str]:
    """Axis each op's input is split along, following the chain of a block (a decoder
    layer starts split along x; each matrix product flips it)."""
    out, axis = {}, X
    for op in ops:
        out[op.id] = axis
        if op.kind in (OpKind.MATMUL, OpKind.EMBEDDING):
            axis = other(axis) if op.kind == OpKind.MATMUL else X
    return out


# ---- the stream -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Region:
    """A placed block: the rectangle ``[x, x + cols) x [y, y + rows)`` of wafer ``wafer``."""

    block: int  # layer index; -1 the embedding, n_layers the final norm + lm_head
    name: str
    wafer: int
    index: int
    x: int
    y: int
    cols: int
    rows: int

    @property
    def unit(self) -> str:
        return f"wafer{self.wafer}.region{self.index}"

    @property
    def centre(self) -> tuple[int, int]:
        return self.x + self.cols // 2, self.y + self.rows // 2

    @classmethod
    def of(cls, d: dict[str, Any]) -> Region:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def hops_between(a: Region, b: Region) -> int:
    (ax, ay), (bx, by) = a.centre, b.centre
    return abs(ax - bx) + abs(ay - by)


def hops_to_edge(r: Region, cols: int, rows: int) -> int:
    """Hops from a region's centre to the nearest edge of its wafer (the I/O ring)."""
    x, y = r.centre
    return min(x, cols - 1 - x, y, rows - 1 - y)


class Lowerer:
    """Emits one micro-batch's trip through every region (and every wafer)."""

    def __init__(self, g: nx.DiGraph, plan: Plan, p: WaferParams, sc: Scenario) -> None:
        self.g, self.plan, self.p, self.sc = g, plan, p, sc
        x = plan.extra
        self.regions = {d["block"]: Region.of(d) for d in x["regions"]}
        self.wafer_cols, self.wafer_rows = x["wafer_cols"], x["wafer_rows"]
        self.streaming = x["mode"] == "weight_streaming"
        self.env = replace(
            env_of(p, sc, plan.micro_batch or sc.batch),
            kv_seqs=x.get("batch_per_wafer", sc.batch),
        )
        self.b = StreamBuilder(OPCODES)
        self.b.meta.update(
            family="cerebras-like", mode=x["mode"], region=f"{x['region_cols']}x{x['region_rows']}"
        )
        # what lowering carries from op to op (every table is the state's, shared)
        self.state = st = _WaferState(self)
        self.out_of, self.sent, self.axis_of = st.out_of, st.sent, st.axis_of
        self.last_of_block, self.loaded, self.local_out = st.last_of_block, st.loaded, st.local_out
        self.axes: dict[str, str] = {}  # op id -> axis its input is split along
        self._block_bytes: dict[int, float] | None = None

    def region_of(self, op: Op) -> Region:
        if op.layer in self.regions:
            return self.regions[op.layer]
        return self.regions[max(self.regions)] if op.layer > 0 else self.regions[min(self.regions)]

    # ---- transfers between regions ---------------------------------------------------------
    def transfer(self, src_op: Op, dst: Region, values: int, *, terminal: bool = False,
                 name: str = "activation_transfer") -> tuple[int, int]:  # fmt: skip
        """Instruction that streams ``values`` 16-bit values of ``src_op``'s output to
        ``dst``, and the lag (flight cycles) a consumer there starts after it."""
        key = (src_op.id, dst.block)
        if key in self.sent and not terminal:
            return self.sent[key]
        src, p, env = self.region_of(src_op), self.p, self.env
        axis = self.axis_of.get(src_op.id, X)
        lanes = min(Shape(src.cols, src.rows).ext(axis), Shape(dst.cols, dst.rows).ext(axis))
        per_lane = cdiv(cdiv(values, lanes), env.vpw)
        producer = self.out_of[src_op.id]
        if self.local_out.get(src_op.id, False):  # a local phase streams its output out
            lag = [(producer, START_START, p.pe.dsd_op_overhead_cycles)]
        else:  # a reduction's result (an argmax) exists only once it has finished
            lag = [(producer, END_START, 0)]
        hops = self.hops(src, dst)
        if src.wafer == dst.wafer:
            i = self.b.add(
                "xfer", unit=f"wafer{src.wafer}.xfer{src.index}", op=name, chip=src.wafer,
                layer=src_op.layer, lagged=lag, m=hops, n=per_lane, k=int(terminal), h=lanes,
                resources={f"wafer{src.wafer}.xfer{src.index}#{lanes}":
                           lanes * per_lane * env.wavelet_bytes},
                link_bytes=float(lanes * per_lane * env.wavelet_bytes * hops),
            )  # fmt: skip
            flight = xfer_flight_cycles(hops, p)
        else:
            nbytes = float(values * 2)  # 16-bit values packed on the Ethernet links
            name = "wafer_transfer" if name == "activation_transfer" else name
            i = self.b.add(
                "wafer_xfer", unit=f"wafer{src.wafer}.io", op=name, chip=src.wafer,
                layer=src_op.layer,
                lagged=lag, m=hops, n=per_lane, k=int(terminal), h=lanes,
                resources={f"wafer{src.wafer}>wafer{dst.wafer}": nbytes}, link_bytes=nbytes,
            )  # fmt: skip
            flight = wafer_flight_cycles(hops, p)
        self.sent[key] = (i, flight)
        return i, flight

    # ---- ops -------------------------------------------------------------------------------
    def emit_rows(self, op: Op, region: Region, rows, deps, lagged) -> int:
        last = -1
        for j, row in enumerate(rows):
            row = dict(row)
            opcode = row.pop("opcode")
            axis = row.pop("axis", None)
            fabric = float(row.pop("fabric", 0.0))
            flops, onchip = float(row.pop("flops", 0.0)), float(row.pop("onchip", 0.0))
            ints = {k: int(v) for k, v in row.items()}
            if opcode == "allreduce" and ints["m"] <= 1:
                continue  # nothing to reduce along a line of one PE
            res = {}
            if opcode == "allreduce":
                lines = ints["h"]
                res = {f"{region.unit}.{axis}#{lines}": lines * ints["n"] * self.env.wavelet_bytes}
            last = self.b.add(
                opcode, unit=region.unit, op=op.id, chip=region.wafer, layer=op.layer,
                deps=deps if j == 0 or last < 0 else [last],
                lagged=lagged if last < 0 else (), resources=res, flops=flops,
                onchip_bytes=onchip, link_bytes=fabric, **ints,
            )  # fmt: skip
            self.local_out[op.id] = opcode in ("mac", "vec")
        return last

    def lower(self) -> StreamBuilder:
        """Every op in graph order; a decoder layer identical to an earlier one, in the same
        state, replays its instructions (archsim/compiler/replay.py, ``_WaferState``)."""
        ops = ops_in_order(self.g)
        self.axes = block_axes(ops)
        LayerReplay(self.b, self.g, self.state).lower(ops, self.lower_op)
        if self.g.graph.get("whole_model") and not self.streaming:
            self.token_return(ops)
        return self.b

    def lower_op(self, op: Op) -> None:
        region = self.region_of(op)
        deps, lagged = [], []
        for pred in self.g.predecessors(op.id):
            pop = self.g.nodes[pred]["op"]
            if self.region_of(pop).block == region.block or self.streaming:
                deps.append(self.out_of[pred])
            else:
                hidden = op.dim("n") if op.kind != OpKind.MATMUL else op.dim("k")
                values = hidden * self.env.mb * seq_rows(op, self.sc)
                i, flight = self.transfer(pop, region, values)
                lagged.append((i, START_START, flight))
        if self.streaming:
            deps += self.weight_load(op, region)
        rc = op_recipe(op, Shape(region.cols, region.rows), self.env, self.axes[op.id],
                       seq_rows(op, self.sc))  # fmt: skip
        self.axis_of[op.id] = rc.axis
        last = self.emit_rows(op, region, rc.rows, deps, lagged)
        if last < 0:  # no phase (cannot happen for supported ops): pass the deps on
            last = deps[0] if deps else lagged[0][0]
        self.out_of[op.id] = last
        self.last_of_block[op.layer] = last

    def hops(self, src: Region, dst: Region) -> int:
        """Hops of a transfer from ``src`` to ``dst``: between their centres on one wafer,
        else from each to its wafer's edge."""
        if src.wafer == dst.wafer:
            return hops_between(src, dst)
        cols, rows = self.wafer_cols, self.wafer_rows
        return hops_to_edge(src, cols, rows) + hops_to_edge(dst, cols, rows)

    def block_bytes(self, layer: int) -> float:
        """Weight bytes block ``layer`` streams from MemoryX (its ops', in graph order)."""
        if self._block_bytes is None:
            per: dict[int, list[float]] = {}
            for n in self.g.nodes:
                op = self.g.nodes[n]["op"]
                per.setdefault(op.layer, []).append(streamed_bytes(op, self.env))
            self._block_bytes = {layer: sum(x) for layer, x in per.items()}
        return self._block_bytes.get(layer, 0)

    def token_return(self, ops: list[Op]) -> None:
        """The sampled token goes back to the embedding's region for the next step."""
        head, embed = ops[-1], ops[0]
        if head.layer == embed.layer:
            return
        self.transfer(head, self.region_of(embed), self.env.mb, terminal=True,
                      name="token_return")  # fmt: skip

    # ---- weight streaming --------------------------------------------------------------------
    def weight_load(self, op: Op, region: Region) -> list[int]:
        """Weight-streaming mode: the block's weights arrive from MemoryX before its first op
        (loaded in block order; block L + 1 streams while block L computes, into the buffer
        block L - 1 freed)."""
        if op.layer in self.loaded:
            return []
        nbytes = self.block_bytes(op.layer)
        freed = self.last_of_block.get(op.layer - 2, -1)
        levels = 1 + int(np.ceil(np.log2(max(self.plan.dp, 1))))
        i = self.b.add(
            "weight_load", unit="system.memoryx", op="weight_load", chip=0,
            layer=op.layer, deps=[freed], resources={"memoryx": nbytes}, offchip_bytes=nbytes,
            aux=levels,
        )  # fmt: skip
        self.loaded[op.layer] = i
        return [i]


class _WaferState:
    """What lowering carries from op to op (``archsim.compiler.replay.ReplayState``): each
    op's last instruction, output axis and whether its last phase is local; the transfers
    made to each block; each block's last instruction and weight load.

    A run of one layer reads, besides its ops and their inputs' op states: its region (its
    size; its wafer and unit names are its ``frame``), the axes its ops' inputs are split
    along (``block_axes`` runs over the whole model), for each input on another region that
    region's size, wafer (relative) and the hops to it, and the transfer made already
    (``sent``); in weight streaming whether its block is loaded, the bytes to load and the
    last instruction of the block two before (whose buffer the load reuses). ``restore``
    writes the tables of the run ``snapshot`` last described (``LayerReplay`` restores right
    after describing the run's start)."""

    def __init__(self, lw: Lowerer) -> None:
        self.lw = lw
        self.out_of: dict[str, int] = {}  # op id -> its last instruction
        self.sent: dict[tuple[str, int], tuple[int, int]] = {}  # (op, block) -> (xfer, lag)
        self.axis_of: dict[str, str] = {}
        self.last_of_block: dict[int, int] = {}
        self.loaded: dict[int, int] = {}  # block -> its weight_load (weight streaming)
        self.local_out: dict[str, bool] = {}  # op id -> its last phase is local (streams)
        self._run: list[Op] | None = None  # the run snapshot last described
        self._layer = 0  # its layer
        self._inputs_of: list[tuple[tuple[str, int], Region]] = []  # its ``_inputs``

    def _inputs(self, run: list[Op], region: Region) -> list[tuple[tuple[str, int], Region]]:
        """The ``sent`` key and region of each input of the run on another region."""
        lw, nodes, out = self.lw, self.lw.g.nodes, []
        if lw.streaming:
            return out
        for op in run:
            for pred in lw.g.predecessors(op.id):
                src = lw.region_of(nodes[pred]["op"])
                if src.block != region.block:
                    out.append(((pred, region.block), src))
        return out

    def frame(self, run: list[Op]) -> tuple:
        """The run's wafer, and its places: its region and the transfer units of the regions
        it receives from, in a fixed order (identical layers sit on other regions)."""
        region = self.lw.region_of(run[0])
        places = [region.unit]
        for _, src in self._inputs(run, region):
            name = f"wafer{src.wafer}.xfer{src.index}"
            if name not in places:
                places.append(name)
        return region.wafer, tuple(places)

    def relative_name(self, name: str, frame: tuple) -> str:
        """A place's unit or resource as ``@k`` + the rest (``wafer0.region5.x#12`` ->
        ``@0.x#12``); any other wafer counted from the frame's (``wafer@1.io``)."""
        base, places = frame
        for k, place in enumerate(places):
            n = len(place)
            if name.startswith(place) and (len(name) == n or not name[n].isalnum()):
                return f"@{k}{name[n:]}"
        return _WAFER.sub(lambda m: f"wafer@{int(m.group(1)) - base}", name)

    def absolute_name(self, name: str, frame: tuple) -> str:
        base, places = frame
        if name.startswith("@"):
            m = _PLACE.match(name)
            return places[int(m.group(1))] + m.group(2)
        return _WAFER_AT.sub(lambda m: f"wafer{int(m.group(1)) + base}", name)

    def snapshot(self, ref, run: list[Op], frame: tuple) -> tuple:
        lw, layer = self.lw, run[0].layer
        region = lw.region_of(run[0])  # a run is one layer's: one region
        if run is not self._run:  # the start of a run (the end reuses its inputs)
            self._run, self._layer = run, layer
            self._inputs_of = self._inputs(run, region)
        inputs = self._inputs_of
        xfers = []
        for key, src in inputs:
            hit = self.sent.get(key)
            sent = None if hit is None else (ref(hit[0]), hit[1])
            where = (src.wafer - region.wafer, src.cols, src.rows, lw.hops(src, region))
            xfers.append((*where, sent))
        streamed = ()
        if lw.streaming:
            load = self.loaded.get(layer, -1)
            nbytes = lw.block_bytes(layer) if load < 0 else 0
            streamed = (ref(load), ref(self.last_of_block.get(layer - 2, -1)), nbytes)
        return (
            (region.cols, region.rows),
            tuple(lw.axes[op.id] for op in run),
            tuple(xfers),
            streamed,
            ref(self.last_of_block.get(layer, -1)),
        )

    def restore(self, snap: tuple, frame: tuple) -> None:
        _, _, xfers, streamed, last = snap
        for (key, _), (*_, sent) in zip(self._inputs_of, xfers, strict=True):
            if sent is not None:
                self.sent[key] = sent
        if streamed and streamed[0] >= 0:
            self.loaded[self._layer] = streamed[0]
        if last >= 0:
            self.last_of_block[self._layer] = last

    def op_state(self, op: str, ref) -> tuple:
        return (ref(self.out_of[op]), self.axis_of[op], self.local_out.get(op))

    def set_op_state(self, op: str, state: tuple) -> None:
        self.out_of[op], self.axis_of[op], local = state
        if local is None:
            self.local_out.pop(op, None)
        else:
            self.local_out[op] = local


_WAFER = re.compile(r"wafer(\d+)")
_WAFER_AT = re.compile(r"wafer@(-?\d+)")
_PLACE = re.compile(r"@(\d+)(.*)\Z", re.S)


def streamed_bytes(op: Op, env: Env) -> float:
    """Weight bytes of ``op`` a weight-streaming wafer loads for a step: all of them, except
    for routed experts, of which only the touched ones (the router has picked them before
    the layer's experts are needed)."""
    if op.kind == OpKind.EXPERT_FFN:
        return op.weight_bytes
    return op.params * env.weight_bytes


def lower(g: nx.DiGraph, plan: Plan, p: WaferParams, sc: Scenario) -> InstructionStream:
    """One micro-batch's trip (``replicated`` makes the program of several)."""
    return Lowerer(g, plan, p, sc).lower().build()
