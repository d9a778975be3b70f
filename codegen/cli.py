"""`python -m codegen` / `llama-codegen`: build, check, list and inspect LLaMA model code."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from backends import TARGETS, BuildOptions
from backends.quantize import DEFAULT_GROUP_SIZE, GROUP_SIZES
from spec import PRESETS, DType, ModelSpec, to_spec_yaml

from . import __version__
from .build import OutputError, compare, preflight, render_target, write_atomically
from .cmd_bind import bind_command
from .cmd_convert import convert_command
from .cmd_verify import verify_command
from .common import UserError, format_table, printable, resolve_parallel, resolve_spec, spec_source

EPILOG_BUILD = """\b
Examples:
  python -m codegen build --size 7b --target torch --out out/
  python -m codegen build --size 65b --target all --out out/
  python -m codegen build --size 7b --target torch --target onnx --quantize int8
  python -m codegen build --spec Llama-2-7b-hf/config.json --target torch
  python -m codegen build --size 7b --target torch --out generated/7b --check
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="llama-codegen")
def main() -> None:
    """Compile one LLaMA architecture spec into standalone PyTorch, JAX, ONNX and Cerebras code.

    \b
    Start here:
      python -m codegen list                      # the presets
      python -m codegen show --size 7b            # derived numbers of one model
      python -m codegen build --size 7b --target torch --out out/
    """


@main.command("build", epilog=EPILOG_BUILD)
@spec_source
@click.option(
    "--target",
    type=click.Choice([*TARGETS, "all"]),
    required=True,
    multiple=True,
    help="What to emit; repeat it for several targets; `all` builds every target.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Output folder; each target goes to OUT/<target>/. Default: out/<spec name>.",
)
@click.option(
    "--dtype",
    type=click.Choice([d.value for d in DType]),
    help="Parameter and activation dtype (norms and softmax stay float32). Default: the spec's.",
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path, exists=True),
    help="A Hugging Face checkpoint folder to bind to (targets that take one).",
)
@click.option("--embed-weights", is_flag=True, help="Write weights into the output (onnx).")
@click.option(
    "--parallel",
    "parallel_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="A parallel spec (YAML/JSON: mesh degrees, logical-axis rules): the emitted defaults.",
)
@click.option(
    "--quantize",
    type=click.Choice(["int8", "int4"]),
    help="Weight-only quantization of every linear layer, head included (torch, jax, onnx): "
    "int8 per output row, int4 per group of inputs. The loaders quantize a float checkpoint.",
)
@click.option(
    "--group-size",
    type=click.Choice([str(size) for size in GROUP_SIZES]),
    help=f"Inputs per int4 scale and zero point. Default: {DEFAULT_GROUP_SIZE}.",
)
@click.option("--check", is_flag=True, help="Compare with the existing output; write nothing.")
@click.option("--force", is_flag=True, help="Replace an output folder this tool did not write.")
def build_command(
    size: str | None,
    spec_file: Path | None,
    target: tuple[str, ...],
    out: Path | None,
    dtype: str | None,
    weights: Path | None,
    embed_weights: bool,
    parallel_file: Path | None,
    quantize: str | None,
    group_size: str | None,
    check: bool,
    force: bool,
) -> None:
    """Build model code for one spec and target, atomically and reproducibly."""
    spec = resolve_spec(size, spec_file)
    out = out if out is not None else Path("out") / spec.name
    options = BuildOptions(
        dtype=DType(dtype) if dtype else None, weights=weights, embed_weights=embed_weights,
        parallel=resolve_parallel(parallel_file, spec) if parallel_file else None,
        quantize=quantize, group_size=int(group_size) if group_size else None,
    )  # fmt: skip
    targets = list(TARGETS) if "all" in target else list(dict.fromkeys(target))
    if check:
        failed = False
        for name in targets:
            failed |= _check_one(spec, name, out, options)
        if failed:
            raise SystemExit(1)
        return
    rendered: dict[str, dict[str, bytes]] = {}
    seconds: dict[str, float] = {}  # render, then write, per target
    try:
        # every target rendered and its folder checked before the first is written: all or none
        for name in targets:
            started = time.perf_counter()
            rendered[name] = render_target(spec, name, options)
            seconds[name] = time.perf_counter() - started
        for name, files in rendered.items():
            preflight(out / name, files, force)
    except OutputError as exc:
        raise UserError(str(exc)) from None
    for name, files in rendered.items():
        started = time.perf_counter()
        try:
            changed = write_atomically(
                out / name, files, force=force, on_backup=lambda line: click.echo(line, err=True)
            )
        except OutputError as exc:
            raise UserError(str(exc)) from None
        _report_build(out / name, files, changed, seconds[name] + time.perf_counter() - started)
    readmes = [printable(str(out / name / "README.md"), limit=200) for name in targets]
    click.echo(f"next: read {', '.join(readmes)}")


