"""What the torch target's parallel.py prints: the mesh degrees and the tensor-parallel plan."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from spec import ModelSpec, ParallelSpec

from ..base import BuildOptions, TemplateContext

# Logical axis -> (what the runtime check calls it, ModelArgs attribute, modules it splits).
_TENSOR_SPLITS = {
    "vocab": ("vocab_size", "vocab_size", "vocabulary"),
    "heads": ("n_heads", "n_heads", "heads"),
    "kv_heads": ("n_kv_heads", "n_kv_heads", "key/value heads"),
    "mlp": ("hidden_dim", "hidden_dim", "FFN columns"),
}


@dataclass(frozen=True)
class ParallelContext(TemplateContext):
    """What parallel.py.jinja prints: mesh degrees, which axes the tensor mesh splits, and the
    text naming the modules split column- and row-wise."""

    mesh: Mapping[str, int]  # data, fsdp, tensor
    shard_vocab: bool
    shard_heads: bool
    shard_mlp: bool
    sequence_parallel_able: bool  # all three split: norms and residuals can split the sequence
    sequence_parallel: bool
    tensor_split_text: str
    colwise_text: str
    rowwise_text: str
    tensor_sizes: tuple[tuple[str, str], ...]  # (name in the runtime check, ModelArgs attribute)
    mixed_precision: bool
    param_dtype: str | None
    reduce_dtype: str | None


def parallel_context(spec: ModelSpec, options: BuildOptions) -> ParallelContext:
    """The parallel spec (given or default) as parallel.py.jinja prints it."""
    parallel = (options.parallel or ParallelSpec()).validate_for(spec)
    shard = {axis: parallel.shards(axis, "tensor") for axis in _TENSOR_SPLITS}
    colwise, rowwise = [], []
    if shard["heads"]:
        colwise.append("q_proj, k_proj, v_proj")
        rowwise.append("o_proj")
    if shard["mlp"]:
        colwise.append("gate_proj, up_proj")
        rowwise.append("down_proj")
    if shard["vocab"]:
        colwise.append("lm_head")
        rowwise.append("embed_tokens")
    split = [_TENSOR_SPLITS[axis][2] for axis in ("heads", "mlp", "vocab") if shard[axis]]
    split_text = ", ".join(split[:-1]) + " and " + split[-1] if len(split) > 1 else split[0]
    param_dtype = parallel.param_dtype
    reduce_dtype = parallel.reduce_dtype or param_dtype
    return ParallelContext(
        mesh=parallel.mesh.model_dump(),
        shard_vocab=shard["vocab"],
        shard_heads=shard["heads"],
        shard_mlp=shard["mlp"],
        sequence_parallel_able=shard["vocab"] and shard["heads"] and shard["mlp"],
        sequence_parallel=parallel.sequence_parallel,
        tensor_split_text=split_text,
        colwise_text=", ".join(colwise),
        rowwise_text=", ".join(rowwise),
        tensor_sizes=tuple(_TENSOR_SPLITS[axis][:2] for axis in _TENSOR_SPLITS if shard[axis]),
        mixed_precision=param_dtype is not None or reduce_dtype is not None,
        param_dtype=param_dtype.value if param_dtype else None,
        reduce_dtype=reduce_dtype.value if reduce_dtype else None,
    )
