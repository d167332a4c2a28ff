"""matx-like: a scratchpad accelerator with splittable systolic arrays; also the TPU presets
(docs/arch/matx-like.md)."""

from archsim.families.systolic import family  # noqa: F401  (registers "matx-like")
