"""archsim: cycle-level accelerator architecture simulator for LLM inference."""

from archsim.core.version import __version__


def simulate(*args, **kwargs):
    """Simulate one step; see :func:`archsim.pipeline.simulate`."""
    from archsim.pipeline import simulate as _simulate

    return _simulate(*args, **kwargs)


def simulate_kernel(*args, **kwargs):
    """Time one operator; see :func:`archsim.kernel.simulate_kernel`."""
    from archsim.kernel import simulate_kernel as _simulate_kernel

    return _simulate_kernel(*args, **kwargs)


__all__ = ["__version__", "simulate", "simulate_kernel"]
