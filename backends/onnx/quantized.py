"""Quantized linear layers of the ONNX graphs (`--quantize int8|int4`): initializers and nodes.

The integers are backends/quantize.py's, unchanged (per output row for int8, per group of
`group_size` inputs of a row for int4); this module only lays them out as onnxruntime's
`com.microsoft.MatMulNBits` reads them: `y = x @ dequantized(B).T` with B in the (out, in) =
(N, K) layout of Hugging Face and of quantize.py, so no transpose is stored.

- B: uint8 (N, K / block, block * bits / 8), each row's blocks one after another; int4 packs two
  values per byte, element 2k in the low nibble (`quantize.pack_int4`).
- scales: float32 (N, K / block).
- zero_points: uint8 (N, ceil(K / block * bits / 8)); int4 packs two blocks' zero points per byte,
  low nibble first, the last byte padded with 0.
- dequantized B[n, k] = (B[n, k] - zero_point[n, k // block]) * scale[n, k // block].

int8 is per row and symmetric: MatMulNBits' 8-bit form holds it exactly as uint8 `q + 128` with
zero point 128 and the row's scale repeated in every block (blocks of the largest power of two
up to 256 that divides K, else 16 with a zero-padded last block: MatMulNBits needs a power of two
of at least 16).

Why MatMulNBits rather than the standard `DequantizeLinear` + `MatMul`: measured with
onnxruntime 1.31.1 on the SmolLM2-135M shape (benchmarks/bench_onnx_quant.py); the README of a
quantized build gives the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spec import ModelSpec
from spec.weights import BY_KEY, by_hf_name, hf_shapes

from ..quantize import pack_int4, quantize_int4, quantize_int8

MSFT_DOMAIN = "com.microsoft"
MSFT_OPSET = 1
INT8_ZERO_POINT = 128  # uint8 = int8 + 128
MAX_INT8_BLOCK = 256
PARTS = ("q", "scales", "zero_points")  # initializer suffixes: NAME.q, NAME.scales, ...


@dataclass(frozen=True)
class Quantization:
    """`--quantize`: bits 8 or 4; group_size: int4's inputs per scale (int8: unused)."""

    bits: int
    group_size: int

    def block(self, in_features: int) -> int:
        return self.group_size if self.bits == 4 else int8_block(in_features)


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


def int8_block(in_features: int) -> int:
    """MatMulNBits' block for a per-row int8 weight of `in_features` inputs (any block holds it
    exactly, the scale being the row's): the largest power of two <= 256 dividing it, else 16."""
    block = MAX_INT8_BLOCK
    while block > 16 and in_features % block:
        block //= 2
    return block


def part_shapes(
    shape: tuple[int, ...], quantization: Quantization
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """suffix -> (safetensors dtype code, shape) of a quantized (out, in) weight's initializers."""
    n, k = shape
    block = quantization.block(k)
    blocks = -(-k // block)
    zero_bytes = -(-blocks // 2) if quantization.bits == 4 else blocks
    return {
        "q": ("U8", (n, blocks, block * quantization.bits // 8)),
        "scales": ("F32", (n, blocks)),
        "zero_points": ("U8", (n, zero_bytes)),
    }


def quantized_parts(weight: np.ndarray, quantization: Quantization) -> dict[str, np.ndarray]:
    """suffix -> the array MatMulNBits reads, from a float (N, K) weight (quantize.py's integers).

    Raises ValueError (quantize.py's) for a NaN or infinity.
    """
    n, k = weight.shape
    block = quantization.block(k)
    if quantization.bits == 4:
        q, scale, zero_point = quantize_int4(weight, block)
        if zero_point.shape[1] % 2:  # pack_int4 pairs columns: pad with a zero point of 0
            zero_point = np.pad(zero_point, ((0, 0), (0, 1)))
        return {
            "q": pack_int4(q).reshape(n, k // block, block // 2),
            "scales": scale,
            "zero_points": pack_int4(zero_point),
        }
    q, row_scale = quantize_int8(weight)
    blocks = -(-k // block)
    shifted = np.full((n, blocks * block), INT8_ZERO_POINT, dtype=np.uint8)  # padding: 0
    shifted[:, :k] = (q.astype(np.int16) + INT8_ZERO_POINT).astype(np.uint8)
    return {
        "q": shifted.reshape(n, blocks, block),
        "scales": np.repeat(row_scale[:, None], blocks, axis=1),
        "zero_points": np.full((n, blocks), INT8_ZERO_POINT, dtype=np.uint8),
    }


def quantized_matmul(g, x: str, name: str, output: str) -> str:
    """x (..., K) @ dequantized(name).T -> output (..., N), one MatMulNBits node reading the
    initializers NAME.q, NAME.scales, NAME.zero_points (g: a graph.GraphBuilder)."""
    n, k = g.quantized[name]
    bits, block = g.quantization.bits, g.quantization.block(k)
    inputs = [x, *(f"{name}.{part}" for part in PARTS)]
    # accuracy_level unset (0): activations stay float32 (4 would round them to int8 per block)
    return g.op(
        "MatMulNBits", inputs, output, domain=MSFT_DOMAIN, K=k, N=n, bits=bits, block_size=block
    )


def quantization_of(bits_name: str | None, group_size: int) -> Quantization | None:
    """BuildOptions.quantize ("int8", "int4", None) and the int4 group size in effect."""
    return None if bits_name is None else Quantization(8 if bits_name == "int8" else 4, group_size)


def laid_out(
    spec: ModelSpec, entries: list[tuple[str, str, tuple[int, ...]]], quantization: Quantization
) -> list[tuple[str, str, tuple[int, ...]]]:
    """The (name, dtype, shape) initializers of a quantized graph given the float ones: those
    that stay float, then the parts of each quantized weight (a tied head's too)."""
    shapes = quantized_shapes(spec)
    out: list[tuple[str, str, tuple[int, ...]]] = []
    for name, dtype, shape in entries:
        if name not in shapes:
            out.append((name, dtype, shape))
    for name, shape in shapes.items():
        parts = part_shapes(shape, quantization)
        out += [(f"{name}.{part}", code, dims) for part, (code, dims) in parts.items()]
    return out
