"""Generic static list scheduler: every instruction of a stream gets its issue cycle.

In program order (a topological order), instruction ``i`` issues at the earliest cycle
``t >= start`` at which

* the previous instruction of its unit has released the unit (``interval`` cycles after its
  issue, or at its end where ``interval`` is -1);
* every END_START producer's result is ready ``lag`` cycles before ``t``, and every
  START_START producer issued ``lag`` cycles before ``t``;
* its flow fits on every shared resource it uses: it reserves its standalone rate there over
  ``[t, t + flow)`` and, at every cycle of that window, the rates reserved by earlier
  instructions plus its own stay within the bandwidth.

Durations are standalone (the instruction alone on the machine): ``flow = work`` without
resources, else ``ceil(max(work, max_r bytes_r / bw_r))`` cycles (at least 1, with the engine's
1e-9 epsilon); ``end = t + flow + latency``, held to ``end[j] + lag`` for START_START
producers ``j``. The rate reserved on resource r is the flow's *peak* standalone rate,
``bytes_r / max(work, max_r bytes_r / bw_r)``, not its average over the rounded-up window:
the event engine shares bandwidth max-min fairly and keeps a share until the flow's last
whole cycle, so only reservations of peak rates guarantee that every flow runs alone-fast
(when the peak rates of overlapping flows fit under a bandwidth, the max-min fair share of
each flow is its peak rate). Then the engine in static mode finds no late instruction.

With ``reorder=True`` the scheduler is not bound to program order on a unit: it is a
priority list scheduler. Every instruction whose producers are scheduled waits in a heap keyed
by the earliest cycle it could issue (its producers' bounds, its unit's release, room on its
resources); the smallest key is scheduled next, ties to the lowest program index (the
compiler's priority: earlier micro-batches first). A unit so takes the next ready instruction
of any micro-batch, as a static compiler interleaves them; :func:`issue_order` then gives the
program order in which each unit's queue is its issue order (the engine runs units in order).

Each resource's reservations are a piecewise-constant profile (sorted breakpoints, the rate
reserved from each to the next); the earliest feasible ``t`` is found by moving ``t`` to the
end of each segment that has no room. Breakpoints before every unit's release time (no later
instruction can issue there) are dropped as the schedule advances.
"""

from __future__ import annotations

import numpy as np

from archsim.core.isa import (
    InstructionStream,
    Timing,
    dep_arrays,
    resource_arrays,
    unit_arrays,
)
from archsim.core.jit import njit


@njit
def standalone_flow(work, res_ptr, res_idx, res_bytes, bw):  # pragma: no cover - jitted
    """Per instruction: (flow cycles int64, peak duration float64 = max(work, bytes/bw))."""
    n = work.shape[0]
    flow = work.copy()
    peak = work.astype(np.float64)
    for i in range(n):
        moves = False
        for k in range(res_ptr[i], res_ptr[i + 1]):
            if res_bytes[k] > 0:
                moves = True
                d = res_bytes[k] / bw[res_idx[k]]
                if d > peak[i]:
                    peak[i] = d
        if moves:
            c = np.int64(np.ceil(peak[i] * (1.0 - 1e-9)))
            flow[i] = max(c, 1)
    return flow, peak


@njit
def find_segment(pt, row, head, tail, t):  # pragma: no cover - jitted
    """Index k in [head, tail) of the last breakpoint pt[row, k] <= t (binary search)."""
    lo, hi = head, tail - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if pt[row, mid] <= t:
            lo = mid
        else:
            hi = mid - 1
    return lo


@njit
def make_room(pt, pl, head, tail, row):  # pragma: no cover - jitted
    """Ensure row ``row`` can take one more breakpoint: slide it to column 0 if its head has
    moved far, else double every row. Returns (pt, pl), possibly new arrays."""
    width = pt.shape[1]
    if tail[row] < width:
        return pt, pl
    h = head[row]
    if h >= width // 2:
        m = tail[row] - h
        for k in range(m):
            pt[row, k] = pt[row, h + k]
            pl[row, k] = pl[row, h + k]
        head[row] = 0
        tail[row] = m
        return pt, pl
    pt2 = np.empty((pt.shape[0], 2 * width), dtype=np.int64)
    pl2 = np.zeros((pt.shape[0], 2 * width), dtype=np.float64)
    pt2[:, :width] = pt
    pl2[:, :width] = pl
    return pt2, pl2


