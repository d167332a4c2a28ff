"""Sweeps: many simulations over a grid of scenario values and config overrides.

Finished points are appended to the output as they complete (one flushed row each), and a
rerun skips every point already there, so an interrupted sweep resumes without losing work.
"""

from archsim.sweep.grid import SweepPoint, expand_grid, load_spec
from archsim.sweep.run import run_sweep

__all__ = ["SweepPoint", "expand_grid", "load_spec", "run_sweep"]
