"""A float16 checkpoint (config.json `dtype` / `torch_dtype` float16) is built and run as float16
where the target can (torch, JAX; ONNX stores the weights as float16 and computes in float32,
as for every storage dtype), never silently as another dtype (it was bfloat16 before).

Tolerance: float16 keeps 11 significant bits (unit roundoff u = 2**-11 = 4.9e-4). Measured on
this tiny model (2 layers, 100 tokens, weights N(0, 0.1)): transformers' own float16 logits are
9.3e-4 (relative L2) from the same weights in float64, ours 9.1e-4 (torch) and 9.5e-4 (JAX),
and ours vs transformers 1.1e-3 and 1.2e-3, since both round independently. So: each float16
target within 1.5x transformers' own error against float64, and within 4e-3 (about 8u) of
transformers' float16 logits; ONNX, computing in float32, within 1e-5 of float64.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from transformers import LlamaConfig, LlamaForCausalLM

from codegen.cli import main
from codegen.verifier import oracle
from codegen.verifier.emitted import import_package
from codegen.verifier.runners.jax_runner import JaxAdapter
from codegen.verifier.runners.onnx_runner import OnnxAdapter
from codegen.verifier.runners.torch_runner import TorchAdapter
from spec import DType, load_spec

CONFIG = LlamaConfig(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(folder saved by transformers in float16, its float16 logits, the float64 logits of the
    same float16 weights, tokens)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(CONFIG)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.1)
    folder = tmp_path_factory.mktemp("fp16") / "hf"
    model.half().save_pretrained(folder)
    half = LlamaForCausalLM.from_pretrained(folder).eval()
    assert half.dtype == torch.float16  # transformers reads its own config.json as float16
    exact = LlamaForCausalLM(CONFIG).double().eval()
    exact.load_state_dict({k: v.double() for k, v in half.state_dict().items()})
    tokens = np.random.default_rng(1).integers(0, CONFIG.vocab_size, (2, 100))
    with torch.no_grad():
        ids = torch.as_tensor(tokens)
        return folder, half(ids).logits.float().numpy(), exact(ids).logits.numpy(), tokens


def build(folder, target, out):
    result = CliRunner().invoke(
        main, ["build", "--spec", str(folder), "--target", target, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out / target


@pytest.mark.parametrize("key", ["dtype", "torch_dtype"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_the_spec_keeps_the_checkpoints_dtype(checkpoint, key, dtype, tmp_path):
    """transformers 5 writes `dtype`, 4.x `torch_dtype`: either is read as it says."""
    config = json.loads((checkpoint[0] / "config.json").read_text())
    config.pop("dtype", None)
    config[key] = dtype
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_spec(tmp_path / "config.json").dtype is DType(dtype)


def test_a_dtype_no_target_builds_is_refused(checkpoint, tmp_path):
    config = json.loads((checkpoint[0] / "config.json").read_text()) | {"dtype": "float64"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(
        main, ["build", "--spec", str(tmp_path), "--target", "torch", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "float64" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("target", ["torch", "jax"])
def test_float16_targets_run_in_float16_as_close_as_transformers(checkpoint, target, tmp_path):
    folder, half, exact, tokens = checkpoint
    built = build(folder, target, tmp_path / "out")
    package = import_package(built)
    if target == "torch":
        assert {p.dtype for p in package.Model().parameters()} == {torch.float16}
    else:
        leaves = package.load_checkpoint(folder)
        assert {str(x.dtype) for x in jax.tree_util.tree_leaves(leaves)} == {"float16"}
    runner = {"torch": TorchAdapter, "jax": JaxAdapter}[target]().open(built, folder, tmp_path)
    logits = runner.forward(tokens)
    own_error = oracle.relative_error(half, exact)
    assert oracle.relative_error(logits, exact) <= 1.5 * own_error
    assert oracle.relative_error(logits, half) <= 4e-3


def test_onnx_stores_float16_and_computes_in_float32(checkpoint, tmp_path):
    folder, _, exact, tokens = checkpoint
    built = build(folder, "onnx", tmp_path / "out")
    graph = onnx.load(built / "model.onnx", load_external_data=False)
    weights = [t for t in graph.graph.initializer if t.name.endswith(".weight")]
    assert weights and {t.data_type for t in weights} == {onnx.TensorProto.FLOAT16}
    logits = OnnxAdapter().open(built, folder, tmp_path / "work").forward(tokens)
    assert oracle.relative_error(logits, exact) <= 1e-5


def test_cerebras_refuses_float16_training_it_cannot_loss_scale(tmp_path):
    """train.py has no loss scaling, which float16 training needs (bfloat16 does not)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: tiny\nvocab_size: 64\ndim: 64\nn_layers: 1\nn_heads: 4\nffn_dim: 96\n"
        "dtype: float16\ntraining: {precision: float16}\n"
    )
    out = tmp_path / "out"
    args = ["build", "--spec", str(spec), "--target", "cerebras", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "loss" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()
    spec.write_text(spec.read_text().replace("precision: float16", "precision: bfloat16"))
    assert CliRunner().invoke(main, args).exit_code == 0
