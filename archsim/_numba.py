"""Lazy numba import with a per-user cache directory keyed by the archsim version."""

from __future__ import annotations

import os

from archsim.paths import numba_cache_dir


def njit(*args, **kwargs):
    """``numba.njit(cache=True)`` with NUMBA_CACHE_DIR set before numba is imported."""
    os.environ.setdefault("NUMBA_CACHE_DIR", str(numba_cache_dir()))
    import numba

    kwargs.setdefault("cache", True)
    return numba.njit(*args, **kwargs)
