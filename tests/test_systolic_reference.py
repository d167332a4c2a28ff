"""The matx-like fold formulas against a cycle-stepped systolic array (the reference lives in
this file only; it shares no code with archsim).

The reference moves operands one PE per cycle through registers and computes real values: a
run is only counted when its outputs equal A @ B. Its edge controller follows local
readiness rules (serial: a fold starts after the previous fold's last result; double-
buffered: the next stationary tile shifts into shadow registers once the current fold has
started, and the next fold's stream follows the current one as soon as the shadow of column 0
holds its tile); the timing emerges from those rules and the register transfers, and the
array checks every hazard (a PE multiplying with another fold's weight, a shadow register
overwritten before its PE took it, misaligned partial sums). The count is cycles from the
first register transfer to the last result leaving the array, inclusive.

Weight-stationary (and input-stationary, the same machine with the operands' roles swapped):
the stationary tile enters from the top edge one row per cycle (column c c cycles after
column 0), the streamed operand from the left edge (row r r cycles late), partial sums move
down and leave at the bottom. Output-stationary: A rows enter from the left, B columns from
the top, every PE accumulates its output and hands it to the output buffer after its last
MAC.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from archsim.families.systolic.timing import IS, OS, WS, fold_cycles

pytestmark = pytest.mark.cycle_exact


class HazardError(AssertionError):
    """The array would compute a wrong value at this cycle."""


def _stationary_run(tiles, streams, rows, cols, overlap, force_start=None):
    """A weight-stationary array runs ``len(tiles)`` folds in order. ``tiles[f]``: [rows,
    cols] stationary values; ``streams[f]``: [T, rows] streamed rows. Returns (cycles,
    outputs) with outputs[f] = [T, cols] column sums as they left the bottom edge.
    ``force_start``: {fold: cycle} overrides the controller's stream start (tests)."""
    force_start = force_start or {}
    n_f = len(tiles)
    wl = [[None] * cols for _ in range(rows)]  # weight chain registers: (fold, value)
    ws = [[None] * cols for _ in range(rows)]  # shadow: (fold, value)
    wa = [[None] * cols for _ in range(rows)]  # active: (fold, value)
    a = [[None] * cols for _ in range(rows)]  # streamed operand: (fold, t, value)
    p = [[None] * cols for _ in range(rows)]  # partial sums: (fold, t, value)
    outputs = [np.zeros((len(s), cols)) for s in streams]
    got = [np.zeros((len(s), cols), dtype=bool) for s in streams]
    load_start = [None] * n_f  # cycle fold f's weights start entering column 0
    in_start = [None] * n_f  # cycle fold f's first streamed row enters row 0
    done = [None] * n_f  # cycle fold f's last output left
    load_start[0] = 0
    cycle, last = 0, -1
    while done[-1] is None:
        if cycle > 100000:
            raise AssertionError("reference did not finish")
        # controller: start loading the next fold, start streaming the next fold
        for f in range(n_f):
            if load_start[f] is None and f > 0:
                prev_loaded = load_start[f - 1] is not None and cycle >= load_start[f - 1] + rows
                if overlap:
                    ready = prev_loaded and in_start[f - 1] is not None
                else:
                    ready = done[f - 1] is not None
                if ready:
                    load_start[f] = cycle
            if in_start[f] is None and load_start[f] is not None:
                prev_in = f == 0 or (
                    in_start[f - 1] is not None and cycle >= in_start[f - 1] + len(streams[f - 1])
                )
                if not overlap and f > 0:
                    prev_in = prev_in and done[f - 1] is not None
                shadow0 = ws[0][0] is not None and ws[0][0][0] == f
                if (prev_in and shadow0 and f not in force_start) or force_start.get(f) == cycle:
                    in_start[f] = cycle
        # register transfers of this cycle (new state from the old one)
        n_wl = [[None] * cols for _ in range(rows)]
        n_ws = [row[:] for row in ws]
        n_wa = [row[:] for row in wa]
        n_a = [[None] * cols for _ in range(rows)]
        n_p = [[None] * cols for _ in range(rows)]
        for c in range(cols):
            for f in range(n_f):  # the top of column c takes row rows-1-i at load + c + i
                if load_start[f] is not None:
                    i = cycle - load_start[f] - c
                    if 0 <= i < rows:
                        n_wl[0][c] = (f, tiles[f][rows - 1 - i][c])
            for r in range(1, rows):
                n_wl[r][c] = wl[r - 1][c]
        for r in range(rows):
            for f in range(n_f):  # row r takes element t at in_start + t + r
                if in_start[f] is not None:
                    t = cycle - in_start[f] - r
                    if 0 <= t < len(streams[f]):
                        n_a[r][0] = (f, t, streams[f][t][r])
            for c in range(1, cols):
                n_a[r][c] = a[r][c - 1]
        for r in range(rows):
            for c in range(cols):
                tok = n_a[r][c]
                if tok is None:
                    continue
                f, t, x = tok
                if n_wa[r][c] is None or n_wa[r][c][0] != f:  # first input of a fold: swap
                    if ws[r][c] is None or ws[r][c][0] != f:
                        raise HazardError(f"cycle {cycle}: PE({r},{c}) has no weight of fold {f}")
                    n_wa[r][c] = ws[r][c]
                above = 0.0
                if r > 0:
                    if p[r - 1][c] is None or p[r - 1][c][:2] != (f, t):
                        raise HazardError(f"cycle {cycle}: PE({r},{c}) partial sum misaligned")
                    above = p[r - 1][c][2]
                n_p[r][c] = (f, t, above + x * n_wa[r][c][1])
        for c in range(cols):  # the chain latches into the shadow once full
            for f in range(n_f):
                if load_start[f] is not None and cycle == load_start[f] + c + rows - 1:
                    for r in range(rows):
                        old = ws[r][c]
                        if old is not None and (n_wa[r][c] is None or n_wa[r][c][0] != old[0]):
                            raise HazardError(f"cycle {cycle}: shadow ({r},{c}) overwritten")
                        n_ws[r][c] = n_wl[r][c]
                        assert n_ws[r][c][0] == f
        for c in range(cols):
            tok = n_p[rows - 1][c]
            if tok is not None:
                f, t, v = tok
                outputs[f][t, c], got[f][t, c] = v, True
                last = cycle
                if got[f].all():
                    done[f] = cycle
        wl, ws, wa, a, p = n_wl, n_ws, n_wa, n_a, n_p
        cycle += 1
    return last + 1, outputs


