"""The Family interface: what a machine family supplies to the pipeline.

A family is a package under ``archsim/families/`` whose ``family.py`` subclasses
:class:`Family` and registers it (``@register_arch("name")``). Stateless: every number
arrives as an argument (its typed params come from the YAML through ``Params``). The
pipeline calls, in order: ``supported_ops`` and ``check_graph`` (admission) -> ``plan`` ->
``partition`` -> ``lower`` -> ``timing`` -> the engine -> ``step`` and ``summarize``.
``archsim kernel`` calls the same methods on a graph of one op.

Core imports nothing above it, so graphs (``networkx.DiGraph`` of ``archsim.graph.Op``),
params (a ``archsim.config.ArchParams`` subclass) and scenarios
(``archsim.graph.Scenario``) are typed loosely here; each family's own signatures are
precise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from archsim.core.engine import Timeline
from archsim.core.isa import InstructionStream, Timing
from archsim.core.plan import Plan


@dataclass(frozen=True)
class StepModel:
    """How the simulated stream relates to the whole step (typed; no keys in ``extra``).

    ``copies``: copies of the simulated stream's work one step performs beyond the symmetric
    tensor-parallel ranks (a pipelined family that simulates some micro-batches of a round
    and extrapolates the rest says how many rounds' worth of work the step is); byte and FLOP
    totals are multiplied by it. ``latency_s``: one sequence's latency through the step.
    ``period_s``: seconds between consecutive steps at load (system tokens/s is the step's
    tokens over it); equal to the latency where steps do not overlap.
    """

    latency_s: float
    period_s: float
    copies: float = 1.0

    def __post_init__(self) -> None:
        if not (self.latency_s >= 0 and self.period_s > 0 and self.copies > 0):
            raise ValueError(f"invalid step model {self}")


@dataclass(frozen=True)
class Peak:
    """Ceilings a roofline holds each instruction to (per chip)."""

    flops_per_s: float
    offchip_bytes_per_s: float  # 0: the machine has no off-chip memory
    link_bytes_per_s: float
    onchip_bytes_per_s: float = 0.0  # 0: the on-chip tier is not a ceiling of this machine
    # tighter on-chip ceilings for some opcodes (a unit fed by a narrower path)
    onchip_bytes_per_s_by_opcode: tuple[tuple[str, float], ...] = ()
    # tighter compute ceilings for the units of a kind ("mxu_qkv" for every chip's
    # "chip3.mxu_qkv"): a fixed stage that owns a share of the chip's MACs
    flops_per_s_by_unit: tuple[tuple[str, float], ...] = ()


class Family(ABC):
    """Base class of a registered cycle model. Abstract methods must be implemented; the
    others have working defaults."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = object  # the family's config schema (an ArchParams subclass)
    opcodes: ClassVar[list[str]] = []
    # which InstructionStream byte column is which memory tier / link, for reports
    tiers: ClassVar[dict[str, str]] = {
        "offchip_bytes": "offchip",
        "onchip_bytes": "onchip",
        "link_bytes": "link",
    }
    # the compiler assigns every issue cycle; the pipeline checks the schedule independently
    # and the engine holds every instruction to it
    static: ClassVar[bool] = False
    # weights stay inside the compute units (in-memory compute, a weight-stationary wafer):
    # a decode step need not move them; False: every decode step streams every weight once
    # from some memory tier into the units (tests/test_invariants.py checks it)
    weight_stationary: ClassVar[bool] = False

    @abstractmethod
    def supported_ops(self) -> frozenset[str]:
        """Op kinds (``archsim.graph.OpKind`` values) this family can lower; the pipeline
        refuses any other up front, naming it."""

    def check_graph(self, g: Any, p: Any) -> None:
        """Refuse, with one ``UnsupportedOpError`` line naming the op, its layer and the
        family, anything of the graph this configuration cannot run beyond its op kinds
        (a precision, an activation, a head size...). Called before ``plan``; default: all
        ops of a supported kind run."""
        return None

    @abstractmethod
    def clock_hz(self, p: Any) -> float: ...

    @abstractmethod
    def plan(self, g: Any, p: Any, chips: int | None) -> Plan:
        """How many chips and how the model is split (``chips=None``: the fewest that fit)."""

    @abstractmethod
    def partition(self, g: Any, plan: Plan, p: Any) -> Any:
        """The graph each chip runs, with the communication ops the split implies."""

    @abstractmethod
    def lower(self, g: Any, plan: Plan, p: Any, sc: Any) -> InstructionStream:
        """Partitioned graph -> instruction stream (static families: with issue cycles)."""

    @abstractmethod
    def timing(self, stream: InstructionStream, p: Any) -> Timing:
        """Work, latency and unit interval of every instruction, bandwidth of every resource
        (numba kernels in the family's ``timing.py``)."""

    @abstractmethod
    def peak(self, p: Any, precision_weights: str) -> Peak:
        """Datasheet ceilings for roofline bounds."""

    def step(
        self, stream: InstructionStream, tl: Timeline, plan: Plan, p: Any, sc: Any
    ) -> StepModel:
        """Default: the stream is the whole step and steps do not overlap."""
        seconds = tl.cycles / self.clock_hz(p)
        return StepModel(latency_s=seconds, period_s=max(seconds, 1e-30))

    def summarize(
        self, stream: InstructionStream, tl: Timeline, plan: Plan, p: Any, sc: Any
    ) -> dict[str, Any]:
        """Family-specific outputs merged into the Result (optional)."""
        return {}

    def energy_figures(self, p: Any, extra: dict[str, Any]) -> dict[str, Any]:
        """Energy figures the family's own config already holds (one source of truth per
        number), for the run whose ``summarize`` output is ``extra``: any of ``tdp_w``,
        ``static_w`` (W per chip), ``pj_per_flop`` ({precision: pJ}) and ``pj_per_byte``
        ({tier: pJ}). The config's ``energy:`` section supplies the others and must not repeat
        these (``archsim/energy.py``). Default: none (a ``tdp_w`` field of any section of
        the config is found without this hook)."""
        return {}

    def instruction_estimate(self, g: Any, plan: Plan, p: Any, sc: Any) -> int:
        """An upper estimate of the instructions ``lower`` will emit for the partitioned
        graph ``g`` (checked against ``--max-instructions`` before lowering). Default: 16
        per op."""
        return 16 * g.number_of_nodes()

    def describe_placement(self, plan: dict[str, Any], p: Any) -> str | None:
        """Where the plan put the model on the machine, as text (``archsim run
        --show-placement``). ``plan`` is the plan as a Result records it
        (``Plan.to_dict()``, ``result.meta["plan"]``). Default: None (nothing to show)."""
        return None

    def kernel_choice(self, stream: InstructionStream, timing: Timing, p: Any) -> dict[str, Any]:
        """What the family chose for a single op (``archsim kernel``): tile, split, dataflow,
        planes... A ``compute_cycles`` key (cycles with no memory stall) is also reported at
        the top of the kernel result. Default: nothing to report."""
        return {}

    def kernel_options(self) -> dict[str, tuple[str, ...]]:
        """Family-specific ``archsim kernel`` options and their allowed values (e.g.
        h100-like's ``launch: (graph, eager)``); the first value is the default."""
        return {}

    @staticmethod
    def opcode_mask(stream: InstructionStream, name: str) -> np.ndarray:
        """Boolean mask of the instructions with opcode ``name``."""
        if name not in stream.opcode_names:
            return np.zeros(len(stream), dtype=bool)
        return stream.opcode == stream.opcode_names.index(name)
