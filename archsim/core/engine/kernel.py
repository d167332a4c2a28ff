"""The event engine kernel: in-order units, lagged dependencies, and flows on shared resources.

Semantics (``archsim.core.engine`` documents them for users):

* each unit executes its instructions in program order; instruction ``i`` starts at the first
  cycle at which the previous instruction of its unit has released it, every END_START
  producer's result is ready (+ lag), and every START_START producer has started (+ lag);
  in static mode it starts exactly at its issue cycle, or is *late* (counted) and starts when
  ready;
* its flow phase lasts ``work`` cycles, or, where it moves bytes over shared resources, until
  those bytes have moved at a max-min fair share of each resource's bandwidth (never faster
  than its bytes over ``work``); rates are recomputed whenever a flow starts or finishes, and
  events fall on integer cycles (a flow finishes at the first cycle at which its bytes have
  moved);
* its result is ready ``latency`` cycles after the flow phase, and not before any
  START_START producer's result (+ lag); it holds its unit for ``interval`` cycles from its
  start, or until its result is ready where ``interval`` is -1.

How: instruction times are resolved as soon as all the constraints they depend on are known
(a worklist: a pure max-plus computation, O(n + deps)). Only flows on shared resources need
simulated time: their start is pushed on a heap ordered by (cycle, program order), and the
event loop advances from one flow start or finish to the next, recomputing the fair rates of
the active flows (progressive filling, as flow-level network simulators do) at each event.
A stream without resources therefore never touches the heap.

Every helper of the kernel lives in this file (a cached kernel does not see a changed helper
elsewhere); scalars the helpers update travel in small int64 ``state`` arrays.
"""

from __future__ import annotations

import numpy as np

from archsim.core.jit import njit

# The int64 ``state`` array the helpers share (literal slots: numba freezes module globals):
# state[0] worklist size, state[1] heap size, state[2] late count, state[3] first late index.


@njit
def next_on_unit(unit, n_units):  # pragma: no cover - jitted
    """int64 [n]: the next instruction of the same unit in program order, -1 for the last."""
    n = unit.shape[0]
    nxt = np.full(n, -1, dtype=np.int64)
    last = np.full(n_units, -1, dtype=np.int64)
    for i in range(n):
        u = unit[i]
        if last[u] >= 0:
            nxt[last[u]] = i
        last[u] = i
    return nxt


@njit
def consumers(dep_ptr, dep_idx, n):  # pragma: no cover - jitted
    """Reverse dependency CSR: the dependency entries naming ``j`` as producer are
    ``entry[ptr[j]:ptr[j+1]]`` (in program order of their consumers); ``owner[k]`` is the
    consumer of entry ``k``."""
    n_deps = dep_idx.shape[0]
    owner = np.empty(n_deps, dtype=np.int64)
    for i in range(n):
        for k in range(dep_ptr[i], dep_ptr[i + 1]):
            owner[k] = i
    ptr = np.zeros(n + 1, dtype=np.int64)
    for k in range(n_deps):
        ptr[dep_idx[k] + 1] += 1
    for j in range(n):
        ptr[j + 1] += ptr[j]
    fill = ptr[:-1].copy()
    entry = np.empty(n_deps, dtype=np.int64)
    for k in range(n_deps):
        j = dep_idx[k]
        entry[fill[j]] = k
        fill[j] += 1
    return ptr, entry, owner


@njit
def max_bytes(res_ptr, res_bytes, n):  # pragma: no cover - jitted
    """float64 [n]: the largest byte count an instruction moves over one resource (0 if none)."""
    fmax = np.zeros(n, dtype=np.float64)
    for i in range(n):
        for k in range(res_ptr[i], res_ptr[i + 1]):
            if res_bytes[k] > fmax[i]:
                fmax[i] = res_bytes[k]
    return fmax


# --- binary heap of (cycle, instruction): ties go to program order --------------------------
@njit
def heap_push(heap_t, heap_i, state, t, i):  # pragma: no cover - jitted
    c = state[1]
    state[1] = c + 1
    while c > 0:
        p = (c - 1) // 2
        if heap_t[p] < t or (heap_t[p] == t and heap_i[p] < i):
            break
        heap_t[c] = heap_t[p]
        heap_i[c] = heap_i[p]
        c = p
    heap_t[c] = t
    heap_i[c] = i


