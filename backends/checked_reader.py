"""One checked reader for untrusted Hugging Face checkpoints: file lists and safetensors headers.

The compiler imports this module, and every emitted loader gets a verbatim copy of it (as
`checkpoint_files.py`), so the compiler and the standalone code refuse exactly the same inputs.
It imports the standard library only.

A safetensors file is an 8-byte little-endian header length n, n bytes of UTF-8 JSON, then the
data: tensor `t` occupies bytes [8 + n + begin, 8 + n + end) of the file. The rules are those of
the safetensors library 0.8 (Rust, `safetensors/src/tensor.rs`: `read_metadata`, `validate`):
  - n <= 100_000_000 and 8 + n <= file size; the header is UTF-8 JSON (serde_json: no NaN, no
    lone surrogates, numbers in range) nested at most 127 levels deep, a mapping;
  - `__metadata__` (at most once) is null or a mapping of strings to strings; every other key is
    a tensor {"dtype": one of DTYPE_BITS, "shape": [u64...], "data_offsets": [u64, u64]}, each
    field exactly once (unknown fields are ignored); a tensor name given twice: the last wins;
  - sorted by offsets, the tensors tile the data section exactly: each begins where the previous
    ended (0 for the first), end >= begin, end - begin = prod(shape) * bits / 8 with no overflow
    of a u64 and a whole number of bytes, and the last end is the end of the file.
Zero-size shapes ([0], [3, 0]) are valid safetensors, as are scalars (shape []).

Shard paths from `model.safetensors.index.json` (and `*.safetensors` found in the folder) stay
inside the checkpoint folder: no absolute paths, no `..`, no symlink leading out, except the
Hugging Face cache layout, where `snapshots/<revision>/<file>` links into `../../blobs/`.

Checkpoints that transformers 4.28-4.34 saved by default, `pytorch_model.bin` or shards named by
`pytorch_model.bin.index.json`, are read too (safetensors preferred when a folder has both, as
transformers prefers them), by `torch.load(weights_only=True)`: tensors and plain containers,
never code. torch is imported only then, so the rest of this module needs the standard library.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MAX_HEADER_BYTES = 100_000_000  # safetensors' MAX_HEADER_SIZE
MAX_DEPTH = 127  # serde_json's recursion limit (128) refuses the 128th nested level
U64_MAX = 2**64 - 1
INDEX_FILE = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"  # transformers' WEIGHTS_NAME: its default format before 4.35
BIN_INDEX_FILE = "pytorch_model.bin.index.json"  # transformers' WEIGHTS_INDEX_NAME
MAX_INDEX_BYTES = 64 * 2**20  # an index of a 1T-parameter model is a few hundred kilobytes
# Every dtype of safetensors 0.8, with its size in bits.
DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
    "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16,
    "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}  # fmt: skip
TENSOR_FIELDS = ("dtype", "shape", "data_offsets")
# transformers 4.28-4.30 saved each layer's RoPE buffer `inv_freq` in Llama checkpoints (e.g.
# Llama-2-7b-hf, TinyLlama); every release recomputes it from the config and ignores the stored
# one when loading (4.31 made it non-persistent). These names, and no others, are left out of
# what read_header and load_bin return, so every loader and converter skips them alike.
RECOMPUTED_BUFFER = re.compile(r"model\.layers\.(?:0|[1-9][0-9]*)\.self_attn\.rotary_emb\.inv_freq")


def is_recomputed_buffer(name: str) -> bool:
    """Whether `name` is a RoPE buffer transformers recomputes and ignores (RECOMPUTED_BUFFER)."""
    return RECOMPUTED_BUFFER.fullmatch(name) is not None


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely or does not fit; one line naming file and tensor."""


def shown(text: object) -> str:
    """`text` for a one-line message: as is when printable, else escaped by ascii()."""
    text = str(text)
    return text if text.isprintable() else ascii(text)


@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors header; begin/end count from the start of the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


class _HeaderError(ValueError):
    """Raised inside the JSON parser's hooks; becomes a CheckpointError naming the file."""


