"""Parameter schema of the etched-like family (values live in arch_configs/etched-like.yaml).

Sections follow the parts of the chip: the MAC arrays and their clock, the four matrix
engines (one per projection stage), the attention unit, the vector stages, memory, links,
the host path, the compiler's pipeline knobs, and the admission list: what the silicon runs.
"""

from __future__ import annotations

from archsim.config.arch import ArchParams, Section, field


class AsicChip(Section):
    clock_hz: float = field("clock of the arrays and stages", unit="Hz")
    array_dim: int = field("side of one weight-stationary MAC array", unit="MACs")
    bf16_rate_fraction: float = field(
        "rows per cycle an array takes at bf16/fp16, relative to fp8 (one row per cycle)", le=1
    )
    tdp_w: float = field("chip power (informational: no output uses it yet)", unit="W")


class AsicMatrix(Section):
    """Four matrix engines, each a fixed group of arrays hardwired to one projection stage."""

    qkv_arrays: int = field("arrays of the QKV projection engine")
    o_arrays: int = field("arrays of the attention output projection engine")
    gate_up_arrays: int = field("arrays of the FFN gate/up projection engine (also lm_head)")
    down_arrays: int = field("arrays of the FFN down projection engine")
    weight_load_cycles: int = field(
        "cycles to install one weight tile in an array (double-buffered: hidden behind a pass "
        "of at least as many rows)",
        unit="cycles",
    )
    pipeline_latency_cycles: int = field(
        "first row into an engine -> its first results out to the next stage's buffer",
        unit="cycles",
        gt=None,
        ge=0,
    )


class AsicAttention(Section):
    arrays: int = field("MAC arrays' worth of Q K^T and P V throughput of the attention unit")
    exp_per_cycle: int = field("softmax exponentials per cycle")
    kv_bytes_per_cycle: float = field("K and V bytes the unit consumes per cycle", unit="B")
    latency_cycles: int = field("first query in -> first output out", unit="cycles", gt=None, ge=0)


class AsicVector(Section):
    lanes: int = field(
        "elements per cycle of each vector stage (norm, rotary, activation, residual, gather)"
    )
    latency_cycles: int = field("first element in -> first out", unit="cycles", gt=None, ge=0)


class AsicMemory(Section):
    hbm_bytes: float = field("HBM capacity per chip", unit="B")
    hbm_usable_fraction: float = field(
        "share of HBM the runtime fills with weights, KV, state and activations", le=1
    )
    hbm_peak_bw_bytes_per_s: float = field("HBM peak bandwidth per chip", unit="B/s")
    hbm_efficiency: float = field("share of the peak that long streams sustain", le=1)
    sram_bytes: float = field(
        "on-chip buffer SRAM; the residual streams of the tiles parked between layers spill "
        "to HBM when they exceed it",
        unit="B",
    )


class AsicLinks(Section):
    link_bw_bytes_per_s: float = field("one chip-to-chip link, per direction", unit="B/s")
    links_per_chip: int = field("links per chip (all-to-all inside the server)")
    link_latency_s: float = field("one hop, first byte sent -> received", unit="s")
    chips_per_server: int = field("chips of one server, fully connected (tensor parallelism)")


class AsicHost(Section):
    pcie_bw_bytes_per_s: float = field("host link per chip, per direction", unit="B/s")
    pcie_round_trip_s: float = field(
        "host round trip: transfer latency both ways + the host's routing decision", unit="s"
    )


class AsicPipeline(Section):
    """How the compiler feeds the fixed pipeline (software choices, not silicon)."""

    tile_tokens: int = field(
        "rows streamed through the stages as one tile (whole sequences in prefill: a tile "
        "holds max(1, tile_tokens // seq) of them)",
        unit="tokens",
    )
    allreduce_bytes_per_element: float = field(
        "bytes per element of a tensor-parallel all-reduce (2: bf16 partial sums; 1: fp8)",
        unit="B",
        le=4,
    )


class AsicAdmission(Section):
    """What the silicon executes; check_graph refuses anything else (one line, exit 2)."""

    op_kinds: tuple[str, ...] = field("graph op kinds the stages execute", gt=None)
    activations: tuple[str, ...] = field("FFN activations the activation stage computes", gt=None)
    norms: tuple[str, ...] = field("normalisations the norm stage computes", gt=None)
    attention_variants: tuple[str, ...] = field(
        "head sharing the attention unit supports (mha, gqa, mqa)", gt=None
    )
    head_dims: tuple[int, ...] = field("attention head sizes the attention unit supports", gt=None)
    precisions: tuple[str, ...] = field(
        "storage formats of weights, activations and KV the datapath takes", gt=None
    )
    moe_host_fallback: bool = field(
        "route mixture-of-experts tokens on the host (a PCIe round trip per MoE layer) "
        "instead of refusing the model",
        gt=None,
    )


class AsicParams(ArchParams):
    chip: AsicChip
    matrix: AsicMatrix
    attention: AsicAttention
    vector: AsicVector
    memory: AsicMemory
    links: AsicLinks
    host: AsicHost
    pipeline: AsicPipeline
    admission: AsicAdmission
