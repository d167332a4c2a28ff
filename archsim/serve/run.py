"""``archsim serve``: size the deployments, build their step models, run the requests
through the simulation and report; with the comparisons each feature calls for (the run
without KV reuse, without speculation, colocated instead of disaggregated) and the search
for the largest arrival rate that meets the SLO."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from archsim.core.errors import ArchsimError
from archsim.graph.model import ModelSpec, load_model
from archsim.graph.scenario import DTYPE_BYTES, Precision
from archsim.serve.kv import DEVICE
from archsim.serve.metrics import summarize
from archsim.serve.sim import Job, SchedulerConfig, Simulation, SpecConfig, instance_factory
from archsim.serve.steps import Deployment, FamilySteps, plan_deployment
from archsim.serve.tiers import Hierarchy, Link, load_tiers
from archsim.serve.workload import Request

DEFAULT_LINK_TIERS = "hgx-h100"  # where --kv-link names are looked up without --kv-tiers


@dataclass(frozen=True)
class Machine:
    """Instances of one deployment: arch preset, chips per instance (None: auto)."""

    arch: str
    chips: int | None = None
    instances: int = 1
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ArchsimError(f"instances must be at least 1, got {self.instances}")
        if self.chips is not None and self.chips < 1:
            raise ArchsimError(f"chips must be at least 1, got {self.chips}")


@dataclass(frozen=True)
class ServeConfig:
    model: str | ModelSpec
    machine: Machine  # colocated instances (the baseline when disaggregated)
    prefill: Machine | None = None  # disaggregation: prefill instances ...
    decode: Machine | None = None  # ... and decode instances
    precision: str = "bf16"
    kv_precision: str | None = None  # overrides the KV dtype of --precision
    kv_compression: float = 1.0
    sched: SchedulerConfig = field(default_factory=SchedulerConfig)
    spec: SpecConfig | None = None
    draft: str | None = None  # a model name, or "self"
    draft_layers: int | None = None  # self-speculation: the target's first N layers
    tiers: str | None = None
    kv_idle_s: float | None = None
    reuse: bool = True  # keep finished context and shared prefixes for later requests
    kv_link: str = "ib-ndr"
    resolution: float = 1.0  # grid points per octave x this; 0: a simulation per step shape
    sim_layers: int | None = None  # simulate N layers and scale (None: the whole model)
    compare: bool = True
    size_batch: int = 32  # chips auto: hold the KV of this many mean-length requests

    @property
    def disaggregated(self) -> bool:
        return self.prefill is not None or self.decode is not None


def parse_precision(precision: str, kv: str | None) -> Precision:
    p = Precision.parse(precision)
    if kv is None:
        return p
    if kv not in DTYPE_BYTES:
        raise ArchsimError(f"--kv-precision must be one of {', '.join(DTYPE_BYTES)}, got {kv!r}")
    return Precision(p.weights, p.activations, kv)


class Server:
    """Deployments and step models, built once and shared by every run of a session
    (comparisons and the rate search reuse the memoised simulations)."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.spec = cfg.model if isinstance(cfg.model, ModelSpec) else load_model(cfg.model)
        self.precision = parse_precision(cfg.precision, cfg.kv_precision)
        self.hierarchy: Hierarchy | None = load_tiers(cfg.tiers) if cfg.tiers else None
        self._deps: dict[tuple, tuple[Deployment, FamilySteps]] = {}
        self.draft_dep: Deployment | None = None
        self.plan_s = 0.0
        if cfg.size_batch < 1:
            raise ArchsimError(f"--size-batch must be at least 1, got {cfg.size_batch}")
        if cfg.sched.preempt == "swap" and self.hierarchy is None:
            raise ArchsimError("--preempt swap needs --kv-tiers (the tier it swaps to)")
        if cfg.disaggregated and (cfg.prefill is None or cfg.decode is None):
            raise ArchsimError("disaggregation needs both --prefill-arch and --decode-arch")
        if cfg.spec is not None and cfg.draft is None:
            raise ArchsimError("--spec-k needs --draft MODEL or --draft self")
        if cfg.draft == "self" and not cfg.draft_layers:
            raise ArchsimError("--draft self needs --draft-layers N")
        if cfg.draft_layers is not None and not 0 < cfg.draft_layers < self.spec.num_layers:
            raise ArchsimError(
                f"--draft-layers must be between 1 and {self.spec.num_layers - 1} "
                f"for {self.spec.name}, got {cfg.draft_layers}"
            )

    def link(self) -> Link:
        h = self.hierarchy or load_tiers(DEFAULT_LINK_TIERS)
        return h.link(self.cfg.kv_link)

    def deployment(
        self, m: Machine, requests: list[Request], model: ModelSpec | None = None
    ) -> tuple[Deployment, FamilySteps]:
        model = model or self.spec
        cfg = self.cfg
        mean_len = float(np.mean([r.prompt + r.output for r in requests]))
        pool = int(min(cfg.size_batch, cfg.sched.max_batch) * mean_len)
        key = (m.arch, m.chips, m.overrides, model.name, pool)
        if key not in self._deps:
            t0 = time.perf_counter()
            dep = plan_deployment(
                m.arch, model, self.precision, chips=m.chips, overrides=m.overrides,
                kv_compression=cfg.kv_compression if model is self.spec else 1.0,
                pool_tokens=pool, token_budget=cfg.sched.token_budget,
            )  # fmt: skip
            self._deps[key] = (dep, self._steps(dep))
            self.plan_s += time.perf_counter() - t0
        return self._deps[key]

    def _steps(self, dep: Deployment) -> FamilySteps:
        r = self.cfg.resolution
        if r < 0 or not math.isfinite(r):
            raise ArchsimError(f"--resolution must be >= 0, got {r}")
        grid = dict(per_octave=2.0 * r, token_per_octave=4.0 * r, ctx_per_octave=1.0 * r)
        n = self.cfg.sim_layers
        if n is None or n >= dep.model.num_layers:
            return FamilySteps(dep, **grid)
        if n < 1:
            raise ArchsimError(f"--sim-layers must be 'all' or a positive integer, got {n}")
        return FamilySteps(dep, layers=n, scale=layer_scale(dep, n, self.cfg.sched), **grid)

    # ---- one run ----------------------------------------------------------------------------
    def simulate(
        self,
        requests: list[Request],
        *,
        reuse: bool | None = None,
        spec: SpecConfig | None | str = "cfg",
        colocated: bool = False,
    ) -> tuple[Simulation, list[Job]]:
        cfg = self.cfg
        longest = max(r.prompt + r.output for r in requests)
        if longest > self.spec.max_position_embeddings:
            raise ArchsimError(
                f"a request of {longest} tokens (prompt + output) exceeds {self.spec.name}'s "
                f"max_position_embeddings {self.spec.max_position_embeddings}"
            )
        spec_cfg = cfg.spec if spec == "cfg" else spec
        sim = Simulation(requests, cfg.sched, spec_cfg, handoff_link=None)
        reuse = cfg.reuse if reuse is None else reuse
        if cfg.disaggregated and not colocated:
            sim.handoff_link = self.link()
            for _ in range(cfg.prefill.instances):
                sim.add(self._factory(cfg.prefill, requests, reuse, spec_cfg), "prefill")
            for _ in range(cfg.decode.instances):
                sim.add(self._factory(cfg.decode, requests, reuse, spec_cfg), "decode")
        else:
            for _ in range(cfg.machine.instances):
                sim.add(self._factory(cfg.machine, requests, reuse, spec_cfg), "both")
        return sim, sim.run()

    def _factory(self, m: Machine, requests: list[Request], reuse: bool, spec_cfg):
        dep, steps = self.deployment(m, requests)
        draft, fraction, cap = None, 0.0, dep.kv_capacity_tokens
        if spec_cfg is not None:
            if self.cfg.draft == "self":
                fraction = self.cfg.draft_layers / dep.model.num_layers
            else:
                # the draft shares the target's chips, split the same way (vLLM's default
                # draft tensor parallelism is the target's)
                ddep, draft = self.deployment(
                    Machine(m.arch, dep.chips, 1, m.overrides), requests,
                    load_model(self.cfg.draft),
                )  # fmt: skip
                cap = shared_capacity(dep, ddep)
                self.draft_dep = ddep

        return instance_factory(
            steps, cap, dep.kv_bytes_per_token, hierarchy=self.hierarchy,
            device_idle_s=self.cfg.kv_idle_s, caching=reuse, draft=draft,
            draft_fraction=fraction,
        )  # fmt: skip


