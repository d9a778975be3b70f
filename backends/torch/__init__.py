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
    QUANTIZER,
    Artifact,
    BuildOptions,
    OptionError,
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
class QuantContext(TemplateContext):
    """The weight-only quantization of the linear layers (--quantize; formats in quantize.py)."""

    quantize: str | None  # "int8", "int4" or None (float layers)
    group_size: int | None  # int4: inputs per scale and zero point
    linear_class: str  # the emitted class of every linear layer: Linear, Int8Linear, Int4Linear

    @classmethod
    def of(cls, options: BuildOptions) -> QuantContext:
        if options.quantize is None:
            return cls(None, None, "Linear")
        group_size = options.int4_group_size if options.quantize == "int4" else None
        return cls(options.quantize, group_size, options.quantize.capitalize() + "Linear")


@dataclass(frozen=True)
class TorchContext(TemplateContext):
    """Every torch template's variables: the spec, the parallel plan, the package name."""

    spec: SpecContext
    parallel: ParallelContext
    table: TableContext
    quant: QuantContext
    package_name: str  # what the README suggests naming the copied folder


class TorchBackend:
    name = "torch"
    description = "standalone PyTorch package (HF parameter names, SDPA, KV cache, loaders)"
    template_dir = Path(__file__).parent / "templates"
    accepts: frozenset[str] = frozenset({"parallel", "quantize"})
    filters: ClassVar[dict[str, Any]] = {}

    # RoPE scaling kinds this target cannot run, with the reason (backends.base).
    refused_rope: Mapping[str, str] = MappingProxyType({"dynamic": DYNAMIC_NTK_LIMIT})

    def plan(self, spec: ModelSpec, options: BuildOptions) -> list[Artifact]:
        refuse_rope_scaling(spec, self.refused_rope)
        if options.quantize and options.parallel:
            # DTensor shards parameters; quantized layers hold integer buffers packed per device.
            raise OptionError("--quantize and --parallel cannot be combined (quantized layers "
                              "are for inference on one device)")  # fmt: skip
        context = TorchContext(
            SpecContext.of(spec, options),
            parallel_context(spec, options),
            TableContext.of(spec, "args.{}"),
            QuantContext.of(options),
            package_name(spec),
        )
        # A quantized build has no parallel.py (see above) and carries quantize.py, the formats'
        # one definition, which its layers use to quantize float weights.
        paths = ["__init__.py", "model.py", "weights.py", "README.md"]
        if not options.quantize:
            paths.insert(3, "parallel.py")
        extra = [QUANTIZER] if options.quantize else []
        return [Rendered(path, path + ".jinja", context) for path in paths] + [
            CHECKED_READER,
            *extra,
        ]


BACKEND = TorchBackend()