@njit
def split_at(pt, pl, head, tail, row, t):  # pragma: no cover - jitted
    """Make ``t`` a breakpoint of row ``row``; returns (pt, pl, its index)."""
    k = find_segment(pt, row, head[row], tail[row], t)
    if pt[row, k] == t:
        return pt, pl, k
    pt, pl = make_room(pt, pl, head, tail, row)
    k = find_segment(pt, row, head[row], tail[row], t)
    for m in range(tail[row], k + 1, -1):
        pt[row, m] = pt[row, m - 1]
        pl[row, m] = pl[row, m - 1]
    pt[row, k + 1] = t
    pl[row, k + 1] = pl[row, k]
    tail[row] += 1
    return pt, pl, k + 1


@njit
def earliest_fit(i, t, flow, peak, res_ptr, res_idx, res_bytes, bw, pt, pl, head, tail):
    """First cycle >= t at which instruction i's peak rates fit on all its resources over
    [t, t + flow[i])."""
    while True:
        moved = False
        for k in range(res_ptr[i], res_ptr[i + 1]):
            if res_bytes[k] <= 0:
                continue
            r = res_idx[k]
            # 1e-12: relative slack for float noise in summed rates
            room = bw[r] * (1.0 + 1e-12) - res_bytes[k] / peak[i]
            s = find_segment(pt, r, head[r], tail[r], t)
            while s < tail[r] and pt[r, s] < t + flow[i]:
                if pl[r, s] > room:  # no room in this segment: try from its end
                    t = pt[r, s + 1]  # the last segment is never full: it reserves nothing
                    moved = True
                    break
                s += 1
            if moved:
                break
        if not moved:
            return t


@njit
def reserve(i, t, flow, peak, res_ptr, res_idx, res_bytes, pt, pl, head, tail):
    """Add instruction i's peak rates over [t, t + flow[i]) to its resources' profiles."""
    for k in range(res_ptr[i], res_ptr[i + 1]):
        if res_bytes[k] <= 0:
            continue
        r = res_idx[k]
        pt, pl, _ = split_at(pt, pl, head, tail, r, t)
        pt, pl, b = split_at(pt, pl, head, tail, r, t + flow[i])
        a = find_segment(pt, r, head[r], tail[r], t)  # the second split may slide the row
        q = res_bytes[k] / peak[i]
        for s in range(a, b):
            pl[r, s] += q
    return pt, pl


@njit
def prune(pt, head, tail, n_res, horizon):  # pragma: no cover - jitted
    """Forget the breakpoints of every row before the segment holding ``horizon``."""
    for r in range(n_res):
        head[r] = find_segment(pt, r, head[r], tail[r], horizon)


@njit
def place(i, t, unit, issue, end, unit_free, flow, latency, interval, dep_ptr, dep_idx,
          dep_kind, dep_lag):  # fmt: skip  # pragma: no cover - jitted
    """Issue instruction i at cycle t: its standalone end (held to end + lag of its
    START_START producers) and the release of its unit."""
    issue[i] = t
    e = t + flow[i] + latency[i]
    for k in range(dep_ptr[i], dep_ptr[i + 1]):
        if dep_kind[k] == 1 and end[dep_idx[k]] + dep_lag[k] > e:
            e = end[dep_idx[k]] + dep_lag[k]
    end[i] = e
    unit_free[unit[i]] = t + interval[i] if interval[i] >= 0 else e