@njit
def heap_pop(heap_t, heap_i, state):  # pragma: no cover - jitted
    """Remove and return the instruction with the smallest (cycle, index)."""
    top = heap_i[0]
    m = state[1] - 1
    state[1] = m
    t, i = heap_t[m], heap_i[m]
    c = 0
    while True:
        child = 2 * c + 1
        if child >= m:
            break
        if child + 1 < m and (
            heap_t[child + 1] < heap_t[child]
            or (heap_t[child + 1] == heap_t[child] and heap_i[child + 1] < heap_i[child])
        ):
            child += 1
        if t < heap_t[child] or (t == heap_t[child] and i < heap_i[child]):
            break
        heap_t[c] = heap_t[child]
        heap_i[c] = heap_i[child]
        c = child
    heap_t[c] = t
    heap_i[c] = i
    return top


# --- constraint resolution -------------------------------------------------------------------
@njit
def bound_start(i, t, start_bound, start_wait, stack, state):  # pragma: no cover - jitted
    """One start constraint of ``i`` is known: ``i`` may not start before ``t``."""
    if t > start_bound[i]:
        start_bound[i] = t
    start_wait[i] -= 1
    if start_wait[i] == 0:
        stack[state[0]] = i
        state[0] += 1


@njit
def bound_end(i, t, end_bound, end_wait, stack, state):  # pragma: no cover - jitted
    """One end constraint of ``i`` is known: its result is not ready before ``t``."""
    if t > end_bound[i]:
        end_bound[i] = t
    end_wait[i] -= 1
    if end_wait[i] == 0:
        stack[state[0]] = -(i + 1)  # negative items: an end is resolved
        state[0] += 1


@njit
def resolve(
    static,
    issue,
    work,
    latency,
    interval,
    fmax,
    nxt,
    cons_ptr,
    cons_entry,
    dep_owner,
    dep_kind,
    dep_lag,
    start,
    end,
    release,
    start_bound,
    start_wait,
    end_bound,
    end_wait,
    stack,
    heap_t,
    heap_i,
    state,
):  # pragma: no cover - jitted
    """Drain the worklist: fix every start and end whose constraints are all known, and pass
    the times on to consumers and unit successors. A flow's start goes on the heap (its end
    is only known once simulated time reaches it); any other instruction's end is known at
    once (start + work + latency)."""
    while state[0] > 0:
        state[0] -= 1
        item = stack[state[0]]
        if item >= 0:
            i = item
            s = start_bound[i]
            if static and issue[i] >= 0:
                if s > issue[i]:
                    state[2] += 1
                    if state[3] < 0 or i < state[3]:
                        state[3] = i
                else:
                    s = issue[i]
            start[i] = s
            for c in range(cons_ptr[i], cons_ptr[i + 1]):
                k = cons_entry[c]
                if dep_kind[k] == 1:  # START_START: the consumer may start lag after i starts
                    bound_start(dep_owner[k], s + dep_lag[k], start_bound, start_wait, stack, state)
            if interval[i] >= 0:
                release[i] = s + interval[i]
                if nxt[i] >= 0:
                    bound_start(nxt[i], release[i], start_bound, start_wait, stack, state)
            if fmax[i] > 0:
                heap_push(heap_t, heap_i, state, s, i)
            else:
                bound_end(i, s + work[i] + latency[i], end_bound, end_wait, stack, state)
        else:
            i = -item - 1
            e = end_bound[i]
            end[i] = e
            for c in range(cons_ptr[i], cons_ptr[i + 1]):
                k = cons_entry[c]
                if dep_kind[k] == 1:  # START_START: the consumer's result waits for i's + lag
                    bound_end(dep_owner[k], e + dep_lag[k], end_bound, end_wait, stack, state)
                else:
                    bound_start(dep_owner[k], e + dep_lag[k], start_bound, start_wait, stack, state)
            if interval[i] < 0:
                release[i] = e
                if nxt[i] >= 0:
                    bound_start(nxt[i], e, start_bound, start_wait, stack, state)


# --- max-min fair rates ----------------------------------------------------------------------
@njit
def freeze(f, rho, res_ptr, res_idx, res_bytes, fmax, rate, frozen, res_w, res_cons, res_nu):
    """Flow ``f`` stops rising at progress rate ``rho`` (fmax-bytes per cycle)."""
    rate[f] = rho
    frozen[f] = True
    for k in range(res_ptr[f], res_ptr[f + 1]):
        r = res_idx[k]
        a = res_bytes[k] / fmax[f]  # bytes on r per fmax-byte of progress
        res_cons[r] += rho * a
        res_w[r] -= a
        res_nu[r] -= 1


