"""Speed of the serving simulation (issue 14): the event loop over 10,000 requests once the
step model's grid is simulated (target: a few seconds), and the whole `serve` path of the
issue's 2000-request runs on h100-like and groq-like from a cold step model (target: under
ten seconds, numba cache warm).

Run: pytest benchmarks/test_bench_serve.py --benchmark-columns=min,mean,max
"""

from __future__ import annotations

import pytest

from archsim.serve import Lengths, Machine, ServeConfig, Server, serve, synthetic


def _requests(n: int):
    return synthetic(n, 5.0, Lengths.parse("512", "p"), Lengths.parse("128", "o"), seed=0)


def test_bench_event_loop_10k_requests(benchmark):
    """10,000 requests at 5/s on h100-like after a first run has filled the step model."""
    cfg = ServeConfig(model="llama3-8b", machine=Machine("h100-like"), compare=False)
    server = Server(cfg)
    reqs = _requests(10_000)
    serve(cfg, reqs, server)  # simulate the grid points once
    report, _ = benchmark.pedantic(lambda: serve(cfg, reqs, server), rounds=3, iterations=1)
    assert report["requests"] == 10_000


@pytest.mark.parametrize("arch", ["h100-like", "groq-like"])
def test_bench_serve_2000_cold(benchmark, arch):
    """`archsim serve --arch ARCH --model llama3-8b --rate 5 --requests 2000`, step model
    built from scratch each round (deployment plan and every simulation included)."""
    reqs = _requests(2000)

    def run():
        cfg = ServeConfig(model="llama3-8b", machine=Machine(arch), compare=False)
        return serve(cfg, reqs)[0]

    report = benchmark.pedantic(run, rounds=2, iterations=1)
    assert report["requests"] == 2000
