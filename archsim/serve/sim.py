"""The request-level discrete-event simulation: serving instances with continuous batching,
a scheduler policy, KV admission and preemption, KV reuse across tiers, prefill/decode
disaggregation and speculative decoding.

One heap of events ordered by (time, sequence number), as SimPy orders its queue: request
arrivals, the end of an instance's step (or block of steps), a KV load or swap-in that
completes, a KV hand-off from a prefill instance that lands. An instance runs one step at a
time; at each step boundary its scheduler builds the next batch (continuous batching,
Orca/vLLM). A run of pure decode steps during which nothing can change the batch (nothing
admissible is waiting, no request finishes, the KV blocks suffice) is one event: its step
times come as one array from the step model, and an event aimed at the instance meanwhile
cuts the block at the first step boundary after it — so 10,000 requests cost tens of
thousands of events, not millions of steps.

Policies (``SchedulerConfig.policy``):

* ``fcfs``: vLLM V0 without chunked prefill — waiting prompts, first come first served,
  are prefilled whole in a step of their own (up to the token budget) before any decode.
* ``chunked``: Sarathi-Serve / vLLM V1 — every step carries all running decodes first,
  then prefill chunks (continuing prompts, then new ones in arrival order) up to the token
  budget.
* ``slo``: chunked, with the prefill share of each step cut so the step's predicted time
  stays within ``--slo-tpot``, and waiting prompts taken by TTFT deadline (arrival +
  ``--slo-ttft``), those that can no longer make it after those that can.

Preemption (KV blocks run out while decodes grow): the most recently admitted request
loses its blocks — ``recompute`` puts it back in the queue to prefill its prompt and the
tokens it already produced again; ``swap`` copies its KV to the hierarchy's swap tier and
back when blocks free up (vLLM's two modes).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from archsim.core.errors import ArchsimError
from archsim.serve.kv import DEVICE, Entry, KvMemory
from archsim.serve.tiers import Link
from archsim.serve.workload import Request

EPS = 1e-9
MAX_BLOCK_STEPS = 20_000  # decode steps fast-forwarded as one event at most


class Steps(Protocol):
    def decode_times(self, batch: int, ctx: np.ndarray) -> np.ndarray: ...

    def multi_token_times(self, batch: int, ctx: np.ndarray, q: int) -> np.ndarray: ...

    def step_time(self, decode: int, ctx_mean: float, q: int, chunks) -> float: ...

    def prefill_time(self, tokens: int) -> float: ...


@dataclass(frozen=True)
class SchedulerConfig:
    policy: str = "chunked"  # fcfs | chunked | slo
    max_batch: int = 256  # sequences in flight per instance (vLLM max_num_seqs)
    token_budget: int = 2048  # new tokens per step (vLLM max_num_batched_tokens)
    preempt: str = "recompute"  # recompute | swap
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    watermark: float = 0.01  # share of KV blocks a new admission must leave free (vLLM)

    def __post_init__(self) -> None:
        if self.policy not in ("fcfs", "chunked", "slo"):
            raise ArchsimError(f"unknown --policy {self.policy!r} (fcfs, chunked, slo)")
        if self.preempt not in ("recompute", "swap"):
            raise ArchsimError(f"unknown --preempt {self.preempt!r} (recompute, swap)")
        if self.max_batch < 1 or self.token_budget < 1:
            raise ArchsimError("--max-batch and --token-budget must be at least 1")


@dataclass(frozen=True)
class SpecConfig:
    """Speculative decoding: a draft proposes ``k`` tokens per sequence, the target verifies
    ``k + 1`` in one step; each draft token is accepted with probability ``accept``
    (independently), so a step yields (1 - a^(k+1)) / (1 - a) tokens on average
    (Leviathan et al., ICML 2023, eq. 1) — 1 at a = 0, k + 1 at a = 1."""

    k: int
    accept: float

    def __post_init__(self) -> None:
        if self.k < 1 or not 0 <= self.accept <= 1:
            raise ArchsimError("--spec-k must be >= 1 and --spec-accept within [0, 1]")

    @property
    def tokens_per_step(self) -> float:
        a = self.accept
        return float(self.k + 1) if a >= 1 else (1 - a ** (self.k + 1)) / (1 - a)


@dataclass
class Job:
    """A request in flight."""

    req: Request
    target: int  # prompt tokens to prefill (prompt + produced tokens after a recompute)
    prefilled: int = 0  # of target, reused tokens included
    generated: float = 0.0  # output tokens produced (fractional with speculation)
    ctx: float = 0.0  # tokens whose KV this request holds on the device
    blocks: int = 0  # private device blocks
    shared: int = 0  # leading tokens read from a cached entry (not in blocks)
    entry: Entry | None = None
    resolved: bool = False  # reuse looked up
    first_token: float | None = None
    finish: float | None = None
    admitted: int = 0  # admission order (preemption takes the latest)
    preemptions: int = 0
    reused: int = 0
    reuse_tier: str | None = None
    reload_s: float = 0.0
    handoff_s: float = 0.0  # KV transfer prefill -> decode instance
    instance: int = -1
    decode_instance: int = -1
    late: bool = False  # slo policy: can no longer meet its TTFT target
    last_token: float = 0.0  # when its latest token came out
    max_gap: float = 0.0  # longest wait between two of its tokens

    @property
    def decoding(self) -> bool:
        return self.prefilled >= self.target

    @property
    def remaining(self) -> float:
        return self.req.output - self.generated


@dataclass
class Block:
    """The step (or run of pure decode steps) an instance is executing."""

    t0: float
    cum: np.ndarray  # cumulative seconds after t0 at each step's end
    k: int  # steps that will have run when it ends
    decodes: list[Job]
    chunks: list[tuple[Job, int]]
    tokens: float  # tokens each decode gains per step
    version: int

    @property
    def end(self) -> float:
        return self.t0 + float(self.cum[self.k - 1])


class Instance:
    """One serving instance (a deployment's chips running one model copy)."""

    def __init__(
        self,
        sim: Simulation,
        idx: int,
        role: str,  # both | prefill | decode
        steps: Steps,
        kv: KvMemory,
        draft: Any = None,  # draft step model (speculation); None: none or self
        draft_fraction: float = 0.0,  # self-speculation: draft step = this x target step
    ) -> None:
        self.sim, self.idx, self.role, self.steps, self.kv = sim, idx, role, steps, kv
        self.draft, self.draft_fraction = draft, draft_fraction
        self.waiting: deque[Job] = deque()
        self.swapped: deque[Job] = deque()
        self.running: list[Job] = []
        self.block: Block | None = None
        self.waking = False
        self.version = 0
        self.admissions = 0
        self.busy_s = 0.0
        self.steps_run = 0
        self.swaps = 0
        self.swap_bytes = 0.0

    @property
    def load(self) -> int:
        return len(self.waiting) + len(self.swapped) + len(self.running)

    # ---- speculation ------------------------------------------------------------------------
    @property
    def spec(self) -> SpecConfig | None:
        return self.sim.spec if self.role != "prefill" else None

    def _draft_times(self, b: int, ctx: np.ndarray) -> np.ndarray:
        if self.spec is None or b == 0:
            return np.zeros(len(ctx))
        if self.draft is not None:
            per = self.draft.decode_times(b, ctx)
        else:
            per = self.draft_fraction * self.steps.decode_times(b, ctx)
        return self.spec.k * per

    def _decode_times(self, b: int, ctx: np.ndarray) -> np.ndarray:
        if self.spec is None:
            return self.steps.decode_times(b, ctx)
        q = self.spec.k + 1
        return self.steps.multi_token_times(b, ctx, q) + self._draft_times(b, ctx)

    # ---- events -----------------------------------------------------------------------------
    def notify(self, now: float) -> None:
        """Something for this instance happened at ``now``: start a step if idle, or cut a
        running block of decode steps at the first boundary at or after ``now``."""
        b = self.block
        if b is None:
            # schedule once every event of this instant is in (requests arriving together
            # share their first step)
            if not self.waking:
                self.waking = True
                self.sim.push(now, "wake", self)
            return
        if b.k > 1 and b.end > now + EPS:
            j = int(np.searchsorted(b.cum, now - b.t0 - EPS, side="left"))
            if j + 1 < b.k:
                b.k = j + 1
                self.version += 1
                b.version = self.version
                self.sim.push(b.end, "step", (self, b.version))

    def on_step(self, version: int, now: float) -> None:
        b = self.block
        if b is None or b.version != version:
            return  # a block that was cut short
        self.block = None
        self.busy_s += b.end - b.t0
        self.steps_run += b.k
        self._apply(b, now)
        self.schedule(now)

    # ---- the scheduler ----------------------------------------------------------------------
    def schedule(self, now: float) -> None:
        if self.block is not None:
            return
        self.kv.sweep_idle(now)
        cfg = self.sim.sched
        decodes = self._ready_decodes(now)
        q = self.spec.k + 1 if self.spec else 1
        chunks: list[tuple[Job, int]] = []
        if self.role == "decode":  # disaggregated: requests whose KV has landed join
            self._admit_handoffs(now)
            decodes = self._ready_decodes(now)
        elif cfg.policy == "fcfs":
            chunks = self._admit(now, cfg.token_budget, whole=True) if self._can_prefill() else []
            if chunks:
                decodes = []  # a prefill step runs alone (vLLM V0)
        else:
            budget = cfg.token_budget - len(decodes) * q
            if cfg.policy == "slo" and cfg.slo_tpot_s is not None:
                budget = min(budget, self._slo_budget(decodes, q))
            chunks = self._continue_prefills(budget)
            budget -= sum(n for _, n in chunks)
            chunks += self._admit(now, budget, whole=False)
        if not decodes and not chunks:
            return
        self._start(now, decodes, chunks, q)

    def _can_prefill(self) -> bool:
        return bool(self.waiting or self.swapped)

    def _ready_decodes(self, now: float) -> list[Job]:
        """Running requests in decode, each with the blocks for this step's tokens (the
        latest admitted are preempted while blocks are short; ``running`` is kept in
        admission order)."""
        if self.role == "prefill":
            return []
        q = self.spec.k + 1 if self.spec else 1
        out = []
        i = 0
        while i < len(self.running):
            job = self.running[i]
            if not job.decoding:
                i += 1
                continue
            need = self.kv.blocks(job.ctx + q - job.shared) - job.blocks
            while need > 0 and not self.kv.allocate(need, now):
                victim = self.running[-1]
                self._preempt(victim, now)
                if victim is job:
                    return out
            job.blocks += max(need, 0)
            out.append(job)
            i += 1
        return out

    def _preempt(self, job: Job, now: float) -> None:
        self.running.remove(job)
        job.preemptions += 1
        if self.sim.sched.preempt == "swap" and job.decoding:
            tier = self.kv.hierarchy.tier(self.kv.hierarchy.swap_tier)
            nbytes = (job.ctx - job.shared) * self.kv.kv_bytes_per_token
            self.kv.transfer(tier.link, "down", tier.write_s(nbytes), now)
            self.kv.stats[tier.name].bytes_written += nbytes
            self.swaps += 1
            self.swap_bytes += nbytes
            self.kv.release(job.blocks)
            job.blocks = 0
            self.swapped.append(job)
            return
        # recompute: drop its KV; prefill prompt + produced tokens again
        self.kv.release(job.blocks)
        job.blocks = 0
        if job.entry is not None:
            self.kv.unpin(job.entry)
            job.entry = None
        job.target = job.req.prompt + int(math.floor(job.generated + EPS))
        job.prefilled, job.ctx, job.shared, job.resolved = 0, 0.0, 0, False
        self.waiting.appendleft(job)

    def _continue_prefills(self, budget: int) -> list[tuple[Job, int]]:
        out = []
        for job in self.running:
            if budget <= 0:
                break
            if not job.decoding:
                n = min(budget, job.target - job.prefilled)
                if self._grow(job, n):
                    out.append((job, n))
                    budget -= n
        return out

    def _grow(self, job: Job, n: int) -> bool:
        need = self.kv.blocks(job.ctx + n - job.shared) - job.blocks
        if need > 0 and not self.kv.allocate(need, self.sim.now):
            return False
        job.blocks += max(need, 0)
        return True

    def _waiting_order(self, now: float) -> list[Job]:
        """First come first served; the slo policy takes those that can still make their
        TTFT deadline (arrival + target) first, in deadline order (a constant target makes
        that arrival order), then the late ones (late once, late for good)."""
        cfg = self.sim.sched
        if cfg.policy != "slo" or cfg.slo_ttft_s is None:
            return list(self.waiting)
        on_time, late = [], []
        for j in self.waiting:
            if not j.late and j.first_token is None:
                deadline = j.req.arrival_s + cfg.slo_ttft_s
                j.late = now + self.steps.prefill_time(j.target - j.prefilled) > deadline
            (late if j.late else on_time).append(j)
        return on_time + late

    def _admit(self, now: float, budget: int, whole: bool) -> list[tuple[Job, int]]:
        """Swapped requests back first, then waiting prompts, while the budget, the batch
        cap and the KV blocks allow (first come first served stops at the first that does
        not fit)."""
        cfg = self.sim.sched
        self._swap_in(now)
        out: list[tuple[Job, int]] = []
        reserve = int(cfg.watermark * self.kv.total_blocks)
        for job in self._waiting_order(now):
            if len(self.running) >= cfg.max_batch or (budget <= 0 and not (whole and not out)):
                break
            if not job.resolved and self._resolve_reuse(job, now):
                self.waiting.remove(job)  # its KV is on the way; READY brings it back
                continue
            n = job.target - job.prefilled
            if not whole:
                n = min(n, budget)
            elif out and n > budget:
                break
            need = self.kv.blocks(job.ctx + n - job.shared) - job.blocks
            if self.running and not self.kv.can_allocate(need + reserve):
                break  # keep a little room for the running requests to grow (vLLM)
            if not self.kv.allocate(need, now):
                break
            self.waiting.remove(job)
            job.blocks += need
            self.admissions += 1
            job.admitted = self.sim.next_admission()
            job.instance = self.idx
            self.running.append(job)
            out.append((job, n))
            budget -= n
        return out

    def _swap_in(self, now: float) -> None:
        while self.swapped and len(self.running) < self.sim.sched.max_batch:
            job = self.swapped[0]
            need = self.kv.blocks(job.ctx - job.shared)
            if not self.kv.allocate(need, now):
                return
            self.swapped.popleft()
            tier = self.kv.hierarchy.tier(self.kv.hierarchy.swap_tier)
            nbytes = (job.ctx - job.shared) * self.kv.kv_bytes_per_token
            done = self.kv.transfer(tier.link, "up", tier.read_s(nbytes), now)
            self.kv.stats[tier.name].bytes_read += nbytes
            job.blocks = need
            self.sim.push(done, "resume", (self, job))

    def _admit_handoffs(self, now: float) -> None:
        """Decode instance: requests whose KV arrived join the batch when blocks allow."""
        cfg = self.sim.sched
        while self.waiting and len(self.running) < cfg.max_batch:
            job = self.waiting[0]
            need = self.kv.blocks(job.ctx)
            if not self.kv.allocate(need, now):
                return
            self.waiting.popleft()
            job.blocks, job.shared = need, 0
            job.admitted = self.sim.next_admission()
            job.decode_instance = self.idx
            self.running.append(job)

    def _slo_budget(self, decodes: list[Job], q: int) -> int:
        """The most prefill tokens a step can carry and still end within the TPOT target."""
        cfg = self.sim.sched
        ctx = float(np.mean([j.ctx for j in decodes])) if decodes else 0.0
        limit = cfg.slo_tpot_s

        def t(n: int) -> float:  # noqa: E306
            return self.steps.step_time(len(decodes), ctx, q, [(n, 0)] if n else [])

        lo, hi = 0, cfg.token_budget
        if t(hi) <= limit:
            return hi
        while hi - lo > 16:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if t(mid) <= limit else (lo, mid)
        return max(lo, 16 if not decodes else 0)  # never starve prefill entirely

    # ---- reuse ------------------------------------------------------------------------------
    def _resolve_reuse(self, job: Job, now: float) -> bool:
        """Look the request's reusable KV up; reuse what is on the device, reload what sits
        lower when that is faster than recomputing it. True: it waits for a load."""
        job.resolved = True
        r = job.req
        keys = []
        if r.conversation is not None:
            keys.append((f"conv:{r.conversation}", job.target - 1))
        if r.prefix is not None:
            keys.append((f"prefix:{r.prefix}", min(r.prefix_tokens, job.target - 1)))
        if not keys or job.prefilled:
            return False
        e, usable = self.kv.lookup(keys, now)
        if e is None or usable <= 0:
            return False
        tier = self.kv.tier_name(e.tier)
        st = self.kv.stats[tier]
        st.lookups += 1
        if e.tier > 0:
            reload = self.kv.reload_seconds(e, now)
            if reload >= self.steps.prefill_time(usable):
                st.recomputed += 1
                return False
            done = self.kv.promote(e, now)
            if done is None:
                st.recomputed += 1
                return False
            job.reload_s = done - now
        st.hit_tokens += usable
        self.kv.pin(e)
        self.kv.touch(e, now)
        job.entry, job.shared, job.prefilled, job.ctx = e, usable, usable, float(usable)
        job.reused, job.reuse_tier = usable, tier
        if e.ready_at > now + EPS:  # still being copied up (by this or another request)
            self.sim.push(e.ready_at, "ready", (self, job))
            return True
        return False

    # ---- running a step ---------------------------------------------------------------------
    def _start(self, now: float, decodes: list[Job], chunks: list[tuple[Job, int]], q: int) -> None:
        tokens = self.spec.tokens_per_step if self.spec else 1.0
        b = len(decodes)
        ctx_mean = float(np.mean([j.ctx for j in decodes])) if decodes else 0.0
        if chunks:
            t = self.steps.step_time(b, ctx_mean, q, [(n, j.prefilled) for j, n in chunks])
            if b:
                t += float(self._draft_times(b, np.array([ctx_mean]))[0])
            cum = np.array([t])
            k = 1
        else:
            k = self._block_steps(now, decodes, tokens, q)
            cum = np.cumsum(self._decode_times(b, ctx_mean + tokens * np.arange(k)))
        self.version += 1
        self.block = Block(now, cum, k, decodes, chunks, tokens, self.version)
        self.sim.push(self.block.end, "step", (self, self.version))

    def _block_steps(self, now: float, decodes: list[Job], tokens: float, q: int) -> int:
        """Pure decode steps that can run back to back unchanged: until the first request
        finishes, while the KV blocks last, while nothing admissible waits."""
        rem = np.array([j.remaining for j in decodes])
        k = min(MAX_BLOCK_STEPS, max(1, int(np.ceil(rem.min() / tokens - EPS))))
        if k == 1 or self._admissible_waiting(len(decodes) * q):
            return 1
        ctx = np.array([j.ctx - j.shared for j in decodes])
        held = np.array([j.blocks for j in decodes])

        def extra(steps: int) -> np.ndarray:
            """Blocks each request still needs for the last of ``steps`` steps (its
            accepted tokens so far plus the step's q slots)."""
            grown = ctx + tokens * (steps - 1) + q
            return np.maximum(0, np.ceil(grown / self.kv.block_tokens - EPS) - held)

        if extra(k).sum() > self.kv.free:
            lo, hi = 1, k  # extra(lo) fits (its blocks were taken), extra(hi) does not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if extra(mid).sum() <= self.kv.free else (lo, mid)
            k = lo
        grow = extra(k).astype(np.int64)
        self.kv.allocate(int(grow.sum()), now)
        for job, g in zip(decodes, grow, strict=True):
            job.blocks += int(g)
        return k

    def _admissible_waiting(self, decode_tokens: int) -> bool:
        """A waiting or swapped request could join at the next boundary."""
        if self.role == "prefill":
            return False
        cfg = self.sim.sched
        if len(self.running) >= cfg.max_batch:
            return False
        if cfg.policy != "fcfs" and self.role == "both" and decode_tokens >= cfg.token_budget:
            return bool(self.swapped)
        if self.role == "decode":
            return bool(self.waiting) and self.kv.free >= self.kv.blocks(self.waiting[0].ctx)
        if self.swapped:
            return True
        if not self.waiting:
            return False
        job = self.waiting[0]
        first = min(job.target - job.prefilled, cfg.token_budget)
        return self.kv.can_allocate(self.kv.blocks(job.ctx + first - job.shared))

    def _apply(self, b: Block, now: float) -> None:
        """The block's steps have run: tokens produced, prompts advanced, requests done."""
        kv = self.kv
        steps = np.diff(b.cum[: b.k]) if b.k > 1 else None
        longest = float(steps.max()) if steps is not None else 0.0
        for job in b.decodes:
            job.max_gap = max(job.max_gap, b.t0 + float(b.cum[0]) - job.last_token, longest)
            job.last_token = now
            gained = b.tokens * b.k
            job.generated = min(float(job.req.output), job.generated + gained)
            job.ctx += gained
            held = kv.blocks(job.ctx - job.shared)
            if held < job.blocks:  # speculative slots not used
                kv.release(job.blocks - held)
                job.blocks = held
            if job.remaining <= EPS:
                self._finish(job, now)
        for job, n in b.chunks:
            job.prefilled += n
            job.ctx += n
            if job.decoding:
                self._prompt_done(job, now)

    def _prompt_done(self, job: Job, now: float) -> None:
        r = job.req
        if job.first_token is None:
            job.first_token = now
        else:  # a recomputed prompt: its next token waited since the last one
            job.max_gap = max(job.max_gap, now - job.last_token)
        job.last_token = now
        job.generated += 1.0  # the prefill's logits give the next token
        if r.prefix is not None and job.entry is None and self.kv.caching:
            self._share_prefix(job, now)
        if job.remaining <= EPS:
            self._finish(job, now)
        elif self.role == "prefill":
            self.sim.hand_off(self, job, now)

    def _share_prefix(self, job: Job, now: float) -> None:
        """The prompt's shared prefix becomes a cached entry (its blocks move from the
        request to the entry, which the request then reads)."""
        n = job.req.prefix_tokens
        own = self.kv.blocks(n)
        if own > job.blocks:
            return
        self.kv.release(own)
        job.blocks -= own
        e = self.kv.store(f"prefix:{job.req.prefix}", n, now)
        if e is None:
            self.kv.allocate(own, now)  # back to the request (the blocks were just freed)
            job.blocks += own
            return
        self.kv.pin(e)
        job.entry, job.shared = e, n

    def _finish(self, job: Job, now: float) -> None:
        job.finish = now
        self.running.remove(job)
        self.kv.release(job.blocks)
        job.blocks = 0
        if job.entry is not None:
            self.kv.unpin(job.entry)
            self.kv.touch(job.entry, now)
            job.entry = None
        if job.req.conversation is not None and self.role == "both":
            self.kv.store(f"conv:{job.req.conversation}", job.req.prompt + job.req.output, now)
        self.sim.done.append(job)

    def release_handoff(self, job: Job) -> None:
        """Prefill instance: the request's KV has left for its decode instance."""
        self.kv.release(job.blocks)
        job.blocks = 0
        if job.entry is not None:
            self.kv.unpin(job.entry)
            job.entry = None


class Simulation:
    """Requests through colocated instances, or prefill instances handing their KV over a
    link to decode instances (disaggregation, DistServe/Splitwise)."""

    def __init__(
        self,
        requests: list[Request],
        sched: SchedulerConfig,
        spec: SpecConfig | None = None,
        handoff_link: Link | None = None,
    ) -> None:
        self.requests = requests
        self.sched = sched
        self.spec = spec
        self.handoff_link = handoff_link
        self.instances: list[Instance] = []
        self.decoders: list[Instance] = []
        self.now = 0.0
        self._heap: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self._admission = 0
        self.done: list[Job] = []
        self.events = 0
        self.handoff_bytes = 0.0
        self._link_free: dict[int, float] = {}

    def add(self, inst_factory, role: str = "both") -> Instance:
        inst = inst_factory(self, len(self.instances) + len(self.decoders), role)
        (self.decoders if role == "decode" else self.instances).append(inst)
        return inst

    def push(self, t: float, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, payload))

    def next_admission(self) -> int:
        self._admission += 1
        return self._admission

    def run(self) -> list[Job]:
        if not self.instances:
            raise ArchsimError("no serving instance to run")
        for r in self.requests:
            self.push(r.arrival_s, "arrive", r)
        while self._heap:
            t, _, kind, payload = heapq.heappop(self._heap)
            self.now = t
            self.events += 1
            if kind == "arrive":
                self._arrive(payload, t)
            elif kind == "step":
                inst, version = payload
                inst.on_step(version, t)
            elif kind == "wake":
                payload.waking = False
                payload.schedule(t)
            elif kind in ("ready", "resume"):
                inst, job = payload
                if kind == "ready":
                    inst.waiting.appendleft(job)
                else:
                    inst.running.append(job)
                    job.admitted = self.next_admission()
                inst.notify(t)
            elif kind == "handoff":
                inst, job = payload
                inst.waiting.append(job)
                inst.notify(t)
            elif kind == "release":
                inst, job = payload
                inst.release_handoff(job)
                inst.notify(t)
        missing = len(self.requests) - len(self.done)
        if missing:
            raise ArchsimError(
                f"{missing} request(s) could never be served: a prompt needs more KV than the "
                "instance holds, or --max-batch/--token-budget leave it no room"
            )
        return self.done

    def _arrive(self, r: Request, now: float) -> None:
        inst = self._route(r, self.instances)
        job = Job(r, target=r.prompt)
        inst.waiting.append(job)
        inst.notify(now)

    @staticmethod
    def _route(r: Request, pool: list[Instance]) -> Instance:
        """An instance holding the request's reusable KV, else the least loaded."""
        keys = []
        if r.conversation is not None:
            keys.append(f"conv:{r.conversation}")
        if r.prefix is not None:
            keys.append(f"prefix:{r.prefix}")
        for key in keys:
            for inst in pool:
                if key in inst.kv.entries:
                    return inst
        return min(pool, key=lambda i: (i.load, i.idx))

    def hand_off(self, src: Instance, job: Job, now: float) -> None:
        """The prompt is done on a prefill instance: its KV crosses the link (one transfer
        at a time per prefill instance) to the least loaded decode instance."""
        dst = min(self.decoders, key=lambda i: (i.load, i.idx))
        link = self.handoff_link
        nbytes = job.ctx * src.kv.kv_bytes_per_token
        start = max(now, self._link_free.get(src.idx, 0.0))
        done = start + link.latency_s + nbytes / link.bandwidth_bytes_per_s
        self._link_free[src.idx] = done
        self.handoff_bytes += nbytes
        job.handoff_s = done - now
        src.running.remove(job)
        self.push(done, "release", (src, job))
        moved = Job(job.req, target=job.target, prefilled=job.prefilled,
                    generated=job.generated, ctx=job.ctx, first_token=job.first_token,
                    last_token=job.last_token,
                    admitted=0, preemptions=job.preemptions, reused=job.reused,
                    reuse_tier=job.reuse_tier, reload_s=job.reload_s, handoff_s=job.handoff_s,
                    instance=src.idx, resolved=True)  # fmt: skip
        self.push(done, "handoff", (dst, moved))


def instance_factory(
    steps: Steps,
    capacity_tokens: int,
    kv_bytes_per_token: float,
    *,
    hierarchy=None,
    device_idle_s: float | None = None,
    caching: bool = True,
    draft: Any = None,
    draft_fraction: float = 0.0,
    block_tokens: int = 16,
):
    """``make(sim, idx, role)`` building an instance with its own KV memory."""

    def make(sim: Simulation, idx: int, role: str) -> Instance:
        kv = KvMemory(capacity_tokens, kv_bytes_per_token, hierarchy=hierarchy,
                      block_tokens=block_tokens, device_idle_s=device_idle_s,
                      caching=caching)  # fmt: skip
        return Instance(sim, idx, role, steps, kv, draft=draft, draft_fraction=draft_fraction)

    return make


__all__ = [
    "DEVICE",
    "Instance",
    "Job",
    "SchedulerConfig",
    "Simulation",
    "SpecConfig",
    "instance_factory",
]
