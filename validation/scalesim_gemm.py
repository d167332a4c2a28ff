"""Run SCALE-Sim v3 on GEMMs and record its compute cycles for archsim's matx-like tests.

SCALE-Sim is NOT an archsim dependency: install it in a throwaway venv and run this script
with that venv's interpreter (it needs numpy < 2.4)::

    python3 -m venv /tmp/scalesim-venv
    /tmp/scalesim-venv/bin/pip install scalesim "numpy<2.4"
    /tmp/scalesim-venv/bin/python validation/scalesim_gemm.py --out tests/data/scalesim_gemm.json

Each case is one GEMM ``[M, K] @ [K, N]`` (K the reduction, N the output features) on an
R x C array with one dataflow. SCALE-Sim runs in its CALC bandwidth mode (it sizes the
interface bandwidth so that memory never stalls), so its "Total Cycles" column of
COMPUTE_REPORT.csv is the compute cycles; the stall column is recorded and must be 0.
Results are written after every case (a rerun skips the cases already in the file).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

# (M, N, K, rows, cols, dataflow)
CASES = [
    # the two numbers quoted in issue 9 (and IS for the same shape)
    (1, 4096, 4096, 128, 128, "ws"),
    (1, 4096, 4096, 128, 128, "os"),
    (1, 4096, 4096, 128, 128, "is"),
    # small shapes with partial folds on square and rectangular arrays
    *[(m, n, k, r, c, df)
      for (m, n, k, r, c) in [(3, 6, 5, 4, 4), (7, 5, 9, 4, 3), (16, 16, 16, 8, 8),
                              (5, 17, 11, 3, 5), (33, 20, 7, 8, 16)]
      for df in ("ws", "os", "is")],
    # decode- and prefill-like shapes
    *[(m, n, k, r, c, df)
      for (m, n, k, r, c) in [(8, 1024, 1024, 128, 128), (128, 512, 256, 32, 32),
                              (256, 256, 512, 64, 64), (1, 1024, 1024, 64, 64)]
      for df in ("ws", "os", "is")],
]  # fmt: skip

CONFIG = """[general]
run_name = archsim_gemm

[architecture_presets]
ArrayHeight:    {rows}
ArrayWidth:     {cols}
IfmapSramSzkB:   {sram_kb}
FilterSramSzkB:  {sram_kb}
OfmapSramSzkB:   {sram_kb}
IfmapOffset:    0
FilterOffset:   10000000
OfmapOffset:    20000000
Bandwidth : 10
Dataflow : {df}
MemoryBanks:   1
ReadRequestBuffer: 512
WriteRequestBuffer: 512

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport : false
SparseRep : ellpack_block
OptimizedMapping : false
BlockSize : 8
RandomNumberGeneratorSeed : 40

[run_presets]
InterfaceBandwidth: CALC
UseRamulatorTrace: False
"""
SRAM_KB = 65536  # large buffers: no capacity effects on the compute cycles


def run_case(m: int, n: int, k: int, rows: int, cols: int, df: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "scale.cfg").write_text(CONFIG.format(rows=rows, cols=cols, df=df, sram_kb=SRAM_KB))
        (d / "gemm.csv").write_text(f"Layer, M, N, K,\ng0, {m}, {n}, {k},\n")
        (d / "layout.csv").write_text("Layer name, unused,\ng0, 1,\n")
        cmd = [sys.executable, "-m", "scalesim.scale", "-c", "scale.cfg", "-t", "gemm.csv",
               "-l", "layout.csv", "-p", "out", "-i", "gemm", "-s", "N"]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=d, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        with open(d / "out" / "archsim_gemm" / "COMPUTE_REPORT.csv") as f:
            row = [x.strip() for x in list(csv.reader(f))[1]]
    return {
        "m": m, "n": n, "k": k, "rows": rows, "cols": cols, "dataflow": df,
        "compute_cycles": int(row[2]), "stall_cycles": int(row[3]),
        "total_cycles_incl_prefetch": int(row[1]), "wall_s": round(wall, 3),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only-small", action="store_true", help="skip the 4096 cases")
    args = ap.parse_args()
    doc = json.loads(args.out.read_text()) if args.out.exists() else {"cases": []}
    doc.update(
        scalesim_version=version("scalesim"),
        numpy_version=version("numpy"),
        python=sys.version.split()[0],
        command="python -m scalesim.scale -c scale.cfg -t gemm.csv -l layout.csv -p out "
        "-i gemm -s N",
        config=CONFIG.replace("{sram_kb}", str(SRAM_KB)),
        topology="Layer, M, N, K,\\ng0, {M}, {N}, {K},",
        mapping="SCALE-Sim GEMM mode: M rows of the input, K the reduction, N the filters "
        "(output features)",
        note="compute_cycles is COMPUTE_REPORT.csv 'Total Cycles' (CALC bandwidth mode: no "
        "stalls); wall_s is the wall time of one scalesim process on the recording machine",
    )
    done = {(c["m"], c["n"], c["k"], c["rows"], c["cols"], c["dataflow"]) for c in doc["cases"]}
    for case in CASES:
        if case in done or (args.only_small and max(case[1], case[2]) >= 4096):
            continue
        rec = run_case(*case)
        doc["cases"].append(rec)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(args.out)
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
