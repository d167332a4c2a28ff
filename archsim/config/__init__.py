"""Typed, frozen architecture configs loaded from arch_configs/*.yaml (with extends + overrides)."""

from archsim.config.arch import (
    ArchParams,
    Section,
    arch_names,
    field,
    load_arch,
    parse_overrides,
)

__all__ = ["ArchParams", "Section", "arch_names", "field", "load_arch", "parse_overrides"]