def _parse_int(text: str) -> object:
    # serde_json reads "-0" as a negative number, which a u64 refuses; big integers it reads as
    # f64, out of range past ~1.8e308. A float stands for both: never a valid shape or offset.
    if text.startswith("-") and int(text) == 0:
        return -0.0
    if len(text) > 20:
        value = float(text)  # OverflowError past 1e308: caught below
        if math.isinf(value):
            raise _HeaderError("number out of range")
        return value
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _HeaderError("number out of range")
    return value


def _parse_constant(text: str) -> object:
    raise _HeaderError(f"{text} is not JSON")


def _nesting_depth(text: str) -> int:
    """The deepest nesting of [ and { outside strings, without recursion (json.loads recurses)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _check_strings(value: object) -> None:
    """serde_json refuses lone surrogates (\\ud800); Python's json lets them through."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            item.encode("utf-8")  # UnicodeEncodeError is a ValueError
        elif isinstance(item, (list, tuple)):  # arrays, objects and their (key, value) pairs
            stack.extend(item)


class _Object(list):
    """A JSON object as its (key, value) pairs: duplicates kept, since their rules depend on where
    the object is; a JSON array stays a plain list."""


def _pairs(pairs: list[tuple[str, object]]) -> _Object:
    return _Object(pairs)


def _is_u64(value: object) -> bool:
    return type(value) is int and 0 <= value <= U64_MAX


def _tensor(name: str, pairs: object) -> Entry:
    if not isinstance(pairs, _Object):
        raise _HeaderError(f"tensor {name!r} is not a mapping")
    fields: dict[str, object] = {}
    for key, value in pairs:
        if key in TENSOR_FIELDS and key in fields:
            raise _HeaderError(f"tensor {name!r} has {key!r} twice")
        fields[key] = value
    missing = [key for key in TENSOR_FIELDS if key not in fields]
    if missing:
        raise _HeaderError(f"tensor {name!r} has no {missing[0]!r}")
    dtype, shape, offsets = (fields[key] for key in TENSOR_FIELDS)
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise _HeaderError(f"tensor {name!r} has unknown dtype {shown(dtype)}")
    if type(shape) is not list or not all(_is_u64(size) for size in shape):
        raise _HeaderError(f"tensor {name!r} has shape {shown(shape)}, not a list of sizes >= 0")
    if type(offsets) is not list or len(offsets) != 2 or not all(map(_is_u64, offsets)):
        raise _HeaderError(f"tensor {name!r} has data_offsets {shown(offsets)}, not [begin, end]")
    return Entry(name, dtype, tuple(shape), offsets[0], offsets[1])


def _byte_count(entry: Entry) -> int:
    """prod(shape) * bits / 8, refusing what overflows a u64 or is not whole bytes (as Rust)."""
    count = 1
    for size in entry.shape:
        count *= size
        if count > U64_MAX:
            raise _HeaderError(f"tensor {entry.name!r}: shape {list(entry.shape)} overflows")
    bits = count * DTYPE_BITS[entry.dtype]
    if bits > U64_MAX:
        raise _HeaderError(f"tensor {entry.name!r}: shape {list(entry.shape)} overflows")
    if bits % 8:
        raise _HeaderError(
            f"tensor {entry.name!r}: {entry.dtype} {list(entry.shape)} is not whole bytes"
        )
    return bits // 8


