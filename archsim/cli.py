"""archsim command line. Results go to stdout, progress and errors to stderr.

Bad input ends with one line ``archsim: error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import click

from archsim.core.errors import ArchsimError
from archsim.core.version import __version__

DEFAULT_ARCH = "h100-like"
DEFAULT_MODEL = "llama3-70b"


def _fail(msg: str) -> None:
    click.echo(f"archsim: error: {msg}", err=True)
    sys.exit(2)


def _layers(value: str) -> int | None:
    if value == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        raise ArchsimError(f"--layers must be 'all' or a positive integer, got {value!r}") from None
    if n <= 0:
        raise ArchsimError(f"--layers must be 'all' or a positive integer, got {value!r}")
    return n


def _scenario(
    phase, batch, ctx, seq, precision, chips, layers, overrides, max_instructions=None
) -> dict[str, Any]:
    """The keyword arguments of archsim.simulate from the shared scenario options."""
    from archsim.pipeline import DEFAULT_MAX_INSTRUCTIONS

    if max_instructions is not None and max_instructions <= 0:
        raise ArchsimError(f"--max-instructions must be positive, got {max_instructions}")
    return dict(
        max_instructions=max_instructions or DEFAULT_MAX_INSTRUCTIONS,
        phase=phase,
        batch=batch,
        ctx=ctx,
        seq=seq,
        layers=_layers(layers),
        precision=precision,
        chips=chips,
        overrides=list(overrides),
    )


def _arch_list(archs: str) -> list[str]:
    """``--arch all`` or ``a,b,c`` -> preset names."""
    from archsim.config import arch_names

    names = arch_names() if archs == "all" else [a.strip() for a in archs.split(",") if a.strip()]
    if not names:
        raise ArchsimError(f"--arch names no architecture: {archs!r}")
    return names


def _check_archs(names: list[str]) -> None:
    """Every name is a preset or a YAML path that resolves (checked before anything runs)."""
    from archsim.config.arch import resolve_raw

    for name in names:
        resolve_raw(name)


def scenario_options(f):
    """Options shared by run and compare."""
    opts = [
        click.option(
            "--model",
            default=DEFAULT_MODEL,
            show_default=True,
            help="model name, alias, workloads YAML or Hugging Face config.json",
        ),
        click.option(
            "--phase", type=click.Choice(["decode", "prefill"]), default="decode", show_default=True
        ),
        click.option(
            "--batch", type=int, default=1, show_default=True, help="sequences in the step"
        ),
        click.option(
            "--ctx",
            type=int,
            default=2048,
            show_default=True,
            help="decode: cached tokens each sequence attends over",
        ),
        click.option(
            "--seq",
            type=int,
            default=2048,
            show_default=True,
            help="prefill: prompt tokens per sequence",
        ),
        click.option(
            "--precision",
            default="bf16",
            show_default=True,
            help="bf16 | fp8 | int8 | int4 | w=..,a=..,kv=..",
        ),
        click.option(
            "--chips", default="auto", show_default=True, help="'auto' (fewest that fit) or a count"
        ),
        click.option(
            "--layers",
            default="all",
            show_default=True,
            help="'all' (whole model) or N decoder layers",
        ),
        click.option(
            "--set",
            "overrides",
            multiple=True,
            metavar="KEY=VALUE",
            help="override an arch config key, e.g. --set memory.hbm_bw_bytes_per_s=4e12",
        ),
        click.option("--json", "as_json", is_flag=True, help="print one JSON document"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


class _Group(click.Group):
    """Turns every error into one line on stderr and exit status 2 (bad input) or 1 (an
    internal error, which is a bug: its one line says so); ``--debug`` anywhere on the
    command line shows the traceback instead."""

    def main(self, args: list[str] | None = None, *rest: Any, **kwargs: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv
        argv = [a for a in argv if a != "--debug"]
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(argv, *rest, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `archsim` or a bare group
            click.echo(exc.ctx.get_help() if exc.ctx else self.get_help(click.Context(self)))
            sys.exit(0)
        except ArchsimError as exc:
            if debug:
                raise
            _fail(str(exc))
        except click.exceptions.Abort:
            _fail("aborted")
        except click.ClickException as exc:
            _fail(exc.format_message().replace("\n", " "))
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted")
        except Exception as exc:  # a bug: one line, the traceback with --debug
            if debug:
                raise
            click.echo(
                f"archsim: internal error: {type(exc).__name__}: {exc} (a bug; rerun with "
                "--debug for the traceback and report it)".replace("\n", " "),
                err=True,
            )
            sys.exit(1)
        if isinstance(rv, int):
            sys.exit(rv)
        return rv


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="archsim")
def main() -> None:
    """archsim: how many cycles, how much bandwidth and how many chips an LLM step takes.

    Add --debug anywhere to see the traceback of an error instead of its one line."""


@main.command()
@click.option(
    "--arch",
    default=DEFAULT_ARCH,
    show_default=True,
    help="architecture preset or a YAML path (see `archsim list archs`)",
)
@scenario_options
@click.option(
    "--trace",
    "trace_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="write the timeline to this HDF5 file",
)
@click.option(
    "--perfetto",
    "perfetto_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="also write a Perfetto/Chrome JSON timeline",
)
@click.option(
    "--max-instructions",
    type=int,
    default=None,
    help="refuse a step whose instruction stream the family estimates above this "
    "(default 20,000,000, about 4 GB)",
)
@click.option(
    "--show-placement",
    is_flag=True,
    help="print where the model was placed (families that place it: regions, wafers)",
)
@click.option(
    "--routing-skew",
    type=float,
    default=0.0,
    show_default=True,
    help="MoE models: router imbalance (0 uniform; s > 0 Zipf popularity (e+1)^-s)",
)
def run(
    arch,
    model,
    phase,
    batch,
    ctx,
    seq,
    precision,
    chips,
    layers,
    overrides,
    as_json,
    trace_path,
    perfetto_path,
    max_instructions,
    show_placement,
    routing_skew,
) -> None:
    """Simulate one step of MODEL on ARCH."""
    from archsim.outputs import check_target
    from archsim.pipeline import simulate
    from archsim.report import result_table

    for path, what in ((trace_path, "trace"), (perfetto_path, "perfetto timeline")):
        if path:
            check_target(path, what)  # refused before the simulation runs
    scenario = _scenario(
        phase, batch, ctx, seq, precision, chips, layers, overrides, max_instructions
    )
    result = simulate(arch, model, routing_skew=routing_skew, **scenario)
    if trace_path:
        from archsim.trace import write_trace

        click.echo(f"trace written to {write_trace(result, trace_path)}", err=True)
    if perfetto_path:
        _perfetto(result, trace_path, perfetto_path)
    if show_placement:
        _show_placement(result, arch, overrides, err=as_json)
    if as_json:
        click.echo(json.dumps(result.to_dict(), sort_keys=True))
    else:
        result_table(result)


def _perfetto(result, trace_path: str | None, perfetto_path: str) -> None:
    """Export the run's timeline to Perfetto JSON (through its HDF5 trace: the one written,
    or a temporary one that is removed)."""
    import tempfile

    from archsim.trace import export_perfetto, read_trace, write_trace

    if trace_path:
        export_perfetto(read_trace(trace_path), perfetto_path)
    else:
        with tempfile.TemporaryDirectory(prefix="archsim-") as tmp:
            path = write_trace(result, f"{tmp}/run.h5")
            export_perfetto(read_trace(path), perfetto_path)
    click.echo(f"perfetto timeline written to {perfetto_path}", err=True)


def _show_placement(result, arch, overrides, err: bool) -> None:
    """The family's placement text (stderr under --json, which keeps stdout one document)."""
    from archsim.config import load_arch, parse_overrides
    from archsim.core.registry import get_family

    params = load_arch(arch, parse_overrides(list(overrides)))
    text = get_family(params.family).describe_placement(result.meta["plan"], params)
    if text is None:
        raise ArchsimError(f"{result.family} has no placement to show (--show-placement)")
    click.echo(text, err=err)


