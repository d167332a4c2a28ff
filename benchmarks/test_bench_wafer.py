"""Speed of cerebras-like on a whole llama3-70b decode step (4 wafers, 80 layer regions):
the compiler's placement search and lowering (Python), the cycle model (numba timing kernel +
event engine), and ``archsim.simulate`` end to end.

Target (issue 8): once JIT-compiled, the whole step simulates in at most 1 s.
Run: pytest benchmarks/test_bench_wafer.py --benchmark-columns=min,mean,max
"""

from __future__ import annotations

import pytest

from archsim.config import load_arch
from archsim.core.engine import simulate_stream
from archsim.core.registry import get_family
from archsim.graph import build_graph
from archsim.graph.model import load_model
from archsim.graph.scenario import Scenario

CASES = {
    "cerebras-like/llama3-70b-decode-b1": dict(batch=1, ctx=2048),
    "cerebras-like/llama3-70b-decode-b64": dict(batch=64, ctx=2048),
}


def _lower(case):
    p = load_arch("cerebras-like")
    fam = get_family(p.family)
    sc = Scenario(**CASES[case])
    g = build_graph(load_model("llama3-70b"), sc)
    plan = fam.plan(g, p, None)
    return fam, p, fam.lower(fam.partition(g, plan, p), plan, p, sc)


def _cycle_model(fam, p, stream):
    return simulate_stream(stream, fam.timing(stream, p)).cycles


@pytest.mark.parametrize("case", list(CASES))
def test_lowering(benchmark, case):
    """Graph -> placement search -> partition -> instruction stream."""
    benchmark.group = case
    _, _, stream = benchmark(_lower, case)
    assert len(stream) > 0


@pytest.mark.parametrize("case", list(CASES))
def test_cycle_model(benchmark, case):
    """Timing kernel (numba) + event engine (numba) on the lowered stream."""
    benchmark.group = case
    fam, p, stream = _lower(case)
    _cycle_model(fam, p, stream)  # compile outside the timed region
    assert benchmark(_cycle_model, fam, p, stream) > 0


@pytest.mark.parametrize("case", list(CASES))
def test_end_to_end(benchmark, case):
    """archsim.simulate as a user calls it; the batch-1 step (the target) at most 1 s warm."""
    import archsim

    benchmark.group = case
    archsim.simulate("cerebras-like", "llama3-70b", **CASES[case])
    r = benchmark(archsim.simulate, "cerebras-like", "llama3-70b", **CASES[case])
    assert r.seconds > 0
    if CASES[case]["batch"] == 1:
        assert benchmark.stats.stats.min <= 1.0