def parse_header(raw: bytes) -> dict[str, Entry]:
    """The tensors of a safetensors JSON header, checked as the safetensors library checks them.

    Raises _HeaderError (a ValueError) naming the first fault; offsets are not yet checked.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _HeaderError("header is not UTF-8") from None
    if _nesting_depth(text) > MAX_DEPTH:
        raise _HeaderError(f"header nests deeper than {MAX_DEPTH} levels")
    try:
        pairs = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
        _check_strings(pairs)
    except _HeaderError:
        raise
    except (ValueError, OverflowError) as exc:
        raise _HeaderError(f"header is not JSON ({shown(exc)})") from None
    if not isinstance(pairs, _Object):
        raise _HeaderError("header is not a mapping")
    entries: dict[str, Entry] = {}
    seen_metadata = False
    for key, value in pairs:
        if key == "__metadata__":
            if seen_metadata:
                raise _HeaderError("header has __metadata__ twice")
            seen_metadata = True
            if value is not None and not (
                isinstance(value, _Object) and all(isinstance(v, str) for _, v in value)
            ):
                raise _HeaderError("__metadata__ is not a mapping of strings to strings")
            continue
        entries[key] = _tensor(key, value)  # a name given twice: the last wins, as in Rust
    return entries


def check_offsets(entries: dict[str, Entry], data_size: int) -> None:
    """The tensors, sorted by offsets, tile the `data_size`-byte data section exactly."""
    start = 0
    for entry in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if entry.begin != start or entry.end < entry.begin:
            raise _HeaderError(
                f"tensor {entry.name!r} claims bytes [{entry.begin}, {entry.end}) where the "
                f"previous tensor ends at {start} (overlapping or uncovered bytes)"
            )
        start = entry.end
        if entry.end - entry.begin != _byte_count(entry):
            raise _HeaderError(
                f"tensor {entry.name!r}: {entry.dtype} {list(entry.shape)} needs "
                f"{_byte_count(entry)} bytes, its offsets give {entry.end - entry.begin}"
            )
    if start != data_size:
        raise _HeaderError(
            f"tensors cover {start} bytes of a {data_size}-byte data section: the file is "
            "truncated or corrupt"
        )


def read_header(file: Path) -> tuple[int, dict[str, Entry]]:
    """(where the data section starts, the tensors) of one safetensors file, every rule checked
    (over every tensor); RoPE buffers transformers recomputes (is_recomputed_buffer) are then
    left out.

    Raises CheckpointError naming the file and the first fault.
    """
    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            prefix = handle.read(8)
            n = int.from_bytes(prefix, "little")
            raw = handle.read(n) if len(prefix) == 8 and n <= min(MAX_HEADER_BYTES, size) else b""
    except OSError as exc:
        raise CheckpointError(f"{shown(file)}: cannot read ({shown(exc.strerror)})") from None
    try:
        if len(prefix) < 8:
            raise _HeaderError("shorter than the 8-byte header length")
        if n > MAX_HEADER_BYTES:
            raise _HeaderError(f"header length {n} exceeds {MAX_HEADER_BYTES} bytes")
        if 8 + n > size or len(raw) != n:
            raise _HeaderError(f"header length {n} does not fit a {size}-byte file")
        entries = parse_header(raw)
        check_offsets(entries, size - 8 - n)
    except _HeaderError as exc:
        raise CheckpointError(f"{shown(file)}: not a valid safetensors file: {exc}") from None
    return 8 + n, {name: e for name, e in entries.items() if not is_recomputed_buffer(name)}


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _hf_blob_store(folder: Path) -> Path | None:
    """`models--org--name/blobs` when `folder` (resolved) is a Hugging Face cache snapshot."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent / "blobs"
    return None


def shard_path(folder: Path, name: object, where: str) -> Path:
    """`folder / name` for a shard name read from an index (or found in the folder), refused when
    it is not a plain relative path or resolves outside the folder (HF cache blobs excepted)."""
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise CheckpointError(f"{where}: shard name {shown(repr(name))} is not a relative path")
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or ".." in parts:
        raise CheckpointError(
            f"{where}: shard {shown(repr(name))} points outside the checkpoint folder "
            "(absolute or with '..'); shards must lie inside it"
        )
    path = folder / name
    real, real_folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    blobs = _hf_blob_store(real_folder)
    if not _inside(real, real_folder) and not (blobs is not None and real.parent == blobs):
        raise CheckpointError(
            f"{where}: shard {shown(repr(name))} is a symlink resolving to {shown(real)}, outside "
            "the checkpoint folder (only a Hugging Face cache snapshot may link into its blobs/)"
        )
    return path


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict:
    """json.loads' object hook refusing a key given twice (Python keeps the last silently)."""
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key {shown(repr(key))} given twice")
        seen[key] = value
    return seen