@main.command()
@click.option(
    "--arch", "archs", default="all", show_default=True, help="comma-separated presets, or 'all'"
)
@scenario_options
@click.option("--slo-tpot", type=float, default=None, metavar="SECONDS",
              help="per machine, the largest decode batch whose TPOT at load (batch / "
              "tokens/s) is at most this (--batch is then ignored)")  # fmt: skip
@click.option("--max-batch", type=int, default=1024, show_default=True,
              help="the largest batch --slo-tpot tries")  # fmt: skip
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="also write the rows to this CSV file")  # fmt: skip
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="also draw bars per machine and a latency/throughput scatter "
              "(.png/.svg/.pdf)")  # fmt: skip
def compare(archs, model, phase, batch, ctx, seq, precision, chips, layers, overrides, as_json,
            slo_tpot, max_batch, csv_path, plot_path) -> None:  # fmt: skip
    """Run MODEL on several architectures side by side: chips, racks, latency, tokens/s
    (per user, system, chip, rack), bound, memory, bandwidth, power, energy and cost per
    token (docs/compare.md)."""
    from archsim.compare import compare as compare_rows
    from archsim.compare import plot_compare, write_csv
    from archsim.pipeline import simulate
    from archsim.report import compare_table

    names = _arch_list(archs)
    _check_archs(names)  # an unknown arch exits 2 before anything runs
    if csv_path:
        from archsim.outputs import check_target

        check_target(csv_path, "CSV table")
    if plot_path:
        from archsim.plot import check_output

        check_output(plot_path)
    scenario = _scenario(phase, batch, ctx, seq, precision, chips, layers, overrides)
    rows = compare_rows(
        names, simulate, model, scenario, slo_tpot_s=slo_tpot, max_batch=max_batch,
        progress=lambda name: click.echo(f"simulating {name} ...", err=True),
    )  # fmt: skip
    for row in rows:
        for warning in row.get("warnings", []):
            click.echo(f"archsim: warning: {warning}", err=True)
    if csv_path:
        click.echo(f"rows written to {write_csv(rows, csv_path)}", err=True)
    if plot_path:
        title = f"{model} · {phase}" + (f" · TPOT <= {slo_tpot:g} s" if slo_tpot else "")
        click.echo(f"comparison plot written to {plot_compare(rows, plot_path, title)}",
                   err=True)  # fmt: skip
    if as_json:
        click.echo(json.dumps(rows, sort_keys=True))
    else:
        compare_table(rows)


@main.group(name="list", cls=click.Group)
def list_() -> None:
    """List shipped architectures or models."""


