"""YAML loading that reads ``1e9`` as a float (PyYAML's YAML 1.1 rules read it as a string)."""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from archsim.core.errors import ConfigError


class _Loader(yaml.SafeLoader):
    pass


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_yaml(path: Path) -> dict[str, Any]:
    """Parse one YAML mapping; a malformed file is a ConfigError naming the file. Parses are
    cached per (path, modification time, size) and each caller gets its own copy (a serving
    run simulates hundreds of steps of one preset)."""
    try:
        st = path.stat()
    except OSError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot read {path}: {first}") from None
    return copy.deepcopy(_parse(str(path), st.st_mtime_ns, st.st_size))


@lru_cache(maxsize=256)
def _parse(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    try:
        data = yaml.load(Path(path).read_text(), Loader=_Loader)  # noqa: S506 - SafeLoader
    except (OSError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot read {path}: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def parse_scalar(text: str) -> Any:
    """Parse a ``--set`` value: numbers (1e8, 0x10 not accepted), booleans, lists, strings."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506
    except yaml.YAMLError:
        return text
