"""Run a sweep, appending one row per finished point to CSV or JSON-lines output."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from archsim.core.errors import ArchsimError
from archsim.outputs import check_target
from archsim.sweep.grid import SweepPoint

COLUMNS = [
    "point_id",
    "arch",
    "model",
    "phase",
    "batch",
    "ctx",
    "seq",
    "precision",
    "chips_arg",
    "layers",
    "overrides",
    "chips",
    "tp",
    "pp",
    "cycles",
    "seconds",
    "tokens_per_s",
    "tokens_per_s_per_user",
    "bound",
    "weight_bytes",
    "kv_bytes",
    "flops",
    "bytes_by_tier",
    "error",
]


def simulate_point(point: SweepPoint) -> dict[str, Any]:
    """One point -> one row (a refused point is a row with its error, not a crash)."""
    from archsim.pipeline import simulate

    row: dict[str, Any] = {
        "point_id": point.point_id,
        "arch": point.arch,
        "model": point.model,
        "phase": point.phase,
        "batch": point.batch,
        "ctx": point.ctx,
        "seq": point.seq,
        "precision": point.precision,
        "chips_arg": point.chips,
        "layers": point.layers,
        "overrides": json.dumps(point.overrides, sort_keys=True),
    }
    try:
        r = simulate(
            point.arch,
            point.model,
            phase=point.phase,
            batch=int(point.batch),
            ctx=int(point.ctx),
            seq=int(point.seq),
            precision=point.precision,
            chips=point.chips,
            layers=None if point.layers == "all" else int(point.layers),
            overrides=dict(point.overrides),
        )
    except (ArchsimError, ValueError) as exc:
        return {**row, "error": str(exc)}
    return {
        **row,
        "chips": r.chips,
        "tp": r.tp,
        "pp": r.pp,
        "cycles": r.cycles,
        "seconds": r.seconds,
        "tokens_per_s": r.tokens_per_s,
        "tokens_per_s_per_user": r.tokens_per_s_per_user,
        "bound": r.bound,
        "weight_bytes": r.weight_bytes,
        "kv_bytes": r.kv_bytes,
        "flops": r.flops,
        "bytes_by_tier": json.dumps(r.bytes_by_tier, sort_keys=True),
        "error": "",
    }


def done_points(out: Path) -> set[str]:
    """Point ids already in ``out``; a partial last line from a killed run is not counted
    (it is trimmed before appending). A file that is not an archsim sweep table of this
    format is refused, never appended to."""
    if not out.exists():
        return set()
    try:
        text = out.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ArchsimError(f"cannot read sweep table {out}: {exc}") from None
    if not text:
        return set()
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
    not_ours = ArchsimError(
        f"{out} exists but is not an archsim sweep table; choose another --out "
        "(nothing was written)"
    )
    if out.suffix == ".jsonl":
        ids = set()
        for line in complete.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise not_ours from None
            if not isinstance(row, dict) or set(row) != set(COLUMNS):
                raise not_ours
            ids.add(row["point_id"])
        return ids
    rows = list(csv.reader(complete.splitlines()))
    if not rows and ",".join(COLUMNS).startswith(text):
        return set()  # only a cut-off header: ours, and the appender rewrites it
    if not rows or rows[0] != COLUMNS or any(len(r) != len(COLUMNS) for r in rows[1:]):
        raise not_ours
    return {r[0] for r in rows[1:]}


class _Appender:
    """Appends rows and flushes each, so a killed sweep keeps every finished point. The
    table is ours (``done_points`` checked it); a cut-off last line is trimmed first."""

    def __init__(self, out: Path) -> None:
        self.out = out
        if out.exists():
            self._trim_partial_line()
        fresh = not out.exists() or out.stat().st_size == 0
        try:
            self.fh = out.open("a", newline="")
        except OSError as exc:
            raise ArchsimError(f"cannot write sweep table {out}: {exc.strerror}") from None
        self.writer = None
        if out.suffix != ".jsonl":
            self.writer = csv.DictWriter(self.fh, fieldnames=COLUMNS, extrasaction="ignore")
            if fresh:
                self.writer.writeheader()
                self.fh.flush()

    def _trim_partial_line(self) -> None:
        data = self.out.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.out.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def write(self, row: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.writerow(row)
        else:
            self.fh.write(json.dumps(row, sort_keys=True) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def _die_with_parent() -> None:
    """Worker initializer: end this worker when the sweep process dies, even by SIGKILL
    (Linux: the kernel signals it; elsewhere a watchdog notices the parent is gone)."""
    import os
    import signal
    import threading
    import time

    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _results(points: list[SweepPoint], workers: int) -> Iterator[dict[str, Any]]:
    if workers <= 1:
        for p in points:
            yield simulate_point(p)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent) as pool:
        futures = [pool.submit(simulate_point, p) for p in points]
        for fut in as_completed(futures):
            yield fut.result()


def run_sweep(
    points: list[SweepPoint],
    out: str | Path,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Simulate every point not already in ``out``; returns counts (done, skipped, failed)."""
    out = Path(out)
    if out.suffix not in (".csv", ".jsonl"):
        raise ArchsimError(f"sweep output must end in .csv or .jsonl, got {out.name!r}")
    check_target(out, "sweep table")
    seen = done_points(out)
    todo = [p for p in points if p.point_id not in seen]
    log = progress or (lambda msg: print(msg, file=sys.stderr))
    log(
        f"sweep: {len(points)} points, {len(points) - len(todo)} already in {out}, "
        f"{len(todo)} to run"
    )
    appender = _Appender(out)
    failed = 0
    try:
        for i, row in enumerate(_results(todo, workers), 1):
            appender.write(row)
            failed += bool(row["error"])
            log(
                f"[{i}/{len(todo)}] {row['arch']} {row['model']} batch {row['batch']}: "
                + (f"error: {row['error']}" if row["error"] else f"{row['seconds']:.6g} s")
            )
    finally:
        appender.close()
    return {"done": len(todo), "skipped": len(points) - len(todo), "failed": failed}
