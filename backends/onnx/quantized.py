"""Quantized linear layers of the ONNX graphs (`--quantize int8|int4`): initializers and nodes.

The integers are backends/quantize.py's, unchanged (per output row for int8, per group of
`group_size` inputs of a row for int4), stored transposed to MatMul's (in, out) = (K, N) layout
and dequantized by the standard opset-21+ `DequantizeLinear` feeding `MatMul`:

- int8: NAME.q int8 (K, N); NAME.scales float32 (N,), per axis 1 (one per output);
  dequantized = q * scale (zero point 0).
- int4: NAME.q uint4 (K, N) (two per byte, row-major, element 2k in the low nibble);
  NAME.scales float32 (K / group, N) and NAME.zero_points uint4 (K / group, N), blocked along
  axis 0 (`block_size` = group); dequantized = (q - zero_point) * scale.

Why the standard form rather than onnxruntime's own `com.microsoft.MatMulNBits`: onnxruntime
(1.31.1, CPU, default optimization level) fuses every DequantizeLinear + MatMul pair of these
graphs into MatMulNBits itself (`DQMatMulToMatMulNBits`), so the two run the same kernel, and
the standard graphs stay plain ONNX (benchmarks/bench_onnx_quant.py shows the fused graph and
the speed). The fusion gives the kernel `accuracy_level` 4 unless the session config entry
`session.qdq_matmulnbits_accuracy_level` says otherwise: activations are then rounded to int8
per block inside each product (fast); 0 keeps them float32 (exactly the dequantized weights'
result, slower).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spec import ModelSpec
from spec.weights import BY_KEY, by_hf_name, hf_shapes

from ..quantize import pack_int4, quantize_int4, quantize_int8

PARTS = ("q", "scales", "zero_points")  # initializer suffixes: NAME.q, NAME.scales, ...
PART_BITS = {"I8": 8, "U4": 4}  # the integer parts' element types (graph.ONNX_DTYPES)


@dataclass(frozen=True)
class Quantization:
    """`--quantize`: bits 8 or 4; group_size: int4's inputs per scale and zero point."""

    bits: int
    group_size: int


def quantization_of(name: str | None, group_size: int) -> Quantization | None:
    """BuildOptions.quantize ("int8", "int4", None) and the int4 group size in effect."""
    return None if name is None else Quantization(8 if name == "int8" else 4, group_size)


def quantized_shapes(spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """HF name -> (out, in) of every weight stored quantized (WeightInfo.quantized), in graph
    order: with tied embeddings the head too (`lm_head.weight`, quantized from a copy of the
    embedding, which stays float for the lookup)."""
    shapes = {
        name: shape
        for name, shape in hf_shapes(spec).items()
        if (row := by_hf_name(name)) is not None and row.quantized
    }
    if spec.tie_embeddings:
        shapes[BY_KEY["lm_head"].hf] = BY_KEY["lm_head"].shape(spec)
    return shapes


def part_shapes(
    shape: tuple[int, ...], quantization: Quantization
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """suffix -> (dtype code, shape) of a quantized HF (out, in) weight's initializers."""
    n, k = shape
    if quantization.bits == 8:
        return {"q": ("I8", (k, n)), "scales": ("F32", (n,))}
    blocks = (k // quantization.group_size, n)
    return {"q": ("U4", (k, n)), "scales": ("F32", blocks), "zero_points": ("U4", blocks)}


def _uint4_bytes(values: np.ndarray) -> np.ndarray:
    """uint8 values in [0, 15] as ONNX stores uint4: row-major, two per byte, element 2k in the
    low nibble (quantize.pack_int4 on the flattened array), an odd count padded with 0."""
    flat = values.reshape(1, -1)
    if flat.shape[1] % 2:
        flat = np.pad(flat, ((0, 0), (0, 1)))
    return pack_int4(flat)


def quantized_parts(weight: np.ndarray, quantization: Quantization) -> dict[str, bytes]:
    """suffix -> the raw initializer bytes of a float HF (out, in) weight (quantize.py's
    integers, transposed to (in, out)). Raises ValueError (quantize.py's) for a NaN or infinity."""
    if quantization.bits == 8:
        q, scale = quantize_int8(weight)
        return {"q": np.ascontiguousarray(q.T).tobytes(), "scales": scale.tobytes()}
    q, scale, zero_point = quantize_int4(weight, quantization.group_size)
    return {
        "q": _uint4_bytes(np.ascontiguousarray(q.T)).tobytes(),
        "scales": np.ascontiguousarray(scale.T).tobytes(),
        "zero_points": _uint4_bytes(np.ascontiguousarray(zero_point.T)).tobytes(),
    }


def laid_out(
    spec: ModelSpec, entries: list[tuple[str, str, tuple[int, ...]]], quantization: Quantization
) -> list[tuple[str, str, tuple[int, ...]]]:
    """The (name, dtype, shape) initializers of a quantized graph given the float ones: those
    that stay float, then the parts of each quantized weight (a tied head's too)."""
    shapes = quantized_shapes(spec)
    out = [(name, dtype, shape) for name, dtype, shape in entries if name not in shapes]
    for name, shape in shapes.items():
        parts = part_shapes(shape, quantization)
        out += [(f"{name}.{part}", code, dims) for part, (code, dims) in parts.items()]
    return out


def quantized_matmul(g, x: str, name: str, output: str) -> str:
    """x (..., K) @ dequantized(name) (K, N) -> output (..., N): DequantizeLinear of the
    initializers NAME.q, NAME.scales (, NAME.zero_points) feeding MatMul (g: a GraphBuilder)."""
    if g.quantization.bits == 8:  # one scale per output: axis 1 of (K, N)
        inputs, attributes = [f"{name}.q", f"{name}.scales"], {"axis": 1}
    else:  # one scale and zero point per group of inputs of each output
        inputs = [f"{name}.{part}" for part in PARTS]
        attributes = {"axis": 0, "block_size": g.quantization.group_size}
    weight = g.op("DequantizeLinear", inputs, name + ".dequantized", **attributes)
    return g.op("MatMul", [x, weight], output)
