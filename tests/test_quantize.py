"""The weight-only formats of backends/quantize.py (emitted as every quantized model's quantize.py).

Right values from outside our code: the bound is the formats' definition (half a step), the
dequantization is ONNX's own reference `DequantizeLinear` (blocked uint4, per-axis int8) and the
packing is onnx's `pack_float32_to_4bit`.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from backends.base import BuildOptions, OptionError, check_quantize
from backends.quantize import (
    GROUP_SIZES,
    INT4_MAX,
    INT8_MAX,
    dequantize_int4,
    dequantize_int8,
    max_error,
    pack_int4,
    quantize_int4,
    quantize_int8,
    unpack_int4,
)
from codegen.cli import main
from spec import ModelSpec

FLOAT32_MAX = float(np.finfo(np.float32).max)
# Any finite float32: zeros, subnormals, tiny and huge magnitudes, mixed within one row.
ELEMENTS = st.one_of(
    st.floats(-FLOAT32_MAX, FLOAT32_MAX, width=32, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 1e-38, 1e-30, -3e38, 3.4e38]),
    st.floats(-1, 1, width=32),
)


def matrices(columns: st.SearchStrategy[int]) -> st.SearchStrategy[np.ndarray]:
    shape = st.tuples(st.integers(1, 4), columns)
    return hnp.arrays(np.float32, shape, elements=ELEMENTS)


def with_zero_rows(matrix: np.ndarray, data: st.DataObject) -> np.ndarray:
    """The matrix with some rows set to exactly zero (a pruned or padded row)."""
    zeroed = matrix.copy()
    zeroed[data.draw(st.lists(st.integers(0, len(matrix) - 1), max_size=2))] = 0.0
    return zeroed


@given(data=st.data(), weight=matrices(st.integers(1, 70)))
def test_int8_reconstructs_every_element_within_half_a_step(data, weight):
    weight = with_zero_rows(weight, data)
    q, scale = quantize_int8(weight)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (len(weight),)
    assert np.abs(q.astype(int)).max() <= INT8_MAX and (scale > 0).all()
    error = np.abs(weight.astype(np.float64) - q.astype(np.float64) * scale[:, None])
    assert (error <= max_error(weight, scale)).all()
    assert (q[(weight == 0).all(axis=1)] == 0).all()
    assert np.isfinite(dequantize_int8(q, scale)).all()


@given(data=st.data(), groups=st.integers(1, 3), group_size=st.sampled_from(GROUP_SIZES[:2]))
def test_int4_reconstructs_every_element_within_half_a_step(data, groups, group_size):
    weight = with_zero_rows(data.draw(matrices(st.just(groups * group_size))), data)
    q, scale, zero_point = quantize_int4(weight, group_size)
    assert q.dtype == zero_point.dtype == np.uint8 and scale.dtype == np.float32
    assert q.max() <= INT4_MAX and zero_point.max() <= INT4_MAX and (scale > 0).all()
    assert scale.shape == zero_point.shape == (len(weight), groups)
    reconstructed = (
        q.reshape(len(weight), groups, group_size).astype(np.float64)
        - zero_point[..., None].astype(np.float64)
    ) * scale[..., None]
    error = np.abs(weight.astype(np.float64) - reconstructed.reshape(weight.shape))
    assert (error <= max_error(weight, scale, group_size)).all()
    # zero is always representable: a zero weight comes back exactly zero
    dequantized = dequantize_int4(q, scale, zero_point, group_size)
    assert (dequantized[weight == 0] == 0).all() and np.isfinite(dequantized).all()


def test_nan_infinity_and_non_matrices_are_refused_in_one_line():
    for bad, message in [
        (np.array([[1.0, np.nan]]), "NaN or infinity"),
        (np.array([[np.inf] * 32]), "NaN or infinity"),
        (np.zeros(4), "(out, in) matrix"),
        (np.zeros((2, 2), dtype=np.int32), "float matrix"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            quantize_int8(bad)
    with pytest.raises(ValueError, match="group size 32 does not divide 48"):
        quantize_int4(np.zeros((2, 48), np.float32), 32)
    with pytest.raises(ValueError, match="must be one of"):
        quantize_int4(np.zeros((2, 48), np.float32), 48)


def onnx_dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, **attrs):
    """ONNX's reference DequantizeLinear (opset 21+: blocked and int4 inputs)."""
    node = helper.make_node(
        "DequantizeLinear", ["q", "scale", *(["zero_point"] if zero_point is not None else [])],
        ["y"], **attrs,
    )  # fmt: skip
    inputs = {"q": q, "scale": scale} | (
        {"zero_point": zero_point} if zero_point is not None else {}
    )
    return ReferenceEvaluator(node).run(None, inputs)[0]


@given(matrices(st.just(64)))
def test_int4_dequantizes_as_onnx_blocked_uint4(weight):
    q, scale, zero_point = quantize_int4(weight, 32)
    q4 = q.astype(_uint4())
    expected = onnx_dequantize(q4, scale, zero_point.astype(_uint4()), axis=1, block_size=32)
    np.testing.assert_array_equal(dequantize_int4(q, scale, zero_point, 32), expected)


@given(matrices(st.integers(1, 9)))
def test_int8_dequantizes_as_onnx_per_axis_int8(weight):
    q, scale = quantize_int8(weight)
    expected = onnx_dequantize(q, scale, np.zeros_like(scale, dtype=np.int8), axis=0)
    np.testing.assert_array_equal(dequantize_int8(q, scale), expected)


def _uint4() -> np.dtype:
    """onnx's numpy dtype for uint4 (ml_dtypes.uint4 in onnx >= 1.17)."""
    return helper.tensor_dtype_to_np_dtype(TensorProto.UINT4)


@given(hnp.arrays(np.uint8, st.tuples(st.integers(1, 3), st.integers(1, 4).map(lambda n: 2 * n)),
                  elements=st.integers(0, 15)))  # fmt: skip
def test_int4_packs_two_per_byte_as_onnx_does(q):
    packed = pack_int4(q)
    onnx_bytes = numpy_helper.from_array(q.astype(_uint4())).raw_data  # row-major, two per byte
    expected = np.frombuffer(onnx_bytes, dtype=np.uint8).reshape(len(q), -1)
    np.testing.assert_array_equal(packed, expected)
    np.testing.assert_array_equal(unpack_int4(packed), q)


SMALL = {"name": "q", "vocab_size": 64, "dim": 64, "n_layers": 1, "n_heads": 4, "ffn_dim": 96}


def test_group_size_must_divide_every_quantized_input():
    check_quantize(ModelSpec(**SMALL), BuildOptions(quantize="int4", group_size=32))
    with pytest.raises(OptionError, match="group size 64 does not divide 96 inputs of .*down_proj"):
        check_quantize(ModelSpec(**SMALL), BuildOptions(quantize="int4", group_size=64))
    with pytest.raises(OptionError, match="--group-size applies to --quantize int4 only"):
        check_quantize(ModelSpec(**SMALL), BuildOptions(quantize="int8", group_size=32))


def test_cerebras_refuses_quantize_in_one_line(tmp_path):
    result = CliRunner().invoke(
        main, ["build", "--size", "7b", "--target", "cerebras", "--quantize", "int8",
               "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert (
        result.output.strip().splitlines()[-1]
        == "Error: target 'cerebras' does not take --quantize"
    )
    assert not (tmp_path / "out").exists()
