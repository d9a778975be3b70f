"""Where each tensor of a Hugging Face safetensors checkpoint lies, read from the headers only.

A safetensors file is an 8-byte little-endian header length n, n bytes of JSON, then the data:
tensor `t` occupies bytes [8 + n + begin, 8 + n + end) of the file. No tensor is loaded here, so
binding a 65B checkpoint reads a few hundred kilobytes. A pytorch_model.bin checkpoint holds
pickled tensors instead: they are loaded (torch.load, weights_only) and can only be embedded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from spec import ModelSpec, SpecFormatError, from_hf_config
from spec.io import HF_CHECKED
from spec.weights import BY_KEY, hf_shapes

from .. import checked_reader
from ..safetensors_format import (
    ITEM_SIZES,
    CheckpointError,
    TensorRef,
    read_headers,
    safetensors_files,
)

# Floating dtypes the graph can read (it casts them to float32), with their sizes in bytes.
FLOAT_DTYPES = {k: ITEM_SIZES[k] for k in ("F32", "BF16", "F16")}
# Spec fields a config.json beside the weights must agree with: those every emitted loader checks.
CONFIG_FIELDS = (*(field for _, field, _ in HF_CHECKED), "rope_scaling")


@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    tensors: dict[str, TensorRef]  # in the spec's order

    def read(self, ref: TensorRef) -> bytes:
        if ref.data is not None:  # a pytorch_model.bin tensor, loaded by torch.load
            return bytes(ref.data)
        with open(self.folder / ref.file, "rb") as handle:
            handle.seek(ref.offset)
            return handle.read(ref.length)


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Hugging Face `LlamaForCausalLM` checkpoint of this spec, in graph order."""
    return hf_shapes(spec)


def check_config(spec: ModelSpec, folder: Path) -> None:
    """Refuse a config.json beside the weights that describes another architecture than `spec`."""
    path = folder / "config.json"
    if not path.is_file():
        return
    try:
        config = checked_reader.read_json(path)  # size and nesting bounded
        checked_reader.hf_rope_scaling(config, checked_reader.shown(path))  # names a bad key
        theirs = from_hf_config(config, name=spec.name)
    except ValidationError as exc:  # pydantic's message spans lines: keep the first fault
        fault = exc.errors()[0]
        where = ".".join(str(part) for part in fault["loc"])
        raise CheckpointError(
            f"{checked_reader.shown(path)}: not a LLaMA config.json ({where}: {fault['msg']})"
        ) from None
    except (checked_reader.CheckpointError, SpecFormatError) as exc:
        raise CheckpointError(f"not a LLaMA config.json: {checked_reader.shown(exc)}") from None
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise CheckpointError(
            f"{checked_reader.shown(path)}: not a LLaMA config.json "
            f"({type(exc).__name__}: {checked_reader.shown(exc)})"
        ) from None
    mismatched = [
        f"{field} {getattr(theirs, field)} (spec has {getattr(spec, field)})"
        for field in CONFIG_FIELDS
        if getattr(theirs, field) != getattr(spec, field)
    ]
    if mismatched:
        raise CheckpointError(f"{path} describes another model: " + ", ".join(mismatched))


def open_checkpoint(spec: ModelSpec, path: Path) -> Checkpoint:
    """Every tensor the spec needs, located in the checkpoint; one error lists every fault."""
    folder, refs = read_headers(Path(path))
    check_config(spec, folder)
    found = {ref.name: ref for ref in refs}
    head, embedding = BY_KEY["lm_head"].hf, BY_KEY["embed"].hf
    if spec.tie_embeddings and head in found:  # stored anyway: accepted when bitwise equal
        try:
            checked_reader.stores_tied_head(safetensors_files(Path(path))[1], head, embedding)
        except checked_reader.CheckpointError as exc:
            raise CheckpointError(str(exc)) from None
        del found[head]
    expected = expected_shapes(spec)
    missing = [name for name in expected if name not in found]
    unexpected = [checked_reader.shown(name) for name in sorted(set(found) - set(expected))]
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
