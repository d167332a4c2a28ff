"""Parameter schema of the cerebras-like family (values live in arch_configs/cerebras-like.yaml).

Sections follow the parts of the machine: the wafer (mesh, clock), one processing element
(SRAM, SIMD widths, instruction costs), the fabric (wavelets, hops, routes), the compiler's
mapping choices, and the system of several wafers (off-wafer links, MemoryX).
"""

from __future__ import annotations

from typing import Literal

from archsim.config.arch import ArchParams, Section, field


class WaferChip(Section):
    clock_hz: float = field("PE clock (not published for WSE-3: a key to sweep)", unit="Hz")
    mesh_cols: int = field("PEs across the exposed fabric, east-west (x)")
    mesh_rows: int = field("PEs down the exposed fabric, north-south (y)")
    border_cols: int = field(
        "columns the host-I/O (memcpy) runtime occupies: a program is at most "
        "(mesh_cols - border_cols) x (mesh_rows - border_rows)",
        gt=None,
        ge=0,
    )
    border_rows: int = field("rows the host-I/O runtime occupies", gt=None, ge=0)
    cores_marketed: int = field("vendor core count (reported only)")
    sram_marketed_bytes: float = field("vendor on-wafer SRAM (reported only)", unit="B")
    sram_bw_marketed_bytes_per_s: float = field("vendor SRAM bandwidth (reported only)", unit="B/s")
    fabric_bw_marketed_bytes_per_s: float = field(
        "vendor fabric bandwidth (reported only)", unit="B/s"
    )
    tdp_w: float = field("system power (informational: no output uses it yet)", unit="W")


class WaferPe(Section):
    sram_bytes: int = field("SRAM of one PE (code, data, buffers)", unit="B")
    sram_banks: int = field("SRAM banks (informational: bank conflicts are not modelled)")
    sram_reads_per_cycle: int = field("SRAM reads per cycle (to different banks)")
    sram_writes_per_cycle: int = field("SRAM writes per cycle")
    sram_port_bytes: int = field("bytes one SRAM read or write moves", unit="B")
    reserved_bytes: int = field(
        "SRAM per PE kept for code, the runtime and I/O buffers (not for weights or KV)",
        unit="B",
        gt=None,
        ge=0,
    )
    simd_fp16_fmac: int = field("fp16 multiply-accumulates per cycle (@fmach)")
    simd_fp16_add: int = field("fp16 add/mul/mov elements per cycle")
    simd_fp32_add: int = field("fp32 add/mov elements per cycle")
    simd_fp16_max: int = field("fp16 max elements per cycle (@fmaxh)")
    dsd_op_overhead_cycles: int = field(
        "fixed cycles of one vector (DSD) instruction: issue and DSR load", unit="cycles", gt=None,
        ge=0,
    )  # fmt: skip
    task_cycles: int = field(
        "fixed cycles to activate and run one task (one op phase or collective stage on a PE)",
        unit="cycles",
        gt=None,
        ge=0,
    )
    exp_ops: int = field("vector instructions one exp takes (polynomial), per element pass")


class WaferFabric(Section):
    wavelet_bytes: int = field(
        "bytes of one wavelet: one per link per direction per cycle", unit="B"
    )
    values_per_wavelet: int = field("16-bit values packed in one wavelet")
    hop_cycles: int = field("router-to-router hop latency", unit="cycles")
    ramp_cycles: int = field("router <-> compute-engine ramp latency (T_R)", unit="cycles")
    links_per_pe: int = field("fabric links per router (N, E, S, W), each direction")
    colors_per_router: int = field("routes (colors) one router holds")
    reserved_colors: int = field(
        "colors the runtime and libraries keep (memcpy, message passing)", gt=None, ge=0
    )
    stream_colors: int = field(
        "colors a region keeps for its activation stream in and out", gt=None, ge=0
    )
    relay_cycles: int = field(
        "software relay (beta): a PE receives and re-sends where routes run out", unit="cycles"
    )
    route_switch_cycles: int = field(
        "reconfiguring a color's route between collectives (control wavelets)",
        unit="cycles",
        gt=None,
        ge=0,
    )


class WaferMapping(Section):
    """What the compiler chooses (not hardware): placement, algorithms, execution mode."""

    mode: Literal["layer_pipelined", "weight_streaming"] = field(
        "layer_pipelined: every weight resident in SRAM, layers on their own regions across "
        "wafers; weight_streaming: weights streamed layer by layer from MemoryX",
        gt=None,
    )
    allreduce_algo: Literal["two_level", "tree", "ring", "pipeline"] = field(
        "reduction along a line of PEs: two_level (K=2 tree, WaferLLM MeshGEMV), tree (binary), "
        "ring (folded, software relays), pipeline (chain, Cerebras' default GEMV)",
        gt=None,
    )
    region_cols: int = field(
        "PEs across one decoder layer's region (0: the compiler chooses)", gt=None, ge=0
    )
    region_rows: int = field(
        "PEs down one decoder layer's region (0: the compiler chooses)", gt=None, ge=0
    )
    micro_batch: int = field(
        "sequences per micro-batch flowing down the layer pipeline (0: the compiler chooses)",
        gt=None,
        ge=0,
    )
    max_simulated_micro_batches: int = field(
        "micro-batches simulated through the pipeline; above this the period is extrapolated "
        "from their steady departures (simulator fidelity, not hardware)",
        gt=None,
        ge=2,
    )


class WaferSystem(Section):
    io_bw_bytes_per_s: float = field(
        "one system's off-wafer I/O (all its Ethernet ports), per direction", unit="B/s"
    )
    wafer_link_latency_s: float = field(
        "one wafer-to-wafer boundary: Ethernet, switch and receive, excluding serialisation",
        unit="s",
    )
    memoryx_bw_bytes_per_s: float = field(
        "weights streamed from MemoryX into one system (weight-streaming mode)", unit="B/s"
    )
    memoryx_latency_s: float = field(
        "first byte of a layer's weights from MemoryX, per SwarmX level", unit="s"
    )
    memoryx_bytes: float = field("MemoryX capacity (weight-streaming mode)", unit="B")
    max_wafers: int = field("largest cluster (systems) the interconnect supports")


class WaferParams(ArchParams):
    wafer: WaferChip
    pe: WaferPe
    fabric: WaferFabric
    mapping: WaferMapping
    system: WaferSystem