def read_weight_map(index: Path) -> dict[str, str]:
    """The weight_map (tensor name -> shard file name) of a model.safetensors.index.json or
    pytorch_model.bin.index.json: bounded in size and nesting, every tensor name mapped once,
    every value a string (shard_path checks where it points)."""
    try:
        if index.stat().st_size > MAX_INDEX_BYTES:
            raise CheckpointError(f"{shown(index)}: larger than {MAX_INDEX_BYTES} bytes")
        with open(index, "rb") as handle:
            raw = handle.read(MAX_INDEX_BYTES + 1)
    except OSError as exc:
        raise CheckpointError(f"{shown(index)}: cannot read ({shown(exc.strerror)})") from None
    kind = "pytorch_model.bin" if index.name.endswith(".bin.index.json") else "safetensors"
    try:
        text = raw.decode("utf-8")
        if _nesting_depth(text) > MAX_DEPTH:
            raise ValueError(f"nests deeper than {MAX_DEPTH} levels")
        loaded = json.loads(text, parse_constant=_parse_constant, object_pairs_hook=_unique_pairs)
        weight_map = loaded["weight_map"]
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(f"{shown(index)}: not a {kind} index ({shown(exc)})") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{shown(index)}: weight_map is not a non-empty mapping")
    bad = [name for name in weight_map.values() if not isinstance(name, str)]
    if bad:
        raise CheckpointError(
            f"{shown(index)}: weight_map value {shown(repr(bad[0]))} is not a file name"
        )
    return weight_map


def read_index(index: Path) -> list[str]:
    """The shard names of a checkpoint index, in sorted order, checked (read_weight_map)."""
    return sorted(set(read_weight_map(index).values()))


def is_bin(file: Path) -> bool:
    """Whether `file` is a pickled torch checkpoint (pytorch_model.bin or one of its shards)."""
    return Path(file).suffix == ".bin"


# config.json's dtype (transformers' names) as the safetensors code its tensors must have.
CONFIG_DTYPE_CODES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
CONFIG_FILE = "config.json"


def check_stored_dtypes(folder: Path, stored: dict[str, str]) -> None:
    """Refuse (one CheckpointError naming tensor, stored dtype and config dtype) a floating
    tensor whose dtype `stored` (name -> safetensors code) differs from the dtype the folder's
    config.json states (`dtype`, else 4.x `torch_dtype`): the model is built in the config's
    dtype, and transformers 5 would silently cast such a tensor to it. Nothing to check
    without a config.json or a stated float32/bfloat16/float16 (the spec refuses others)."""
    config = folder / CONFIG_FILE
    if not config.is_file():
        return
    data = read_json(config)
    dtype = data.get("dtype", data.get("torch_dtype"))
    want = CONFIG_DTYPE_CODES.get(dtype) if isinstance(dtype, str) else None
    names = {code: name for name, code in CONFIG_DTYPE_CODES.items()} | {"F64": "float64"}
    for name, code in stored.items():
        if want and code in names and code != want:
            raise CheckpointError(
                f"{shown(name)} is stored as {names[code]} but {shown(config)} says dtype "
                f"{dtype}: refused rather than silently cast (save the weights as {dtype}, "
                "or set the config's dtype to theirs)"
            )


def checkpoint_files(path: Path, any_dtype: bool = False) -> tuple[Path, list[Path]]:
    """The checkpoint folder and its weight files, in transformers' order of preference: one file
    given (.safetensors, or .bin), the shards model.safetensors.index.json names, every
    *.safetensors in the folder, pytorch_model.bin, or the shards pytorch_model.bin.index.json
    names; each shard path checked by shard_path. Other *.bin files (training_args.bin) are
    never weights. Safetensors tensors whose dtype is not config.json's are refused here
    (check_stored_dtypes; .bin files: load_bin_files), unless `any_dtype`: a converter that
    keeps every tensor's bytes and dtype."""
    folder, files = _weight_files(Path(path))
    if not any_dtype and not any(is_bin(file) for file in files):
        stored = {}
        for file in files:
            stored |= {name: e.dtype for name, e in read_header(file)[1].items()}
        check_stored_dtypes(folder, stored)
    return folder, files


