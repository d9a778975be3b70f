"""The safetensors format read from its headers, with every length checked; no framework needed.

A safetensors file is an 8-byte little-endian header length n, n bytes of JSON, then the data:
tensor `t` occupies bytes [8 + n + begin, 8 + n + end) of the file. Shared by the ONNX target
(which binds graphs to these byte ranges) and the compiler's `convert` and `verify` commands.
The checks themselves live in `checked_reader`, which the emitted loaders carry verbatim.
A pytorch_model.bin checkpoint (transformers 4.28-4.34's default; sharded with
pytorch_model.bin.index.json too) is read by checked_reader.load_bin (torch.load with
weights_only=True, memory-mapped): its tensors come with their bytes in memory (TensorRef.data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import checked_reader
from .base import OptionError

MAX_HEADER_BYTES = checked_reader.MAX_HEADER_BYTES
# Every safetensors dtype code of a whole number of bytes, and its size in bytes.
ITEM_SIZES = {code: bits // 8 for code, bits in checked_reader.DTYPE_BITS.items() if bits % 8 == 0}


class CheckpointError(OptionError):
    """A checkpoint that cannot be read or does not fit the spec; the message names the tensor."""


@dataclass(frozen=True)
class TensorRef:
    """One tensor's bytes inside a checkpoint file."""

    name: str
    dtype: str  # safetensors code: F32, BF16, ...
    shape: tuple[int, ...]
    file: str  # relative to the checkpoint folder
    offset: int  # from the start of the file
    length: int
    # the bytes themselves, when the file holds pickled tensors (.bin) rather than raw ranges
    data: memoryview | None = field(default=None, compare=False, repr=False)


def safetensors_files(path: Path, any_dtype: bool = False) -> tuple[Path, list[Path]]:
    """The checkpoint folder and its .safetensors files: single, sharded with an index, or one.

    Shard paths that are absolute, hold `..` or resolve outside the folder are refused
    (a Hugging Face cache snapshot linking into its blobs/ excepted): checked_reader.shard_path.
    Tensors whose dtype is not config.json's are refused unless `any_dtype` (a converter).
    """
    try:
        return checked_reader.checkpoint_files(Path(path), any_dtype)
    except checked_reader.CheckpointError as exc:
        raise CheckpointError(str(exc)) from None


def read_header(file: Path, folder: Path) -> list[TensorRef]:
    """The tensors of one safetensors file, with absolute byte ranges, checked exactly as the
    safetensors library checks them (checked_reader.read_header)."""
    try:
        start, entries = checked_reader.read_header(file)
    except checked_reader.CheckpointError as exc:
        raise CheckpointError(str(exc)) from None
    relative = file.relative_to(folder).as_posix()
    return [
        TensorRef(e.name, e.dtype, e.shape, relative, start + e.begin, e.end - e.begin)
        for e in sorted(entries.values(), key=lambda e: e.begin)
    ]


def read_bin(files: list[Path], folder: Path, any_dtype: bool = False) -> list[TensorRef]:
    """Every tensor of pickled torch files, loaded safely (checked_reader.load_bin_files), each
    with its bytes in `data` (little-endian, as safetensors stores them)."""
    import torch

    try:
        tensors = checked_reader.load_bin_files(files, folder, any_dtype)
    except checked_reader.CheckpointError as exc:
        raise CheckpointError(str(exc)) from None
    # which file holds each tensor (for messages): the index says, as load_bin_files checked
    index = folder / checked_reader.BIN_INDEX_FILE
    sharded = index.is_file() and [file.name for file in files] != [checked_reader.BIN_FILE]
    owner = checked_reader.read_weight_map(index) if sharded else {}
    default = files[0].relative_to(folder).as_posix()
    refs = []
    for name, tensor in tensors.items():
        raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        refs.append(
            TensorRef(
                name,
                checked_reader.TORCH_FLOAT_CODES[str(tensor.dtype)],
                tuple(tensor.shape),
                owner.get(name, default),
                0,
                raw.nbytes,
                memoryview(raw),
            )
        )
    return refs


def read_headers(path: Path, any_dtype: bool = False) -> tuple[Path, list[TensorRef]]:
    """The folder and every tensor of a checkpoint (file or folder), headers checked; a tensor
    name found in two files is refused rather than one silently winning. A .bin checkpoint's
    tensors are loaded (read_bin). Dtypes other than config.json's: refused unless `any_dtype`."""
    folder, files = safetensors_files(path, any_dtype)
    if any(checked_reader.is_bin(file) for file in files):
        return folder, read_bin(files, folder, any_dtype)
    refs: dict[str, TensorRef] = {}
    for file in files:
        for ref in read_header(file, folder):
            if ref.name in refs:
                raise CheckpointError(
                    f"{checked_reader.shown(file)}: tensor {ref.name!r} is also in "
                    f"{checked_reader.shown(refs[ref.name].file)}"
                )
            refs[ref.name] = ref
    return folder, list(refs.values())
