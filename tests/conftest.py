"""Shared fixtures. Tests run against the shipped presets and workloads."""

from __future__ import annotations

import pytest

from archsim.core.isa import StreamBuilder


@pytest.fixture
def builder() -> StreamBuilder:
    """A builder with a two-opcode toy ISA for engine tests."""
    return StreamBuilder(["work", "move"])
