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

TSP = []

WAFER = []

SYSTOLIC = []

# bamba-9b: dmatrix-like refuses its SSM scan
IMC = [
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
    ("dmatrix-like", "llama3-70b", "decode", 8, 8, None, [], "int4"),  # 8 streaming stages
    ("dmatrix-like", "llama3-70b", "prefill", 1, 8, None, ["compiler.max_tensor_cards=2"], "int8"),
    ("dmatrix-like", "mixtral-8x7b", "decode", 8, 4, None, [], "int8"),  # experts
    # MLA, dense then MoE layers; array writes beside the MACs
    ("dmatrix-like", "deepseek-v3", "decode", 4, 1, 12, ["dimc.simultaneous_write=true"], "int8"),
]

ASIC = []

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
