"""`python -m codegen` / `llama-codegen`: build, check, list and inspect LLaMA model code."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from backends import TARGETS, BuildOptions
from spec import (
    PRESETS,
    DType,
    ModelSpec,
    ParallelSpec,
    SpecFormatError,
    UnknownPresetError,
    get_preset,
    load_parallel_spec,
    load_spec,
)

from . import __version__
from .build import OutputError, compare, preflight, render_target, write_atomically

EPILOG_BUILD = """\b
Examples:
  python -m codegen build --size 7b --target torch --out out/
  python -m codegen build --size 65b --target all --out out/
  python -m codegen build --spec Llama-2-7b-hf/config.json --target torch
  python -m codegen build --size 7b --target torch --out generated/7b --check
"""


class UserError(click.ClickException):
    """Bad input from the user: one line on stderr, exit code 2."""

    exit_code = 2


def _printable(text: str, limit: int = 80) -> str:
    """User-supplied text made safe for a one-line message (control characters escaped)."""
    text = text if text.isprintable() else ascii(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(_printable(str(part)) for part in error["loc"]) or "spec"
        message = _printable(error["msg"].removeprefix("Value error, "), limit=200)
        parts.append(f"{where}: {message}")
    more = len(exc.errors()) - len(parts)
    return "invalid spec: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def resolve_spec(size: str | None, spec_file: Path | None) -> ModelSpec:
    if (size is None) == (spec_file is None):
        raise UserError("give exactly one of --size NAME or --spec FILE")
    try:
        return get_preset(size) if size is not None else load_spec(spec_file)
    except UnknownPresetError as exc:
        raise UserError(str(exc)) from None
    except SpecFormatError as exc:
        raise UserError(_printable(str(exc), limit=300)) from None
    except ValidationError as exc:
        raise UserError(describe_validation_error(exc)) from None


def resolve_parallel(path: Path, spec: ModelSpec) -> ParallelSpec:
    """A parallel spec file, checked against the model (and its training batch)."""
    try:
        return load_parallel_spec(path).validate_for(spec, spec.training.batch_size)
    except SpecFormatError as exc:
        raise UserError(str(exc)) from None
    except ValidationError as exc:
        message = describe_validation_error(exc).removeprefix("invalid spec: ")
        raise UserError(f"invalid parallel spec {path}: {message}") from None


def spec_source(command: Callable[..., Any]) -> Callable[..., Any]:
    """--size / --spec, shared by every command that takes a model."""
    command = click.option(
        "--spec",
        "spec_file",
        type=click.Path(path_type=Path, dir_okay=True),
        help="Spec file: our YAML/JSON, a Hugging Face config.json or a Meta params.json "
        "(or the checkpoint folder holding one).",
    )(command)
    return click.option("--size", metavar="PRESET", help=f"A preset: {', '.join(PRESETS)}.")(
        command
    )


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
    help="What to emit; `all` builds every target.",
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
@click.option("--check", is_flag=True, help="Compare with the existing output; write nothing.")
@click.option("--force", is_flag=True, help="Replace an output folder this tool did not write.")
def build_command(
    size: str | None,
    spec_file: Path | None,
    target: str,
    out: Path | None,
    dtype: str | None,
    weights: Path | None,
    embed_weights: bool,
    parallel_file: Path | None,
    check: bool,
    force: bool,
) -> None:
    """Build model code for one spec and target, atomically and reproducibly."""
    spec = resolve_spec(size, spec_file)
    out = out if out is not None else Path("out") / spec.name
    options = BuildOptions(
        dtype=DType(dtype) if dtype else None, weights=weights, embed_weights=embed_weights,
        parallel=resolve_parallel(parallel_file, spec) if parallel_file else None,
    )  # fmt: skip
    targets = list(TARGETS) if target == "all" else [target]
    if check:
        failed = False
        for name in targets:
            failed |= _check_one(spec, name, out, options)
        if failed:
            raise SystemExit(1)
        return
    try:
        # every target rendered and its folder checked before the first is written: all or none
        rendered = {name: render_target(spec, name, options) for name in targets}
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
        size_kb = sum(len(data) for data in files.values()) / 1024
        click.echo(
            f"{'wrote' if changed else 'unchanged'} {out / name} ({len(files)} files, "
            f"{size_kb:.0f} KiB) in {time.perf_counter() - started:.2f} s"
        )


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
            s.num_kv_heads,
            s.hidden_dim,
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
    return {
        "name": spec.name,
        "parameters": spec.param_count,
        "dim / layers / heads / kv heads": f"{spec.dim} / {spec.n_layers} / {spec.n_heads} / "
        f"{spec.num_kv_heads}",
        "head_dim": spec.head_dim,
        "ffn hidden": spec.hidden_dim,
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
def show_command(size: str | None, spec_file: Path | None, as_json: bool) -> None:
    """Show a spec's derived numbers: parameters, FLOPs per token, memory."""
    spec = resolve_spec(size, spec_file)
    if as_json:
        click.echo(json.dumps(spec.model_dump(mode="json"), indent=2, sort_keys=True))
        return
    rows = [
        [key, f"{value:,}" if isinstance(value, int) else str(value)]
        for key, value in derived_numbers(spec).items()
    ]
    click.echo(format_table(["quantity", "value"], rows))


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


# Target-specific commands live in their own modules, which use the helpers above.
from .cmd_bind import bind_command  # noqa: E402
from .cmd_convert import convert_command  # noqa: E402
from .cmd_verify import verify_command  # noqa: E402

main.add_command(bind_command)
main.add_command(convert_command)
main.add_command(verify_command)
