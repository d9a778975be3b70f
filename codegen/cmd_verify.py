"""`python -m codegen verify OUT`: run every backend emitted in OUT on the same inputs and hold each
to the float64 oracle.

The targets present are the folders OUT/<target>/ with a manifest.json written by this tool. A
target runs through one entry of RUNNERS (a function: emitted folder, HF checkpoint folder, token
ids -> float logits); adding a target is one function and one line there. Frameworks are imported
only when their target is present. The oracle and the tolerances are the test suite's
(tests/oracle.py, tests/support.py), so verify runs from a checkout of this repository.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from backends import checked_reader
from backends.safetensors_format import CheckpointError, read_headers
from spec import ModelSpec

from .build import GENERATOR, MANIFEST
from .cli import UserError, format_table


def run_torch(folder: Path, checkpoint: Path, tokens: np.ndarray) -> np.ndarray:
    import torch

    from tests.support import import_package

    package = import_package(folder)
    model = package.Model().eval()
    package.load_checkpoint(model, checkpoint)
    with torch.inference_mode():
        return model(torch.as_tensor(tokens, dtype=torch.long)).numpy()


def run_jax(folder: Path, checkpoint: Path, tokens: np.ndarray) -> np.ndarray:
    import jax

    from tests.support import import_package

    package = import_package(folder)
    return np.asarray(jax.jit(package.forward)(package.load_checkpoint(checkpoint), tokens))


def run_onnx(folder: Path, checkpoint: Path, tokens: np.ndarray) -> np.ndarray:
    """The folder's graphs bound by reference to the checkpoint (what `codegen bind` does)."""
    from backends import BuildOptions
    from tests.adapters.onnx_adapter import OnnxRunner

    from .build import render_target, write_atomically

    spec = ModelSpec.model_validate(json.loads((folder / MANIFEST).read_text())["spec"])
    with tempfile.TemporaryDirectory() as tmp:
        bound = Path(tmp) / "onnx"
        write_atomically(bound, render_target(spec, "onnx", BuildOptions(weights=checkpoint)))
        return OnnxRunner(bound, checkpoint).forward(tokens)


def run_cerebras(folder: Path, checkpoint: Path, tokens: np.ndarray) -> np.ndarray:
    """The Cerebras model.py holding the checkpoint converted by the folder's convert.py."""
    from tests.adapters.cerebras_adapter import load_emitted

    return load_emitted(folder, checkpoint).forward(tokens)


# target -> runner: (emitted folder, HF checkpoint folder, int64 tokens (B, T)) -> logits (B, T, V)
RUNNERS: dict[str, Callable[[Path, Path, np.ndarray], np.ndarray]] = {
    "torch": run_torch,
    "jax": run_jax,
    "onnx": run_onnx,
    "cerebras": run_cerebras,
}


@dataclass(frozen=True)
class Emitted:
    target: str
    folder: Path
    spec: ModelSpec
    dtype: str


def discover(out: Path) -> list[Emitted]:
    """Every target folder under `out` that this tool wrote, in name order."""
    found = []
    for manifest_path in sorted(out.glob(f"*/{MANIFEST}")):
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR:
            continue
        spec = ModelSpec.model_validate(manifest["spec"])
        dtype = manifest.get("options", {}).get("dtype") or spec.dtype.value
        found.append(Emitted(manifest["target"], manifest_path.parent, spec, dtype))
    return found


SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """All tensors of an HF safetensors checkpoint (folder or file) as float32, for the oracle.

    Read from the format itself, so bfloat16 needs no framework: its bits are the top half of a
    float32's.
    """
    tensors = {}
    try:
        folder, refs = read_headers(path)
        data: dict[str, bytes] = {}
        for ref in refs:
            if ref.dtype not in SAFETENSORS_DTYPES:
                raise UserError(f"{ref.file}: {ref.name!r} has unsupported dtype {ref.dtype}")
            if ref.file not in data:
                data[ref.file] = (folder / ref.file).read_bytes()
            raw = data[ref.file][ref.offset : ref.offset + ref.length]
            values = np.frombuffer(raw, SAFETENSORS_DTYPES[ref.dtype])
            if ref.dtype == "BF16":
                values = (values.astype(np.uint32) << 16).view(np.float32)
            tensors[ref.name] = values.astype(np.float32).reshape(ref.shape)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    return tensors


