"""Sweep throughput: design points per second for llama3-8b decode on h100-like (the issue's
figure: at least 20 points/s on 2 cores, and a speed-up close to the worker count up to the
core count). Run: pytest benchmarks/test_bench_sweep.py; the points/s land in extra_info and
in docs/performance.md."""

from __future__ import annotations

import os
import time

import pytest

from archsim.sweep import expand_grid, run_sweep

GRID = {"arch": "h100-like", "model": "llama3-8b", "batch": "1,2,4,8,16,32,64,128",
        "ctx": "128,256,512,1024,2048"}  # fmt: skip
OVERRIDES = {"memory.hbm_bw_bytes_per_s": "2e12,2.5e12,3e12,3.5e12"}  # 160 points


@pytest.mark.parametrize("workers", sorted({1, min(2, os.cpu_count() or 1)}))
def test_sweep_points_per_second(benchmark, tmp_path, workers):
    """160 whole-model decode points; the rate is recorded per worker count."""
    points = expand_grid(GRID, OVERRIDES)
    run_sweep(points[:4], tmp_path / "warm.csv", workers=workers, progress=lambda m: None)
    runs = iter(range(1000))

    def sweep():
        out = tmp_path / f"s{next(runs)}.h5"
        start = time.perf_counter()
        run_sweep(points, out, workers=workers, progress=lambda m: None)
        return len(points) / (time.perf_counter() - start)

    rate = benchmark.pedantic(sweep, rounds=2, iterations=1)
    benchmark.extra_info["points_per_s"] = rate
    assert rate > 0
