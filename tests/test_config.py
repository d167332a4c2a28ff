"""Architecture configs: presets, extends, overrides, and rejection of bad keys/values."""

from __future__ import annotations

import pytest

from archsim.config import arch_names, load_arch, parse_overrides
from archsim.config.yamlio import parse_scalar
from archsim.core.errors import ConfigError


def test_h100_preset_loads():
    """The shipped h100-like preset validates against its family's schema."""
    p = load_arch("h100-like")
    assert p.family == "h100-like" and p.chip.sms == 132
    assert "h100-like" in arch_names()


def test_scientific_notation_is_a_number():
    """`1e9` is a float in YAML and in --set (PyYAML alone reads it as a string)."""
    assert parse_scalar("1e9") == 1e9
    assert parse_scalar("3.35e12") == 3.35e12
    assert parse_scalar("true") is True


def test_override_changes_value():
    """--set a.b=c replaces exactly that key and changes the config digest."""
    base = load_arch("h100-like")
    p = load_arch("h100-like", parse_overrides(["memory.hbm_bw_bytes_per_s=4e12"]))
    assert p.memory.hbm_bw_bytes_per_s == 4e12
    assert p.memory.hbm_bytes == base.memory.hbm_bytes
    assert p.digest() != base.digest()


@pytest.mark.parametrize(
    "item, message",
    [
        ("no.such.key=1", "unknown config key 'no.such.key'"),
        ("chip=1", "is a section"),
        ("chip.sms.x=1", "is a value"),
        ("chip.sms=-4", "greater than 0"),
        ("chip.sms", "key=value"),
        ("family=x", "unknown config key"),
    ],
)
def test_bad_overrides(item, message):
    """Unknown keys, sections, and out-of-range values are one-line ConfigErrors."""
    with pytest.raises(ConfigError, match=message) as exc:
        load_arch("h100-like", parse_overrides([item]))
    assert "\n" not in str(exc.value)


def test_extends_merges_parent(tmp_path):
    """A preset that `extends:` another inherits every key it does not override."""
    child = tmp_path / "h100-fast.yaml"
    child.write_text("extends: h100-like\nmemory:\n  hbm_bw_bytes_per_s: 4.0e12\n")
    p = load_arch(str(child))
    assert p.memory.hbm_bw_bytes_per_s == 4e12
    assert p.chip.sms == 132 and p.extends == "h100-like" and p.name == "h100-fast"


def test_unknown_yaml_key_rejected(tmp_path):
    """A key the schema does not have, inside a YAML, is rejected."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: h100-like\nchip:\n  warp_drive: 9\n")
    with pytest.raises(ConfigError, match="warp_drive"):
        load_arch(str(bad))


def test_unknown_arch():
    """An unknown preset is a ConfigError that lists the valid presets."""
    with pytest.raises(ConfigError, match="h100-like"):
        load_arch("tpu-v99")


def test_every_yaml_number_has_a_source():
    """Every numeric line of a shipped arch config carries a comment (its source)."""
    from archsim.core.paths import data_dir

    for path in data_dir("arch_configs").glob("*.yaml"):
        for line in path.read_text().splitlines():
            body = line.split("#", 1)[0]
            nested = line.startswith(" ")  # hardware values live in sections, not name/family
            if nested and ":" in body and any(c.isdigit() for c in body.split(":", 1)[1]):
                assert "#" in line, f"{path.name}: no source for: {line.strip()}"


def test_families_register_themselves():
    """Every family module in archsim/arch registers by name; a YAML naming an unknown family
    is a ConfigError listing the registered ones."""
    from archsim.core.registry import family_names

    assert {"h100-like", "groq-like"} <= set(family_names())


def test_unknown_family_in_yaml(tmp_path):
    """`family: warp-drive` in a YAML is refused with the registered families listed."""
    bad = tmp_path / "x.yaml"
    bad.write_text("family: warp-drive\n")
    with pytest.raises(ConfigError, match="registered: .*groq-like.*h100-like"):
        load_arch(str(bad))
