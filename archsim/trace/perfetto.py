"""Chrome / Perfetto JSON (the Trace Event Format): one track per unit, one slice per
instruction, timestamps in microseconds. Open in https://ui.perfetto.dev."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from archsim.outputs import write_text


def export_perfetto(trace: dict[str, Any], out: str | Path) -> Path:
    ev, names, attrs = trace["events"], trace["names"], trace["attrs"]
    us_per_cycle = 1e6 / float(attrs["clock_hz"])
    units, op_names, opcodes = names["units"], names["ops"], names["opcodes"]
    # integer process (chip) and thread (unit) ids, named by metadata events
    chips: dict[str, int] = {}
    pid_of_unit = []
    events: list[dict[str, Any]] = []
    for u, unit in enumerate(units):
        chip, _, lane = unit.partition(".")
        if chip not in chips:
            chips[chip] = len(chips)
            events.append({"ph": "M", "name": "process_name", "pid": chips[chip],
                           "args": {"name": chip}})  # fmt: skip
        pid_of_unit.append(chips[chip])
        events.append({"ph": "M", "name": "thread_name", "pid": chips[chip], "tid": u,
                       "args": {"name": lane or unit}})  # fmt: skip
    for i in range(len(ev["start"])):
        u = int(ev["unit"][i])
        events.append(
            {
                "ph": "X",
                "pid": pid_of_unit[u],
                "tid": u,
                "name": f"{op_names[int(ev['op'][i])]}:{opcodes[int(ev['opcode'][i])]}",
                "ts": float(ev["start"][i]) * us_per_cycle,
                # a unit's track shows when it was held (a pipelined unit takes its next
                # instruction before this one's result is ready: slices must not overlap)
                "dur": float(ev["release"][i] - ev["start"][i]) * us_per_cycle,
                "args": {
                    "layer": int(ev["layer"][i]),
                    "copy": int(ev["copy"][i]),
                    "ready_cycle": int(ev["end"][i]),
                    "offchip_bytes": float(ev["offchip_bytes"][i]),
                    "onchip_bytes": float(ev["onchip_bytes"][i]),
                    "link_bytes": float(ev["link_bytes"][i]),
                    "flops": float(ev["flops"][i]),
                    "cycles": [int(ev["start"][i]), int(ev["end"][i])],
                },
            }
        )
    doc = {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {"arch": attrs.get("arch"), "model": attrs.get("model")},
    }
    return write_text(out, json.dumps(doc), "perfetto timeline")