@list_.command("archs")
def list_archs() -> None:
    from archsim.config.arch import arch_names
    from archsim.config.yamlio import load_yaml
    from archsim.core.paths import data_dir

    for name in arch_names():
        raw = load_yaml(data_dir("arch_configs") / f"{name}.yaml")
        family = raw.get("family", "?")
        base = f" (extends {raw['extends']})" if raw.get("extends") else ""
        click.echo(f"{name:<16} {family:<14} {raw.get('description', '')}{base}")


@list_.command("models")
def list_models() -> None:
    from archsim.graph.model import ALIASES, load_model, model_names

    for name in model_names():
        spec = load_model(name)
        aliases = ", ".join(sorted(a for a, t in ALIASES.items() if t == name))
        kind = "moe" if spec.is_moe else "dense"
        click.echo(
            f"{name:<14} {kind:<6} {spec.num_layers:>4} layers  hidden {spec.hidden_size:>6}"
            + (f"  aliases: {aliases}" if aliases else "")
        )


@main.group(cls=click.Group)
def trace() -> None:
    """Inspect or export an HDF5 trace written by `archsim run --trace`."""


@trace.command("show")
@click.argument("path", type=click.Path(dir_okay=False))
def trace_show(path) -> None:
    """Summarise a trace: what produced it and the busiest units."""
    from archsim.report import trace_summary
    from archsim.trace import read_trace

    trace_summary(read_trace(path))


@trace.command("export")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--perfetto",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Chrome/Perfetto JSON to write",
)
def trace_export(path, out) -> None:
    """Convert a trace to Perfetto/Chrome JSON."""
    from archsim.trace import export_perfetto, read_trace

    export_perfetto(read_trace(path), out)
    click.echo(f"perfetto timeline written to {out}", err=True)


@main.command()
@click.argument("spec", required=False, type=click.Path(dir_okay=False))
@click.option("--arch", default=None, help="preset(s), comma-separated")
@click.option("--model", default=None, help="model(s), comma-separated")
@click.option("--phase", default=None, help="decode and/or prefill, comma-separated")
@click.option("--batch", default=None, help="e.g. 1,8,64")
@click.option("--ctx", default=None, help="e.g. 512,2048,8192")
@click.option("--seq", default=None, help="e.g. 512,2048")
@click.option("--precision", default=None, help="e.g. bf16,fp8")
@click.option("--chips", default=None, help="auto or counts, e.g. 2,4,8")
@click.option("--layers", default=None, help="all or counts")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=V1,V2",
    help="config key and the values to sweep, e.g. memory.hbm_bw_bytes_per_s=3e12,4e12",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="results table (.h5, .csv, .jsonl or .parquet); rows are appended as points "
    "finish, a rerun resumes",
)
@click.option("--workers", type=int, default=None,
              help="local worker processes (default: every core)")  # fmt: skip
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="run the points on this Dask scheduler (the cluster extra)")  # fmt: skip
@click.option("--dask", "dask_mode", type=click.Choice(["local"]), default=None,
              help="start a Dask LocalCluster of --workers processes here")  # fmt: skip
@click.option("--point-timeout", type=float, default=None, metavar="SECONDS",
              help="give up on a point after this long (its row records the timeout)")  # fmt: skip
@click.option("--progress", "bar", type=click.Choice(["bar", "lines", "auto"]), default="auto",
              show_default=True,
              help="a progress bar, or a line per point (auto: a bar on a terminal)")  # fmt: skip
def sweep(spec, arch, model, phase, batch, ctx, seq, precision, chips, layers, overrides, out,
          workers, scheduler, dask_mode, point_timeout, bar) -> None:  # fmt: skip
    """Simulate every combination of the listed values (from SPEC.yaml and/or options)."""
    from archsim.sweep import expand_grid, load_spec, run_sweep

    axes, over = load_spec(spec) if spec else ({}, {})
    cli_axes = {
        "arch": arch,
        "model": model,
        "phase": phase,
        "batch": batch,
        "ctx": ctx,
        "seq": seq,
        "precision": precision,
        "chips": chips,
        "layers": layers,
    }
    axes.update({k: v for k, v in cli_axes.items() if v is not None})
    over.update(
        {k: str(v) if not isinstance(v, list) else v for k, v in _raw_overrides(overrides).items()}
    )
    if scheduler and dask_mode:
        raise ArchsimError("give --scheduler or --dask local, not both")
    workers = workers if workers is not None else (os.cpu_count() or 1)
    show_bar = bar == "bar" or (bar == "auto" and sys.stderr.isatty())
    counts = run_sweep(
        expand_grid(axes, over), out, workers=workers, scheduler=scheduler or dask_mode,
        point_timeout_s=point_timeout, show_bar=show_bar,
    )  # fmt: skip
    click.echo(json.dumps(counts), err=True)


