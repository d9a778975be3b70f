"""Every rope_type transformers has for Llama: yarn and longrope built from a config.json that
transformers wrote run to transformers' logits in torch, JAX and ONNX (positions past the
original context, where the scaling matters); what a target cannot run (dynamic NTK everywhere,
longrope on Cerebras) is refused in one line naming that target's limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from transformers import LlamaConfig, LlamaForCausalLM

from codegen.cli import main
from codegen.verifier import oracle
from codegen.verifier.runners.jax_runner import JaxAdapter
from codegen.verifier.runners.onnx_runner import OnnxAdapter
from codegen.verifier.runners.torch_runner import TorchAdapter
from spec import load_spec

# A tiny Llama: head_dim 16 (8 frequencies), GQA 4:2, a context of 128 trained on 32.
BASE = {
    "vocab_size": 300,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
}
ORIGINAL = 32
ROPE = {
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL},
    # every optional key: mscale / mscale_all_dim give the attention factor, no truncation
    "yarn-mscale": {
        "rope_type": "yarn",
        "factor": 8.0,
        "original_max_position_embeddings": ORIGINAL,
        "beta_fast": 16.0,
        "beta_slow": 2.0,
        "mscale": 1.0,
        "mscale_all_dim": 0.5,
        "truncate": False,
    },
    # no factor: transformers takes max_position_embeddings / original (4) for the attention factor
    "longrope": {
        "rope_type": "longrope",
        "original_max_position_embeddings": ORIGINAL,
        "short_factor": [1.0, 1.02, 1.05, 1.1, 1.2, 1.4, 1.7, 2.0],
        "long_factor": [1.0, 1.3, 1.9, 2.8, 4.0, 6.5, 9.0, 12.0],
    },
}
TARGETS = {"torch": TorchAdapter, "jax": JaxAdapter, "onnx": OnnxAdapter}


def transformers_model(folder, rope: dict | None) -> LlamaForCausalLM:
    """A random tiny LlamaForCausalLM with `rope` saved by transformers to `folder` (its own
    config.json), and transformers' model read back from there."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**BASE, rope_parameters=rope or None))
    with torch.no_grad():  # weights large enough for positions to change the logits
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.1)
    model.save_pretrained(folder)
    return LlamaForCausalLM.from_pretrained(folder).eval()


def transformers_decode(model: LlamaForCausalLM, tokens: np.ndarray, prefill: int) -> np.ndarray:
    """Logits of a prefill of `prefill` tokens then one token per call, with transformers'
    KV cache: LongRoPE switches factors per call, so this differs from one full forward."""
    ids = torch.as_tensor(tokens)
    with torch.no_grad():
        out = model(ids[:, :prefill], use_cache=True)
        steps, cache = [out.logits], out.past_key_values
        for t in range(prefill, ids.shape[1]):
            out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits)
            cache = out.past_key_values
    return torch.cat(steps, dim=1).numpy()


def build(folder, target: str, out):
    return CliRunner().invoke(
        main, ["build", "--spec", str(folder), "--target", target, "--out", str(out)]
    )


@pytest.fixture(scope="module", params=sorted(ROPE))
def case(request, tmp_path_factory):
    """(rope kind, checkpoint folder, transformers' model, a 100-token batch)."""
    folder = tmp_path_factory.mktemp(request.param) / "hf"
    model = transformers_model(folder, ROPE[request.param])
    tokens = np.random.default_rng(1).integers(0, BASE["vocab_size"], (2, 100))
    return request.param, folder, model, tokens


def test_the_scaling_matters_at_these_positions(case, tmp_path):
    """The same weights without the scaling give other logits past the original context: the
    comparisons below could fail."""
    name, _, model, tokens = case
    plain = transformers_model(tmp_path / "plain", None)
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        scaled, unscaled = (m(torch.as_tensor(tokens)).logits.numpy() for m in (model, plain))
    assert oracle.relative_error(unscaled, scaled) > 1e-2, name


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_forward_and_decode_match_transformers(case, target, tmp_path):
    """Full forward of 100 tokens (past the original 32), of 20 tokens (LongRoPE: the short
    factors), and a 20-token prefill decoded token by token across the original length."""
    name, folder, model, tokens = case
    built = build(folder, target, tmp_path / "out")
    assert built.exit_code == 0, built.output
    runner = TARGETS[target]().open(tmp_path / "out" / target, folder, tmp_path / "work")
    with torch.no_grad():
        for length in (100, 20):
            expected = model(torch.as_tensor(tokens[:, :length])).logits.numpy()
            actual = runner.forward(tokens[:, :length])
            assert oracle.relative_error(actual, expected) <= 1e-5, (name, length)
    decoded = runner.decode(tokens[:, :48], 20)
    assert oracle.relative_error(decoded, transformers_decode(model, tokens[:, :48], 20)) <= 1e-5


