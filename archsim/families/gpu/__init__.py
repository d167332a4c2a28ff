"""h100-like: an HBM GPU at the grain of kernels and CTA waves (docs/arch/h100-like.md)."""

from archsim.families.gpu import family  # noqa: F401  (registers "h100-like")
