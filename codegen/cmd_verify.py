"""`python -m codegen verify OUT`: run every backend emitted in OUT on the same inputs and hold each
to the float64 oracle.

The targets present are the folders OUT/<target>/ with a manifest.json written by this tool. A
target runs through its entry of codegen.verifier.runners.ADAPTERS, the registry the test suite
uses too; frameworks are imported only when their target is present. The oracle and the
tolerances are codegen.verifier's, shipped with the package, so verify runs from any folder.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from pydantic import ValidationError

from backends import checked_reader
from backends.safetensors_format import CheckpointError, read_headers
from spec import ModelSpec

from .build import GENERATOR, MANIFEST, read_manifest
from .common import UserError, format_table
from .verifier import oracle
from .verifier.checkpoints import (
    random_weights,
    save_hf_checkpoint,
    weights_as_held,
    weights_as_quantized,
)
from .verifier.runners import ADAPTERS


@dataclass(frozen=True)
class Emitted:
    target: str
    folder: Path
    spec: ModelSpec
    dtype: str
    quantize: tuple[str, int | None] | None = None  # the build's --quantize and --group-size


def discover(out: Path) -> list[Emitted]:
    """Every target folder under `out` with a valid manifest of this tool, in name order; or
    `out` itself when it is one target's folder (`verify out/torch`).

    Hidden folders are never targets: they are temporaries of an interrupted build or bind
    (`.torch.llama-codegen-*`, `.torch.tmp-*` of earlier versions) or the user's own.
    """
    found = []
    folders = [out] if read_manifest(out) is not None else sorted(out.iterdir())
    for folder in folders:
        if folder is not out and (
            folder.name.startswith(".") or folder.is_symlink() or not folder.is_dir()
        ):
            continue
        manifest = read_manifest(folder)
        if manifest is None:
            continue
        try:
            spec = ModelSpec.model_validate(manifest["spec"])
        except (KeyError, ValidationError):
            continue
        options = manifest.get("options")
        options = options if isinstance(options, dict) else {}
        dtype = options.get("dtype") or spec.dtype.value
        quantize = options.get("quantize")
        quantized = (str(quantize), options.get("group_size")) if quantize else None
        found.append(Emitted(manifest["target"], folder, spec, str(dtype), quantized))
    return found


# What verify holds at once, per parameter: the random float32 weights, the checkpoint written
# from them and read back (float32), the weights as held (float32) and the oracle's float64 copy.
VERIFY_BYTES_PER_PARAMETER = 4 + 4 + 4 + 8
# The most memory verify may plan to use: this, or half the memory available now if less.
VERIFY_MEMORY_BUDGET = 16 * 2**30


def verify_cost_bytes(spec: ModelSpec, batch: int, seq: int) -> int:
    """Bytes verify would allocate: the weights (a given checkpoint is read as float32 too) and
    the float64 oracle's activations for (batch, seq) tokens, logits and
    attention scores included. An estimate from the spec alone, made before allocating."""
    per_token = 2 * spec.vocab_size + 8 * spec.dim + 3 * spec.ffn_dim
    scores = 2 * spec.n_heads * seq
    activations = 8 * batch * seq * (per_token + scores)
    return VERIFY_BYTES_PER_PARAMETER * spec.param_count + activations


def memory_budget() -> int:
    """VERIFY_MEMORY_BUDGET, or half of MemAvailable (Linux /proc/meminfo) when that is less."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return min(VERIFY_MEMORY_BUDGET, int(line.split()[1]) * 1024 // 2)
    except (OSError, ValueError, IndexError):
        pass
    return VERIFY_MEMORY_BUDGET


def check_cost(spec: ModelSpec, batch: int, seq: int) -> None:
    """Refuse, in one line, a verify run that would need more memory than the budget."""
    need, budget = verify_cost_bytes(spec, batch, seq), memory_budget()
    if need > budget:
        raise UserError(
            f"verify of {spec.name} at batch {batch} x seq {seq} needs about "
            f"{need / 2**30:.1f} GiB, over the budget of {budget / 2**30:.1f} GiB "
            "(verify is for small models: build a smaller spec, or lower --batch/--seq)"
        )


SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """All tensors of an HF checkpoint (safetensors or pytorch_model.bin) as float32, for the oracle.

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
            if ref.data is not None:  # a pytorch_model.bin tensor, loaded by torch (weights_only)
                raw = bytes(ref.data)
            else:
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
            check_config(spec, path)  # its message names the config.json
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    found = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    try:
        checked_reader.check_names_and_shapes(expected_shapes(spec), found)
    except checked_reader.CheckpointError as exc:
        raise UserError(f"{path}: {exc}") from None


# The pyproject extra that installs each target's framework.
INSTALL_EXTRA = {"torch": "torch", "jax": "jax", "onnx": "onnx", "cerebras": "torch"}


@click.command("verify")
@click.argument("out", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--weights",
    type=click.Path(path_type=Path, exists=True),
    help="A Hugging Face checkpoint (safetensors or pytorch_model.bin). Default: random weights.",
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
    against the tolerance of docs/DESIGN.md, "Numeric conventions" (float32 1e-5, bfloat16
    2e-2); exits 1 when any backend fails or could not run (its framework is not installed:
    the row names the package and the pip extra that brings it).
    """
    emitted = discover(out)
    if not emitted:
        raise UserError(f"{out}: no target folders with a {MANIFEST} written by {GENERATOR}")
    spec = emitted[0].spec
    others = [e.target for e in emitted if e.spec != spec]
    if others:
        raise UserError(f"{out}: targets {', '.join(others)} were built from another spec")
    if seq > spec.max_seq_len:
        raise UserError(f"--seq {seq} exceeds the spec's max_seq_len {spec.max_seq_len}")
    check_cost(spec, batch, seq)

    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, spec.vocab_size, (batch, seq))
    rows, failed = [], False
    source = str(weights) if weights else f"random (std {spec.init_std}, seed {seed})"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if weights is None:
                tensors = random_weights(spec, seed, std=spec.init_std)
                weights = save_hf_checkpoint(spec, tensors, Path(tmp) / "checkpoint")
            else:
                tensors = read_checkpoint(weights)
                check_fits(spec, weights, tensors)
        except ImportError as exc:  # the minimal install (README command 1) has no safetensors
            raise UserError(
                f"verify needs the {exc.name} package for its checkpoint: "
                f"pip install {exc.name}, or pip install -e '.[all]' for every target"
            ) from None
        references: dict[tuple[str, tuple[str, int | None] | None], np.ndarray] = {}
        for item in emitted:
            adapter = ADAPTERS.get(item.target)
            if adapter is None:
                rows.append([item.target, item.dtype, "-", "-", "skipped: no runner"])
                continue
            key = (item.dtype, item.quantize)
            if key not in references:  # a quantized build: the oracle on its dequantized weights
                held, oracle_spec = weights_as_held(tensors, item.dtype), spec
                if item.quantize:
                    oracle_spec, held = weights_as_quantized(spec, held, *item.quantize)
                references[key] = oracle.forward(oracle_spec, held, tokens)
            reference = references[key]
            try:
                workdir = Path(tmp) / item.target
                logits = adapter().open(item.folder, weights, workdir).forward(tokens)
            except ImportError as exc:  # this target's framework is not installed: not verified
                extra = INSTALL_EXTRA.get(item.target, "all")
                rows.append(
                    [item.target, item.dtype, "-", "-",
                     f"NOT RUN: needs {exc.name}; pip install -e '.[{extra}]'"]
                )  # fmt: skip
                failed = True
                continue
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
            ok = error <= oracle.TOLERANCE[item.dtype]
            failed |= not ok
            rows.append(
                [item.target, item.dtype, f"{error:.2e}", f"{max_abs:.2e}",
                 f"{'pass' if ok else 'FAIL'} (tol {oracle.TOLERANCE[item.dtype]:g})"]
            )  # fmt: skip
    click.echo(f"{spec.name}: batch {batch} x seq {seq}, weights {source}")
    click.echo(format_table(["backend", "dtype", "rel L2", "max abs", "result"], rows))
    if failed:
        raise SystemExit(1)
