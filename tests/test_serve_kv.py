"""KV-cache tiers and reuse: drain times of the shipped hierarchies, entries migrating down,
and the reload-or-recompute decision (reload exactly when it is faster than the prefill),
all on the analytic step model so the times are hand counts."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from archsim.core.errors import ArchsimError, ConfigError
from archsim.serve.kv import KvMemory
from archsim.serve.sim import SchedulerConfig, Simulation, instance_factory
from archsim.serve.steps import LinearSteps
from archsim.serve.tiers import Hierarchy, Link, TierPath, load_tiers, tier_names, tier_rows
from archsim.serve.workload import Request

STEPS = LinearSteps(fixed_s=0.010, token_s=0.001)  # prefill of n alone: 10 + n ms


def hierarchy(read_bps: float, capacity: float = 1e12, latency: float = 0.0) -> Hierarchy:
    dram = TierPath("dram", capacity, read_bps, 1e12, latency, "pcie", None)
    return Hierarchy("test", "", (dram,), {"pcie": Link(bandwidth_bytes_per_s=1e12,
                                                        latency_s=0.0)}, "dram", "-")  # fmt: skip


def conversation_run(h: Hierarchy | None, caching: bool = True):
    """Turn 1 (t=0): prompt 1000, output 2, conversation c -> finishes at 1.010 + 0.011 =
    1.021 and leaves 1002 tokens of context (1000 B per token). The device keeps unused
    entries 1 s, then they move to dram. Turn 2 (t=10): prompt 1102 = that context + 100."""
    reqs = [Request(0, 0.0, 1000, 2, conversation="c"),
            Request(1, 10.0, 1102, 2, conversation="c")]  # fmt: skip
    sim = Simulation(reqs, SchedulerConfig())
    sim.add(instance_factory(STEPS, 100_000, 1000.0, hierarchy=h, device_idle_s=1.0,
                             caching=caching))  # fmt: skip
    jobs = {j.req.id: j for j in sim.run()}
    return jobs, sim.instances[0].kv


def test_reload_when_faster_than_recompute():
    """The 1002-token context sits in dram; recomputing it costs the prefill of 1002 tokens
    alone, 10 + 1002 = 1012 ms. At 1.002 MB/s the reload takes 1.000 s < 1.012 s: reloaded.
    Then the 100 new tokens: 10 + 100 = 110 ms. TTFT = 1.000 + 0.110 = 1.110 s."""
    jobs, kv = conversation_run(hierarchy(1.002e6))
    j = jobs[1]
    assert j.reuse_tier == "dram" and j.reused == 1002
    assert j.reload_s == pytest.approx(1.000)
    assert j.first_token - 10.0 == pytest.approx(1.110)
    st = kv.stats["dram"]
    assert st.loads == 1 and st.bytes_read == pytest.approx(1.002e6)
    assert st.bytes_written == pytest.approx(1.002e6)  # it was demoted there first


def test_recompute_when_reload_is_slower():
    """At 0.95 MB/s the reload would take 1.0547 s > 1.012 s: the prompt is recomputed
    whole, 10 + 1102 = 1112 ms, exactly the TTFT without any reuse."""
    jobs, kv = conversation_run(hierarchy(0.95e6))
    assert jobs[1].reuse_tier is None and jobs[1].reused == 0
    assert jobs[1].first_token - 10.0 == pytest.approx(1.112)
    assert kv.stats["dram"].recomputed == 1 and kv.stats["dram"].loads == 0
    base, _ = conversation_run(None, caching=False)
    assert base[1].first_token == pytest.approx(jobs[1].first_token)


@pytest.mark.parametrize("bps", [0.5e6, 0.99e6, 1.0e6, 1.01e6, 2e6, 1e9])
def test_reuse_decision_is_exactly_reload_below_prefill(bps):
    """Whatever the bandwidth: reloaded iff 1.002 MB / bps < 1.012 s, and TTFT is then
    reload + 110 ms, else 1112 ms."""
    jobs, _ = conversation_run(hierarchy(bps))
    reload = 1.002e6 / bps
    if reload < 1.012:
        assert jobs[1].reuse_tier == "dram"
        assert jobs[1].first_token - 10.0 == pytest.approx(reload + 0.110)
    else:
        assert jobs[1].reuse_tier is None
        assert jobs[1].first_token - 10.0 == pytest.approx(1.112)


def test_device_hit_costs_nothing():
    """Without idle demotion the context stays on the device: turn 2 only prefills its
    100 new tokens, 110 ms."""
    reqs = [Request(0, 0.0, 1000, 2, conversation="c"),
            Request(1, 10.0, 1102, 2, conversation="c")]  # fmt: skip
    sim = Simulation(reqs, SchedulerConfig())
    sim.add(instance_factory(STEPS, 100_000, 1000.0))
    jobs = {j.req.id: j for j in sim.run()}
    assert jobs[1].reuse_tier == "device"
    assert jobs[1].first_token - 10.0 == pytest.approx(0.110)


def test_shared_prefix_is_computed_once():
    """Three requests share a 512-token system prompt; the first computes it (10 + 600 ms),
    the later ones (arriving after it is done) prefill only their own 88 tokens: 98 ms."""
    reqs = [Request(i, 1.0 * i, 600, 1, prefix="sys", prefix_tokens=512) for i in range(3)]
    sim = Simulation(reqs, SchedulerConfig())
    sim.add(instance_factory(STEPS, 100_000, 1000.0))
    jobs = {j.req.id: j for j in sim.run()}
    assert jobs[0].first_token == pytest.approx(0.610)
    for i in (1, 2):
        assert jobs[i].reused == 512
        assert jobs[i].first_token - i == pytest.approx(0.098)


def test_entries_cascade_down_when_tiers_fill():
    """Device of 64 blocks (1024 tokens), dram of 2 entries' bytes: storing 4 entries of
    512 tokens pushes the oldest to dram; the fifth pushes dram's oldest out of the bottom
    (dropped)."""
    h = hierarchy(1e9, capacity=2 * 512 * 100.0)
    kv = KvMemory(1024, 100.0, hierarchy=h)
    for i in range(5):
        assert kv.store(f"conv:{i}", 512, float(i)) is not None
    tiers = {k: e.tier for k, e in kv.entries.items()}
    assert tiers == {"conv:1": 1, "conv:2": 1, "conv:3": 0, "conv:4": 0}
    assert kv.stats["dram"].dropped == 1
    assert kv.used_bytes[0] == pytest.approx(2 * 512 * 100.0)
    assert kv.free == 0


def test_pinned_entry_is_not_evicted():
    """An entry a running request reads cannot leave the device to make room."""
    kv = KvMemory(1024, 100.0)
    e = kv.store("prefix:a", 1024, 0.0)
    kv.pin(e)
    assert not kv.allocate(1, 1.0)
    kv.unpin(e)
    assert kv.allocate(1, 1.0) and "prefix:a" not in kv.entries


def test_shipped_hierarchies_load_and_name_their_links():
    """Every kv_tiers/*.yaml validates; path bandwidth is the slower of medium and link."""
    for name in tier_names():
        h = load_tiers(name)
        for t in h.tiers:
            assert t.read_bytes_per_s <= h.link(t.link).bandwidth_bytes_per_s


def test_unknown_tiers_and_links_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown kv tiers"):
        load_tiers("hgx-h10")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nlinks: {}\ntiers:\n  - {name: dram, capacity_bytes: 1e9, "
        "read_bytes_per_s: 1e9, write_bytes_per_s: 1e9, latency_s: 0, link: x}\n"
    )
    with pytest.raises(ConfigError, match="unknown link 'x'"):
        load_tiers(str(bad))
    with pytest.raises(ArchsimError, match="unknown link"):
        load_tiers("hgx-h100").link("pcie9")


def test_hgx_drain_times_are_of_the_expected_orders():
    """hardware-specs §8.1: HBM tens of ms (80 GB / 3.35 TB/s = 24 ms), host DRAM seconds
    (256 GB / 64 GB/s = 4.0 s), CXL 7.1 s, NVMe minutes (3.84 TB / 14 GB/s = 4.6 min; a
    1 TB drive would be the 'about a minute' of the rule of thumb), object store unbounded."""
    from archsim.serve.tiers import DeviceTier

    rows = {r["tier"]: r["drain_s"] for r in tier_rows(
        load_tiers("hgx-h100"), DeviceTier("hbm", 80e9, 3.35e12))}  # fmt: skip
    assert rows["device (hbm)"] == pytest.approx(0.0239, rel=0.01)
    assert rows["dram"] == pytest.approx(4.0)
    assert rows["cxl"] == pytest.approx(7.11, rel=0.01)
    assert rows["nvme"] == pytest.approx(274.3, rel=0.01)
    assert rows["object"] is None


def test_kv_tiers_cli_json():
    """`archsim kv-tiers --json`: the device tier from h100-like's plan (usable HBM over its
    peak bandwidth: tens of ms), then DRAM seconds, NVMe minutes; unbounded is null."""
    out = subprocess.run([sys.executable, "-m", "archsim.cli", "kv-tiers", "--json"],
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    doc = json.loads(out.stdout)
    drain = {r["tier"]: r["drain_s"] for r in doc["tiers"]}
    assert 0.01 <= drain["device (hbm)"] < 0.1
    assert 1 <= drain["dram"] < 10
    assert 30 <= drain["nvme"] < 600
    assert drain["object"] is None and math.isfinite(doc["tiers"][0]["capacity_bytes"])


def test_swap_preemption_moves_the_victims_kv():
    """KV of 4 blocks; two requests (prompt 16, output 20) outgrow it at 32 tokens each:
    the later one is swapped out to dram (its 32 stored tokens x 1000 B = 32 kB written)
    and back in once the first finishes; nothing is recomputed and every block returns."""
    reqs = [Request(0, 0.0, 16, 20), Request(1, 0.0, 16, 20)]
    sim = Simulation(reqs, SchedulerConfig(preempt="swap", watermark=0.0))
    sim.add(instance_factory(STEPS, 64, 1000.0, hierarchy=hierarchy(1e9)))
    jobs = {j.req.id: j for j in sim.run()}
    inst = sim.instances[0]
    assert inst.swaps >= 1 and jobs[1].preemptions == inst.swaps
    assert inst.swap_bytes == pytest.approx(32_000 * inst.swaps)
    assert inst.kv.stats["dram"].bytes_read == pytest.approx(inst.swap_bytes)
    assert jobs[1].first_token == jobs[0].first_token  # admitted together, prefilled once
    assert inst.kv.free == inst.kv.total_blocks


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("preempt", ["recompute", "swap"])
def test_blocks_balance_under_reuse_and_pressure(seed, preempt):
    """Random conversations with shared prefixes through a small device and small tiers:
    every request finishes, and at the end the free blocks plus the cached entries' blocks
    are the whole device (nothing leaked, nothing counted twice)."""
    from archsim.serve.workload import Lengths, synthetic

    reqs = synthetic(120, 30.0, Lengths.parse("20:300", "p"), Lengths.parse("exp:40", "o"),
                     seed=seed, prefix_tokens=64, prefix_groups=3, turns=3,
                     think_s=1.0)  # fmt: skip
    sim = Simulation(reqs, SchedulerConfig(preempt=preempt))
    sim.add(instance_factory(LinearSteps(0.002, 1e-4, 1e-7), 4000, 100.0,
                             hierarchy=hierarchy(1e8, capacity=400_000.0),
                             device_idle_s=0.5))  # fmt: skip
    jobs = sim.run()
    assert len(jobs) == 120
    kv = sim.instances[0].kv
    cached = sum(kv.blocks(e.tokens) for e in kv.entries.values() if e.tier == 0)
    assert kv.free + cached == kv.total_blocks
    assert all(e.pins == 0 for e in kv.entries.values())
    assert 0 <= kv.used_bytes[0] <= 400_000.0 + 1e-6