def _weight_files(path: Path) -> tuple[Path, list[Path]]:
    """checkpoint_files' folder and files, before the dtype check."""
    if path.is_file():
        return path.parent, [path]
    index = path / INDEX_FILE
    if index.is_file():
        names = read_index(index)
        return path, [shard_path(path, name, shown(index)) for name in names]
    files = sorted(path.glob("*.safetensors"))
    if files:
        return path, [shard_path(path, file.name, shown(path)) for file in files]
    if (path / BIN_FILE).is_file():
        return path, [shard_path(path, BIN_FILE, shown(path))]
    index = path / BIN_INDEX_FILE
    if index.is_file():
        names = read_index(index)
        return path, [shard_path(path, name, shown(index)) for name in names]
    raise CheckpointError(
        f"{shown(path)}: no .safetensors files (nor {BIN_FILE} or {BIN_INDEX_FILE})"
    )


# torch dtypes a .bin checkpoint may hold, as safetensors codes (floats only: weights).
TORCH_FLOAT_CODES = {
    "torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16",
    "torch.bfloat16": "BF16",
}  # fmt: skip


TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def load_bin(file: Path) -> dict:
    """One pickled torch checkpoint file as {name: tensor}, read by
    `torch.load(map_location="cpu", weights_only=True, mmap=True)`: tensors and plain
    containers only, so a pickle that would run code is refused (CheckpointError, one line);
    every value must be a floating-point tensor; RoPE buffers transformers recomputes
    (is_recomputed_buffer) are left out. mmap needs torch's zip format (torch >= 1.6,
    every transformers >= 4.28 save); an older file is read the same safe way without it."""
    import zipfile

    import torch  # only here: the safetensors path needs the standard library only

    try:
        mapped = zipfile.is_zipfile(file)
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=mapped)
    except OSError as exc:
        raise CheckpointError(f"{shown(file)}: cannot read ({shown(exc.strerror)})") from None
    except Exception as exc:  # noqa: BLE001 - unpickling refusals come as many error types
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        # torch's refusal wraps its reason (e.g. "unsupported GLOBAL posix.system") in
        # boilerplate lines: name the reason
        lines = [line for line in lines if not line.startswith(TORCH_BOILERPLATE)] or lines
        reason = shown(lines[0])[:200] if lines else type(exc).__name__
        raise CheckpointError(
            f"{shown(file)}: refused, not a plain tensor checkpoint ({reason})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{shown(file)}: holds a {type(state).__name__}, not tensors by name")
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{shown(file)}: {shown(repr(name))[:80]} is not a named tensor")
        if str(tensor.dtype) not in TORCH_FLOAT_CODES:
            raise CheckpointError(
                f"{shown(file)}: {shown(name)} has dtype {str(tensor.dtype)[6:]}, not a float"
            )
    return {name: tensor for name, tensor in state.items() if not is_recomputed_buffer(name)}


def load_bin_files(files: list[Path], folder: Path, any_dtype: bool = False) -> dict:
    """Every tensor of the .bin files (load_bin); a tensor found in two files is refused, as is
    one whose dtype is not config.json's (check_stored_dtypes; not when `any_dtype`), and
    when a pytorch_model.bin.index.json names the shards, every tensor must be where it says,
    and every tensor it maps must be found."""
    tensors: dict = {}
    owner: dict[str, Path] = {}
    for file in files:
        for name, tensor in load_bin(file).items():
            if name in owner:  # which of the two would be meant?
                raise CheckpointError(
                    f"{shown(file)}: tensor {shown(name)} is also in {shown(owner[name].name)}"
                )
            tensors[name], owner[name] = tensor, file
    if not any_dtype:
        codes = {name: TORCH_FLOAT_CODES[str(t.dtype)] for name, t in tensors.items()}
        check_stored_dtypes(folder, codes)
    index = folder / BIN_INDEX_FILE
    if index.is_file() and [file.name for file in files] != [BIN_FILE]:
        weight_map = read_weight_map(index)
        for name, file in owner.items():
            if weight_map.get(name) != file.name:
                raise CheckpointError(
                    f"{shown(index)}: maps {shown(name)} to {shown(repr(weight_map.get(name)))}, "
                    f"but it is in {shown(file.name)}"
                )
        absent = sorted(set(weight_map) - set(owner))
        if absent:
            raise CheckpointError(f"{shown(index)}: {shown(absent[0])} is in no shard")
    return tensors


