"""Sweeps: many simulations over a grid of scenario values and config overrides.

Finished points are appended to the output table as they complete (CSV, JSONL, HDF5 or
Parquet: ``store.py``), and a rerun skips every point already there, so an interrupted sweep
resumes without losing work. Points run in this process, on a local process pool or on a
Dask cluster (``run.py``).
"""

from archsim.sweep.grid import SweepPoint, expand_grid, load_spec
from archsim.sweep.run import run_sweep
from archsim.sweep.store import read_table

__all__ = ["SweepPoint", "expand_grid", "load_spec", "read_table", "run_sweep"]
