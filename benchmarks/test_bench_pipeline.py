"""Speed of the pipeline (h100-like and groq-like): lowering (Python: graph, partition,
lower, and for groq-like the micro-batch search and the static schedule) and the cycle model
(numba: timing pass + event engine) timed apart.

Target (issue 2): once JIT-compiled, a whole llama3-70b decode step simulates in well under
a second. Run: pytest benchmarks/ --benchmark-columns=min,mean,max
"""

from __future__ import annotations

import pytest

from archsim.config import load_arch
from archsim.core.engine import simulate_stream
from archsim.core.registry import get_family
from archsim.graph import build_graph
from archsim.graph.model import load_model
from archsim.graph.scenario import Precision, Scenario

CASES = {
    "h100-like/llama3-70b-decode-b1": ("h100-like", dict(phase="decode", batch=1, ctx=2048)),
    "h100-like/llama3-70b-prefill-8192": ("h100-like", dict(phase="prefill", batch=1, seq=8192)),
    "groq-like/llama3-70b-decode-b1": ("groq-like", dict(phase="decode", batch=1, ctx=2048)),
    "groq-like/llama3-70b-int8-decode-b256": (
        "groq-like",
        dict(phase="decode", batch=256, ctx=2048, precision="int8"),
    ),
}


def _lower(case):
    arch, scenario = CASES[case]
    p = load_arch(arch)
    fam = get_family(p.family)
    prec = Precision.parse(scenario.get("precision", "bf16"))
    sc = Scenario(**{k: v for k, v in scenario.items() if k != "precision"}, precision=prec)
    g = build_graph(load_model("llama3-70b"), sc)
    plan = fam.plan(g, p, None)
    return fam, p, fam.lower(fam.partition(g, plan, p), plan, p, sc)


def _cycle_model(fam, p, stream):
    return simulate_stream(stream, fam.timing(stream, p), static=fam.static).cycles


@pytest.mark.parametrize("case", list(CASES))
def test_lowering(benchmark, case):
    """Model spec -> graph -> partition -> instruction stream."""
    benchmark.group = case
    fam, _, stream = benchmark(_lower, case)
    assert len(stream) > 0


@pytest.mark.parametrize("case", list(CASES))
def test_cycle_model(benchmark, case):
    """Kernel durations (numba) + event engine (numba) on the lowered stream."""
    benchmark.group = case
    fam, p, stream = _lower(case)
    _cycle_model(fam, p, stream)  # compile outside the timed region
    assert benchmark(_cycle_model, fam, p, stream) > 0


@pytest.mark.parametrize("case", list(CASES))
def test_end_to_end(benchmark, case):
    """archsim.simulate as a user calls it."""
    import archsim

    benchmark.group = case
    arch, scenario = CASES[case]
    archsim.simulate(arch, "llama3-70b", **scenario)
    r = benchmark(archsim.simulate, arch, "llama3-70b", **scenario)
    assert r.seconds > 0