def bin_tied_head(tensors: dict, head: str, embedding: str) -> bool:
    """stores_tied_head for tensors loaded from .bin files: whether `head` is stored, accepted
    only when it has the embedding's dtype, shape and bits (else CheckpointError naming both)."""
    if head not in tensors or embedding not in tensors:
        return False
    a, b = tensors[head], tensors[embedding]
    if (a.dtype, tuple(a.shape)) != (b.dtype, tuple(b.shape)):
        raise CheckpointError(
            tied_head_differs(head, embedding) + f" ({str(a.dtype)[6:]} {list(a.shape)} "
            f"against {str(b.dtype)[6:]} {list(b.shape)})"
        )
    import torch

    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    if not torch.equal(a.contiguous().view(bits), b.contiguous().view(bits)):
        raise CheckpointError(tied_head_differs(head, embedding))
    return True


def read_checkpoint_headers(path: Path) -> tuple[Path, dict[Path, tuple[int, dict[str, Entry]]]]:
    """Every file's checked header; a tensor found in two files is refused (which one is meant?)."""
    folder, files = checkpoint_files(path)
    headers, owner = {}, {}
    for file in files:
        headers[file] = read_header(file)
        for name in headers[file][1]:
            if name in owner:
                raise CheckpointError(
                    f"{shown(file)}: tensor {name!r} is also in {shown(owner[name].name)}"
                )
            owner[name] = file
    return folder, headers


def tied_head_differs(head: str, embedding: str) -> str:
    """The one-line refusal of a tied model's checkpoint whose head is not its embedding."""
    return (
        f"{head} differs from {embedding}: this model ties them (one tensor), so a checkpoint "
        "may hold both only when they are bitwise equal"
    )


COMPARE_CHUNK = 1 << 24  # bytes compared at a time: a 128k x 4096 bf16 embedding is 1 GiB


def stores_tied_head(files: list[Path], head: str, embedding: str) -> bool:
    """Whether a checkpoint of a tied-embedding model also stores its head `head` (transformers
    and other writers sometimes save the tied `lm_head.weight` too). Such a head is accepted,
    and then ignored, only when it has the embedding's dtype, shape and bytes; otherwise one
    CheckpointError names both tensors (tied_head_differs). Headers are checked by read_header;
    the bytes are compared a chunk at a time."""
    if any(is_bin(file) for file in files):
        return bin_tied_head(load_bin_files(files, files[0].parent), head, embedding)
    where: dict[str, tuple[Path, int, Entry]] = {}
    for file in files:
        start, entries = read_header(file)
        where |= {
            name: (file, start, entries[name]) for name in (head, embedding) if name in entries
        }
    if head not in where:
        return False
    if embedding not in where:
        return False  # the missing embedding is reported by the name check
    (head_file, head_start, a), (embed_file, embed_start, b) = where[head], where[embedding]
    if (a.dtype, a.shape) != (b.dtype, b.shape):
        raise CheckpointError(
            tied_head_differs(head, embedding) + f" ({a.dtype} {list(a.shape)} against "
            f"{b.dtype} {list(b.shape)})"
        )
    try:
        with open(head_file, "rb") as first, open(embed_file, "rb") as second:
            first.seek(head_start + a.begin)
            second.seek(embed_start + b.begin)
            left = a.end - a.begin
            while left:
                size = min(left, COMPARE_CHUNK)
                if first.read(size) != second.read(size):
                    raise CheckpointError(tied_head_differs(head, embedding))
                left -= size
    except OSError as exc:
        raise CheckpointError(f"{shown(head_file)}: cannot read ({shown(exc.strerror)})") from None
    return True


MAX_CONFIG_BYTES = 16 * 2**20  # a config.json is a few kilobytes
# Each rope_type transformers has for Llama: the keys it requires (besides those it defaults).
ROPE_KEYS = {
    "none": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
    "yarn": (),  # factor defaults to max_position_embeddings / original_max_position_embeddings
    "longrope": ("short_factor", "long_factor"),
    "dynamic": ("factor",),
}
# The kinds whose pretraining length transformers takes from the config when the parameters
# lack it: a top-level `original_max_position_embeddings` first (Phi-3's form), else
# max_position_embeddings (`standardize_rope_params`, transformers 5).
ROPE_ORIGINAL_LENGTH = ("llama3", "yarn", "longrope")


