"""The PyTorch target: model.py (HF parameter names, SDPA, static KV cache) and weights.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spec import ModelSpec

from ..base import Artifact, BuildOptions, Rendered
from .parallel import parallel_context


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


class TorchBackend:
    name = "torch"
    description = "standalone PyTorch package (HF parameter names, SDPA, KV cache, loaders)"
    template_dir = Path(__file__).parent / "templates"
    accepts: frozenset[str] = frozenset({"parallel"})
    filters: dict[str, Any] = {}

    def plan(self, spec: ModelSpec, options: BuildOptions) -> list[Artifact]:
        context = model_context(spec, options) | parallel_context(spec, options)
        return [
            Rendered(path, path + ".jinja", context)
            for path in ("__init__.py", "model.py", "weights.py", "parallel.py", "README.md")
        ]


BACKEND = TorchBackend()
