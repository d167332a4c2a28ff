"""Benchmarks run with `pytest benchmarks/` (pytest-benchmark); not part of `pytest`."""
