"""Family registry: each cycle model registers itself by name with ``@register_arch``."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from archsim.arch.base import Family
from archsim.errors import ConfigError

_REGISTRY: dict[str, type[Family]] = {}

_loaded = False


def register_arch(name: str) -> Callable[[type[Family]], type[Family]]:
    def deco(cls: type[Family]) -> type[Family]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise RuntimeError(f"family {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_all() -> None:
    """Import every module of this package once, so each family registers itself: a new
    family is one module here plus its YAML (done on first lookup, keeping `--help` fast)."""
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
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


__all__ = ["Family", "family_names", "get_family", "register_arch"]
