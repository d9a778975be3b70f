"""The contract between the compiler and a target: what to emit for a spec.

A backend never imports `codegen`; it returns a plan (templates with typed contexts, or raw
bytes) and the compiler renders, formats, stamps and writes it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from spec import DType, ModelSpec, ParallelSpec


class OptionError(ValueError):
    """The spec or build options ask for something this target cannot emit (a user error: the
    CLI prints the message as one line and exits 2). Name the numbers in the message."""


@dataclass(frozen=True)
class BuildOptions:
    """Choices made at build time rather than in the spec."""

    dtype: DType | None = None  # None: the spec's dtype
    weights: Path | None = None  # a checkpoint to bind to (targets that take one)
    embed_weights: bool = False  # write the weights into the output (targets that can)
    parallel: ParallelSpec | None = None  # mesh and sharding rules (None: the defaults)

    def dtype_for(self, spec: ModelSpec) -> DType:
        return self.dtype or spec.dtype

    def describe(self) -> dict[str, Any]:
        """The options as plain JSON values, for the manifest."""
        described: dict[str, Any] = {
            "dtype": self.dtype.value if self.dtype else None,
            "weights": str(self.weights) if self.weights else None,
            "embed_weights": self.embed_weights,
        }
        if self.parallel is not None:  # absent otherwise, so earlier manifests stay valid
            described["parallel"] = self.parallel.model_dump(mode="json")
        return described


def spec_context(spec: ModelSpec, options: BuildOptions) -> dict[str, Any]:
    """The spec's values as every target's templates print them."""
    return {
        "name": spec.name,
        "param_count_text": f"{spec.param_count:,}",
        "vocab_size": spec.vocab_size,
        "dim": spec.dim,
        "n_layers": spec.n_layers,
        "n_heads": spec.n_heads,
        "n_kv_heads": spec.n_kv_heads,
        "head_dim": spec.head_dim,
        "hidden_dim": spec.ffn_dim,
        "norm_eps": spec.norm_eps,
        "rope_theta": spec.rope_theta,
        "rope_scaling": spec.rope_scaling.model_dump() if spec.rope_scaling else {"type": "none"},
        "max_seq_len": spec.max_seq_len,
        "tie_embeddings": spec.tie_embeddings,
        "dtype": options.dtype_for(spec).value,
        "init_std": spec.init_std,
    }


@dataclass(frozen=True)
class Rendered:
    """A file produced by rendering `template` (relative to the backend's template folder)."""

    path: str
    template: str
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Raw:
    """A file whose bytes the backend produced itself (e.g. a serialised ONNX graph)."""

    path: str
    content: bytes


Artifact = Rendered | Raw

# backends/checked_reader.py emitted verbatim (it holds no Jinja syntax) beside every loader, so
# the emitted code refuses exactly the checkpoints the compiler refuses.
CHECKED_READER = Rendered("checkpoint_files.py", "checked_reader.py")


class Backend(Protocol):
    name: str
    description: str
    template_dir: Path
    # Which BuildOptions fields besides dtype this target reads; others given are an error.
    accepts: frozenset[str]
    filters: Mapping[str, Callable[..., Any]]

    def plan(self, spec: ModelSpec, options: BuildOptions) -> list[Artifact]: ...
