"""etched-like: a fixed-function transformer ASIC fed from HBM (docs/arch/etched-like.md)."""

from archsim.families.asic import family  # noqa: F401  (registers "etched-like")
