"""Sweep result tables: one row per design point, appended as points finish, resumable.

The format follows the extension: ``.csv`` and ``.jsonl`` (one flushed line per row),
``.h5``/``.hdf5`` (one resizable dataset per column under ``/table``, rows written in batches
at most every half second, the committed row count in an attribute written after each
batch), ``.parquet`` (rewritten atomically at most once a second and at the end). Rows
finished but not yet written when a sweep is killed are simulated again on the rerun.
Every format:

* a rerun skips the points whose key is already in the table;
* a record cut off by a kill (a partial CSV/JSONL line, HDF5 datasets longer than the
  committed count) is dropped and its point redone;
* a file that is not an archsim sweep table with these columns is refused, never appended to
  or overwritten.
"""

from __future__ import annotations

import csv
import json
import math
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from archsim.core.errors import ArchsimError
from archsim.outputs import check_target, write_with

# column -> kind: "int", "float" or "str" (a set-key column is "float" or "str")
INPUT_COLUMNS = {
    "point_id": "str",
    "arch": "str",
    "model": "str",
    "phase": "str",
    "batch": "int",
    "ctx": "int",
    "seq": "int",
    "precision": "str",
    "chips_arg": "str",
    "layers": "str",
    "overrides": "str",
}
RESULT_COLUMNS = {
    "chips": "int",
    "tp": "int",
    "pp": "int",
    "cycles": "int",
    "seconds": "float",
    "tokens_per_s": "float",
    "tokens_per_s_per_user": "float",
    "tokens_per_s_per_chip": "float",
    "bound": "str",
    "weight_bytes": "float",
    "kv_bytes": "float",
    "flops": "float",
    "compute_utilization": "float",
    "bytes_by_tier": "str",
    "arch_digest": "str",
    "model_digest": "str",
    "error": "str",
}
FORMATS = (".csv", ".jsonl", ".h5", ".hdf5", ".parquet")


def table_columns(set_keys: list[str], set_kinds: dict[str, str]) -> dict[str, str]:
    """Every column of a sweep's table: inputs, one per ``--set`` key, results."""
    return {**INPUT_COLUMNS, **{k: set_kinds[k] for k in set_keys}, **RESULT_COLUMNS}


def _empty(kind: str) -> Any:
    return {"int": -1, "float": math.nan, "str": ""}[kind]


def _typed(value: Any, kind: str) -> Any:
    if value is None or value == "":
        return _empty(kind)
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    return value if isinstance(value, str) else json.dumps(value)


def _not_ours(out: Path) -> ArchsimError:
    return ArchsimError(
        f"{out} exists but is not an archsim sweep table with this sweep's columns; choose "
        "another --out (nothing was written)"
    )


class Store(ABC):
    """One format of table: the columns, the keys already present, append and close."""

    def __init__(self, out: Path, columns: dict[str, str]) -> None:
        self.out, self.columns = out, columns

    @abstractmethod
    def done_keys(self) -> set[str]:
        """Keys of the points already in the table."""

    @abstractmethod
    def append(self, row: dict[str, Any]) -> None:
        """Add one finished point (durably, as far as the format allows)."""

    @abstractmethod
    def close(self) -> None:
        """Finish writing (formats that buffer write here)."""

    def row(self, raw: dict[str, Any]) -> dict[str, Any]:
        return {c: _typed(raw.get(c), kind) for c, kind in self.columns.items()}


