"""Documentation stays complete: every key of `archsim run --json` is in docs/cli.md, every
family output in extra is in that family's page, every subcommand in docs/cli.md."""

from __future__ import annotations

from pathlib import Path

import pytest

import archsim

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _documented(key: str, text: str) -> bool:
    return f"`{key}`" in text or f"`{key}," in text or f", {key}`" in text or f" {key}," in text


def _family_presets() -> list[str]:
    from archsim.config import arch_names
    from archsim.core.registry import family_names

    return [f for f in family_names() if f in arch_names()]


@pytest.mark.parametrize("arch", _family_presets())
def test_every_json_key_is_documented(arch):
    """Top-level keys of the result in docs/cli.md; `extra` keys in docs/arch/<family>.md."""
    r = archsim.simulate(arch, "llama3-8b", batch=2, ctx=64, layers=1).to_dict()
    cli = (DOCS / "cli.md").read_text()
    missing = [k for k in r if not _documented(k, cli)]
    assert not missing, f"undocumented output keys in docs/cli.md: {missing}"
    page = (DOCS / "arch" / f"{r['family']}.md").read_text()
    missing = [k for k in r["extra"] if f"`{k}`" not in page]
    assert not missing, f"undocumented extra keys in docs/arch/{r['family']}.md: {missing}"


def test_every_subcommand_is_documented():
    """Each CLI command (and each trace/plot/list subcommand) appears in docs/cli.md."""
    from archsim.cli import main

    cli = (DOCS / "cli.md").read_text()
    for name, cmd in main.commands.items():
        assert f"archsim {name}" in cli, name
        for sub in getattr(cmd, "commands", {}):
            assert sub in cli, f"{name} {sub}"
