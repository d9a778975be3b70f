"""Scale-out, JAX half: the emitted sharding.py over 8 host-platform CPU devices.

Meshes 8 x 1, 4 x 2 and 2 x 4 ((data x fsdp) x tensor) must give the logits and gradients of one
device, with every parameter really split; the jitted train step must match an unsharded one.
The devices exist only when XLA_FLAGS is set before jax is imported, and this pytest process has
imported jax already (one device), so the sharded runs happen in one subprocess
(`python -m tests.test_parallel_jax FOLDERS_JSON OUT_JSON`).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from backends import BuildOptions
from codegen.build import render_target
from codegen.cli import main
from codegen.verifier.checkpoints import random_weights, save_hf_checkpoint
from codegen.verifier.emitted import build_target
from spec import ModelSpec, ParallelSpec, TrainingSpec, get_preset

ROOT = Path(__file__).resolve().parent.parent
# 8 heads over 4 key/value heads: heads, kv heads, FFN and vocabulary all split 4 ways.
SPEC = ModelSpec(
    name="tiny-tp4", vocab_size=256, dim=64, n_layers=2, n_heads=8, n_kv_heads=4, multiple_of=32,
    max_seq_len=32, norm_eps=1e-5,
    training=TrainingSpec(peak_lr=1e-2, warmup_steps=1, batch_tokens=8 * 32, seq_len=32,
                          total_tokens=100 * 8 * 32),
)  # fmt: skip
# Tied embeddings; the FFN split over fsdp x tensor, the embedding dimension replicated.
TIED = SPEC.model_copy(update={"name": "tiny-tp4-tied", "tie_embeddings": True})
TIED_RULES = ParallelSpec(rules={"embed": None, "mlp": ["fsdp", "tensor"]})
BATCH, SEQ = 8, 16
GRAD_TOLERANCE = 1e-4  # per tensor, as in test_cross_backend.py
# name -> (package, data, fsdp, tensor)
MESHES = {
    "8x1": ("untied", 2, 4, 1),
    "4x2": ("untied", 2, 2, 2),
    "2x4": ("untied", 1, 2, 4),
    "4x2-tied-mlp-over-fsdp-and-tensor": ("tied", 1, 4, 2),
}
TRAIN_MESH = "4x2"  # the train step's mesh
# An int8 build (issue 16) of the tied model, forward only: (data, fsdp, tensor).
INT8_MESH = (1, 2, 4)


def relative_error(actual, expected) -> float:
    expected = np.asarray(expected, np.float64)
    return float(
        np.linalg.norm(np.asarray(actual, np.float64) - expected) / np.linalg.norm(expected)
    )


def grad_errors(grads: dict, reference: dict) -> dict[str, float]:
    """Per tensor, relative to its own norm, floored at a thousandth of the whole gradient's."""
    floor = 1e-3 * np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in reference.values()))
    return {
        name: float(np.linalg.norm(grads[name] - expected.astype(np.float64))
                    / max(np.linalg.norm(expected), floor))
        for name, expected in reference.items()
    }  # fmt: skip


