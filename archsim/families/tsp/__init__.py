"""groq-like: a statically scheduled SRAM-only TSP and its systems (docs/arch/groq-like.md)."""

from archsim.families.tsp import family  # noqa: F401  (registers "groq-like")
