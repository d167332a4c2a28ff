"""Speed of the dmatrix-like family: a whole llama3-70b decode step (plan with the SRAM
capacity packing, partition, lowering, the numba timing pass and event engine).

Target (issue 10): once JIT-compiled, the whole llama3-70b decode step simulates in <= 1 s.
Run: pytest benchmarks/test_bench_imc.py --benchmark-columns=min,mean,max
"""

from __future__ import annotations

import pytest

import archsim

CASES = {
    "dmatrix-like/llama3-70b-decode-b1": dict(phase="decode", batch=1, ctx=2048),
    "dmatrix-like/llama3-70b-int8-decode-b64-64cards": dict(
        phase="decode", batch=64, ctx=1024, precision="int8", chips=64
    ),
    "dmatrix-like/llama3-70b-int4-decode-1card-lpddr": dict(
        phase="decode", batch=1, ctx=2048, precision="int4", chips=1
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_end_to_end(benchmark, case):
    """archsim.simulate as a user calls it (warm: compiled once outside the timed region)."""
    benchmark.group = case
    archsim.simulate("dmatrix-like", "llama3-70b", **CASES[case])
    r = benchmark(archsim.simulate, "dmatrix-like", "llama3-70b", **CASES[case])
    assert r.seconds > 0
