"""The JAX target: model.py (pure functions over a params pytree, scanned layers, KV cache) and
weights.py (Hugging Face safetensors into that pytree)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spec import ModelSpec

from ..base import Artifact, BuildOptions, Rendered

FILES = ("__init__.py", "model.py", "weights.py", "README.md")


def model_context(spec: ModelSpec, options: BuildOptions) -> dict[str, Any]:
    """The spec's values as the templates print them."""
    scaling = spec.rope_scaling.model_dump() if spec.rope_scaling else {"type": "none"}
    return {
        "name": spec.name,
        "param_count_text": f"{spec.param_count:,}",
        "vocab_size": spec.vocab_size,
        "dim": spec.dim,
        "n_layers": spec.n_layers,
        "n_heads": spec.n_heads,
        "n_kv_heads": spec.num_kv_heads,
        "hidden_dim": spec.hidden_dim,
        "norm_eps": spec.norm_eps,
        "rope_theta": spec.rope_theta,
        "rope_scaling": scaling,
        "max_seq_len": spec.max_seq_len,
        "tie_embeddings": spec.tie_embeddings,
        "dtype": options.dtype_for(spec).value,
        "init_std": spec.init_std,
    }


class JaxBackend:
    name = "jax"
    description = "standalone JAX package (pure functions, scanned layers, KV cache, HF loader)"
    template_dir = Path(__file__).parent / "templates"
    accepts: frozenset[str] = frozenset()
    filters: dict[str, Any] = {}

    def plan(self, spec: ModelSpec, options: BuildOptions) -> list[Artifact]:
        context = model_context(spec, options)
        return [Rendered(path, path + ".jinja", context) for path in FILES]


BACKEND = JaxBackend()
