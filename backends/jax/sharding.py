"""What the JAX target's sharding.py prints: mesh degrees and a PartitionSpec for every parameter.

The PartitionSpecs come from the parallel spec's rules applied to the logical axes of every
weight (the weight table, `spec.weights`), turned into our layout: matrices are stored
(in, out), the transpose of Hugging Face's (out, in), with the layers stacked in front.
"""

from __future__ import annotations

from typing import Any

from spec import ModelSpec, ParallelSpec
from spec.weights import CONFIG_ATTRIBUTES, LogicalAxis, WeightInfo, present

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


def param_entry(parallel: ParallelSpec, weight: WeightInfo) -> dict[str, str]:
    """One params entry: the weight's Hugging Face axes in our layout (matrices transposed to
    (in, out) where the table says so), with the stacked `layers` axis in front of layer weights."""
    axes = weight.axes
    if weight.jax_transposed:
        axes = (axes[1], axes[0])
    if weight.per_layer:
        axes = (LogicalAxis.layers, *axes)
    return {
        "name": weight.key,
        "partition": partition_text(parallel.partition(axes)),
        "axes": ", ".join(axis.value for axis in axes) + ("," if len(axes) == 1 else ""),
    }


def sharding_context(spec: ModelSpec, options: BuildOptions) -> dict[str, Any]:
    """The parallel spec (given or default) as sharding.py.jinja prints it."""
    parallel = (options.parallel or ParallelSpec()).validate_for(spec)
    rules = {axis.value: [mesh.value for mesh in parallel.rules.of(axis)] for axis in LogicalAxis}
    batch, vocab = parallel.partition((LogicalAxis.batch, LogicalAxis.vocab))
    training = spec.training
    return {
        "mesh": parallel.mesh.model_dump(),
        "rules": rules,
        "global_params": [param_entry(parallel, w) for w in present(spec) if not w.per_layer],
        "layer_params": [param_entry(parallel, w) for w in present(spec) if w.per_layer],
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