def _raw_overrides(items) -> dict[str, str]:
    """KEY=V1,V2 strings kept as text (expand_grid splits and parses the values)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ArchsimError(f"--set expects key=value[,value...], got {item!r}")
        out[key.strip()] = value.strip()
    return out


# ---- kernel: one operator on one machine -------------------------------------------------
@main.command()
@click.argument("op")
@click.option("--arch", default=DEFAULT_ARCH, show_default=True, help="architecture preset")
@click.option("--m", type=int, default=None, help="gemm/bmm: rows of the left operand")
@click.option("--n", type=int, default=None, help="gemm/bmm: columns of the result")
@click.option("--k", type=int, default=None, help="gemm/bmm: the contraction")
@click.option("--batch", type=int, default=None, help="bmm: products; attention: sequences")
@click.option("--heads", type=int, default=None, help="attention: query heads")
@click.option("--kv-heads", type=int, default=None, help="attention: KV heads (default heads)")
@click.option("--head-dim", type=int, default=None, help="attention: head dimension")
@click.option("--q-len", type=int, default=None, help="attention: new tokens (1 = decode)")
@click.option("--ctx", type=int, default=None, help="attention: keys attended over")
@click.option("--causal/--no-causal", default=None, help="attention: causal mask")
@click.option("--rows", type=int, default=None, help="elementwise ops: rows")
@click.option("--cols", type=int, default=None, help="elementwise ops: columns")
@click.option("--bytes", "nbytes", type=int, default=None, help="all-reduce/send-recv: bytes")
@click.option("--ranks", type=int, default=None, help="all-reduce/send-recv: chips")
@click.option("--dtype", default="bf16", show_default=True,
              help="bf16 | fp8 | int8 | int4 (W4A16) | w=..,a=..,kv=..")  # fmt: skip
@click.option("--repeat", type=int, default=1, show_default=True,
              help="back-to-back calls timed; the result is per call")  # fmt: skip
@click.option("--launch", default=None,
              help="h100-like: graph (GPU time in a CUDA graph, the default) or eager (each "
              "launch from the host first)")  # fmt: skip
@click.option("--option", "family_options", multiple=True, metavar="NAME=VALUE",
              help="a family kernel option, e.g. allreduce=ring (cerebras-like)")  # fmt: skip
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override an arch config key")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def kernel(op, arch, m, n, k, batch, heads, kv_heads, head_dim, q_len, ctx, causal, rows, cols,
           nbytes, ranks, dtype, repeat, launch, family_options, overrides,
           as_json) -> None:  # fmt: skip
    """Time one operator OP on ARCH: gemm, bmm, attention, softmax, layernorm, rmsnorm,
    gelu, silu-mul, rope, add, copy, all-reduce, send-recv."""
    from archsim.kernel import simulate_kernel
    from archsim.report import kernel_table

    shape = dict(m=m, n=n, k=k, batch=batch, heads=heads, kv_heads=kv_heads,
                 head_dim=head_dim, q_len=q_len, ctx=ctx, rows=rows, cols=cols,
                 bytes=nbytes, ranks=ranks,
                 causal=None if causal is None else int(causal))  # fmt: skip
    options = {"launch": launch}
    for item in family_options:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ArchsimError(f"--option expects name=value, got {item!r}")
        options[name.strip()] = value.strip()
    r = simulate_kernel(
        arch, op, dtype=dtype, repeat=repeat, overrides=list(overrides), options=options,
        **shape,
    )  # fmt: skip
    if as_json:
        click.echo(json.dumps(r.to_dict(), sort_keys=True))
    else:
        kernel_table(r)


# ---- validate: predicted vs measured H100 cases (archsim/validate.py, docs/validation.md) ----
@main.command()
@click.option("--arch", default="h100-like", show_default=True,
              help="a GPU preset with cases: h100-like, h200, a100-like, b200")  # fmt: skip
@click.option("--group", "groups", multiple=True, help="only these case groups (repeatable)")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="override an arch config key, e.g. --set chip.mma_efficiency=0.7",
)
@click.option("--all", "show_all", is_flag=True, help="list every case, not only the summary")
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
@click.option("--strict", is_flag=True, help="exit 1 if a scored case is out of tolerance")
def validate(arch, groups, overrides, show_all, as_json, strict) -> None:
    """Predict every measured case of a GPU preset in validation/ and report the errors,
    calibration and validation cases apart."""
    from archsim.config.arch import parse_overrides
    from archsim.validate import print_report, run_validation

    report = run_validation(arch, overrides=parse_overrides(list(overrides)), groups=list(groups))
    if as_json:
        click.echo(json.dumps(report.to_dict(), sort_keys=True))
    else:
        print_report(report, show_all=show_all)
    if strict and report.failures:
        sys.exit(1)


# ---- serve: request-level serving simulation (archsim/serve/, docs/serving.md) ------------
def serve_options(f):
    """Options shared by `serve` and `plot serve`: machine, workload, scheduler, KV."""
    opt = click.option
    opts = [
        opt(
            "--arch",
            default=DEFAULT_ARCH,
            show_default=True,
            help="colocated instances' preset (and the baseline of a disaggregated run)",
        ),
        opt("--model", default="llama3-8b", show_default=True, help="model name or YAML"),
        opt(
            "--chips",
            default="auto",
            show_default=True,
            help="chips per instance: 'auto' (fewest that hold the model and the KV pool)",
        ),
        opt("--instances", type=int, default=1, show_default=True, help="data-parallel instances"),
        opt(
            "--size-batch",
            type=int,
            default=32,
            show_default=True,
            help="--chips auto holds the KV of this many requests of the workload's mean length",
        ),
        opt(
            "--set",
            "overrides",
            multiple=True,
            metavar="KEY=VALUE",
            help="override a key of --arch's config",
        ),
        opt(
            "--precision",
            default="bf16",
            show_default=True,
            help="bf16 | fp8 | int8 | int4 | w=..,a=..,kv=..",
        ),
        opt("--kv-precision", default=None, help="KV-cache dtype (bf16 | fp8 | int8 | int4)"),
        opt(
            "--kv-compression",
            type=float,
            default=1.0,
            show_default=True,
            help="stored KV is 1/RATIO of its dtype's bytes (token eviction, quantisation)",
        ),
        opt("--rate", type=float, default=5.0, show_default=True, help="requests per second"),
        opt("--requests", type=int, default=1000, show_default=True),
        opt(
            "--arrival",
            type=click.Choice(["poisson", "gamma", "uniform"]),
            default="poisson",
            show_default=True,
        ),
        opt(
            "--cv",
            type=float,
            default=2.0,
            show_default=True,
            help="gamma arrivals: coefficient of variation of the gaps (>1: bursty)",
        ),
        opt("--prompt-tokens", default="512", show_default=True, help="N | A:B | exp:MEAN"),
        opt("--output-tokens", default="128", show_default=True, help="N | A:B | exp:MEAN"),
        opt(
            "--prefix-tokens",
            type=int,
            default=0,
            show_default=True,
            help="a shared prefix (system prompt) of this many tokens leads every prompt",
        ),
        opt(
            "--prefix-groups",
            type=int,
            default=1,
            show_default=True,
            help="distinct shared prefixes",
        ),
        opt(
            "--turns",
            type=int,
            default=1,
            show_default=True,
            help="turns per conversation (each prompt carries the previous context)",
        ),
        opt(
            "--think-s",
            type=float,
            default=30.0,
            show_default=True,
            help="mean seconds between a conversation's turns",
        ),
        opt("--seed", type=int, default=0, show_default=True),
        opt(
            "--trace",
            "trace_path",
            type=click.Path(dir_okay=False),
            default=None,
            help="requests from a JSONL/CSV trace (arrival_s, prompt_tokens, output_tokens"
            "[, conversation_id, prefix_id, prefix_tokens])",
        ),
        opt(
            "--policy",
            type=click.Choice(["fcfs", "chunked", "slo"]),
            default="chunked",
            show_default=True,
        ),
        opt(
            "--max-batch",
            type=int,
            default=256,
            show_default=True,
            help="sequences in flight per instance",
        ),
        opt(
            "--token-budget",
            type=int,
            default=2048,
            show_default=True,
            help="new tokens per step (chunked prefill)",
        ),
        opt(
            "--preempt",
            type=click.Choice(["recompute", "swap"]),
            default="recompute",
            show_default=True,
        ),
        opt("--slo-ttft", type=float, default=None, help="TTFT target, seconds"),
        opt("--slo-tpot", type=float, default=None, help="TPOT target, seconds"),
        opt(
            "--kv-tiers",
            default="none",
            show_default=True,
            help="KV hierarchy below the device (kv_tiers/NAME.yaml or a path), or none",
        ),
        opt(
            "--kv-idle-s",
            type=float,
            default=None,
            help="an unused cached context leaves the device after this many seconds",
        ),
        opt("--no-reuse", is_flag=True, help="keep nothing after a request (no prefix reuse)"),
        opt(
            "--pair",
            default=None,
            help="a named disaggregated pairing (arch_configs/pairs/NAME.yaml, e.g. "
            "vera-rubin-lpx): its prefill arch, decode arch and KV link",
        ),  # fmt: skip
        opt("--prefill-arch", default=None, help="disaggregation: prefill instances' preset"),
        opt("--decode-arch", default=None, help="disaggregation: decode instances' preset"),
        opt("--prefill-chips", default="auto", show_default=True),
        opt("--decode-chips", default="auto", show_default=True),
        opt("--prefill-instances", type=int, default=1, show_default=True),
        opt("--decode-instances", type=int, default=1, show_default=True),
        opt(
            "--kv-link",
            default="ib-ndr",
            show_default=True,
            help="link the KV crosses from prefill to decode (a link of --kv-tiers, or of "
            "kv_tiers/hgx-h100.yaml)",
        ),
        opt("--draft", default=None, help="speculative decoding: draft model, or 'self'"),
        opt(
            "--draft-layers",
            type=int,
            default=None,
            help="--draft self: the target's first N layers draft",
        ),
        opt("--spec-k", type=int, default=None, help="draft tokens per step"),
        opt(
            "--spec-accept",
            type=float,
            default=0.7,
            show_default=True,
            help="probability each draft token is accepted",
        ),
        opt(
            "--resolution",
            type=float,
            default=1.0,
            show_default=True,
            help="step-time grid density (x2 halves the bucket width; 0: every step shape "
            "simulated)",
        ),
        opt(
            "--sim-layers",
            default="all",
            show_default=True,
            help="simulate N decoder layers and scale to the model (calibrated at one point)",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _apply_pair(kw: dict[str, Any]) -> dict[str, Any]:
    """``--pair NAME``: the pairing's prefill arch, decode arch and KV link, where the
    command line does not give them; the colocated comparison runs on the prefill arch."""
    from archsim.config.yamlio import load_yaml
    from archsim.core.errors import did_you_mean
    from archsim.core.paths import data_dir

    folder = data_dir("arch_configs") / "pairs"
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    if kw["pair"] not in names:
        raise ArchsimError(
            f"unknown pairing {kw['pair']!r}{did_you_mean(kw['pair'], names)} "
            f"(pairings: {', '.join(names)})"
        )
    pair = load_yaml(folder / f"{kw['pair']}.yaml")
    kw = dict(kw)
    for key in ("prefill_arch", "decode_arch"):
        kw[key] = kw[key] or pair[key]
    if kw["kv_link"] == "ib-ndr" and pair.get("kv_link"):  # the default was not overridden
        kw["kv_link"] = pair["kv_link"]
    if kw["arch"] == DEFAULT_ARCH:
        kw["arch"] = kw["prefill_arch"]
    return kw


def _serve_setup(kw: dict[str, Any]):
    """(ServeConfig, requests, make_requests(rate)) from the serve options."""
    from archsim.serve import Lengths, Machine, SchedulerConfig, ServeConfig, SpecConfig
    from archsim.serve.workload import load_trace, synthetic

    def chips(v: str, what: str) -> int | None:
        if v == "auto":
            return None
        try:
            return int(v)
        except ValueError:
            raise ArchsimError(f"{what} must be 'auto' or a count, got {v!r}") from None

    if kw.get("pair"):
        kw = _apply_pair(kw)
    prompt = Lengths.parse(kw["prompt_tokens"], "--prompt-tokens")
    output = Lengths.parse(kw["output_tokens"], "--output-tokens")

    def make(rate: float):
        if kw["trace_path"]:
            reqs = load_trace(kw["trace_path"])
            span = max(r.arrival_s for r in reqs) - min(r.arrival_s for r in reqs)
            if rate is None or span <= 0:
                return reqs
            from dataclasses import replace as _r

            f = (len(reqs) - 1) / span / rate  # time-scale the trace to the asked rate
            return [_r(r, arrival_s=r.arrival_s * f) for r in reqs]
        return synthetic(kw["requests"], rate, prompt, output, process=kw["arrival"],
                         cv=kw["cv"], seed=kw["seed"], prefix_tokens=kw["prefix_tokens"],
                         prefix_groups=kw["prefix_groups"], turns=kw["turns"],
                         think_s=kw["think_s"])  # fmt: skip

    sched = SchedulerConfig(policy=kw["policy"], max_batch=kw["max_batch"],
                            token_budget=kw["token_budget"], preempt=kw["preempt"],
                            slo_ttft_s=kw["slo_ttft"], slo_tpot_s=kw["slo_tpot"])  # fmt: skip
    disagg = kw["prefill_arch"] or kw["decode_arch"]
    spec = None
    if kw["spec_k"] is not None:
        spec = SpecConfig(kw["spec_k"], kw["spec_accept"])
    elif kw["draft"]:
        raise ArchsimError("--draft needs --spec-k (draft tokens per step)")
    tiers = None if kw["kv_tiers"] in ("none", "") else kw["kv_tiers"]
    cfg = ServeConfig(
        model=kw["model"],
        machine=Machine(kw["arch"], chips(kw["chips"], "--chips"), kw["instances"],
                        tuple(kw["overrides"])),
        prefill=Machine(kw["prefill_arch"] or kw["arch"],
                        chips(kw["prefill_chips"], "--prefill-chips"),
                        kw["prefill_instances"]) if disagg else None,
        decode=Machine(kw["decode_arch"] or kw["arch"],
                       chips(kw["decode_chips"], "--decode-chips"),
                       kw["decode_instances"]) if disagg else None,
        precision=kw["precision"], kv_precision=kw["kv_precision"],
        kv_compression=kw["kv_compression"], sched=sched, spec=spec, draft=kw["draft"],
        draft_layers=kw["draft_layers"], tiers=tiers, kv_idle_s=kw["kv_idle_s"],
        reuse=not kw["no_reuse"], kv_link=kw["kv_link"], resolution=kw["resolution"],
        sim_layers=_layers(kw["sim_layers"]), size_batch=kw["size_batch"],
    )  # fmt: skip
    return cfg, make(kw["rate"] if not kw["trace_path"] else None), make


@main.command()
@serve_options
@click.option("--find-max-rate", is_flag=True,
              help="also search the largest rate whose requests meet the SLO")  # fmt: skip
@click.option("--attainment", type=float, default=0.9, show_default=True,
              help="--find-max-rate: share of requests that must meet the SLO")  # fmt: skip
@click.option("--no-compare", is_flag=True,
              help="skip the comparison runs (without reuse / speculation, colocated)")  # fmt: skip
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="write one row per request")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def serve(find_max_rate, attainment, no_compare, csv_path, as_json, **kw) -> None:
    """Serve a stream of requests on ARCH: TTFT, TPOT, throughput and goodput under SLOs."""
    from dataclasses import replace

    from archsim.outputs import check_target, write_text
    from archsim.serve import Server
    from archsim.serve import find_max_rate as search
    from archsim.serve import serve as run_serve
    from archsim.serve.metrics import requests_csv
    from archsim.serve.report import serve_table

    if csv_path:
        check_target(csv_path, "request table")
    cfg, requests, make = _serve_setup(kw)
    cfg = replace(cfg, compare=not no_compare)
    report, jobs = run_serve(cfg, requests, Server(cfg))
    report["workload"]["options"] = {
        k: kw[k]
        for k in ("trace_path", "rate", "requests", "arrival", "cv", "prompt_tokens",
                  "output_tokens", "prefix_tokens", "prefix_groups", "turns", "think_s", "seed")
    }  # fmt: skip
    if find_max_rate:
        if not 0 < attainment <= 1:
            raise ArchsimError(f"--attainment must be within (0, 1], got {attainment}")
        found = search(cfg, make, attainment=attainment, hi=kw["rate"])
        report.update(found)
    if csv_path:
        write_text(csv_path, requests_csv(jobs, cfg.sched.slo_ttft_s, cfg.sched.slo_tpot_s),
                   "request table")  # fmt: skip
        click.echo(f"request table written to {csv_path}", err=True)
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
    else:
        serve_table(report)


@main.command("kv-tiers")
@click.option("--tiers", "name", default="hgx-h100", show_default=True,
              help="kv_tiers/NAME.yaml or a YAML path")  # fmt: skip
@click.option("--arch", default=DEFAULT_ARCH, show_default=True,
              help="the device tier: one chip of this preset ('none' to leave it out)")  # fmt: skip
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a key of --arch's config")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def kv_tiers(name, arch, overrides, as_json) -> None:
    """The KV-cache hierarchy: each tier's capacity, bandwidth to the device and drain time."""
    from archsim.serve.report import tiers_table
    from archsim.serve.tiers import device_tier, load_tiers, tier_rows

    h = load_tiers(name)
    device = None if arch == "none" else device_tier(arch, list(overrides))
    rows = tier_rows(h, device)
    links = {k: v.model_dump() for k, v in h.links.items()}
    if as_json:
        doc = {"name": h.name, "description": h.description, "source": h.source,
               "swap_tier": h.swap_tier, "tiers": rows, "links": links}  # fmt: skip
        click.echo(json.dumps(_finite(doc), sort_keys=True))
    else:
        tiers_table(h.name, rows, links)


