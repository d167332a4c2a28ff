"""Speed of the event engine (numba, once compiled) on synthetic streams.

* 500k instructions on 8 units, no resources: 0-2 producers each among the previous 50
  (a fifth START_START, 30% with a lag), half the units pipelined. Target: well under a
  second (the engine never touches its event heap on such a stream).
* 50k instructions, half of them flows over 1-2 of 4 shared resources (64 B - 64 KiB on
  256 B/cycle each): every flow start and finish recomputes max-min fair rates.

Run: pytest benchmarks/test_bench_engine.py --benchmark-columns=min,mean,max
(``extra_info`` records instructions per second of the best round).
"""

from __future__ import annotations

import numpy as np
import pytest

from archsim.core.engine import simulate_stream
from archsim.core.isa import COLUMNS, InstructionStream, Timing


def synthetic_stream(n: int, n_units: int = 8, n_res: int = 0, seed: int = 0):
    """(stream, timing): see the module docstring."""
    rng = np.random.default_rng(seed)
    cols = {name: np.zeros(n, dtype=dtype) for name, dtype in COLUMNS.items()}
    cols["unit"] = rng.integers(0, n_units, n).astype(np.int32)
    cols["issue"][:] = -1
    n_deps = np.minimum(rng.integers(0, 3, n), np.arange(n))  # producers precede consumers
    dep_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(n_deps, out=dep_ptr[1:])
    owner = np.repeat(np.arange(n), n_deps)
    dep_idx = np.maximum(owner - rng.integers(1, 50, len(owner)), 0).astype(np.int64)
    dep_kind = (rng.random(len(owner)) < 0.2).astype(np.int8)
    lagged = rng.random(len(owner)) < 0.3
    dep_lag = np.where(lagged, rng.integers(0, 10, len(owner)), 0).astype(np.int64)
    uses = {}
    if n_res:
        n_uses = (rng.random(n) < 0.5) * rng.integers(1, 3, n)
        res_ptr = np.zeros(n + 1, np.int64)
        np.cumsum(n_uses, out=res_ptr[1:])
        picks = [rng.choice(n_res, size=k, replace=False) for k in n_uses if k]
        res_idx = np.concatenate(picks).astype(np.int32)
        res_bytes = rng.integers(64, 65536, len(res_idx)).astype(np.float64)
        uses = dict(res_ptr=res_ptr, res_idx=res_idx, res_bytes=res_bytes)
    stream = InstructionStream(
        ["op"],
        [f"u{i}" for i in range(n_units)],
        ["x"],
        cols,
        dep_ptr,
        dep_idx,
        dep_kind,
        dep_lag,
        [f"r{i}" for i in range(n_res)],
        **uses,
    )
    stream.validate()
    timing = Timing(
        work=rng.integers(1, 100, n).astype(np.int64),
        latency=rng.integers(0, 20, n).astype(np.int64),
        interval=np.where(rng.random(n) < 0.5, -1, rng.integers(0, 50, n)).astype(np.int64),
        resource_bw=np.full(n_res, 256.0),
    )
    return stream, timing


CASES = {
    "500k-no-resources": dict(n=500_000),
    "50k-4-shared-resources": dict(n=50_000, n_res=4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_engine_speed(benchmark, case):
    """Jitted engine on a synthetic stream (compiled outside the timed region)."""
    stream, timing = synthetic_stream(**CASES[case])
    simulate_stream(stream, timing)
    tl = benchmark(simulate_stream, stream, timing)
    assert tl.cycles > 0 and (tl.end >= tl.start).all()
    benchmark.extra_info["instructions_per_s"] = len(stream) / benchmark.stats.stats.min
