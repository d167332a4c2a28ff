"""Regenerate the golden instruction streams after an intended lowering change.

Run by hand (never from a test): python tests/golden/regen.py
Then read the diff (git diff tests/golden) and commit it with the change that caused it.
"""

from __future__ import annotations

from pathlib import Path

import archsim

HERE = Path(__file__).resolve().parent

# name -> simulate() arguments; small enough to read, wide enough to cover every opcode kind
CASES = {
    "h100-like_llama3-8b_decode_b2_L1": dict(
        arch="h100-like", model="llama3-8b", phase="decode", batch=2, ctx=100, layers=1
    ),
    "h100-like_llama3-8b_prefill_tp2_L1": dict(
        arch="h100-like", model="llama3-8b", phase="prefill", batch=1, seq=256, layers=1, chips=2
    ),
    "groq-like_llama3-8b_decode_b1_L1": dict(
        arch="groq-like", model="llama3-8b", phase="decode", batch=1, ctx=100, layers=1
    ),
}


def stream_text(case: str) -> str:
    """The lowered stream with each instruction's work, latency and unit interval: a change
    to the lowering or to a timing key (an efficiency, a bandwidth) shows in the diff."""
    r = archsim.simulate(**CASES[case])
    return r.stream.dumps(r.timing)


if __name__ == "__main__":
    for case in CASES:
        (HERE / f"{case}.txt").write_text(stream_text(case))
        print(f"wrote {case}.txt")
