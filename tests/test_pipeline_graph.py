"""A step's graph is built once per (model, scenario, layers) and shared by the steps that
follow (pipeline.step_graph): safe only because plan, partition and lowering never change
it. Pinned here for every family, on dense, MoE, MLA and SSM models."""

from __future__ import annotations

import pytest

from archsim import pipeline
from archsim.config import load_arch
from archsim.core.errors import ArchsimError
from archsim.core.registry import get_family
from archsim.graph.model import load_model
from archsim.graph.scenario import Precision, Scenario

ARCHS = ["h100-like", "groq-like", "cerebras-like", "matx-like", "dmatrix-like", "etched-like"]


def fingerprint(g) -> tuple:
    """Every node with its op (all fields), every edge, and the graph's attributes."""
    return (
        tuple((n, repr(d["op"])) for n, d in g.nodes(data=True)),
        tuple(g.edges),
        tuple(sorted((k, repr(v)) for k, v in g.graph.items())),
    )


CASES = [(arch, model, 3) for arch in ARCHS
         for model in ("llama3-8b", "mixtral-8x7b", "deepseek-v3", "bamba-9b")]  # fmt: skip
CASES += [("wse-2", "llama3-70b", None), ("groq-like", "llama3-70b", None)]  # several stages


@pytest.mark.parametrize(("arch", "model", "layers"), CASES)
def test_plan_partition_and_lowering_leave_the_graph_as_built(arch, model, layers):
    """After a family plans, partitions and lowers a step (or refuses it), the graph it was
    given holds the same nodes, ops, edges and attributes as when it was built."""
    p = load_arch(arch, {})
    fam = get_family(p.family)
    prec = Precision.parse("int8" if arch in ("groq-like", "dmatrix-like") else "bf16")
    sc = Scenario(phase="decode", batch=4, seq=256, ctx=256, precision=prec)
    g = pipeline.step_graph(load_model(model), sc, layers)
    before = fingerprint(g)
    try:
        pipeline.refuse_unsupported(g, fam, p)
        plan = fam.plan(g, p, None)
        pg = fam.partition(g, plan, p)
        fam.lower(pg, plan, p, sc)
    except ArchsimError:
        pass  # a refusal must leave the graph alone too
    assert fingerprint(g) == before


def test_equal_steps_share_one_graph():
    """The same model, scenario and layer count give the same graph object; another batch a
    new one."""
    spec = load_model("llama3-8b")
    a = pipeline.step_graph(spec, Scenario(phase="decode", batch=2), 2)
    assert pipeline.step_graph(load_model("llama3-8b"), Scenario(phase="decode", batch=2), 2) is a
    assert pipeline.step_graph(spec, Scenario(phase="decode", batch=3), 2) is not a
