"""InstructionStream: the one instruction format every family lowers to.

Parallel numpy arrays of equal length (not a structured dtype: numba compiles and loads them
faster, and they work under NUMBA_DISABLE_JIT), plus CSR dependency arrays: the producers of
instruction ``i`` are ``dep_idx[dep_ptr[i]:dep_ptr[i+1]]``, each < i (program order is a
topological order). ``issue`` is the compiler-assigned issue cycle for statically scheduled
families, or -1 where the cycle model decides.
"""

from __future__ import annotations

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
}


@dataclass
class InstructionStream:
    opcode_names: list[str]
    unit_names: list[str]
    op_names: list[str]
    cols: dict[str, np.ndarray]
    dep_ptr: np.ndarray  # int64 [n + 1]
    dep_idx: np.ndarray  # int64 [n_deps]
    meta: dict[str, str] = field(default_factory=dict)

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
        owner = np.repeat(np.arange(n), np.diff(self.dep_ptr))
        if np.any(self.dep_idx >= owner) or np.any(self.dep_idx < 0):
            raise ValueError("a dependency points forward or out of range")

    # --- text form: one line per instruction, diffable and readable back -------------------
    def dumps(self) -> str:
        out = io.StringIO()
        out.write("# archsim instruction stream v1\n")
        for key, value in sorted(self.meta.items()):
            out.write(f"# meta {key}={value}\n")
        out.write("# units " + " ".join(self.unit_names) + "\n")
        out.write("# idx " + " ".join(COLUMNS) + " | deps\n")
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
                str(int(d)) for d in self.dep_idx[self.dep_ptr[i] : self.dep_ptr[i + 1]]
            )
            out.write(f"{i} {' '.join(fields)} | {deps}\n")
        return out.getvalue()

    @classmethod
    def loads(cls, text: str, opcode_names: list[str]) -> InstructionStream:
        b = StreamBuilder(opcode_names)
        for line in text.splitlines():
            if line.startswith("# units "):
                for unit in line[len("# units ") :].split():
                    b.unit(unit)
            elif line.startswith("# meta "):
                key, _, value = line[len("# meta ") :].partition("=")
                b.meta[key] = value
            elif line and not line.startswith("#"):
                head, _, deps = line.partition("|")
                row = dict(zip(COLUMNS, head.split()[1:], strict=True))
                kw = {
                    name: (float(v) if COLUMNS[name] is np.float64 else int(v))
                    for name, v in row.items()
                    if name not in ("opcode", "unit", "op")
                }
                b.add(
                    row["opcode"],
                    unit=row["unit"],
                    op=row["op"],
                    deps=[int(x) for x in deps.split()],
                    **kw,
                )
        return b.build()

    def save(self, path: Path) -> None:
        Path(path).write_text(self.dumps())


class StreamBuilder:
    """Appends instructions one by one (lowering is Python; timing is numba)."""

    def __init__(self, opcode_names: list[str]) -> None:
        self.opcode_names = list(opcode_names)
        self._opcode = {name: i for i, name in enumerate(self.opcode_names)}
        self.unit_names: list[str] = []
        self._unit: dict[str, int] = {}
        self.op_names: list[str] = []
        self._op: dict[str, int] = {}
        self.meta: dict[str, str] = {}
        self._rows: dict[str, list] = {name: [] for name in COLUMNS}
        self._deps: list[list[int]] = []

    def unit(self, name: str) -> int:
        if name not in self._unit:
            self._unit[name] = len(self.unit_names)
            self.unit_names.append(name)
        return self._unit[name]

    def _op_index(self, name: str) -> int:
        if name not in self._op:
            self._op[name] = len(self.op_names)
            self.op_names.append(name)
        return self._op[name]

    def add(
        self,
        opcode: str,
        *,
        unit: str,
        op: str,
        deps: list[int] | tuple[int, ...] = (),
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
    ) -> int:
        """Append one instruction; returns its index."""
        if unit not in self._unit:
            self.unit(unit)
        i = len(self._deps)
        row = {
            "opcode": self._opcode[opcode],
            "unit": self._unit[unit],
            "chip": chip,
            "m": m,
            "n": n,
            "k": k,
            "g": g,
            "h": h,
            "aux": aux,
            "offchip_bytes": offchip_bytes,
            "onchip_bytes": onchip_bytes,
            "link_bytes": link_bytes,
            "flops": flops,
            "issue": issue,
            "layer": layer,
            "op": self._op_index(op),
        }
        for name, value in row.items():
            self._rows[name].append(value)
        self._deps.append(sorted({d for d in deps if d is not None and d >= 0}))
        return i

    def __len__(self) -> int:
        return len(self._deps)

    def build(self) -> InstructionStream:
        cols = {name: np.asarray(self._rows[name], dtype=dtype) for name, dtype in COLUMNS.items()}
        counts = np.array([len(d) for d in self._deps], dtype=np.int64)
        dep_ptr = np.zeros(len(self._deps) + 1, dtype=np.int64)
        np.cumsum(counts, out=dep_ptr[1:])
        dep_idx = np.array([d for ds in self._deps for d in ds], dtype=np.int64)
        stream = InstructionStream(
            self.opcode_names,
            list(self.unit_names),
            list(self.op_names),
            cols,
            dep_ptr,
            dep_idx,
            dict(self.meta),
        )
        stream.validate()
        return stream
