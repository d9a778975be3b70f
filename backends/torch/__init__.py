"""The PyTorch target: model.py (HF parameter names, SDPA, static KV cache) and weights.py."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from spec import ModelSpec

from ..base import (
    CHECKED_READER,
    DYNAMIC_NTK_LIMIT,
    Artifact,
    BuildOptions,
    Rendered,
    SpecContext,
    TemplateContext,
    refuse_rope_scaling,
)
from ..tables import TableContext
from .parallel import ParallelContext, parallel_context


def package_name(spec: ModelSpec) -> str:
    """A Python package name to suggest for the emitted folder (`7b` -> `llama_7b`)."""
    name = re.sub(r"[^0-9a-zA-Z]+", "_", spec.name).strip("_").lower()
    return name if name[:1].isalpha() else f"llama_{name}"


@dataclass(frozen=True)
class TorchContext(TemplateContext):
    """Every torch template's variables: the spec, the parallel plan, the package name."""

    spec: SpecContext
    parallel: ParallelContext
    table: TableContext
    package_name: str  # what the README suggests naming the copied folder


class TorchBackend:
    name = "torch"
    description = "standalone PyTorch package (HF parameter names, SDPA, KV cache, loaders)"
    template_dir = Path(__file__).parent / "templates"
    accepts: frozenset[str] = frozenset({"parallel"})
    filters: ClassVar[dict[str, Any]] = {}

    # RoPE scaling kinds this target cannot run, with the reason (backends.base).
    refused_rope: Mapping[str, str] = MappingProxyType({"dynamic": DYNAMIC_NTK_LIMIT})

    def plan(self, spec: ModelSpec, options: BuildOptions) -> list[Artifact]:
        refuse_rope_scaling(spec, self.refused_rope)
        context = TorchContext(
            SpecContext.of(spec, options),
            parallel_context(spec, options),
            TableContext.of(spec, "args.{}"),
            package_name(spec),
        )
        return [
            Rendered(path, path + ".jinja", context)
            for path in ("__init__.py", "model.py", "weights.py", "parallel.py", "README.md")
        ] + [CHECKED_READER]


BACKEND = TorchBackend()
