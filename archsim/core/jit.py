"""Lazy numba import with a per-user cache directory keyed by the archsim version."""

from __future__ import annotations

import os
import tempfile
from functools import cache
from pathlib import Path

from archsim.core.paths import numba_cache_dir
from archsim.core.version import __version__


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            return True
    except OSError:
        return False


@cache
def cache_dir() -> Path | None:
    """The per-user cache (``~/.cache/archsim/numba-<version>``), else a per-user folder in
    the temp directory, else None (compile without caching rather than fail)."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    for path in (
        numba_cache_dir(),
        Path(tempfile.gettempdir()) / f"archsim-{uid}-numba-{__version__}",
    ):
        if _writable(path):
            return path
    return None


def njit(*args, **kwargs):
    """``numba.njit(cache=True)`` with NUMBA_CACHE_DIR set before numba is imported."""
    folder = cache_dir()
    if folder is not None:
        os.environ.setdefault("NUMBA_CACHE_DIR", str(folder))
    import numba

    kwargs.setdefault("cache", folder is not None)
    return numba.njit(*args, **kwargs)
