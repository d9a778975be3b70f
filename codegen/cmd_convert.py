"""`python -m codegen convert`: Hugging Face <-> Cerebras Model Zoo checkpoints (safetensors).

Works on the bytes of the safetensors files (any dtype, bfloat16 included) with the name table and
q/k row order of spec.weights (via backends.cerebras.mapping), the same table the emitted convert.py prints; no
framework is imported for them. A Hugging Face pytorch_model.bin (single or sharded) is read with
torch.load(weights_only=True). For .mdl or .pt Cerebras checkpoints use the emitted convert.py.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import click

from backends.base import OptionError
from backends.cerebras import check_expressible
from backends.cerebras.mapping import CheckpointLayout, rope_row_order
from backends.checked_reader import hf_config_mismatches, read_json, tied_head_differs
from backends.safetensors_format import (
    MAX_HEADER_BYTES,
    CheckpointError,
    read_header,
    read_headers,
    safetensors_files,
)
from spec import ModelSpec, to_hf_config
from spec.io import HF_DEFAULTS, hf_checked_values
from spec.weights import BY_KEY

from .build import GENERATOR, OutputError, write_file_atomically
from .common import UserError, resolve_spec, spec_source

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
    checked; the bytes are memory-mapped views, unmapped when the last view is dropped. A
    pytorch_model.bin (or its shards) is loaded by torch.load(weights_only=True) instead."""
    tensors: dict[str, Tensor] = {}
    try:
        folder, refs = read_headers(path, any_dtype=True)  # bytes and dtypes are kept
        maps: dict[str, memoryview] = {}
        for ref in refs:
            if ref.data is not None:  # a pytorch_model.bin tensor, loaded safely by torch
                tensors[ref.name] = Tensor(ref.dtype, ref.shape, ref.data)
                continue
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
    """Write tensors (each with an optional row order) in name order, header padded to 8 bytes,
    atomically: a temporary file beside `path`, fsynced, read back and checked, then renamed."""
    header: dict[str, object] = {"__metadata__": {"format": "pt", "generator": GENERATOR}}
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

    def write(out: BinaryIO) -> None:
        out.write(struct.pack("<Q", len(encoded)) + encoded)
        for _, (tensor, order) in sorted(tensors.items()):
            if order is None:
                out.write(tensor.data)
            else:
                out.writelines(tensor.rows(order))

    def check(written: Path) -> None:
        """Read back: every tensor where the header says, and the file exactly that long."""
        expected = {
            n: (e["dtype"], tuple(e["shape"])) for n, e in header.items() if n != "__metadata__"
        }  # type: ignore[index]
        try:
            refs = read_header(written, written.parent)
        except CheckpointError as exc:
            raise OutputError(f"{path}: the written file does not read back ({exc})") from None
        found = {ref.name: (ref.dtype, ref.shape) for ref in refs}
        if found != expected or written.stat().st_size != 8 + len(encoded) + offset:
            raise OutputError(f"{path}: the written file does not read back as written")

    try:
        write_file_atomically(path, write, check)
    except OutputError as exc:
        raise UserError(str(exc)) from None


def _generator_of(path: Path) -> str | None:
    """The `generator` recorded in a safetensors file's metadata (None: none, or not one)."""
    try:
        with open(path, "rb") as handle:
            n = int.from_bytes(handle.read(8), "little")
            if n > MAX_HEADER_BYTES:
                return None
            metadata = json.loads(handle.read(n)).get("__metadata__")
    except (OSError, ValueError, RecursionError, AttributeError):
        return None
    return metadata.get("generator") if isinstance(metadata, dict) else None


def check_output(dst: Path, sources: list[Path], force: bool) -> None:
    """Refuse, before reading any tensor, an output that is one of the sources (by inode: also
    through a link or another spelling), a folder, or a file this tool did not write (unless
    --force)."""
    if not os.path.lexists(dst):
        return
    for source in sources:
        with contextlib.suppress(OSError):
            if os.path.samefile(dst, source):
                raise UserError(f"{dst} is the source {source}; write the result elsewhere")
    if dst.is_dir():
        raise UserError(f"{dst} is a folder; name the file to write")
    if not force and _generator_of(dst) != GENERATOR:
        raise UserError(
            f"{dst} exists and was not written by {GENERATOR}; use --force to replace it"
        )


def source_files(src: Path) -> list[Path]:
    """The files a conversion reads: the weight files (and a folder's config.json, index)."""
    try:
        folder, files = safetensors_files(src, any_dtype=True)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    indexes = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
    return [*files, folder / "config.json", *(folder / name for name in indexes)]


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


def check_config_beside(spec: ModelSpec, src: Path) -> None:
    """Refuse a config.json beside the weights (in the folder SRC, or beside the file SRC) that
    describes another model than `spec`: head counts, RoPE and eps change the conversion (the
    q/k row order) without changing any shape, so shapes alone cannot catch them."""
    from backends.onnx.checkpoint import check_config

    try:
        check_config(spec, src if src.is_dir() else src.parent)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None


# A Cerebras Model Zoo trainer (`cszoo fit`) saves the state dict of its wrapper module, which
# holds the network as `self.model`: every key gains this one prefix.
TRAINER_PREFIX = "model."


