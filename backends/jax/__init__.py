"""The JAX target: model.py (pure functions over a params pytree, scanned layers, KV cache),
weights.py (Hugging Face safetensors into that pytree) and sharding.py (the parallel spec's rules
as PartitionSpecs, jitted sharded forward and train step)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from spec import ModelSpec
from spec.weights import WEIGHTS

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
from .sharding import sharding_context

FILES = ("__init__.py", "model.py", "weights.py", "sharding.py", "README.md")
# XLA on CPU has no fused int4 kernel either, and the int8 path is the measured one (issue 16)
INT4_REFUSED = "--quantize int4 is not supported: this target takes --quantize int8 only"


@dataclass(frozen=True)
class ShardingContext(TemplateContext):
    """What sharding.py.jinja prints (built by sharding.sharding_context; a key it adds or drops
    fails here, at the first build, rather than as a template's undefined name)."""

    mesh: Mapping[str, int]  # data, fsdp, tensor
    rules: Mapping[str, list[str]]  # logical axis -> mesh axes
    global_params: Sequence[Mapping[str, str]]  # {"name", "partition", "axes"}
    layer_params: Sequence[Mapping[str, str]]
    batch_partition: str
    logits_partition: str
    rules_text: Sequence[str]
    split_sizes: Sequence[tuple[str, str, tuple[str, ...]]]  # (axis, Config attribute, mesh axes)
    training: Mapping[str, Any]  # the AdamW recipe of spec.training


@dataclass(frozen=True)
class QuantContext(TemplateContext):
    """`--quantize` as the templates print it: "int8" or None (a float build)."""

    quantize: str | None
    # params keys held as Int8Weight (WeightInfo.quantized): the head even when tied, since a
    # tied head is quantized from a copy of the embedding
    quantized: tuple[str, ...]

    @classmethod
    def of(cls, options: BuildOptions) -> QuantContext:
        if options.quantize == "int4":
            raise OptionError(INT4_REFUSED)
        keys = tuple(w.key for w in WEIGHTS if w.quantized) if options.quantize else ()
        return cls(options.quantize, keys)


@dataclass(frozen=True)
class JaxContext(TemplateContext):
    """Every JAX template's variables."""

    spec: SpecContext
    sharding: ShardingContext
    table: TableContext
    quant: QuantContext


class JaxBackend:
    name = "jax"
    description = "standalone JAX package (scanned layers, KV cache, HF loader, sharding)"
    template_dir = Path(__file__).parent / "templates"
    accepts: frozenset[str] = frozenset({"parallel", "quantize"})
    filters: ClassVar[dict[str, Any]] = {}

    # RoPE scaling kinds this target cannot run, with the reason (backends.base).
    refused_rope: Mapping[str, str] = MappingProxyType({"dynamic": DYNAMIC_NTK_LIMIT})

    def plan(self, spec: ModelSpec, options: BuildOptions) -> list[Artifact]:
        refuse_rope_scaling(spec, self.refused_rope)
        context = JaxContext(
            SpecContext.of(spec, options),
            ShardingContext(**sharding_context(spec, options)),
            TableContext.of(spec, "config.{}"),
            QuantContext.of(options),
        )
        files = [Rendered(path, path + ".jinja", context) for path in FILES] + [CHECKED_READER]
        return files + ([QUANTIZER] if options.quantize else [])


BACKEND = JaxBackend()
