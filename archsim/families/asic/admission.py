"""Admission: a fixed-function chip runs only what its silicon was built for.

Before anything is planned, every op of the graph is checked against the configuration's
lists (``admission`` in the YAML): op kinds, activations, norms, attention variants, head
sizes, precisions, and mixture-of-experts routing (refused unless the host routes it). The
first op outside them is refused with one line naming the op, its layer and the family.
MLA attention (a latent KV cache, DeepSeek) is not among the attention unit's variants and
is refused as an op kind.
"""

from __future__ import annotations

import networkx as nx

from archsim.core.errors import UnsupportedOpError
from archsim.families.asic.params import AsicParams
from archsim.graph.build import ops_in_order
from archsim.graph.ops import Op, OpKind

# op kinds the family can lower at all (the admission list may only narrow it)
LOWERABLE = frozenset(
    k.value
    for k in (
        OpKind.EMBEDDING,
        OpKind.MATMUL,
        OpKind.ATTENTION,
        OpKind.NORM,
        OpKind.ROPE,
        OpKind.ACTIVATION,
        OpKind.RESIDUAL,
        OpKind.ALL_REDUCE,
        OpKind.SEND_RECV,
        OpKind.ROUTER,
        OpKind.EXPERT_FFN,
        OpKind.ALL_TO_ALL,
    )
)
# mixture-of-experts kinds: lowerable only with the host routing the tokens (the router's
# decision goes over PCIe; the experts run on the FFN engines, the all-to-alls on the links)
MOE_KINDS = frozenset(k.value for k in (OpKind.ROUTER, OpKind.EXPERT_FFN, OpKind.ALL_TO_ALL))


def _refuse(family: str, op: Op, why: str) -> None:
    raise UnsupportedOpError(
        f"{family} cannot run {op.id} ({op.kind.value}, layer {op.layer}): {why}"
    )


def _variant(op: Op) -> str:
    heads, kvh = op.dim("heads"), op.dim("kv_heads")
    return "mha" if kvh == heads else ("mqa" if kvh == 1 else "gqa")


def _activation(g: nx.DiGraph, op: Op) -> str:
    spec = g.graph.get("model")
    if spec is not None:
        return spec.activation
    return "silu" if op.dim("gated") else "gelu"  # a kernel graph: silu-mul or gelu


def check(g: nx.DiGraph, p: AsicParams, family: str) -> None:
    """Raise UnsupportedOpError on the first op (in graph order) the silicon cannot run."""
    a = p.admission
    kinds = (LOWERABLE - MOE_KINDS) & set(a.op_kinds)
    precisions = set(a.precisions)
    for op in ops_in_order(g):
        if op.kind.value in MOE_KINDS:
            if not a.moe_host_fallback:
                _refuse(
                    family, op, "mixture-of-experts routing has no stage on the chip (set "
                    "admission.moe_host_fallback=true to route on the host over PCIe)",
                )  # fmt: skip
        elif op.kind.value not in kinds:
            _refuse(family, op, f"its fixed stages run only {', '.join(sorted(kinds))}")
        dtypes = {
            OpKind.MATMUL: (op.weight_dtype, op.act_dtype),
            OpKind.EXPERT_FFN: (op.weight_dtype, op.act_dtype),
            OpKind.ATTENTION: (op.weight_dtype, op.act_dtype),  # weight_dtype = KV cache
        }.get(op.kind, ())
        for dtype in dtypes:
            if dtype not in precisions:
                _refuse(
                    family, op, f"{dtype} is not among its precisions ({', '.join(a.precisions)})"
                )
        if op.kind == OpKind.ATTENTION:
            if op.dim("head_dim") not in a.head_dims:
                sizes = ", ".join(str(x) for x in a.head_dims)
                _refuse(family, op, f"head size {op.dim('head_dim')} (its attention unit: {sizes})")
            if _variant(op) not in a.attention_variants:
                _refuse(
                    family,
                    op,
                    f"{_variant(op)} attention (it runs {', '.join(a.attention_variants)})",
                )
        if op.kind == OpKind.ACTIVATION and _activation(g, op) not in a.activations:
            _refuse(
                family, op, f"{_activation(g, op)} activation (it runs {', '.join(a.activations)})"
            )
        if op.kind == OpKind.NORM:
            norm = "layernorm" if op.dim("layernorm") else "rmsnorm"
            if norm not in a.norms:
                _refuse(family, op, f"{norm} (it runs {', '.join(a.norms)})")
