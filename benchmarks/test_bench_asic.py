"""Speed of etched-like (issue 11 target: a whole llama3-70b decode step simulates in <= 1 s
once JIT-compiled): lowering (graph, admission, partition, tiles -> stream) and the cycle
model (numba timing + event engine with HBM and link flows) timed apart, and end to end.

Run: pytest benchmarks/test_bench_asic.py --benchmark-columns=min,mean,max
"""

from __future__ import annotations

import pytest

import archsim
from archsim.config import load_arch
from archsim.core.engine import simulate_stream
from archsim.core.registry import get_family
from archsim.graph import build_graph
from archsim.graph.model import load_model
from archsim.graph.scenario import Precision, Scenario

CASES = {
    "etched-like/llama3-70b-fp8-decode-b64": dict(phase="decode", batch=64, ctx=2048, chips=None),
    "etched-like/llama3-70b-fp8-decode-b64-tp8": dict(phase="decode", batch=64, ctx=2048, chips=8),
}


def _lower(case):
    kw = CASES[case]
    p = load_arch("etched-like")
    fam = get_family(p.family)
    sc = Scenario(
        phase=kw["phase"], batch=kw["batch"], ctx=kw["ctx"], precision=Precision.parse("fp8")
    )
    g = build_graph(load_model("llama3-70b"), sc)
    fam.check_graph(g, p)
    plan = fam.plan(g, p, kw["chips"])
    return fam, p, fam.lower(fam.partition(g, plan, p), plan, p, sc)


def _cycle_model(fam, p, stream):
    return simulate_stream(stream, fam.timing(stream, p), static=fam.static).cycles


@pytest.mark.parametrize("case", list(CASES))
def test_lowering(benchmark, case):
    """Model spec -> graph -> admission -> partition -> instruction stream."""
    benchmark.group = case
    _, _, stream = benchmark(_lower, case)
    assert len(stream) > 0


@pytest.mark.parametrize("case", list(CASES))
def test_cycle_model(benchmark, case):
    """Timing (numba) + event engine (numba, HBM and link flows) on the lowered stream."""
    benchmark.group = case
    fam, p, stream = _lower(case)
    _cycle_model(fam, p, stream)  # compile outside the timed region
    assert benchmark(_cycle_model, fam, p, stream) > 0


@pytest.mark.parametrize("case", list(CASES))
def test_end_to_end(benchmark, case):
    """archsim.simulate as a user calls it; the whole step must take <= 1 s warm."""
    benchmark.group = case
    kw = dict(CASES[case], precision="fp8")
    archsim.simulate("etched-like", "llama3-70b", **kw)
    r = benchmark(archsim.simulate, "etched-like", "llama3-70b", **kw)
    assert r.seconds > 0
    assert benchmark.stats.stats.mean <= 1.0
