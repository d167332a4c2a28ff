"""archsim serve: the request-level simulation on an analytic step model (the "null device"
``LinearSteps``: a step costs fixed + per new token + per context token read), so every
time below is a hand count written out in its test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from archsim.core.errors import ArchsimError
from archsim.serve import sim as sim_mod
from archsim.serve.metrics import summarize, tpot
from archsim.serve.sim import SchedulerConfig, Simulation, SpecConfig, instance_factory
from archsim.serve.steps import LinearSteps
from archsim.serve.tiers import Link
from archsim.serve.workload import Lengths, Request, synthetic

# fixed 10 ms per step + 1 ms per new token, no cost per context token
STEPS = LinearSteps(fixed_s=0.010, token_s=0.001)
BIG = 1_000_000  # KV tokens: never the constraint unless a test says so


def run(requests, policy="chunked", steps=STEPS, capacity=BIG, spec=None, draft_fraction=0.0,
        **sched):  # fmt: skip
    sim = Simulation(requests, SchedulerConfig(policy=policy, **sched), spec)
    sim.add(instance_factory(steps, capacity, 1.0, draft_fraction=draft_fraction))
    jobs = {j.req.id: j for j in sim.run()}
    return sim, jobs


def two_requests():
    return [Request(0, 0.0, prompt=100, output=3), Request(1, 0.05, prompt=50, output=2)]


def test_chunked_trace_by_hand():
    """Chunked prefill (decodes ride with prefill chunks), worked by hand:
    t=0     R0's 100-token prompt alone: 10 + 100 x 1 = 110 ms -> R0's first token at 0.110.
    t=0.110 R0 decodes (1 token) with R1's 50-token prompt (arrived at 0.05):
            10 + 51 = 61 ms -> 0.171: R0 has 2 tokens, R1 its first (TTFT 0.121).
    t=0.171 both decode: 10 + 2 = 12 ms -> 0.183: both done.
    TPOT: R0 (0.183 - 0.110) / 2 = 36.5 ms, R1 (0.183 - 0.171) / 1 = 12 ms."""
    _, jobs = run(two_requests())
    assert jobs[0].first_token == pytest.approx(0.110)
    assert jobs[1].first_token == pytest.approx(0.171)
    assert jobs[0].finish == pytest.approx(0.183)
    assert jobs[1].finish == pytest.approx(0.183)
    assert tpot(jobs[0]) == pytest.approx(0.0365)
    assert tpot(jobs[1]) == pytest.approx(0.012)


def test_fcfs_trace_by_hand():
    """vLLM V0 (prefill steps run alone, decodes wait), worked by hand:
    t=0     R0's prompt: 110 ms -> first token 0.110.
    t=0.110 R1's prompt alone (R0 waits): 10 + 50 = 60 ms -> R1's first token 0.170.
    t=0.170 both decode: 12 ms -> 0.182: R1 done, R0 has 2.
    t=0.182 R0 decodes alone: 11 ms -> 0.193: done.
    TTFT R1 = 0.120; TPOT R0 = (0.193 - 0.110) / 2 = 41.5 ms, R1 = 12 ms."""
    _, jobs = run(two_requests(), policy="fcfs")
    assert jobs[1].first_token - 0.05 == pytest.approx(0.120)
    assert jobs[1].finish == pytest.approx(0.182)
    assert jobs[0].finish == pytest.approx(0.193)
    assert tpot(jobs[0]) == pytest.approx(0.0415)


def test_token_budget_chunks_a_long_prompt():
    """Budget 64: a 150-token prompt goes 64 + 64 + 22: 74 + 74 + 32 = 180 ms to its first
    token; with output 1 it is done then."""
    _, jobs = run([Request(0, 0.0, prompt=150, output=1)], token_budget=64)
    assert jobs[0].first_token == pytest.approx(0.180)
    assert jobs[0].finish == pytest.approx(0.180)


def test_chunk_attention_reads_the_cached_prefix():
    """With a cost per context token read (1 us): chunks of 64 + 36 tokens of a 100-token
    prompt read 64 and then 100 tokens: (10 + 64 + 0.064) + (10 + 36 + 0.100) ms."""
    steps = LinearSteps(0.010, 0.001, 1e-6)
    _, jobs = run([Request(0, 0.0, prompt=100, output=1)], steps=steps, token_budget=64)
    assert jobs[0].first_token == pytest.approx(0.074064 + 0.046100)


def test_fast_forwarded_decode_blocks_equal_step_by_step(monkeypatch):
    """Runs of pure decode steps are one event (cut when something arrives); the times must
    be those of simulating every step on its own (the block size capped at 1)."""
    steps = LinearSteps(0.004, 0.0002, 2e-7)  # step time grows with the context
    reqs = synthetic(150, 40.0, Lengths.parse("20:300", "p"), Lengths.parse("exp:60", "o"),
                     seed=3)  # fmt: skip
    _, fast = run(reqs, steps=steps, capacity=6000)
    monkeypatch.setattr(sim_mod, "MAX_BLOCK_STEPS", 1)
    sim_slow, slow = run(reqs, steps=steps, capacity=6000)
    for i in fast:
        assert fast[i].first_token == pytest.approx(slow[i].first_token, rel=0, abs=1e-9)
        assert fast[i].finish == pytest.approx(slow[i].finish, rel=0, abs=1e-9)
        assert fast[i].max_gap == pytest.approx(slow[i].max_gap, rel=0, abs=1e-9)
    assert sum(j.preemptions for j in fast.values()) > 0  # the KV limit was exercised


def test_decode_steps_read_the_growing_context():
    """0.1 ms per context token read: a 10-token prompt (10 + 10 + 1 ms = 21 ms), then
    decode steps over 10, 11, 12 stored tokens: 11 + 1.0, 11 + 1.1, 11 + 1.2 ms."""
    steps = LinearSteps(0.010, 0.001, 1e-4)
    _, jobs = run([Request(0, 0.0, 10, 4)], steps=steps)
    assert jobs[0].first_token == pytest.approx(0.021)
    assert jobs[0].finish == pytest.approx(0.021 + 0.012 + 0.0121 + 0.0122)


def test_recompute_preemption_by_hand():
    """KV of 4 blocks of 16 tokens; R0 and R1 (prompt 16, output 20) arrive together.
    Admission: each prompt takes 1 block (+1 for the first decode token): both run.
    Decoding, R0 (admitted first) and R1 each need a 3rd block at 32 tokens: R1, the latest
    admitted, is preempted and later re-prefills its prompt and the tokens it had produced.
    Every request finishes; no block is left allocated."""
    reqs = [Request(0, 0.0, 16, 20), Request(1, 0.0, 16, 20)]
    sim, jobs = run(reqs, capacity=64, watermark=0.0)
    assert jobs[0].preemptions == 0 and jobs[1].preemptions >= 1
    assert jobs[1].finish > jobs[0].finish
    inst = sim.instances[0]
    assert inst.kv.free == inst.kv.total_blocks


def test_kv_never_overcommitted():
    """Under heavy load with a small KV pool the blocks in use never exceed the pool."""
    reqs = synthetic(200, 200.0, Lengths.parse("50:400", "p"), Lengths.parse("10:200", "o"))
    sim, _ = run(reqs, capacity=4000)
    kv = sim.instances[0].kv
    assert kv.peak_used_blocks <= kv.total_blocks
    assert kv.free == kv.total_blocks


def test_prompt_larger_than_the_pool_is_refused():
    """A prompt needing more KV than the instance holds can never run: one clear error."""
    with pytest.raises(ArchsimError, match="could never be served"):
        run([Request(0, 0.0, prompt=5000, output=2)], capacity=1000)


def test_speculation_tokens_per_step_formula():
    """E[tokens] = (1 - a^(k+1)) / (1 - a): a=0 -> 1, a=1 -> k+1, k=2 a=0.5 -> 1.75."""
    assert SpecConfig(4, 0.0).tokens_per_step == 1.0
    assert SpecConfig(4, 1.0).tokens_per_step == 5.0
    assert SpecConfig(2, 0.5).tokens_per_step == pytest.approx(1.75)


def test_acceptance_zero_gives_no_speedup():
    """k=4, a=0: a step yields 1 token but costs the verify of 5 tokens plus 4 draft steps:
    one request's decode step is 10 + 5 = 15 ms + 4 x 0.25 x 11 ms = 26 ms against 11 ms
    without speculation; TPOT 26 ms vs 11 ms (no speed-up, a slow-down)."""
    reqs = [Request(0, 0.0, 10, 5)]
    _, base = run(reqs)
    _, spec = run(reqs, spec=SpecConfig(4, 0.0), draft_fraction=0.25)
    assert tpot(base[0]) == pytest.approx(0.011)
    assert tpot(spec[0]) == pytest.approx(0.026)
    assert tpot(spec[0]) >= tpot(base[0])


def test_speedup_grows_with_acceptance():
    """a=0.8, k=4: E = (1 - 0.8^5) / 0.2 = 3.3616 tokens per 26 ms step: 4 remaining tokens
    of a 5-token answer take ceil(4 / 3.3616) = 2 steps (52 ms) instead of 44 ms at a=0;
    over 41 tokens: 12 steps x 26 ms vs 40 x 11 ms = 312 vs 440 ms."""
    reqs = [Request(0, 0.0, 10, 41)]
    _, base = run(reqs)
    _, spec = run(reqs, spec=SpecConfig(4, 0.8), draft_fraction=0.25)
    assert base[0].finish - base[0].first_token == pytest.approx(0.440)
    assert spec[0].finish - spec[0].first_token == pytest.approx(12 * 0.026)
    speedups = []
    for a in (0.0, 0.3, 0.6, 0.9):
        _, s = run(reqs, spec=SpecConfig(4, a), draft_fraction=0.25)
        speedups.append(0.440 / (s[0].finish - s[0].first_token))
    assert speedups == sorted(speedups) and speedups[0] < 1 < speedups[-1]


def disaggregated(requests, link: Link, policy: str = "chunked"):
    sim = Simulation(requests, SchedulerConfig(policy=policy), handoff_link=link)
    sim.add(instance_factory(STEPS, BIG, 1000.0), "prefill")
    sim.add(instance_factory(STEPS, BIG, 1000.0), "decode")
    return {j.req.id: j for j in sim.run()}, sim


def test_disaggregated_run_pays_the_kv_transfer():
    """Prefill instance: 200-token prompt, 210 ms -> first token at 0.210. Its KV, 200 tokens
    x 1000 B = 200 kB, crosses a 1 GB/s link with 50 us latency: 250 us. The decode instance
    then runs 2 steps of 11 ms: finish = 0.210 + 0.00025 + 0.022; TPOT = (0.00025 + 0.022) / 2.
    A 10x slower link adds exactly the extra 1.8 ms of transfer."""
    reqs = [Request(0, 0.0, 200, 3)]
    fast, sim = disaggregated(reqs, Link(bandwidth_bytes_per_s=1e9, latency_s=5e-5))
    assert fast[0].first_token == pytest.approx(0.210)
    assert fast[0].handoff_s == pytest.approx(2.5e-4)
    assert fast[0].finish == pytest.approx(0.210 + 2.5e-4 + 0.022)
    assert tpot(fast[0]) == pytest.approx((2.5e-4 + 0.022) / 2)
    assert sim.handoff_bytes == pytest.approx(200_000)
    slow, _ = disaggregated(reqs, Link(bandwidth_bytes_per_s=1e8, latency_s=5e-5))
    assert slow[0].finish - fast[0].finish == pytest.approx(2e-3 - 2e-4)
    assert slow[0].first_token == fast[0].first_token  # TTFT is the prefill's


@pytest.mark.parametrize("policy", ["fcfs", "chunked", "slo"])
def test_disaggregated_prefill_kv_freed_after_handoff(policy):
    """Every policy: all requests served; the prefill instance holds a request's KV until
    its transfer ends, then frees it."""
    reqs = synthetic(30, 50.0, Lengths.parse("64:256", "p"), Lengths.parse("4:16", "o"))
    jobs, sim = disaggregated(reqs, Link(bandwidth_bytes_per_s=1e9, latency_s=1e-5), policy)
    assert len(jobs) == 30
    for inst in sim.instances + sim.decoders:
        assert inst.kv.free == inst.kv.total_blocks


def test_summary_percentiles_and_goodput():
    """Two requests by hand (chunked trace): TTFT 0.110 and 0.121, p50 their midpoint;
    TPOT 36.5 and 12 ms. With a TPOT target of 20 ms one of two meets it: attainment 0.5,
    goodput 1 request over the 0.183 s run."""
    _, jobs = run(two_requests())
    s = summarize(list(jobs.values()), None, 0.020)
    assert s["ttft_s"]["p50"] == pytest.approx((0.110 + 0.121) / 2)
    assert s["tpot_s"]["mean"] == pytest.approx((0.0365 + 0.012) / 2)
    assert s["slo"]["attainment"] == 0.5
    assert s["slo"]["goodput_rps"] == pytest.approx(1 / 0.183)
    assert s["throughput"]["output_tokens_per_s"] == pytest.approx(5 / 0.183)


def test_slo_policy_caps_the_step_at_the_tpot_target():
    """slo policy with TPOT target 30 ms: a decode rides with at most the prefill tokens
    that keep the step within 30 ms (10 + 1 + n <= 30 -> n <= 19, rounded down to the
    search's 16-token grain: 16, a 27 ms step), so R0's longest wait between tokens is
    27 ms while R1's 200-token prompt goes in chunks; chunked with the default budget
    stalls R0 for one 10 + 1 + 200 = 211 ms step."""
    reqs = [Request(0, 0.0, 10, 30), Request(1, 0.03, 200, 2)]
    _, jobs = run(reqs, policy="slo", slo_tpot_s=0.030)
    assert jobs[0].max_gap == pytest.approx(0.027)
    _, chunked = run(reqs)
    assert chunked[0].max_gap == pytest.approx(0.211)


def test_workload_is_deterministic_and_has_its_rate():
    """Same seed, same requests; 4000 Poisson arrivals at 10/s span about 400 s; gamma with
    cv 3 has gaps of that coefficient of variation."""
    a = synthetic(4000, 10.0, Lengths.parse("128", "p"), Lengths.parse("exp:64", "o"), seed=7)
    b = synthetic(4000, 10.0, Lengths.parse("128", "p"), Lengths.parse("exp:64", "o"), seed=7)
    assert a == b
    assert a[-1].arrival_s == pytest.approx(400, rel=0.05)
    g = synthetic(4000, 10.0, Lengths.parse("128", "p"), Lengths.parse("64", "o"),
                  process="gamma", cv=3.0)  # fmt: skip
    gaps = np.diff([r.arrival_s for r in g])
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.15)


def test_conversations_carry_their_context():
    """Turn j+1's prompt is turn j's prompt + output + a new user message; the shared
    prefix leads the first turn's prompt."""
    reqs = synthetic(6, 1.0, Lengths.parse("100", "p"), Lengths.parse("20", "o"),
                     prefix_tokens=50, turns=3, think_s=10.0)  # fmt: skip
    conv = sorted((r for r in reqs if r.conversation == "c0"), key=lambda r: r.arrival_s)
    assert [r.prompt for r in conv] == [150, 270, 390]
    assert all(r.prefix == "p0" and r.prefix_tokens == 50 for r in conv)


@pytest.mark.parametrize("text", ["0", "-3", "5:2", "exp:0.5", "abc", "1:x"])
def test_bad_length_specs_are_one_line_errors(text):
    """Lengths: N >= 1, A:B with 1 <= A <= B, exp:MEAN with MEAN >= 1."""
    with pytest.raises(ArchsimError):
        Lengths.parse(text, "--prompt-tokens")


def test_uniform_lengths_stay_in_range():
    """A:B samples integers within [A, B], both ends reachable."""
    x = Lengths.parse("3:5", "x").sample(np.random.default_rng(0), 2000)
    assert set(x.tolist()) == {3, 4, 5}
    assert math.isclose(Lengths.parse("3:5", "x").mean, 4)
