"""Parameter schema of the groq-like family (values live in arch_configs/groq-like.yaml).

Sections follow the parts of the machine: the chip and its streams, MEM slices, the VXM, the
MXM planes, the SXM, the compiler's placement assumptions (how far operands travel), the
chip-to-chip links and the system (nodes, racks, dragonfly groups).
"""

from __future__ import annotations

from archsim.config.arch import ArchParams, Section, field


class TspChip(Section):
    clock_hz: float = field("core clock", unit="Hz")
    superlanes: int = field("superlanes (rows of 16 lanes) architecturally visible")
    lanes_per_superlane: int = field("lanes per superlane", unit="lanes")
    vector_bytes: int = field("bytes of one stream vector (1 B per lane)", unit="B")
    superlane_skew_cycles: int = field(
        "cycles between superlane s and s+1 executing the same instruction", unit="cycles"
    )
    streams_per_direction: int = field(
        "stream registers flowing east (and as many west); informational: the limit is not "
        "modelled (docs/arch/groq-like.md)"
    )
    stream_hop_slices: int = field("functional slices crossed per stream-register stage")
    stream_hop_cycles: int = field("cycles per stream-register stage", unit="cycles")
    sram_bytes: float = field("on-chip SRAM (all MEM slices), the only memory", unit="B")
    tdp_w: float = field("chip power (informational: no output uses it yet)", unit="W")


class TspMem(Section):
    slices: int = field("MEM slices (both hemispheres)")
    code_slices: int = field("MEM slices reserved for instructions", gt=None, ge=0)
    reads_per_slice_per_cycle: int = field("320-B vector reads one slice serves per cycle")
    writes_per_slice_per_cycle: int = field("320-B vector writes one slice accepts per cycle")
    read_latency_cycles: int = field(
        "Read issue -> vector on the slice's stream register", unit="cycles", gt=None, ge=0
    )
    write_latency_cycles: int = field(
        "vector on the stream register -> stored", unit="cycles", gt=None, ge=0
    )
    marketed_bw_bytes_per_s: float = field("vendor SRAM bandwidth (reported only)", unit="B/s")


class TspVxm(Section):
    alus_per_lane: int = field("vector ALUs per lane (each takes one vector op per cycle)")
    int_latency_cycles: int = field("integer add/compare/mask latency", unit="cycles")
    fp_latency_cycles: int = field("fp add/mul latency", unit="cycles")
    cast_latency_cycles: int = field("type conversion latency", unit="cycles")
    transcendental_latency_cycles: int = field("exp/tanh/rsqrt/reciprocal latency", unit="cycles")


class TspMxm(Section):
    planes: int = field("MXM planes per chip")
    plane_dim: int = field("side of one square MAC plane", unit="MACs")
    weight_streams_per_plane: int = field("streams that install weights into one plane")
    latency_cycles: int = field("activation vector in -> results leaving the plane", unit="cycles")
    buffer_swap_cycles: int = field(
        "install of a tile pre-loaded into the LW buffer", unit="cycles", gt=None, ge=0
    )
    int8_rate_fraction: float = field("int8 activation rows per cycle per plane", le=1)
    fp8_rate_fraction: float = field(
        "fp8 rows per cycle per plane (0: no fp8 mode)", gt=None, ge=0, le=1
    )
    fp16_rate_fraction: float = field("fp16/bf16 rows per cycle per plane", le=1)


class TspSxm(Section):
    latency_cycles: int = field("shift/permute latency", unit="cycles")


class TspPlace(Section):
    """Where the compiler places operands: functional slices a vector crosses."""

    weight_feed_slices: int = field("MEM slice of the first weight vectors -> MXM edge")
    act_feed_slices: int = field("MEM slice of the activation vectors -> MXM edge")
    result_slices: int = field("MXM edge -> MEM slice its results are written to")
    vxm_operand_slices: int = field("MEM slice of a VXM/SXM operand -> VXM (and back)")
    mxm_to_vxm_slices: int = field("MXM result slices -> VXM at the centre")
    c2c_stream_slices: int = field("MEM slice <-> C2C block, on each chip")


class TspLinks(Section):
    link_bw_bytes_per_s: float = field("one C2C link, per direction", unit="B/s")
    link_latency_s: float = field(
        "one link hop: SerDes, cable and receive alignment, excluding serialisation", unit="s"
    )
    links_per_chip: int = field("C2C links per chip")
    links_per_port: int = field("links that join one port to its peer (bonded)")
    local_ports: int = field("ports to the other chips of the node (fully connected)")
    global_ports: int = field("ports to other nodes (dragonfly)")
    receive_cycles: int = field("Receive: link -> stream register", unit="cycles", gt=None, ge=0)
    forward_cycles: int = field("turn-around in an intermediate chip", unit="cycles", gt=None, ge=0)


class TspSystem(Section):
    chips_per_node: int = field("chips in one node, fully connected")
    nodes_per_rack: int = field("nodes in one rack")
    nodes_per_group: int = field("nodes of one dragonfly group (all pairs joined directly)")
    hops_in_node: int = field("link hops between two chips of one node")
    hops_in_group: int = field("link hops between nodes of one group")
    hops_between_groups: int = field("link hops between nodes of different groups")
    max_chips: int = field("largest system the network supports")


class TspCompiler(Section):
    """How much of the program the simulator runs (not hardware: fidelity against speed), and
    the compiler's provisioning of data-dependent work."""

    max_simulated_micro_batches: int = field(
        "micro-batches simulated through the pipeline; above this the round period is "
        "extrapolated from their steady departures (at least 2)",
        gt=None,
        ge=2,
    )
    expert_capacity_factor: float = field(
        "MoE: rows the static schedule provisions for each routed expert, as a multiple of "
        "the mean (tokens x top-k / experts, at most the tokens); every expert of a slice "
        "is installed in the MXM for every micro-batch (the schedule cannot know which "
        "experts the router picks)"
    )


class TspParams(ArchParams):
    chip: TspChip
    mem: TspMem
    vxm: TspVxm
    mxm: TspMxm
    sxm: TspSxm
    place: TspPlace
    links: TspLinks
    system: TspSystem
    compiler: TspCompiler
