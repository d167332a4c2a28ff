"""How far the serving step model is from direct simulation (docs/serving.md, "Accuracy").

* ``interpolation_errors``: grid-interpolated decode and prefill step times against the
  cycle model run at the exact shape.
* ``composition_errors``: a mixed step (decodes riding with a prefill chunk, or a
  speculative verification) composed from pure steps, against a *fused* graph timed
  directly: one forward pass whose projections see every new token of the step and whose
  layers each hold two attentions (the chunk's, causal over its cached prefix, and the
  decodes'). Only a family that lowers each op on its own (no batch-level micro-batching)
  can time that graph; h100-like can.

``python -m archsim.serve.check --arch h100-like --model llama3-8b`` prints both tables.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from archsim.graph.model import ModelSpec, load_model
from archsim.graph.ops import Op
from archsim.graph.scenario import Precision, Scenario
from archsim.serve.steps import FamilySteps, plan_deployment, step_parts

DECODE_POINTS = ((3, 700), (5, 1500), (12, 300), (20, 2600), (45, 900), (100, 1200))
PREFILL_POINTS = (40, 100, 300, 700, 1500, 3000)
MIXED_CASES = (  # (decodes, their mean context, [(chunk tokens, cached before it)], q)
    (8, 1024, [(504, 0)], 1),  # 512 new tokens: a grid point
    (8, 1024, [(512, 0)], 1),  # 520: just past one
    (32, 2048, [(224, 0)], 1),
    (32, 2048, [(256, 0)], 1),
    (16, 512, [(1008, 3072)], 1),
    (64, 1024, [(128, 0), (384, 1024)], 1),
    (16, 1024, [], 4),
    (16, 1024, [], 5),
)


def _deployment(arch: str, model: ModelSpec, chips: int | None, resolution: float):
    pool = int(1.25 * max(b * c for b, c in DECODE_POINTS))  # every point fits
    dep = plan_deployment(arch, model, Precision(), chips=chips, overrides=(),
                          kv_compression=1.0, pool_tokens=pool,
                          token_budget=max(PREFILL_POINTS))  # fmt: skip
    r = resolution
    return dep, FamilySteps(dep, 2.0 * r, 4.0 * r, 1.0 * r)


def interpolation_errors(
    arch: str, model: str, chips: int | None = None, resolution: float = 1.0
) -> list[dict]:
    from archsim.pipeline import simulate

    spec = load_model(model)
    dep, steps = _deployment(arch, spec, chips, resolution)
    rows = []
    for b, c in DECODE_POINTS:
        got = float(steps.decode_times(b, np.array([c]))[0])
        r = simulate(arch, spec, phase="decode", batch=b, ctx=c, chips=dep.chips)
        rows.append(_row(f"decode b={b} ctx={c}", got, step_parts(r)[0]))
    for n in PREFILL_POINTS:
        got = steps.prefill_time(n)
        r = simulate(arch, spec, phase="prefill", batch=1, seq=n, chips=dep.chips)
        rows.append(_row(f"prefill {n}", got, step_parts(r)[0]))
    return [{**row, "chips": dep.chips} for row in rows]


def _row(what: str, model: float, direct: float) -> dict:
    return {"step": what, "model_s": model, "direct_s": direct, "error": model / direct - 1}


def fused_graph(spec: ModelSpec, decode: int, ctx: int, chunks, q: int = 1):
    """One forward pass over every new token of a mixed step: projections over
    ``sum(chunks) + decode x q`` rows; per layer, one causal attention per chunk over its
    cached prefix and one over the decodes' caches (``q`` queries each)."""
    from archsim.graph.build import _attention, build_graph

    n = sum(p for p, _ in chunks) + decode * q
    sc = Scenario("prefill", 1, n, 1)
    g = build_graph(spec, sc)
    for i in range(spec.num_layers):
        node = f"L{i}.attention"
        attn_ops: list[Op] = []
        for j, (p, o) in enumerate(chunks):
            op = _attention(f"{node}.chunk{j}", i, spec, Scenario("prefill", 1, o + p, 1))
            attn_ops.append(_chunk(op, p, o))
        if decode:
            op = _attention(f"{node}.decode", i, spec, Scenario("decode", decode, 1, ctx))
            if q > 1:
                op = replace(op, shape={**op.shape, "q_len": q},
                             flops=op.flops * q, act_in_bytes=op.act_in_bytes * q,
                             act_out_bytes=op.act_out_bytes * q,
                             kv_write_bytes=op.kv_write_bytes * q)  # fmt: skip
            attn_ops.append(op)
        _splice(g, node, attn_ops)
    return g, sc


