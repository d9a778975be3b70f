"""The JAX target: transformers as an external oracle, checkpoint loading (sharded, bfloat16, bad
input), init, loss, sampling, and the emitted code's imports and lint."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backends import BuildOptions
from codegen.verifier import oracle
from codegen.verifier.checkpoints import random_weights, save_hf_checkpoint
from codegen.verifier.emitted import build_target, import_package
from codegen.verifier.oracle import TOLERANCE
from spec import DType, LinearRopeScaling, ModelSpec, get_preset, to_hf_config

LINEAR_ROPE = ModelSpec(
    name="tiny-linear", vocab_size=301, dim=48, n_layers=2, n_heads=3, n_kv_heads=1, ffn_dim=80,
    rope_scaling=LinearRopeScaling(factor=4.0), max_seq_len=160, norm_eps=1e-5,
)  # fmt: skip
ORACLE_SPECS = {
    "mha": get_preset("tiny"),
    "gqa-tied": get_preset("tiny-gqa"),
    "mqa-llama3": get_preset("tiny-llama3"),
    "gqa-linear": LINEAR_ROPE,
}


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """Emitted JAX packages, built once per (spec, dtype)."""
    built = {}

    def get(spec: ModelSpec, dtype: str = "float32"):
        if (spec.name, dtype) not in built:
            out = tmp_path_factory.mktemp(f"{spec.name}-{dtype}")
            folder = build_target(spec, "jax", out, BuildOptions(dtype=DType(dtype)))
            built[spec.name, dtype] = import_package(folder)
        return built[spec.name, dtype]

    return get


def hf_model(spec: ModelSpec, seed: int):
    """transformers' LlamaForCausalLM with random weights (norm weights too), in float64."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**{**to_hf_config(spec), "initializer_range": 0.1})
    model = transformers.LlamaForCausalLM(config).double().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(0.2 * torch.randn_like(param))
    return model


@pytest.mark.parametrize("case", ORACLE_SPECS)
def test_matches_transformers(case, packages, tmp_path):
    import torch

    spec = ORACLE_SPECS[case]
    model = hf_model(spec, seed=len(case))
    model.float().save_pretrained(tmp_path / "hf")
    # Whole vocabulary, up to the full context: RoPE at long positions is where layouts differ.
    tokens = np.random.default_rng(1).integers(0, spec.vocab_size, (2, spec.max_seq_len))
    with torch.no_grad():
        reference = model.double()(torch.as_tensor(tokens)).logits.numpy()

    package = packages(spec)
    logits = np.asarray(jax.jit(package.forward)(package.load_checkpoint(tmp_path / "hf"), tokens))
    assert logits.dtype == np.float32 and logits.shape == reference.shape
    assert oracle.relative_error(logits, reference) <= TOLERANCE["float32"]


def test_sharded_and_bfloat16_checkpoints(packages, tmp_path):
    import torch

    spec = get_preset("tiny-gqa")
    model = hf_model(spec, seed=3).float()
    model.save_pretrained(tmp_path / "single")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    expected = {name: p.detach().numpy().copy() for name, p in model.named_parameters()}
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")  # in place
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1

    package = packages(spec)
    single = package.to_hf(package.load_checkpoint(tmp_path / "single"))
    sharded = package.to_hf(package.load_checkpoint(tmp_path / "sharded"))
    from_bf16 = package.to_hf(package.load_checkpoint(tmp_path / "bf16"))
    assert single.keys() == sharded.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(single[name], value, err_msg=name)
        np.testing.assert_array_equal(sharded[name], value, err_msg=name)
        bf16_value = model.get_parameter(name).detach().float().numpy()
        np.testing.assert_array_equal(from_bf16[name], bf16_value, err_msg=name)


