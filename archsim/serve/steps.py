"""Step times for the serving simulation, from a family's cycle model.

The serving loop asks for thousands of steps; each distinct one would be a full simulation
(milliseconds on h100-like, up to seconds on groq-like at large batch). So the cycle model
is run on a grid of buckets and memoised, and a step between grid points is interpolated:

* pure decode, ``D(b, c)``: ``b`` sequences, one token each over ``c`` cached tokens (the
  batch's mean context: a decode step's KV traffic is the sum of the contexts). Bilinear
  in (batch, context) between grid points: batch on a geometric grid (``per_octave``
  points per doubling), context on doublings from 128 (plus 1), where decode time is
  close to affine;
* prefill of ``n`` tokens, ``P(n)`` (one sequence, causal from an empty cache), on a
  geometric grid of token counts, split into its attention part ``A(n)`` and the rest
  ``L(n)`` by the family's own critical-path attribution (``time_by_op_kind``);
  ``A(n)/n`` and ``L(n)`` are interpolated linearly (causal attention is close to
  quadratic in ``n``);
* a step with several new tokens per sequence (a prefill chunk of ``p`` tokens after ``o``
  cached ones, decodes riding along, speculative verification of ``q`` tokens per
  sequence) has no scenario of its own, so it is composed:
  ``T = L(N) + sum over chunks of [A(o + p) - A(o)] + A_dec(d, c)`` with ``N`` every new
  token of the step (the projections and MLP see them as one matrix, the weights are read
  once), ``A(o + p) - A(o)`` exactly the query-key pairs of the chunk, and ``A_dec`` the
  attention share of ``D(d, c)`` (the decodes' KV read once). docs/serving.md measures
  the interpolation and composition errors against direct simulation.

Times are a step's *period* (tokens / ``tokens_per_s``: for a pipelined family the time
between rounds, not one token's latency). Grid points that do not fit the deployment
(the plan refuses them) are extrapolated from the nearest ones that do.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from archsim.core.errors import CapacityError, ModelError, ScenarioError
from archsim.graph.model import ModelSpec
from archsim.graph.scenario import Precision

CTX_BASE = 128  # first context grid point above 1; decode time is near affine in context
SIZING_SEQUENCES = 16  # sequences that share the KV pool when a deployment is sized
TOKEN_QUANTUM = 64  # token-count grid: multiples of this (and one above) ...
TOKEN_DENSE_TO = 1024  # ... up to here, then geometric


GRID_TOP = 1 << 22  # grid points are laid out up to this (4M tokens / sequences)


class Grid:
    """Sorted integer grid points: ``extra``, then ``base * 2**(k/per_octave)`` rounded
    (to a multiple of ``quantum`` and paired with the count one above it, when ``quantum``
    is set, and every multiple of ``quantum`` up to ``dense_to``). ``per_octave = 0``
    makes every integer a point (direct simulation)."""

    def __init__(
        self,
        per_octave: float,
        base: int,
        extra: Sequence[int] = (),
        quantum: int = 0,
        dense_to: int = 0,
    ) -> None:
        self.per_octave = per_octave
        pts = set(extra)
        if per_octave > 0:
            k = 0
            while (x := base * 2 ** (k / per_octave)) <= GRID_TOP:
                pts.add(int(round(x / quantum)) * quantum if quantum else int(round(x)))
                k += 1
            if quantum:
                pts.update(range(quantum, dense_to + 1, quantum))
                pts.update([p + 1 for p in pts if p >= quantum and p % quantum == 0])
        self.points: list[int] = sorted(p for p in pts if p >= 1)

    def bracket(self, x: float) -> tuple[int, int]:
        """Grid points lo <= x <= hi, adjacent (lo == hi when x is a point)."""
        if self.per_octave <= 0:
            return int(math.floor(x)), int(math.ceil(x))
        i = bisect.bisect_left(self.points, x)
        if i == len(self.points):
            raise ScenarioError(f"{x:g} is beyond the step-time grid ({GRID_TOP:,})")
        if self.points[i] == x or i == 0:
            return self.points[i], self.points[i]
        return self.points[i - 1], self.points[i]

    def span(self, lo: float, hi: float) -> list[int]:
        """Grid points covering [lo, hi]: the bracket of lo, every point inside, hi's."""
        if self.per_octave <= 0:
            return list(range(int(math.floor(lo)), int(math.ceil(hi)) + 1))
        a, _ = self.bracket(lo)
        _, b = self.bracket(hi)
        i = bisect.bisect_left(self.points, a)
        j = bisect.bisect_left(self.points, b)
        return self.points[i : j + 1]


