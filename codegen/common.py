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
    """The model of --size PRESET or --spec FILE (exactly one); UserError for anything wrong."""
    if (size is None) == (spec_file is None):
        raise UserError("give exactly one of --size NAME or --spec FILE")
    try:
        return get_preset(size) if size is not None else load_spec(spec_file)
    except UnknownPresetError as exc:
        raise UserError(str(exc)) from None
    except SpecFormatError as exc:
        raise UserError(printable(str(exc), limit=300)) from None
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


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    """Left-aligned columns two spaces apart, a dashed rule under the header, no trailing blanks."""
    cells = [header] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)