def _os_run(a_tiles, b_tiles, rows, cols, overlap):
    """An output-stationary array runs folds in order: ``a_tiles[f]`` [rows, T] enters from
    the left (row r r cycles late), ``b_tiles[f]`` [T, cols] from the top (column c c cycles
    late). Returns (cycles, outputs[f] = [rows, cols])."""
    n_f = len(a_tiles)
    a = [[None] * cols for _ in range(rows)]  # (fold, k, value)
    b = [[None] * cols for _ in range(rows)]
    acc = [[None] * cols for _ in range(rows)]  # (fold, count, value)
    outputs = [np.zeros((rows, cols)) for _ in range(n_f)]
    start = [None] * n_f
    done = [None] * n_f
    cycle, last = 0, -1
    while done[-1] is None:
        for f in range(n_f):
            if start[f] is None:
                if f == 0:
                    start[f] = cycle
                elif overlap and start[f - 1] is not None:
                    if cycle >= start[f - 1] + a_tiles[f - 1].shape[1]:
                        start[f] = cycle
                elif done[f - 1] is not None:
                    start[f] = cycle
        n_a = [[None] * cols for _ in range(rows)]
        n_b = [[None] * cols for _ in range(rows)]
        for r in range(rows):
            for f in range(n_f):
                if start[f] is not None:
                    k = cycle - start[f] - r
                    if 0 <= k < a_tiles[f].shape[1]:
                        n_a[r][0] = (f, k, a_tiles[f][r, k])
            for c in range(1, cols):
                n_a[r][c] = a[r][c - 1]
        for c in range(cols):
            for f in range(n_f):
                if start[f] is not None:
                    k = cycle - start[f] - c
                    if 0 <= k < b_tiles[f].shape[0]:
                        n_b[0][c] = (f, k, b_tiles[f][k, c])
            for r in range(1, rows):
                n_b[r][c] = b[r - 1][c]
        for r in range(rows):
            for c in range(cols):
                x, y = n_a[r][c], n_b[r][c]
                if x is None and y is None:
                    continue
                if x is None or y is None or x[:2] != y[:2]:
                    raise HazardError(f"cycle {cycle}: PE({r},{c}) operands misaligned")
                f, k = x[:2]
                if acc[r][c] is None or acc[r][c][0] != f:  # a new fold: hand the old one off
                    acc[r][c] = (f, 0, 0.0)
                _, count, v = acc[r][c]
                acc[r][c] = (f, count + 1, v + x[2] * y[2])
                if count + 1 == a_tiles[f].shape[1]:  # last MAC: the output leaves now
                    outputs[f][r, c] = acc[r][c][2]
                    last = cycle
                    if (r, c) == (rows - 1, cols - 1):
                        done[f] = cycle
        a, b = n_a, n_b
        cycle += 1
    return last + 1, outputs


