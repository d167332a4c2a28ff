"""Mixture-of-experts routing in expectation: tokens per expert, experts touched, and what
an expert-parallel rank receives and sends.

The router of an MoE layer sends each token to ``top_k`` distinct experts of ``E``. archsim
does not sample routings; it works with expected values, so that a step is deterministic:

* **Expert popularity.** ``routing_skew`` s = 0 is uniform routing (every expert is chosen
  by a token with probability k/E). s > 0 is a Zipf law over the expert index: expert e
  (0-based) has weight (e + 1)^-s, and the probability that a token picks it is
  p_e = min(1, c x w_e) with c set so that sum_e p_e = k (a token cannot pick one expert
  twice, so a probability is capped at 1 and the rest is shared by the others). Experts are
  placed on expert-parallel ranks in contiguous blocks (expert e on rank e // (E / ep), the
  default placement of vLLM and SGLang without a load balancer), so the most popular experts
  share rank 0: a worst case for a skewed router.
* **Tokens per expert.** T tokens give expert e T x p_e rows in expectation; a set of
  experts gets T x sum p_e (the rows of its grouped GEMM).
* **Experts touched.** Tokens route independently, so expert e is touched by at least one
  of T tokens with probability 1 - (1 - p_e)^T, and the expected number of distinct experts
  a step touches (whose weights it must read) is sum_e 1 - (1 - p_e)^T. Uniform:
  E (1 - (1 - k/E)^T) — exact, since a token misses a given expert with probability
  1 - k/E whatever its other choices.
* **Ranks a token reaches.** A token misses every expert of a set S (a rank's experts) with
  probability prod_{j<k} (1 - q_S E / (E - j)), q_S = sum_{e in S} p_e / k the set's share
  of the routing: the k draws without replacement, each removing one expert's share.
  Uniform (q_S = |S| / E) this is C(E - |S|, k) / C(E, k), exact; skewed it is an
  approximation (each draw removes an average expert).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


def routing_probs(num_experts: int, top_k: int, skew: float) -> tuple[float, ...]:
    """P(one token routes to expert e) for every expert; they sum to ``top_k``."""
    if skew == 0:
        return (top_k / num_experts,) * num_experts
    w = [(e + 1) ** -skew for e in range(num_experts)]
    capped: set[int] = set()
    while True:  # water-filling: cap at 1, share the rest by weight
        free = [e for e in range(num_experts) if e not in capped]
        scale = (top_k - len(capped)) / sum(w[e] for e in free)
        over = {e for e in free if scale * w[e] >= 1.0}
        if not over:
            return tuple(1.0 if e in capped else scale * w[e] for e in range(num_experts))
        capped |= over


@dataclass(frozen=True)
class ExpertLoad:
    """The expected routing of ``tokens`` tokens onto the experts ``first .. first +
    len(probs) - 1`` of a layer of ``num_experts`` experts with ``top_k`` per token."""

    probs: tuple[float, ...]  # P(a token picks expert e), for the experts of this range
    tokens: int  # tokens the router routes this step (T)
    num_experts: int  # E of the layer
    top_k: int
    first: int = 0  # index of the first expert of the range

    @property
    def experts(self) -> int:
        """Experts in this range (held by the op or rank)."""
        return len(self.probs)

    @property
    def share(self) -> float:
        """q: the share of all (token, expert) pairs that land in this range."""
        return sum(self.probs) / self.top_k

    def routed(self) -> float:
        """Expected (token, expert) pairs in the range: the rows of its grouped GEMM."""
        return self.tokens * sum(self.probs)

    def active(self) -> float:
        """Expected distinct experts of the range that at least one token picks."""
        return sum(1.0 - (1.0 - p) ** self.tokens for p in self.probs)

    def tokens_per_expert(self) -> tuple[float, ...]:
        """Expected rows of each expert of the range."""
        return tuple(self.tokens * p for p in self.probs)

    def hottest(self) -> float:
        """Expected rows of the range's most popular expert."""
        return self.tokens * max(self.probs)

    def miss(self) -> float:
        """P(one token picks no expert of this range)."""
        e, q = self.num_experts, self.share
        out = 1.0
        for j in range(self.top_k):
            out *= max(0.0, 1.0 - q * e / (e - j))
        return out

    def subset(self, first: int, stop: int) -> ExpertLoad:
        """The experts ``first .. stop - 1`` (indices within the layer)."""
        a, b = first - self.first, stop - self.first
        return replace(self, probs=self.probs[a:b], first=first)

    def with_tokens(self, tokens: int) -> ExpertLoad:
        """The same routing for another number of tokens (a micro-batch)."""
        return replace(self, tokens=tokens)


def expert_load(num_experts: int, top_k: int, tokens: int, skew: float) -> ExpertLoad:
    return ExpertLoad(routing_probs(num_experts, top_k, skew), tokens, num_experts, top_k)


def rank_blocks(num_experts: int, ranks: int) -> list[tuple[int, int]]:
    """Contiguous blocks of experts per rank (earlier ranks take the remainder)."""
    base, extra = divmod(num_experts, ranks)
    out, first = [], 0
    for r in range(ranks):
        stop = first + base + (1 if r < extra else 0)
        out.append((first, stop))
        first = stop
    return out


def tokens_owned(tokens: int, ranks: int, rank: int) -> int:
    """Tokens rank ``rank`` owns when ``tokens`` are split over ``ranks`` in order
    (earlier ranks take the remainder)."""
    return tokens // ranks + (1 if rank < tokens % ranks else 0)


@dataclass(frozen=True)
class RankTraffic:
    """What one expert-parallel rank moves in one MoE layer, in tokens (multiply by the
    hidden size and the bytes per element for bytes)."""

    rank: int
    own: int  # tokens the rank owns (routes, and gets back combined)
    load: ExpertLoad  # its experts and the rows they get from every rank
    sent: float  # expected (token, remote rank) pairs it dispatches
    received: float  # expected tokens it receives from other ranks for its experts


def rank_traffic(load: ExpertLoad, ranks: int, rank: int) -> RankTraffic:
    """The dispatch of rank ``rank`` of ``ranks``: each token it owns goes once to every
    other rank holding at least one of its experts (DeepEP's normal kernels send a token
    once per destination rank); it receives, from the tokens the others own, those that
    pick at least one of its experts. The combine moves the same tokens the other way."""
    blocks = rank_blocks(load.num_experts, ranks)
    subsets = [load.subset(a, b) for a, b in blocks]
    own = tokens_owned(load.tokens, ranks, rank)
    reach = sum(1.0 - s.miss() for r, s in enumerate(subsets) if r != rank)
    received = (load.tokens - own) * (1.0 - subsets[rank].miss())
    return RankTraffic(rank, own, subsets[rank], own * reach, received)


def hottest_rank(load: ExpertLoad, ranks: int) -> int:
    """The rank whose experts get the most rows (ties: the most distinct experts, then the
    lowest index): it finishes its MoE layer last and sets the step time."""
    blocks = rank_blocks(load.num_experts, ranks)
    keys = []
    for r, (a, b) in enumerate(blocks):
        s = load.subset(a, b)
        own = tokens_owned(load.tokens, ranks, r)
        keys.append((round(s.routed(), 9), round(s.active(), 9), own))
    best = max(keys)
    return keys.index(best)


def ceil_rows(x: float) -> int:
    """Whole rows for a kernel's shape from an expected count (at least one)."""
    return max(1, math.ceil(x - 1e-9))
