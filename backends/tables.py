"""The spec layer's tables as every target's templates print them: the weight table's rows
(`spec.weights`) and the config.json rules (`spec.io.HF_DEFAULTS`, `spec.io.HF_CHECKED`).

Templates only iterate over these and print; no name, shape rule or default is written in a
template or a backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spec import ModelSpec
from spec.io import HF_CHECKED, HF_DEFAULTS, hf_checked_values
from spec.weights import BY_KEY, META_ROPE_FREQS, sizes_by_attribute, template_rows

from .base import TemplateContext


@dataclass(frozen=True)
class TableContext(TemplateContext):
    """The weight table and the config.json rules, in one target's spelling of its config."""

    weights: list[
        dict[str, object]
    ]  # spec.weights.template_rows: names, shapes (this spec's biases)
    sizes: Mapping[str, int]  # each axis's length under its emitted config attribute
    hf_defaults: Mapping[str, Any]  # transformers' LlamaConfig defaults for omitted keys
    hf_checked: list[tuple[str, str]]  # (config.json key, emitted expression) loaders compare
    hf_values: Mapping[str, Any]  # what a config.json of this spec says under those keys
    meta_rope_freqs: str  # the non-weight buffer Meta checkpoints hold
    tied_head: str  # HF name of the output head, absent or equal to the embedding when tied
    tied_embedding: str

    @classmethod
    def of(cls, spec: ModelSpec, attribute: str) -> TableContext:
        """`attribute` spells an emitted config attribute in Python ("args.{}" in torch,
        "config.{}" in JAX, 'SIZES["{}"]' in convert.py)."""
        return cls(
            weights=template_rows(attribute, spec),
            sizes=sizes_by_attribute(spec),
            hf_defaults=HF_DEFAULTS,
            hf_checked=[(key, attribute.format(name)) for key, _, name in HF_CHECKED],
            hf_values=hf_checked_values(spec),
            meta_rope_freqs=META_ROPE_FREQS,
            tied_head=BY_KEY["lm_head"].hf,
            tied_embedding=BY_KEY["embed"].hf,
        )
