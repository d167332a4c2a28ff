"""Packaging: the shipped YAML folders travel inside the wheel and are found from it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from archsim.core.paths import data_dir

ROOT = Path(__file__).resolve().parent.parent


def test_data_dirs_found_from_source_tree():
    """In a checkout, data_dir() finds the top-level folders the wheel would carry."""
    assert (data_dir("arch_configs") / "h100-like.yaml").is_file()
    assert (data_dir("workloads") / "llama3-70b.yaml").is_file()


@pytest.mark.slow
def test_wheel_carries_configs_and_workloads(tmp_path):
    """`pip wheel` puts every arch config and workload under archsim/_data/."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("archsim-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("arch_configs", "workloads"):
        for path in (ROOT / folder).glob("*.yaml"):
            assert f"archsim/_data/{folder}/{path.name}" in names
