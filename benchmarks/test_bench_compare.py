"""Speed of `archsim compare` (issue 15 target: `archsim compare --model llama3-70b --json`,
every shipped preset, under 10 s): the rows of all presets in-process (simulation, energy,
cost), and the energy accounting of one step alone.

Run: pytest benchmarks/test_bench_compare.py --benchmark-columns=min,mean,max
"""

from __future__ import annotations

import archsim
from archsim.compare import compare
from archsim.config import arch_names
from archsim.energy import step_energy

SCENARIO = dict(phase="decode", batch=1, ctx=2048)


def test_compare_llama3_70b_every_preset(benchmark):
    rows = benchmark.pedantic(
        compare, args=(arch_names(), archsim.simulate, "llama3-70b", SCENARIO), rounds=3,
        warmup_rounds=1,
    )  # fmt: skip
    assert len(rows) == len(arch_names())


def test_step_energy_alone(benchmark):
    r = archsim.simulate("h100-like", "llama3-70b", **SCENARIO)
    e = benchmark(step_energy, r)
    assert e.joules is not None
