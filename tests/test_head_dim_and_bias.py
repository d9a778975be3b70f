"""Issue 13, item 5 and the bias flags: an explicit head_dim != hidden_size / heads (width-pruned
models, NVIDIA Minitron-style), and transformers' LlamaConfig `attention_bias` / `mlp_bias`.

The right values come from transformers: `LlamaForCausalLM` built from the same config.json
gives the state-dict shapes, the parameter count and the logits every target is held to.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from pydantic import ValidationError

from backends import BuildOptions
from codegen.build import render_target
from codegen.cli import main
from codegen.verifier import oracle
from codegen.verifier.checkpoints import random_weights
from codegen.verifier.runners import ADAPTERS
from spec import ModelSpec, from_hf_config, get_preset, load_spec, to_hf_config, to_spec_yaml
from spec.weights import hf_shapes

# A width-pruned Llama 3.1 in miniature: 4 heads of 32 on a residual stream of 96 (not 128),
# grouped-query attention with 2 key/value heads (as Llama-3.1-Minitron-4B-Width: hidden 3072,
# 32 heads, head_dim 128, 8 key/value heads).
MINITRON = {
    "model_type": "llama",
    "vocab_size": 128,
    "hidden_size": 96,
    "intermediate_size": 160,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
}
BIASED = MINITRON | {"attention_bias": True, "mlp_bias": True}
# Biases on an ordinary (coupled) head size too, one flag at a time.
ATTENTION_BIAS = MINITRON | {"hidden_size": 128, "head_dim": None, "attention_bias": True}
MLP_BIAS = MINITRON | {"hidden_size": 128, "head_dim": None, "mlp_bias": True}
CONFIGS = {
    "minitron": MINITRON,
    "biased": BIASED,
    "attn-bias": ATTENTION_BIAS,
    "mlp-bias": MLP_BIAS,
}
TOKENS = np.random.default_rng(5).integers(0, 128, size=(2, 11))
NOT_CEREBRAS = ("torch", "jax", "onnx")


def transformers_model(config: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**config)).eval()


def transformers_checkpoint(config: dict, folder: Path) -> np.ndarray:
    """save_pretrained a LlamaForCausalLM of `config` holding random weights (biases non-zero);
    its float32 logits for TOKENS."""
    import torch

    model = transformers_model(config)
    spec = from_hf_config(config)
    weights = {k: torch.from_numpy(v) for k, v in random_weights(spec, 3, std=0.1).items()}
    model.load_state_dict(weights, strict=True)  # transformers checks our names and shapes
    model.save_pretrained(folder)
    with torch.no_grad():
        return model(torch.from_numpy(TOKENS)).logits.numpy()


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_weight_table_and_param_count_equal_transformers(config):
    model = transformers_model(config)
    spec = from_hf_config(config)
    assert hf_shapes(spec) == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert spec.param_count == sum(p.numel() for p in model.parameters())


def test_head_dim_reads_as_transformers_does():
    spec = from_hf_config(MINITRON)
    assert (spec.dim, spec.n_heads, spec.head_dim, spec.n_kv_heads) == (96, 4, 32, 2)
    # absent or null: hidden_size // num_attention_heads
    for config in (
        {k: v for k, v in MINITRON.items() if k != "head_dim"},
        MINITRON | {"head_dim": None},
    ):
        assert from_hf_config(config).head_dim == 24
    assert transformers_model(MINITRON | {"head_dim": None}).config.head_dim == 24


def test_a_derived_head_dim_keeps_the_fingerprint_and_a_decoupled_one_changes_it():
    base = {"name": "t", "vocab_size": 100, "dim": 64, "n_layers": 2, "n_heads": 4}
    derived = ModelSpec(**base)
    explicit = ModelSpec(**base, head_dim=16, attention_bias=False, mlp_bias=False)
    assert explicit == derived and explicit.canonical_json() == derived.canonical_json()
    assert "head_dim" not in derived.canonical_json() and "bias" not in derived.canonical_json()
    for changed in ({"head_dim": 32}, {"attention_bias": True}, {"mlp_bias": True}):
        assert ModelSpec(**base, **changed).fingerprint() != derived.fingerprint(), changed
    # The 7B preset's fingerprint, as every generated/7b header prints it (the golden record).
    assert get_preset("7b").fingerprint().startswith("a0008ad783ebd9e5")


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"head_dim": 15}, "head_dim (15) must be even"),
        ({"n_heads": 5}, "dim (64) must be divisible by n_heads (5), or head_dim be given"),
        ({"head_dim": 2**16, "n_heads": 4}, "exceeds the limit"),
    ],
)
def test_bad_head_sizes_are_refused(changes, words):
    base = {"name": "t", "vocab_size": 100, "dim": 64, "n_layers": 2, "n_heads": 4}
    with pytest.raises(ValidationError, match=words.replace("(", r"\(").replace(")", r"\)")):
        ModelSpec(**base | changes)
    assert ModelSpec(**base | {"n_heads": 5, "head_dim": 16}).head_dim == 16  # as transformers


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_spec_files_and_config_json_round_trip(config, tmp_path):
    spec = from_hf_config(config, name="m")
    assert from_hf_config(to_hf_config(spec), name="m") == spec
    (tmp_path / "m.yaml").write_text(to_spec_yaml(spec))
    assert load_spec(tmp_path / "m.yaml") == spec


@pytest.mark.parametrize("target", NOT_CEREBRAS)
@pytest.mark.parametrize("name", ["minitron", "biased"])  # one flag alone: the oracle's test
def test_every_target_matches_transformers(target, name, tmp_path):
    expected = transformers_checkpoint(CONFIGS[name], tmp_path / "hf")
    spec = load_spec(tmp_path / "hf")  # the config.json transformers wrote
    runner = ADAPTERS[target]().load(spec, "float32", tmp_path / "hf", tmp_path / "build")
    logits = runner.forward(TOKENS)
    assert oracle.relative_error(logits, expected) <= 1e-5
    # and through the KV cache, one token at a time after a prefill of 4
    assert oracle.relative_error(runner.decode(TOKENS, 4), expected) <= 1e-5


def test_the_oracle_matches_transformers(tmp_path):
    for name, config in CONFIGS.items():
        expected = transformers_checkpoint(config, tmp_path / name)
        spec = from_hf_config(config)
        reference = oracle.forward(spec, random_weights(spec, 3, std=0.1), TOKENS)
        assert oracle.relative_error(reference, expected) <= 1e-5, name


def test_cerebras_states_the_decoupled_head_size_and_matches_transformers(tmp_path):
    expected = transformers_checkpoint(MINITRON, tmp_path / "hf")
    spec = load_spec(tmp_path / "hf")
    files = render_target(spec, "cerebras", BuildOptions())
    model = yaml.safe_load(files[f"configs/params_{spec.name}.yaml"])["trainer"]["init"]["model"]
    # Model Zoo 2.4-2.10 GPT2LMHeadModel: q/k/v project to attention_inner_dim, heads of
    # attention_inner_dim // num_heads; Model Zoo <= 2.3 has no such key, so no legacy file.
    assert (model["attention_inner_dim"], model["num_heads"], model["rotary_dim"]) == (128, 4, 32)
    assert model["hidden_size"] == 96
    assert not [path for path in files if "legacy" in path]
    assert "configs/legacy/" not in files["README.md"].decode()
    runner = ADAPTERS["cerebras"]().load(spec, "float32", tmp_path / "hf", tmp_path / "build")
    assert oracle.relative_error(runner.forward(TOKENS), expected) <= 1e-5


@pytest.mark.parametrize("config", [BIASED, ATTENTION_BIAS, MLP_BIAS], ids=["both", "attn", "mlp"])
def test_cerebras_refuses_biases_in_one_line_and_others_build(config, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(
        main,
        [
            "build",
            "--spec",
            str(tmp_path / "config.json"),
            "--target",
            "cerebras",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "bias" in result.output and "cerebras" in result.output
    assert not (tmp_path / "out").exists()
    for target in NOT_CEREBRAS:
        result = CliRunner().invoke(
            main,
            [
                "build",
                "--spec",
                str(tmp_path / "config.json"),
                "--target",
                target,
                "--out",
                str(tmp_path / "out"),
            ],
        )
        assert result.exit_code == 0, result.output


def test_convert_round_trips_a_decoupled_head_size_and_refuses_biases(tmp_path):
    from safetensors.numpy import load_file

    transformers_checkpoint(MINITRON, tmp_path / "hf")
    cs, back = tmp_path / "cs.safetensors", tmp_path / "back"
    spec_file = str(tmp_path / "hf" / "config.json")
    for args in (["cerebras", str(tmp_path / "hf"), str(cs)], ["hf", str(cs), str(back)]):
        result = CliRunner().invoke(main, ["convert", "--spec", spec_file, "--to", *args])
        assert result.exit_code == 0, result.output
    theirs = load_file(tmp_path / "hf" / "model.safetensors")
    ours = load_file(back / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(np.array_equal(ours[k], theirs[k]) for k in theirs)  # bit-exact
    # q rows of head 1 are interleaved per head of 32 (not of dim / n_heads = 24)
    q = load_file(cs)["transformer_decoder.layers.0.self_attn.proj_q_dense_layer.weight"]
    hf_q = theirs["model.layers.0.self_attn.q_proj.weight"]
    assert np.array_equal(q[32:34], hf_q[[32, 48]])

    transformers_checkpoint(BIASED, tmp_path / "biased")
    result = CliRunner().invoke(
        main,
        ["convert", "--to", "cerebras", str(tmp_path / "biased"), str(tmp_path / "b.safetensors")],
    )
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "attention_bias and mlp_bias" in result.output
    assert not (tmp_path / "b.safetensors").exists()


def test_show_states_head_dim_and_biases(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(BIASED))
    result = CliRunner().invoke(main, ["show", "--spec", str(tmp_path / "config.json")])
    rows = {
        line.split("  ")[0]: line.split("  ")[-1].strip() for line in result.output.splitlines()
    }
    assert rows["head_dim"] == "32" and rows["biases"] == "attention and mlp"
    assert f"{transformers_model(BIASED).num_parameters():,}" in result.output
    plain = CliRunner().invoke(main, ["show", "--size", "tiny"]).output
    assert "biases" not in plain