def shared_capacity(target: Deployment, draft: Deployment) -> int:
    """KV tokens of the target when the draft model shares its chips (same arch, no more
    chips than the target): the draft's weights come out of the pool and every token also
    stores the draft's KV."""
    if draft.arch != target.arch or draft.chips > target.chips:
        return target.kv_capacity_tokens
    free = target.kv_capacity_tokens * target.kv_bytes_per_token - draft.weight_bytes
    per_token = target.kv_bytes_per_token + draft.kv_bytes_per_token
    if free <= per_token:
        raise ArchsimError(
            f"the draft model {draft.model.name} leaves no KV room for {target.model.name} "
            f"on {target.chips} chip(s) of {target.arch}; give it more chips (--chips)"
        )
    return int(free // per_token)


def layer_scale(dep: Deployment, n: int, sched: SchedulerConfig) -> dict[str, float]:
    """Per phase, the whole model's step over the N-layer one at a reference point (a decode
    at batch 1 and context 1024, a prefill of the token budget): the factor the N-layer
    simulations are scaled by (it carries the embedding and lm_head)."""
    from archsim.pipeline import simulate
    from archsim.serve.steps import step_parts

    out = {}
    for phase, kw in (("decode", dict(batch=1, ctx=1024)),
                      ("prefill", dict(batch=1, seq=sched.token_budget))):  # fmt: skip
        parts = []
        for layers in (None, n):
            r = simulate(dep.arch, dep.model, phase=phase, layers=layers, chips=dep.chips,
                         precision=dep.precision, overrides=list(dep.overrides), **kw)  # fmt: skip
            parts.append(step_parts(r)[0])
        out[phase] = parts[0] / parts[1]
    return out


# ---- reports ----------------------------------------------------------------------------
def kv_report(dep: Deployment, sim: Simulation, requests: list[Request], max_batch: int):
    """The KV cache of the instances that decode: bytes per token, the tokens they hold
    (less when a draft model shares the chips), the batch that fits at the workload's mean
    request length, and how full it got."""
    mean_len = float(np.mean([r.prompt + r.output for r in requests]))
    insts = sim.decoders or sim.instances
    cap = insts[0].kv.total_blocks * insts[0].kv.block_tokens
    used = max(i.kv.peak_used_blocks / max(i.kv.total_blocks, 1) for i in insts)
    return {
        "dtype": dep.precision.kv,
        "compression": dep.kv_compression,
        "bytes_per_token": dep.kv_bytes_per_token,
        "capacity_tokens": cap,
        "capacity_bytes": cap * dep.kv_bytes_per_token,
        "admissible_batch": min(max_batch, int(cap // mean_len)),
        "peak_used_fraction": used,
        "swaps": sum(i.swaps for i in insts),
        "swap_bytes": sum(i.swap_bytes for i in insts),
    }


def reuse_report(sim: Simulation, jobs: list[Job]) -> dict[str, Any]:
    insts = sim.instances + sim.decoders
    names = list(insts[0].kv.stats)
    eligible = sum(1 for j in jobs if j.req.conversation is not None or j.req.prefix is not None)
    tiers = {}
    for name in names:
        st = [i.kv.stats[name] for i in insts]
        lookups = sum(s.lookups for s in st)
        reused = sum(s.lookups - s.recomputed for s in st)
        tiers[name] = {
            "lookups": lookups,
            "hit_rate": reused / eligible if eligible else 0.0,
            "hit_tokens": sum(s.hit_tokens for s in st),
            "loads": sum(s.loads for s in st),
            "recomputed": sum(s.recomputed for s in st),
            "bytes_read": sum(s.bytes_read for s in st),
            "bytes_written": sum(s.bytes_written for s in st),
            "dropped": sum(s.dropped for s in st),
        }
    return {
        "eligible_requests": eligible,
        "reused_tokens": sum(j.reused for j in jobs),
        "prompt_tokens": sum(j.req.prompt for j in jobs),
        "tiers": tiers,
    }


def serve(
    cfg: ServeConfig, requests: list[Request], server: Server | None = None
) -> tuple[dict[str, Any], list[Job]]:
    """Run the requests: (the report, a plain dict as ``--json`` prints it; the finished
    requests)."""
    from archsim.core.version import __version__
    from archsim.result import git_revision

    t0 = time.perf_counter()
    server = server or Server(cfg)
    sim, jobs = server.simulate(requests)
    sched = cfg.sched
    report: dict[str, Any] = {
        "archsim_version": __version__,
        "git_revision": git_revision(),
        "model": server.spec.name,
        "policy": sched.policy,
        "max_batch": sched.max_batch,
        "token_budget": sched.token_budget,
        "preempt": sched.preempt,
        **summarize(jobs, sched.slo_ttft_s, sched.slo_tpot_s),
    }
    report["config"] = config_dict(cfg)
    report["workload"] = workload_summary(requests)
    main_m = cfg.decode if cfg.disaggregated else cfg.machine
    dep, steps = server.deployment(main_m, requests)
    report["deployment"] = _deployments(server, cfg, requests)
    report["kv"] = kv_report(dep, sim, requests, sched.max_batch)
    report["utilization"] = {
        f"{i.role}{i.idx}": i.busy_s / report["duration_s"] if report["duration_s"] else 0.0
        for i in sim.instances + sim.decoders
    }
    if any(r.conversation or r.prefix for r in requests):
        report["reuse"] = reuse_report(sim, jobs)
        if cfg.compare and cfg.reuse:
            _, base = server.simulate(requests, reuse=False)
            report["reuse"]["ttft_with_reuse_s"] = report["ttft_s"]
            report["reuse"]["ttft_without_reuse_s"] = summarize(base, None, None)["ttft_s"]
    if cfg.spec is not None:
        report["speculation"] = _speculation(server, cfg, requests, report)
    if cfg.disaggregated:
        report["disaggregation"] = _disaggregation(server, cfg, requests, sim, jobs)
    report["step_model"] = _step_model(server, sim, t0)
    return report, jobs


def config_dict(cfg: ServeConfig) -> dict[str, Any]:
    """The resolved serving configuration, as the report records it."""
    from dataclasses import asdict

    out = asdict(replace(cfg, model=cfg.model if isinstance(cfg.model, str) else cfg.model.name))
    return out


def workload_summary(requests: list[Request]) -> dict[str, Any]:
    arrivals = [r.arrival_s for r in requests]
    span = max(arrivals) - min(arrivals)
    return {
        "requests": len(requests),
        "rate_rps": (len(requests) - 1) / span if span > 0 else None,
        "prompt_tokens_mean": float(np.mean([r.prompt for r in requests])),
        "output_tokens_mean": float(np.mean([r.output for r in requests])),
        "conversations": len({r.conversation for r in requests if r.conversation}),
        "prefixes": len({r.prefix for r in requests if r.prefix}),
    }


def _deployments(server: Server, cfg: ServeConfig, requests: list[Request]) -> dict[str, Any]:
    if not cfg.disaggregated:
        d = server.deployment(cfg.machine, requests)[0].to_dict()
        return {**d, "instances": cfg.machine.instances}
    out = {}
    for role, m in (("prefill", cfg.prefill), ("decode", cfg.decode)):
        out[role] = {**server.deployment(m, requests)[0].to_dict(), "instances": m.instances}
    return out


def _speculation(server: Server, cfg: ServeConfig, requests, report) -> dict[str, Any]:
    out: dict[str, Any] = {
        "draft": cfg.draft,
        "draft_layers": cfg.draft_layers,
        "k": cfg.spec.k,
        "accept": cfg.spec.accept,
        "tokens_per_step": cfg.spec.tokens_per_step,
        # the target's KV per token is unchanged (rejected draft tokens are dropped); a
        # separate draft model stores its own KV beside it
        "draft_kv_bytes_per_token": server.draft_dep.kv_bytes_per_token
        if server.draft_dep is not None
        else 0.0,
    }
    if cfg.compare:
        _, base = server.simulate(requests, spec=None)
        b = summarize(base, cfg.sched.slo_ttft_s, cfg.sched.slo_tpot_s)
        out["tpot_without_s"] = b["tpot_s"]
        out["speedup_tpot"] = _ratio(b["tpot_s"]["mean"], report["tpot_s"]["mean"])
        out["speedup_e2e"] = _ratio(b["e2e_s"]["mean"], report["e2e_s"]["mean"])
    return out


def _disaggregation(server, cfg, requests, sim, jobs) -> dict[str, Any]:
    link = server.link()
    out: dict[str, Any] = {
        "link": cfg.kv_link,
        "link_bytes_per_s": link.bandwidth_bytes_per_s,
        "link_latency_s": link.latency_s,
        "handoff_bytes": sim.handoff_bytes,
        "handoff_s": {"mean": float(np.mean([j.handoff_s for j in jobs]))},
    }
    if cfg.compare:
        _, base = server.simulate(requests, colocated=True)
        b = summarize(base, cfg.sched.slo_ttft_s, cfg.sched.slo_tpot_s)
        dep = server.deployment(cfg.machine, requests)[0]
        out["colocated"] = {
            "arch": cfg.machine.arch,
            "chips": dep.chips * cfg.machine.instances,
            "instances": cfg.machine.instances,
            **{k: b[k] for k in ("ttft_s", "tpot_s", "e2e_s", "throughput", "slo")},
        }
    return out


def _step_model(server: Server, sim: Simulation, t0: float) -> dict[str, Any]:
    stats = [s.stats for _, s in server._deps.values()]
    return {
        "simulations": sum(s.simulations for s in stats),
        "simulation_s": sum(s.seconds for s in stats),
        "refused_grid_points": sum(s.refused for s in stats),
        "resolution": server.cfg.resolution,
        "sim_layers": server.cfg.sim_layers or "all",
        "events": sim.events,
        "wall_s": time.perf_counter() - t0,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def find_max_rate(
    cfg: ServeConfig,
    make_requests,
    attainment: float = 0.9,
    lo: float = 0.0,
    hi: float | None = None,
    tolerance: float = 0.02,
) -> dict[str, Any]:
    """The largest arrival rate whose run meets the SLO for ``attainment`` of its requests
    (DistServe's goodput): double a rate until it fails, then bisect to ``tolerance``
    (relative). ``make_requests(rate)`` gives the workload at a rate."""
    sched = cfg.sched
    if sched.slo_ttft_s is None and sched.slo_tpot_s is None:
        raise ArchsimError("--find-max-rate needs --slo-ttft and/or --slo-tpot")
    server = Server(replace(cfg, compare=False))
    probes: list[dict[str, float]] = []

    def ok(rate: float) -> bool:
        reqs = make_requests(rate)
        _, jobs = server.simulate(reqs)
        s = summarize(jobs, sched.slo_ttft_s, sched.slo_tpot_s)
        probes.append({"rate": rate, "attainment": s["slo"]["attainment"],
                       "goodput_rps": s["slo"]["goodput_rps"]})  # fmt: skip
        return s["slo"]["attainment"] >= attainment

    rate = hi or 1.0
    if ok(rate):
        lo = rate
        while len(probes) < 40:
            rate *= 2
            if not ok(rate):
                break
            lo = rate
        hi = rate
    else:
        hi = rate
    while hi - lo > tolerance * hi and len(probes) < 60:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return {"max_rate_rps": lo, "attainment_target": attainment, "probes": probes}


__all__ = ["DEVICE", "Machine", "ServeConfig", "Server", "find_max_rate", "serve"]
