"""Speed of a whole llama3-70b step on every family: lowering (Python: graph, admission,
plan, partition, lower, and for static families the schedule) and the cycle model (numba:
timing pass + event engine) timed apart, and ``archsim.simulate`` end to end.

Targets (issues 2, 8-11): once JIT-compiled, a whole llama3-70b decode step at batch 1
simulates in at most 1 s. Run: pytest benchmarks/ --benchmark-columns=min,mean,max
(figures: docs/performance.md).
"""

from __future__ import annotations

import pytest

import archsim
from archsim import pipeline
from archsim.config import load_arch
from archsim.core.engine import simulate_stream
from archsim.core.registry import get_family
from archsim.graph import build_graph
from archsim.graph.model import load_model
from archsim.graph.scenario import Precision, Scenario
from archsim.pipeline import refuse_unsupported

B1 = dict(phase="decode", batch=1, ctx=2048)
B64 = dict(phase="decode", batch=64, ctx=2048)
# case -> (arch, scenario); scenario keys as archsim.simulate takes them
CASES = {
    "h100-like/llama3-70b-decode-b1": ("h100-like", B1),
    "h100-like/llama3-70b-prefill-8192": ("h100-like", dict(phase="prefill", batch=1, seq=8192)),
    "groq-like/llama3-70b-decode-b1": ("groq-like", B1),
    "groq-like/llama3-70b-int8-decode-b256": (
        "groq-like",
        dict(phase="decode", batch=256, ctx=2048, precision="int8"),
    ),
    "cerebras-like/llama3-70b-decode-b1": ("cerebras-like", B1),
    "cerebras-like/llama3-70b-decode-b64": ("cerebras-like", B64),
    "matx-like/llama3-70b-decode-b1": ("matx-like", B1),
    "matx-like/llama3-70b-decode-b64": ("matx-like", B64),
    "matx-like/llama3-70b-prefill-8192": ("matx-like", dict(phase="prefill", batch=1, seq=8192)),
    "tpu-v5e/llama3-70b-decode-b1": ("tpu-v5e", B1),
    "dmatrix-like/llama3-70b-decode-b1": ("dmatrix-like", B1),
    "dmatrix-like/llama3-70b-int8-decode-b64-64cards": (
        "dmatrix-like",
        dict(phase="decode", batch=64, ctx=1024, precision="int8", chips=64),
    ),
    "dmatrix-like/llama3-70b-int4-decode-1card-lpddr": (
        "dmatrix-like",
        dict(phase="decode", batch=1, ctx=2048, precision="int4", chips=1),
    ),
    "etched-like/llama3-70b-fp8-decode-b64": ("etched-like", dict(B64, precision="fp8")),
    "etched-like/llama3-70b-fp8-decode-b64-tp8": (
        "etched-like",
        dict(B64, precision="fp8", chips=8),
    ),
}


def _lower(case):
    arch, kw = CASES[case]
    kw = dict(kw)
    p = load_arch(arch)
    fam = get_family(p.family)
    prec = Precision.parse(kw.pop("precision", "bf16"))
    chips = kw.pop("chips", None)
    sc = Scenario(**kw, precision=prec)
    g = build_graph(load_model("llama3-70b"), sc)
    refuse_unsupported(g, fam, p)
    plan = fam.plan(g, p, chips)
    return fam, p, fam.lower(fam.partition(g, plan, p), plan, p, sc)


def _cycle_model(fam, p, stream):
    return simulate_stream(stream, fam.timing(stream, p), static=fam.static).cycles


@pytest.mark.parametrize("case", list(CASES))
def test_lowering(benchmark, case):
    """Model spec -> graph -> admission -> plan -> partition -> instruction stream."""
    benchmark.group = case
    fam, _, stream = benchmark(_lower, case)
    assert len(stream) > 0


@pytest.mark.parametrize("case", list(CASES))
def test_cycle_model(benchmark, case):
    """Timing pass (numba) + event engine (numba) on the lowered stream."""
    benchmark.group = case
    fam, p, stream = _lower(case)
    _cycle_model(fam, p, stream)  # compile outside the timed region
    assert benchmark(_cycle_model, fam, p, stream) > 0


@pytest.mark.parametrize("case", list(CASES))
def test_end_to_end(benchmark, case):
    """archsim.simulate as a user calls it once (the step graph built afresh, not taken from
    pipeline.step_graph's cache); a batch-1 decode step takes at most 1 s warm."""
    benchmark.group = case
    arch, kw = CASES[case]
    archsim.simulate(arch, "llama3-70b", **kw)

    def fresh_step():
        pipeline.step_graph.cache_clear()
        return archsim.simulate(arch, "llama3-70b", **kw)

    r = benchmark(fresh_step)
    assert r.seconds > 0
    timed = benchmark.stats is not None  # None under --benchmark-disable
    if timed and kw.get("batch") == 1 and kw.get("phase") == "decode":
        assert benchmark.stats.stats.min <= 1.0
