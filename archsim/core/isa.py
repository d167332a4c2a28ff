"""InstructionStream: the one instruction format every family lowers to, and its Timing.

Parallel numpy arrays of equal length (not a structured dtype: numba compiles and loads them
faster, and they work under NUMBA_DISABLE_JIT), plus three CSR tables:

* dependencies: the producers of instruction ``i`` are ``dep_idx[dep_ptr[i]:dep_ptr[i+1]]``,
  each < i (program order is a topological order). ``dep_kind`` says how each one binds:
  ``END_START`` (i starts ``dep_lag`` cycles after the producer's result is ready) or
  ``START_START`` (streaming: i starts ``dep_lag`` cycles after the producer starts, and its
  result is not ready before ``dep_lag`` cycles after the producer's);
* resources: instruction ``i`` moves ``res_bytes[k]`` bytes over resource ``res_idx[k]`` for
  ``k`` in ``res_ptr[i]:res_ptr[i+1]`` (an HBM, a link, an SRAM port group, a NoC), named by
  ``resource_names``; the family's Timing gives each resource its bandwidth;
* ``issue`` is the compiler-assigned issue cycle of statically scheduled families, or -1
  where the cycle model decides.

How long an instruction takes is not in the stream: the family's timing pass returns a
:class:`Timing` (its own work, the latency after it, how long it holds its unit, and the
bandwidth of each resource) so that a config change retimes a stream without relowering it.
"""

from __future__ import annotations

import bisect
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# column -> dtype; every column has one entry per instruction
COLUMNS: dict[str, type] = {
    "opcode": np.int16,  # family opcode, named by InstructionStream.opcode_names
    "unit": np.int32,  # resource that executes it, named by unit_names
    "chip": np.int32,  # chip (or pipeline stage) it runs on
    "m": np.int64,  # sizes: meaning per opcode (GEMM m, n, k; vector length; ...)
    "n": np.int64,
    "k": np.int64,
    "g": np.int64,  # group count (batch of sequences, experts, ...)
    "h": np.int64,  # heads (attention) or a second group size
    "aux": np.int64,  # family-specific integer (tile choice, split count, hop count, ...)
    "offchip_bytes": np.float64,  # bytes to/from the off-chip tier (HBM, LPDDR, MemoryX)
    "onchip_bytes": np.float64,  # bytes to/from on-chip SRAM / L2
    "link_bytes": np.float64,  # bytes sent over chip-to-chip links
    "flops": np.float64,
    "issue": np.int64,  # static issue cycle, -1 if dynamic
    "layer": np.int32,
    "op": np.int32,  # index into op_names (the graph op it came from)
    "copy": np.int32,  # which copy of a replicated program (round x micro-batch), else 0
}

OP_COLUMN, LAYER_COLUMN = list(COLUMNS).index("op"), list(COLUMNS).index("layer")
END_START, START_START = 0, 1  # dep_kind values
_KIND_MARK = {END_START: "", START_START: "s"}  # text form: "12" end->start, "12s" start->start


