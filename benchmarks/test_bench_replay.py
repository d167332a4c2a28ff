"""A whole-model decode point with decoder layers replayed and lowered op by op
(archsim/compiler/replay.py), per family: the figures of docs/performance.md. Run:
pytest benchmarks/test_bench_replay.py --benchmark-columns=min,mean
--benchmark-group-by=param:arch"""

from __future__ import annotations

import contextlib

import pytest

import archsim
from archsim.compiler import replay

ARCHS = ["h100-like", "groq-like", "cerebras-like", "matx-like", "tpu-v5e", "dmatrix-like",
         "etched-like"]  # fmt: skip


@pytest.mark.parametrize("mode", ["op-by-op", "replay"])
@pytest.mark.parametrize("arch", ARCHS)
def test_point_with_and_without_replay(benchmark, arch, mode):
    """llama3-8b decode, batch 8, whole model (int8 where the family's preset needs it)."""
    prec = "int8" if arch in ("groq-like", "dmatrix-like") else "bf16"

    def point():
        with replay.disabled() if mode == "op-by-op" else contextlib.nullcontext():
            return archsim.simulate(arch, "llama3-8b", batch=8, precision=prec)

    r = benchmark.pedantic(point, rounds=5, iterations=1, warmup_rounds=1)
    assert r.seconds > 0
