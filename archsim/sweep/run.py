"""Run a sweep: simulate every point not yet in the output table, on a local process pool
or a Dask cluster, appending one row per finished point (``archsim.sweep.store``)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from archsim.core.errors import ArchsimError
from archsim.sweep.grid import SweepPoint
from archsim.sweep.store import open_store, table_columns

# kept for callers that list a CSV table's fixed columns (the set keys come between)
COLUMNS = ["point_id"]


class _PointTimeout(Exception):
    """A point ran past ``--point-timeout`` (raised by the alarm in the worker)."""


def _alarm(fired: list[bool]):
    """A SIGALRM handler that records the timeout, then interrupts the point. The record
    counts even where the exception is swallowed (a handler landing in a garbage-collection
    or weakref callback prints and drops it): the point is still a timeout."""

    def handler(signum, frame):  # pragma: no cover - runs in a signal handler
        fired[0] = True
        raise _PointTimeout

    return handler


def resolved_key(point: SweepPoint, digests: dict | None = None) -> tuple[str, str, str]:
    """(point key, arch digest, model digest): the key hashes the point's scenario with its
    resolved arch config and model spec, so a changed preset or model reruns the point.
    ``digests`` keeps the digests of the configs and models already resolved (one sweep's
    points share a few)."""
    from archsim.config import load_arch
    from archsim.graph.model import load_model

    digests = {} if digests is None else digests
    which = ("arch", point.arch, json.dumps(point.overrides, sort_keys=True))
    arch = _digest(digests, which, lambda: load_arch(point.arch, dict(point.overrides)))
    model = _digest(digests, ("model", point.model), lambda: load_model(point.model))
    blob = json.dumps({"point": point.point_id, "arch": arch, "model": model}).encode()
    return hashlib.sha256(blob).hexdigest()[:16], arch, model


def _digest(digests: dict, which: tuple, load: Callable[[], Any]) -> str:
    """The digest of what ``load`` resolves ("" if it refuses), kept in ``digests``."""
    if which not in digests:
        try:
            digests[which] = load().digest()
        except ArchsimError:
            digests[which] = ""
    return digests[which]


def simulate_point(point: SweepPoint, key: str = "", timeout_s: float | None = None) -> dict:
    """One point -> one row (a refused or timed-out point is a row with its error)."""
    from archsim.pipeline import simulate

    row: dict[str, Any] = {
        "point_id": key or point.point_id,
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
        **point.overrides,
    }
    alarm = timeout_s is not None and threading.current_thread() is threading.main_thread()
    fired = [False]
    timed_out = {**row, "error": f"timed out after {timeout_s or 0:g} s (--point-timeout)"}
    if alarm:
        old = signal.signal(signal.SIGALRM, _alarm(fired))
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
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
    except _PointTimeout:
        return timed_out
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    if fired[0]:
        return timed_out
    return {
        **row,
        "chips": r.chips,
        "tp": r.tp,
        "pp": r.pp,
        "cycles": r.cycles,
        "seconds": r.seconds,
        "tokens_per_s": r.tokens_per_s,
        "tokens_per_s_per_user": r.tokens_per_s_per_user,
        "tokens_per_s_per_chip": r.tokens_per_s / r.chips,
        "bound": r.bound,
        "weight_bytes": r.weight_bytes,
        "kv_bytes": r.kv_bytes,
        "flops": r.flops,
        "compute_utilization": r.utilization["compute"],
        "bytes_by_tier": json.dumps(r.bytes_by_tier, sort_keys=True),
        "arch_digest": r.meta["arch_digest"],
        "model_digest": r.meta["model_digest"],
        "error": "",
    }


def _run_one(args: tuple) -> dict:
    point, key, timeout_s = args
    return simulate_point(point, key, timeout_s)


def _run_chunk(chunk: list[tuple]) -> list[dict]:
    return [_run_one(task) for task in chunk]


def chunks(tasks: list[tuple], workers: int) -> list[list[tuple]]:
    """The tasks cut into chunks of points that share a step graph (the same model and
    scenario; they differ in the machine, its --set keys or the chip count), so that a
    worker builds the graph once for a chunk (pipeline.step_graph). A chunk holds at most
    1/(4 x workers) of the sweep (and 16 points), so that every worker stays busy."""
    cap = max(1, min(16, len(tasks) // (4 * workers)))
    groups: dict[tuple, list[tuple]] = {}
    for task in tasks:
        p = task[0]
        groups.setdefault((p.model, p.phase, p.batch, p.ctx, p.seq, p.precision, p.layers),
                          []).append(task)  # fmt: skip
    return [g[i : i + cap] for g in groups.values() for i in range(0, len(g), cap)]


def _die_with_parent() -> None:
    """Worker initializer: end this worker when the sweep process dies, even by SIGKILL
    (Linux: the kernel signals it; elsewhere a watchdog notices the parent is gone)."""
    import time

    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the watcher thread below alone ends an orphaned worker

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _local(tasks: list[tuple], workers: int) -> Iterator[dict]:
    """In this process (one worker) or a process pool; each worker keeps its compiled
    kernels and loaded configs from one point to the next."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield _run_one(task)
        return
    # the first point runs here: it imports, compiles or loads every numba kernel the
    # sweep needs, and the forked workers inherit them instead of each paying that again
    yield _run_one(tasks[0])
    import multiprocessing

    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                      else None)  # fmt: skip
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                             initializer=_die_with_parent) as pool:  # fmt: skip
        futures = [pool.submit(_run_chunk, c) for c in chunks(tasks[1:], workers)]
        for fut in as_completed(futures):
            yield from fut.result()


