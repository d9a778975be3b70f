"""The Cerebras target in the main environment: params YAMLs against Cerebras's own files, every
size builds, checkpoint conversion is exact, and the emitted model equals the torch target and
the float64 oracle. The cerebras-pytorch checks live in test_cerebras_cstorch.py."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from backends import BuildOptions
from backends.cerebras.mapping import rope_row_order
from codegen.build import render_target
from codegen.cli import main
from codegen.verifier import oracle
from codegen.verifier.checkpoints import random_weights, save_hf_checkpoint
from codegen.verifier.emitted import build_target, import_file
from codegen.verifier.oracle import TOLERANCE
from codegen.verifier.runners.cerebras_runner import CerebrasAdapter
from codegen.verifier.runners.torch_runner import TorchAdapter
from spec import get_preset
from tests.cerebras_modelzoo import MODELZOO_FILES

SIZES = ["7b", "13b", "33b", "65b", "llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b"]
# Keys we state although Cerebras's 7B files leave them to a default that equals LLaMA's
# (rope_theta, initializer_range), or that only GQA / scaled-RoPE models need.
EXTRA_MODEL_KEYS = {
    "rope_theta",
    "initializer_range",
    "attention_module",
    "extra_attention_params",
    "pos_scaling_type",
    "pos_scaling_factor",
    "pos_scaling_extra_args",
}


def build_yamls(size: str) -> tuple[dict, dict]:
    files = render_target(get_preset(size), "cerebras", BuildOptions())
    trainer = yaml.safe_load(files[f"configs/params_{size}.yaml"])
    legacy = yaml.safe_load(files[f"configs/legacy/params_{size}.yaml"])
    return trainer, legacy


def assert_same_keys(ours: dict, theirs: dict, where: str) -> None:
    """Every key of Cerebras's section is in ours, recursively (ours may state more)."""
    for key, value in theirs.items():
        assert key in ours, f"{where}.{key} missing"
        if isinstance(value, dict):
            assert_same_keys(ours[key], value, f"{where}.{key}")


def read_fixture(name: str) -> dict:
    return yaml.safe_load(MODELZOO_FILES[name])


def test_trainer_layout_matches_model_zoo_2_10_llama2_7b():
    theirs = read_fixture("modelzoo-2.10.0/params_llama2_7b.yaml")
    ours, _ = build_yamls("llama2-7b")
    assert ours.keys() == theirs.keys()
    assert ours["trainer"].keys() == theirs["trainer"].keys()
    assert_same_keys(ours, theirs, "")
    ours_model, their_model = ours["trainer"]["init"]["model"], their_model_of(theirs)
    assert ours_model["name"] == "llama"
    assert {k: ours_model[k] for k in their_model} == their_model  # every model value
    assert set(ours_model) - set(their_model) <= EXTRA_MODEL_KEYS
    assert not {"mixed_precision", "fp16_type"} & set(ours_model)  # rejected there since 2.4
    init, their_init = ours["trainer"]["init"], theirs["trainer"]["init"]
    assert init["optimizer"]["AdamW"]["betas"] == their_init["optimizer"]["AdamW"]["betas"]
    assert init["optimizer"]["AdamW"]["weight_decay"] == 0.1
    ours_lr = init["schedulers"][0]["SequentialLR"]["schedulers"]
    their_lr = their_init["schedulers"][0]["SequentialLR"]["schedulers"]
    # Same LLaMA-2 recipe: 2000 warm-up steps to 3e-4, cosine to 3e-5; same 4M-token batches.
    assert ours_lr[0] == their_lr[0]
    for key in ("initial_learning_rate", "end_learning_rate"):
        assert ours_lr[1]["CosineDecayLR"][key] == their_lr[1]["CosineDecayLR"][key]
    assert ours["trainer"]["fit"]["train_dataloader"]["batch_size"] == 1024
    assert init["precision"]["max_gradient_norm"] == their_init["precision"]["max_gradient_norm"]
    # Cerebras floors 2T / (1024 x 4096) = 476837.16; we round up so every token is seen.
    assert init["loop"]["max_steps"] == 476838


def their_model_of(trainer: dict) -> dict:
    return trainer["trainer"]["init"]["model"]


