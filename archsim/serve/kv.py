"""KV-cache memory of one serving instance: paged blocks on the device, reusable entries
(a conversation's context, a shared prefix) that stay cached after their request, and the
tiers below the device they migrate down to (``kv_tiers/*.yaml``).

Device memory is counted in blocks of ``block_tokens`` tokens (vLLM's paged KV): a request
holds blocks for the tokens it stored beyond the entry it reuses; an entry holds blocks for
its own tokens and is pinned while a request reads it. When blocks run short, unpinned
entries leave the device least recently used first, each moving to the first lower tier
with room (which evicts its own least recently used entries the same way) or dropped below
the last. An entry also moves down once it has sat unused in a tier for that tier's idle
time. Every move is timed on the link it crosses (one queue per link and direction, since
copies of one link serialise) and its bytes counted per tier.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

from archsim.serve.tiers import Hierarchy, TierPath

DEVICE = "device"


@dataclass
class Entry:
    key: str  # "conv:<id>" or "prefix:<id>"
    tokens: int
    tier: int  # 0: device; i >= 1: hierarchy tier i - 1
    last_use: float
    pins: int = 0
    ready_at: float = 0.0  # when a move into its tier completes


@dataclass
class TierStats:
    lookups: int = 0  # reusable requests that found their entry here
    hit_tokens: int = 0  # tokens reused from here
    loads: int = 0  # entries reloaded from here (reload faster than recompute)
    recomputed: int = 0  # found here, but recomputing was faster
    bytes_read: float = 0.0  # moved up out of this tier
    bytes_written: float = 0.0  # moved down into this tier
    dropped: int = 0  # entries that fell out of the bottom tier from here


@dataclass
class KvMemory:
    """Device blocks plus the reusable entries of one instance."""

    capacity_tokens: int
    kv_bytes_per_token: float
    hierarchy: Hierarchy | None = None
    block_tokens: int = 16
    device_idle_s: float | None = None  # an unused device entry moves down after this
    caching: bool = True  # False: nothing is kept after its request (no reuse)
    total_blocks: int = 0
    free: int = 0
    entries: dict[str, Entry] = field(default_factory=dict)
    lru: list[OrderedDict] = field(default_factory=list)  # per tier: key -> None, oldest first
    used_bytes: list[float] = field(default_factory=list)  # per lower tier
    link_free: dict[tuple[str, str], float] = field(default_factory=dict)
    stats: dict[str, TierStats] = field(default_factory=dict)
    peak_used_blocks: int = 0

    def __post_init__(self) -> None:
        self.total_blocks = self.capacity_tokens // self.block_tokens
        self.free = self.total_blocks
        tiers = self.hierarchy.tiers if self.hierarchy else ()
        self.lru = [OrderedDict() for _ in range(len(tiers) + 1)]
        self.used_bytes = [0.0] * len(tiers)
        self.stats = {DEVICE: TierStats(), **{t.name: TierStats() for t in tiers}}

    # ---- blocks -----------------------------------------------------------------------------
    def blocks(self, tokens: float) -> int:
        return math.ceil(max(tokens, 0) / self.block_tokens - 1e-9)

    def tier_name(self, i: int) -> str:
        return DEVICE if i == 0 else self.hierarchy.tiers[i - 1].name

    def _tier(self, i: int) -> TierPath:
        return self.hierarchy.tiers[i - 1]

    def allocate(self, n: int, now: float) -> bool:
        """Take ``n`` blocks, evicting unpinned device entries (least recently used first)
        if needed; False (nothing taken) when even that is not enough."""
        if n <= self.free:
            self.free -= n
            self._peak()
            return True
        if not self.can_allocate(n):
            return False
        for key in list(self.lru[0]):
            if self.free >= n:
                break
            if self.entries[key].pins == 0:
                self._demote(self.entries[key], now)
        self.free -= n
        self._peak()
        return True

    def release(self, n: int) -> None:
        self.free += n
        assert self.free <= self.total_blocks, "released more KV blocks than allocated"

    def _peak(self) -> None:
        self.peak_used_blocks = max(self.peak_used_blocks, self.total_blocks - self.free)

    # ---- links ------------------------------------------------------------------------------
    def transfer(self, link: str, direction: str, seconds: float, now: float) -> float:
        """Queue a copy on ``link`` in ``direction``; returns when it completes."""
        start = max(now, self.link_free.get((link, direction), 0.0))
        end = start + seconds
        self.link_free[(link, direction)] = end
        return end

    # ---- entries ----------------------------------------------------------------------------
    def lookup(self, keys: list[tuple[str, int]], now: float) -> tuple[Entry | None, int]:
        """The cached entry reusing the most tokens among ``(key, usable tokens)``."""
        self.sweep_idle(now)
        best, best_tokens = None, 0
        for key, usable in keys:
            e = self.entries.get(key)
            if e is not None and min(e.tokens, usable) > best_tokens:
                best, best_tokens = e, min(e.tokens, usable)
        return best, best_tokens

    def touch(self, e: Entry, now: float) -> None:
        e.last_use = now
        self.lru[e.tier].move_to_end(e.key)

    def pin(self, e: Entry) -> None:
        e.pins += 1

    def unpin(self, e: Entry) -> None:
        e.pins -= 1
        assert e.pins >= 0

    def store(self, key: str, tokens: int, now: float) -> Entry | None:
        """Cache ``tokens`` of KV under ``key`` on the device (replacing an older entry of
        that key); None when caching is off or no room can be made."""
        if not self.caching or tokens <= 0:
            return None
        old = self.entries.get(key)
        if old is not None:
            if old.pins:
                return None  # another request still reads the old one
            self._remove(old)
        if not self.allocate(self.blocks(tokens), now):
            return None
        e = Entry(key, tokens, 0, now)
        self.entries[key] = e
        self.lru[0][key] = None
        return e

    def can_allocate(self, n: int) -> bool:
        evictable = sum(self.blocks(self.entries[k].tokens) for k in self.lru[0]
                        if self.entries[k].pins == 0)  # fmt: skip
        return n <= self.free + evictable

    def promote(self, e: Entry, now: float) -> float | None:
        """Start moving ``e`` up to the device: returns when it is there, or None if the
        device has no room. The device blocks are taken now."""
        need = self.blocks(e.tokens)
        if not self.can_allocate(need):
            return None
        tier = self._tier(e.tier)
        nbytes = e.tokens * self.kv_bytes_per_token
        start = max(now, e.ready_at)
        self._leave_tier(e)  # out of its tier first: making device room may push entries down
        self.allocate(need, now)
        done = self.transfer(tier.link, "up", tier.read_s(nbytes), start)
        st = self.stats[tier.name]
        st.bytes_read += nbytes
        st.loads += 1
        e.tier, e.ready_at = 0, done
        self.lru[0][e.key] = None
        self.touch(e, now)
        return done

    def reload_seconds(self, e: Entry, now: float) -> float:
        """From now until ``e`` would be on the device (queue on its link included)."""
        tier = self._tier(e.tier)
        start = max(now, e.ready_at, self.link_free.get((tier.link, "up"), 0.0))
        return start - now + tier.read_s(e.tokens * self.kv_bytes_per_token)

    def _remove(self, e: Entry) -> None:
        self._leave_tier(e)
        del self.entries[e.key]

    def _leave_tier(self, e: Entry) -> None:
        del self.lru[e.tier][e.key]
        if e.tier == 0:
            self.release(self.blocks(e.tokens))
        else:
            self.used_bytes[e.tier - 1] -= e.tokens * self.kv_bytes_per_token

    def _demote(self, e: Entry, now: float) -> None:
        """Move ``e`` one tier down (or out of the bottom one); the tier below makes room
        by demoting its own least recently used entries."""
        below = e.tier + 1
        nbytes = e.tokens * self.kv_bytes_per_token
        src = self.tier_name(e.tier)
        n_tiers = len(self.lru) - 1
        while below <= n_tiers and nbytes > self._tier(below).capacity_bytes:
            below += 1  # too big for that tier at all
        if below > n_tiers:
            self.stats[src].dropped += 1
            self._remove(e)
            return
        tier = self._tier(below)
        for key in list(self.lru[below]):
            if self.used_bytes[below - 1] + nbytes <= tier.capacity_bytes:
                break
            self._demote(self.entries[key], now)
        # a copy down is written at the slower of the two ends' rates (the link's here)
        start = max(now, e.ready_at)
        done = self.transfer(tier.link, "down", tier.write_s(nbytes), start)
        self._leave_tier(e)
        e.tier, e.ready_at = below, done
        self.lru[below][e.key] = None
        self.used_bytes[below - 1] += nbytes
        self.stats[tier.name].bytes_written += nbytes

    def sweep_idle(self, now: float) -> None:
        """Entries unused longer than their tier's idle time move one tier down."""
        if self.hierarchy is None:
            return
        limits = [self.device_idle_s] + [t.idle_demote_s for t in self.hierarchy.tiers[:-1]]
        for i, limit in enumerate(limits):
            if limit is None:
                continue
            for key in list(self.lru[i]):
                e = self.entries[key]
                due = max(e.last_use, e.ready_at) + limit
                if due > now:
                    break  # the rest were used more recently
                if e.pins == 0:
                    self._demote(e, due)  # swept late: it moved when it fell due

    def tier_bytes(self) -> dict[str, float]:
        out = {DEVICE: (self.total_blocks - self.free) * self.block_tokens
               * self.kv_bytes_per_token}  # fmt: skip
        if self.hierarchy:
            out.update({t.name: b for t, b in zip(self.hierarchy.tiers, self.used_bytes,
                                                   strict=True)})  # fmt: skip
        return out
