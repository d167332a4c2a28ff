"""Parameter schema of the h100-like family (values live in arch_configs/h100-like.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from archsim.config.arch import ArchParams, Section, field


class GpuChip(Section):
    sms: int = field("streaming multiprocessors enabled")
    boost_clock_hz: float = field(
        "highest SM clock (the power limit may hold a kernel below it: see power)", unit="Hz"
    )
    max_threads_per_sm: int = field("resident threads per SM (occupancy limit)")
    max_ctas_per_sm: int = field("resident thread blocks per SM (occupancy limit)")
    fp32_lanes_per_sm: int = field("FP32 results per SM per clock (CUDA cores)")
    tensor_flops_per_clk_per_sm_bf16: float = field("dense bf16/fp16 tensor FLOP per SM clock")
    tensor_flops_per_clk_per_sm_fp8: float = field(
        "dense fp8 tensor FLOP per SM clock (0: no fp8 tensor cores)", gt=None, ge=0
    )
    tensor_ops_per_clk_per_sm_int8: float = field(
        "dense int8 tensor OP per SM clock (0: no int8 tensor cores)", gt=None, ge=0
    )
    mma_m_granularity: int = field(
        "rows of the smallest tensor-core tile one instruction computes (wgmma m64, mma.sync "
        "m16): a decode attention tile is padded to it",
        unit="rows",
    )
    async_mma: bool = field(
        "asynchronous warpgroup MMA fed by TMA (Hopper wgmma, Blackwell tcgen05); "
        "FlashAttention-3-class kernels need it",
        gt=None,
    )
    tma_multicast: bool = field(
        "TMA multicast of a GEMM operand to the CTAs of a cluster (halves the B-panel L2 "
        "traffic of large-m GEMMs)",
        gt=None,
    )
    mma_efficiency: float = field(
        "fraction of the bf16/fp16 tensor-core peak a GEMM main loop sustains per clock "
        "(bubbles, epilogue, operand delivery)",
        le=1,
    )
    mma_efficiency_fp8: float = field(
        "fraction of the fp8 tensor-core peak a GEMM main loop sustains per clock (k32 wgmma "
        "halves the main loop per byte staged, so delivery and epilogue weigh more)",
        le=1,
    )
    mma_efficiency_int8: float = field(
        "fraction of the int8 tensor-core peak a GEMM main loop sustains per clock", le=1
    )
    fa3_mma_efficiency: float = field(
        "fraction of tensor-core peak the asynchronous FlashAttention-3-class main loop "
        "sustains (softmax overlapped with the MMAs by warpgroup ping-pong)",
        le=1,
    )
    fa2_mma_efficiency: float = field(
        "fraction of tensor-core peak the synchronous FlashAttention-2 main loop sustains",
        le=1,
    )


class GpuMemory(Section):
    hbm_bytes: float = field("HBM capacity", unit="B")
    hbm_usable_fraction: float = field(
        "share of HBM a serving engine can fill with weights, KV and activations", le=1
    )
    hbm_peak_bw_bytes_per_s: float = field("HBM peak bandwidth (datasheet)", unit="B/s")
    hbm_bw_bytes_per_s: float = field("HBM bandwidth large streams achieve", unit="B/s")
    per_sm_bw_bytes_per_s: float = field(
        "HBM bandwidth one SM can pull (its loads in flight / loaded latency)", unit="B/s"
    )
    l2_bytes: float = field("L2 cache capacity", unit="B")
    l2_bw_bytes_per_clk: float = field("L2 to SM bandwidth per SM clock, whole chip", unit="B/clk")
    per_sm_l2_bw_bytes_per_s: float = field(
        "L2 bandwidth one SM can pull for an elementwise kernel (loads in flight / L2 latency)",
        unit="B/s",
    )
    strided_l2_bw_bytes_per_s: float = field(
        "bandwidth of a non-vectorised elementwise kernel (strided views) served from L2",
        unit="B/s",
    )
    strided_hbm_bw_bytes_per_s: float = field(
        "bandwidth of a non-vectorised elementwise kernel (strided views) served from HBM",
        unit="B/s",
    )
    row_round_trip_s: float = field(
        "one dependent load of a row-reduction kernel's walk (issue, L2 round trip, reduce "
        "step); each thread does one per vector it loads in a pass",
        unit="s",
    )
    row_reduce_s: float = field(
        "block-wide reduction that ends each pass of a row-reduction kernel", unit="s"
    )


class GpuKernel(Section):
    decode_cuda_graphs: bool = field(
        "decode steps are replayed as CUDA graphs (no host launch cost)", gt=None
    )
    prefill_cuda_graphs: bool = field(
        "prefill steps are replayed as CUDA graphs (else launched eagerly from the host)",
        gt=None,
    )
    graph_launch_gap_s: float = field(
        "GPU-side gap per kernel inside a CUDA graph (tiny kernel back to back)", unit="s"
    )
    eager_launch_s: float = field("host time to launch one kernel from PyTorch eager", unit="s")
    eager_gemm_launch_s: float = field(
        "host time to dispatch one torch.matmul (cuBLAS heuristic lookup + launch) eagerly",
        unit="s",
    )
    gemm_fixed_s: float = field("GEMM prologue (first TMA loads) + epilogue per kernel", unit="s")
    elementwise_fixed_s: float = field(
        "first-load latency + tail of a bandwidth-bound kernel", unit="s"
    )
    attention_fixed_s: float = field(
        "per-kernel prologue/epilogue of an attention kernel", unit="s"
    )
    attention_kernel: Literal["fa3", "fa2"] = Field(
        ...,
        description="prefill attention kernel: fa3 (asynchronous, needs chip.async_mma) or fa2",
    )
    attention_cta_fixed_s: float = field(
        "per-CTA cost of a FlashAttention prefill CTA (Q load, first K/V fill, O store)", unit="s"
    )
    overlap_exponent: float = field(
        "p in (compute^p + memory^p)^(1/p): how incompletely a kernel overlaps its tensor work "
        "and its memory traffic near the ridge"
    )
    max_split_k: int = field("largest split-K factor the GEMM library uses")
    stream_k: bool = field(
        "the GEMM library may run a data-parallel + stream-K kernel (the last partial wave's "
        "iterations shared by all SMs)",
        gt=None,
    )
    gemm_tile_k: int = field("K depth of one GEMM main-loop stage", unit="elements")
    attention_block: int = field("FlashAttention query/key block size", unit="tokens")
    max_kv_splits: int = field("largest split-KV factor of decode attention")
    norm_kernels: int = field(
        "kernels one RMSNorm takes in the modelled software stack (the first walks the rows)"
    )
    activation_kernels: int = field(
        "kernels one SiLU*mul takes (1: fused silu_and_mul on contiguous rows; 2: PyTorch "
        "silu(gate) * up on strided chunks of the fused gate_up output)"
    )
    rmsnorm_threads: int = field("threads per CTA of the RMSNorm row kernel (one CTA per row)")
    rmsnorm_vector_bytes: int = field("bytes one thread loads per access in RMSNorm", unit="B")
    rmsnorm_passes: int = field("passes over its row the RMSNorm kernel makes (sum, scale)")
    layernorm_threads: int = field("threads per CTA of the LayerNorm row kernel")
    layernorm_vector_bytes: int = field("bytes one thread loads per access in LayerNorm", unit="B")
    layernorm_passes: int = field("passes over its row the LayerNorm kernel makes")
    softmax_warp_max_cols: int = field(
        "rows up to this many columns use the one-pass warp softmax (a row in registers)",
        unit="elements",
    )
    softmax_max_threads: int = field("largest block of the multi-pass (block) softmax kernel")
    softmax_vector_bytes: int = field("bytes one thread loads per access in softmax", unit="B")
    softmax_passes: int = field("passes over its row the block softmax makes (max, sum, write)")
    rmsnorm_fp32_ops: int = field("FP32 instructions per element of RMSNorm", gt=None, ge=0)
    layernorm_fp32_ops: int = field("FP32 instructions per element of LayerNorm", gt=None, ge=0)
    softmax_fp32_ops: int = field(
        "FP32 instructions per element of softmax (two exps among them)", gt=None, ge=0
    )
    gelu_fp32_ops: int = field("FP32 instructions per element of tanh-GELU", gt=None, ge=0)
    rope_kernels: int = field("kernels the rotary embedding of q and k takes")
    kv_write_kernels: int = field("kernels that append the new K and V to the cache")


class GpuLinks(Section):
    scale_up_domain: int = field(
        "GPUs on one NVLink domain (8 HGX, 72 NVL72, 576 a two-level NVLink fabric); "
        "collectives across domains pay the scale-out network"
    )
    max_tensor_parallel: int = field(
        "largest tensor parallelism the planner uses (0: the scale-up domain); above the "
        "domain every all-reduce is hierarchical (NVLink inside, scale-out links across)",
        gt=None,
        ge=0,
    )
    nvlink_bw_bytes_per_s: float = field(
        "NVLink bandwidth per GPU per direction, achieved", unit="B/s"
    )
    nccl_channels: int = field(
        "ring channels NCCL's topology search gives one all-reduce (one CTA each); the bus "
        "bandwidth is shared evenly between them"
    )
    nccl_ll_base_s: float = field("fixed cost of a ring all-reduce, LL protocol", unit="s")
    nccl_ll128_base_s: float = field("fixed cost of a ring all-reduce, LL128 protocol", unit="s")
    nccl_simple_base_s: float = field("fixed cost of a ring all-reduce, Simple protocol", unit="s")
    nccl_ll_hop_s: float = field("latency of each of the 2(n-1) ring steps, LL", unit="s")
    nccl_ll128_hop_s: float = field("latency of each of the 2(n-1) ring steps, LL128", unit="s")
    nccl_simple_hop_s: float = field("latency of each of the 2(n-1) ring steps, Simple", unit="s")
    nccl_ll_efficiency: float = field(
        "share of the bus bandwidth LL carries (8-byte stores of 4 data bytes + a flag)", le=1
    )
    nccl_ll128_efficiency: float = field(
        "share of the bus bandwidth LL128 carries (120 data bytes per 128-byte line)", le=1
    )
    nccl_ll_max_bw_bytes_per_s: float = field(
        "cap on LL's bus bandwidth over all channels (NCCL llMaxBw)", unit="B/s"
    )
    nccl_ll128_channel_bw_bytes_per_s: float = field(
        "cap on LL128's bus bandwidth per channel (NCCL perChMaxRingLL128Bw)", unit="B/s"
    )
    nccl_ll128_enabled: bool = field(
        "LL128 is allowed (NCCL enables it over NVLink, not over PCIe)", gt=None
    )
    nccl_nvls_enabled: bool = field(
        "NCCL may run an all-reduce as NVLS (NVLink SHARP: the NVSwitch reduces; latency "
        "independent of the ranks)",
        gt=None,
    )
    nccl_nvls_latency_s: float = field("latency of an NVLS all-reduce", unit="s")
    nccl_nvls_efficiency: float = field(
        "algorithm bandwidth of NVLS as a share of the NVLink bus bandwidth", le=1
    )
    nccl_threads: int = field("threads per channel of LL and Simple kernels")
    nccl_ll128_threads: int = field("threads per channel of LL128 kernels")
    nccl_ll_bytes_per_thread: float = field(
        "LL channel threshold: bytes per thread per rank below which NCCL drops a channel",
        unit="B",
    )
    nccl_ll128_bytes_per_thread: float = field(
        "LL128 channel threshold: bytes per thread below which NCCL drops a channel", unit="B"
    )
    nccl_simple_bytes_per_thread: float = field(
        "Simple channel threshold: bytes per thread below which NCCL drops a channel", unit="B"
    )
    scaleout_bw_bytes_per_s: float = field(
        "scale-out network bandwidth per GPU (its NIC) between NVLink domains", unit="B/s"
    )
    scaleout_latency_s: float = field(
        "one message between domains at the endpoints (NIC, RDMA, software), switches excluded",
        unit="s",
    )
    scaleout_switch_hops: int = field(
        "switches a message between domains crosses (1: a rail's leaf; 3: leaf-spine-leaf)",
        gt=None,
        ge=0,
    )
    scaleout_switch_latency_s: float = field(
        "port-to-port latency of one scale-out switch", unit="s", gt=None, ge=0
    )


class GpuPower(Section):
    tdp_w: float = field(
        "board power limit: the SM clock of a kernel is the highest that keeps the filtered "
        "board power under it",
        unit="W",
    )
    idle_w: float = field("board power with the SMs idle (static and idle power)", unit="W")
    hbm_energy_j_per_byte: float = field("energy of one byte moved to or from HBM", unit="J/B")
    sm_dynamic_w: float = field(
        "dynamic power at the boost clock of SMs running a kernel without tensor work", unit="W"
    )
    tensor_dynamic_w: float = field(
        "extra dynamic power at the boost clock of tensor cores busy all the time", unit="W"
    )
    clock_exponent: float = field(
        "dynamic power scales as (clock / boost clock) ** this (f x V^2 with V rising with f)"
    )
    time_constant_s: float = field(
        "first-order time constant of the board power the limiter holds under the TDP",
        unit="s",
    )
    start_from_idle: bool = field(
        "the stream starts on an idle GPU (a benchmark after a pause); false: it is one of a "
        "train of identical back-to-back steps (serving), simulated at its periodic steady state",
        gt=None,
    )


class GpuParams(ArchParams):
    chip: GpuChip
    memory: GpuMemory
    kernel: GpuKernel
    links: GpuLinks
    power: GpuPower