def test_the_spec_holds_what_transformers_computes(case):
    """The attention factor and factor the reader resolves are transformers' own (its
    rotary embedding's attention_scaling)."""
    name, folder, model, _ = case
    spec = load_spec(folder / "config.json")
    assert spec.rope_scaling is not None and spec.rope_scaling.type == ROPE[name]["rope_type"]
    rotary = model.model.rotary_emb
    assert spec.rope_attention_factor() == pytest.approx(rotary.attention_scaling, rel=1e-12)
    inv_freq = np.array(spec.rope_inv_freq())
    np.testing.assert_allclose(inv_freq, rotary.original_inv_freq.numpy(), rtol=1e-6)


def test_the_float64_oracle_matches_transformers(case):
    """`codegen verify` holds every target to the oracle: it must compute these kinds too."""
    name, folder, model, tokens = case
    spec = load_spec(folder / "config.json")
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    for length in (100, 20):
        with torch.no_grad():
            expected = model(torch.as_tensor(tokens[:1, :length])).logits.numpy()
        actual = oracle.forward(spec, weights, tokens[:1, :length])
        assert oracle.relative_error(actual, expected) <= 1e-5, (name, length)


def test_cerebras_yaml_says_yarn_as_the_model_zoo_reads_it(tmp_path):
    """The Model Zoo's YaRN (RotaryPositionEmbeddingHelper, 2.10) scales cos and sin by
    mscale_a * ln(factor) + mscale_b: mscale_a 0 and mscale_b the attention factor say
    transformers' factor exactly."""
    folder = tmp_path / "hf"
    model = transformers_model(folder, ROPE["yarn-mscale"])
    built = build(folder, "cerebras", tmp_path / "out")
    assert built.exit_code == 0, built.output
    (params,) = (tmp_path / "out" / "cerebras" / "configs").glob("params_*.yaml")
    config = yaml.safe_load(params.read_text())["trainer"]["init"]["model"]
    assert config["pos_scaling_type"] == "yarn" and config["pos_scaling_factor"] == 8.0
    extra = config["pos_scaling_extra_args"]
    assert extra["mscale_a"] * np.log(8.0) + extra["mscale_b"] == pytest.approx(
        model.model.rotary_emb.attention_scaling, rel=1e-12
    )
    assert (extra["beta_fast"], extra["beta_slow"], extra["truncate"]) == (16.0, 2.0, False)
    assert extra["original_max_position_embeddings"] == ORIGINAL


@pytest.mark.parametrize(
    ("rope", "target", "limit"),
    [
        ({"rope_type": "dynamic", "factor": 4.0}, "torch", "KV cache end"),
        ({"rope_type": "dynamic", "factor": 4.0}, "jax", "KV cache end"),
        ({"rope_type": "dynamic", "factor": 4.0}, "onnx", "one fixed set of frequencies"),
        ({"rope_type": "dynamic", "factor": 4.0}, "cerebras", "no dynamic NTK"),
        (ROPE["longrope"], "cerebras", "picks one factor set"),
    ],
    ids=["dynamic-torch", "dynamic-jax", "dynamic-onnx", "dynamic-cerebras", "longrope-cerebras"],
)
def test_what_a_target_cannot_run_is_refused_in_one_line(rope, target, limit, tmp_path):
    folder = tmp_path / "hf"
    transformers_model(folder, rope)
    result = build(folder, target, tmp_path / "out")
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert "\n" not in message and limit in message and rope["rope_type"] in message, message
    assert not (tmp_path / "out").exists()
