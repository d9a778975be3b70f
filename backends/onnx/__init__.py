"""The ONNX target: prefill and KV-cache decode graphs built from the spec, weights by reference.

Weights are never materialised. Without `--weights` every initializer is declared as external
data in `model.onnx.data` (a float32, bfloat16 or float16 layout described by the graph itself) to be
bound later; with `--weights` each initializer points at its tensor's byte range inside the
checkpoint's .safetensors files, so binding a 65B model reads only the headers. `--embed-weights`
copies the checkpoint's bytes into the graphs instead (into `model.onnx.data` past 2 GB); it is
the only way to bind a pytorch_model.bin checkpoint, whose tensors are pickled. `--quantize`
quantizes every linear layer's weight at bind time (quantized.py) into the graphs instead.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import numpy as np

from spec import DType, ModelSpec
from spec.weights import BY_KEY

from ..base import (
    CHECKED_READER,
    QUANTIZER,
    Artifact,
    BuildOptions,
    Raw,
    Rendered,
    SpecContext,
    TemplateContext,
    refuse_rope_scaling,
)
from ..checked_reader import shown
from ..safetensors_format import ITEM_SIZES, TensorRef
from ..tables import TableContext
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    expected_shapes,
    open_checkpoint,
)
from .graph import Weight, decoder
from .quantized import (
    PART_BITS,
    PARTS,
    Quantization,
    laid_out,
    quantization_of,
    quantized_parts,
    quantized_shapes,
)

GRAPHS = {"model.onnx": False, "model_with_past.onnx": True}  # file -> with KV cache
GENAI_CONFIG = "genai_config.json"
DATA_FILE = "model.onnx.data"
ALIGNMENT = 4096  # external data offsets in DATA_FILE are page-aligned
# A protobuf message is at most 2 GiB; leave room for the graph next to the weights.
INLINE_LIMIT = 2**31 - 2**26
SAFETENSORS_DTYPE = {DType.float32: "F32", DType.bfloat16: "BF16", DType.float16: "F16"}
DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
ORT_MIN_VERSION = "1.23"
ORT_TESTED_VERSION = "1.31.1"

__all__ = ["BACKEND", "CheckpointError", "OnnxBackend"]


def packed(entries: list[tuple[str, str, tuple[int, ...]]]) -> dict[str, Weight]:
    """(name, dtype, shape) laid out one after another in DATA_FILE, each at a page boundary."""
    layout, offset = {}, 0
    for name, dtype, shape in entries:
        bits = PART_BITS.get(dtype) or 8 * ITEM_SIZES[dtype]  # uint4: two per byte
        length = -(-bits * math.prod(shape) // 8)
        layout[name] = Weight(name, dtype, shape, DATA_FILE, offset, length)
        offset += -(-length // ALIGNMENT) * ALIGNMENT
    return layout


def declared_weights(
    spec: ModelSpec, dtype: DType, quantization: Quantization | None = None
) -> dict[str, Weight]:
    """Unbound: every weight declared in DATA_FILE, to be bound by a later build or `bind`
    (quantized: the parts quantized.py lays out)."""
    code = SAFETENSORS_DTYPE[dtype]
    entries = [(name, code, shape) for name, shape in expected_shapes(spec).items()]
    return packed(laid_out(spec, entries, quantization) if quantization else entries)


def referenced_weights(checkpoint: Checkpoint) -> dict[str, Weight]:
    """Bound by reference: byte ranges inside the checkpoint's files (relative to its folder).

    onnxruntime refuses external data that resolves outside the folder it is given, symlinks
    included, so a shard that does (a Hugging Face cache snapshot links into ../../blobs/) is
    refused here, saying so, rather than bound to graphs that cannot load. The locations written
    are plain relative names: never absolute, never `..`.
    """
    if any(ref.data is not None for ref in checkpoint.tensors.values()):
        raise CheckpointError(
            f"{shown(checkpoint.folder)} holds pickled torch tensors (pytorch_model.bin), which "
            "onnxruntime cannot read by reference: bind with --embed-weights (copies them into the "
            "graphs), or bind a safetensors copy of the checkpoint"
        )
    folder = os.path.realpath(checkpoint.folder)
    for file in sorted({ref.file for ref in checkpoint.tensors.values()}):
        real = os.path.realpath(checkpoint.folder / file)
        if os.path.commonpath([folder, real]) != folder:
            raise CheckpointError(
                f"{shown(checkpoint.folder / file)} resolves to {shown(real)}, outside the weights "
                "folder, and onnxruntime refuses external data there (a Hugging Face cache snapshot "
                "links into ../../blobs/): copy the snapshot with `cp -rL SNAPSHOT DEST` and bind "
                "DEST, or use --embed-weights"
            )
    return {
        name: Weight(name, ref.dtype, ref.shape, ref.file, ref.offset, ref.length)
        for name, ref in checkpoint.tensors.items()
    }


def embedded_weights(checkpoint: Checkpoint) -> tuple[dict[str, Weight], bytes | None]:
    """The checkpoint's bytes in the graphs, or in DATA_FILE (returned) when they exceed 2 GB."""
    refs = checkpoint.tensors.values()
    if sum(ref.length for ref in refs) <= INLINE_LIMIT:
        inline = {r.name: Weight(r.name, r.dtype, r.shape, data=checkpoint.read(r)) for r in refs}
        return inline, None
    layout = packed([(ref.name, ref.dtype, ref.shape) for ref in refs])
    data = bytearray()
    for ref in refs:
        data += bytes(layout[ref.name].offset - len(data)) + checkpoint.read(ref)
    return layout, bytes(data)


