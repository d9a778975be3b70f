"""Numerics held at the layer level, where an end-to-end tolerance would hide a lost bit: the
bfloat16 RMSNorm against transformers' own, element for element, and every target's RoPE tables
against float64 at each preset's full context. Tables and one layer only: no model runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backends import BuildOptions
from codegen.verifier import oracle
from codegen.verifier.emitted import build_target, import_package
from spec import PRESETS, DType, get_preset

# Half a float32 ulp at 1.0: a table computed in float64 and stored in float32 is this close to
# the float64 value; angles computed in float32 are off by up to ~4e-4 at 8192 positions.
FLOAT32_ROUNDING = 2.0**-24


def float64_tables(spec) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (max_seq_len, head_dim // 2) of the float64 oracle's angles."""
    angles = np.outer(np.arange(spec.max_seq_len, dtype=np.float64), oracle.inv_frequencies(spec))
    return np.cos(angles), np.sin(angles)


@pytest.fixture(scope="module")
def torch_bf16_package(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bf16")
    return import_package(
        build_target(get_preset("tiny"), "torch", folder, BuildOptions(DType.bfloat16))
    )


def test_bfloat16_rms_norm_equals_transformers_element_for_element(torch_bf16_package):
    """The emitted bf16 RMSNorm (normalise in float32, round once to bf16, multiply by the bf16
    weight) gives transformers' LlamaRMSNorm's bf16 values exactly, on rows whose scales span
    four decades; normalising in bf16 instead changes most of them."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    dim, eps = 512, 1e-5
    rng = torch.Generator().manual_seed(0)
    scales = 10 ** (4 * torch.rand(64, 1, generator=rng) - 2)
    x = (torch.randn(64, dim, generator=rng) * scales).to(torch.bfloat16)
    weight = (1 + 0.5 * torch.randn(dim, generator=rng)).to(torch.bfloat16)
    ours = torch_bf16_package.model.RMSNorm(dim, eps, torch.bfloat16)
    theirs = LlamaRMSNorm(dim, eps).to(torch.bfloat16)
    with torch.no_grad():
        ours.weight.copy_(weight)
        theirs.weight.copy_(weight)
        assert torch.equal(ours(x), theirs(x))


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """name -> (torch package, JAX model module) for every preset."""
    root = tmp_path_factory.mktemp("rope")
    built = {}
    for name, spec in PRESETS.items():
        built[name] = (
            import_package(build_target(spec, "torch", root / name)),
            import_package(build_target(spec, "jax", root / name)).model,
        )
    return built


@pytest.mark.parametrize("name", list(PRESETS))
def test_torch_and_jax_rope_tables_equal_float64_at_the_full_context(packages, name):
    spec = PRESETS[name]
    torch_package, jax_model = packages[name]
    expected = float64_tables(spec)
    ours_torch = torch_package.model.rope_tables(torch_package.ModelArgs())
    ours_jax = jax_model.rope_tables(jax_model.CONFIG)
    for ours in (ours_torch, ours_jax):
        for table, reference in zip(ours, expected):
            table = np.asarray(table)
            assert table.shape == (spec.max_seq_len, spec.head_dim // 2)
            np.testing.assert_allclose(table, reference, rtol=0, atol=FLOAT32_ROUNDING)


@pytest.mark.parametrize("name", list(PRESETS))
def test_onnx_rope_tables_equal_float64_at_the_full_context(name):
    """The ONNX graphs' table nodes (backends/onnx/graph.rope_tables), run by onnxruntime on
    position_ids 0 .. max_seq_len - 1."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from backends.onnx.graph import IR_VERSION, OPSET, GraphBuilder, rope_tables

    spec = PRESETS[name]
    g = GraphBuilder()
    outputs = rope_tables(g, spec)
    graph = helper.make_graph(
        g.nodes, "rope", [helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, None])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=g.initializers,
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    positions = np.arange(spec.max_seq_len, dtype=np.int64)[None]
    tables = session.run(None, {"position_ids": positions})
    for table, reference in zip(tables, float64_tables(spec)):
        np.testing.assert_allclose(table[0], reference, rtol=0, atol=FLOAT32_ROUNDING)
