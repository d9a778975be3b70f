"""What the JAX target's sharding.py prints: mesh degrees and a PartitionSpec for every parameter.

The PartitionSpecs come from the parallel spec's rules applied to the logical axes of every
weight (the weight table, `spec.weights`), turned into our layout: matrices are stored
(in, out), the transpose of Hugging Face's (out, in), with the layers stacked in front.
"""

from __future__ import annotations

from typing import Any

from spec import ModelSpec, ParallelSpec
from spec.weights import BY_KEY, CONFIG_ATTRIBUTES, LogicalAxis, WeightInfo, present

from ..base import BuildOptions

# Logical axes the weights use (the stacked layers too), with the Config attribute of each length.
WEIGHT_SIZES = {
    axis.value: attribute
    for axis, attribute in CONFIG_ATTRIBUTES.items()
    if axis is not LogicalAxis.head_dim  # never split by a default rule; checked with heads
}


def partition_text(entries: tuple[tuple[str, ...] | None, ...]) -> str:
    """`P(None, "fsdp", "tensor")`: a PartitionSpec as Python source, from its entries."""
    printed = []
    for mesh_axes in entries:
        if mesh_axes is None:
            printed.append("None")
        elif len(mesh_axes) == 1:
            printed.append(f'"{mesh_axes[0]}"')
        else:
            printed.append("(" + ", ".join(f'"{axis}"' for axis in mesh_axes) + ")")
    return "P(" + ", ".join(printed) + ")"


def axes_text(axes: tuple[LogicalAxis, ...]) -> str:
    """`layers, embed, heads` (a one-axis tuple keeps its comma)."""
    return ", ".join(axis.value for axis in axes) + ("," if len(axes) == 1 else "")


def param_entry(parallel: ParallelSpec, weight: WeightInfo, quantized: bool) -> dict[str, str]:
    """One params entry: the weight's Hugging Face axes in our layout (matrices transposed to
    (in, out) where the table says so), with the stacked `layers` axis in front of layer weights.
    A quantized matrix (int8 `q` laid out as the float one) adds its scale's partition: one
    scale per output, so the scale is split exactly as q's output axis is."""
    axes = weight.axes
    if weight.jax_transposed:
        axes = (axes[1], axes[0])
    layers = (LogicalAxis.layers,) if weight.per_layer else ()
    entry = {
        "name": weight.key,
        "partition": partition_text(parallel.partition((*layers, *axes))),
        "axes": axes_text((*layers, *axes)),
    }
    if quantized and weight.quantized:
        scale_axes = (*layers, axes[-1])
        entry["scale_partition"] = partition_text(parallel.partition(scale_axes))
        entry["scale_axes"] = axes_text(scale_axes)
    return entry


def sharded_weights(spec: ModelSpec, quantized: bool) -> tuple[WeightInfo, ...]:
    """The params' weights: those the model has, and a quantized build's head even when tied
    (quantized from a copy of the embedding, which stays float for the lookup)."""
    weights = present(spec)
    if quantized and spec.tie_embeddings:
        weights = (*weights, BY_KEY["lm_head"])
    return weights


def sharding_context(spec: ModelSpec, options: BuildOptions) -> dict[str, Any]:
    """The parallel spec (given or default) as sharding.py.jinja prints it."""
    parallel = (options.parallel or ParallelSpec()).validate_for(spec)
    rules = {axis.value: [mesh.value for mesh in parallel.rules.of(axis)] for axis in LogicalAxis}
    batch, vocab = parallel.partition((LogicalAxis.batch, LogicalAxis.vocab))
    training = spec.training
    quantized = options.quantize is not None
    weights = sharded_weights(spec, quantized)
    return {
        "mesh": parallel.mesh.model_dump(),
        "rules": rules,
        "global_params": [param_entry(parallel, w, quantized) for w in weights if not w.per_layer],
        "layer_params": [param_entry(parallel, w, quantized) for w in weights if w.per_layer],
        "batch_partition": partition_text((batch,)),
        "logits_partition": partition_text((batch, None, vocab)),  # (batch, seq, vocab)
        "rules_text": [
            f"{axis}: {' x '.join(mesh) or 'replicated'}" for axis, mesh in rules.items()
        ],
        "split_sizes": [
            (axis, attribute, tuple(rules[axis]))
            for axis, attribute in WEIGHT_SIZES.items()
            if rules[axis]
        ],
        "training": {
            "peak_lr": training.peak_lr,
            "min_lr_ratio": training.min_lr_ratio,
            "warmup_steps": training.warmup_steps,
            "total_steps": training.total_steps,
            "beta1": training.beta1,
            "beta2": training.beta2,
            "adam_eps": training.adam_eps,
            "weight_decay": training.weight_decay,
            "grad_clip": training.grad_clip,
        },
    }