def quantized_weights(
    spec: ModelSpec, checkpoint: Checkpoint, quantization: Quantization
) -> tuple[dict[str, Weight], bytes | None]:
    """The checkpoint quantized (quantize.py's integers, deterministic) into the graphs, or into
    DATA_FILE (returned) past 2 GB: its integers exist nowhere else, so they are never bound by
    reference. Raises CheckpointError naming a weight that holds NaN or infinity."""
    tensors = checkpoint.tensors
    float_names = set(tensors) - set(quantized_shapes(spec))
    entries = laid_out(spec, [(r.name, r.dtype, r.shape) for r in tensors.values()], quantization)
    data: dict[str, bytes] = {name: checkpoint.read(tensors[name]) for name in float_names}
    for name in quantized_shapes(spec):
        source = tensors[name if name in tensors else BY_KEY["embed"].hf]  # tied: the embedding
        try:
            parts = quantized_parts(as_float32(checkpoint.read(source), source), quantization)
        except ValueError as exc:  # quantize.py's NaN/infinity refusal
            reason = str(exc).removeprefix("quantize: ")
            raise CheckpointError(f"{shown(source.name)}: cannot quantize it: {reason}") from None
        data |= {f"{name}.{part}": raw for part, raw in parts.items()}
    if sum(map(len, data.values())) <= INLINE_LIMIT:
        return {n: Weight(n, dtype, shape, data=data[n]) for n, dtype, shape in entries}, None
    layout = packed(entries)
    blob = bytearray()
    for name, *_ in entries:
        blob += bytes(layout[name].offset - len(blob)) + data[name]
    return layout, bytes(blob)


def as_float32(raw: bytes, ref: TensorRef) -> np.ndarray:
    """A checkpoint tensor's little-endian bytes (F32, F16 or BF16) as a float32 array."""
    if ref.dtype == "BF16":  # the upper half of a float32's bits
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(ref.shape)
    numpy_dtype = "<f4" if ref.dtype == "F32" else "<f2"
    return np.frombuffer(raw, dtype=numpy_dtype).astype(np.float32).reshape(ref.shape)


def check_dtype(checkpoint: Checkpoint, dtype: DType | None) -> None:
    """An explicit --dtype must be what the checkpoint stores: binding never converts."""
    if dtype is None:
        return
    wrong = [n for n, r in checkpoint.tensors.items() if r.dtype != SAFETENSORS_DTYPE[dtype]]
    if wrong:
        stored = sorted({checkpoint.tensors[name].dtype for name in wrong})
        raise CheckpointError(
            f"--dtype {dtype.value} asked, but the checkpoint stores {', '.join(stored)} "
            f"(e.g. {wrong[0]}); bound graphs read the checkpoint as it is: drop --dtype"
        )


@dataclass(frozen=True)
class OnnxContext(TemplateContext):
    """What README.md and run.py print: the spec and how the graphs hold their weights."""

    spec: SpecContext
    table: TableContext  # the config.json rules run.py checks (reference mode)
    mode: Literal["unbound", "reference", "inline", "data-file"]
    files: list[str]  # files the external data points into, relative to the output folder
    dtypes: list[str]  # stored weight dtypes, e.g. ["bfloat16"]
    casts_to_float32: bool  # some weights are stored in another dtype than float32
    data_file: str
    ort_min_version: str
    ort_tested_version: str
    # reference mode: (name, file, safetensors dtype, shape, byte offset) of every bound tensor
    tensors: list[tuple[str, str, str, list[int], int]]
    quantize: str | None  # "int8", "int4" (quantized.py's DequantizeLinear layout) or None
    group_size: int  # int4's inputs per scale and zero point


def readme_context(
    spec: ModelSpec, options: BuildOptions, weights: dict[str, Weight], mode: str
) -> OnnxContext:
    parts = tuple(f".{part}" for part in PARTS)  # a quantized weight's parts: integers, scales
    dtypes = sorted({DTYPE_NAMES[w.dtype] for w in weights.values() if not w.name.endswith(parts)})
    return OnnxContext(
        spec=SpecContext.of(spec, options),
        table=TableContext.of(spec, "{}"),
        mode=mode,  # type: ignore[arg-type]
        files=sorted({w.location for w in weights.values() if w.data is None}),
        dtypes=dtypes,
        casts_to_float32=dtypes != ["float32"],
        data_file=DATA_FILE,
        ort_min_version=ORT_MIN_VERSION,
        ort_tested_version=ORT_TESTED_VERSION,
        # reference mode: what run.py checks in the weights folder before onnxruntime reads it
        tensors=[
            (w.name, w.location, w.dtype, list(w.shape), w.offset)
            for w in weights.values()
            if mode == "reference"
        ],
        quantize=options.quantize,
        group_size=options.int4_group_size,
    )