def _dask(tasks: list[tuple], scheduler: str, workers: int) -> Iterator[dict]:
    """On a Dask cluster: ``scheduler`` is ``tcp://host:port`` of a running scheduler, or
    ``local`` for a LocalCluster of ``workers`` processes started here."""
    try:
        from distributed import Client, LocalCluster
        from distributed import as_completed as dask_completed
    except ImportError:
        raise ArchsimError(
            "Dask executors need the cluster extra: pip install 'archsim[cluster]'"
        ) from None
    cluster = None
    try:
        if scheduler == "local":
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None)  # fmt: skip
            client = Client(cluster)
        else:
            client = Client(scheduler, timeout=10)
    except (OSError, TimeoutError) as exc:
        if cluster is not None:
            cluster.close()
        raise ArchsimError(f"cannot reach the Dask scheduler {scheduler}: {exc}") from None
    try:
        futures = client.map(_run_chunk, chunks(tasks, workers), pure=False)
        for fut in dask_completed(futures):
            yield from fut.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _swept(points: list[SweepPoint]) -> list[str]:
    """Scenario fields and set keys that take more than one value in the grid."""
    keys = [k for k in ("arch", "model", "phase", "batch", "ctx", "seq", "precision", "chips",
                        "layers") if len({getattr(p, k) for p in points}) > 1]  # fmt: skip
    over = sorted({k for p in points for k in p.overrides})
    return keys + [k for k in over if len({json.dumps(p.overrides.get(k)) for p in points}) > 1]


def _label(row: dict[str, Any], swept: list[str]) -> str:
    names = {"chips": "chips_arg"}
    return " ".join(f"{k}={row.get(names.get(k, k))}" for k in swept) or row["arch"]


def _set_kinds(points: list[SweepPoint]) -> tuple[list[str], dict[str, str]]:
    keys = sorted({k for p in points for k in p.overrides})
    kinds = {}
    for k in keys:
        values = [p.overrides.get(k) for p in points]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        kinds[k] = "float" if numeric else "str"
    return keys, kinds


def run_sweep(
    points: list[SweepPoint],
    out: str | Path,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
    scheduler: str | None = None,
    point_timeout_s: float | None = None,
    show_bar: bool = False,
) -> dict[str, int]:
    """Simulate every point not already in ``out``; returns counts (done, skipped, failed).

    ``workers``: local processes (1: in this process); ``scheduler``: ``local`` (a Dask
    LocalCluster of ``workers`` processes) or ``tcp://host:port`` (a running Dask
    scheduler). ``point_timeout_s`` bounds each point (local executors). ``progress`` gets
    one line per finished point naming the swept keys' values; ``show_bar`` draws a rich
    progress bar on stderr instead."""
    if workers < 1:
        raise ArchsimError(f"--workers must be at least 1, got {workers}")
    if point_timeout_s is not None and point_timeout_s <= 0:
        raise ArchsimError(f"--point-timeout must be positive, got {point_timeout_s}")
    set_keys, kinds = _set_kinds(points)
    store = open_store(out, table_columns(set_keys, kinds))
    seen = store.done_keys()
    tasks, digests = [], {}
    for p in points:
        key = resolved_key(p, digests)[0]
        if key not in seen:
            seen.add(key)  # a grid listing a point twice runs it once
            tasks.append((p, key, point_timeout_s))
    skipped = len(points) - len(tasks)
    log = progress or (lambda msg: print(msg, file=sys.stderr))
    log(f"sweep: {len(points)} points, {skipped} already in {out}, {len(tasks)} to run")
    swept = _swept(points)
    rows = _dask(tasks, scheduler, workers) if scheduler else _local(tasks, workers)
    failed = 0
    bar = _bar(len(tasks)) if show_bar and tasks else None
    try:
        for i, row in enumerate(rows, 1):
            store.append(row)
            failed += bool(row["error"])
            line = f"[{i}/{len(tasks)}] {_label(row, swept)}: " + (
                f"error: {row['error']}" if row["error"] else f"{row['seconds']:.6g} s"
            )
            if bar is not None:
                bar[0].update(bar[1], advance=1, description=line[:60])
            else:
                log(line)
    finally:
        store.close()
        if bar is not None:
            bar[0].stop()
    return {"done": len(tasks), "skipped": skipped, "failed": failed}


def _bar(total: int):
    """A rich progress bar on stderr: points done, rate and time left."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed or 0.0:.1f} pt/s")

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
        TimeRemainingColumn(), console=Console(stderr=True),
    )  # fmt: skip
    progress.start()
    return progress, progress.add_task("sweep", total=total)
