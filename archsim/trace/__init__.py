"""Traces: HDF5 timeline (h5py) and a Perfetto / Chrome JSON export of it."""

from archsim.trace.hdf5 import SCHEMA_VERSION, read_trace, write_trace
from archsim.trace.perfetto import export_perfetto

__all__ = ["SCHEMA_VERSION", "export_perfetto", "read_trace", "write_trace"]
