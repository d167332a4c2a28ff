"""Writing output files without damaging anything: a new file or a regular file is replaced
atomically (written beside it under a temporary name, then renamed over it); a device, a
folder, a link to one, or a path under a file is refused with one line, and nothing is
written. Appending is only ever done to a file that is already ours (the caller checks its
content) — see ``archsim.sweep.run``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from archsim.core.errors import ArchsimError


def check_target(path: str | Path, what: str = "output") -> Path:
    """``path`` as a Path, refused (ArchsimError, one line) unless its folder exists and is
    a folder, and it is absent or a regular file."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise ArchsimError(f"cannot write {what} {path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise ArchsimError(f"cannot write {what} {path}: {parent} is not a folder")
    if path.exists() or path.is_symlink():
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise ArchsimError(f"cannot write {what} {path}: {exc.strerror}") from None
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise ArchsimError(f"cannot write {what} {path}: it is {kind}; nothing was written")
    if not os.access(parent, os.W_OK):
        raise ArchsimError(f"cannot write {what} {path}: folder {parent} is not writable")
    return path


@contextlib.contextmanager
def replacing(path: str | Path, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``. On any
    error the temporary file is removed and ``path`` is untouched."""
    path = check_target(path, what)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        check_target(path, what)  # still a regular file (or absent) at rename time
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp made it private; a normal file is not
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise ArchsimError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str, what: str = "output") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`replacing`)."""
    with replacing(path, what) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_with(path: str | Path, write: Callable[[Path], None], what: str = "output") -> Path:
    """Call ``write(tmp)`` and move the result over ``path`` atomically."""
    with replacing(path, what) as tmp:
        write(tmp)
    return Path(path)