class _TextStore(Store):
    """CSV and JSONL: one flushed line per row; a cut-off last line is trimmed first."""

    def __init__(self, out: Path, columns: dict[str, str]) -> None:
        super().__init__(out, columns)
        self.keys = self._read()
        self._trim()
        fresh = not out.exists() or out.stat().st_size == 0
        try:
            self.fh = out.open("a", newline="")
        except OSError as exc:
            raise ArchsimError(f"cannot write sweep table {out}: {exc.strerror}") from None
        self.writer = None
        if out.suffix == ".csv":
            self.writer = csv.DictWriter(self.fh, fieldnames=list(columns))
            if fresh:
                self.writer.writeheader()
                self.fh.flush()

    def _complete_text(self) -> str:
        if not self.out.exists():
            return ""
        try:
            text = self.out.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ArchsimError(f"cannot read sweep table {self.out}: {exc}") from None
        return text if text.endswith("\n") else text[: text.rfind("\n") + 1]

    def _read(self) -> set[str]:
        text = self._complete_text()
        if not text:
            if self.out.exists() and self.out.stat().st_size:  # only a cut-off first line
                partial = self.out.read_text()
                if self.out.suffix == ".csv" and ",".join(self.columns).startswith(partial):
                    return set()
                if self.out.suffix == ".jsonl" and partial.startswith("{"):
                    return set()
                raise _not_ours(self.out)
            return set()
        if self.out.suffix == ".jsonl":
            keys = set()
            for line in text.splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise _not_ours(self.out) from None
                if not isinstance(row, dict) or set(row) != set(self.columns):
                    raise _not_ours(self.out)
                keys.add(row["point_id"])
            return keys
        rows = list(csv.reader(text.splitlines()))
        if rows[0] != list(self.columns) or any(len(r) != len(self.columns) for r in rows[1:]):
            raise _not_ours(self.out)
        return {r[0] for r in rows[1:]}

    def _trim(self) -> None:
        if not self.out.exists():
            return
        data = self.out.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.out.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def done_keys(self) -> set[str]:
        return set(self.keys)

    def append(self, row: dict[str, Any]) -> None:
        row = self.row(row)
        if self.writer is not None:
            self.writer.writerow({k: "" if _missing(v) else v for k, v in row.items()})
        else:
            self.fh.write(json.dumps(_plain(row), sort_keys=True) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def _missing(value: Any) -> bool:
    return value == -1 or (isinstance(value, float) and math.isnan(value))


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe: NaN and the int sentinel become null."""
    return {k: (None if _missing(v) else v) for k, v in row.items()}


class _Hdf5Store(Store):
    """``/table/<column>`` resizable datasets; ``/table`` attribute ``rows`` counts the
    committed rows (written after their data), so rows cut off by a kill are ignored and
    overwritten. Rows are written in batches (at most every half second, and at close) with
    the file open only while a batch is written: a kill loses at most the last half second
    of rows, which a rerun redoes, and never leaves the file open mid-sweep."""

    FLUSH_S = 0.5

    def __init__(self, out: Path, columns: dict[str, str]) -> None:
        import h5py

        super().__init__(out, columns)
        self.h5py = h5py
        self.keys: set[str] = set()
        self.pending: list[dict[str, Any]] = []
        self.last = time.monotonic()
        if out.exists():
            try:
                with h5py.File(out, "r") as f:
                    table = f["table"]
                    ours = f.attrs.get("archsim_sweep") == 1
                    cols = json.loads(table.attrs["columns"])
                    n = int(table.attrs["rows"])
                    ids = table["point_id"][:n]
            except (OSError, KeyError, ValueError, TypeError):
                raise _not_ours(out) from None
            if not ours or cols != list(columns):
                raise _not_ours(out)
            self.keys = {x.decode() if isinstance(x, bytes) else x for x in ids}
        else:
            with h5py.File(out, "w") as f:
                f.attrs["archsim_sweep"] = 1
                table = f.create_group("table")
                table.attrs["columns"] = json.dumps(list(columns))
                table.attrs["rows"] = 0
                for name, kind in columns.items():
                    dtype = {"int": "i8", "float": "f8", "str": h5py.string_dtype()}[kind]
                    table.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                                         chunks=(256,))  # fmt: skip

    def done_keys(self) -> set[str]:
        return set(self.keys)

    def append(self, row: dict[str, Any]) -> None:
        self.pending.append(self.row(row))
        if time.monotonic() - self.last >= self.FLUSH_S:
            self._flush()

    def _flush(self) -> None:
        self.last = time.monotonic()
        if not self.pending:
            return
        rows, self.pending = self.pending, []
        try:
            with self.h5py.File(self.out, "a") as f:
                table = f["table"]
                n = int(table.attrs["rows"])
                for name in self.columns:
                    ds = table[name]
                    ds.resize((n + len(rows),))
                    ds[n:] = [r[name] for r in rows]
                f.flush()
                table.attrs["rows"] = n + len(rows)
        except OSError as exc:
            raise ArchsimError(f"cannot write sweep table {self.out}: {exc}") from None

    def close(self) -> None:
        self._flush()


class _ParquetStore(Store):
    """The whole table rewritten atomically (temporary file, rename) at most once a second
    and at close: a kill loses at most the last second of rows, which a rerun redoes."""

    def __init__(self, out: Path, columns: dict[str, str]) -> None:
        super().__init__(out, columns)
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ArchsimError(
                "a .parquet sweep table needs pyarrow (pip install pyarrow); or use .h5"
            ) from None
        self.pa, self.pq = pa, pq
        self.rows: list[dict[str, Any]] = []
        if out.exists():
            try:
                table = pq.read_table(out)
                meta = table.schema.metadata or {}
            except Exception:  # noqa: BLE001 - pyarrow raises several types for a bad file
                raise _not_ours(out) from None
            if meta.get(b"archsim_sweep") != b"1" or table.column_names != list(columns):
                raise _not_ours(out)
            self.rows = table.to_pylist()
        self.keys = {r["point_id"] for r in self.rows}
        self.last = time.monotonic()

    def done_keys(self) -> set[str]:
        return set(self.keys)

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(self.row(row))
        if time.monotonic() - self.last >= 1.0:
            self._flush()

    def _flush(self) -> None:
        pa = self.pa
        types = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
        schema = pa.schema([(c, types[k]) for c, k in self.columns.items()],
                           metadata={"archsim_sweep": "1"})  # fmt: skip
        table = pa.Table.from_pylist(self.rows, schema=schema)
        write_with(self.out, lambda tmp: self.pq.write_table(table, tmp), "sweep table")
        self.last = time.monotonic()

    def close(self) -> None:
        self._flush()


def open_store(out: str | Path, columns: dict[str, str]) -> Store:
    """The table at ``out`` for these columns (created, or checked to be ours)."""
    out = Path(out)
    if out.suffix not in FORMATS:
        raise ArchsimError(f"sweep output must end in {', '.join(FORMATS)}, got {out.name!r}")
    check_target(out, "sweep table")
    if out.suffix in (".h5", ".hdf5"):
        return _Hdf5Store(out, columns)
    if out.suffix == ".parquet":
        return _ParquetStore(out, columns)
    return _TextStore(out, columns)


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Every committed row of a sweep table (any format), as dicts of plain values."""
    path = Path(path)
    if not path.is_file():
        raise ArchsimError(f"sweep table {path} not found")
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                table = f["table"]
                n = int(table.attrs["rows"])
                cols = json.loads(table.attrs["columns"])
                data = {c: table[c][:n] for c in cols}
        except (OSError, KeyError, ValueError) as exc:
            raise ArchsimError(f"{path} is not an archsim sweep table ({exc})") from None
        rows = []
        for i in range(n):
            row = {}
            for c in cols:
                v = data[c][i]
                v = v.decode() if isinstance(v, bytes) else v
                row[c] = v.item() if isinstance(v, np.generic) else v
            rows.append(_plain(row))
        return rows
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            return [_plain(r) for r in pq.read_table(path).to_pylist()]
        except Exception as exc:  # noqa: BLE001
            raise ArchsimError(f"cannot read sweep table {path}: {exc}") from None
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ArchsimError(f"cannot read sweep table {path}: {exc}") from None
    if path.suffix == ".jsonl":
        rows = []
        for line in text.splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a cut-off last line
        return rows
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
    return list(csv.DictReader(complete.splitlines()))