def shard_shape(shape: tuple[int, ...], spec, mesh_shape) -> tuple[int, ...]:
    """The shape each device holds of an array `shape` split by PartitionSpec `spec`."""
    entries = (*spec, *[None] * (len(shape) - len(spec)))
    split = []
    for size, entry in zip(shape, entries, strict=True):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else entry
        split.append(size // math.prod(mesh_shape[axis] for axis in axes))
    return tuple(split)


def misplaced(sharded, param_specs, mesh) -> list[str]:
    """Every parameter not split as its PartitionSpec says (shard shape = shape / degrees)."""
    import jax

    wrong = []
    for (path, leaf), spec in zip(
        jax.tree_util.tree_leaves_with_path(sharded), jax.tree.leaves(param_specs), strict=True
    ):
        expected = shard_shape(leaf.shape, spec, mesh.shape)
        if {s.data.shape for s in leaf.addressable_shards} != {expected}:
            wrong.append(f"{jax.tree_util.keystr(path)} {leaf.sharding.spec}")
    return wrong


def int8_worker(package, sharding, checkpoint: Path, tokens: np.ndarray) -> dict:
    """The int8 build's forward on INT8_MESH against one device, and where q and scale lie."""
    import jax

    params = package.load_checkpoint(checkpoint)
    expected = jax.jit(package.forward)(jax.device_put(params, jax.devices()[0]), tokens)
    mesh = sharding.make_mesh(*INT8_MESH)
    sharded = sharding.shard_params(params, mesh)
    logits = sharding.jit_forward(mesh)(sharded, sharding.shard_batch(tokens, mesh))
    shard = {name: [list(getattr(weight, part).addressable_shards[0].data.shape)
                    for part in ("q", "scale")]
             for name, weight in (("wq", sharded["layers"]["wq"]), ("lm_head", sharded["lm_head"]))}  # fmt: skip
    return {
        "wrong_shards": misplaced(sharded, sharding.PARAM_SPECS, mesh),
        "shard": shard,
        "q_dtype": str(sharded["layers"]["wq"].q.dtype),
        "logits": relative_error(logits, expected),
    }


def worker(folders: dict[str, str], out: Path) -> None:
    """Runs in the subprocess, with 8 CPU devices: errors of every mesh against one device."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from codegen.verifier.emitted import import_package

    assert jax.device_count() == 8, jax.devices()
    int8_folder = Path(folders.pop("int8"))
    int8 = import_package(int8_folder)
    int8_results = int8_worker(
        int8, importlib.import_module(int8.__name__ + ".sharding"),
        int8_folder.parent / "checkpoint", rng_tokens(),
    )  # fmt: skip
    packages = {key: import_package(Path(folder)) for key, folder in folders.items()}
    shardings = {
        key: importlib.import_module(p.__name__ + ".sharding") for key, p in packages.items()
    }
    tokens, targets = rng_tokens(2)
    params = {key: p.load_checkpoint(Path(folders[key]).parent / "checkpoint")
              for key, p in packages.items()}  # fmt: skip
    on_one_device = jax.devices()[0]
    reference = {}
    for key, package in packages.items():
        one = jax.device_put(params[key], on_one_device)
        logits = jax.jit(package.forward)(one, tokens)
        loss, grads = jax.jit(jax.value_and_grad(package.loss))(one, tokens, targets)
        reference[key] = (np.asarray(logits), float(loss), package.to_hf(grads))

    results = {}
    for name, (key, data, fsdp, tensor) in MESHES.items():
        package, sharding = packages[key], shardings[key]
        mesh = sharding.make_mesh(data, fsdp, tensor)
        sharded = sharding.shard_params(params[key], mesh)
        wrong_shards = misplaced(sharded, sharding.PARAM_SPECS, mesh)
        split = sum(
            leaf.addressable_shards[0].data.size < leaf.size for leaf in jax.tree.leaves(sharded)
        )
        batch = sharding.shard_batch(tokens, mesh)
        logits = sharding.jit_forward(mesh)(sharded, batch)
        param_shardings = sharding.param_shardings(mesh)
        rows = NamedSharding(mesh, sharding.BATCH_SPEC)
        loss, grads = jax.jit(
            jax.value_and_grad(package.loss),
            in_shardings=(param_shardings, rows, rows),
            out_shardings=(NamedSharding(mesh, P()), param_shardings),
        )(sharded, batch, sharding.shard_batch(targets, mesh))
        ref_logits, ref_loss, ref_grads = reference[key]
        results[name] = {
            "wrong_shards": wrong_shards,
            "split": split,
            "wq_shard": sharded["layers"]["wq"].addressable_shards[0].data.shape,
            "n_params": len(jax.tree.leaves(sharded)),
            "logits_spec": str(logits.sharding.spec),
            "logits": relative_error(logits, ref_logits),
            "loss": abs(float(loss) - ref_loss) / ref_loss,
            "grads": grad_errors(package.to_hf(grads), ref_grads),
        }

    # Two AdamW steps: sharded (donated, in/out shardings) against one device.
    key, data, fsdp, tensor = MESHES[TRAIN_MESH]
    package, sharding = packages[key], shardings[key]
    one = jax.device_put(params[key], on_one_device)
    zeros = jax.tree.map(lambda p: np.zeros(p.shape, np.float32), one)
    state = {"step": np.zeros((), np.int32), "mu": zeros, "nu": zeros}
    mesh = sharding.make_mesh(data, fsdp, tensor)
    sharded = sharding.shard_params(params[key], mesh)
    sharded_state = sharding.init_opt_state(sharded, mesh)
    step, reference_step = sharding.jit_train_step(mesh), jax.jit(sharding.train_step)
    train = {"loss": [], "update": []}
    for _ in range(2):
        before = one
        one, state, expected_loss = reference_step(one, state, tokens, targets)
        sharded, sharded_state, loss = step(
            sharded, sharded_state, sharding.shard_batch(tokens, mesh),
            sharding.shard_batch(targets, mesh),
        )  # fmt: skip
        train["loss"].append(abs(float(loss) - float(expected_loss)) / float(expected_loss))
        # Each tensor's update against one device's, relative to that update's size.
        errors = jax.tree.map(
            lambda new, ref, old: relative_error(np.asarray(new) - old, np.asarray(ref) - old),
            sharded, one, jax.tree.map(np.asarray, before),
        )  # fmt: skip
        train["update"].append(max(jax.tree.leaves(errors)))
    train["step"] = int(sharded_state["step"])
    train["same_shardings"] = all(
        a.sharding == b for a, b in zip(jax.tree.leaves(sharded),
                                        jax.tree.leaves(sharding.param_shardings(mesh)), strict=True)
    )  # fmt: skip

    # A mesh the model does not divide by is refused before anything is placed.
    try:
        sharding.param_shardings(sharding.make_mesh(1, 1, 8))
        refused = ""
    except ValueError as exc:
        refused = str(exc)
    out.write_text(json.dumps({"meshes": results, "train": train, "refused": refused,
                               "int8": int8_results}))  # fmt: skip


def rng_tokens(count: int = 1) -> np.ndarray:
    """`count` (BATCH, SEQ) int32 arrays of token ids, the same in every run."""
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, SPEC.vocab_size, (2, BATCH, SEQ), dtype=np.int32)
    return tokens if count == 2 else tokens[0]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("jax-parallel")
    folders = {}
    for key, spec, options in (
        ("untied", SPEC, BuildOptions()), ("tied", TIED, BuildOptions(parallel=TIED_RULES)),
        ("int8", TIED, BuildOptions(quantize="int8")),
    ):  # fmt: skip
        folders[key] = str(build_target(spec, "jax", root / key, options))
        save_hf_checkpoint(spec, random_weights(spec, seed=11, std=0.2), root / key / "checkpoint")
    out = root / "results.json"
    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=8",
                        "JAX_PLATFORMS": "cpu"}  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "tests.test_parallel_jax", json.dumps(folders), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_logits_and_gradients_match_one_device(mesh, results):
    errors = results["meshes"][mesh]
    assert errors["logits"] <= 1e-5, errors["logits"]
    assert errors["loss"] <= 1e-5, errors["loss"]
    assert len(errors["grads"]) >= 2 * 9 + 2  # every weight of both layers, embedding, norm
    worst = max(errors["grads"], key=errors["grads"].get)
    assert errors["grads"][worst] <= GRAD_TOLERANCE, (worst, errors["grads"][worst])


@pytest.mark.parametrize("mesh", MESHES)
def test_parameters_are_really_sharded(mesh, results):
    errors = results["meshes"][mesh]
    assert errors["wrong_shards"] == []
    key, _, fsdp, tensor = MESHES[mesh]
    spec = SPEC if key == "untied" else TIED
    embed_split = fsdp if key == "untied" else 1  # the tied build keeps `embed` whole
    wq_shard = [spec.n_layers, spec.dim // embed_split, spec.dim // tensor]
    assert errors["wq_shard"] == wq_shard, (errors["wq_shard"], wq_shard)
    # Every parameter but the norm weights is split once the mesh has fsdp > 1 (embed: fsdp).
    assert errors["split"] >= errors["n_params"] - 3, errors
    assert errors["logits_spec"] == "P(('data', 'fsdp'), None, 'tensor')"


def test_sharded_train_step_matches_one_device(results):
    train = results["train"]
    assert train["step"] == 2
    assert max(train["loss"]) <= 1e-5, train
    # Adam divides by each element's gradient size, so an element whose gradient is near zero
    # turns 1e-7 rounding into a visible update: each tensor's update is held to 1e-2 of itself.
    assert max(train["update"]) <= 1e-2, train
    assert train["same_shardings"]


def test_int8_build_shards_q_and_scale_and_matches_one_device(results):
    """q split as the float matrix is, its scale as q's output axis (default rules: embed over
    fsdp, heads and vocab over tensor); the tied head quantized and split like an untied one."""
    int8 = results["int8"]
    assert int8["wrong_shards"] == []
    _, fsdp, tensor = INT8_MESH
    layers, dim, vocab = TIED.n_layers, TIED.dim, TIED.vocab_size
    assert int8["shard"] == {
        "wq": [[layers, dim // fsdp, dim // tensor], [layers, dim // tensor]],
        "lm_head": [[dim // fsdp, vocab // tensor], [vocab // tensor]],
    }
    assert int8["q_dtype"] == "int8"
    assert int8["logits"] <= 1e-5, int8["logits"]


def test_run_time_mesh_is_checked_against_the_model(results):
    assert results["refused"] == "kv_heads (4) is not divisible by the tensor degree (8)"


def test_adamw_matches_torch(tmp_path):
    """Three steps of the emitted AdamW (global-norm clip, schedule) against torch's, same grads."""
    import jax
    import torch

    from codegen.verifier.emitted import import_package

    package = import_package(build_target(SPEC, "jax", tmp_path))
    sharding = importlib.import_module(package.__name__ + ".sharding")
    rng = np.random.default_rng(5)
    params = {"a": rng.standard_normal((6, 4)).astype(np.float32),
              "b": rng.standard_normal(5).astype(np.float32)}  # fmt: skip
    steps = [{name: 3 * rng.standard_normal(p.shape).astype(np.float32)
              for name, p in params.items()} for _ in range(3)]  # fmt: skip
    state = {"step": np.zeros((), np.int32),
             "mu": {n: np.zeros_like(p) for n, p in params.items()},
             "nu": {n: np.zeros_like(p) for n, p in params.items()}}  # fmt: skip
    training = SPEC.training
    tensors = {name: torch.tensor(p, requires_grad=True) for name, p in params.items()}
    optimizer = torch.optim.AdamW(tensors.values(), lr=training.peak_lr, eps=training.adam_eps,
                                  betas=(training.beta1, training.beta2),
                                  weight_decay=training.weight_decay)  # fmt: skip
    adamw = jax.jit(sharding.adamw)
    for number, grads in enumerate(steps, start=1):
        params, state = adamw(params, grads, state)
        for name, tensor in tensors.items():
            tensor.grad = torch.tensor(grads[name])
        torch.nn.utils.clip_grad_norm_(tensors.values(), training.grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = float(sharding.learning_rate(jax.numpy.asarray(number)))
        optimizer.step()
    for name, tensor in tensors.items():
        assert relative_error(params[name], tensor.detach().numpy()) <= 1e-6, name
    # Warmup 1 step, then cosine over steps 1..100 down to 0.1 x 1e-2.
    lr = [float(sharding.learning_rate(jax.numpy.asarray(s))) for s in (1, 2, 100, 200)]
    decayed = 1e-2 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi / 99)))
    assert lr == pytest.approx([1e-2, decayed, 1e-3, 1e-3])