def reference_gemm(A, B, rows, cols, dataflow, overlap, split=1, arrays=1):
    """Cycles of A @ B on ``arrays`` arrays split into split x split sub-arrays, every
    sub-array a cycle-stepped reference running its share of the folds (dealt round robin,
    the streamed dimension cut into parts on idle sub-arrays); checks the product."""
    M, K = A.shape
    N = B.shape[1]
    r, c = rows // split, cols // split
    n_sub = arrays * split * split
    if dataflow == WS:
        stat, stream = B, A  # stationary [K, N] (rows x cols), streamed rows of A [M, K]
    elif dataflow == IS:
        stat, stream = A.T, B.T  # stationary [K, M], streamed rows of B^T [N, K]
    sr, sc, t = {WS: (K, N, M), OS: (M, N, K), IS: (K, M, N)}[dataflow]
    folds = [(i, j) for j in range(math.ceil(sc / c)) for i in range(math.ceil(sr / r))]
    q = min(t, n_sub // len(folds)) if len(folds) < n_sub else 1
    part = math.ceil(t / q)
    items = [(i, j, lo, min(lo + part, t)) for (i, j) in folds for lo in range(0, t, part)]
    per_sub = [items[s::n_sub] for s in range(n_sub)]
    result = np.zeros((M, N))
    worst = 0
    for mine in per_sub:
        if not mine:
            continue
        if dataflow == OS:
            a_t, b_t = [], []
            for i, j, lo, hi in mine:
                at = np.zeros((r, hi - lo))
                blk = A[i * r : (i + 1) * r, lo:hi]
                at[: blk.shape[0]] = blk
                bt = np.zeros((hi - lo, c))
                blk = B[lo:hi, j * c : (j + 1) * c]
                bt[:, : blk.shape[1]] = blk
                a_t.append(at)
                b_t.append(bt)
            cyc, outs = _os_run(a_t, b_t, r, c, overlap)
            for (i, j, _, _), o in zip(mine, outs, strict=True):
                rr, cc = min(r, M - i * r), min(c, N - j * c)
                result[i * r : i * r + rr, j * c : j * c + cc] += o[:rr, :cc]
        else:
            tiles, streams = [], []
            for i, j, lo, hi in mine:
                tile = np.zeros((r, c))
                blk = stat[i * r : (i + 1) * r, j * c : (j + 1) * c]
                tile[: blk.shape[0], : blk.shape[1]] = blk
                st = np.zeros((hi - lo, r))
                blk = stream[lo:hi, i * r : (i + 1) * r]
                st[:, : blk.shape[1]] = blk
                tiles.append(tile)
                streams.append(st)
            cyc, outs = _stationary_run(tiles, streams, r, c, overlap)
            for (_, j, lo, hi), o in zip(mine, outs, strict=True):
                cc = min(c, sc - j * c)
                if dataflow == WS:  # rows of C are stream positions, columns are n
                    result[lo:hi, j * c : j * c + cc] += o[:, :cc]
                else:  # IS: rows of the output are n, columns are m
                    result[j * c : j * c + cc, lo:hi] += o[:, :cc].T
        worst = max(worst, cyc)
    np.testing.assert_allclose(result, A @ B, rtol=1e-9, atol=1e-9)
    return worst


def _operands(m, n, k, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(-4, 5, (m, k)).astype(float), rng.integers(-4, 5, (k, n)).astype(float)


# (M, N, K, R, C): full and partial folds, square and rectangular arrays, T < R and T > R
SHAPES = [
    (3, 6, 5, 4, 4),
    (7, 5, 9, 4, 3),
    (2, 3, 2, 4, 4),
    (9, 4, 4, 2, 3),
    (1, 8, 8, 4, 4),
    (6, 7, 3, 3, 5),
]


# ((M, N, K, R, C), split, arrays)
SPLIT_CASES = [
    ((1, 16, 16, 8, 8), 2, 1),
    ((5, 9, 12, 8, 8), 2, 2),
    ((8, 2, 2, 4, 4), 2, 1),
    ((2, 2, 9, 4, 4), 2, 1),
    ((2, 12, 6, 4, 4), 1, 3),
]


@pytest.mark.parametrize("dataflow", [WS, OS, IS], ids=["ws", "os", "is"])
@pytest.mark.parametrize("overlap", [False, True], ids=["serial", "double-buffered"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fold_formula_equals_cycle_stepped_array(shape, overlap, dataflow):
    """archsim's ``fold_cycles`` (one array, no split) equals the cycles the cycle-stepped
    array takes for the same GEMM, dataflow and fold mode, cycle for cycle, and the array's
    product is A @ B. Fails if a fill, skew, drain or preload term of the formula is off by
    one, or if the double-buffered overlap claims more than the registers allow."""
    m, n, k, rows, cols = shape
    A, B = _operands(m, n, k, seed=sum(shape))
    ref = reference_gemm(A, B, rows, cols, dataflow, overlap)
    assert fold_cycles(m, n, k, 1, dataflow, 1, overlap, 1.0, rows, cols, 1, 1) == ref


@pytest.mark.parametrize("dataflow", [WS, OS, IS], ids=["ws", "os", "is"])
@pytest.mark.parametrize("overlap", [False, True], ids=["serial", "double-buffered"])
@pytest.mark.parametrize(
    "shape, split, arrays",
    SPLIT_CASES,
    ids=["m1-split2", "split2x2arrays", "ws-stream-cut", "os-reduction-cut", "3arrays"],
)
def test_split_and_arrays_equal_independent_reference_arrays(
    shape, split, arrays, overlap, dataflow
):
    """With ``arrays`` arrays split s x s, the formula equals the busiest of the independent
    cycle-stepped sub-arrays its folds are dealt to (round robin; when there are fewer folds
    than sub-arrays, the streamed dimension is cut into parts on copies of the tile). Fails
    if the fold distribution or the streamed-dimension split of the formula is wrong."""
    m, n, k, rows, cols = shape
    A, B = _operands(m, n, k, seed=7 * sum(shape) + split)
    ref = reference_gemm(A, B, rows, cols, dataflow, overlap, split, arrays)
    got = fold_cycles(m, n, k, 1, dataflow, split, overlap, 1.0, rows, cols, arrays, 1)
    assert got == ref


def test_reference_catches_a_too_early_fold():
    """The reference checks the hardware, not the formula: two weight-stationary folds of one
    streamed row on a 4 x 4 array take P + (f - 1) max(T, P) + T + R + C - 2 = 4 + 4 + 1 + 6
    = 15 cycles; forcing fold 1's row in one cycle before column 0's shadow holds its weights
    is a hazard."""
    A, B = _operands(1, 4, 8, seed=3)
    tiles, streams = [B[:4], B[4:]], [A[:, :4], A[:, 4:]]
    cycles, _ = _stationary_run(tiles, streams, 4, 4, overlap=True)
    assert cycles == 15
    with pytest.raises(HazardError, match="no weight of fold 1"):
        _stationary_run(tiles, streams, 4, 4, overlap=True, force_start={1: 7})


@pytest.mark.slow
@pytest.mark.parametrize("dataflow", [WS, OS, IS], ids=["ws", "os", "is"])
@pytest.mark.parametrize("overlap", [False, True], ids=["serial", "double-buffered"])
def test_fold_formula_on_random_small_gemms(dataflow, overlap):
    """40 random shapes and arrays per dataflow and mode (slow tier)."""
    rng = np.random.default_rng(dataflow * 2 + overlap)
    for _ in range(40):
        m, n, k = (int(x) for x in rng.integers(1, 11, 3))
        rows, cols = (int(x) for x in rng.integers(1, 6, 2))
        A, B = _operands(m, n, k, seed=int(rng.integers(1 << 30)))
        ref = reference_gemm(A, B, rows, cols, dataflow, overlap)
        assert fold_cycles(m, n, k, 1, dataflow, 1, overlap, 1.0, rows, cols, 1, 1) == ref


def test_the_shapes_cover_partial_folds_and_stream_splits():
    """The fast cases include folds that use part of the array on both sides, and split
    cases with fewer folds than sub-arrays (the streamed dimension cut into parts)."""
    assert any(k % r and n % c for (_, n, k, r, c) in SHAPES)
    assert any(
        math.ceil(k / (r // s)) * math.ceil(n / (c // s)) < a * s * s
        for (_, n, k, r, c), s, a in SPLIT_CASES
    )
