"""The serving layer: a request-level simulation that turns any family's cycle model into
TTFT, TPOT, throughput and goodput (``archsim serve``), with KV-cache tiers (``archsim
kv-tiers``), prefill/decode disaggregation and speculative decoding. See docs/serving.md."""

from archsim.serve.run import Machine, ServeConfig, Server, find_max_rate, serve
from archsim.serve.sim import SchedulerConfig, SpecConfig
from archsim.serve.workload import Lengths, Request, load_trace, synthetic

__all__ = [
    "Lengths",
    "Machine",
    "Request",
    "SchedulerConfig",
    "ServeConfig",
    "Server",
    "SpecConfig",
    "find_max_rate",
    "load_trace",
    "serve",
    "synthetic",
]
