"""Plots: the roofline's numbers (every op role under its machine's ceilings, ceilings from the
resolved config), and the three figures written as real image files."""

from __future__ import annotations

import subprocess
import sys

import pytest

import archsim
from archsim.core.errors import ArchsimError
from archsim.plot import plot_sweep, roofline

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("arch, kw", [
    ("h100-like", dict(batch=8, ctx=1024)),
    ("h100-like", dict(phase="prefill", seq=1024)),
    ("groq-like", dict(batch=4, ctx=256)),
])  # fmt: skip
def test_roofline_points_sit_under_the_ceilings(arch, kw):
    """Each role's achieved FLOP/s <= min(peak, intensity x bandwidth), and decode projections
    sit at the intensity a formula gives: 2 x batch FLOPs per weight element of 2 bytes."""
    r = archsim.simulate(arch, "llama3-8b", layers=2, **kw)
    rl = roofline(r)
    assert rl.points
    for p in rl.points:
        assert p.achieved <= rl.ceiling(p.intensity) * (1 + 1e-9), p.role
    if arch == "h100-like" and kw.get("phase", "decode") == "decode":
        gate_up = next(p for p in rl.points if p.role == "gate_up_proj")
        # 2 x 8 x N x K FLOPs over N x K x 2 B of weights (+ the small activations): ~8
        assert 7.9 < gate_up.intensity <= 8.0


def test_roofline_uses_the_overridden_config():
    """`--set chip.boost_clock_hz=1.5e9` lowers the compute ceiling to 132 x 4096 x 1.5 GHz."""
    r = archsim.simulate("h100-like", "llama3-8b", batch=8, ctx=256, layers=1,
                         overrides={"chip.boost_clock_hz": 1.5e9})  # fmt: skip
    assert roofline(r).peak_flops == pytest.approx(132 * 4096 * 1.5e9)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "archsim.cli", *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_plot_commands_write_images(tmp_path):
    """roofline, breakdown and sweep each write a PNG; a bad path is one line and exit 2."""
    rl, bd = tmp_path / "rl.png", tmp_path / "bd.png"
    assert _cli("plot", "roofline", "--model", "llama3-8b", "--layers", "1", "--out",
                str(rl)).returncode == 0  # fmt: skip
    assert _cli("plot", "breakdown", "--model", "llama3-8b", "--layers", "1", "--arch",
                "h100-like,groq-like", "--out", str(bd)).returncode == 0  # fmt: skip
    table = tmp_path / "s.csv"
    assert _cli("sweep", "--arch", "h100-like", "--model", "llama3-8b", "--layers", "1",
                "--batch", "1,4", "--out", str(table)).returncode == 0  # fmt: skip
    sw = tmp_path / "sw.png"
    assert _cli("plot", "sweep", str(table), "--x", "batch", "--out", str(sw)).returncode == 0
    for path in (rl, bd, sw):
        assert path.read_bytes()[:8] == PNG
    bad = _cli("plot", "roofline", "--out", str(tmp_path / "x.txt"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_sweep_plot_refuses_unknown_columns(tmp_path):
    """A column that is neither a result/scenario key nor an overridden key is an error."""
    table = tmp_path / "s.csv"
    _cli("sweep", "--arch", "h100-like", "--model", "llama3-8b", "--layers", "1", "--out",
         str(table))  # fmt: skip
    with pytest.raises(ArchsimError, match="'nope'"):
        plot_sweep(table, "nope", "seconds", "arch", tmp_path / "x.png")


def test_missing_matplotlib_is_one_clear_error(monkeypatch):
    """Without the `plot` extra, plotting says how to install it."""
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    from archsim.plot import _pyplot

    with pytest.raises(ArchsimError, match=r"pip install 'archsim\[plot\]'"):
        _pyplot()
