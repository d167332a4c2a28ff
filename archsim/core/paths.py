"""Where the shipped YAML folders live: beside the package in a wheel, at the repo top otherwise."""

from __future__ import annotations

import os
from pathlib import Path

from archsim.core.version import __version__

_PKG = Path(__file__).resolve().parent.parent  # the archsim package


def data_dir(name: str) -> Path:
    """Folder ``name`` (arch_configs, workloads, validation) from a wheel or a source checkout."""
    for candidate in (_PKG / "_data" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"archsim data folder {name!r} not found beside {_PKG}")


def numba_cache_dir() -> Path:
    """Per-user numba cache keyed by archsim version (never beside the user's files)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "archsim" / f"numba-{__version__}"
