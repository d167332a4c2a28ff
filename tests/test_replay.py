"""Replaying lowered decoder layers (archsim/compiler/replay.py): the stream is exactly the one
lowering every layer op by op gives, on every family, and layers were in fact replayed."""

from __future__ import annotations

import pytest

from archsim.compiler import replay
from archsim.config import load_arch, parse_overrides
from archsim.core.registry import get_family
from archsim.graph import build_graph
from archsim.graph.model import load_model
from archsim.graph.scenario import Precision, Scenario

# arch, model, phase, batch, chips, layers, overrides, precision
H100 = [
    ("h100-like", "llama3-70b", "decode", 4, 4, None, [], "bf16"),  # CUDA graphs, TP
    ("h100-like", "llama3-70b", "decode", 8, 16, None, [], "bf16"),  # two stages: sends
    ("h100-like", "llama3-8b", "prefill", 2, 1, None, [], "bf16"),  # eager launches
    ("h100-like", "llama3-8b", "decode", 2, 2, None, ["kernel.decode_cuda_graphs=false"], "bf16"),
    ("h100-like", "mixtral-8x7b", "decode", 16, 4, None, [], "bf16"),  # experts
    ("h100-like", "deepseek-v3", "decode", 4, 8, 10, [], "bf16"),  # MLA, dense then MoE
    ("h100-like", "bamba-9b", "decode", 4, 1, None, [], "bf16"),  # SSM between attention
]

TSP = [
    ("groq-like", "llama3-8b", "decode", 1, None, None, [], "int8"),  # stages of ~3 layers
    ("groq-like", "llama3-70b", "decode", 2, 64, 12, [], "int8"),  # tensor groups, 2 mbs
    ("groq-like", "llama3-8b", "prefill", 1, None, 12, [], "int8"),
    ("groq-like", "mixtral-8x7b", "decode", 4, None, 10, [], "int8"),  # experts, all-to-all
    ("groq3-lpx", "bamba-9b", "decode", 4, None, None, [], "fp8"),  # SSM between attention
]

WAFER = [
    ("cerebras-like", "llama3-8b", "decode", 8, None, None, [], "bf16"),  # a region per layer
    ("wse-2", "llama3-70b", "decode", 8, None, None, [], "bf16"),  # regions on several wafers
    ("cerebras-like", "llama3-8b", "prefill", 2, None, 12, [], "bf16"),  # MeshGEMM
    ("cerebras-like", "mixtral-8x7b", "decode", 4, None, None, [], "bf16"),  # router, experts
    ("cerebras-like", "llama3-8b", "decode", 8, None, None,
     ["mapping.mode=weight_streaming"], "bf16"),  # weight loads reuse the buffer of L - 2
    ("wse-2", "mixtral-8x7b", "prefill", 2, None, 12,
     ["mapping.mode=weight_streaming"], "bf16"),
]  # fmt: skip

SYSTOLIC = [
    # five stages of ~7 layers, two micro-batches, weights pinned; layers on later stages and
    # from other places in the DMA engines' rotation replay (the frame renames both)
    ("matx-like", "llama3-8b", "decode", 8, None, None, [], "bf16"),
    ("matx-like", "llama3-70b", "decode", 8, 8, None, [], "bf16"),  # pinned, then streamed
    ("matx-like", "mixtral-8x7b", "decode", 8, 8, None, ["dma.engines=1"], "bf16"),  # experts
    ("tpu-v4", "llama3-8b", "prefill", 2, 4, None, [], "bf16"),  # prefill, TP 4
    ("tpu-v5e", "llama3-8b", "decode", 8, 64, None, [], "bf16"),  # TP 32 x two stages
    ("tpu-v5e", "mixtral-8x7b", "decode", 8, 8, None, [], "bf16"),  # experts
    ("tpu-v6e", "deepseek-v3", "decode", 4, 16, 20, [], "bf16"),  # MLA, dense then MoE
]

# bamba-9b: dmatrix-like refuses its SSM scan
IMC = [
    # 41 stages of about two layers over 6 servers: layers replay on other cards, and a
    # transfer between servers takes the NIC where one inside a server takes PCIe
    ("dmatrix-like", "llama3-70b", "decode", 1, None, None, [], "int8"),
    ("dmatrix-like", "llama3-8b", "decode", 8, None, None, [], "int8"),  # SRAM: 5 stages, sends
    ("dmatrix-like", "llama3-8b", "prefill", 2, 1, None, [], "int8"),  # weights from LPDDR
    # a tensor pair over the bridge (card all-reduce), the K/V cache streamed from LPDDR
    (
        "dmatrix-like",
        "llama3-8b",
        "decode",
        8,
        2,
        None,
        ["compiler.max_tensor_cards=2", "memory.kv_tier=lpddr"],
        "int8",
    ),
    ("dmatrix-like", "llama3-70b", "decode", 8, 8, 24, [], "int4"),  # 8 streaming stages
    ("dmatrix-like", "llama3-70b", "prefill", 1, 8, None, ["compiler.max_tensor_cards=2"], "int8"),
    ("dmatrix-like", "mixtral-8x7b", "decode", 8, 4, None, [], "int8"),  # experts
    # MLA, dense then MoE layers; array writes beside the MACs
    ("dmatrix-like", "deepseek-v3", "decode", 4, 1, 12, ["dimc.simultaneous_write=true"], "int8"),
]

