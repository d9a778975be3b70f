"""The JAX target: model.py (pure functions over a params pytree, scanned layers, KV cache),
weights.py (Hugging Face safetensors into that pytree) and sharding.py (the parallel spec's rules
as PartitionSpecs, jitted sharded forward and train step)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spec import ModelSpec

from ..base import CHECKED_READER, Artifact, BuildOptions, Rendered, spec_context
from ..tables import table_context
from .sharding import sharding_context

FILES = ("__init__.py", "model.py", "weights.py", "sharding.py", "README.md")


class JaxBackend:
    name = "jax"
    description = "standalone JAX package (scanned layers, KV cache, HF loader, sharding)"
    template_dir = Path(__file__).parent / "templates"
    accepts: frozenset[str] = frozenset({"parallel"})
    filters: dict[str, Any] = {}

    def plan(self, spec: ModelSpec, options: BuildOptions) -> list[Artifact]:
        context = spec_context(spec, options) | sharding_context(spec, options)
        context |= table_context(spec, "config.{}")
        return [Rendered(path, path + ".jinja", context) for path in FILES] + [CHECKED_READER]


BACKEND = JaxBackend()