@njit
def schedule_kernel(
    unit,
    n_units,
    dep_ptr,
    dep_idx,
    dep_kind,
    dep_lag,
    res_ptr,
    res_idx,
    res_bytes,
    work,
    latency,
    interval,
    bw,
    start,
):  # pragma: no cover - jitted
    """int64 [n] issue cycles (see the module docstring)."""
    n = unit.shape[0]
    n_res = bw.shape[0]
    flow, peak = standalone_flow(work, res_ptr, res_idx, res_bytes, bw)
    last_of_unit = np.full(n_units, -1, dtype=np.int64)
    for i in range(n):
        last_of_unit[unit[i]] = i
    issue = np.zeros(n, dtype=np.int64)
    end = np.zeros(n, dtype=np.int64)
    unit_free = np.full(n_units, start, dtype=np.int64)
    pt = np.full((n_res, 16), start, dtype=np.int64)  # breakpoints [resource, k]
    pl = np.zeros((n_res, 16), dtype=np.float64)  # bytes/cycle reserved from pt[r, k] on
    head = np.zeros(n_res, dtype=np.int64)
    tail = np.ones(n_res, dtype=np.int64)
    for i in range(n):
        if n_res > 0 and i % 256 == 0:
            # no later instruction issues before the earliest release of a unit still in use
            horizon = np.iinfo(np.int64).max
            for u in range(n_units):
                if last_of_unit[u] >= i and unit_free[u] < horizon:
                    horizon = unit_free[u]
            prune(pt, head, tail, n_res, horizon)
        t = unit_free[unit[i]]
        for k in range(dep_ptr[i], dep_ptr[i + 1]):
            j = dep_idx[k]
            bound = (issue[j] if dep_kind[k] == 1 else end[j]) + dep_lag[k]
            if bound > t:
                t = bound
        if res_ptr[i + 1] > res_ptr[i]:
            t = earliest_fit(i, t, flow, peak, res_ptr, res_idx, res_bytes, bw, pt, pl, head, tail)
            pt, pl = reserve(i, t, flow, peak, res_ptr, res_idx, res_bytes, pt, pl, head, tail)
        place(i, t, unit, issue, end, unit_free, flow, latency, interval, dep_ptr, dep_idx,
              dep_kind, dep_lag)  # fmt: skip
    return issue


@njit
def _before(hk, hi, x, y):  # pragma: no cover - jitted
    """Slot x orders before slot y: smaller key, ties to the smaller index."""
    return hk[x] < hk[y] or (hk[x] == hk[y] and hi[x] < hi[y])


@njit
def _sift_down(hk, hi, base, size, c):  # pragma: no cover - jitted
    """Restore the min-heap order of (hk, hi)[base:base+size] below slot c."""
    while True:
        a, b, m = 2 * c + 1, 2 * c + 2, c
        if a < size and _before(hk, hi, base + a, base + m):
            m = a
        if b < size and _before(hk, hi, base + b, base + m):
            m = b
        if m == c:
            return
        hk[base + m], hk[base + c] = hk[base + c], hk[base + m]
        hi[base + m], hi[base + c] = hi[base + c], hi[base + m]
        c = m


@njit
def _push(hk, hi, base, size, key, idx):  # pragma: no cover - jitted
    """Push (key, idx) on the min-heap in (hk, hi)[base:base+size] (room is guaranteed);
    returns the new size."""
    c = size
    hk[base + c] = key
    hi[base + c] = idx
    while c > 0:
        par = (c - 1) // 2
        if hk[base + par] < hk[base + c] or (
            hk[base + par] == hk[base + c] and hi[base + par] <= hi[base + c]
        ):
            break
        hk[base + par], hk[base + c] = hk[base + c], hk[base + par]
        hi[base + par], hi[base + c] = hi[base + c], hi[base + par]
        c = par
    return size + 1


@njit
def _pop(hk, hi, base, size):  # pragma: no cover - jitted
    """Pop the smallest (key, idx) of the heap in (hk, hi)[base:base+size]."""
    key, idx = hk[base], hi[base]
    size -= 1
    hk[base] = hk[base + size]
    hi[base] = hi[base + size]
    _sift_down(hk, hi, base, size, 0)
    return key, idx, size


