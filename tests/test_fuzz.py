"""Fuzzing the loaders and the command line (hypothesis): whatever text an arch YAML, a
model YAML or a Hugging Face config.json holds, and whatever arguments reach the parser,
archsim answers with a result or one ArchsimError line — never a traceback."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archsim.core.errors import ArchsimError
from archsim.graph.model import load_model

SETTINGS = settings(
    max_examples=60, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)  # fmt: skip

yaml_text = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.tuples(
            st.sampled_from(["family", "extends", "chip", "memory", "name", "sms", "x", "- a"]),
            st.sampled_from(
                [
                    "h100-like",
                    "groq-like",
                    "1e9",
                    "-3",
                    "[1, 2]",
                    "{a: 1}",
                    "",
                    "~",
                    "inf",
                    "true",
                    "'",
                    "{",
                ]
            ),  # fmt: skip
        ),
        max_size=6,
    ).map(lambda kv: "\n".join(f"{k}: {v}" for k, v in kv)),
)

json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
hf_keys = ["hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
           "vocab_size", "num_key_value_heads", "head_dim", "n_routed_experts",
           "kv_lora_rank", "max_position_embeddings", "hidden_act"]  # fmt: skip
hf_config = st.one_of(
    json_value,
    st.dictionaries(st.sampled_from(hf_keys), st.integers(-2, 5000) | st.text(max_size=4)),
)


@SETTINGS
@given(text=yaml_text)
def test_arch_yaml_loader_never_crashes(text, tmp_path_factory):
    """Any text as an arch YAML: a validated config or one ArchsimError line."""
    from archsim.config import load_arch

    path = tmp_path_factory.mktemp("arch") / "fuzz.yaml"
    path.write_text(text)
    try:
        load_arch(str(path))
    except ArchsimError as exc:
        assert "\n" not in str(exc)


@SETTINGS
@given(text=yaml_text)
def test_model_yaml_loader_never_crashes(text, tmp_path_factory):
    """Any text as a model YAML: a validated ModelSpec or one ArchsimError line."""
    path = tmp_path_factory.mktemp("model") / "fuzz.yaml"
    path.write_text(text)
    try:
        load_model(str(path))
    except ArchsimError as exc:
        assert "\n" not in str(exc)


@SETTINGS
@given(cfg=hf_config)
def test_hf_config_loader_never_crashes(cfg, tmp_path_factory):
    """Any JSON document as a config.json: a validated ModelSpec or one ArchsimError line."""
    path = tmp_path_factory.mktemp("hf") / "config.json"
    path.write_text(json.dumps(cfg))
    try:
        load_model(str(path))
    except ArchsimError as exc:
        assert "\n" not in str(exc)


TOKENS = ["run", "kernel", "list", "trace", "show", "archs", "models", "gemm", "attention",
          "rmsnorm", "--arch", "h100-like", "groq-like", "nope", "--model", "llama3-8b",
          "nope", "--batch", "--ctx", "--seq", "--layers", "--m", "--n", "--k", "--rows",
          "--cols", "--heads", "--head-dim", "--precision", "int8", "w=int4", "--set",
          "chip.sms=4", "x=y", "--json", "--phase", "prefill", "1", "2", "0", "-1", "1e3",
          "abc", "", "--help", "--version", "--chips", "auto"]  # fmt: skip


# capsys is read (and so emptied) once per example: sharing it between examples is safe
@settings(SETTINGS, max_examples=80)
@given(argv=st.lists(st.sampled_from(TOKENS), min_size=1, max_size=8))
def test_command_line_never_tracebacks(argv, capsys):
    """Random argument lists: exit 0 with output, or exit 2 with one `archsim: error:` line;
    never a traceback or an internal error. Runs stay small (one decoder layer)."""
    from archsim.cli import main

    args = [*argv, "--layers", "1"] if argv[0] == "run" else argv
    try:
        main.main(args, prog_name="archsim")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, (args, err)
    assert code in (0, 2), (args, code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("archsim: error:"), (args, err)
