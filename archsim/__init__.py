"""archsim: cycle-level accelerator architecture simulator for LLM inference."""

from archsim._version import __version__


def simulate(*args, **kwargs):
    """Simulate one step; see :func:`archsim.simulate.simulate`."""
    from archsim.pipeline import simulate as _simulate

    return _simulate(*args, **kwargs)


__all__ = ["__version__", "simulate"]
