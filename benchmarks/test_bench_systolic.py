"""Speed of matx-like (and its TPU presets): a whole llama3-70b step, lowering (Python: plan,
partition, mapper, lowering) and the cycle model (numba: timing + engine) timed apart.

Target (issue 9): once JIT-compiled, the whole llama3-70b decode step simulates in <= 1 s.
Run: pytest benchmarks/test_bench_systolic.py --benchmark-columns=min,mean,max
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
    "matx-like/llama3-70b-decode-b1": ("matx-like", dict(phase="decode", batch=1, ctx=2048)),
    "matx-like/llama3-70b-decode-b64": ("matx-like", dict(phase="decode", batch=64, ctx=2048)),
    "tpu-v5e/llama3-70b-decode-b1": ("tpu-v5e", dict(phase="decode", batch=1, ctx=2048)),
    "matx-like/llama3-70b-prefill-8192": ("matx-like", dict(phase="prefill", batch=1, seq=8192)),
}


def _lower(case):
    arch, scenario = CASES[case]
    p = load_arch(arch)
    fam = get_family(p.family)
    sc = Scenario(**scenario)
    g = build_graph(load_model("llama3-70b"), sc)
    plan = fam.plan(g, p, None)
    return fam, p, fam.lower(fam.partition(g, plan, p), plan, p, sc)


def _cycle_model(fam, p, stream):
    return simulate_stream(stream, fam.timing(stream, p), static=fam.static).cycles


@pytest.mark.parametrize("case", list(CASES))
def test_lowering(benchmark, case):
    """Model spec -> graph -> plan -> partition -> mapper + instruction stream."""
    benchmark.group = case
    _, _, stream = benchmark(_lower, case)
    assert len(stream) > 0


@pytest.mark.parametrize("case", list(CASES))
def test_cycle_model(benchmark, case):
    """Fold model and other durations (numba) + event engine (numba) on the lowered stream."""
    benchmark.group = case
    fam, p, stream = _lower(case)
    _cycle_model(fam, p, stream)  # compile outside the timed region
    assert benchmark(_cycle_model, fam, p, stream) > 0


@pytest.mark.parametrize("case", list(CASES))
def test_end_to_end(benchmark, case):
    """archsim.simulate as a user calls it (target for the decode step: <= 1 s warm)."""
    import archsim

    benchmark.group = case
    arch, scenario = CASES[case]
    archsim.simulate(arch, "llama3-70b", **scenario)
    r = benchmark(archsim.simulate, arch, "llama3-70b", **scenario)
    assert r.seconds > 0
