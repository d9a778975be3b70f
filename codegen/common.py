"""Helpers shared by the CLI's commands (codegen/cli.py and codegen/cmd_*.py): the user-error
type, reading the model spec from --size/--spec, and plain-text tables.

The command modules import this one, never cli.py, so nothing imports in a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from spec import (
    PRESETS,
    ModelSpec,
    ParallelSpec,
    SpecFormatError,
    UnknownPresetError,
    get_preset,
    load_parallel_spec,
    load_spec,
)


class UserError(click.ClickException):
    """Bad input from the user: one line on stderr, exit code 2."""

    exit_code = 2


def printable(text: str, limit: int = 80) -> str:
    """User-supplied text made safe for a one-line message (control characters escaped)."""
    text = text if text.isprintable() else ascii(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_validation_error(exc: ValidationError) -> str:
    """The first five errors of a pydantic validation as one line: `field.path: message; ...`."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(printable(str(part)) for part in error["loc"])
        message = printable(error["msg"].removeprefix("Value error, "), limit=200)
        parts.append(f"{where}: {message}" if where else message)  # no field: the whole spec
    more = len(exc.errors()) - len(parts)
    return "invalid spec: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def resolve_spec(size: str | None, spec_file: Path | None) -> ModelSpec:
    """The model of --size PRESET or --spec FILE (exactly one); UserError for anything wrong.

    --rope-scaling-factor and --max-seq-len (spec_source's, read from the click context) give
    what a Meta params.json leaves unsaid; a file that states them must agree (load_spec)."""
    if (size is None) == (spec_file is None):
        raise UserError("give exactly one of --size NAME or --spec FILE")
    stated = _stated_options()
    if size is not None and any(value is not None for value in stated.values()):
        raise UserError("--rope-scaling-factor and --max-seq-len go with --spec, not --size")
    try:
        return get_preset(size) if size is not None else load_spec(spec_file, **stated)
    except UnknownPresetError as exc:
        raise UserError(str(exc)) from None
    except SpecFormatError as exc:
        raise UserError(printable(str(exc), limit=300)) from None
    except ValidationError as exc:
        raise UserError(describe_validation_error(exc)) from None


# The click context's meta key holding the values of spec_source's options for a spec file.
STATED_KEY = "llama_codegen.stated"


def _stated_options() -> dict[str, Any]:
    context = click.get_current_context(silent=True)
    stated = context.meta.get(STATED_KEY) if context is not None else None
    return stated or {"rope_scaling_factor": None, "max_seq_len": None}


def resolve_parallel(path: Path, spec: ModelSpec) -> ParallelSpec:
    """A parallel spec file, checked against the model (and its training batch)."""
    try:
        return load_parallel_spec(path).validate_for(spec, spec.training.batch_size)
    except SpecFormatError as exc:
        raise UserError(str(exc)) from None
    except ValidationError as exc:
        message = describe_validation_error(exc).removeprefix("invalid spec: ")
        raise UserError(f"invalid parallel spec {path}: {message}") from None


def spec_source(run: Callable[..., Any]) -> Callable[..., Any]:
    """--size / --spec, shared by every command that takes a model, and the two values a Meta
    params.json does not state (--rope-scaling-factor, --max-seq-len): these reach
    resolve_spec through the click context, so the commands take --size and --spec only."""

    def with_stated(*args: Any, rope_scaling_factor: float | None, max_seq_len: int | None,
                    **kwargs: Any) -> Any:  # fmt: skip
        click.get_current_context().meta[STATED_KEY] = {
            "rope_scaling_factor": rope_scaling_factor,
            "max_seq_len": max_seq_len,
        }
        return run(*args, **kwargs)

    # the command's name, help and the click options given so far (in a list of its own)
    with_stated.__name__, with_stated.__doc__ = run.__name__, run.__doc__
    with_stated.__click_params__ = list(getattr(run, "__click_params__", []))  # type: ignore[attr-defined]
    command = click.option(
        "--max-seq-len",
        type=click.IntRange(min=1),
        help="Context length, for a Meta params.json (which does not state it).",
    )(with_stated)
    command = click.option(
        "--rope-scaling-factor",
        type=click.FloatRange(min=1),
        help="RoPE scaling factor, for a Meta params.json with use_scaled_rope (which does not "
        "state it: 8 for Llama 3.1, 32 for Llama 3.2 1B/3B).",
    )(command)
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


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    """Left-aligned columns two spaces apart, a dashed rule under the header, no trailing blanks."""
    cells = [header] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)