@njit
def priority_schedule_kernel(
    unit,
    n_units,
    dep_ptr,
    dep_idx,
    dep_kind,
    dep_lag,
    cons_ptr,
    cons_idx,
    producers,
    res_ptr,
    res_idx,
    res_bytes,
    work,
    latency,
    interval,
    bw,
    start,
):  # pragma: no cover - jitted
    """int64 [n] issue cycles, units not bound to program order (module docstring).

    Three kinds of heap: *pending* (instructions whose producers are scheduled, by the cycle
    their data is ready), one *available* heap per unit (ready instructions, by program
    index: the priority), and *units* (units with an available instruction, by the cycle they
    are free). Time advances to the smallest of the pending and unit keys; at each cycle the
    ready instructions move to their unit's heap, then every free unit takes its
    lowest-index available instruction. Each instruction enters each heap a bounded number of
    times, so the cost is O(n log n) whatever the contention for a unit."""
    n = unit.shape[0]
    n_res = bw.shape[0]
    flow, peak = standalone_flow(work, res_ptr, res_idx, res_bytes, bw)
    issue = np.full(n, -1, dtype=np.int64)
    end = np.zeros(n, dtype=np.int64)
    waiting = producers.copy()  # distinct producers not yet scheduled
    ready = np.full(n, start, dtype=np.int64)  # bound from the scheduled producers
    unit_free = np.full(n_units, start, dtype=np.int64)
    pt = np.full((n_res, 16), start, dtype=np.int64)
    pl = np.zeros((n_res, 16), dtype=np.float64)
    head = np.zeros(n_res, dtype=np.int64)
    tail = np.ones(n_res, dtype=np.int64)
    # pending heap: each instruction is pushed once per time it becomes ready (a resource
    # that has no room sends it back once more), so 2n + 1 slots with growth on demand
    pk = np.empty(2 * n + 1, dtype=np.int64)
    pi = np.empty(2 * n + 1, dtype=np.int64)
    psize = 0
    # available heaps: one region per unit, as large as the unit's instruction count
    count = np.zeros(n_units, dtype=np.int64)
    for i in range(n):
        count[unit[i]] += 1
    abase = np.zeros(n_units, dtype=np.int64)
    for u in range(1, n_units):
        abase[u] = abase[u - 1] + count[u - 1]
    ak = np.zeros(max(n, 1), dtype=np.int64)  # key = program index
    ai = np.zeros(max(n, 1), dtype=np.int64)
    asize = np.zeros(n_units, dtype=np.int64)
    uk = np.empty(max(n_units, 1), dtype=np.int64)
    ui = np.empty(max(n_units, 1), dtype=np.int64)
    usize = 0
    queued = np.zeros(n_units, dtype=np.bool_)  # unit is in the units heap
    for i in range(n):
        if waiting[i] == 0:
            psize = _push(pk, pi, 0, psize, start, i)
    scheduled = 0
    t = start
    while scheduled < n:
        if psize == 0 and usize == 0:
            break  # nothing can advance (cannot happen for a valid stream)
        t_next = pk[0] if psize > 0 else np.iinfo(np.int64).max
        if usize > 0 and uk[0] < t_next:
            t_next = uk[0]
        if t_next > t:
            t = t_next
        while psize > 0 and pk[0] <= t:  # data ready: to the unit's available heap
            _, i, psize = _pop(pk, pi, 0, psize)
            u = unit[i]
            asize[u] = _push(ak, ai, abase[u], asize[u], i, i)
            if not queued[u]:
                usize = _push(uk, ui, 0, usize, max(unit_free[u], t), u)
                queued[u] = True
        while usize > 0 and uk[0] <= t:  # every free unit takes its first instruction
            _, u, usize = _pop(uk, ui, 0, usize)
            queued[u] = False
            if unit_free[u] > t:  # freed later than queued: queue it at its release
                usize = _push(uk, ui, 0, usize, unit_free[u], u)
                queued[u] = True
                continue
            _, i, asize[u] = _pop(ak, ai, abase[u], asize[u])
            if res_ptr[i + 1] > res_ptr[i]:
                if scheduled % 256 == 0:
                    prune(pt, head, tail, n_res, t)  # nothing issues before t any more
                f = earliest_fit(i, t, flow, peak, res_ptr, res_idx, res_bytes, bw, pt, pl,
                                 head, tail)  # fmt: skip
                if f > t:  # no room on a resource yet: back to pending, the unit stays free
                    if psize == pk.shape[0]:
                        pk2 = np.empty(2 * psize, dtype=np.int64)
                        pi2 = np.empty(2 * psize, dtype=np.int64)
                        pk2[:psize] = pk
                        pi2[:psize] = pi
                        pk, pi = pk2, pi2
                    psize = _push(pk, pi, 0, psize, f, i)
                    if asize[u] > 0:
                        usize = _push(uk, ui, 0, usize, t, u)
                        queued[u] = True
                    continue
                pt, pl = reserve(i, t, flow, peak, res_ptr, res_idx, res_bytes, pt, pl,
                                 head, tail)  # fmt: skip
            place(i, t, unit, issue, end, unit_free, flow, latency, interval, dep_ptr, dep_idx,
                  dep_kind, dep_lag)  # fmt: skip
            scheduled += 1
            if asize[u] > 0:
                usize = _push(uk, ui, 0, usize, unit_free[u], u)
                queued[u] = True
            for k in range(cons_ptr[i], cons_ptr[i + 1]):
                c = cons_idx[k]
                for q in range(dep_ptr[c], dep_ptr[c + 1]):  # the bound(s) c has on i
                    if dep_idx[q] == i:
                        b = (issue[i] if dep_kind[q] == 1 else end[i]) + dep_lag[q]
                        if b > ready[c]:
                            ready[c] = b
                waiting[c] -= 1
                if waiting[c] == 0:
                    if psize == pk.shape[0]:
                        pk2 = np.empty(2 * psize, dtype=np.int64)
                        pi2 = np.empty(2 * psize, dtype=np.int64)
                        pk2[:psize] = pk
                        pi2[:psize] = pi
                        pk, pi = pk2, pi2
                    psize = _push(pk, pi, 0, psize, max(ready[c], t), c)
    return issue