def check_fits(spec: ModelSpec, path: Path, tensors: dict[str, np.ndarray]) -> None:
    """The checkpoint holds this model's tensors with its shapes, and a config.json beside it
    (if any) describes this model: one line naming what does not fit."""
    from backends.onnx.checkpoint import check_config, expected_shapes

    try:
        if path.is_dir():
            check_config(spec, path)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    expected = expected_shapes(spec)
    faults = sorted(set(expected) ^ set(tensors)) + [
        f"{name} {list(tensors[name].shape)} (spec needs {list(shape)})"
        for name, shape in expected.items()
        if name in tensors and tensors[name].shape != shape
    ]
    if faults:
        shown = ", ".join(checked_reader.shown(fault) for fault in faults[:5])
        raise UserError(f"{path} does not fit spec {spec.name!r}: {shown}")


@click.command("verify")
@click.argument("out", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--weights",
    type=click.Path(path_type=Path, exists=True),
    help="A Hugging Face safetensors checkpoint. Default: random weights drawn from the spec.",
)
@click.option(
    "--seq", default=16, show_default=True, type=click.IntRange(1), help="Tokens per sequence."
)
@click.option("--batch", default=2, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights and tokens.")
def verify_command(out: Path, weights: Path | None, seq: int, batch: int, seed: int) -> None:
    """Run every backend emitted in OUT on the same inputs; compare each with the float64 oracle.

    \b
    Prints backend, dtype, relative L2 error and max abs error of the logits, and pass/fail
    against the tolerance of DESIGN.md section 3 (float32 1e-5, bfloat16 2e-2); exits 1 when
    any backend fails.
    """
    from tests import oracle
    from tests.support import TOLERANCE, random_weights, save_hf_checkpoint, weights_as_held

    emitted = discover(out)
    if not emitted:
        raise UserError(f"{out}: no target folders with a {MANIFEST} written by {GENERATOR}")
    spec = emitted[0].spec
    others = [e.target for e in emitted if e.spec != spec]
    if others:
        raise UserError(f"{out}: targets {', '.join(others)} were built from another spec")
    if seq > spec.max_seq_len:
        raise UserError(f"--seq {seq} exceeds the spec's max_seq_len {spec.max_seq_len}")

    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, spec.vocab_size, (batch, seq))
    rows, failed = [], False
    source = str(weights) if weights else f"random (std {spec.init_std}, seed {seed})"
    with tempfile.TemporaryDirectory() as tmp:
        if weights is None:
            tensors = random_weights(spec, seed, std=spec.init_std)
            weights = save_hf_checkpoint(spec, tensors, Path(tmp) / "checkpoint")
        else:
            tensors = read_checkpoint(weights)
            check_fits(spec, weights, tensors)
        references: dict[str, np.ndarray] = {}
        for item in emitted:
            runner = RUNNERS.get(item.target)
            if runner is None:
                rows.append([item.target, item.dtype, "-", "-", "skipped: no runner"])
                continue
            if item.dtype not in references:
                held = weights_as_held(tensors, item.dtype)
                references[item.dtype] = oracle.forward(spec, held, tokens)
            reference = references[item.dtype]
            try:
                logits = runner(item.folder, weights, tokens)
            except Exception as exc:  # noqa: BLE001 - a backend that crashes fails; others still run
                rows.append(
                    [item.target, item.dtype, "-", "-", f"FAIL: {type(exc).__name__}: {exc}"]
                )
                failed = True
                continue
            if logits.shape != reference.shape:
                rows.append([item.target, item.dtype, "-", "-", f"FAIL: shape {logits.shape}"])
                failed = True
                continue
            error = oracle.relative_error(logits, reference)
            max_abs = float(np.max(np.abs(logits.astype(np.float64) - reference)))
            ok = error <= TOLERANCE[item.dtype]
            failed |= not ok
            rows.append(
                [item.target, item.dtype, f"{error:.2e}", f"{max_abs:.2e}",
                 f"{'pass' if ok else 'FAIL'} (tol {TOLERANCE[item.dtype]:g})"]
            )  # fmt: skip
    click.echo(f"{spec.name}: batch {batch} x seq {seq}, weights {source}")
    click.echo(format_table(["backend", "dtype", "rel L2", "max abs", "result"], rows))
    if failed:
        raise SystemExit(1)
