"""Family registry: each cycle model registers itself by name with ``@register_arch``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from archsim.arch.base import Family
from archsim.errors import ConfigError

_REGISTRY: dict[str, type[Family]] = {}

# Modules that define families; imported on first lookup (keeps `archsim --help` instant).
FAMILY_MODULES = ("archsim.arch.gpu", "archsim.arch.tsp")


def register_arch(name: str) -> Callable[[type[Family]], type[Family]]:
    def deco(cls: type[Family]) -> type[Family]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise RuntimeError(f"family {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_all() -> None:
    for module in FAMILY_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


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
