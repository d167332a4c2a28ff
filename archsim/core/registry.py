"""Family registry: each family package registers itself by name with ``@register_arch``.

A new machine family is one package under ``archsim/families/`` (its ``__init__`` imports the
module that registers it) plus one YAML in ``arch_configs/``: no list to edit here.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path

from archsim.core.errors import ConfigError
from archsim.core.family import Family

_REGISTRY: dict[str, type[Family]] = {}
_loaded = False
# the family packages live in archsim/families/ (imported by name: core imports no family)
_FAMILIES = Path(__file__).resolve().parent.parent / "families"


def register_arch(name: str) -> Callable[[type[Family]], type[Family]]:
    """Class decorator: make ``cls`` the family that runs configs with ``family: name``."""

    def deco(cls: type[Family]) -> type[Family]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise RuntimeError(f"family {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_all() -> None:
    """Import every family package once, so each registers itself (done on first lookup,
    keeping ``archsim --help`` fast)."""
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules([str(_FAMILIES)]):
        if info.ispkg:
            importlib.import_module(f"archsim.families.{info.name}")
    _loaded = True


def family_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_family(name: str) -> Family:
    _load_all()
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown architecture family {name!r} (registered: {', '.join(sorted(_REGISTRY))})"
        )
    return _REGISTRY[name]()