# ---- build time: the emitted rules, defaults and errors -----------------------------------


def test_default_build_emits_the_default_spec():
    files = render_target(get_preset("7b"), "jax", BuildOptions())
    emitted = files["sharding.py"].decode()
    for line in ("FSDP = -1\n", "TENSOR = 1\n", '"embed": P("tensor", "fsdp"),  # (vocab, embed)',
                 '"wq": P(None, "fsdp", "tensor"),  # (layers, embed, heads)',
                 '"w_down": P(None, "tensor", "fsdp"),  # (layers, mlp, embed)',
                 '"lm_head": P("fsdp", "tensor"),  # (embed, vocab)',
                 'BATCH_SPEC = P(("data", "fsdp"))', "PEAK_LR = 0.0003\n", "WARMUP_STEPS = 2000\n"):  # fmt: skip
        assert line in emitted, line
    assert "parallel" not in json.loads(files["manifest.json"])["options"]


def test_rules_become_literal_partition_specs():
    emitted = render_target(TIED, "jax", BuildOptions(parallel=TIED_RULES))["sharding.py"].decode()
    assert '"embed": P("tensor", None),  # (vocab, embed)' in emitted
    assert '"w_gate": P(None, None, ("fsdp", "tensor")),  # (layers, embed, mlp)' in emitted
    assert '"lm_head"' not in emitted
    assert 'SPLITS = {\n    "vocab": ("vocab_size", ("tensor",)),\n' in emitted


def test_cli_parallel_file_sets_the_emitted_defaults(tmp_path):
    (tmp_path / "parallel.yaml").write_text(
        yaml.safe_dump({"mesh": {"data": 2, "fsdp": 2, "tensor": 2}})
    )
    model = SPEC.model_dump(mode="json", exclude_computed_fields=True)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(model))
    result = CliRunner().invoke(main, ["build", "--spec", str(tmp_path / "model.yaml"), "--target", "jax",
                                       "--out", str(tmp_path / "o"), "--parallel", str(tmp_path / "parallel.yaml")])  # fmt: skip
    assert result.exit_code == 0, result.output
    emitted = (tmp_path / "o" / "jax" / "sharding.py").read_text()
    assert "DATA = 2\nFSDP = 2\nTENSOR = 2\n" in emitted
    manifest = json.loads((tmp_path / "o" / "jax" / "manifest.json").read_text())
    assert manifest["options"]["parallel"]["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]), Path(sys.argv[2]))
