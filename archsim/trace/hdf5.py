"""HDF5 trace of one simulated step (format: docs/trace-format.md).

Root attributes record what produced it (schema and archsim versions, git revision, the
resolved arch, model, scenario and plan as JSON); ``/events`` holds one chunked, compressed
dataset per field, one row per instruction; ``/names`` the string tables the integer fields
index; ``/units`` the busy cycles per unit; ``/summary`` the Result as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from archsim.core.errors import ArchsimError
from archsim.outputs import write_with
from archsim.result import Result

SCHEMA_VERSION = 2
EVENT_FIELDS = (
    "start",
    "end",
    "release",
    "unit",
    "chip",
    "opcode",
    "layer",
    "op",
    "offchip_bytes",
    "onchip_bytes",
    "link_bytes",
    "flops",
    "m",
    "n",
    "k",
    "issue",
    "copy",
)


def write_trace(result: Result, path: str | Path) -> Path:
    """Write ``result``'s timeline to ``path`` atomically (a failed write leaves no file and
    never clobbers an existing one half-written)."""
    import h5py

    if result.stream is None or result.timeline is None:
        raise ArchsimError("this result carries no timeline to trace")
    s, tl = result.stream, result.timeline
    summary = result.to_dict()
    meta = summary.pop("meta")

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["archsim_version"] = meta["archsim_version"]
            f.attrs["git_revision"] = meta["git_revision"]
            f.attrs["arch"] = result.arch
            f.attrs["family"] = result.family
            f.attrs["model"] = result.model
            f.attrs["arch_digest"] = meta["arch_digest"]
            f.attrs["model_digest"] = meta["model_digest"]
            f.attrs["clock_hz"] = result.clock_hz
            for key in ("arch_config", "model_spec", "scenario", "plan"):
                f.attrs[key] = json.dumps(meta[key], sort_keys=True)
            ev = f.create_group("events")
            n = len(s)
            chunk = (min(max(n, 1), 65536),)
            cols = {"start": tl.start, "end": tl.end, "release": tl.release, **s.cols}
            for name in EVENT_FIELDS:
                ev.create_dataset(
                    name,
                    data=np.asarray(cols[name]),
                    chunks=chunk,
                    compression="gzip",
                    compression_opts=4,
                    shuffle=True,
                )
            names = f.create_group("names")
            for key, values in (
                ("units", s.unit_names),
                ("opcodes", s.opcode_names),
                ("ops", s.op_names),
            ):
                names.create_dataset(key, data=np.array(values, dtype=h5py.string_dtype()))
            units = f.create_group("units")
            units.create_dataset("name", data=np.array(tl.unit_names, dtype=h5py.string_dtype()))
            units.create_dataset("busy_cycles", data=tl.busy)
            f.create_dataset("summary", data=json.dumps(summary, sort_keys=True))

    return write_with(path, write, "trace")


def read_trace(path: str | Path) -> dict[str, Any]:
    """Load a trace into plain Python/numpy objects."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ArchsimError(f"trace file {path} not found")
    try:
        with h5py.File(path, "r") as f:
            version = int(f.attrs.get("schema_version", -1))
            if version != SCHEMA_VERSION:
                raise ArchsimError(
                    f"{path}: trace schema {version}, this archsim reads {SCHEMA_VERSION}"
                )
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
            events = {k: f["events"][k][()] for k in f["events"]}
            names = {
                k: [x.decode() if isinstance(x, bytes) else x for x in f["names"][k][()]]
                for k in f["names"]
            }
            busy = f["units/busy_cycles"][()]
            summary = json.loads(f["summary"][()])
    except OSError as exc:
        raise ArchsimError(f"cannot read trace {path}: {exc}") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise ArchsimError(f"{path} is not a complete archsim trace ({exc})") from None
    return {
        "attrs": attrs,
        "events": events,
        "names": names,
        "busy_cycles": busy,
        "summary": summary,
    }
