"""cerebras-like: a wafer-scale mesh of PEs and systems of several wafers
(docs/arch/cerebras-like.md)."""

from archsim.families.wafer import family  # noqa: F401  (registers "cerebras-like")