def issue_order(stream: InstructionStream, issue: np.ndarray) -> np.ndarray:
    """The program order in which every unit's instructions follow their issue cycles: by
    issue cycle, ties in the old program order. Producers stay first (a consumer never issues
    before its producer's issue)."""
    return np.lexsort((np.arange(len(stream)), issue))


def _consumers(stream: InstructionStream) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR of the distinct consumers of each instruction, and how many distinct producers
    each instruction waits for."""
    n = len(stream)
    owner = np.repeat(np.arange(n, dtype=np.int64), np.diff(stream.dep_ptr))
    # an instruction's producers are sorted: one producer bound twice (end->start and
    # start->start) sits in adjacent slots
    keep = np.ones(len(owner), dtype=bool)
    keep[1:] = (owner[1:] != owner[:-1]) | (stream.dep_idx[1:] != stream.dep_idx[:-1])
    producer, consumer = stream.dep_idx[keep], owner[keep]
    by_producer = np.argsort(producer, kind="stable")
    ptr = np.zeros(n + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(np.bincount(producer, minlength=n))
    producers = np.bincount(consumer, minlength=n).astype(np.int64)
    return ptr, np.ascontiguousarray(consumer[by_producer]), producers


def list_schedule(
    stream: InstructionStream, timing: Timing, start: int = 0, reorder: bool = False
) -> np.ndarray:
    """int64 [n] issue cycles of ``stream``, none before ``start`` (see the module
    docstring). ``reorder``: units take ready instructions by priority rather than in program
    order (then permute the stream with :func:`issue_order` before the engine runs it). The
    stream is not modified: assign the result to ``stream.cols["issue"]``."""
    timing.check(stream)
    if reorder:
        cons_ptr, cons_idx, producers = _consumers(stream)
        return priority_schedule_kernel(
            *unit_arrays(stream),
            *dep_arrays(stream),
            cons_ptr,
            cons_idx,
            producers,
            *resource_arrays(stream, timing),
            np.int64(start),
        )
    return schedule_kernel(
        *unit_arrays(stream),
        *dep_arrays(stream),
        *resource_arrays(stream, timing),
        np.int64(start),
    )
