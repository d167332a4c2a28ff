"""Plan: how the model is split over chips (the output of the partition pass)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes the whole model needs resident for this scenario."""

    weight_bytes: float
    kv_bytes: float
    act_bytes: float  # peak working activations
    state_bytes: float = 0.0  # recurrent state of every sequence (SSM layers), resident as KV

    @property
    def total(self) -> float:
        return self.weight_bytes + self.kv_bytes + self.act_bytes + self.state_bytes


@dataclass(frozen=True)
class Plan:
    """chips = tp x pp (x dp). Stage s runs decoder layers stage_layers[s] = (first, stop).

    ``ep``: expert parallelism. 1: the experts of an MoE layer are tensor-split like a dense
    FFN. ep > 1 (ep = tp): the tp chips of a stage hold the routed experts of each MoE layer
    in ep contiguous blocks and the MoE block runs sequence-parallel (each chip routes its
    share of the tokens and dispatches them to their experts' chips with an all-to-all);
    the chips are then not symmetric, and a family simulates the hottest rank (the one
    whose experts get the most rows), whose MoE layers set the step time
    (archsim/compiler/partition.py)."""

    tp: int
    pp: int
    stage_layers: tuple[tuple[int, int], ...]
    need: MemoryNeed
    capacity_bytes_per_chip: float
    dp: int = 1
    micro_batch: int = 0  # sequences per micro-batch of a pipeline (0: the whole batch)
    micro_batches: int = 1  # micro-batches that follow each other down the pipeline
    extra: dict[str, Any] = field(default_factory=dict)
    ep: int = 1

    @property
    def chips(self) -> int:
        return self.tp * self.pp * self.dp

    def stage_of_layer(self, layer: int) -> int:
        for s, (first, stop) in enumerate(self.stage_layers):
            if first <= layer < stop:
                return s
        return 0 if layer < 0 else self.pp - 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["chips"] = self.chips
        return d