@njit
def fair_rates(
    active,
    n_active,
    res_ptr,
    res_idx,
    res_bytes,
    fmax,
    cap,
    bw,
    rate,
    frozen,
    res_w,
    res_cons,
    res_nu,
    res_sat,
    touched,
):  # pragma: no cover - jitted
    """Max-min fair progress rates of the active flows, by progressive filling: all unfrozen
    flows rise together; a flow freezes at its cap (fmax / work) or when a resource it uses
    saturates. Flow f consumes rate[f] * bytes_fr / fmax[f] bytes per cycle of resource r.
    Writes ``rate``; returns how many resources carry an active flow (listed in ``touched``).
    Cost O(F log F + (F + R) * uses): caps are visited in sorted order, and a full pass over
    the flows happens only when a resource saturates (at most once per resource)."""
    n_t = 0
    for a in range(n_active):
        f = active[a]
        frozen[f] = False
        for k in range(res_ptr[f], res_ptr[f + 1]):
            r = res_idx[k]
            if res_nu[r] == 0:
                touched[n_t] = r
                n_t += 1
                res_w[r] = 0.0
                res_cons[r] = 0.0
            res_nu[r] += 1
            res_w[r] += res_bytes[k] / fmax[f]
    caps = np.empty(n_active, dtype=np.float64)
    for a in range(n_active):
        caps[a] = cap[active[a]]
    order = np.argsort(caps, kind="mergesort")
    level = 0.0
    ci = 0
    left = n_active
    while left > 0:
        while frozen[active[order[ci]]]:
            ci += 1
        best = cap[active[order[ci]]]
        for q in range(n_t):
            r = touched[q]
            if res_nu[r] > 0:
                lvl = (bw[r] - res_cons[r]) / res_w[r]
                if lvl < best:
                    best = lvl
        if best > level:
            level = best
        any_sat = False
        for q in range(n_t):
            r = touched[q]
            res_sat[r] = res_nu[r] > 0 and (bw[r] - res_cons[r] - level * res_w[r] <= 1e-12 * bw[r])
            any_sat = any_sat or res_sat[r]
        if any_sat:
            for a in range(n_active):
                f = active[a]
                if not frozen[f]:
                    for k in range(res_ptr[f], res_ptr[f + 1]):
                        if res_sat[res_idx[k]]:
                            freeze(
                                f,
                                level,
                                res_ptr,
                                res_idx,
                                res_bytes,
                                fmax,
                                rate,
                                frozen,
                                res_w,
                                res_cons,
                                res_nu,
                            )
                            left -= 1
                            break
        while ci < n_active:
            f = active[order[ci]]
            if frozen[f]:
                ci += 1
            elif cap[f] <= level * (1.0 + 1e-12):
                freeze(
                    f,
                    min(level, cap[f]),
                    res_ptr,
                    res_idx,
                    res_bytes,
                    fmax,
                    rate,
                    frozen,
                    res_w,
                    res_cons,
                    res_nu,
                )
                left -= 1
                ci += 1
            else:
                break
    return n_t


@njit
def cycles_to_finish(remaining, rho, total):  # pragma: no cover - jitted
    """Whole cycles until ``remaining`` bytes (of ``total``) are moved at ``rho`` per cycle:
    the first k >= 1 with remaining - k * rho <= 1e-9 * total (the epsilon absorbs float
    noise, so that 1000 bytes at 10 per cycle take 100 cycles, not 101)."""
    eps = 1e-9 * total
    k = np.int64(np.ceil((remaining - eps) / rho))
    if k < 1:
        k = 1
    if k > 1 and remaining - rho * (k - 1) <= eps:
        k -= 1
    return k