def test_legacy_layout_matches_model_zoo_2_3_llama_7b():
    theirs = read_fixture("modelzoo-2.3.1/params_llama_7b.yaml")
    _, ours = build_yamls("7b")
    assert ours.keys() == theirs.keys()
    assert_same_keys(ours, theirs, "")
    # Cerebras trains in cbfloat16 (their hardware's format); the spec says bfloat16.
    precision = {"fp16_type"}
    their_model = {k: v for k, v in theirs["model"].items() if k not in precision}
    assert {k: ours["model"][k] for k in their_model} == their_model
    assert ours["model"]["fp16_type"] == "bfloat16"
    assert set(ours["model"]) - set(theirs["model"]) <= EXTRA_MODEL_KEYS
    for key in ("optimizer_type", "betas", "correct_bias", "weight_decay", "max_gradient_norm"):
        assert ours["optimizer"][key] == theirs["optimizer"][key]
    # Cerebras rescaled the LR by sqrt(99 / 2048) for its batch of 99; we keep the paper's.
    warmup, cosine = ours["optimizer"]["learning_rate"]
    assert (warmup["end_learning_rate"], warmup["total_iters"]) == (3e-4, 2000)
    assert cosine["end_learning_rate"] == 3e-5
    assert ours["runconfig"]["max_steps"] == 238419  # 1e12 / (2048 * 2048) = 238418.58