def _finite(x: Any) -> Any:
    """JSON has no infinity: an unbounded capacity is written as null."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ---- roofline: the critical batch of decode (archsim/roofline.py, docs/roofline.md) ------
@main.command()
@click.option("--arch", default=DEFAULT_ARCH, show_default=True, help="architecture preset")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="model name or path")
@click.option("--precision", default="bf16", show_default=True,
              help="bf16 | fp8 | int8 | int4 | w=..,a=..,kv=..")  # fmt: skip
@click.option("--ctx", type=int, default=2048, show_default=True,
              help="cached tokens each sequence attends over")  # fmt: skip
@click.option("--layers", default="all", show_default=True,
              help="'all' (whole model) or N decoder layers")  # fmt: skip
@click.option(
    "--chips",
    default="auto",
    show_default=True,
    help="chips of every sweep point ('auto': the fewest that hold the largest batch)",
)
@click.option(
    "--max-batch",
    type=int,
    default=None,
    help="largest batch of the sweep (default: 4 x the rule's batch, a power of 2)",
)
@click.option(
    "--rise",
    type=float,
    default=0.1,
    show_default=True,
    help="the knee: where the step time is this fraction above its batch-1 floor",
)
@click.option("--routing-skew", type=float, default=0.0, show_default=True,
              help="MoE models: router imbalance (0 uniform; s > 0 Zipf (e+1)^-s)")  # fmt: skip
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override an arch config key")  # fmt: skip
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="also draw step time and tokens/s vs batch (.png/.svg/.pdf)")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def roofline(arch, model, precision, ctx, layers, chips, max_batch, rise, routing_skew,
             overrides, plot_path, as_json) -> None:  # fmt: skip
    """The critical batch of decode: each memory tier's ridge point, the rule's batch
    (ridge x total / active parameters) and the knee the cycle model finds by sweeping the
    batch."""
    from archsim.report import critical_batch_table
    from archsim.roofline import critical_batch

    if plot_path:
        from archsim.plot import check_output

        check_output(plot_path)

    def progress(b: int) -> None:
        click.echo(f"decode batch {b} ...", err=True)

    cb = critical_batch(
        arch, model, precision=precision, ctx=ctx, layers=_layers(layers), chips=chips,
        overrides=list(overrides), max_batch=max_batch, rise=rise, routing_skew=routing_skew,
        progress=progress,
    )  # fmt: skip
    if plot_path:
        from archsim.plot import plot_critical_batch

        click.echo(f"roofline sweep plot written to {plot_critical_batch(cb, plot_path)}", err=True)
    if as_json:
        click.echo(json.dumps(cb.to_dict(), sort_keys=True))
    else:
        critical_batch_table(cb)


# ---- plot: roofline, breakdown, sweep (matplotlib, the `plot` extra) ----------------------
@main.group(cls=click.Group)
def plot() -> None:
    """Figures: a run's roofline, machines' time breakdown, a sweep's columns, a serving
    curve."""


@plot.command("roofline")
@click.option("--arch", default=DEFAULT_ARCH, show_default=True, help="architecture preset")
@scenario_options
@click.option("--out", required=True, type=click.Path(dir_okay=False), help=".png/.svg/.pdf")
def plot_roofline_cmd(arch, model, phase, batch, ctx, seq, precision, chips, layers, overrides,
                      as_json, out) -> None:  # fmt: skip
    """Each op's achieved FLOP/s against its arithmetic intensity, under the machine's
    ceilings (--json prints the points instead of only writing the figure)."""
    from archsim.pipeline import simulate
    from archsim.plot import check_output, plot_roofline, roofline

    check_output(out)
    r = simulate(arch, model, **_scenario(phase, batch, ctx, seq, precision, chips, layers,
                                          overrides))  # fmt: skip
    click.echo(f"roofline written to {plot_roofline(r, out)}", err=True)
    if as_json:
        rl = roofline(r)
        click.echo(
            json.dumps(
                {
                    "peak_flops_per_s": rl.peak_flops,
                    "peak_bytes_per_s": rl.peak_bw,
                    "tier": rl.tier,
                    "points": [p.__dict__ for p in rl.points],
                }
            )
        )


@plot.command("breakdown")
@click.option("--arch", "archs", default="all", show_default=True,
              help="comma-separated presets, or 'all'")  # fmt: skip
@scenario_options
@click.option("--out", required=True, type=click.Path(dir_okay=False), help=".png/.svg/.pdf")
def plot_breakdown_cmd(archs, model, phase, batch, ctx, seq, precision, chips, layers,
                       overrides, as_json, out) -> None:  # fmt: skip
    """Critical-path time by op, one bar per machine (machines that refuse are left out)."""
    from archsim.pipeline import simulate
    from archsim.plot import check_output, plot_breakdown

    check_output(out)
    names = _arch_list(archs)
    _check_archs(names)
    scenario = _scenario(phase, batch, ctx, seq, precision, chips, layers, overrides)
    results = []
    for name in names:
        try:
            results.append(simulate(name, model, **scenario))
        except ArchsimError as exc:
            click.echo(f"{name}: left out: {exc}", err=True)
    if not results:
        raise ArchsimError("no architecture could run this scenario; nothing to plot")
    click.echo(f"breakdown written to {plot_breakdown(results, out)}", err=True)


@plot.command("serve")
@serve_options
@click.option("--rates", required=True, help="arrival rates to run, e.g. 1,2,4,8")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help=".png/.svg/.pdf")
@click.option("--json", "as_json", is_flag=True, help="also print the points")
def plot_serve_cmd(rates, out, as_json, **kw) -> None:
    """TTFT, TPOT and end-to-end latency percentiles against the arrival rate."""
    from dataclasses import replace

    from archsim.plot import check_output, plot_serve, serve_curve

    check_output(out)
    try:
        values = [float(x) for x in rates.split(",") if x.strip()]
    except ValueError:
        raise ArchsimError(f"--rates must be comma-separated numbers, got {rates!r}") from None
    if not values or min(values) <= 0:
        raise ArchsimError(f"--rates must be positive numbers, got {rates!r}")
    cfg, _, make = _serve_setup(kw)
    points = serve_curve(replace(cfg, compare=False), make, sorted(values))
    click.echo(f"serving curve written to {plot_serve(points, out)}", err=True)
    if as_json:
        click.echo(json.dumps(points, sort_keys=True))


@plot.command("sweep")
@click.argument("table", type=click.Path(dir_okay=False))
@click.option("--x", "x", required=True, help="column for the x axis, e.g. batch")
@click.option("--y", "y", default="tokens_per_s", show_default=True, help="column for the y axis")
@click.option("--group", default="arch", show_default=True, help="one line per value of this")
@click.option("--logx", is_flag=True)
@click.option("--logy", is_flag=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help=".png/.svg/.pdf")
def plot_sweep_cmd(table, x, y, group, logx, logy, out) -> None:
    """Two columns of a sweep table (.csv or .jsonl); overridden keys work as columns."""
    from archsim.plot import check_output, plot_sweep

    check_output(out)
    path = plot_sweep(table, x, y, group, out, logx=logx, logy=logy)
    click.echo(f"sweep plot written to {path}", err=True)


@plot.command("pareto")
@click.argument("table", type=click.Path(dir_okay=False))
@click.option("--x", "x", required=True, help="column for the x axis, e.g. seconds")
@click.option("--y", "y", required=True, help="column for the y axis, e.g. tokens_per_s_per_chip")
@click.option("--x-max/--x-min", default=False, show_default=True,
              help="whether larger x is better (default: smaller, like a latency)")  # fmt: skip
@click.option("--y-max/--y-min", default=True, show_default=True,
              help="whether larger y is better (default: larger, like a throughput)")  # fmt: skip
@click.option("--label", default="arch", show_default=True, help="column naming front points")
@click.option("--logx", is_flag=True)
@click.option("--logy", is_flag=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help=".png/.svg/.pdf")
@click.option("--json", "as_json", is_flag=True, help="print the front's rows as JSON")
def plot_pareto_cmd(table, x, y, x_max, y_max, label, logx, logy, out, as_json) -> None:
    """The design points of a sweep table with their Pareto front highlighted (e.g. tokens/s
    per chip against per-user latency)."""
    from archsim.plot import check_output, plot_pareto

    check_output(out)
    path, front = plot_pareto(table, x, y, out, x_max=x_max, y_max=y_max, logx=logx,
                              logy=logy, label=label)  # fmt: skip
    click.echo(f"pareto plot written to {path} ({len(front)} points on the front)", err=True)
    if as_json:
        click.echo(json.dumps(front, sort_keys=True))


if __name__ == "__main__":  # pragma: no cover
    main()