def read_json(path: Path, limit: int = MAX_CONFIG_BYTES) -> dict:
    """A JSON mapping from an untrusted file: size bounded, nesting bounded (no RecursionError)."""
    try:
        if path.stat().st_size > limit:
            raise CheckpointError(f"{shown(path)}: larger than {limit} bytes")
        with open(path, "rb") as handle:
            text = handle.read(limit + 1).decode("utf-8")
        if _nesting_depth(text) > MAX_DEPTH:
            raise ValueError(f"nests deeper than {MAX_DEPTH} levels")
        data = json.loads(text, parse_constant=_parse_constant)
    except OSError as exc:
        raise CheckpointError(f"{shown(path)}: cannot read ({shown(exc.strerror)})") from None
    except ValueError as exc:
        raise CheckpointError(f"{shown(path)}: not valid JSON ({shown(exc)})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{shown(path)}: not a JSON mapping")
    return data


def hf_rope_scaling(config: dict, where: str) -> dict:
    """A transformers config's RoPE scaling as {"type": "none" | "linear" | "llama3" | "yarn" |
    "longrope" | "dynamic", params...} (4.x `rope_scaling` or 5.x `rope_parameters`), with the
    values transformers derives for omitted keys filled in (YaRN's and LongRoPE's
    attention_factor, their factor, the original length); malformed: CheckpointError naming the
    key. Given both, a non-empty `rope_scaling` wins, as in transformers 5 (`PreTrainedConfig`:
    `rope_parameters = rope_scaling or rope_parameters`)."""
    key = "rope_parameters" if config.get("rope_parameters") is not None else "rope_scaling"
    if config.get("rope_scaling"):
        key = "rope_scaling"
    params = config.get(key)
    if params is None:
        return {"type": "none"}
    if not isinstance(params, dict):
        raise CheckpointError(f"{where}: {key} is {shown(repr(params))[:80]}, not a mapping")
    kind = params.get("rope_type", params.get("type", "default"))
    kind = "none" if kind == "default" else kind
    if kind not in ROPE_KEYS:
        raise CheckpointError(f"{where}: {key} type {shown(repr(kind))[:80]} is not supported")
    missing = [name for name in ROPE_KEYS[kind] if name not in params]
    if missing:
        raise CheckpointError(f"{where}: {key} ({kind}) has no {missing[0]!r}")
    view = {"type": kind, **{name: params[name] for name in ROPE_KEYS[kind]}}
    if kind in ROPE_ORIGINAL_LENGTH:
        view["original_max_position_embeddings"] = _rope_original_length(config, params)
    if kind == "yarn":
        view |= _yarn_view(config, params, f"{where}: {key} (yarn)", view)
    elif kind == "longrope":
        view |= _longrope_view(config, params, f"{where}: {key} (longrope)", view)
    return view


def _rope_original_length(config: dict, params: dict) -> object:
    """The pretraining length transformers 5 reads for llama3, yarn and longrope."""
    if config.get("original_max_position_embeddings") is not None:
        return config["original_max_position_embeddings"]
    if params.get("original_max_position_embeddings") is not None:
        return params["original_max_position_embeddings"]
    return config.get("max_position_embeddings") or 2048


