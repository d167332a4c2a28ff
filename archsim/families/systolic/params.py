"""Parameter schema of the matx-like family (values live in arch_configs/matx-like.yaml and
the TPU presets that extend it).

Sections follow the parts of the machine: the chip clock, the systolic arrays (shape,
dataflow, splitting, weight preload, rates per precision), the banked scratchpad, HBM, the
DMA engines, the vector units, the chip-to-chip links, and the compiler's placement policy.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from archsim.config.arch import ArchParams, Section, field

MAX_SPLIT = 16  # largest split the opcode table names (timing.OPCODES)


class SystolicChip(Section):
    clock_hz: float = field("clock of the arrays, vector units and scratchpad", unit="Hz")
    tdp_w: float = field(
        "chip power (informational: no output uses it yet; 0: not published)",
        unit="W",
        gt=None,
        ge=0,
    )


class SystolicArray(Section):
    rows: int = field("PE rows of one array (R: the reduction side in weight-stationary)")
    cols: int = field("PE columns of one array (C: the output side in weight-stationary)")
    arrays: int = field("independent arrays per chip (all of them work on each GEMM)")
    dataflow: Literal["auto", "ws", "os", "is"] = field(
        "ws weight-, os output-, is input-stationary; auto: the mapper picks per GEMM", gt=None
    )
    max_split: int = field(
        "largest split s: one R x C array runs as s x s independent (R/s) x (C/s) sub-arrays "
        "(1: not splittable); the mapper tries s = 1, 2, 4, ... up to it"
    )
    fold_overlap: bool = field(
        "double-buffered stationary operand: the next fold's preload (and the previous fold's "
        "drain) hides behind the current fold's stream; false: folds run one after another "
        "(SCALE-Sim's accounting)",
        gt=None,
    )
    preload_rows_per_cycle: int = field(
        "rows of the stationary operand shifted into a (sub-)array per cycle (daisy chain)"
    )
    rate_bf16: float = field("bf16/fp16 products per PE per cycle")
    rate_fp8: float = field(
        "fp8 products per PE per cycle (0: no fp8 mode, runs as bf16)", gt=None, ge=0
    )
    rate_int8: float = field(
        "int8 products per PE per cycle (0: no int8 mode, runs as bf16)", gt=None, ge=0
    )
    rate_int4: float = field(
        "int4 x int4 products per PE per cycle (0: none, runs as int8)", gt=None, ge=0
    )

    @model_validator(mode="after")
    def _split_divides(self) -> SystolicArray:
        s = self.max_split
        if s & (s - 1) or s > MAX_SPLIT or self.rows % s or self.cols % s:
            raise ValueError(
                f"max_split {s} must be a power of two up to {MAX_SPLIT} that divides rows "
                f"{self.rows} and cols {self.cols}"
            )
        return self


class SystolicScratchpad(Section):
    bytes: float = field("software-managed on-chip SRAM (no cache, no tags)", unit="B")
    banks: int = field("independently addressed banks")
    ports_per_bank: int = field("accesses one bank serves per cycle")
    port_bytes_per_cycle: int = field("bytes one port moves per cycle", unit="B")


class SystolicHbm(Section):
    bytes: float = field("HBM capacity per chip", unit="B")
    usable_fraction: float = field("share of HBM the runtime can fill", le=1)
    bw_bytes_per_s: float = field("HBM bandwidth per chip, shared by concurrent DMAs", unit="B/s")
    latency_s: float = field("burst latency: DMA issue to first bytes in the scratchpad", unit="s")


class SystolicDma(Section):
    engines: int = field("DMA engines per chip (each runs one transfer at a time)")
    issue_cycles: int = field(
        "cycles the scalar core takes to issue one DMA descriptor", unit="cycles"
    )


class SystolicVector(Section):
    units: int = field("vector units per chip (norm, softmax, activation, rope, residual)")
    lanes: int = field("lanes of one vector unit")
    sublanes: int = field("sublanes of one vector unit")
    alus_per_lane: int = field("ALUs per lane and sublane (element ops per cycle each)")
    latency_cycles: int = field("latency of one dependent vector op", unit="cycles")


class SystolicLinks(Section):
    count: int = field("chip-to-chip links per chip")
    bw_bytes_per_s: float = field("one link, one direction", unit="B/s")
    hop_latency_s: float = field("one hop between neighbouring chips", unit="s")
    allreduce_links: int = field("links a ring all-reduce drives at once (both ring directions)")
    all_to_all: bool = field(
        "the chips of a scale-up domain are directly linked to each other (an all-reduce "
        "may then reduce-scatter and all-gather in one hop each)",
        gt=None,
    )
    scale_up_domain: int = field("chips a tensor-parallel group may span")
    chips_per_node: int = field("chips per node (host or board)")
    max_chips: int = field("largest system the network joins")


class SystolicMapping(Section):
    """Compiler policy (not hardware): where weights live and how much scratchpad they get."""

    weight_home: Literal["sram", "hbm"] = field(
        "sram: use enough chips that every chip's weights stay resident in its scratchpad "
        "(falls back to hbm when no split fits); hbm: chips from HBM capacity",
        gt=None,
    )
    pin_fraction: float = field(
        "share of the scratchpad the compiler fills with weights kept resident across steps "
        "(the rest holds activations and double-buffered tiles; 0: weights always stream)",
        gt=None,
        ge=0,
        lt=1,
    )


class SystolicParams(ArchParams):
    chip: SystolicChip
    systolic: SystolicArray
    scratchpad: SystolicScratchpad
    hbm: SystolicHbm
    dma: SystolicDma
    vector: SystolicVector
    links: SystolicLinks
    mapping: SystolicMapping
