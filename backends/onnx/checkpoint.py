"""Where each tensor of a Hugging Face safetensors checkpoint lies, read from the headers only.

A safetensors file is an 8-byte little-endian header length n, n bytes of JSON, then the data:
tensor `t` occupies bytes [8 + n + begin, 8 + n + end) of the file. No tensor is loaded here, so
binding a 65B checkpoint reads a few hundred kilobytes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from spec import ModelSpec, SpecFormatError, from_hf_config

from ..base import OptionError

# safetensors' own limit on the header size.
MAX_HEADER_BYTES = 100 * 2**20
# Floating dtypes the graph can read (it casts them to float32), with their sizes in bytes.
FLOAT_DTYPES = {"F32": 4, "BF16": 2, "F16": 2}
# Every safetensors dtype code and its size, to check lengths of tensors we then refuse.
ITEM_SIZES = {
    **FLOAT_DTYPES, "F64": 8, "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2,
    "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
# Spec fields a config.json beside the weights must agree with.
CONFIG_FIELDS = (
    "vocab_size", "dim", "n_layers", "n_heads", "num_kv_heads", "hidden_dim", "norm_eps",
    "rope_theta", "rope_scaling", "tie_embeddings",
)  # fmt: skip


class CheckpointError(OptionError):
    """A checkpoint that does not fit the spec; the message names every offending tensor."""


@dataclass(frozen=True)
class TensorRef:
    """One tensor's bytes inside a checkpoint file."""

    name: str
    dtype: str  # safetensors code: F32, BF16, F16
    shape: tuple[int, ...]
    file: str  # relative to the checkpoint folder
    offset: int  # from the start of the file
    length: int


@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    tensors: dict[str, TensorRef]  # in the spec's order

    def read(self, ref: TensorRef) -> bytes:
        with open(self.folder / ref.file, "rb") as handle:
            handle.seek(ref.offset)
            return handle.read(ref.length)


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Hugging Face `LlamaForCausalLM` checkpoint of this spec, in graph order."""
    d, kv = spec.dim, spec.num_kv_heads * spec.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (spec.vocab_size, d)}
    for i in range(spec.n_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (d, d),
            p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, d),
            p + "post_attention_layernorm.weight": (d,),
            p + "mlp.gate_proj.weight": (spec.hidden_dim, d),
            p + "mlp.up_proj.weight": (spec.hidden_dim, d),
            p + "mlp.down_proj.weight": (d, spec.hidden_dim),
        }
    shapes["model.norm.weight"] = (d,)
    if not spec.tie_embeddings:
        shapes["lm_head.weight"] = (spec.vocab_size, d)
    return shapes


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


def check_config(spec: ModelSpec, folder: Path) -> None:
    """Refuse a config.json beside the weights that describes another architecture than `spec`."""
    path = folder / "config.json"
    if not path.is_file():
        return
    try:
        theirs = from_hf_config(json.loads(path.read_text()), name=spec.name)
    except (OSError, ValueError, KeyError, TypeError, SpecFormatError) as exc:
        raise CheckpointError(f"{path}: not a LLaMA config.json ({exc})") from None
    mismatched = [
        f"{field} {getattr(theirs, field)} (spec has {getattr(spec, field)})"
        for field in CONFIG_FIELDS
        if getattr(theirs, field) != getattr(spec, field)
    ]
    if mismatched:
        raise CheckpointError(f"{path} describes another model: " + ", ".join(mismatched))


def open_checkpoint(spec: ModelSpec, path: Path) -> Checkpoint:
    """Every tensor the spec needs, located in the checkpoint; one error lists every fault."""
    folder, files = safetensors_files(Path(path))
    check_config(spec, folder)
    found: dict[str, TensorRef] = {}
    for file in files:
        for ref in read_header(file, folder):
            found[ref.name] = ref
    expected = expected_shapes(spec)
    missing = [name for name in expected if name not in found]
    unexpected = sorted(set(found) - set(expected))
    wrong_shape = [
        f"{name} {list(found[name].shape)} (spec needs {list(shape)})"
        for name, shape in expected.items()
        if name in found and found[name].shape != shape
    ]
    wrong_dtype = [
        f"{name} {found[name].dtype}"
        for name in expected
        if name in found and found[name].dtype not in FLOAT_DTYPES
    ]
    problems = [
        f"{label}: {', '.join(items)}"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong_shape),
            (f"wrong dtype (the graph reads {', '.join(FLOAT_DTYPES)})", wrong_dtype),
        )
        if items
    ]
    if problems:
        raise CheckpointError(f"{path} does not fit spec {spec.name!r}; " + "; ".join(problems))
    return Checkpoint(folder, {name: found[name] for name in expected})