@dataclass
class InstructionStream:
    opcode_names: list[str]
    unit_names: list[str]
    op_names: list[str]
    cols: dict[str, np.ndarray]
    dep_ptr: np.ndarray  # int64 [n + 1]
    dep_idx: np.ndarray  # int64 [n_deps]
    dep_kind: np.ndarray = field(default=None)  # int8 [n_deps]: END_START | START_START
    dep_lag: np.ndarray = field(default=None)  # int64 [n_deps]: cycles added to the bound
    resource_names: list[str] = field(default_factory=list)
    res_ptr: np.ndarray = field(default=None)  # int64 [n + 1]
    res_idx: np.ndarray = field(default=None)  # int32 [n_uses]
    res_bytes: np.ndarray = field(default=None)  # float64 [n_uses]
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n_deps, n = len(self.dep_idx), len(self.dep_ptr) - 1
        if self.dep_kind is None:
            self.dep_kind = np.zeros(n_deps, dtype=np.int8)
        if self.dep_lag is None:
            self.dep_lag = np.zeros(n_deps, dtype=np.int64)
        if self.res_ptr is None:
            self.res_ptr = np.zeros(n + 1, dtype=np.int64)
            self.res_idx = np.zeros(0, dtype=np.int32)
            self.res_bytes = np.zeros(0, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.dep_ptr) - 1

    def __getattr__(self, name: str) -> np.ndarray:
        cols = self.__dict__.get("cols")
        if cols is not None and name in cols:
            return cols[name]
        raise AttributeError(name)

    def validate(self) -> None:
        n = len(self)
        for name, dtype in COLUMNS.items():
            col = self.cols[name]
            if col.shape != (n,) or col.dtype != dtype:
                raise ValueError(f"column {name}: shape {col.shape} dtype {col.dtype}")
        if self.dep_ptr[0] != 0 or self.dep_ptr[-1] != len(self.dep_idx):
            raise ValueError("dep_ptr does not bracket dep_idx")
        if not len(self.dep_kind) == len(self.dep_lag) == len(self.dep_idx):
            raise ValueError("dep_kind / dep_lag / dep_idx differ in length")
        owner = np.repeat(np.arange(n), np.diff(self.dep_ptr))
        if np.any(self.dep_idx >= owner) or np.any(self.dep_idx < 0):
            raise ValueError("a dependency points forward or out of range")
        if np.any(self.dep_lag < 0) or not np.isin(self.dep_kind, (END_START, START_START)).all():
            raise ValueError("a dependency has a negative lag or an unknown kind")
        if self.res_ptr.shape != (n + 1,) or self.res_ptr[-1] != len(self.res_idx):
            raise ValueError("res_ptr does not bracket res_idx")
        if len(self.res_idx) and (
            self.res_idx.min() < 0 or self.res_idx.max() >= len(self.resource_names)
        ):
            raise ValueError("a resource index is out of range")
        if np.any(self.res_bytes < 0):
            raise ValueError("an instruction moves a negative number of bytes over a resource")

    def deps_of(self, i: int) -> list[tuple[int, int, int]]:
        """(producer, kind, lag) of instruction ``i``."""
        a, b = self.dep_ptr[i], self.dep_ptr[i + 1]
        return [
            (int(j), int(k), int(lag))
            for j, k, lag in zip(
                self.dep_idx[a:b], self.dep_kind[a:b], self.dep_lag[a:b], strict=True
            )
        ]

    def resources_of(self, i: int) -> dict[str, float]:
        a, b = self.res_ptr[i], self.res_ptr[i + 1]
        return {
            self.resource_names[r]: float(x)
            for r, x in zip(self.res_idx[a:b], self.res_bytes[a:b], strict=True)
        }

    # --- text form: one line per instruction, diffable and readable back -------------------
    def dumps(self, timing: Timing | None = None) -> str:
        """One line per instruction: its columns, ``| deps`` (``12`` end->start, ``12s``
        start->start, ``+lag``), ``| resource:bytes``; with ``timing``, a last ``| work
        latency interval`` section (so that a golden stream pins durations too)."""
        out = io.StringIO()
        out.write("# archsim instruction stream v2\n")
        for key, value in sorted(self.meta.items()):
            out.write(f"# meta {key}={value}\n")
        out.write("# units " + " ".join(self.unit_names) + "\n")
        if self.resource_names:
            out.write("# resources " + " ".join(self.resource_names) + "\n")
        if timing is not None and len(timing.resource_bw):
            bw = " ".join(f"{x:.17g}" for x in timing.resource_bw)
            out.write(f"# resource_bytes_per_cycle {bw}\n")
        tail = " | work latency interval" if timing is not None else ""
        out.write("# idx " + " ".join(COLUMNS) + " | deps | resources" + tail + "\n")
        for i in range(len(self)):
            fields = []
            for name, dtype in COLUMNS.items():
                v = self.cols[name][i]
                if name == "opcode":
                    fields.append(self.opcode_names[v])
                elif name == "unit":
                    fields.append(self.unit_names[v])
                elif name == "op":
                    fields.append(self.op_names[v])
                elif dtype is np.float64:
                    fields.append(f"{v:.17g}")
                else:
                    fields.append(str(int(v)))
            deps = " ".join(
                f"{j}{_KIND_MARK[k]}" + (f"+{lag}" if lag else "") for j, k, lag in self.deps_of(i)
            )
            res = " ".join(f"{r}:{x:.17g}" for r, x in self.resources_of(i).items())
            line = f"{i} {' '.join(fields)} | {deps} | {res}"
            if timing is not None:
                line += (
                    f" | {int(timing.work[i])} {int(timing.latency[i])} {int(timing.interval[i])}"
                )
            out.write(line + "\n")
        return out.getvalue()

    @classmethod
    def loads(cls, text: str, opcode_names: list[str]) -> InstructionStream:
        """Read back :meth:`dumps` output (a timing section, if any, is ignored)."""
        b = StreamBuilder(opcode_names)
        for line in text.splitlines():
            if line.startswith("# units "):
                for unit in line[len("# units ") :].split():
                    b.unit(unit)
            elif line.startswith("# resources "):
                for res in line[len("# resources ") :].split():
                    b.resource(res)
            elif line.startswith("# meta "):
                key, _, value = line[len("# meta ") :].partition("=")
                b.meta[key] = value
            elif line and not line.startswith("#"):
                head, deps, res = (line.split("|") + ["", ""])[:3]
                row = dict(zip(COLUMNS, head.split()[1:], strict=True))
                kw = {
                    name: (float(v) if COLUMNS[name] is np.float64 else int(v))
                    for name, v in row.items()
                    if name not in ("opcode", "unit", "op")
                }
                plain, lagged = [], []
                for tok in deps.split():
                    idx, _, lag = tok.partition("+")
                    kind = START_START if idx.endswith("s") else END_START
                    j = int(idx.rstrip("s"))
                    if kind == END_START and not lag:
                        plain.append(j)
                    else:
                        lagged.append((j, kind, int(lag or 0)))
                uses = {}
                for tok in res.split():
                    name, _, nbytes = tok.rpartition(":")
                    uses[name] = float(nbytes)
                b.add(
                    row["opcode"],
                    unit=row["unit"],
                    op=row["op"],
                    deps=plain,
                    lagged=lagged,
                    resources=uses,
                    **kw,
                )
        return b.build()

    def replicated(self, copies: int, rounds: int = 1) -> InstructionStream:
        """``rounds`` x ``copies`` copies of this program in one stream, round-major: copy
        ``(r, j)`` is ``r * copies + j``, its instructions in the same units, its dependencies
        inside the copy. From the second round on, copy ``(r, j)``'s entry instructions (no
        producer) wait for every exit instruction (no consumer) of copy ``(r - 1, j)``: the
        next token of a sequence needs the previous one (micro-batches of a pipeline). Issue
        cycles are reset to -1 (a static family schedules the whole program again)."""
        n, total = len(self), copies * rounds
        if total == 1:
            return self
        cols = {k: np.tile(v, total) for k, v in self.cols.items()}
        cols["copy"] = np.repeat(np.arange(total, dtype=np.int32), n)
        cols["issue"] = np.full(n * total, -1, dtype=np.int64)
        own = np.diff(self.dep_ptr)  # [n] dependencies of each instruction in its copy
        entries = np.nonzero(own == 0)[0]
        consumed = np.zeros(n, dtype=bool)
        consumed[self.dep_idx] = True
        exits = np.nonzero(~consumed)[0]
        counts = np.tile(own, total)
        fed = np.arange(copies, total)[:, None] * n + entries[None, :]  # [fed copies, entries]
        counts[fed.ravel()] += len(exits)
        ptr = _ptr(counts)
        idx = np.empty(ptr[-1], dtype=np.int64)
        kind = np.zeros(ptr[-1], dtype=np.int8)
        lag = np.zeros(ptr[-1], dtype=np.int64)
        owner = np.repeat(np.arange(n), own)  # [deps] the instruction each dependency binds
        within = np.arange(len(self.dep_idx)) - self.dep_ptr[owner]
        base = np.arange(total, dtype=np.int64)[:, None] * n  # [total, 1]
        slots = (ptr[base + owner[None, :]] + within[None, :]).ravel()
        idx[slots] = (self.dep_idx[None, :] + base).ravel()
        kind[slots] = np.tile(self.dep_kind, total)
        lag[slots] = np.tile(self.dep_lag, total)
        # feedback: entry e of copy c waits for the exits of copy c - copies
        fb = (ptr[fed][:, :, None] + np.arange(len(exits))[None, None, :]).ravel()
        prev = (fed // n - copies)[:, :, None] * n + exits[None, None, :]
        idx[fb] = prev.ravel()
        res_counts = np.diff(self.res_ptr)
        res_ptr = _ptr(np.tile(res_counts, total))
        out = InstructionStream(
            self.opcode_names,
            list(self.unit_names),
            list(self.op_names),
            cols,
            ptr,
            idx,
            kind,
            lag,
            list(self.resource_names),
            res_ptr,
            np.tile(self.res_idx, total),
            np.tile(self.res_bytes, total),
            {**self.meta, "copies": str(copies), "rounds": str(rounds)},
        )
        out.validate()
        return out

    def permuted(self, order: np.ndarray) -> InstructionStream:
        """The same program with instruction ``order[k]`` at position ``k`` (every producer
        must stay before its consumers); dependencies and resource uses follow."""
        order = np.asarray(order, dtype=np.int64)
        n = len(self)
        if order.shape != (n,) or not np.array_equal(np.sort(order), np.arange(n)):
            raise ValueError("order must be a permutation of the instructions")
        new_of = np.empty(n, dtype=np.int64)
        new_of[order] = np.arange(n)
        cols = {k: v[order] for k, v in self.cols.items()}

        def gather(ptr: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
            counts = np.diff(ptr)[order]
            new_ptr = _ptr(counts)
            take = np.repeat(ptr[:-1][order] - new_ptr[:-1], counts) + np.arange(new_ptr[-1])
            return (new_ptr, *(a[take] for a in arrays))

        dep_ptr, dep_idx, dep_kind, dep_lag = gather(
            self.dep_ptr, self.dep_idx, self.dep_kind, self.dep_lag
        )
        res_ptr, res_idx, res_bytes = gather(self.res_ptr, self.res_idx, self.res_bytes)
        out = InstructionStream(
            self.opcode_names, list(self.unit_names), list(self.op_names), cols, dep_ptr,
            new_of[dep_idx], dep_kind, dep_lag, list(self.resource_names), res_ptr, res_idx,
            res_bytes, dict(self.meta),
        )  # fmt: skip
        out.validate()
        return out

    def save(self, path: Path, timing: Timing | None = None) -> None:
        Path(path).write_text(self.dumps(timing))


@dataclass(frozen=True)
class Timing:
    """How the machine times a stream (a family's timing pass; the engine consumes it).

    An instruction that starts at cycle ``s`` does ``work`` cycles of its own (a pass, a
    kernel), or, where it moves bytes over shared resources, transfers them at the bandwidth
    it gets there but never faster than its bytes over ``work``; its result is ready
    ``latency`` cycles after that. It holds its unit for ``interval`` cycles from ``s`` (a
    pipelined unit takes its next instruction while this one is in flight), or, where
    ``interval`` is -1, until its result is ready.
    """

    work: np.ndarray  # int64 [n] cycles
    latency: np.ndarray  # int64 [n] cycles
    interval: np.ndarray  # int64 [n] cycles, -1 = until the result is ready
    resource_bw: np.ndarray  # float64 [n_resources] bytes per cycle
    choice: np.ndarray | None = None  # int64 [n] family-specific choice (tile, split, ...)

    @classmethod
    def fixed(
        cls,
        cycles: np.ndarray,
        resource_bw: np.ndarray | None = None,
        choice: np.ndarray | None = None,
    ) -> Timing:
        """Each instruction takes ``cycles`` and holds its unit throughout."""
        cycles = np.ascontiguousarray(cycles, dtype=np.int64)
        return cls(
            work=cycles,
            latency=np.zeros_like(cycles),
            interval=np.full_like(cycles, -1),
            resource_bw=np.zeros(0) if resource_bw is None else np.asarray(resource_bw, float),
            choice=choice,
        )

    def check(self, stream: InstructionStream) -> None:
        n = len(stream)
        for name in ("work", "latency", "interval"):
            a = getattr(self, name)
            if a.shape != (n,) or a.dtype != np.int64:
                raise ValueError(f"timing.{name}: one int64 per instruction expected")
        if n and (self.work.min() < 0 or self.latency.min() < 0 or self.interval.min() < -1):
            raise ValueError("timing: negative work or latency, or an interval below -1")
        if self.resource_bw.shape != (len(stream.resource_names),):
            raise ValueError("timing.resource_bw: one bandwidth per stream resource expected")
        used = np.unique(stream.res_idx)
        if len(used) and np.any(self.resource_bw[used] <= 0):
            bad = stream.resource_names[int(used[np.argmin(self.resource_bw[used])])]
            raise ValueError(f"timing: resource {bad} is used but has no bandwidth")


class StreamBuilder:
    """Appends instructions one by one (lowering is Python; timing is numba)."""

    def __init__(self, opcode_names: list[str]) -> None:
        self.opcode_names = list(opcode_names)
        self._opcode = {name: i for i, name in enumerate(self.opcode_names)}
        self.unit_names: list[str] = []
        self._unit: dict[str, int] = {}
        self.op_names: list[str] = []
        self._op: dict[str, int] = {}
        self._op_rows: list[list[int]] = []  # per op: its instructions, in order
        self.resource_names: list[str] = []
        self._res: dict[str, int] = {}
        self.meta: dict[str, str] = {}
        self._rows: list[tuple] = []
        self._deps: list[list[tuple[int, int, int]]] = []
        self._uses: list[list[tuple[int, float]]] = []

    def unit(self, name: str) -> int:
        if name not in self._unit:
            self._unit[name] = len(self.unit_names)
            self.unit_names.append(name)
        return self._unit[name]

    def resource(self, name: str) -> int:
        """Index of the shared resource ``name`` (an HBM, a link, a NoC), added if new."""
        if name not in self._res:
            self._res[name] = len(self.resource_names)
            self.resource_names.append(name)
        return self._res[name]

    def _op_index(self, name: str) -> int:
        if name not in self._op:
            self._op[name] = len(self.op_names)
            self.op_names.append(name)
            self._op_rows.append([])
        return self._op[name]

    def add(
        self,
        opcode: str,
        *,
        unit: str,
        op: str,
        deps: list[int] | tuple[int, ...] = (),
        lagged: list[tuple[int, int, int]] | tuple = (),
        resources: dict[str, float] | None = None,
        chip: int = 0,
        m: int = 0,
        n: int = 0,
        k: int = 0,
        g: int = 0,
        h: int = 0,
        aux: int = 0,
        offchip_bytes: float = 0.0,
        onchip_bytes: float = 0.0,
        link_bytes: float = 0.0,
        flops: float = 0.0,
        issue: int = -1,
        layer: int = 0,
        copy: int = 0,
    ) -> int:
        """Append one instruction; returns its index. ``deps``: producers it waits for
        (end -> start); ``lagged``: (producer, END_START | START_START, lag cycles);
        ``resources``: bytes it moves over each named shared resource."""
        if unit not in self._unit:
            self.unit(unit)
        i = len(self._deps)
        o = self._op_index(op)
        # one tuple per instruction, in COLUMNS order (columns are built once, in build())
        self._rows.append((
            self._opcode[opcode], self._unit[unit], chip, m, n, k, g, h, aux, offchip_bytes,
            onchip_bytes, link_bytes, flops, issue, layer, o, copy,
        ))  # fmt: skip
        self._op_rows[o].append(i)
        plain = {int(d) for d in deps if d is not None and d >= 0}
        if not lagged:  # the common case: end -> start, no lag
            self._deps.append([(d, END_START, 0) for d in sorted(plain)])
        else:
            bound = {(d, END_START): 0 for d in plain}  # (producer, kind) -> largest lag
            for d, kind, lag in lagged:
                if d is not None and d >= 0:
                    key = (int(d), int(kind))
                    bound[key] = max(bound.get(key, 0), int(lag))
            self._deps.append(sorted((d, kind, lag) for (d, kind), lag in bound.items()))
        if resources:
            uses = [(self.resource(r), float(x)) for r, x in resources.items() if x > 0]
            # kept in the order given (the order the resources were first named in, which a
            # replayed layer repeats when it names them: compiler/replay.py); sorted in build
            self._uses.append(uses)
        else:
            self._uses.append([])
        return i

    def __len__(self) -> int:
        return len(self._deps)

    # ---- what replaying a lowered layer needs (archsim/compiler/replay.py) -----------------
    def origin(self, i: int) -> tuple[str, int]:
        """Instruction ``i`` as (its op's name, its position among that op's instructions)."""
        o = self._rows[i][OP_COLUMN]
        return self.op_names[o], bisect.bisect_left(self._op_rows[o], i)

    def find(self, op: str, ordinal: int) -> int | None:
        """The index of op ``op``'s ``ordinal``-th instruction, None if it has no such one."""
        o = self._op.get(op)
        if o is None or ordinal >= len(self._op_rows[o]):
            return None
        return self._op_rows[o][ordinal]

    def segment(self, start: int) -> list[tuple]:
        """The instructions from ``start`` on, each as (row, dependencies, resource uses)
        with the row in COLUMNS order."""
        return list(zip(self._rows[start:], self._deps[start:], self._uses[start:], strict=True))

    def extend(self, rows: list[tuple], deps: list[list], uses: list) -> None:
        """Append instructions given as ``segment`` returns them (units, resources and ops
        as the builder's indices; each one's deps sorted and unique)."""
        start = len(self._deps)
        self._rows.extend(rows)
        self._deps.extend(deps)
        self._uses.extend(uses)
        op_rows = self._op_rows
        for i, row in enumerate(rows, start):
            op_rows[row[OP_COLUMN]].append(i)

    def op_index(self, name: str) -> int:
        """The index of op ``name`` in the stream's op names, added if new."""
        return self._op_index(name)

    def build(self) -> InstructionStream:
        columns = list(zip(*self._rows, strict=True)) if self._rows else [()] * len(COLUMNS)
        cols = {
            name: np.asarray(col, dtype=dtype)
            for (name, dtype), col in zip(COLUMNS.items(), columns, strict=True)
        }
        dep_ptr = _ptr([len(d) for d in self._deps])
        flat = [x for ds in self._deps for x in ds]
        res_ptr = _ptr([len(u) for u in self._uses])
        uses = [x for us in self._uses for x in (sorted(us) if len(us) > 1 else us)]
        stream = InstructionStream(
            self.opcode_names,
            list(self.unit_names),
            list(self.op_names),
            cols,
            dep_ptr,
            np.array([d for d, _, _ in flat], dtype=np.int64),
            np.array([k for _, k, _ in flat], dtype=np.int8),
            np.array([lag for _, _, lag in flat], dtype=np.int64),
            list(self.resource_names),
            res_ptr,
            np.array([r for r, _ in uses], dtype=np.int32),
            np.array([x for _, x in uses], dtype=np.float64),
            dict(self.meta),
        )
        stream.validate()
        return stream


def _ptr(counts) -> np.ndarray:
    """CSR row pointers from per-row counts."""
    ptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(np.asarray(counts, dtype=np.int64), out=ptr[1:])
    return ptr


def unit_arrays(stream: InstructionStream) -> tuple:
    """The stream's units as the jitted kernels take them: (unit per instruction, unit count)."""
    return np.ascontiguousarray(stream.unit, dtype=np.int32), len(stream.unit_names)


def dep_arrays(stream: InstructionStream) -> tuple:
    """The dependency CSR as the jitted kernels take it: (ptr, producer, kind, lag)."""
    return (
        np.ascontiguousarray(stream.dep_ptr, dtype=np.int64),
        np.ascontiguousarray(stream.dep_idx, dtype=np.int64),
        np.ascontiguousarray(stream.dep_kind, dtype=np.int8),
        np.ascontiguousarray(stream.dep_lag, dtype=np.int64),
    )


def resource_arrays(stream: InstructionStream, timing: Timing) -> tuple:
    """The resource CSR and the timing as the jitted kernels take them: (ptr, resource,
    bytes, work, latency, interval, resource bandwidth)."""
    return (
        np.ascontiguousarray(stream.res_ptr, dtype=np.int64),
        np.ascontiguousarray(stream.res_idx, dtype=np.int32),
        np.ascontiguousarray(stream.res_bytes, dtype=np.float64),
        timing.work,
        timing.latency,
        timing.interval,
        np.ascontiguousarray(timing.resource_bw, dtype=np.float64),
    )
