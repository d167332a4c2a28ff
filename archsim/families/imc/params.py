"""Parameter schema of the dmatrix-like family (values live in arch_configs/dmatrix-like.yaml).

Sections follow the parts of the machine: the card (the unit archsim calls a chip), its DIMC
cores, the block formats they multiply, the SIMD units, the two memory tiers, the links
(die-to-die inside a card, the bridge of a card pair, PCIe inside a server, the NIC between
servers), the system and the compiler's choices.
"""

from __future__ import annotations

from typing import Literal

from archsim.config.arch import ArchParams, Section, field


class ImcCard(Section):
    clock_hz: float = field("DIMC / SIMD clock", unit="Hz")
    chiplets: int = field("chiplets per card (each with its DIMC cores, SIMD and LPDDR)")
    packages: int = field("packages per card (chiplets are split evenly over them)")
    sram_bytes: float = field("compute SRAM of the card (all DIMC cores)", unit="B")
    sram_reserved_fraction: float = field(
        "share of the SRAM kept for code, scratch and staging (not for weights or KV)",
        gt=None,
        ge=0,
        lt=1,
    )
    tdp_w: float = field("card power (informational: no output uses it yet)", unit="W")


class ImcDimc(Section):
    """One DIMC core: SRAM weight tiles that multiply in place, an adder tree, an accumulator."""

    cores_per_chiplet: int = field("DIMC cores per chiplet")
    tile_rows: int = field("weight-tile depth along K (adder-tree inputs)", unit="elements")
    tile_cols: int = field("weight-tile width along N (outputs per tile)", unit="elements")
    touch_bits_per_cycle: int = field(
        "stored weight bits one core brings into multiply-accumulate per cycle", unit="bit"
    )
    bit_products_per_cycle: int = field(
        "weight-bit x input-bit products one core forms per cycle (MACs/cycle = this / "
        "(weight bits x input bits))",
        unit="bit^2",
    )
    pipeline_latency_cycles: int = field(
        "adder tree + shift-accumulate + output conversion after the last pass",
        unit="cycles",
        gt=None,
        ge=0,
    )
    write_bits_per_cycle: int = field("bits one core writes into its arrays per cycle", unit="bit")
    touch_model: Literal["weight_touch", "in_place"] = field(
        "what the vendor's DIMC bandwidth bounds: weight_touch (reading A: every pass sweeps "
        "its tile at touch_bits_per_cycle) or in_place (reading B: MAC rate only)",
        gt=None,
    )
    input_mode: Literal["bit_parallel", "bit_serial"] = field(
        "bit_parallel: a pass serves its input vectors whole; bit_serial: one input bit per "
        "cycle, a pass holds each touched row for the input width and serves that many more "
        "vectors",
        gt=None,
    )
    simultaneous_write: bool = field(
        "arrays accept writes (weight reloads, K/V appends) while they multiply", gt=None
    )
    marketed_bw_bytes_per_s: float = field("vendor DIMC bandwidth per card (reported)", unit="B/s")


class ImcFormats(Section):
    """Block formats: mantissa bits per element plus one shared scale per block. A storage
    dtype mapped to 0 bits has no format on this machine and is refused."""

    block_elements: int = field("elements sharing one scale", unit="elements")
    scale_bits: int = field("bits of a block's shared scale", unit="bit")
    int8_bits: int = field("mantissa bits of int8 tensors (MXINT8)", unit="bit", gt=None, ge=0)
    int4_bits: int = field("mantissa bits of int4 tensors (MXINT4)", unit="bit", gt=None, ge=0)
    bf16_bits: int = field("mantissa bits of bf16 tensors (block FP)", unit="bit", gt=None, ge=0)
    fp16_bits: int = field("mantissa bits of fp16 tensors (block FP)", unit="bit", gt=None, ge=0)
    fp8_bits: int = field("mantissa bits of fp8 tensors (0: none)", unit="bit", gt=None, ge=0)
    fp32_bits: int = field("mantissa bits of fp32 tensors (0: none)", unit="bit", gt=None, ge=0)


class ImcSimd(Section):
    lanes_per_chiplet: int = field("FP16 SIMD lanes per chiplet", unit="lanes")
    transcendental_cycles: int = field("cycles of one exp/rsqrt/reciprocal per lane", unit="cycles")
    latency_cycles: int = field("pipeline latency of one SIMD pass", unit="cycles", gt=None, ge=0)


class ImcMemory(Section):
    lpddr_bytes: float = field("LPDDR capacity per card", unit="B")
    lpddr_bw_bytes_per_s: float = field("LPDDR bandwidth per card (all chiplets)", unit="B/s")
    lpddr_latency_s: float = field("first-access latency of an LPDDR read", unit="s", gt=None, ge=0)
    stream_buffer_fraction: float = field(
        "share of the usable SRAM a card streaming weights keeps as the double buffer they "
        "pass through",
        lt=1,
    )
    kv_tier: Literal["sram", "lpddr"] = field(
        "where the KV cache lives: sram (in DIMC arrays) or lpddr (streamed in per step)",
        gt=None,
    )


class ImcLinks(Section):
    d2d_bw_bytes_per_s: float = field("die-to-die bandwidth per chiplet, per direction", unit="B/s")
    d2d_hop_latency_s: float = field("one die-to-die hop", unit="s", gt=None, ge=0)
    d2d_hops: int = field("die-to-die hops of an exchange across a card's chiplets")
    bridge_bw_bytes_per_s: float = field("bridge to the paired card, per direction", unit="B/s")
    bridge_latency_s: float = field("one bridge hop", unit="s", gt=None, ge=0)
    pcie_bw_bytes_per_s: float = field("PCIe card-to-card, per direction", unit="B/s")
    pcie_latency_s: float = field("one PCIe card-to-card transfer", unit="s", gt=None, ge=0)
    nic_bw_bytes_per_s: float = field("scale-out NIC bandwidth per card, per direction", unit="B/s")
    nic_latency_s: float = field("one server-to-server transfer", unit="s", gt=None, ge=0)


class ImcSystem(Section):
    cards_per_bridge: int = field("cards joined by one bridge (the largest tensor group)")
    cards_per_server: int = field("cards in one server (PCIe between them)")
    servers_per_rack: int = field("servers in one rack")
    max_cards: int = field("largest system --chips auto may use")


class ImcCompiler(Section):
    """The compiler's fixed costs and how much of the program the simulator runs."""

    max_tensor_cards: int = field(
        "largest tensor group: cards that split every layer between them (1: layers are "
        "pipelined over cards; 2: a bridged pair splits each layer, all-reducing over the "
        "bridge)"
    )
    layer_overhead_s: float = field(
        "fixed latency per decoder layer per card (synchronisation, control)",
        unit="s",
        gt=None,
        ge=0,
    )
    step_overhead_s: float = field(
        "fixed latency per token step of a micro-batch (host sampling, the token's round "
        "trip over PCIe, scheduling)",
        unit="s",
        gt=None,
        ge=0,
    )
    max_simulated_micro_batches: int = field(
        "micro-batches simulated through the pipeline; above this the round period is "
        "extrapolated from their steady departures (at least 2)",
        gt=None,
        ge=2,
    )


class ImcParams(ArchParams):
    card: ImcCard
    dimc: ImcDimc
    formats: ImcFormats
    simd: ImcSimd
    memory: ImcMemory
    links: ImcLinks
    system: ImcSystem
    compiler: ImcCompiler