def strip_trainer_prefix(tensors: dict[str, Tensor], expected: set[str]) -> dict[str, Tensor]:
    """`tensors` without one leading TRAINER_PREFIX when EVERY name has it and the stripped
    names are exactly `expected`; otherwise unchanged (check_names then reports the names), so
    a prefix is never guessed from some of the keys."""
    if not tensors or not all(name.startswith(TRAINER_PREFIX) for name in tensors):
        return tensors
    stripped = {name[len(TRAINER_PREFIX) :]: tensor for name, tensor in tensors.items()}
    return stripped if set(stripped) == expected else tensors


def to_cerebras(
    spec: ModelSpec, layout: CheckpointLayout, src: Path, dst: Path, force: bool = False
) -> int:
    check_output(dst, source_files(src), force)
    names = layout.hf_to_cs()
    check_config_beside(spec, src)
    hf = read_checkpoint(src)
    head, embedding = BY_KEY["lm_head"].hf, BY_KEY["embed"].hf
    if layout.tie_embeddings and head in hf and embedding in hf:  # stored anyway: bitwise equal?
        a, b = hf[head], hf[embedding]
        if (a.dtype, a.shape) != (b.dtype, b.shape) or bytes(a.data) != bytes(b.data):
            raise UserError(f"{src}: {tied_head_differs(head, embedding)}")
        del hf[head]
    check_names(set(hf), set(names), "Hugging Face", src)
    check_shapes(spec, hf, {name: name for name in names}, src)
    out: dict[str, tuple[Tensor, list[int] | None]] = {}
    for hf_name, cs_name in names.items():
        heads = layout.heads_of(hf_name)
        order = None if heads is None else rope_row_order(heads, layout.head_dim, True)
        out[cs_name] = (hf[hf_name], order)
    for alias, owner in layout.cs_aliases().items():
        out[alias] = out[owner]
    write_safetensors(dst, out)
    return len(out)


def to_hf(
    spec: ModelSpec, layout: CheckpointLayout, src: Path, dst: Path, force: bool = False
) -> int:
    if os.path.lexists(dst) and not dst.is_dir():
        raise UserError(f"{dst} exists and is not a folder; --to hf writes a folder")
    sources = source_files(src)
    check_output(dst / "model.safetensors", sources, force)
    check_output(dst / "config.json", sources, force=True)  # merged, never replaced blindly
    config = merged_config(dst / "config.json", spec, force)
    names = layout.hf_to_cs()
    aliases = layout.cs_aliases()
    expected = set(names.values()) | set(aliases)
    cs = strip_trainer_prefix(read_checkpoint(src), expected)
    check_names(set(cs), expected, "Cerebras", src)
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
    write_safetensors(dst / "model.safetensors", out)
    text = (json.dumps(config, indent=2) + "\n").encode()
    try:
        write_file_atomically(dst / "config.json", lambda handle: handle.write(text))
    except OutputError as exc:
        raise UserError(str(exc)) from None
    return len(out)


# Keys of a config.json that name tokens, not the architecture: kept even over --force.
TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def merged_config(path: Path, spec: ModelSpec, force: bool) -> dict[str, object]:
    """The config.json to write: ours, over an existing one of the same model whose other keys
    (bos/eos_token_id, tokenizer and generation settings, ...) are kept. An existing config of
    another model, or not a config at all, is refused unless --force (which still keeps the
    token ids)."""
    ours = to_hf_config(spec)
    if not path.exists():
        return ours
    try:  # the same reader and the same "describes this model" rule as every loader
        existing = read_json(path)
        same = not hf_config_mismatches(existing, str(path), hf_checked_values(spec), HF_DEFAULTS)
    except CheckpointError:
        existing, same = {}, False
    if not same and not force:
        raise UserError(f"{path} describes another model; use --force to replace it")
    # The token ids are the tokenizer's: an existing config's win over the spec's (which
    # to_hf_config writes into a new config.json).
    kept = {k: existing[k] for k in TOKEN_KEYS if k in existing}
    return {**existing, **ours, **kept} if same else {**ours, **kept}


@click.command("convert", epilog=EPILOG)
@spec_source
@click.option("--to", "direction", type=click.Choice(["cerebras", "hf"]), required=True,
              help="cerebras: HF folder/file -> Cerebras .safetensors; hf: the reverse (a folder).")  # fmt: skip
@click.argument("src", type=click.Path(path_type=Path, exists=True))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace an output file this tool did not write.")
def convert_command(
    size: str | None, spec_file: Path | None, direction: str, src: Path, dst: Path, force: bool
) -> None:
    """Convert a checkpoint between Hugging Face and Cerebras Model Zoo names and RoPE layouts.

    The model comes from --size/--spec, or, converting to cerebras, from SRC's config.json.
    """
    if size is None and spec_file is None and direction == "cerebras" and src.is_dir():
        spec_file = src
    spec = resolve_spec(size, spec_file)
    try:  # what the Cerebras target cannot hold, no converter can write (biases)
        check_expressible(spec)
    except OptionError as exc:
        raise UserError(f"convert: {exc}") from None
    layout = CheckpointLayout.of(spec)
    if direction == "cerebras":
        if dst.suffix != ".safetensors":
            raise UserError(
                f"{dst}: write a .safetensors file (emitted convert.py writes .mdl/.pt)"
            )
        count = to_cerebras(spec, layout, src, dst, force)
    else:
        count = to_hf(spec, layout, src, dst, force)
    click.echo(f"wrote {dst} ({count} tensors)")
