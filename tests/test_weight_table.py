"""One weight table (spec/weights.py): its names and shapes are transformers', and no other
Python file of the compiler, nor any loader template, spells a weight name of its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from codegen.verifier.emitted import build_target
from spec import ModelSpec, get_preset, logical_axes, to_hf_config
from spec.weights import (
    CEREBRAS_FINAL_NORM_ALIAS,
    META_ROPE_FREQS,
    WEIGHTS,
    by_hf_name,
    hf_shapes,
    present,
)

ROOT = Path(__file__).resolve().parent.parent
GQA_TIED = ModelSpec(
    name="gqa-tied", vocab_size=300, dim=96, n_layers=3, n_heads=6, n_kv_heads=2, ffn_dim=160,
    tie_embeddings=True,
)  # fmt: skip
# Decoupled head_dim (4 x 32 on a stream of 96) and every bias (transformers' attention_bias,
# mlp_bias): the rows a LLaMA lacks.
BIASED = ModelSpec(
    name="biased", vocab_size=300, dim=96, n_layers=2, n_heads=4, head_dim=32, n_kv_heads=2,
    ffn_dim=160, attention_bias=True, mlp_bias=True,
)  # fmt: skip
# Every weight name the table holds, and the tail that identifies one inside a longer string
# (`q_proj.weight`, `attention.wq.weight`, `proj_q_dense_layer.weight`).
NAMES = {name for w in WEIGHTS for name in (w.hf, w.meta, w.cerebras) if name is not None}
NAMES |= {CEREBRAS_FINAL_NORM_ALIAS, META_ROPE_FREQS}
TAILS = {".".join(name.split(".")[-2:]) for name in NAMES}


@pytest.mark.parametrize("spec", [get_preset("tiny"), GQA_TIED, BIASED], ids=lambda s: s.name)
def test_names_and_shapes_are_transformers_state_dict(spec):
    """hf_shapes is exactly LlamaForCausalLM's state dict (a tied model lists lm_head once,
    under the embedding), names and shapes."""
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**to_hf_config(spec)))
    theirs = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if spec.tie_embeddings:
        del theirs["lm_head.weight"]  # the embedding, registered a second time
    assert hf_shapes(spec) == theirs
    assert set(logical_axes(spec)) == set(theirs)
    for name, shape in theirs.items():
        assert len(logical_axes(spec)[name]) == len(shape)
        assert by_hf_name(name) is not None


def string_literals(path: Path) -> list[tuple[int, str]]:
    """Every string constant of a Python file except docstrings (a string standing alone as a
    statement: module, class, function and attribute docstrings), with its line."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def weight_name_literals(path: Path) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for line, text in string_literals(path)
        if any(tail in text for tail in TAILS)
    ]


def test_no_weight_name_is_spelled_outside_the_table():
    """Grep (over string literals) of the compiler's Python: only spec/weights.py names a
    tensor; the loader, converter and sharding templates print the table's rows."""
    table = ROOT / "spec" / "weights.py"
    found = [
        hit
        for folder in ("spec", "backends", "codegen")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != table
        for hit in weight_name_literals(path)
    ]
    assert not found, "\n".join(found)
    templates = [
        "backends/torch/templates/weights.py.jinja",
        "backends/torch/templates/parallel.py.jinja",
        "backends/jax/templates/weights.py.jinja",
        "backends/jax/templates/sharding.py.jinja",
        "backends/cerebras/templates/convert.py.jinja",
        "backends/onnx/templates/run.py.jinja",
    ]
    spelled = [
        f"{template}: {tail}"
        for template in templates
        for tail in TAILS
        if tail in (ROOT / template).read_text()
    ]
    assert not spelled, "\n".join(spelled)


@pytest.mark.parametrize(
    ("target", "file"),
    [("torch", "weights.py"), ("jax", "weights.py"), ("cerebras", "convert.py")],
)
def test_every_name_in_emitted_loaders_comes_from_the_table(target, file, tmp_path):
    """The emitted loader's weight names are the table's, and every row of the table is there."""
    folder = build_target(get_preset("tiny"), target, tmp_path)
    literals = {text for _, text in string_literals(folder / file)}
    named = {text for text in literals if any(tail in text for tail in TAILS)}
    assert named <= NAMES, named - NAMES
    column = {"torch": "meta", "jax": "hf", "cerebras": "cerebras"}[target]
    rows = present(get_preset("tiny"))  # no biases: those rows are emitted only when present
    assert {w.hf for w in rows} <= named
    assert {getattr(w, column) for w in rows} <= named


@pytest.mark.parametrize("spec", [GQA_TIED, BIASED], ids=lambda s: s.name)
def test_emitted_models_hold_the_table(spec, tmp_path):
    """The model templates (which print module and params names of their own) agree with the
    table: torch parameters are hf_shapes, JAX params sit at each row's jax_path in its layout,
    and fresh weights follow each row's initialiser."""
    import jax
    import numpy as np

    from codegen.verifier.emitted import import_package
    from spec.weights import Init

    torch_package = import_package(build_target(spec, "torch", tmp_path))
    model = torch_package.Model()
    params = dict(model.named_parameters())
    assert {name: tuple(p.shape) for name, p in params.items()} == hf_shapes(spec)
    jax_package = import_package(build_target(spec, "jax", tmp_path))
    shapes = jax_package.param_shapes()
    fresh = jax_package.init_params(jax.random.PRNGKey(0))
    for weight in present(spec):
        shape = weight.shape(spec)
        if weight.jax_transposed:
            shape = shape[::-1]
        leaf, values = shapes, fresh
        for key in weight.jax_path:
            leaf, values = leaf[key], values[key]
        assert tuple(leaf) == ((spec.n_layers, *shape) if weight.per_layer else shape)
        name = weight.hf.format(i=0)
        for held in (params[name].detach().numpy(), np.asarray(values, np.float32)):
            if weight.init is Init.ones:
                assert (held == 1).all(), name
            elif weight.init is Init.zeros:
                assert (held == 0).all(), name
            else:
                assert abs(held.std() - spec.init_std) < 0.2 * spec.init_std, name
