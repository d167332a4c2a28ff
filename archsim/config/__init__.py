"""Typed, frozen architecture config schemas and YAML loading (with extends + overrides)."""

from archsim.config.arch import (
    ArchParams,
    Section,
    apply_override,
    arch_names,
    field,
    load_arch,
    one_line_error,
    parse_overrides,
    resolve_raw,
)

__all__ = [
    "ArchParams",
    "Section",
    "apply_override",
    "arch_names",
    "field",
    "load_arch",
    "one_line_error",
    "parse_overrides",
    "resolve_raw",
]
