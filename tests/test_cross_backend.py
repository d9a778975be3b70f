"""Backends against each other, on the same random tiny specs and weights: float32 logits agree,
greedy generation picks the same tokens, and JAX gradients equal torch autograd gradients."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from backends import BuildOptions
from codegen.verifier import oracle
from codegen.verifier.checkpoints import random_weights, save_hf_checkpoint
from codegen.verifier.emitted import build_target, import_package
from codegen.verifier.oracle import TOLERANCE
from codegen.verifier.runners import ADAPTERS
from tests.strategies import tiny_specs, token_batches

TARGETS = list(ADAPTERS)
# Two float32 backends may each be up to 1e-5 from the oracle; in practice they agree to ~1e-6.
PAIR_TOLERANCE = TOLERANCE["float32"]
# Generation may differ only where the top two logits are this close (relative to the largest).
NEAR_TIE = 1e-5
GRAD_TOLERANCE = 1e-4


def run_every_backend(run, spec, weights, workdir: Path) -> dict[str, np.ndarray]:
    """run(runner) for every backend in float32, loaded from one shared checkpoint. Each
    backend is loaded once per example and every pair compared, so the cost grows linearly."""
    checkpoint = save_hf_checkpoint(spec, weights, workdir / "checkpoint")
    return {
        target: run(ADAPTERS[target]().load(spec, "float32", checkpoint, workdir / target))
        for target in TARGETS
    }


@given(data=st.data(), spec=tiny_specs(), seed=st.integers(0, 2**32 - 1))
def test_float32_backends_agree(data, spec, seed):
    tokens = np.array(data.draw(token_batches(spec), label="tokens"))
    weights = random_weights(spec, seed, data.draw(st.sampled_from([0.02, 0.1, 0.3]), label="std"))
    with tempfile.TemporaryDirectory() as tmp:
        logits = run_every_backend(lambda r: r.forward(tokens), spec, weights, Path(tmp))
    for a, b in itertools.combinations(TARGETS, 2):
        assert logits[a].shape == logits[b].shape == (*tokens.shape, spec.vocab_size), (a, b)
        assert oracle.relative_error(logits[a], logits[b]) <= PAIR_TOLERANCE, (a, b)


def first_divergence(a: np.ndarray, b: np.ndarray) -> int | None:
    differ = np.flatnonzero(a != b)
    return int(differ[0]) if differ.size else None


def assert_near_tie(spec, weights, prefix: np.ndarray, chosen: set[int]) -> None:
    """Two backends picked different next tokens after `prefix`: allowed only when those are the
    oracle's top two and their logits are within NEAR_TIE of each other."""
    logits = oracle.forward(spec, weights, prefix[None])[0, -1]
    best, runner_up = np.argsort(logits)[::-1][:2]
    margin = (logits[best] - logits[runner_up]) / np.abs(logits).max()
    assert chosen == {int(best), int(runner_up)}, (chosen, best, runner_up)
    assert margin < NEAR_TIE, f"tokens {chosen} differ, but the top-2 margin is {margin:.2e}"


@given(data=st.data(), spec=tiny_specs(), seed=st.integers(0, 2**32 - 1))
def test_greedy_generation_is_identical(data, spec, seed):
    prompt = np.array(data.draw(token_batches(spec, max_len=16), label="prompt"))
    new_tokens = data.draw(st.integers(1, 24), label="new_tokens")
    weights = random_weights(spec, seed, data.draw(st.sampled_from([0.1, 0.3]), label="std"))
    with tempfile.TemporaryDirectory() as tmp:
        tokens = run_every_backend(
            lambda r: r.generate(prompt, new_tokens), spec, weights, Path(tmp)
        )
    for target, generated in tokens.items():
        assert generated.shape == (prompt.shape[0], prompt.shape[1] + new_tokens), target
        np.testing.assert_array_equal(generated[:, : prompt.shape[1]], prompt, err_msg=target)
    for a, b in itertools.combinations(TARGETS, 2):
        for row_a, row_b in zip(tokens[a], tokens[b]):
            at = first_divergence(row_a, row_b)
            if at is not None:  # a later difference follows from the first one
                assert_near_tie(spec, weights, row_a[:at], {int(row_a[at]), int(row_b[at])})


# jax.value_and_grad compiles for seconds on CPU: a third of the profile's examples.
@settings(max_examples=max(4, settings().max_examples // 3))
@given(data=st.data(), spec=tiny_specs(), seed=st.integers(0, 2**32 - 1))
def test_jax_gradients_equal_torch_autograd(data, spec, seed):
    import jax
    import torch
    import torch.nn.functional as F

    batch = np.array(data.draw(token_batches(spec, max_len=32), label="tokens"))
    targets = np.roll(batch, -1, axis=1)
    targets[:, -1] = data.draw(st.integers(0, spec.vocab_size - 1), label="last target")
    weights = random_weights(spec, seed, data.draw(st.sampled_from([0.02, 0.1, 0.3]), label="std"))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_hf_checkpoint(spec, weights, Path(tmp) / "checkpoint")
        torch_pkg = import_package(build_target(spec, "torch", Path(tmp), BuildOptions()))
        jax_pkg = import_package(build_target(spec, "jax", Path(tmp), BuildOptions()))
        model = torch_pkg.Model()
        torch_pkg.load_checkpoint(model, checkpoint)
        params = jax_pkg.load_checkpoint(checkpoint)

    logits = model(torch.as_tensor(batch, dtype=torch.long))
    torch_loss = F.cross_entropy(logits.flatten(0, 1), torch.as_tensor(targets).flatten())
    torch_loss.backward()
    torch_grads = {name: p.grad.numpy() for name, p in model.named_parameters()}

    jax_loss, grads = jax.jit(jax.value_and_grad(jax_pkg.loss))(params, batch, targets)
    jax_grads = jax_pkg.to_hf(grads)

    assert abs(float(jax_loss) - torch_loss.item()) <= 1e-5 * torch_loss.item()
    assert jax_grads.keys() == torch_grads.keys()
    # Per tensor, relative to its own norm; a tensor whose gradient is (near) zero, such as q/k
    # for one-token sequences, is held to 1e-4 of a thousandth of the whole gradient's norm.
    floor = 1e-3 * np.sqrt(
        sum(np.sum(np.square(g, dtype=np.float64)) for g in torch_grads.values())
    )
    for name, expected in torch_grads.items():
        assert jax_grads[name].shape == expected.shape, name
        error = np.linalg.norm(jax_grads[name].astype(np.float64) - expected)
        assert error <= GRAD_TOLERANCE * max(np.linalg.norm(expected), floor), name


def test_verify_command_runs_every_emitted_backend_and_fails_a_wrong_one(tmp_path):
    from click.testing import CliRunner

    from codegen.cli import main
    from spec import get_preset

    spec = get_preset("tiny-gqa")
    for target in ("torch", "jax", "onnx", "cerebras"):
        build_target(spec, target, tmp_path / "out")
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "out"), "--seq", "40"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[3:]}
    assert rows.keys() == {"torch", "jax", "onnx", "cerebras"}
    assert all("float32" in row and "pass" in row for row in rows.values()), result.output

    model = tmp_path / "out" / "jax" / "model.py"  # a small, real bug: the RMSNorm epsilon
    model.write_text(model.read_text().replace("norm_eps: float = 1e-05", "norm_eps: float = 0.01"))
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "out"), "--seq", "40"])
    assert result.exit_code == 1, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[3:]}
    assert "FAIL" in rows["jax"] and "pass" in rows["torch"], result.output
