"""The PyTorch target: model.py (HF parameter names, SDPA, static KV cache) and weights.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from spec import ModelSpec

from ..base import CHECKED_READER, Artifact, BuildOptions, Rendered, spec_context
from ..tables import table_context
from .parallel import parallel_context


def package_name(spec: ModelSpec) -> str:
    """A Python package name to suggest for the emitted folder (`7b` -> `llama_7b`)."""
    name = re.sub(r"[^0-9a-zA-Z]+", "_", spec.name).strip("_").lower()
    return name if name[:1].isalpha() else f"llama_{name}"


class TorchBackend:
    name = "torch"
    description = "standalone PyTorch package (HF parameter names, SDPA, KV cache, loaders)"
    template_dir = Path(__file__).parent / "templates"
    accepts: frozenset[str] = frozenset({"parallel"})
    filters: dict[str, Any] = {}

    def plan(self, spec: ModelSpec, options: BuildOptions) -> list[Artifact]:
        context = spec_context(spec, options) | parallel_context(spec, options)
        context |= table_context(spec, "args.{}")
        context |= {"package_name": package_name(spec)}
        return [
            Rendered(path, path + ".jinja", context)
            for path in ("__init__.py", "model.py", "weights.py", "parallel.py", "README.md")
        ] + [CHECKED_READER]


BACKEND = TorchBackend()
