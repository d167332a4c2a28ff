"""Scenario: what is being run (phase, batch, lengths, precisions), independent of the machine."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from archsim.core.errors import ScenarioError

# Bytes per element of each storage format. int4 packs two values per byte.
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}

# What `--precision X` means for (weights, activations, KV cache), as serving stacks run it:
# bf16 everywhere; fp8 = W8A8 with an fp8 KV cache; int8 = W8A8 SmoothQuant-style with int8 KV;
# int4 = W4A16 (AWQ/GPTQ-style weight-only) with a bf16 KV cache.
PRECISION_PRESETS: dict[str, tuple[str, str, str]] = {
    "bf16": ("bf16", "bf16", "bf16"),
    "fp16": ("fp16", "fp16", "fp16"),
    "fp8": ("fp8", "fp8", "fp8"),
    "int8": ("int8", "int8", "int8"),
    "int4": ("int4", "bf16", "bf16"),
}


@dataclass(frozen=True)
class Precision:
    """Storage formats of weights, activations (GEMM inputs) and the KV cache."""

    weights: str = "bf16"
    activations: str = "bf16"
    kv: str = "bf16"

    @property
    def weight_bytes(self) -> float:
        return DTYPE_BYTES[self.weights]

    @property
    def act_bytes(self) -> float:
        return DTYPE_BYTES[self.activations]

    @property
    def kv_bytes(self) -> float:
        return DTYPE_BYTES[self.kv]

    @property
    def label(self) -> str:
        for name, triple in PRECISION_PRESETS.items():
            if triple == (self.weights, self.activations, self.kv):
                return name
        return f"w={self.weights},a={self.activations},kv={self.kv}"

    @classmethod
    def parse(cls, text: str) -> Precision:
        """``bf16`` | ``fp8`` | ``int8`` | ``int4`` | ``w=int4,a=bf16,kv=fp8``."""
        text = text.strip().lower()
        if text in PRECISION_PRESETS:
            return cls(*PRECISION_PRESETS[text])
        parts = dict(p.split("=", 1) for p in text.split(",") if "=" in p)
        if not parts or set(parts) - {"w", "a", "kv"}:
            raise ScenarioError(
                f"unknown precision {text!r} (valid: "
                f"{', '.join(PRECISION_PRESETS)}, or w=..,a=..,kv=..)"
            )
        base = dict(zip(("w", "a", "kv"), PRECISION_PRESETS["bf16"], strict=True))
        base.update(parts)
        for role, dtype in base.items():
            if dtype not in DTYPE_BYTES:
                raise ScenarioError(
                    f"unknown {role} dtype {dtype!r} in precision {text!r} "
                    f"(valid: {', '.join(DTYPE_BYTES)})"
                )
        return cls(base["w"], base["a"], base["kv"])


@dataclass(frozen=True)
class Scenario:
    """One forward step.

    prefill: ``batch`` sequences of ``seq`` prompt tokens each, causal, from an empty cache.
    decode: ``batch`` sequences, one new token each, attending over ``ctx`` cached tokens.
    ``routing_skew``: how unevenly a mixture-of-experts router spreads tokens over experts
    (0: uniform; s > 0: Zipf popularity (e + 1)^-s over the expert index; archsim/graph/moe.py);
    dense models ignore it.
    """

    phase: str = "decode"
    batch: int = 1
    seq: int = 2048
    ctx: int = 2048
    precision: Precision = Precision()
    routing_skew: float = 0.0

    def __post_init__(self) -> None:
        if self.phase not in ("prefill", "decode"):
            raise ScenarioError(f"phase must be prefill or decode, got {self.phase!r}")
        for key in ("batch", "seq", "ctx"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ScenarioError(f"{key} must be a positive integer, got {value!r}")
        skew = self.routing_skew
        if isinstance(skew, bool) or not isinstance(skew, int | float) or not 0 <= skew <= 10:
            raise ScenarioError(f"routing skew must be a number from 0 to 10, got {skew!r}")

    @property
    def new_tokens_per_seq(self) -> int:
        """Tokens each sequence adds to the KV cache this step."""
        return self.seq if self.phase == "prefill" else 1

    @property
    def tokens(self) -> int:
        """Rows that flow through the projections this step: batch x new tokens."""
        return self.batch * self.new_tokens_per_seq

    @property
    def kv_len(self) -> int:
        """Tokens each sequence attends over (the longest query sees them all)."""
        return self.seq if self.phase == "prefill" else self.ctx + 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["precision"] = self.precision.label
        return d