@pytest.mark.parametrize("size", SIZES)
def test_every_size_builds_with_the_paper_recipe(size):
    spec = get_preset(size)
    files = render_target(spec, "cerebras", BuildOptions())
    assert set(files) == {
        f"configs/params_{size}.yaml",
        f"configs/legacy/params_{size}.yaml",
        "model.py",
        "train.py",
        "convert.py",
        "checkpoint_files.py",
        "README.md",
        "manifest.json",
    }
    for path in ("model.py", "train.py", "convert.py"):
        ast.parse(files[path])
    trainer = yaml.safe_load(files[f"configs/params_{size}.yaml"])
    legacy = yaml.safe_load(files[f"configs/legacy/params_{size}.yaml"])
    init = trainer["trainer"]["init"]
    t = spec.training
    for model in (init["model"], legacy["model"]):
        assert model["rotary_dim"] == spec.head_dim  # never the Model Zoo's 25% default
        assert model["hidden_size"] == spec.dim and model["filter_size"] == spec.ffn_dim
        assert model["num_heads"] == spec.n_heads and model["num_hidden_layers"] == spec.n_layers
        assert model["layer_norm_epsilon"] == spec.norm_eps  # a float, not the string "1e-05"
        assert model["rope_theta"] == spec.rope_theta
        assert model["share_embedding_weights"] is spec.tie_embeddings
        assert (model["norm_type"], model["nonlinearity"]) == ("rmsnorm", "swiglu")
        assert model["loss_scaling"] == "num_tokens"
        if spec.n_kv_heads != spec.n_heads:
            assert model["attention_module"] == "multiquery_attention"
            assert model["extra_attention_params"] == {"num_kv_groups": spec.n_kv_heads}
        else:
            assert "attention_module" not in model
    steps = -(-t.total_tokens // (t.batch_size * t.seq_len))
    peak = 1.5e-4 if spec.param_count > 20e9 else 3e-4
    warmup, cosine = (
        next(iter(s.values())) for s in init["schedulers"][0]["SequentialLR"]["schedulers"]
    )
    assert init["loop"]["max_steps"] == legacy["runconfig"]["max_steps"] == steps
    assert (warmup["total_iters"], warmup["end_learning_rate"]) == (2000, peak)
    assert cosine["total_iters"] == steps - 2000
    assert cosine["end_learning_rate"] == pytest.approx(peak / 10, rel=1e-12)
    assert trainer["trainer"]["fit"]["train_dataloader"]["batch_size"] * t.seq_len == 4 * 2**20
    assert init["optimizer"]["AdamW"]["betas"] == [0.9, 0.95]
    assert legacy["optimizer"]["learning_rate"][0]["total_iters"] == 2000


def test_emitted_python_passes_ruff(tmp_path):
    folder = build_target(get_preset("tiny-llama3"), "cerebras", tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F,E9", str(folder)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("size", ["tiny", "tiny-gqa"])
def test_convert_round_trip_is_exact_and_interleaves_rows(size, tmp_path):
    spec = get_preset(size)
    folder = build_target(spec, "cerebras", tmp_path)
    convert = import_file(folder / "convert.py")
    hf = {k: torch.from_numpy(v) for k, v in random_weights(spec, seed=1).items()}
    cs = convert.hf_to_cs(hf)
    model = import_file(folder / "model.py").Model()
    assert set(cs) == set(model.state_dict())  # one to one with the Model Zoo names
    back = convert.cs_to_hf(cs)
    assert back.keys() == hf.keys()
    assert all(torch.equal(back[k], hf[k]) for k in hf)
    # Head h's interleaved rows (2i, 2i+1) are HF rows (i, i + head_dim/2).
    q = cs["transformer_decoder.layers.0.self_attn.proj_q_dense_layer.weight"]
    hf_q, hd = hf["model.layers.0.self_attn.q_proj.weight"], spec.head_dim
    for h in range(spec.n_heads):
        for i in range(hd // 2):
            assert torch.equal(q[h * hd + 2 * i], hf_q[h * hd + i])
            assert torch.equal(q[h * hd + 2 * i + 1], hf_q[h * hd + i + hd // 2])
    # Through files, both directions.
    save_cs = tmp_path / "cs.pt"
    convert.save_cs(cs, save_cs)
    convert.save_hf(convert.cs_to_hf(convert.load_cs(save_cs)), tmp_path / "hf")
    reloaded = convert.load_hf(tmp_path / "hf")
    assert all(torch.equal(reloaded[k], hf[k]) for k in hf)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_key_value_heads"] == (
        spec.n_kv_heads
    )


@pytest.mark.parametrize("size", ["tiny", "tiny-gqa"])
def test_codegen_convert_cli_equals_emitted_converter(size, tmp_path):
    """`python -m codegen convert` (bytes, any dtype) gives the emitted convert.py's tensors."""
    spec = get_preset(size)
    convert = import_file(build_target(spec, "cerebras", tmp_path) / "convert.py")
    weights = random_weights(spec, seed=2)
    hf = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in weights.items()}
    save_hf_checkpoint(spec, weights, tmp_path / "hf32")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text((tmp_path / "hf32" / "config.json").read_text())
    save_file(hf, tmp_path / "hf" / "model.safetensors")
    runner = CliRunner()
    cs_file = tmp_path / "cs.safetensors"
    result = runner.invoke(
        main, ["convert", "--to", "cerebras", str(tmp_path / "hf"), str(cs_file)]
    )
    assert result.exit_code == 0, result.output
    cs = load_file(cs_file)
    expected = convert.hf_to_cs(hf)
    assert cs.keys() == expected.keys()
    assert all(torch.equal(cs[k], expected[k]) for k in cs)
    args = ["convert", "--to", "hf", "--size", size, str(cs_file), str(tmp_path / "back")]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert back.keys() == hf.keys()
    assert all(torch.equal(back[k], hf[k]) for k in hf)  # exact, in bfloat16
    # A checkpoint of another model is refused with the offending names, exit code 2.
    args = ["convert", "--to", "hf", "--size", "7b", str(cs_file), str(tmp_path / "x")]
    result = runner.invoke(main, args)
    assert result.exit_code == 2 and "missing" in result.output


def test_rope_row_orders_are_inverse():
    forward, backward = rope_row_order(3, 8, True), rope_row_order(3, 8, False)
    assert [forward[i] for i in backward] == list(range(24))
    assert forward[:8] == [0, 4, 1, 5, 2, 6, 3, 7]


@pytest.mark.parametrize("size", ["tiny-gqa", "tiny-llama3"])
def test_cerebras_model_equals_torch_target_and_oracle(size, tmp_path):
    """Same HF checkpoint: emitted torch model vs converted Cerebras model vs float64 oracle,
    at positions up to the whole context (RoPE layouts only differ away from position 0)."""
    spec = get_preset(size)
    weights = random_weights(spec, seed=3, std=0.1)
    checkpoint = save_hf_checkpoint(spec, weights, tmp_path / "hf")
    tokens = np.random.default_rng(0).integers(0, spec.vocab_size, (2, spec.max_seq_len))
    cerebras = CerebrasAdapter().load(spec, "float32", checkpoint, tmp_path / "c").forward(tokens)
    reference = TorchAdapter().load(spec, "float32", checkpoint, tmp_path / "t").forward(tokens)
    assert oracle.relative_error(cerebras, reference) <= TOLERANCE["float32"]
    expected = oracle.forward(spec, weights, tokens)
    assert oracle.relative_error(cerebras, expected) <= TOLERANCE["float32"]


def test_skipping_the_row_permutation_is_caught(tmp_path):
    """The check above can fail: HF q/k rows loaded unpermuted give other logits."""
    spec = get_preset("tiny")
    weights = random_weights(spec, seed=4, std=0.1)
    folder = build_target(spec, "cerebras", tmp_path)
    convert, model_py = import_file(folder / "convert.py"), import_file(folder / "model.py")
    hf = {k: torch.from_numpy(v) for k, v in weights.items()}
    wrong = dict(convert.hf_to_cs(hf))
    for hf_name, cs_name in convert.hf_to_cs_names().items():
        wrong[cs_name] = hf[hf_name]  # renamed only
    model = model_py.Model().eval()
    model.load_state_dict(wrong)
    tokens = np.random.default_rng(1).integers(0, spec.vocab_size, (1, 64))
    with torch.no_grad():
        logits = model(torch.as_tensor(tokens)).numpy()
    assert oracle.relative_error(logits, oracle.forward(spec, weights, tokens)) > 1e-2