def _rope_number(value: object, where: str, name: str) -> float:
    """A positive number from the config (JSON int or float), or CheckpointError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise CheckpointError(
            f"{where}: {name} is {shown(repr(value))[:80]}, not a positive number"
        )
    return value


def _rope_factor(config: dict, params: dict, where: str, original: object) -> float:
    """`factor`, or max_position_embeddings / original_max_position_embeddings without one."""
    if params.get("factor") is not None:
        return _rope_number(params["factor"], where, "factor")
    length = _rope_number(
        config.get("max_position_embeddings") or 2048, where, "max_position_embeddings"
    )
    return length / _rope_number(original, where, "original_max_position_embeddings")


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn_view(config: dict, params: dict, where: str, view: dict) -> dict:
    """YaRN's parameters as transformers' `_compute_yarn_parameters` resolves them."""
    factor = _rope_factor(config, params, where, view["original_max_position_embeddings"])
    attention = params.get("attention_factor")
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if attention is None and mscale and mscale_all_dim:
        scales = (_rope_number(v, where, "mscale") for v in (mscale, mscale_all_dim))
        attention = _yarn_mscale(factor, next(scales)) / _yarn_mscale(factor, next(scales))
    elif attention is None:
        attention = _yarn_mscale(factor)
    return {
        "factor": factor,
        "beta_fast": params.get("beta_fast") or 32.0,  # `or`: transformers reads 0 as absent too
        "beta_slow": params.get("beta_slow") or 1.0,
        "truncate": params.get("truncate", True),
        "attention_factor": attention,
    }


def _longrope_view(config: dict, params: dict, where: str, view: dict) -> dict:
    """LongRoPE's parameters as transformers' `_compute_longrope_parameters` resolves them."""
    original = view["original_max_position_embeddings"]
    factor = _rope_factor(config, params, where, original)
    attention = params.get("attention_factor")
    if attention is None:
        length = _rope_number(original, where, "original_max_position_embeddings")
        if length <= 1:
            raise CheckpointError(f"{where}: original_max_position_embeddings must exceed 1")
        attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(length))
    return {"factor": factor, "attention_factor": attention}


def hf_config_view(config: dict, where: str, defaults: dict) -> dict:
    """The keys of `defaults` as transformers reads them from a LlamaConfig dict: an absent or
    null key takes its default ({"same_as": key}: that key's value, as num_key_value_heads takes
    num_attention_heads; None: no default), rope_theta comes from 5.x `rope_parameters` when that
    holds one, and rope_scaling is as hf_rope_scaling gives it (malformed: CheckpointError)."""
    rope = config.get("rope_parameters")
    view: dict = {}
    for key, default in defaults.items():
        value = config.get(key)
        if key == "rope_theta" and isinstance(rope, dict) and rope.get(key) is not None:
            value = rope[key]
        if value is None:
            value = view.get(default["same_as"]) if isinstance(default, dict) else default
        view[key] = value
    view["rope_scaling"] = hf_rope_scaling(config, where)
    return view


def check_hf_config(path: Path, model: dict, defaults: dict) -> None:
    """Refuse a config.json that describes another model: `model` maps transformers config keys
    (hidden_size, rms_norm_eps, rope_theta, rope_scaling as hf_rope_scaling gives it, ...) to the
    model's values, `defaults` holds transformers' defaults for omitted keys (hf_config_view);
    one CheckpointError lists every mismatch."""
    where = shown(path)
    mismatched = hf_config_mismatches(read_json(path), where, model, defaults)
    if mismatched:
        raise CheckpointError(f"{where} describes another model: " + ", ".join(mismatched))


def hf_config_mismatches(config: dict, where: str, model: dict, defaults: dict) -> list[str]:
    """`key value (model has want)` for each key of `model` that the config (read as
    hf_config_view reads it) gives another value; empty when it describes the model."""
    theirs = hf_config_view(config, where, defaults)
    return [
        f"{key} {shown(repr(theirs.get(key)))[:80]} (model has {want!r})"
        for key, want in model.items()
        if theirs.get(key) != want
    ]


def check_names_and_shapes(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
) -> None:
    """Refuse, in one CheckpointError listing every fault, a checkpoint whose tensor names or
    shapes differ from the model's (names from the file are printed escaped)."""
    missing = sorted(set(expected) - set(found))
    unexpected = [shown(name) for name in sorted(set(found) - set(expected))]
    wrong = [
        f"{name} {found[name]} (model has {expected[name]})"
        for name in sorted(set(expected) & set(found))
        if expected[name] != found[name]
    ]
    problems = [
        f"{label}: {', '.join(items)}"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        )
        if items
    ]
    if problems:
        raise CheckpointError("checkpoint does not fit the model; " + "; ".join(problems))
