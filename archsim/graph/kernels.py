"""Graphs of one operator, for ``archsim kernel``: the op alone (or ``repeat`` copies back to
back), with its FLOPs and compulsory bytes, independent of any machine.

Each kernel op names the shape keys it takes (``KERNEL_OPS``); a family lowers the op exactly
as it lowers that op inside a model (the same ``Op`` kinds), so a kernel timing is a
model's building block timed alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import networkx as nx

from archsim.core.errors import ScenarioError
from archsim.graph.build import ELEM_BYTES
from archsim.graph.ops import Op, OpKind
from archsim.graph.scenario import Precision, Scenario


@dataclass(frozen=True)
class KernelOp:
    """One operator ``archsim kernel`` can time: its op kind, the shape keys it needs, the
    optional ones with their defaults, and one line of help."""

    kind: OpKind
    required: tuple[str, ...]
    optional: tuple[tuple[str, int], ...] = ()
    help: str = ""


KERNEL_OPS: dict[str, KernelOp] = {
    "gemm": KernelOp(OpKind.MATMUL, ("m", "n", "k"), help="[m, k] activations @ [k, n] weights"),
    "bmm": KernelOp(
        OpKind.BMM, ("batch", "m", "n", "k"), help="batch x [m, k] @ [k, n], no weights"
    ),
    "attention": KernelOp(
        OpKind.ATTENTION,
        ("batch", "heads", "head_dim", "ctx"),
        (("kv_heads", 0), ("q_len", 1), ("causal", -1)),
        "softmax(Q K^T) V over ctx cached keys; q_len 1 is decode, q_len = ctx a prefill "
        "(kv_heads default heads; causal default: on when q_len > 1)",
    ),
    "softmax": KernelOp(OpKind.SOFTMAX, ("rows", "cols"), help="softmax over rows of cols"),
    "layernorm": KernelOp(OpKind.NORM, ("rows", "cols"), help="LayerNorm over rows of cols"),
    "rmsnorm": KernelOp(OpKind.NORM, ("rows", "cols"), help="RMSNorm over rows of cols"),
    "gelu": KernelOp(OpKind.ACTIVATION, ("rows", "cols"), help="gelu of [rows, cols]"),
    "silu-mul": KernelOp(
        OpKind.ACTIVATION, ("rows", "cols"), help="silu(gate) * up -> [rows, cols]"
    ),
    "rope": KernelOp(OpKind.ROPE, ("rows", "cols"), help="rotary embedding of [rows, cols]"),
    "add": KernelOp(OpKind.RESIDUAL, ("rows", "cols"), help="x + y of [rows, cols] (residual)"),
    "copy": KernelOp(OpKind.RESIDUAL, ("rows", "cols"), help="copy of [rows, cols]"),
    "all-reduce": KernelOp(
        OpKind.ALL_REDUCE, ("bytes",), (("ranks", 8),), "sum of a bytes-long buffer over ranks"
    ),
    "send-recv": KernelOp(
        OpKind.SEND_RECV,
        ("bytes",),
        (("ranks", 2),),
        "bytes from chip 0 to chip ranks-1 (the first chip of the next pipeline stage)",
    ),
}


def kernel_shape(op: str, shape: dict[str, int | None]) -> dict[str, int]:
    """The op's full shape: required keys present and positive, defaults filled in, keys the
    op does not take refused (one line naming them)."""
    if op not in KERNEL_OPS:
        raise ScenarioError(f"unknown kernel op {op!r} (valid: {', '.join(KERNEL_OPS)})")
    spec = KERNEL_OPS[op]
    given = {k: v for k, v in shape.items() if v is not None}
    takes = set(spec.required) | {k for k, _ in spec.optional}
    extra = sorted(set(given) - takes)
    if extra:
        raise ScenarioError(
            f"{op} does not take {', '.join('--' + k.replace('_', '-') for k in extra)} "
            f"(it takes {', '.join('--' + k.replace('_', '-') for k in sorted(takes))})"
        )
    missing = [k for k in spec.required if k not in given]
    if missing:
        raise ScenarioError(f"{op} needs {', '.join('--' + k.replace('_', '-') for k in missing)}")
    out = {**dict(spec.optional), **given}
    for key, value in out.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(f"{op}: {key} must be an integer, got {value!r}")
        if key == "causal":
            continue
        if value <= 0 and not (key == "kv_heads" and value == 0):
            raise ScenarioError(f"{op}: {key} must be a positive integer, got {value}")
    return out


def _attention(s: dict[str, int], p: Precision) -> Op:
    b, h, d, ctx, q = s["batch"], s["heads"], s["head_dim"], s["ctx"], s["q_len"]
    kvh = s["kv_heads"] or h
    if h % kvh:
        raise ScenarioError(f"attention: heads {h} is not a multiple of kv_heads {kvh}")
    if q > ctx:
        raise ScenarioError(f"attention: q_len {q} exceeds ctx {ctx} (the keys it attends over)")
    causal = q > 1 if s["causal"] < 0 else bool(s["causal"])
    # query i of the last q_len positions sees ctx - q_len + i + 1 keys when causal
    pairs = q * (ctx - q) + q * (q + 1) / 2 if causal else q * ctx
    return Op(
        id="attention",
        kind=OpKind.ATTENTION,
        layer=0,
        shape={
            "batch": b,
            "heads": h,
            "kv_heads": kvh,
            "head_dim": d,
            "q_len": q,
            "kv_len": ctx,
            "causal": int(causal),
        },  # fmt: skip
        flops=4.0 * b * h * d * pairs,
        act_in_bytes=b * q * h * d * ELEM_BYTES,  # Q
        act_out_bytes=b * q * h * d * ELEM_BYTES,  # O
        kv_read_bytes=b * ctx * 2 * kvh * d * p.kv_bytes,  # K and V
        act_dtype=p.activations,
        weight_dtype=p.kv,
    )


def kernel_op(op: str, shape: dict[str, int], p: Precision) -> Op:
    """The ``Op`` of kernel ``op`` with its FLOPs and compulsory bytes."""
    s = kernel_shape(op, shape)
    kind = KERNEL_OPS[op].kind
    if op == "gemm":
        m, n, k = s["m"], s["n"], s["k"]
        return Op("gemm", kind, 0, {"m": m, "n": n, "k": k}, flops=2.0 * m * n * k,
                  params=n * k, weight_bytes=n * k * p.weight_bytes,
                  act_in_bytes=m * k * p.act_bytes, act_out_bytes=m * n * ELEM_BYTES,
                  weight_dtype=p.weights, act_dtype=p.activations)  # fmt: skip
    if op == "bmm":
        b, m, n, k = s["batch"], s["m"], s["n"], s["k"]
        return Op("bmm", kind, 0, {"batch": b, "m": m, "n": n, "k": k},
                  flops=2.0 * b * m * n * k, act_in_bytes=b * (m * k + k * n) * p.act_bytes,
                  act_out_bytes=b * m * n * ELEM_BYTES, weight_dtype=p.activations,
                  act_dtype=p.activations)  # fmt: skip
    if op == "attention":
        return _attention(s, p)
    if op in ("all-reduce", "send-recv"):
        nbytes = s["bytes"]
        if op == "send-recv" and s["ranks"] < 2:
            raise ScenarioError("send-recv: ranks must be at least 2 (a sender and a receiver)")
        shape_ = {"m": 1, "n": max(1, round(nbytes / ELEM_BYTES))}
        if op == "send-recv":
            shape_["dst_stage"] = 1
        group = s["ranks"] if op == "all-reduce" else 1
        return Op(op, kind, 0, shape_, link_bytes=float(nbytes), act_in_bytes=float(nbytes),
                  act_out_bytes=float(nbytes), group=group)  # fmt: skip
    rows, cols = s["rows"], s["cols"]
    reads = {"silu-mul": 2, "add": 2}.get(op, 1)
    params = {"rmsnorm": cols, "layernorm": 2 * cols}.get(op, 0)
    shape_ = {"m": rows, "n": cols}
    if op == "layernorm":
        shape_["layernorm"] = 1
    if op in ("gelu", "silu-mul"):
        shape_["gated"] = int(op == "silu-mul")
    return Op(op, kind, 0, shape_, params=params, weight_bytes=params * p.weight_bytes,
              act_in_bytes=reads * rows * cols * ELEM_BYTES,
              act_out_bytes=rows * cols * ELEM_BYTES)  # fmt: skip


def kernel_graph(op: str, shape: dict[str, int], precision: Precision, repeat: int = 1):
    """``repeat`` copies of the op, each waiting for the previous (back-to-back calls)."""
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat <= 0:
        raise ScenarioError(f"repeat must be a positive integer, got {repeat!r}")
    one = kernel_op(op, shape, precision)
    sc = Scenario(phase="decode", batch=1, seq=1, ctx=1, precision=precision)
    g = nx.DiGraph(scenario=sc, kernel=op, whole_model=False)
    prev = None
    for r in range(repeat):
        node = replace(one, id=f"{one.id}.r{r}" if repeat > 1 else one.id)
        g.add_node(node.id, op=node)
        if prev is not None:
            g.add_edge(prev, node.id)
        prev = node.id
    return g