ASIC = [
    ("etched-like", "llama3-70b", "decode", 8, 8, None, [], "bf16"),  # TP8: all-reduces
    ("etched-like", "llama3-70b", "decode", 8, 16, None, [], "bf16"),  # two stages: sends
    ("etched-like", "llama3-8b", "prefill", 4, 1, None, ["pipeline.tile_tokens=1024"], "bf16"),
    # two tiles whose residual streams spill to HBM (the layer-crossing norm and residual)
    (
        "etched-like",
        "llama3-8b",
        "prefill",
        4,
        1,
        8,
        ["pipeline.tile_tokens=1024", "memory.sram_bytes=1e6"],
        "bf16",
    ),
    ("etched-like", "llama3-8b", "decode", 4096, 1, 8, [], "fp8"),  # decode in two tiles
    # experts routed on the host (blocking round trips), all-to-alls; no SSM stage (bamba)
    (
        "etched-like",
        "mixtral-8x7b",
        "decode",
        16,
        8,
        None,
        ["admission.moe_host_fallback=true"],
        "bf16",
    ),
]

CASES = [*H100, *TSP, *WAFER, *SYSTOLIC, *IMC, *ASIC]


def lowered(arch, model, phase, batch, chips, layers, overrides, precision):
    p = load_arch(arch, parse_overrides(overrides))
    fam = get_family(p.family)
    sc = Scenario(phase=phase, batch=batch, seq=512, ctx=512, precision=Precision.parse(precision))
    g = build_graph(load_model(model), sc, layers)
    plan = fam.plan(g, p, chips)
    pg = fam.partition(g, plan, p)
    with replay.disabled():
        fresh = fam.lower(pg, plan, p, sc)
    before = replay.stats["replayed"]
    replayed = fam.lower(pg, plan, p, sc)
    return fresh, replayed, replay.stats["replayed"] - before


@pytest.mark.parametrize(
    ("arch", "model", "phase", "batch", "chips", "layers", "overrides", "precision"), CASES
)
def test_replayed_layers_give_the_same_stream(
    arch, model, phase, batch, chips, layers, overrides, precision
):
    """Every column, dependency, resource use and name of the replayed stream equals the
    stream lowered op by op; and at least three layers were replayed (so the comparison
    compares something)."""
    fresh, replayed, n = lowered(arch, model, phase, batch, chips, layers, overrides, precision)
    assert replayed.dumps() == fresh.dumps()
    assert n >= 3


def test_rotated_names_move_the_stage_and_the_rotation():
    """A frame (first stage 3; rotations of stages 3, 4, 5 at 0, 0, 2 of 4): chip5's mxm1 is
    stage 2 of the frame and one before its rotation's place, so chip2.mxm3 relative (by
    hand: 5 - 3 = 2, (1 - 2) mod 4 = 3); back, the same name; units outside the rotation
    move only their stage, names of no chip not at all."""
    frame = (3, (0, 0, 2))
    assert replay.rotated_name("chip5.mxm1", frame, -1, "mxm", 4) == "chip2.mxm3"
    assert replay.rotated_name("chip2.mxm3", frame, 1, "mxm", 4) == "chip5.mxm1"
    assert replay.rotated_name("chip4.vxm", frame, -1, "mxm", 4) == "chip1.vxm"
    assert replay.rotated_name("chip1.vxm", frame, 1, "mxm", 4) == "chip4.vxm"
    assert replay.rotated_name("memoryx", frame, -1, "mxm", 4) == "memoryx"


@pytest.mark.slow
def test_random_configurations_replay_exactly():
    """80 seeded random steps (any preset x model x phase x batch x precision x chips x layers
    x routing skew; refusals skipped): each replayed stream equals the one lowered op by
    op. (A wider run of the same draw, 3,600 steps, found no difference either.)"""
    import random
    from pathlib import Path

    from archsim.core.errors import ArchsimError
    from archsim.pipeline import refuse_unsupported

    root = Path(__file__).resolve().parents[1]
    rng = random.Random(16)
    archs = sorted(f.stem for f in (root / "arch_configs").glob("*.yaml"))
    models = sorted(f.stem for f in (root / "workloads").glob("*.yaml"))
    compared = 0
    for _ in range(80):
        arch, model = rng.choice(archs), rng.choice(models)
        seq = rng.choice([128, 512, 2048])
        sc = Scenario(phase=rng.choice(["decode", "decode", "prefill"]),
                      batch=rng.choice([1, 2, 4, 8, 16, 64, 256]), seq=seq, ctx=seq,
                      precision=Precision.parse(rng.choice(["bf16", "int8", "fp8", "int4"])),
                      routing_skew=rng.choice([0.0, 0.0, 1.0]))  # fmt: skip
        chips, layers = rng.choice([None, None, 1, 2, 4, 8, 16, 64]), rng.choice([None, 4, 12])
        try:
            p = load_arch(arch, {})
            fam = get_family(p.family)
            g = build_graph(load_model(model), sc, layers)
            refuse_unsupported(g, fam, p)
            plan = fam.plan(g, p, chips)
            pg = fam.partition(g, plan, p)
            if fam.instruction_estimate(pg, plan, p, sc) > 100_000:
                continue
            with replay.disabled():
                fresh = fam.lower(pg, plan, p, sc)
        except ArchsimError:
            continue
        assert fam.lower(pg, plan, p, sc).dumps() == fresh.dumps(), (arch, model, sc, chips)
        compared += 1
    assert compared >= 30
