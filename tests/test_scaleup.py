"""Scale-up domains on h100-like: tensor parallelism beyond the NVLink domain pays the
scale-out network (hierarchical all-reduce), NVLS inside large domains, the scale-up study."""

from __future__ import annotations

import pytest

import archsim
from archsim.config import load_arch
from archsim.families.gpu.timing import scaleout_seconds, timing_record

CYCLE = 1 / 1.98e9  # s, one h100-like cycle: kernel times are whole cycles


def _allreduce(arch, ranks, nbytes, overrides=()):
    return archsim.simulate_kernel(arch, "all-reduce", bytes=nbytes, ranks=ranks,
                                   overrides=list(overrides))  # fmt: skip


def test_allreduce_across_two_domains_is_the_hand_count():
    """16 ranks of 16 KiB on 8-GPU domains: the NVLink phases cost the 8-rank all-reduce of
    the same buffer; across the 2 domains each GPU's 2 KiB shard is all-reduced over its NIC
    in a ring of 2: 2 x (2-1) messages of 5 us (endpoints) + 3 switches x 0.33 us, carrying
    2 x 1/2 x 2048 B at 50 GB/s. Extra = 2 x 5.99 us + 40.96 ns = 12.021 us."""
    inside = _allreduce("h100-like", 8, 16384)
    across = _allreduce("h100-like", 16, 16384)
    extra = 2 * (5e-6 + 3 * 0.33e-6) + 2048 / 5e10
    assert across.seconds - inside.seconds == pytest.approx(extra, abs=2 * CYCLE)
    assert across.choice["nvlink_domains"] == 2 and inside.choice["nvlink_domains"] == 1


@pytest.mark.parametrize("domain, domains", [(8, 16), (72, 2), (576, 1)])
def test_ranks_split_into_the_largest_domain_groups_that_divide_them(domain, domains):
    """128 ranks on domains of 8, 72 and 576 GPUs: groups of 8 (16 domains), of 64 (the
    largest divisor of 128 not above 72: 2 domains), or one domain."""
    r = _allreduce("gb200-nvl72", 128, 1 << 20, [f"links.scale_up_domain={domain}"])
    assert r.choice["nvlink_domains"] == domains


def test_nvls_all_reduce_latency_does_not_grow_with_ranks():
    """gb200-nvl72 (NVLS on), 64 ranks, 4 MiB: NCCL's ring would take 6.6 + 126 x 0.6 us of
    latency alone (LL); NVLS takes gap + 25 us + 4 MiB / (721.8 GB/s x 0.833) = 1.26 + 25 +
    6.976 us = 33.24 us at the 2.062 GHz clock of the kernel's cycles."""
    r = _allreduce("gb200-nvl72", 64, 4 << 20)
    want = 1.26e-6 + 25e-6 + (4 << 20) / (7.218e11 * 0.833)
    assert r.choice["nccl_protocol"] == "NVLS"
    assert r.seconds == pytest.approx(want, abs=2 / 2.062e9)


def test_scaleout_seconds_is_reusable_for_an_all_to_all():
    """The scale-out cost other collectives (the MoE all-to-all) call: steps x (endpoints +
    switches) + bytes / NIC bandwidth = 1 x (5 + 3 x 0.33) us + 1 MB / 50 GB/s = 25.99 us."""
    q = timing_record(load_arch("h100-like"))
    assert scaleout_seconds(1e6, 1, q) == pytest.approx(5.99e-6 + 2e-5)


def test_tensor_parallelism_beyond_the_domain_is_opt_in():
    """16 GPUs for llama3-8b split 8 x 2 (TP inside the HGX domain, then pipeline) unless
    links.max_tensor_parallel allows 16-way tensor parallelism across two domains."""
    r = archsim.simulate("h100-like", "llama3-8b", layers=2, chips=16)
    assert (r.tp, r.pp) == (8, 2)
    r = archsim.simulate("h100-like", "llama3-8b", layers=2, chips=16,
                         overrides=["links.max_tensor_parallel=16"])  # fmt: skip
    assert (r.tp, r.pp) == (16, 1)


def test_step_time_falls_as_the_domain_grows():
    """llama3-405b decode at 128-way tensor parallelism on gb200-nvl72 (2 layers): 8-GPU
    domains pay 16-domain NIC rings, 72-GPU domains 2, a 576-GPU domain none, so the step gets
    faster with the domain; at 8-way tensor parallelism (inside every domain) it is the same."""

    def step(chips, domain):
        over = ["links.max_tensor_parallel=128", f"links.scale_up_domain={domain}"]
        return archsim.simulate("gb200-nvl72", "llama3-405b", layers=2, chips=chips,
                                overrides=over).seconds  # fmt: skip

    t8, t72, t576 = (step(128, d) for d in (8, 72, 576))
    assert t8 > t72 > t576
    assert step(8, 8) == step(8, 72) == step(8, 576)
