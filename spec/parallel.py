"""How a model is split over devices: a mesh and MaxText-style logical-axis rules.

Every weight dimension has a logical axis (`vocab`, `embed`, `heads`, `kv_heads`, `head_dim`,
`mlp`, `layers`); the rules map each logical axis to mesh axes (`data`, `fsdp`, `tensor`), or to
none (replicated). Backends read one `ParallelSpec`: the torch target turns it into a
tensor-parallel plan plus FSDP2, the JAX target into `PartitionSpec`s.

A flattened dimension (q_proj's output is heads x head_dim) carries its major logical axis:
sharding `heads` in contiguous blocks is sharding the flattened dimension in contiguous blocks.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from .model import DType, ModelSpec, _Frozen
from .weights import WEIGHTS, LogicalAxis, axis_sizes, present


class MeshAxis(str, Enum):
    """Axes of the device mesh, outermost first."""

    data = "data"  # replicas: each holds whole (or fsdp-sharded) weights, sees its own batch rows
    fsdp = "fsdp"  # weights, gradients and optimizer state sharded; batch rows split too
    tensor = "tensor"  # Megatron-style: heads, FFN columns and vocabulary split inside a layer


# Logical axes the tensor axis may shard: the torch plan splits exactly these (Megatron-style).
TENSOR_SHARDABLE = frozenset(
    {LogicalAxis.vocab, LogicalAxis.heads, LogicalAxis.kv_heads, LogicalAxis.mlp}
)

_L = LogicalAxis


def logical_axes(
    model: ModelSpec, *, split_heads: bool = False, stacked: bool = False
) -> dict[str, tuple[LogicalAxis, ...]]:
    """Logical axes of every weight of `model`, keyed by Hugging Face name.

    `split_heads`: attention projections as 3-D per-head views (adds `head_dim`).
    `stacked`: decoder-layer weights once, keyed by their suffix (`self_attn.q_proj.weight`),
    with a leading `layers` axis, as a scanned model holds them.
    """
    axes: dict[str, tuple[LogicalAxis, ...]] = {}
    for weight in present(model):
        value = weight.head_axes if split_heads else weight.axes
        if not weight.per_layer:
            axes[weight.hf] = value
        elif stacked:
            axes[weight.hf.removeprefix("model.layers.{i}.")] = (_L.layers, *value)
        else:
            axes |= {weight.hf.format(i=i): value for i in range(model.n_layers)}
    return axes


def logical_sizes(model: ModelSpec, batch_size: int | None = None) -> dict[LogicalAxis, int]:
    """The length of each logical axis for `model` (batch only when given)."""
    sizes = axis_sizes(model)
    if batch_size is not None:
        sizes[_L.batch] = batch_size
    return sizes


MeshAxes = Annotated[
    tuple[MeshAxis, ...],
    Field(description="Mesh axes a logical axis is split over, outermost first; [] replicates."),
]


class MeshShape(_Frozen):
    """Degree of each mesh axis; their product is the number of devices."""

    data: Annotated[int, Field(gt=0, le=2**20, description="Replica groups (batch split).")] = 1
    fsdp: Annotated[
        int,
        Field(ge=-1, le=2**20, description="Weight-sharding degree; -1: every device left over."),
    ] = -1
    tensor: Annotated[int, Field(gt=0, le=2**20, description="Tensor-parallel degree.")] = 1

    @field_validator("fsdp")
    @classmethod
    def _fsdp_not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("fsdp must be positive, or -1 for every device left over")
        return value

    def degree(self, axes: tuple[MeshAxis, ...]) -> int | None:
        """Product of the degrees of `axes`; None when one of them is -1 (known only at run time)."""
        product = 1
        for axis in axes:
            value = getattr(self, axis.value)
            if value == -1:
                return None
            product *= value
        return product


class AxisRules(_Frozen):
    """Logical axis -> mesh axes (MaxText's `logical_axis_rules`); omitted axes keep these defaults."""

    vocab: MeshAxes = (MeshAxis.tensor,)
    embed: MeshAxes = (MeshAxis.fsdp,)
    heads: MeshAxes = (MeshAxis.tensor,)
    kv_heads: MeshAxes = (MeshAxis.tensor,)
    head_dim: MeshAxes = ()
    mlp: MeshAxes = (MeshAxis.tensor,)
    layers: MeshAxes = ()
    batch: MeshAxes = (MeshAxis.data, MeshAxis.fsdp)

    @field_validator("*", mode="before")
    @classmethod
    def _as_tuple(cls, value: Any) -> Any:
        """`tensor`, `[data, fsdp]` and null (replicated) are all accepted."""
        if value is None:
            return ()
        if isinstance(value, str | MeshAxis):
            return (value,)
        return value

    @field_validator("*")
    @classmethod
    def _distinct(cls, value: tuple[MeshAxis, ...]) -> tuple[MeshAxis, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"a mesh axis appears twice in {[a.value for a in value]}")
        return value

    def of(self, axis: LogicalAxis) -> tuple[MeshAxis, ...]:
        return getattr(self, axis.value)


class ParallelSpec(_Frozen):
    """A device mesh, the rules placing every weight on it, and the torch-only switches."""

    mesh: MeshShape = MeshShape()
    rules: AxisRules = AxisRules()
    sequence_parallel: bool = Field(
        default=False,
        description="Split norms and residuals along the sequence over the tensor axis "
        "(the sequence length must divide by the tensor degree).",
    )
    param_dtype: DType | None = Field(
        default=None,
        description="FSDP mixed precision: dtype of the gathered parameters; null keeps theirs.",
    )
    reduce_dtype: DType | None = Field(
        default=None,
        description="FSDP mixed precision: dtype gradients are reduced in; null: param_dtype.",
    )

    @model_validator(mode="after")
    def _check_rules(self) -> ParallelSpec:
        for axis in LogicalAxis:
            mesh_axes = self.rules.of(axis)
            if MeshAxis.tensor in mesh_axes and axis not in TENSOR_SHARDABLE:
                allowed = ", ".join(sorted(a.value for a in TENSOR_SHARDABLE))
                raise ValueError(
                    f"rules.{axis.value}: the tensor axis splits only {allowed} (Megatron-style)"
                )
            if MeshAxis.data in mesh_axes and axis is not LogicalAxis.batch:
                raise ValueError(
                    f"rules.{axis.value}: the data axis replicates weights; "
                    "shard weights over fsdp or tensor"
                )
        if self.rules.heads != self.rules.kv_heads:
            raise ValueError(
                f"rules.heads {[a.value for a in self.rules.heads]} and rules.kv_heads "
                f"{[a.value for a in self.rules.kv_heads]} must match: each device must hold "
                "the key/value heads of its query heads"
            )
        if not any(self.shards(axis, "tensor") for axis in TENSOR_SHARDABLE):
            raise ValueError("rules: the tensor axis splits nothing; put vocab, heads or mlp on it")
        if self.sequence_parallel:
            whole = [a.value for a in (_L.vocab, _L.heads, _L.mlp) if not self.shards(a, "tensor")]
            if whole:
                raise ValueError(
                    f"sequence_parallel needs rules {', '.join(whole)} on the tensor axis "
                    "(the sequence is gathered and re-split around split layers only)"
                )
        for weight in WEIGHTS:
            name, axes = weight.hf, weight.head_axes
            used = [mesh for axis in axes for mesh in self.rules.of(axis)]
            if len(set(used)) != len(used):
                raise ValueError(
                    f"rules place two dimensions of {name} {[a.value for a in axes]} on the "
                    f"same mesh axis ({', '.join(a.value for a in used)})"
                )
        return self

    def shards(self, axis: LogicalAxis | str, mesh_axis: MeshAxis | str) -> bool:
        """Whether the rules split logical `axis` over `mesh_axis`."""
        return MeshAxis(mesh_axis) in self.rules.of(LogicalAxis(axis))

    def partition(self, axes: tuple[LogicalAxis, ...]) -> tuple[tuple[str, ...] | None, ...]:
        """Mesh axes of each dimension (a `PartitionSpec`'s entries; None: replicated)."""
        return tuple(tuple(a.value for a in self.rules.of(axis)) or None for axis in axes)

    def validate_for(self, model: ModelSpec, batch_size: int | None = None) -> ParallelSpec:
        """Check that every split divides evenly for `model` (and `batch_size` rows); return self.

        Raises a pydantic ValidationError with one entry per problem, located at the mesh axis
        and naming both numbers.
        """
        problems: list[InitErrorDetails] = []
        for axis, size in logical_sizes(model, batch_size).items():
            mesh_axes = self.rules.of(axis)
            degree = self.mesh.degree(mesh_axes)
            if degree is None:
                # fsdp = -1: check what is known now; the emitted code checks the rest at run time.
                degree = self.mesh.degree(tuple(a for a in mesh_axes if a is not MeshAxis.fsdp))
            if degree and size % degree:
                names = " x ".join(a.value for a in mesh_axes)
                message = f"{axis.value} ({size}) is not divisible by the {names} degree ({degree})"
                problems.append(
                    InitErrorDetails(
                        type=PydanticCustomError("indivisible", message),
                        loc=("mesh", "*".join(a.value for a in mesh_axes)),
                        input=degree,
                    )
                )
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self


def load_parallel_spec(path: str | Path) -> ParallelSpec:
    """Read a ParallelSpec from YAML or JSON (raises SpecFormatError or ValidationError)."""
    from .io import _read_mapping

    return ParallelSpec.model_validate(_read_mapping(Path(path)))