# --- the kernel ------------------------------------------------------------------------------
@njit
def run_events(
    unit,
    n_units,
    issue,
    static,
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
    resource_bw,
):  # pragma: no cover - jitted
    """Time a stream. Returns (start, end, release [n] int64, busy [n_units] int64,
    resource_busy [n_res] int64, resource_bytes [n_res] float64, n_late, first_late,
    n_unresolved). ``static``: instructions with ``issue >= 0`` start exactly then, or are
    late (counted; ``first_late`` is the smallest late index) and start when ready.
    ``n_unresolved`` > 0 means the stream deadlocked (impossible for a valid stream)."""
    n = unit.shape[0]
    n_res = resource_bw.shape[0]
    nxt = next_on_unit(unit, n_units)
    cons_ptr, cons_entry, dep_owner = consumers(dep_ptr, dep_idx, n)
    fmax = max_bytes(res_ptr, res_bytes, n)

    # constraints still unknown: the unit predecessor and each producer (start); the flow
    # phase and each START_START producer's result (end)
    start_wait = np.zeros(n, dtype=np.int64)
    end_wait = np.ones(n, dtype=np.int64)
    for i in range(n):
        if nxt[i] >= 0:
            start_wait[nxt[i]] += 1
        start_wait[i] += dep_ptr[i + 1] - dep_ptr[i]
        for k in range(dep_ptr[i], dep_ptr[i + 1]):
            if dep_kind[k] == 1:
                end_wait[i] += 1
    start_bound = np.zeros(n, dtype=np.int64)
    end_bound = np.zeros(n, dtype=np.int64)
    start = np.full(n, -1, dtype=np.int64)
    end = np.full(n, -1, dtype=np.int64)
    release = np.full(n, -1, dtype=np.int64)

    # per-flow arrays are indexed by instruction; without flows they are left empty
    nf = n if n > 0 and fmax.max() > 0 else 0
    stack = np.empty(2 * n + 1, dtype=np.int64)  # each start and each end is pushed once
    heap_t = np.empty(nf + 1, dtype=np.int64)  # each flow is pushed once
    heap_i = np.empty(nf + 1, dtype=np.int64)
    state = np.zeros(4, dtype=np.int64)
    state[3] = -1
    for i in range(n):
        if start_wait[i] == 0:
            stack[state[0]] = i
            state[0] += 1

    # flows: remaining progress (fmax-bytes), rate, cap, finish cycle; per resource scratch
    remaining = np.zeros(nf, dtype=np.float64)
    rate = np.zeros(nf, dtype=np.float64)
    cap = np.full(nf, np.inf)
    for i in range(nf):
        if fmax[i] > 0 and work[i] > 0:
            cap[i] = fmax[i] / work[i]
    finish = np.zeros(nf, dtype=np.int64)
    frozen = np.zeros(nf, dtype=np.bool_)
    active = np.empty(nf + 1, dtype=np.int64)
    n_active = 0
    res_w = np.zeros(n_res, dtype=np.float64)
    res_cons = np.zeros(n_res, dtype=np.float64)
    res_nu = np.zeros(n_res, dtype=np.int64)
    res_sat = np.zeros(n_res, dtype=np.bool_)
    touched = np.empty(n_res + 1, dtype=np.int64)
    n_touched = 0
    resource_busy = np.zeros(n_res, dtype=np.int64)
    resource_bytes = np.zeros(n_res, dtype=np.float64)

    big = np.iinfo(np.int64).max
    now = np.int64(0)
    next_finish = big
    changed = False
    while True:
        # fix every time that the events so far determine (flow finishes at `now` may let
        # more flows start at `now`), then start the flows due at `now`
        resolve(
            static,
            issue,
            work,
            latency,
            interval,
            fmax,
            nxt,
            cons_ptr,
            cons_entry,
            dep_owner,
            dep_kind,
            dep_lag,
            start,
            end,
            release,
            start_bound,
            start_wait,
            end_bound,
            end_wait,
            stack,
            heap_t,
            heap_i,
            state,
        )
        while state[1] > 0 and heap_t[0] == now:
            f = heap_pop(heap_t, heap_i, state)
            active[n_active] = f
            n_active += 1
            remaining[f] = fmax[f]
            for k in range(res_ptr[f], res_ptr[f + 1]):
                resource_bytes[res_idx[k]] += res_bytes[k]
            changed = True
        if changed:  # the set of active flows changed: new fair rates, new finish cycles
            changed = False
            n_touched = 0
            next_finish = big
            if n_active > 0:
                n_touched = fair_rates(
                    active,
                    n_active,
                    res_ptr,
                    res_idx,
                    res_bytes,
                    fmax,
                    cap,
                    resource_bw,
                    rate,
                    frozen,
                    res_w,
                    res_cons,
                    res_nu,
                    res_sat,
                    touched,
                )
                for a in range(n_active):
                    f = active[a]
                    finish[f] = now + cycles_to_finish(remaining[f], rate[f], fmax[f])
                    if finish[f] < next_finish:
                        next_finish = finish[f]

        # the next event: a flow finishing or a flow starting
        t = next_finish if n_active > 0 else big
        if state[1] > 0 and heap_t[0] < t:
            t = heap_t[0]
        if t == big:
            break
        if n_active > 0:  # move bytes at the current rates over [now, t)
            for a in range(n_active):
                remaining[active[a]] -= rate[active[a]] * (t - now)
            for q in range(n_touched):
                resource_busy[touched[q]] += t - now
        now = t
        a = 0
        while a < n_active:  # flows done at `now`: their result is ready latency later
            f = active[a]
            if finish[f] == now:
                n_active -= 1
                active[a] = active[n_active]
                bound_end(f, now + latency[f], end_bound, end_wait, stack, state)
                changed = True
            else:
                a += 1

    busy = np.zeros(n_units, dtype=np.int64)
    n_unresolved = 0
    for i in range(n):
        if end[i] < 0 or release[i] < 0:
            n_unresolved += 1
        else:
            busy[unit[i]] += release[i] - start[i]
    return (
        start,
        end,
        release,
        busy,
        resource_busy,
        resource_bytes,
        state[2],
        state[3],
        n_unresolved,
    )
