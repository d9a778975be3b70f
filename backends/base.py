"""The contract between the compiler and a target: what to emit for a spec.

A backend never imports `codegen`; it returns a plan (templates with typed contexts, or raw
bytes) and the compiler renders, formats, stamps and writes it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Protocol

from spec import DType, ModelSpec, ParallelSpec
from spec.weights import present

from .quantize import DEFAULT_GROUP_SIZE, check_group_size

# Blocks several targets' templates share, as Jinja macros: `{% from "shared/<file>" import ... %}`.
BACKENDS_DIR = Path(__file__).parent
SHARED_TEMPLATE_DIR = BACKENDS_DIR / "shared_templates"
# Files of this folder that targets emit as they are, named as templates "compiler/<file>".
COMPILER_PREFIX = "compiler"


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
    # weight-only quantization of every linear layer (WeightInfo.quantized), formats in quantize.py
    quantize: Literal["int8", "int4"] | None = None
    group_size: int | None = None  # int4 only; None: quantize.DEFAULT_GROUP_SIZE

    def dtype_for(self, spec: ModelSpec) -> DType:
        return self.dtype or spec.dtype

    @property
    def int4_group_size(self) -> int:
        """The int4 group size in effect (the option, else the default)."""
        return self.group_size or DEFAULT_GROUP_SIZE

    def describe(self) -> dict[str, Any]:
        """The options as plain JSON values, for the manifest."""
        described: dict[str, Any] = {
            "dtype": self.dtype.value if self.dtype else None,
            "weights": str(self.weights) if self.weights else None,
            "embed_weights": self.embed_weights,
        }
        if self.parallel is not None:  # absent otherwise, so earlier manifests stay valid
            described["parallel"] = self.parallel.model_dump(mode="json")
        if self.quantize is not None:  # likewise
            described["quantize"] = self.quantize
            if self.quantize == "int4":
                described["group_size"] = self.int4_group_size
        return described


class TemplateContext:
    """Base of every typed template context (frozen dataclasses).

    Its fields become the template's variables; a field that is itself a TemplateContext (a
    part shared by several targets, e.g. SpecContext) lends its fields instead, so a template
    reads `n_heads`, not `spec.n_heads`. Templates only iterate over and print these values:
    whatever needs arithmetic is a field computed here.
    """

    def variables(self) -> dict[str, Any]:
        """Field name -> value, parts flattened. Raises TypeError when two parts both define a
        name (a bug in the backend: one of them would silently win)."""
        found: dict[str, Any] = {}
        for item in fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            part = value.variables() if isinstance(value, TemplateContext) else {item.name: value}
            clash = found.keys() & part.keys()
            if clash:
                raise TypeError(f"{type(self).__name__}: {sorted(clash)} defined twice")
            found |= part
        return found


@dataclass(frozen=True)
class RopeScalingContext:
    """spec.rope_scaling as templates print it; type "none" when the spec has none, and
    attention_factor the spec's resolved one (1 for the kinds without)."""

    type: Literal["none", "linear", "llama3", "yarn", "longrope", "dynamic"] = "none"
    factor: float | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    truncate: bool | None = None
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None
    attention_factor: float = 1.0

    @classmethod
    def of(cls, spec: ModelSpec) -> RopeScalingContext:
        return cls(**spec.rope_scaling.model_dump()) if spec.rope_scaling else cls()

    @property
    def mapping(self) -> dict[str, Any]:
        """The set fields as a dict (`{"type": "none"}` without scaling), as loaders compare it."""
        return {key: value for key, value in asdict(self).items() if value is not None}


# Why a target refuses a RoPE scaling kind: {kind: message}, `{max_seq_len}` filled in.
DYNAMIC_NTK_LIMIT = (
    "dynamic NTK scaling changes the frequencies only past max_position_embeddings "
    "({max_seq_len}), where this target's RoPE tables and KV cache end, so it would never "
    "apply; build without rope_scaling (the same model at every position up to {max_seq_len})"
)


def refuse_rope_scaling(spec: ModelSpec, refused: Mapping[str, str]) -> None:
    """OptionError naming the target's limit when it cannot run spec.rope_scaling's kind (the
    compiler prefixes the target's name)."""
    kind = spec.rope_scaling.type if spec.rope_scaling else "none"
    if kind in refused:
        reason = refused[kind].format(max_seq_len=spec.max_seq_len)
        raise OptionError(f"rope_scaling type {kind!r} is not supported: {reason}")