def _chunk(op: Op, p: int, o: int) -> Op:
    """A causal attention of ``p`` queries after ``o`` cached tokens: the last ``p`` rows of
    the ``o + p`` prefill's (their query-key pairs: p*o + p(p+1)/2)."""
    full_pairs = (o + p) * (o + p + 1) / 2
    pairs = p * o + p * (p + 1) / 2
    f = pairs / full_pairs
    return replace(op, shape={**op.shape, "q_len": p}, flops=op.flops * f,
                   act_in_bytes=op.act_in_bytes * p / (o + p),
                   act_out_bytes=op.act_out_bytes * p / (o + p),
                   kv_write_bytes=op.kv_write_bytes * p / (o + p))  # fmt: skip


def _splice(g, node: str, ops: list[Op]) -> None:
    """Replace ``node`` by ``ops`` in a chain (same predecessors, same successors)."""
    preds, succs = list(g.predecessors(node)), list(g.successors(node))
    g.remove_node(node)
    prev = preds
    for op in ops:
        g.add_node(op.id, op=op)
        for p in prev:
            g.add_edge(p, op.id)
        prev = [op.id]
    for s in succs:
        for p in prev:
            g.add_edge(p, s)


def fused_seconds(arch: str, spec: ModelSpec, chips: int, decode, ctx, chunks, q=1) -> float:
    """Period of the fused mixed step, timed by the family's own pipeline stages."""
    from archsim.config import load_arch
    from archsim.core.registry import get_family
    from archsim.pipeline import refuse_unsupported, run_stream

    params = load_arch(arch)
    family = get_family(params.family)
    g, sc = fused_graph(spec, decode, ctx, chunks, q)
    refuse_unsupported(g, family)
    plan = family.plan(g, params, chips)
    pg = family.partition(g, plan, params)
    stream = family.lower(pg, plan, params, sc)
    _, tl = run_stream(family, params, stream)
    return family.step(stream, tl, plan, params, sc).period_s


def composition_errors(arch: str, model: str, chips: int | None = None) -> list[dict]:
    """Composed mixed steps against the fused graph: on the default grid, and with every
    shape simulated exactly (resolution 0), which isolates the composition itself."""
    spec = load_model(model)
    dep, steps = _deployment(arch, spec, chips, 1.0)
    _, exact = _deployment(arch, spec, dep.chips, 0.0)
    rows = []
    for d, c, chunks, q in MIXED_CASES:
        got = [_composed(s, d, c, chunks, q) for s in (steps, exact)]
        direct = fused_seconds(arch, spec, dep.chips, d, c, chunks, q)
        what = f"{d} decodes @ctx {c}" + (f" x{q} tokens" if q > 1 else "")
        what += "".join(f" + chunk {p}" + (f" after {o}" if o else "") for p, o in chunks)
        row = _row(what, got[0], direct)
        row.update(exact_s=got[1], exact_error=got[1] / direct - 1, chips=dep.chips)
        rows.append(row)
    return rows


def _composed(steps: FamilySteps, d: int, c: int, chunks, q: int) -> float:
    if q == 1:
        return steps.step_time(d, c, 1, chunks)
    return float(steps.multi_token_times(d, np.array([c]), q)[0])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="h100-like")
    ap.add_argument("--model", default="llama3-8b")
    ap.add_argument("--resolution", type=float, default=1.0)
    ap.add_argument("--no-fused", action="store_true", help="skip the fused mixed steps")
    a = ap.parse_args(argv)
    tables = [("interpolation", interpolation_errors(a.arch, a.model, None, a.resolution))]
    if not a.no_fused:
        tables.append(("composition", composition_errors(a.arch, a.model)))
    for title, rows in tables:
        print(f"{title}: {a.arch} ({rows[0]['chips']} chips) {a.model}")
        for r in rows:
            line = (f"  {r['step']:<56} model {r['model_s'] * 1e3:8.3f} ms  direct "
                    f"{r['direct_s'] * 1e3:8.3f} ms  {100 * r['error']:+6.1f} %")  # fmt: skip
            if "exact_s" in r:
                line += f"  (exact shapes {100 * r['exact_error']:+6.1f} %)"
            print(line)
        for key in ("error", "exact_error"):
            if key in rows[0]:
                errs = np.abs([r[key] for r in rows])
                print(f"  {key}: mean |error| {100 * errs.mean():.1f} %, max "
                      f"{100 * errs.max():.1f} %")  # fmt: skip


if __name__ == "__main__":  # pragma: no cover
    main()
