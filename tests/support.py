"""Shared test helpers: random weights in the canonical (HF) layout, checkpoints, builds, imports."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from backends import BuildOptions
from codegen.build import render_target, write_atomically
from spec import ModelSpec, to_hf_config

# Relative L2 error of logits against the float64 oracle (DESIGN.md section 3).
TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2}

_package_ids = itertools.count()


def weight_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor of a checkpoint in our canonical layout (HF names; no lm_head when tied)."""
    d, kv = spec.dim, spec.num_kv_heads * spec.head_dim
    shapes = {"model.embed_tokens.weight": (spec.vocab_size, d), "model.norm.weight": (d,)}
    if not spec.tie_embeddings:
        shapes["lm_head.weight"] = (spec.vocab_size, d)
    for i in range(spec.n_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (d, d),
            p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, d),
            p + "mlp.gate_proj.weight": (spec.hidden_dim, d),
            p + "mlp.up_proj.weight": (spec.hidden_dim, d),
            p + "mlp.down_proj.weight": (d, spec.hidden_dim),
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
        }
    return shapes


def random_weights(spec: ModelSpec, seed: int, std: float = 0.1) -> dict[str, np.ndarray]:
    """float32 weights, never zeros: normal(0, std) matrices, norm weights around 1."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in weight_shapes(spec).items():
        if name.endswith("norm.weight"):
            weights[name] = (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        else:
            weights[name] = (std * rng.standard_normal(shape)).astype(np.float32)
    return weights


def round_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even), returned as float32."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


def weights_as_held(weights: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """The weights a model of `dtype` actually holds after loading: the oracle's fair input."""
    if dtype == "float32":
        return weights
    return {name: round_to_bfloat16(value) for name, value in weights.items()}


def save_hf_checkpoint(spec: ModelSpec, weights: dict[str, np.ndarray], folder: Path) -> Path:
    """A Hugging Face style folder: config.json + model.safetensors."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(to_hf_config(spec), indent=2))
    save_file(
        {k: np.ascontiguousarray(v) for k, v in weights.items()}, folder / "model.safetensors"
    )
    return folder


def build_target(
    spec: ModelSpec, target: str, out: Path, options: BuildOptions | None = None
) -> Path:
    """Build one target into out/<target> and return that folder."""
    dest = out / target
    write_atomically(dest, render_target(spec, target, options or BuildOptions()))
    return dest


def _load(name: str, path: Path, search_locations: list[str] | None = None) -> ModuleType:
    module_spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=search_locations
    )
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


def import_package(folder: Path) -> ModuleType:
    """Import an emitted folder as a package under a fresh name (its imports are relative)."""
    name = f"emitted_{folder.name}_{next(_package_ids)}"
    return _load(name, folder / "__init__.py", [str(folder)])


def import_file(path: Path) -> ModuleType:
    """Import one emitted script (run.py, model.py, convert.py) as a module under a fresh name,
    with its folder first on sys.path as `python script.py` has it (for checkpoint_files.py)."""
    sys.modules.pop("checkpoint_files", None)  # the one beside this script, not another folder's
    sys.path.insert(0, str(path.parent))
    try:
        return _load(f"emitted_{path.parent.name}_{path.stem}_{next(_package_ids)}", path)
    finally:
        sys.path.remove(str(path.parent))