@dataclass(frozen=True)
class Deployment:
    """One serving instance: a machine with its chip count, the model at its precision, and
    the KV pool that is left once weights and activations are placed."""

    arch: str
    family: str
    model: ModelSpec
    precision: Precision
    chips: int
    overrides: tuple[str, ...]
    kv_bytes_per_token: float  # stored bytes per token, all layers (after compression)
    kv_compression: float  # >= 1: stored KV is 1/ratio of the dtype's bytes
    kv_capacity_tokens: int
    weight_bytes: float
    capacity_bytes: float  # usable memory of all chips
    act_bytes: float  # activations of the largest step planned
    memory_tier: str  # the family's name for where the KV lives (hbm, sram, ...)
    memory_bw_bytes_per_s: float  # its peak bandwidth per chip
    arch_digest: str = ""  # of the resolved arch config (overrides included)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "family": self.family,
            "model": self.model.name,
            "precision": self.precision.label,
            "kv_dtype": self.precision.kv,
            "kv_compression": self.kv_compression,
            "chips": self.chips,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "kv_capacity_bytes": self.kv_capacity_tokens * self.kv_bytes_per_token,
            "weight_bytes": self.weight_bytes,
            "memory_bytes": self.capacity_bytes,
            "memory_tier": self.memory_tier,
            "arch_digest": self.arch_digest,
            "model_digest": self.model.digest(),
            "overrides": list(self.overrides),
        }


@dataclass
class SimStats:
    simulations: int = 0
    seconds: float = 0.0
    refused: int = 0  # grid points the plan refused (extrapolated)
    keys: list[tuple] = field(default_factory=list)