def _report_build(path: Path, files: dict[str, bytes], changed: bool, seconds: float) -> None:
    """Two lines: what was written where (or found unchanged), then every file in it."""
    size_kb = sum(len(data) for data in files.values()) / 1024
    verb = "wrote" if changed else "unchanged"
    where = printable(str(path), limit=200)
    click.echo(f"{verb} {where} ({len(files)} files, {size_kb:.0f} KiB) in {seconds:.2f} s")
    click.echo("  " + "  ".join(files))


def _check_one(spec: ModelSpec, target: str, out: Path, options: BuildOptions) -> bool:
    """Print the differences between a fresh build and OUT/<target>; True when any."""
    problems = compare(render_target(spec, target, options), out / target)
    for problem in problems:
        click.echo(f"{out / target}: {problem}", err=True)
    if not problems:
        click.echo(f"{out / target}: up to date")
    return bool(problems)


@main.command("list")
def list_command() -> None:
    """List the presets with their main sizes."""
    rows = [
        [
            s.name,
            human_count(s.param_count),
            s.dim,
            s.n_layers,
            s.n_heads,
            s.n_kv_heads,
            s.ffn_dim,
            s.vocab_size,
            s.max_seq_len,
            s.rope_scaling.type if s.rope_scaling else "-",
        ]
        for s in PRESETS.values()
    ]
    header = ["preset", "params", "dim", "layers", "heads", "kv", "ffn", "vocab", "ctx", "rope"]
    click.echo(format_table(header, rows))


def human_count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 10**9 else f"{n / 1e6:.2f}M"


def derived_numbers(spec: ModelSpec) -> dict[str, Any]:
    gib = 2**30
    biases = [kind for kind in ("attention", "mlp") if getattr(spec, f"{kind}_bias")]
    return {
        "name": spec.name,
        "parameters": spec.param_count,
        "dim / layers / heads / kv heads": f"{spec.dim} / {spec.n_layers} / {spec.n_heads} / "
        f"{spec.n_kv_heads}",
        "head_dim": spec.head_dim,
        **({"biases": " and ".join(biases)} if biases else {}),  # no LLaMA has any
        "ffn hidden": spec.ffn_dim,
        "vocab / context": f"{spec.vocab_size} / {spec.max_seq_len}",
        "FLOPs per token, forward": spec.flops_per_token_forward,
        "FLOPs per token, training": spec.flops_per_token_train,
        "weights fp32 (GiB)": round(spec.weight_bytes_fp32 / gib, 2),
        "weights bf16 (GiB)": round(spec.weight_bytes_bf16 / gib, 2),
        "training memory, AdamW mixed precision (GiB)": round(spec.train_bytes_adamw / gib, 2),
        "training steps (tokens / (batch x seq))": spec.training.total_steps,
    }


@main.command("show")
@spec_source
@click.option(
    "--json", "as_json", is_flag=True, help="Print the full spec and derived values as JSON."
)
@click.option(
    "--as-spec",
    is_flag=True,
    help="Print a YAML spec file (inputs only) for `build --spec`: "
    "show --size 7b --as-spec > my_model.yaml",
)
def show_command(size: str | None, spec_file: Path | None, as_json: bool, as_spec: bool) -> None:
    """Show a spec's derived numbers: parameters, FLOPs per token, memory."""
    spec = resolve_spec(size, spec_file)
    if as_json and as_spec:
        raise UserError("give at most one of --json and --as-spec")
    if as_spec:
        click.echo(to_spec_yaml(spec), nl=False)
        return
    if as_json:
        click.echo(json.dumps(spec.model_dump(mode="json"), indent=2, sort_keys=True))
        return
    rows = [
        [key, f"{value:,}" if isinstance(value, int) else str(value)]
        for key, value in derived_numbers(spec).items()
    ]
    click.echo(format_table(["quantity", "value"], rows))


main.add_command(bind_command)
main.add_command(convert_command)
main.add_command(verify_command)