def genai_config(spec: ModelSpec) -> dict[str, Any]:
    """onnxruntime-genai's genai_config.json for model_with_past.onnx (its own decoder loop
    feeds an empty cache for the prompt): the names and sizes of its model builder's llama
    configs (onnxruntime docs, "Config reference"), the spec's token ids, greedy search."""
    eos = list(spec.eos_token_id or ())
    pad = spec.pad_token_id if spec.pad_token_id is not None else eos[0] if eos else None
    tokens = {"bos_token_id": spec.bos_token_id, "eos_token_id": eos or None, "pad_token_id": pad}
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": "model_with_past.onnx",
        "head_size": spec.head_dim,
        "hidden_size": spec.dim,
        "inputs": {
            "input_ids": "input_ids",
            "attention_mask": "attention_mask",
            "position_ids": "position_ids",
            "past_key_names": "past_key_values.%d.key",
            "past_value_names": "past_key_values.%d.value",
        },
        "outputs": {
            "logits": "logits",
            "present_key_names": "present.%d.key",
            "present_value_names": "present.%d.value",
        },
        "num_attention_heads": spec.n_heads,
        "num_hidden_layers": spec.n_layers,
        "num_key_value_heads": spec.n_kv_heads,
    }
    model = {
        "context_length": spec.max_seq_len,
        "decoder": decoder,
        "type": "llama",
        "vocab_size": spec.vocab_size,
    } | {key: value for key, value in tokens.items() if value is not None}
    search = {
        "do_sample": False,
        "max_length": spec.max_seq_len,
        "min_length": 0,
        "num_beams": 1,
        "num_return_sequences": 1,
        "past_present_share_buffer": False,  # the graphs return past + new, not a fixed buffer
        "repetition_penalty": 1.0,
        "temperature": 1.0,
        "top_k": 1,
        "top_p": 1.0,
    }
    return {"model": dict(sorted(model.items())), "search": search}


class OnnxBackend:
    name = "onnx"
    description = "ONNX opset 23 prefill + KV-cache graphs, weights by reference (onnxruntime)"
    template_dir = Path(__file__).parent / "templates"
    accepts: frozenset[str] = frozenset({"weights", "embed_weights", "quantize"})
    filters: ClassVar[dict[str, Any]] = {}

    # RoPE scaling kinds this target cannot run, with the reason (backends.base).
    refused_rope: Mapping[str, str] = MappingProxyType(
        {
            "dynamic": "dynamic NTK scaling recomputes the frequencies from each sequence's "
            "length past max_position_embeddings ({max_seq_len}), and transformers keeps the "
            "largest length seen across calls; the graphs hold one fixed set of frequencies"
        }
    )

    def plan(self, spec: ModelSpec, options: BuildOptions) -> list[Artifact]:
        refuse_rope_scaling(spec, self.refused_rope)
        quantization = quantization_of(options.quantize, options.int4_group_size)
        data: bytes | None = None
        if options.weights is None:
            if options.embed_weights:
                raise CheckpointError("--embed-weights needs --weights: there is nothing to embed")
            mode = "unbound"
            weights = declared_weights(spec, options.dtype_for(spec), quantization)
        else:
            checkpoint = open_checkpoint(spec, options.weights)
            check_dtype(checkpoint, options.dtype)
            if quantization is not None:  # quantized at bind time, so held by the graphs
                weights, data = quantized_weights(spec, checkpoint, quantization)
                mode = "data-file" if data is not None else "inline"
            elif options.embed_weights:
                weights, data = embedded_weights(checkpoint)
                mode = "data-file" if data is not None else "inline"
            else:
                mode, weights = "reference", referenced_weights(checkpoint)
        artifacts: list[Artifact] = [
            Raw(path, decoder(spec, weights, with_past, quantization).SerializeToString())
            for path, with_past in GRAPHS.items()
        ]
        if data is not None:
            artifacts.append(Raw(DATA_FILE, data))
        config = json.dumps(genai_config(spec), indent=4) + "\n"
        artifacts.append(Raw(GENAI_CONFIG, config.encode()))
        context = readme_context(spec, options, weights, mode)
        artifacts += [Rendered(path, path + ".jinja", context) for path in ("README.md", "run.py")]
        if mode == "reference":  # run.py checks the weights folder with it
            artifacts.append(CHECKED_READER)
        if quantization is not None:  # the formats' definition, beside the graphs holding them
            artifacts.append(QUANTIZER)
        return artifacts


BACKEND = OnnxBackend()