class FamilySteps:
    """Step times of one deployment from its family's cycle model (see the module doc)."""

    def __init__(
        self,
        dep: Deployment,
        per_octave: float = 2.0,
        token_per_octave: float = 4.0,
        ctx_per_octave: float = 1.0,
        layers: int | None = None,
        scale: dict[str, float] | None = None,
    ) -> None:
        self.dep = dep
        self.batch_grid = Grid(per_octave, 1)
        # token counts: every multiple of TOKEN_QUANTUM up to TOKEN_DENSE_TO and the count
        # just above it, geometric beyond: many machines time rows in tiles of 64 or 128
        # (tensor-core and systolic tiles), so a step's time jumps just past a multiple
        # and is flat up to the next; interpolating across a jump would smooth it away
        self.token_grid = Grid(token_per_octave, TOKEN_QUANTUM, extra=(1, 2, 4, 8, 16, 32),
                               quantum=TOKEN_QUANTUM, dense_to=TOKEN_DENSE_TO)  # fmt: skip
        # context: decode time is close to affine in it; the exact mode keeps a fine grid
        self.ctx_grid = Grid(ctx_per_octave if ctx_per_octave > 0 else 16.0, CTX_BASE,
                             extra=(1,))  # fmt: skip
        self.layers = layers
        self.scale = dict(scale or {})  # phase -> whole-model / layers-N factor
        self.stats = SimStats()
        self._memo: dict[tuple[str, int, int], tuple[float, float] | None] = {}
        self._decode_cache: dict[tuple[int, int], tuple[float, float]] = {}
        self._prefill_cache: dict[int, tuple[float, float]] = {}

    # ---- one simulation ---------------------------------------------------------------------
    def simulate(self, phase: str, batch: int, n: int) -> tuple[float, float] | None:
        """(period, attention seconds) of one step from the cycle model, or None when the
        deployment cannot hold it. Memoised."""
        key = (phase, batch, n)
        if key in self._memo:
            return self._memo[key]
        from archsim.pipeline import simulate

        d = self.dep
        t0 = time.perf_counter()
        try:
            r = simulate(
                d.arch, d.model, phase=phase, batch=batch,
                ctx=n if phase == "decode" else 1, seq=n if phase == "prefill" else 1,
                layers=self.layers, precision=d.precision, chips=d.chips,
                overrides=list(d.overrides),
            )  # fmt: skip
            out = step_parts(r)
            f = self.scale.get(phase, 1.0)
            out = (out[0] * f, out[1] * f)
        except (CapacityError, ModelError):  # does not fit, or past the model's positions
            out = None
            self.stats.refused += 1
        self.stats.simulations += 1
        self.stats.seconds += time.perf_counter() - t0
        self.stats.keys.append(key)
        self._memo[key] = out
        return out

    # ---- decode grid ------------------------------------------------------------------------
    def _decode_point(self, b: int, c: int) -> tuple[float, float]:
        """D(b, c) at a grid point: simulated, or (when it does not fit) extrapolated along
        the context from the two grid points below it."""
        key = (b, c)
        if key in self._decode_cache:
            return self._decode_cache[key]
        got = self.simulate("decode", b, c)
        if got is None:
            pts = [p for p in self.ctx_grid.points if p < c]
            if len(pts) < 2:
                raise CapacityError(
                    f"{self.dep.model.name} decode at batch {b} does not fit on "
                    f"{self.dep.chips} chip(s) of {self.dep.arch}"
                )
            c1, c0 = pts[-1], pts[-2]
            (t1, a1), (t0, a0) = self._decode_point(b, c1), self._decode_point(b, c0)
            w = (c - c0) / (c1 - c0)
            got = (t0 + (t1 - t0) * w, a0 + (a1 - a0) * w)
        self._decode_cache[key] = got
        return got

    def _decode_row(self, b: int, ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pts = self.ctx_grid.span(float(ctx.min()), float(ctx.max()))
        vals = np.array([self._decode_point(b, c) for c in pts])
        if len(pts) == 1:
            return np.full(len(ctx), vals[0, 0]), np.full(len(ctx), vals[0, 1])
        return np.interp(ctx, pts, vals[:, 0]), np.interp(ctx, pts, vals[:, 1])

    def decode_parts(self, batch: int, ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(period, attention seconds) of a decode step of ``batch`` sequences at each mean
        context in ``ctx`` (stored tokens: compression shortens what attention reads)."""
        ctx = np.maximum(1.0, np.asarray(ctx, dtype=np.float64) / self.dep.kv_compression)
        b0, b1 = self.batch_grid.bracket(batch)
        t0, a0 = self._decode_row(b0, ctx)
        if b1 == b0:
            return t0, a0
        t1, a1 = self._decode_row(b1, ctx)
        w = (batch - b0) / (b1 - b0)
        return t0 + (t1 - t0) * w, a0 + (a1 - a0) * w

    def decode_times(self, batch: int, ctx: np.ndarray) -> np.ndarray:
        return self.decode_parts(batch, ctx)[0]

    def multi_token_times(self, batch: int, ctx: np.ndarray, q: int) -> np.ndarray:
        """Decode steps adding ``q`` tokens per sequence (speculative verification): the
        projections over ``batch x q`` rows, the cache read once per sequence."""
        rest, _ = self._prefill_parts(batch * q)
        return rest + self.decode_parts(batch, ctx)[1]

    # ---- prefill grid -----------------------------------------------------------------------
    def _prefill_point(self, n: int) -> tuple[float, float]:
        """(rest, attention) of P(n) at a grid point; a point that does not fit takes its
        rest from the largest that does (scaled by tokens) and its attention per token
        extrapolated linearly."""
        if n in self._prefill_cache:
            return self._prefill_cache[n]
        got = self.simulate("prefill", 1, n)
        if got is None:
            pts = [p for p in self.token_grid.points if p < n]
            if len(pts) < 2:
                raise CapacityError(
                    f"a prefill of {n} tokens of {self.dep.model.name} does not fit on "
                    f"{self.dep.chips} chip(s) of {self.dep.arch}"
                )
            n1, n0 = pts[-1], pts[-2]
            (l1, a1), (_, a0) = self._prefill_point(n1), self._prefill_point(n0)
            per1, per0 = a1 / n1, a0 / n0
            per = per1 + (per1 - per0) * (n - n1) / (n1 - n0)
            out = (l1 * n / n1, max(per, 0.0) * n)
        else:
            out = (got[0] - got[1], got[1])
        self._prefill_cache[n] = out
        return out

    def _prefill_parts(self, n: float) -> tuple[float, float]:
        """(rest L(n), attention A(n)) interpolated; A(0) = L(0) = 0."""
        if n <= 0:
            return 0.0, 0.0
        lo, hi = self.token_grid.bracket(n)
        l0, a0 = self._prefill_point(lo)
        if hi == lo:
            return l0, a0
        l1, a1 = self._prefill_point(hi)
        w = (n - lo) / (hi - lo)
        return l0 + (l1 - l0) * w, n * (a0 / lo + (a1 / hi - a0 / lo) * w)

    def prefill_time(self, tokens: int) -> float:
        """One prompt of ``tokens`` alone: the recompute cost a reload competes with."""
        rest, attn = self._prefill_parts(tokens)
        return rest + attn

    # ---- any step ---------------------------------------------------------------------------
    def step_time(
        self, decode: int, ctx_mean: float, q: int, chunks: Sequence[tuple[int, int]]
    ) -> float:
        """A step of ``decode`` sequences adding ``q`` tokens each over ``ctx_mean`` cached
        tokens, plus prefill chunks ``(tokens, already cached)``."""
        if not chunks and q == 1:
            if decode == 0:
                return 0.0
            return float(self.decode_times(decode, np.array([ctx_mean]))[0])
        n = sum(p for p, _ in chunks) + decode * q
        rest, _ = self._prefill_parts(n)
        attn = 0.0
        for p, o in chunks:
            attn += self._prefill_parts(o + p)[1] - self._prefill_parts(o)[1]
        if decode:
            attn += float(self.decode_parts(decode, np.array([ctx_mean]))[1][0])
        return rest + attn


def step_parts(r) -> tuple[float, float]:
    """(period, attention seconds) of a Result: the period is the step's tokens over
    ``tokens_per_s`` (for a pipelined family the time between rounds); the attention share
    is the family's critical-path attribution applied to it."""
    tokens = r.batch * (r.seq if r.phase == "prefill" else 1)
    period = tokens / r.tokens_per_s
    total = sum(r.time_by_op_kind.values())
    share = r.time_by_op_kind.get("attention", 0.0) / total if total > 0 else 0.0
    return period, period * share


class LinearSteps:
    """An analytic step model for hand-checked tests (the "null device"): a step costs
    ``fixed_s + token_s x new tokens + ctx_s x context tokens read``, where a decode reads its
    sequence's cached tokens and a chunk of ``p`` tokens after ``o`` cached ones reads
    ``o + p``."""

    def __init__(self, fixed_s: float, token_s: float, ctx_s: float = 0.0) -> None:
        self.fixed_s, self.token_s, self.ctx_s = fixed_s, token_s, ctx_s

    def decode_times(self, batch: int, ctx: np.ndarray) -> np.ndarray:
        ctx = np.asarray(ctx, dtype=np.float64)
        return self.fixed_s + self.token_s * batch + self.ctx_s * batch * ctx

    def multi_token_times(self, batch: int, ctx: np.ndarray, q: int) -> np.ndarray:
        ctx = np.asarray(ctx, dtype=np.float64)
        return self.fixed_s + self.token_s * batch * q + self.ctx_s * batch * ctx

    def step_time(
        self, decode: int, ctx_mean: float, q: int, chunks: Sequence[tuple[int, int]]
    ) -> float:
        if decode == 0 and not chunks:
            return 0.0
        tokens = decode * q + sum(p for p, _ in chunks)
        ctx = decode * ctx_mean + sum(o + p for p, o in chunks)
        return self.fixed_s + self.token_s * tokens + self.ctx_s * ctx

    def prefill_time(self, tokens: int) -> float:
        return self.fixed_s + (self.token_s + self.ctx_s) * tokens


def plan_deployment(
    arch: str,
    model: ModelSpec,
    precision: Precision,
    *,
    chips: int | None,
    overrides: Sequence[str],
    kv_compression: float,
    pool_tokens: int,
    token_budget: int,
) -> Deployment:
    """Size one instance with the family's own plan (no simulation). ``chips=None``: the
    fewest chips the family plans for a decode step holding ``pool_tokens`` of KV (the pool
    the scheduler is sized for, as SIZING_SEQUENCES sequences sharing it: the same memory
    need without the cost of planning hundreds of micro-batches) and for a prefill of
    ``token_budget`` tokens, whichever needs more. Its KV capacity is everything its memory
    holds beyond the weights and the larger step's activations."""
    from archsim.config import load_arch, parse_overrides
    from archsim.core.registry import get_family
    from archsim.graph.build import build_graph
    from archsim.graph.scenario import Scenario
    from archsim.pipeline import refuse_unsupported

    if not (math.isfinite(kv_compression) and kv_compression >= 1):
        raise ScenarioError(f"--kv-compression must be >= 1, got {kv_compression}")
    params = load_arch(arch, parse_overrides(list(overrides)))
    family = get_family(params.family)
    kv_tok = (
        2 * model.num_layers * model.num_kv_heads * model.head_dim * precision.kv_bytes
        / kv_compression
    )  # fmt: skip

    def plan(sc: Scenario, spec: ModelSpec):
        g = build_graph(spec, sc)
        refuse_unsupported(g, family)
        return family.plan(g, params, chips)

    seq = min(token_budget, model.max_position_embeddings)
    plans = [plan(Scenario("prefill", 1, seq, 1, precision), model)]
    if chips is None:
        stored = max(1, math.ceil(pool_tokens / kv_compression))
        b = max(SIZING_SEQUENCES, math.ceil(stored / (model.max_position_embeddings - 1)))
        plans.append(plan(Scenario("decode", b, 1, max(1, stored // b), precision), model))
    n_chips = chips or max(p.chips for p in plans)
    cap = plans[0].capacity_bytes_per_chip * n_chips
    weights = plans[0].need.weight_bytes
    act = max(p.need.act_bytes for p in plans)
    kv_cap = int((cap - weights - act) // kv_tok)
    if kv_cap < 1:
        raise CapacityError(
            f"{model.name} on {n_chips} chip(s) of {arch} leaves no memory for the KV cache "
            f"(weights {weights / 1e9:.1f} GB, activations {act / 1e9:.2f} GB, "
            f"memory {cap / 1e9:.1f} GB)"
        )
    peak = family.peak(params, precision.weights)
    tier = "offchip_bytes" if peak.offchip_bytes_per_s > 0 else "onchip_bytes"
    return Deployment(
        arch=arch, family=params.family, model=model, precision=precision, chips=n_chips,
        overrides=tuple(overrides), kv_bytes_per_token=kv_tok, kv_compression=kv_compression,
        kv_capacity_tokens=kv_cap, weight_bytes=weights, capacity_bytes=cap, act_bytes=act,
        memory_tier=family.tiers[tier],
        memory_bw_bytes_per_s=peak.offchip_bytes_per_s or peak.onchip_bytes_per_s,
        arch_digest=params.digest(),
    )  # fmt: skip
