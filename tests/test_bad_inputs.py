"""The bad-input corpus (tests/bad_inputs/cases.yaml): every bad command line or file ends
with one line naming the problem on stderr, nothing on stdout, exit status 2, and no file
written or damaged. Run in-process (the CLI's own main), one fresh folder per case."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from archsim.cli import main

CASES = yaml.safe_load((Path(__file__).parent / "bad_inputs" / "cases.yaml").read_text())


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run ``archsim ARGS`` in this process; (exit status, stdout, stderr)."""
    try:
        main.main(args, prog_name="archsim")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def test_corpus_has_at_least_50_distinct_cases():
    """The corpus is large enough and every case is named once."""
    names = [c["name"] for c in CASES]
    assert len(names) >= 50 and len(set(names)) == len(names)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys, monkeypatch):
    """Exit 2, one stderr line starting `archsim: error:` with the expected text, no stdout,
    and the folder's files unchanged (nothing written, nothing damaged)."""
    for name, text in (case.get("files") or {}).items():
        (tmp_path / name).write_text(text)
    for name in case.get("dirs") or []:
        (tmp_path / name).mkdir()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.chdir(tmp_path)
    args = [str(a).replace("{tmp}", str(tmp_path)) for a in case["args"]]
    code, out, err = run_cli(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert out == ""
    assert len(lines) == 1 and lines[0].startswith("archsim: error: "), err
    assert case["expect"] in lines[0], lines[0]
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert os.path.exists("/dev/null") and not Path("/dev/null").is_file()
