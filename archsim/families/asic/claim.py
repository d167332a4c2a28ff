"""The counting behind a serving-throughput claim such as Etched's ">500,000 tokens/s":
which tokens are counted, and what request rate and compute it implies (etched-sohu.md §2).

Pure arithmetic on step times a simulation produced; nothing here simulates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ServedTokens:
    """Tokens per second of one server serving requests of ``isl`` prompt and ``osl``
    generated tokens, counted both ways."""

    requests_per_s: float
    isl: int
    osl: int

    @property
    def input_tokens_per_s(self) -> float:
        return self.requests_per_s * self.isl

    @property
    def output_tokens_per_s(self) -> float:
        return self.requests_per_s * self.osl

    @property
    def total_tokens_per_s(self) -> float:
        """Input + output: how Etched counts (94 % of them prompt tokens at 2048/128)."""
        return self.requests_per_s * (self.isl + self.osl)

    def to_dict(self) -> dict[str, float]:
        return {
            **asdict(self),
            "input_tokens_per_s": self.input_tokens_per_s,
            "output_tokens_per_s": self.output_tokens_per_s,
            "total_tokens_per_s": self.total_tokens_per_s,
        }


def from_total(total_tokens_per_s: float, isl: int, osl: int) -> ServedTokens:
    """The request rate behind a total (input + output) token rate."""
    return ServedTokens(total_tokens_per_s / (isl + osl), isl, osl)


def static_batching(
    batch: int, prefill_s: float, decode_step_s: float, isl: int, osl: int, copies: float = 1.0
) -> ServedTokens:
    """``batch`` requests served together: one prefill step of their prompts, then ``osl``
    decode steps of ``decode_step_s`` (one per generated token; the prefill's logits already
    give the first, so this overcounts one step in ``osl``). ``copies``: independent replicas
    of the simulated chips in one server (8 single-chip copies, or 1 tensor-parallel group
    of 8)."""
    return ServedTokens(copies * batch / (prefill_s + osl * decode_step_s), isl, osl)
