"""Weights in the canonical layout (Hugging Face names, half-layout RoPE rows), as numpy arrays:
random draws, the bfloat16 rounding a model applies when it loads them, and HF checkpoint folders.
Used by `codegen verify` and the tests alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from backends.quantize import (
    DEFAULT_GROUP_SIZE,
    dequantize_int4,
    dequantize_int8,
    quantize_int4,
    quantize_int8,
)
from spec import ModelSpec, to_hf_config
from spec.weights import Init, by_hf_name, hf_name, hf_shapes


def weight_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor of a checkpoint in our canonical layout (HF names; no lm_head when tied)."""
    return hf_shapes(spec)


def random_weights(spec: ModelSpec, seed: int, std: float = 0.1) -> dict[str, np.ndarray]:
    """float32 weights, never zeros: normal(0, std) matrices, and norm gains (initialised to
    ones) drawn around 1 so that a gain applied to the wrong rows shows."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in weight_shapes(spec).items():
        row = by_hf_name(name)
        if row is not None and row.init is Init.ones:
            weights[name] = (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        else:
            weights[name] = (std * rng.standard_normal(shape)).astype(np.float32)
    return weights


def round_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even), returned as float32."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


def weights_as_held(weights: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """The weights a model of `dtype` actually holds after loading: the oracle's fair input."""
    if dtype == "float32":
        return weights
    if dtype == "float16":  # IEEE half, round to nearest even, as numpy and torch cast
        return {
            name: value.astype(np.float16).astype(np.float32) for name, value in weights.items()
        }
    return {name: round_to_bfloat16(value) for name, value in weights.items()}


def weights_as_quantized(
    spec: ModelSpec, weights: dict[str, np.ndarray], quantize: str, group_size: int | None
) -> tuple[ModelSpec, dict[str, np.ndarray]]:
    """What a --quantize build computes with (the oracle's fair input): every quantized weight
    (WeightInfo.quantized) as dequantize(quantize(W)) of quantize.py's format, a tied head as
    the embedding's copy quantized, so the spec comes back untied (head and embedding differ)."""
    if spec.tie_embeddings:
        weights = weights | {hf_name("lm_head"): weights[hf_name("embed")]}
        spec = spec.model_copy(update={"tie_embeddings": False})
    held = {}
    for name, value in weights.items():
        info = by_hf_name(name)
        if info is None or not info.quantized:
            held[name] = value
        elif quantize == "int8":
            held[name] = dequantize_int8(*quantize_int8(value))
        else:
            size = group_size or DEFAULT_GROUP_SIZE
            held[name] = dequantize_int4(*quantize_int4(value, size), size)
    return spec, held


def save_hf_checkpoint(spec: ModelSpec, weights: dict[str, np.ndarray], folder: Path) -> Path:
    """A Hugging Face style folder: config.json + model.safetensors."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(to_hf_config(spec), indent=2))
    save_file(
        {k: np.ascontiguousarray(v) for k, v in weights.items()}, folder / "model.safetensors"
    )
    return folder
