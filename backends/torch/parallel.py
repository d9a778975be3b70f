"""What the torch target's parallel.py prints: the mesh degrees and the tensor-parallel plan.

The plan is the weight table's (`spec.weights`): each weight's tensor-parallel role, applied to
its module when the parallel spec's rules put the axis it splits on the tensor mesh axis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from spec import ModelSpec, ParallelSpec
from spec.parallel import TENSOR_SHARDABLE
from spec.weights import CONFIG_ATTRIBUTES, WEIGHTS, LogicalAxis, TensorParallel, WeightInfo

from ..base import BuildOptions, TemplateContext

_L = LogicalAxis
# What the runtime check and the docstring call each axis the tensor axis can split.
_SPLIT_NAMES = {_L.vocab: "vocabulary", _L.heads: "heads", _L.kv_heads: "key/value heads"}
_SPLIT_NAMES |= {_L.mlp: "FFN columns"}
# Megatron's layouts: the embedding takes replicated ids and feeds the residual stream, the
# head reads it and returns whole logits; inside a block, row-wise layers feed the residual.
_STYLES = {
    (TensorParallel.colwise, False): "ColwiseParallel(input_layouts=residual, output_layouts=Replicate())",
    (TensorParallel.rowwise, False): "RowwiseParallel(input_layouts=Replicate(), output_layouts=residual)",
    (TensorParallel.colwise, True): "ColwiseParallel()",
    (TensorParallel.rowwise, True): "RowwiseParallel(output_layouts=residual)",
}  # fmt: skip


def split_axis(weight: WeightInfo) -> LogicalAxis | None:
    """The axis of `weight` that tensor parallelism splits (None: replicated)."""
    return next((axis for axis in weight.axes if axis in TENSOR_SHARDABLE), None)


def module_path(weight: WeightInfo) -> str:
    """`self_attn.q_proj` (inside a decoder layer) or `model.embed_tokens`: the module owning it."""
    return weight.hf.removesuffix(".weight").removeprefix("model.layers.{i}.")


def plan_rows(parallel: ParallelSpec) -> list[tuple[WeightInfo, str]]:
    """(weight, ParallelStyle source) for every weight the rules split, in table order."""
    return [
        (weight, _STYLES[weight.tensor_parallel, weight.per_layer])
        for weight in WEIGHTS
        if weight.bias_flag is None  # a bias follows its module's style (torch shards it alike)
        and weight.tensor_parallel is not TensorParallel.replicated
        and parallel.shards(split_axis(weight), "tensor")
    ]


def _order(weight: WeightInfo) -> int:
    """Docstring order: attention, FFN, vocabulary."""
    return (_L.heads, _L.kv_heads, _L.mlp, _L.vocab).index(split_axis(weight))


@dataclass(frozen=True)
class ParallelContext(TemplateContext):
    """What parallel.py.jinja prints: mesh degrees, which axes the tensor mesh splits, the
    text naming the modules split column- and row-wise, and the plan from the weight table."""

    mesh: Mapping[str, int]  # data, fsdp, tensor
    shard_vocab: bool
    shard_heads: bool
    shard_mlp: bool
    sequence_parallel_able: bool  # all three split: norms and residuals can split the sequence
    sequence_parallel: bool
    tensor_split_text: str
    colwise_text: str
    rowwise_text: str
    global_plan: list[tuple[str, str]]  # (module path, ParallelStyle source) outside the layers
    layer_plan: list[tuple[str, str]]  # the same inside each decoder layer
    global_norms: list[str]
    layer_norms: list[str]
    tensor_sizes: list[tuple[str, str]]  # (name in the runtime check, ModelArgs attribute)
    mixed_precision: bool
    param_dtype: str | None
    reduce_dtype: str | None


def parallel_context(spec: ModelSpec, options: BuildOptions) -> ParallelContext:
    """The parallel spec (given or default) as parallel.py.jinja prints it."""
    parallel = (options.parallel or ParallelSpec()).validate_for(spec)
    shard = {axis: parallel.shards(axis, "tensor") for axis in _SPLIT_NAMES}
    rows = plan_rows(parallel)
    by_order = sorted((weight for weight, _ in rows), key=_order)
    split = [_SPLIT_NAMES[axis] for axis in (_L.heads, _L.mlp, _L.vocab) if shard[axis]]
    split_text = ", ".join(split[:-1]) + " and " + split[-1] if len(split) > 1 else split[0]
    param_dtype = parallel.param_dtype
    reduce_dtype = parallel.reduce_dtype or param_dtype
    return ParallelContext(
        mesh=parallel.mesh.model_dump(),
        shard_vocab=shard[_L.vocab],
        shard_heads=shard[_L.heads],
        shard_mlp=shard[_L.mlp],
        sequence_parallel_able=all(shard[a] for a in (_L.vocab, _L.heads, _L.mlp)),
        sequence_parallel=parallel.sequence_parallel,
        tensor_split_text=split_text,
        colwise_text=", ".join(
            w.module for w in by_order if w.tensor_parallel is TensorParallel.colwise
        ),
        rowwise_text=", ".join(
            w.module for w in by_order if w.tensor_parallel is TensorParallel.rowwise
        ),
        global_plan=[(module_path(w), style) for w, style in rows if not w.per_layer],
        layer_plan=[(module_path(w), style) for w, style in rows if w.per_layer],
        global_norms=[module_path(w) for w in WEIGHTS if _is_norm(w) and not w.per_layer],
        layer_norms=[module_path(w) for w in WEIGHTS if _is_norm(w) and w.per_layer],
        tensor_sizes=[
            (CONFIG_ATTRIBUTES[axis], CONFIG_ATTRIBUTES[axis])
            for axis in _SPLIT_NAMES
            if shard[axis]
        ],
        mixed_precision=param_dtype is not None or reduce_dtype is not None,
        param_dtype=param_dtype.value if param_dtype else None,
        reduce_dtype=reduce_dtype.value if reduce_dtype else None,
    )


def _is_norm(weight: WeightInfo) -> bool:
    """Norms hold no split axis; under sequence parallelism they run on a slice of the sequence."""
    return weight.tensor_parallel is TensorParallel.replicated and weight.bias_flag is None
