"""Weight-only quantization of a linear layer's weight: the one definition of the formats.

Emitted verbatim as `quantize.py` beside every quantized model (torch, JAX, ONNX), so the compiler
and the standalone code quantize a float checkpoint to exactly the same integers. numpy only.

Weights are in Hugging Face's (out, in) layout (`nn.Linear.weight`, `q_proj.weight`: (heads x
head_dim, dim)). Two formats, both weight-only (activations stay float):

- **int8**: symmetric, one scale per output row: `weight ~= q * scale[:, None]`, q in [-127, 127]
  (as gpt-fast's int8 weight-only and torch's `_weight_int8pack_mm`, whose scale is per row).
- **int4**: asymmetric, one scale and one integer zero point per `group_size` consecutive inputs of
  a row: `weight ~= (q - zero_point) * scale`, q and zero_point in [0, 15] (ONNX's blocked uint4
  `DequantizeLinear` and onnxruntime's `MatMulNBits`; llama.cpp's q4_1 is the same idea with a
  float offset). The range always includes 0, so a zero weight stays exactly 0.

Rounding is round-half-to-even (`numpy.rint`, as `torch.round`). The reconstruction error of
every element is at most half its scale (one scale within half a step of float32's largest value,
so that dequantizing never overflows): `max_error` gives the bound per element.
"""

from __future__ import annotations

import numpy as np

INT8_MAX = 127  # symmetric: -128 is never used, so -q is always representable
INT4_MAX = 15
GROUP_SIZES = (32, 64, 128, 256)  # what torch's int4pack kernels and MatMulNBits both accept
DEFAULT_GROUP_SIZE = 32  # llama.cpp's q4_0/q4_1 block and onnxruntime-genai's default block
# The smallest scale stored: a smaller one would underflow (float32 subnormals lose precision).
_SMALLEST_SCALE = float(np.finfo(np.float32).tiny)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _checked(weight: np.ndarray) -> np.ndarray:
    """The weight as float64, after refusing what no scale can represent."""
    array = np.asarray(weight)
    if array.ndim != 2:
        raise ValueError(f"quantize: expected an (out, in) matrix, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"quantize: expected a float matrix, got {array.dtype}")
    if not np.isfinite(array).all():
        raise ValueError("quantize: the weight holds NaN or infinity")
    return array.astype(np.float64)


def _stored_scale(scale: np.ndarray) -> np.ndarray:
    """float64 scales as the float32 values every consumer reads (0: the smallest normal)."""
    return np.maximum(scale, _SMALLEST_SCALE).astype(np.float32)


def _finite_steps(step: np.ndarray) -> np.ndarray:
    """How many steps from zero stay within float32's range: dequantizing in float32 must never
    overflow, even where rounding a weight near float32's largest value would go up."""
    return np.floor(_FLOAT32_MAX / step)


def quantize_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8.

    Args: weight (out, in), any float dtype, finite.
    Returns: q (out, in) int8 in [-127, 127]; scale (out,) float32 > 0.
    Raises: ValueError for a non-matrix, a non-float dtype or a NaN/infinity.
    """
    w = _checked(weight)
    scale = _stored_scale(np.abs(w).max(axis=1) / INT8_MAX)
    step = scale.astype(np.float64)[:, None]
    limit = np.minimum(_finite_steps(step), INT8_MAX)
    q = np.clip(np.rint(w / step), -limit, limit)
    return q.astype(np.int8), scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(out, in) float32 from `quantize_int8`'s output."""
    return q.astype(np.float32) * scale[:, None]


def check_group_size(in_features: int, group_size: int) -> None:
    """Raises ValueError unless `group_size` is supported and divides `in_features`."""
    if group_size not in GROUP_SIZES:
        raise ValueError(f"int4 group size must be one of {GROUP_SIZES}, got {group_size}")
    if in_features % group_size:
        raise ValueError(f"int4 group size {group_size} does not divide {in_features} inputs")


def quantize_int4(
    weight: np.ndarray, group_size: int = DEFAULT_GROUP_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric int4 per group of `group_size` inputs of each row.

    Args: weight (out, in), any float dtype, finite; group_size in GROUP_SIZES, dividing `in`.
    Returns: q (out, in) uint8 in [0, 15], one value per byte (`pack_int4` packs two);
        scale (out, in // group_size) float32 > 0; zero_point (out, in // group_size) uint8 in [0, 15].
    Raises: ValueError as `quantize_int8`, or for a group size that is not supported.
    """
    w = _checked(weight)
    out_features, in_features = w.shape
    check_group_size(in_features, group_size)
    groups = w.reshape(out_features, in_features // group_size, group_size)
    low = np.minimum(groups.min(axis=2), 0.0)
    high = np.maximum(groups.max(axis=2), 0.0)
    scale = _stored_scale(high / INT4_MAX - low / INT4_MAX)  # no overflow in float64
    step = scale.astype(np.float64)
    zero_point = np.clip(np.rint(-low / step), 0, INT4_MAX)
    reach = _finite_steps(step)
    lowest = np.maximum(zero_point - reach, 0)[..., None]
    highest = np.minimum(zero_point + reach, INT4_MAX)[..., None]
    q = np.clip(np.rint(groups / step[..., None]) + zero_point[..., None], lowest, highest)
    return (
        q.reshape(out_features, in_features).astype(np.uint8),
        scale,
        zero_point.astype(np.uint8),
    )


def dequantize_int4(
    q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, group_size: int
) -> np.ndarray:
    """(out, in) float32 from `quantize_int4`'s output."""
    out_features, in_features = q.shape
    groups = q.reshape(out_features, in_features // group_size, group_size).astype(np.float32)
    shifted = groups - zero_point.astype(np.float32)[..., None]
    return (shifted * scale[..., None]).reshape(out_features, in_features)


def max_error(weight: np.ndarray, scale: np.ndarray, group_size: int = 1) -> np.ndarray:
    """The bound on |weight - dequantized| per element (out, in): half a step, or a whole step
    for a weight within half a step of float32's largest magnitude (rounding it away from zero
    would overflow), each times 1 + 1e-6 for float32 rounding."""
    step = np.repeat(scale.astype(np.float64).reshape(scale.shape[0], -1), group_size, axis=1)
    at_the_edge = np.abs(weight.astype(np.float64)) > _FLOAT32_MAX - step / 2
    return np.where(at_the_edge, step, step / 2) * (1 + 1e-6)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """(out, in) uint8 values in [0, 15] -> (out, in // 2) uint8, element 2k in the low nibble
    (ONNX's int4 packing and MatMulNBits' layout)."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """The inverse of `pack_int4`: (out, in // 2) -> (out, in) uint8 values in [0, 15]."""
    q = np.empty((packed.shape[0], packed.shape[1] * 2), dtype=np.uint8)
    q[:, 0::2] = packed & 0x0F
    q[:, 1::2] = packed >> 4
    return q