def test_bfloat16_build_holds_bf16_params_and_returns_float32(packages, tmp_path):
    spec = get_preset("tiny-llama3")
    weights = random_weights(spec, seed=5)
    package = packages(spec, "bfloat16")
    params = package.load_checkpoint(save_hf_checkpoint(spec, weights, tmp_path / "ckpt"))
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    tokens = np.arange(40).reshape(2, 20) * 7 % spec.vocab_size
    logits = package.forward(params, tokens)
    assert logits.dtype == jnp.float32
    reference = oracle.forward(
        spec, {k: np.asarray(v, np.float32) for k, v in package.to_hf(params).items()}, tokens
    )
    assert oracle.relative_error(np.asarray(logits), reference) <= TOLERANCE["bfloat16"]


def test_checkpoint_errors_name_every_tensor(packages, tmp_path):
    spec = get_preset("tiny")
    package = packages(spec)
    weights = random_weights(spec, seed=0)
    weights.pop("model.layers.1.mlp.up_proj.weight")
    weights["model.layers.0.self_attn.k_proj.weight"] = weights[
        "model.layers.0.self_attn.k_proj.weight"
    ][:8]
    weights["model.extra.weight"] = np.ones(3, np.float32)
    with pytest.raises(package.CheckpointError) as error:
        package.load_checkpoint(save_hf_checkpoint(spec, weights, tmp_path / "bad"))
    message = str(error.value)
    assert "missing: model.layers.1.mlp.up_proj.weight" in message
    assert "unexpected: model.extra.weight" in message
    assert "model.layers.0.self_attn.k_proj.weight (8, 64) (model has (64, 64))" in message

    (tmp_path / "bad" / "config.json").write_text(
        json.dumps({**to_hf_config(spec), "hidden_size": 32})
    )
    with pytest.raises(package.CheckpointError, match="hidden_size 32 \\(model has 64\\)"):
        package.load_checkpoint(tmp_path / "bad")

    (tmp_path / "corrupt.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(package.CheckpointError, match="not a valid safetensors file"):
        package.load_checkpoint(tmp_path / "corrupt.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(package.CheckpointError, match="no .safetensors files"):
        package.load_checkpoint(tmp_path / "empty")


@pytest.mark.parametrize("size", ["7b", "llama3-8b", "tiny-gqa"])
def test_param_shapes_count_the_spec_parameters(size, tmp_path):
    spec = get_preset(size)  # importing a 7b package allocates nothing
    package = import_package(build_target(spec, "jax", tmp_path))
    shapes = jax.tree.leaves(package.param_shapes(), is_leaf=lambda leaf: isinstance(leaf, tuple))
    assert sum(math.prod(shape) for shape in shapes) == spec.param_count
    config = package.CONFIG
    assert (config.dim, config.n_layers, config.n_heads, config.n_kv_heads, config.hidden_dim) == (
        spec.dim, spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.ffn_dim,
    )  # fmt: skip
    assert (config.vocab_size, config.max_seq_len, config.norm_eps, config.rope_theta) == (
        spec.vocab_size, spec.max_seq_len, spec.norm_eps, spec.rope_theta,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_init_params(dtype, packages):
    spec = get_preset("tiny")
    package = packages(spec, dtype)
    params = package.init_params(jax.random.key(0))
    shapes = package.param_shapes()
    assert jax.tree.structure(params) == jax.tree.structure(
        shapes, is_leaf=lambda leaf: isinstance(leaf, tuple)
    )
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        assert leaf.dtype == jnp.dtype(dtype), path
        if path[-1].key.endswith("norm"):
            assert np.all(np.asarray(leaf, np.float32) == 1.0), path
        else:
            assert (
                abs(float(jnp.std(leaf.astype(jnp.float32))) - spec.init_std) < 0.1 * spec.init_std
            )
    other = package.init_params(jax.random.key(1))
    assert not np.array_equal(np.asarray(params["embed"]), np.asarray(other["embed"]))
    assert np.isfinite(np.asarray(package.forward(params, np.zeros((1, 4), np.int64)))).all()


def test_loss_is_next_token_cross_entropy(packages, tmp_path):
    spec = get_preset("tiny-gqa")
    package = packages(spec)
    weights = random_weights(spec, seed=2, std=0.3)
    params = package.load_checkpoint(save_hf_checkpoint(spec, weights, tmp_path / "ckpt"))
    rng = np.random.default_rng(0)
    tokens, targets = rng.integers(0, spec.vocab_size, (2, 2, 24))
    shifted = oracle.forward(spec, weights, tokens)
    shifted -= shifted.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_probs, targets[..., None], -1).mean()
    assert abs(float(jax.jit(package.loss)(params, tokens, targets)) - expected) <= 1e-5 * expected


def test_generate_sampling_and_limits(packages, tmp_path):
    spec = get_preset("tiny")
    package = packages(spec)
    params = package.load_checkpoint(
        save_hf_checkpoint(spec, random_weights(spec, 4, 0.3), tmp_path / "c")
    )
    prompt = np.array([[5, 9, 200], [1, 2, 3]])
    greedy = np.asarray(package.generate(params, prompt, 6))
    top1 = np.asarray(
        package.generate(params, prompt, 6, temperature=0.7, top_k=1, key=jax.random.key(3))
    )
    np.testing.assert_array_equal(top1, greedy)  # top_k=1 leaves only the argmax
    sampled = [
        np.asarray(package.generate(params, prompt, 6, temperature=5.0, key=jax.random.key(k)))
        for k in range(3)
    ]
    assert any(not np.array_equal(s, greedy) for s in sampled)  # hot sampling is not greedy
    np.testing.assert_array_equal(
        sampled[0],
        np.asarray(package.generate(params, prompt, 6, temperature=5.0, key=jax.random.key(0))),
    )
    np.testing.assert_array_equal(np.asarray(package.generate(params, prompt, 0)), prompt)
    with pytest.raises(ValueError, match="needs a key"):
        package.generate(params, prompt, 2, temperature=1.0)
    with pytest.raises(
        ValueError, match=r"^prompt \(3\) \+ max_new_tokens \(128\) exceeds max_seq_len 128$"
    ):
        package.generate(params, prompt, spec.max_seq_len)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        package.forward(params, np.zeros((1, spec.max_seq_len + 1), np.int32))


ALLOWED_IMPORTS = {"jax", "numpy", "safetensors", "__future__"} | set(sys.stdlib_module_names)
# Imported inside a function only, when a checkpoint is a pytorch_model.bin (a pickle only torch
# reads safely, with weights_only=True): the folder still runs without torch.
OPTIONAL_IMPORTS = {"torch"}


def import_roots(node: ast.AST) -> set[str]:
    """Top-level package names an import statement imports (empty for other nodes)."""
    if isinstance(node, ast.Import):
        return {alias.name.split(".")[0] for alias in node.names}
    if isinstance(node, ast.ImportFrom) and node.level == 0:
        return {node.module.split(".")[0]}
    return set()


@pytest.mark.parametrize(
    ("spec", "dtype"),
    [
        (get_preset("tiny-llama3"), "float32"),
        (LINEAR_ROPE, "bfloat16"),
        (get_preset("7b"), "float32"),
    ],
    ids=["llama3", "linear-bf16", "7b"],
)
def test_emitted_code_is_standalone_and_lint_clean(spec, dtype, tmp_path):
    folder = build_target(spec, "jax", tmp_path, BuildOptions(dtype=DType(dtype)))
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "__init__.py", "checkpoint_files.py", "manifest.json", "model.py",
        "sharding.py", "weights.py",
    ]  # fmt: skip
    for file in folder.glob("*.py"):
        tree = ast.parse(file.read_text())
        for node in tree.body:  # what importing the module imports
            assert import_roots(node) <= ALLOWED_IMPORTS, (file.name, import_roots(node))
        for node in ast.walk(tree):
            assert import_roots(node) <= ALLOWED_IMPORTS | OPTIONAL_IMPORTS, file.name
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F,E9", str(folder)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert lint.returncode == 0, lint.stdout
