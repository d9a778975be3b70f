"""The safetensors format read from its headers, with every length checked; no framework needed.

A safetensors file is an 8-byte little-endian header length n, n bytes of JSON, then the data:
tensor `t` occupies bytes [8 + n + begin, 8 + n + end) of the file. Shared by the ONNX target
(which binds graphs to these byte ranges) and the compiler's `convert` and `verify` commands.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .base import OptionError

# safetensors' own limit on the header size.
MAX_HEADER_BYTES = 100 * 2**20
# Every safetensors dtype code and its size in bytes.
ITEM_SIZES = {
    "F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 8, "U64": 8, "I32": 4, "U32": 4,
    "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


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


def safetensors_files(path: Path) -> tuple[Path, list[Path]]:
    """The checkpoint folder and its .safetensors files: single, sharded with an index, or one."""
    if path.is_file():
        return path.parent, [path]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{index}: not a safetensors index (no weight_map)") from None
        return path, [path / name for name in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no .safetensors files")
    return path, files


def read_header(file: Path, folder: Path) -> list[TensorRef]:
    """The tensors of one safetensors file, with absolute byte ranges, after checking them."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            prefix = handle.read(8)
            n = int.from_bytes(prefix, "little")
            raw = handle.read(n) if len(prefix) == 8 and n <= MAX_HEADER_BYTES else b""
    except OSError as exc:
        raise CheckpointError(f"{file}: cannot read ({exc.strerror})") from None
    if len(prefix) < 8 or n > MAX_HEADER_BYTES or 8 + n > size:
        raise CheckpointError(f"{file}: not a safetensors file (bad header length)")
    try:
        header = json.loads(raw)
    except ValueError:
        raise CheckpointError(f"{file}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: not a safetensors file (header is not a mapping)")
    refs = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = entry["dtype"], tuple(int(s) for s in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{file}: tensor {name!r} has a malformed header entry") from None
        expected = math.prod(shape) * ITEM_SIZES.get(dtype, 0)
        if dtype in ITEM_SIZES and (end - begin != expected or begin < 0 or 8 + n + end > size):
            raise CheckpointError(
                f"{file}: tensor {name!r} claims bytes [{begin}, {end}) of a {size - 8 - n}-byte "
                f"data section for {dtype} {list(shape)}; the file is truncated or corrupt"
            )
        relative = file.relative_to(folder).as_posix()
        refs.append(TensorRef(name, dtype, shape, relative, 8 + n + begin, end - begin))
    return refs
