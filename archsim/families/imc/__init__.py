"""dmatrix-like: digital in-memory compute with an LPDDR tier (docs/arch/dmatrix-like.md)."""

from archsim.families.imc import family  # noqa: F401  (registers "dmatrix-like")
