"""The spec layer's tables as every target's templates print them: the weight table's rows
(`spec.weights`) and the config.json rules (`spec.io.HF_DEFAULTS`, `spec.io.HF_CHECKED`).

Templates only iterate over these and print; no name, shape rule or default is written in a
template or a backend.
"""

from __future__ import annotations

from typing import Any

from spec import ModelSpec
from spec.io import HF_CHECKED, HF_DEFAULTS, hf_checked_values
from spec.weights import BY_KEY, META_ROPE_FREQS, sizes_by_attribute, template_rows


def table_context(spec: ModelSpec, attribute: str) -> dict[str, Any]:
    """Context keys for templates; `attribute` spells an emitted config attribute in Python
    ("args.{}" in torch, "config.{}" in JAX, 'SIZES["{}"]' in convert.py)."""
    return {
        "weights": template_rows(attribute),
        "sizes": sizes_by_attribute(spec),
        "hf_defaults": HF_DEFAULTS,
        "hf_checked": [(key, attribute.format(name)) for key, _, name in HF_CHECKED],
        "hf_values": hf_checked_values(spec),
        "meta_rope_freqs": META_ROPE_FREQS,
        "tied_head": BY_KEY["lm_head"].hf,
        "tied_embedding": BY_KEY["embed"].hf,
    }
