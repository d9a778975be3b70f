"""`python -m codegen bind FOLDER --weights CHECKPOINT`: bind built ONNX graphs to a checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from backends import BuildOptions
from backends.quantize import DEFAULT_GROUP_SIZE, GROUP_SIZES
from spec import ModelSpec

from .build import MANIFEST, OutputError, read_manifest, render_target, write_atomically

EPILOG_BIND = """\b
Examples:
  python -m codegen build --size 7b --target onnx --out out/
  python -m codegen bind out/onnx --weights Llama-2-7b-hf/
  python -m codegen bind out/onnx --weights tiny-model/ --embed-weights
  python -m codegen bind out/onnx --weights Llama-2-7b-hf/ --quantize int4
"""


@click.command("bind", epilog=EPILOG_BIND)
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--weights",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="A Hugging Face checkpoint folder (or one .safetensors file); pytorch_model.bin "
    "checkpoints need --embed-weights.",
)
@click.option("--embed-weights", is_flag=True, help="Copy the weights into the graphs instead.")
@click.option(
    "--quantize",
    type=click.Choice(["int8", "int4"]),
    help="Quantize every linear layer's weight into the graphs (as `build --quantize`). "
    "Default: the build's own (its manifest), else none.",
)
@click.option(
    "--group-size",
    type=click.Choice([str(size) for size in GROUP_SIZES]),
    help=f"Inputs per int4 scale and zero point. Default: the build's own, else {DEFAULT_GROUP_SIZE}.",
)
@click.option("--force", is_flag=True, help="Rebind over edited files (kept as <name>.edited).")
def bind_command(
    folder: Path,
    weights: Path,
    embed_weights: bool,
    quantize: str | None,
    group_size: str | None,
    force: bool,
) -> None:
    """Bind the ONNX graphs in FOLDER to a checkpoint, by reference: nothing is copied.

    FOLDER is the output of `build --target onnx`; its manifest names the spec. The graphs are
    rebuilt with every initializer pointing at its tensor's bytes in the checkpoint's
    .safetensors files, after every name, shape and dtype is checked against the spec. A
    quantized build (or --quantize) quantizes the float checkpoint into the graphs instead.
    """
    from backends.onnx import CheckpointError

    from .common import UserError

    manifest = read_manifest(folder)  # bounded, and checked as every write path checks it
    try:
        if manifest is None:
            raise ValueError(MANIFEST)
        spec = ModelSpec.model_validate(manifest["spec"])
        target = manifest["target"]
        if quantize is None:  # the build's quantization is kept unless overridden
            built = manifest.get("options") or {}
            quantize, group_size = built.get("quantize"), group_size or built.get("group_size")
        if quantize not in (None, "int8", "int4"):
            raise ValueError(quantize)
    except (
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
    ):  # pydantic's ValidationError is a ValueError
        raise UserError(f"{folder}: no valid {MANIFEST}; is it an ONNX build?") from None
    if target != "onnx":
        raise UserError(f"{folder} holds a {target!r} build; bind takes an ONNX build")
    options = BuildOptions(
        weights=weights, embed_weights=embed_weights, quantize=quantize,  # type: ignore[arg-type]
        group_size=int(group_size) if group_size else None,
    )  # fmt: skip
    try:
        changed = write_atomically(
            folder,
            render_target(spec, "onnx", options),
            force=force,
            on_backup=lambda line: click.echo(line, err=True),
        )
    except (CheckpointError, OutputError) as exc:
        raise UserError(str(exc)) from None
    how = f"quantized {quantize}" if quantize else "embedded" if embed_weights else "by reference"
    click.echo(f"{'bound' if changed else 'unchanged'} {folder} to {weights} ({how})")
