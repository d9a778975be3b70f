"""What the JAX target's sharding.py prints: mesh degrees and a PartitionSpec for every parameter.

The PartitionSpecs come from the parallel spec's rules applied to the logical axes of every
weight (`spec.logical_axes(model, stacked=True)`), turned into our layout: matrices are stored
(in, out), the transpose of Hugging Face's (out, in), with the layers stacked in front.
"""

from __future__ import annotations

from typing import Any

from spec import ModelSpec, ParallelSpec, logical_axes
from spec.parallel import LogicalAxis

from ..base import BuildOptions

# Our params pytree names -> Hugging Face names (decoder-layer weights: their suffix).
GLOBAL_NAMES = {
    "embed": "model.embed_tokens.weight",
    "norm": "model.norm.weight",
    "lm_head": "lm_head.weight",
}
LAYER_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "mlp_norm": "post_attention_layernorm.weight",
    "w_gate": "mlp.gate_proj.weight",
    "w_up": "mlp.up_proj.weight",
    "w_down": "mlp.down_proj.weight",
}
# Logical axes the weights use, with the Config attribute holding each one's length.
WEIGHT_SIZES = {
    "vocab": "vocab_size",
    "embed": "dim",
    "heads": "n_heads",
    "kv_heads": "n_kv_heads",
    "mlp": "hidden_dim",
    "layers": "n_layers",
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


def param_entry(
    parallel: ParallelSpec, name: str, hf_axes: tuple[LogicalAxis, ...], *, stacked: bool
) -> dict[str, str]:
    """One params entry: Hugging Face axes in our layout, where every matrix but the embedding
    is transposed to (in, out)."""
    axes = hf_axes
    if len(hf_axes) == 2 + stacked and name != "embed":
        axes = (*hf_axes[:-2], hf_axes[-1], hf_axes[-2])
    return {
        "name": name,
        "partition": partition_text(parallel.partition(axes)),
        "axes": ", ".join(axis.value for axis in axes) + ("," if len(axes) == 1 else ""),
    }


def sharding_context(spec: ModelSpec, options: BuildOptions) -> dict[str, Any]:
    """The parallel spec (given or default) as sharding.py.jinja prints it."""
    parallel = (options.parallel or ParallelSpec()).validate_for(spec)
    hf_axes = logical_axes(spec, stacked=True)
    rules = {axis.value: [mesh.value for mesh in parallel.rules.of(axis)] for axis in LogicalAxis}
    batch, vocab = parallel.partition((LogicalAxis.batch, LogicalAxis.vocab))
    training = spec.training
    return {
        "mesh": parallel.mesh.model_dump(),
        "rules": rules,
        "global_params": [
            param_entry(parallel, name, hf_axes[hf_name], stacked=False)
            for name, hf_name in GLOBAL_NAMES.items()
            if hf_name in hf_axes
        ],
        "layer_params": [
            param_entry(parallel, name, hf_axes[hf_name], stacked=True)
            for name, hf_name in LAYER_NAMES.items()
        ],
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