@dataclass(frozen=True)
class SpecContext(TemplateContext):
    """The spec's values as every target's templates print them."""

    name: str
    param_count_text: str  # 6,738,415,616
    vocab_size: int
    dim: int
    n_layers: int
    last_layer: int  # n_layers - 1
    n_heads: int
    n_kv_heads: int
    head_dim: int
    head_dim_is_derived: bool  # head_dim == dim // n_heads: emitted as that property, not a field
    attention_bias: bool  # q/k/v/o projections add biases (emitted only when true)
    mlp_bias: bool  # gate/up/down projections add biases (emitted only when true)
    hidden_dim: int  # spec.ffn_dim
    norm_eps: float
    rope_theta: float
    rope_scaling: RopeScalingContext
    max_seq_len: int
    tie_embeddings: bool
    dtype: str  # the build's dtype: --dtype, else the spec's
    init_std: float
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...] | None
    pad_token_id: int | None

    @classmethod
    def of(cls, spec: ModelSpec, options: BuildOptions) -> SpecContext:
        return cls(
            name=spec.name,
            param_count_text=f"{spec.param_count:,}",
            vocab_size=spec.vocab_size,
            dim=spec.dim,
            n_layers=spec.n_layers,
            last_layer=spec.n_layers - 1,
            n_heads=spec.n_heads,
            n_kv_heads=spec.n_kv_heads,
            head_dim=spec.head_dim,
            head_dim_is_derived=spec.head_dim_is_derived,
            attention_bias=spec.attention_bias,
            mlp_bias=spec.mlp_bias,
            hidden_dim=spec.ffn_dim,
            norm_eps=spec.norm_eps,
            rope_theta=spec.rope_theta,
            rope_scaling=RopeScalingContext.of(spec),
            max_seq_len=spec.max_seq_len,
            tie_embeddings=spec.tie_embeddings,
            dtype=options.dtype_for(spec).value,
            init_std=spec.init_std,
            bos_token_id=spec.bos_token_id,
            eos_token_ids=spec.eos_token_id,
            pad_token_id=spec.pad_token_id,
        )


@dataclass(frozen=True)
class Rendered:
    """A file produced by rendering `template` (relative to the backend's template folder, or
    `shared/...` for the shared blocks) with the variables of `context`."""

    path: str
    template: str
    context: TemplateContext


@dataclass(frozen=True)
class Raw:
    """A file whose bytes the backend produced itself (e.g. a serialised ONNX graph)."""

    path: str
    content: bytes


Artifact = Rendered | Raw


@dataclass(frozen=True)
class NoContext(TemplateContext):
    """No variables: the template is emitted as it reads (it holds no Jinja syntax)."""


# backends/checked_reader.py emitted verbatim beside every loader, so the emitted code refuses
# exactly the checkpoints the compiler refuses.
CHECKED_READER = Rendered(
    "checkpoint_files.py", f"{COMPILER_PREFIX}/checked_reader.py", NoContext()
)


def check_quantize(spec: ModelSpec, options: BuildOptions) -> None:
    """Raises OptionError (naming the numbers) when `options.quantize`/`group_size` cannot apply
    to `spec`: a group size without int4, or one that is not supported or does not divide the
    inputs of every quantized weight (dim, heads x head_dim, ffn_dim)."""
    if options.group_size is not None and options.quantize != "int4":
        raise OptionError("--group-size applies to --quantize int4 only")
    if options.quantize != "int4":
        return
    for weight in present(spec):
        if weight.quantized:
            try:
                check_group_size(weight.shape(spec)[1], options.int4_group_size)
            except ValueError as exc:
                raise OptionError(f"{exc} of {weight.hf.format(i=0)}") from None


# backends/quantize.py emitted verbatim beside every quantized model: the formats' one definition.
QUANTIZER = Rendered("quantize.py", f"{COMPILER_PREFIX}/quantize.py", NoContext())


class Backend(Protocol):
    name: str
    description: str
    template_dir: Path
    # Which BuildOptions fields besides dtype this target reads; others given are an error.
    accepts: frozenset[str]
    filters: Mapping[str, Callable[..., Any]]

    def plan(self, spec: ModelSpec, options: BuildOptions) -> list[Artifact]: ...
