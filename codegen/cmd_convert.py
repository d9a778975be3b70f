"""`python -m codegen convert`: Hugging Face <-> Cerebras Model Zoo checkpoints (safetensors).

Works on the bytes of the safetensors files (any dtype, bfloat16 included) with the name table and
q/k row order of backends.cerebras.mapping, the same table the emitted convert.py prints; no
framework is imported. For .mdl or .pt checkpoints use the emitted convert.py.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from backends.cerebras.mapping import FINAL_NORM_ALIAS, CheckpointLayout, rope_row_order
from backends.safetensors_format import CheckpointError, read_headers
from spec import ModelSpec, to_hf_config

from .cli import UserError, resolve_spec, spec_source

EPILOG = """\b
Examples:
  python -m codegen convert --to cerebras Llama-2-7b-hf/ llama2_7b_cs.safetensors
  python -m codegen convert --to hf --size llama2-7b llama2_7b_cs.safetensors Llama-2-7b-out/
"""


@dataclass(frozen=True)
class Tensor:
    """One tensor of a safetensors file: its header entry and a view of its bytes."""

    dtype: str
    shape: tuple[int, ...]
    data: memoryview

    def rows(self, order: list[int]) -> Iterator[memoryview]:
        row = len(self.data) // self.shape[0]
        for source in order:
            yield self.data[source * row : (source + 1) * row]


def read_checkpoint(path: Path) -> dict[str, Tensor]:
    """One .safetensors file or a folder of them (sharded with an index too), every header
    checked; the bytes are memory-mapped views, unmapped when the last view is dropped."""
    tensors: dict[str, Tensor] = {}
    try:
        folder, refs = read_headers(path)
        maps: dict[str, memoryview] = {}
        for ref in refs:
            if ref.file not in maps:
                with open(folder / ref.file, "rb") as handle:
                    mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
                maps[ref.file] = memoryview(mapped)
            view = maps[ref.file][ref.offset : ref.offset + ref.length]
            tensors[ref.name] = Tensor(ref.dtype, ref.shape, view)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    return tensors


def write_safetensors(path: Path, tensors: dict[str, tuple[Tensor, list[int] | None]]) -> None:
    """Write tensors (each with an optional row order) in name order, header padded to 8 bytes."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (tensor, _) in sorted(tensors.items()):
        end = offset + len(tensor.data)
        header[name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)) + encoded)
        for _, (tensor, order) in sorted(tensors.items()):
            if order is None:
                out.write(tensor.data)
            else:
                out.writelines(tensor.rows(order))


def check_names(found: set[str], expected: set[str], what: str, path: Path) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise UserError(
            f"{path}: not a {what} checkpoint of this model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )


def check_shapes(
    spec: ModelSpec, tensors: dict[str, Tensor], names: dict[str, str], path: Path
) -> None:
    """Every tensor (`names`: HF name -> its name in `tensors`) has the model's shape, so rows are
    never permuted under a shape of the right byte count but the wrong layout."""
    from backends.onnx.checkpoint import expected_shapes

    wrong = [
        f"{names[hf_name]} {list(tensors[names[hf_name]].shape)} (model has {list(shape)})"
        for hf_name, shape in expected_shapes(spec).items()
        if hf_name in names and tensors[names[hf_name]].shape != shape
    ]
    if wrong:
        raise UserError(
            f"{path}: not a checkpoint of this model: wrong shape: {', '.join(wrong[:5])}"
        )


def cs_aliases(layout: CheckpointLayout) -> dict[str, str]:
    """Second names of shared tensors in a Cerebras checkpoint -> the name owning the tensor."""
    aliases = {FINAL_NORM_ALIAS: "transformer_decoder.norm.weight"}
    if layout.tie_embeddings:
        aliases["lm_head.weight"] = "embedding_layer.word_embeddings.weight"
    return aliases


def to_cerebras(spec: ModelSpec, layout: CheckpointLayout, src: Path, dst: Path) -> int:
    names = layout.hf_to_cs()
    if src.is_dir():  # a config.json beside the weights must describe this model (RoPE too)
        from backends.onnx.checkpoint import check_config

        try:
            check_config(spec, src)
        except CheckpointError as exc:
            raise UserError(str(exc)) from None
    hf = read_checkpoint(src)
    if layout.tie_embeddings and "lm_head.weight" in hf:
        if bytes(hf["lm_head.weight"].data) != bytes(hf["model.embed_tokens.weight"].data):
            raise UserError(f"{src}: lm_head.weight differs from the embedding of a tied model")
        del hf["lm_head.weight"]
    check_names(set(hf), set(names), "Hugging Face", src)
    check_shapes(spec, hf, {name: name for name in names}, src)
    out: dict[str, tuple[Tensor, list[int] | None]] = {}
    for hf_name, cs_name in names.items():
        heads = layout.heads_of(hf_name)
        order = None if heads is None else rope_row_order(heads, layout.head_dim, True)
        out[cs_name] = (hf[hf_name], order)
    for alias, owner in cs_aliases(layout).items():
        out[alias] = out[owner]
    write_safetensors(dst, out)
    return len(out)


def to_hf(spec: ModelSpec, layout: CheckpointLayout, src: Path, dst: Path) -> int:
    names = layout.hf_to_cs()
    aliases = cs_aliases(layout)
    cs = read_checkpoint(src)
    check_names(set(cs), set(names.values()) | set(aliases), "Cerebras", src)
    check_shapes(spec, cs, names, src)
    for alias, owner in aliases.items():
        if bytes(cs[alias].data) != bytes(cs[owner].data):
            raise UserError(f"{src}: {alias} differs from {owner}; the model holds them as one")
    out: dict[str, tuple[Tensor, list[int] | None]] = {}
    for hf_name, cs_name in names.items():
        heads = layout.heads_of(hf_name)
        order = None if heads is None else rope_row_order(heads, layout.head_dim, False)
        out[hf_name] = (cs[cs_name], order)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.json").write_text(json.dumps(to_hf_config(spec), indent=2) + "\n")
    write_safetensors(dst / "model.safetensors", out)
    return len(out)


@click.command("convert", epilog=EPILOG)
@spec_source
@click.option("--to", "direction", type=click.Choice(["cerebras", "hf"]), required=True,
              help="cerebras: HF folder/file -> Cerebras .safetensors; hf: the reverse (a folder).")  # fmt: skip
@click.argument("src", type=click.Path(path_type=Path, exists=True))
@click.argument("dst", type=click.Path(path_type=Path))
def convert_command(
    size: str | None, spec_file: Path | None, direction: str, src: Path, dst: Path
) -> None:
    """Convert a checkpoint between Hugging Face and Cerebras Model Zoo names and RoPE layouts.

    The model comes from --size/--spec, or, converting to cerebras, from SRC's config.json.
    """
    if size is None and spec_file is None and direction == "cerebras" and src.is_dir():
        spec_file = src
    spec = resolve_spec(size, spec_file)
    layout = CheckpointLayout.of(spec)
    if direction == "cerebras":
        if dst.suffix != ".safetensors":
            raise UserError(
                f"{dst}: write a .safetensors file (emitted convert.py writes .mdl/.pt)"
            )
        count = to_cerebras(spec, layout, src, dst)
    else:
        count = to_hf(spec, layout, src, dst)
    click.echo(f"wrote {dst} ({count} tensors)")
