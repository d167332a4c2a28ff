"""The numba cache falls back when the user's cache folder cannot be written."""

from __future__ import annotations

from pathlib import Path

from archsim.core import jit as _numba


def test_cache_dir_falls_back_to_temp(monkeypatch, tmp_path):
    """An unwritable ~/.cache gives a per-user temp folder; nothing writable gives None."""
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")  # mkdir below a file fails for any user
    monkeypatch.setattr(_numba, "numba_cache_dir", lambda: blocked / "archsim")
    _numba.cache_dir.cache_clear()
    try:
        got = _numba.cache_dir()
        assert got is not None and got != blocked / "archsim" and got.is_dir()
        monkeypatch.setattr(_numba.tempfile, "gettempdir", lambda: str(blocked))
        _numba.cache_dir.cache_clear()
        assert _numba.cache_dir() is None
    finally:
        _numba.cache_dir.cache_clear()


def test_default_cache_is_per_user_and_versioned():
    """By default kernels are cached under the user's cache folder, keyed by version."""
    _numba.cache_dir.cache_clear()
    folder = _numba.cache_dir()
    assert folder is not None and isinstance(folder, Path)
    assert folder.name.startswith("numba-") or "numba-" in folder.name
