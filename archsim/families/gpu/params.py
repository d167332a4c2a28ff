"""Parameter schema of the h100-like family (values live in arch_configs/h100-like.yaml)."""

from __future__ import annotations

from archsim.config.arch import ArchParams, Section, field


class GpuChip(Section):
    sms: int = field("streaming multiprocessors enabled")
    boost_clock_hz: float = field("SM clock of short and memory-bound kernels", unit="Hz")
    sustained_clock_hz: float = field(
        "SM clock the power cap settles at under long tensor-core-saturated kernels", unit="Hz"
    )
    boost_window_s: float = field(
        "a GEMM whose tensor work lasts longer than this runs at the sustained clock", unit="s"
    )
    tensor_flops_per_clk_per_sm_bf16: float = field("dense bf16/fp16 tensor FLOP per SM clock")
    tensor_flops_per_clk_per_sm_fp8: float = field("dense fp8 tensor FLOP per SM clock")
    tensor_ops_per_clk_per_sm_int8: float = field("dense int8 tensor OP per SM clock")
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
    attention_mma_efficiency: float = field(
        "fraction of tensor-core peak a FlashAttention main loop sustains (softmax shares the SM)",
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
    norm_row_bw_bytes_per_s: float = field(
        "rate at which one CTA of a row-reduction kernel (RMSNorm) walks its row, both passes",
        unit="B/s",
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
    attention_cta_fixed_s: float = field(
        "per-CTA cost of a FlashAttention prefill CTA (Q load, first K/V fill, O store)", unit="s"
    )
    overlap_exponent: float = field(
        "p in (compute^p + memory^p)^(1/p): how incompletely a kernel overlaps its tensor work "
        "and its memory traffic near the ridge"
    )
    max_split_k: int = field("largest split-K factor the GEMM library uses")
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
    rope_kernels: int = field("kernels the rotary embedding of q and k takes")
    kv_write_kernels: int = field("kernels that append the new K and V to the cache")


class GpuLinks(Section):
    scale_up_domain: int = field("GPUs on one NVLink domain (tensor parallelism limit)")
    nvlink_bw_bytes_per_s: float = field(
        "NVLink bandwidth per GPU per direction, achieved", unit="B/s"
    )
    allreduce_base_s: float = field(
        "fixed cost of one ring all-reduce, low-latency (LL) protocol", unit="s"
    )
    allreduce_hop_s: float = field(
        "latency of each of the 2(n-1) ring steps, LL protocol", unit="s"
    )
    allreduce_ll_bw_fraction: float = field(
        "share of the link bandwidth the LL protocol carries (8-byte stores with a flag)", le=1
    )
    allreduce_simple_base_s: float = field(
        "fixed cost of one ring all-reduce, Simple protocol", unit="s"
    )
    allreduce_simple_hop_s: float = field(
        "latency of each of the 2(n-1) ring steps, Simple protocol", unit="s"
    )
    scaleout_bw_bytes_per_s: float = field("network bandwidth per GPU between nodes", unit="B/s")
    scaleout_latency_s: float = field("one message between nodes", unit="s")


class GpuPower(Section):
    tdp_w: float = field("board power limit (informational: no output uses it yet)", unit="W")


class GpuParams(ArchParams):
    chip: GpuChip
    memory: GpuMemory
    kernel: GpuKernel
    links: GpuLinks
    power: GpuPower
