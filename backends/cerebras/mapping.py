"""Hugging Face <-> Cerebras Model Zoo checkpoint names and q/k row orders, from the weight table.

The names are the table's (`spec.weights`: each row's `hf` and `cerebras` name); the emitted
convert.py prints the same rows, and `python -m codegen convert` reads them here, so the two
cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from spec import ModelSpec
from spec.weights import (
    BY_KEY,
    CEREBRAS_FINAL_NORM_ALIAS,
    LogicalAxis,
    by_hf_name,
    per_name,
)


@dataclass(frozen=True)
class CheckpointLayout:
    """What a converter needs to know about one model."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    tie_embeddings: bool

    @classmethod
    def of(cls, spec: ModelSpec) -> CheckpointLayout:
        return cls(spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.head_dim, spec.tie_embeddings)

    def hf_to_cs(self) -> dict[str, str]:
        """Every Hugging Face tensor name (a tied model has no lm_head) -> its Cerebras name."""
        return per_name("cerebras", self.n_layers, self.tie_embeddings)

    def heads_of(self, hf_name: str) -> int | None:
        """Heads whose rows are permuted between RoPE layouts; None for other tensors."""
        row = by_hf_name(hf_name)
        if row is None or row.rope_heads is None:
            return None
        return self.n_heads if row.rope_heads is LogicalAxis.heads else self.n_kv_heads

    def cs_aliases(self) -> dict[str, str]:
        """Second names of shared tensors in a Cerebras checkpoint -> the name owning the tensor."""
        aliases = {CEREBRAS_FINAL_NORM_ALIAS: BY_KEY["norm"].cerebras}
        if self.tie_embeddings:
            aliases[BY_KEY["lm_head"].cerebras] = BY_KEY["embed"].cerebras
        return aliases


def rope_row_order(n_heads: int, head_dim: int, to_interleaved: bool) -> list[int]:
    """For each row of a converted q/k weight, the row of the source it comes from.

    Half layout (HF): head row j < head_dim/2 is the first element of pair j, row j + head_dim/2
    the second; interleaved (Meta, Cerebras): rows 2j and 2j+1 hold pair j.
    """
    half = head_dim // 2
    if to_interleaved:
        within = [pair + second * half for pair in range(half) for second in (0, 1)]
    else:
        within = [2 * pair + second for second in (0, 1) for pair in range(half)]
    return [head * head_dim + row for head in range(n_heads) for row in within]
