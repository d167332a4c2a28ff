"""What a family supplies: its parameter schema, partition policy, lowering and timing."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import networkx as nx
import numpy as np

from archsim.compiler.plan import Plan
from archsim.config.arch import ArchParams
from archsim.engine import Timeline
from archsim.isa import InstructionStream
from archsim.scenario import Scenario


class Family(ABC):
    """Base class of a registered cycle model. Stateless: every number arrives as an argument.
    A family must implement the abstract methods; the others have working defaults."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[ArchParams]] = ArchParams
    opcodes: ClassVar[list[str]] = []
    # which InstructionStream byte column is which memory tier / link, for reports
    tiers: ClassVar[dict[str, str]] = {
        "offchip_bytes": "offchip",
        "onchip_bytes": "onchip",
        "link_bytes": "link",
    }
    strict_static: ClassVar[bool] = True

    @abstractmethod
    def clock_hz(self, p: ArchParams) -> float: ...

    @abstractmethod
    def plan(self, g: nx.DiGraph, p: ArchParams, chips: int | None) -> Plan:
        """How many chips and how the model is split (``chips=None``: the fewest that fit)."""
        ...

    def partition(self, g: nx.DiGraph, plan: Plan) -> nx.DiGraph:
        """The graph each chip runs, with communication ops (default: Megatron TP + PP)."""
        from archsim.compiler.partition import partition

        return partition(g, plan)

    @abstractmethod
    def peak(self, p: ArchParams, precision_weights: str) -> dict[str, float]:
        """Ceilings for roofline bounds: flops_per_s, offchip_bytes_per_s, link_bytes_per_s
        (and onchip_bytes_per_s where the on-chip tier is what bounds the machine)."""
        ...

    @abstractmethod
    def lower(self, g: nx.DiGraph, plan: Plan, p: ArchParams, sc: Scenario) -> InstructionStream:
        """Partitioned graph -> instruction stream (and, for static families, issue cycles)."""
        ...

    @abstractmethod
    def durations(self, stream: InstructionStream, p: ArchParams) -> np.ndarray:
        """Cycles each instruction occupies its unit (numba kernel)."""
        ...

    def summarize(
        self, stream: InstructionStream, tl: Timeline, plan: Plan, p: ArchParams, sc: Scenario
    ) -> dict[str, Any]:
        """Family-specific outputs merged into the Result (optional)."""
        return {}

    def step_seconds(self, tl: Timeline, plan: Plan, p: ArchParams, sc: Scenario) -> float:
        """Seconds of the simulated step (default: makespan / clock)."""
        return tl.cycles / self.clock_hz(p)
