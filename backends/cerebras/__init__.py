"""The Cerebras target: Model Zoo params YAMLs (trainer and legacy layouts), a Model Zoo-named
PyTorch model with interleaved RoPE, a cstorch training loop and an HF <-> Cerebras converter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import yaml

from spec import DType, ModelSpec, to_hf_config

from ..base import (
    CHECKED_READER,
    Artifact,
    BuildOptions,
    OptionError,
    Rendered,
    SpecContext,
    TemplateContext,
    refuse_rope_scaling,
)
from ..tables import TableContext
from .mapping import CheckpointLayout

# Schedule and logging cadence of the Model Zoo's reference LLaMA files, capped by the run length.
CHECKPOINT_EVERY = 10_000
LOG_EVERY = 100
EVAL_STEPS = 100
# Input workers per CS-X: LLM training is compute-bound, one worker keeps a system fed.
NUM_WORKERS_PER_CSX = 1


def yaml_scalar(value: Any) -> str:
    """A value as YAML 1.1 reads it back (PyYAML parses `3e-05` as a string; `3.0e-05` is a float)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1000)
    return text.removesuffix("\n").removesuffix("\n...")


def clean_float(value: float) -> float:
    """Drop binary noise from products like 3e-4 * 0.1 (= 3.0000000000000004e-05)."""
    return float(f"{value:.12g}")


def tokens_text(tokens: int) -> str:
    """1000000000000 -> '1.0T tokens', small counts in full."""
    for unit, scale in (("T", 10**12), ("B", 10**9)):
        if tokens >= scale:
            return f"{tokens / scale:.1f}{unit} tokens"
    return f"{tokens:,} tokens"


@dataclass(frozen=True)
class NamesContext(TemplateContext):
    """The weight table (HF and Model Zoo names), the Model Zoo's second names of shared
    tensors, and the HF config convert.py writes."""

    table: TableContext
    cs_aliases: Mapping[str, str]  # Model Zoo alias -> the name owning the tensor
    hf_config: Mapping[str, Any]


@dataclass(frozen=True)
class ModelContext(TemplateContext):
    """model.py and convert.py."""

    spec: SpecContext
    names: NamesContext


@dataclass(frozen=True)
class TrainContext(TemplateContext):
    """train.py: the model plus the params YAML it reads and its sequence length."""

    spec: SpecContext
    names: NamesContext
    config: str  # params_<name>.yaml
    seq_len: int


def model_context(spec: ModelSpec, options: BuildOptions) -> ModelContext:
    """The spec's values as model.py and convert.py print them."""
    names = NamesContext(
        table=TableContext.of(spec, 'SIZES["{}"]'),
        cs_aliases=CheckpointLayout.of(spec).cs_aliases(),
        hf_config=to_hf_config(spec) | {"torch_dtype": options.dtype_for(spec).value},
    )
    return ModelContext(SpecContext.of(spec, options), names)


@dataclass(frozen=True)
class TrainingContext(TemplateContext):
    """spec.training as the params YAMLs and README print it, the arithmetic done here."""

    batch_size: int
    seq_len: int
    tokens_per_step: int  # batch_size x seq_len
    tokens_text: str
    steps_arithmetic: str
    total_steps: int
    warmup_steps: int
    decay_steps: int
    peak_lr: float
    end_lr: float
    min_lr_percent: str
    betas: tuple[float, float]
    adam_eps: float
    weight_decay: float
    grad_clip: float
    mixed_precision: bool
    fp16_type: str
    checkpoint_steps: int
    log_steps: int
    eval_steps: int


def training_context(spec: ModelSpec) -> TrainingContext:
    """Optimizer, schedule, batch and run length from spec.training, with the arithmetic shown."""
    t = spec.training
    decay_steps = t.total_steps - t.warmup_steps
    if decay_steps <= 0:
        raise OptionError(
            f"training.warmup_steps ({t.warmup_steps}) must be below the run's "
            f"{t.total_steps} steps (total_tokens / batch_tokens)"
        )
    if t.precision is DType.float16:
        raise OptionError(
            "training.precision float16: train.py does not scale the loss, which float16's "
            "narrow exponent range needs; use bfloat16 (or cbfloat16 through cszoo fit)"
        )
    mixed = t.precision is not DType.float32
    return TrainingContext(
        batch_size=t.batch_size,
        seq_len=t.seq_len,
        tokens_per_step=t.batch_size * t.seq_len,
        tokens_text=tokens_text(t.total_tokens),
        steps_arithmetic=(
            f"{t.total_tokens:,} / ({t.batch_size} x {t.seq_len}) = "
            f"{t.total_tokens / t.batch_tokens:,.2f}, rounded up"
        ),
        total_steps=t.total_steps,
        warmup_steps=t.warmup_steps,
        decay_steps=decay_steps,
        peak_lr=t.peak_lr,
        end_lr=clean_float(t.peak_lr * t.min_lr_ratio),
        min_lr_percent=f"{t.min_lr_ratio * 100:g}%",
        betas=(t.beta1, t.beta2),
        adam_eps=t.adam_eps,
        weight_decay=t.weight_decay,
        grad_clip=t.grad_clip,
        mixed_precision=mixed,
        fp16_type=t.precision.value,
        checkpoint_steps=min(CHECKPOINT_EVERY, t.total_steps),
        log_steps=min(LOG_EVERY, max(1, t.total_steps // 100)),
        eval_steps=EVAL_STEPS,
    )


@dataclass(frozen=True)
class ClusterContext(TemplateContext):
    """How many CS-X systems a run uses and each one's share of a batch."""

    num_csx: int
    num_workers_per_csx: int
    batch_per_csx: int
    num_csx_comment: str


def cluster_context(spec: ModelSpec, options: BuildOptions) -> ClusterContext:
    """Weight-streaming scale-out: how many CS-X systems, and each one's share of a batch.

    Weight streaming keeps the weights in MemoryX and streams them to every system, so more
    systems only ever mean data parallelism: num_csx = the parallel spec's data x fsdp degree
    (both split the batch; the sharding that fsdp adds is what MemoryX does anyway; fsdp -1,
    "every device left over", counts as 1). Tensor parallelism has no equivalent: refused.
    """
    batch = spec.training.batch_size
    source = ""
    num_csx = 1
    if options.parallel is not None:
        mesh = options.parallel.mesh
        if mesh.tensor > 1:
            raise OptionError(
                f"tensor parallelism (mesh.tensor = {mesh.tensor}) has no Cerebras weight-streaming "
                "equivalent (each CS-X runs whole layers; weights stream from MemoryX): set "
                "mesh.tensor to 1 and scale out with data x fsdp, which becomes num_csx"
            )
        fsdp = max(mesh.fsdp, 1)
        num_csx = mesh.data * fsdp
        source = f"data {mesh.data} x fsdp {fsdp} from the parallel spec; "
    if batch % num_csx:
        raise OptionError(
            f"the global batch ({batch} sequences, training.batch_size) is not divisible by "
            f"num_csx ({num_csx}): each CS-X system must take an equal share"
        )
    per_csx = batch // num_csx
    return ClusterContext(
        num_csx=num_csx,
        num_workers_per_csx=NUM_WORKERS_PER_CSX,
        batch_per_csx=per_csx,
        num_csx_comment=(
            f"{source}data parallel: batch_size {batch} / {num_csx} = {per_csx} sequences "
            f"({per_csx * spec.training.seq_len:,} tokens) per system"
        ),
    )


@dataclass(frozen=True)
class ModelZooKeys(TemplateContext):
    """The Model Zoo's names for the spec's values, as both params YAMLs print them (vocab_size,
    rope_theta and rope_scaling keep the spec's names: SpecContext gives them)."""

    hidden_size: int
    rotary_dim: int
    # n_heads * head_dim when it is not hidden_size (decoupled head_dim; Model Zoo 2.4+), else None
    attention_inner_dim: int | None
    share_embedding_weights: bool
    max_position_embeddings: int
    num_hidden_layers: int
    layer_norm_epsilon: float
    num_heads: int
    num_kv_groups: int | None  # None: plain multi-head attention
    heads_per_kv_group: int
    filter_size: int
    initializer_range: float

    @classmethod
    def of(cls, spec: ModelSpec) -> ModelZooKeys:
        return cls(
            hidden_size=spec.dim,
            rotary_dim=spec.head_dim,
            attention_inner_dim=None if spec.head_dim_is_derived else spec.n_heads * spec.head_dim,
            share_embedding_weights=spec.tie_embeddings,
            max_position_embeddings=spec.max_seq_len,
            num_hidden_layers=spec.n_layers,
            layer_norm_epsilon=spec.norm_eps,
            num_heads=spec.n_heads,
            num_kv_groups=spec.n_kv_heads if spec.n_kv_heads != spec.n_heads else None,
            heads_per_kv_group=spec.n_heads // spec.n_kv_heads,
            filter_size=spec.ffn_dim,
            initializer_range=spec.init_std,
        )


@dataclass(frozen=True)
class ConfigContext(TemplateContext):
    """Both params YAMLs: the Model Zoo's model keys, the training recipe and the cluster."""

    spec: SpecContext
    zoo: ModelZooKeys
    training: TrainingContext
    cluster: ClusterContext


@dataclass(frozen=True)
class ReadmeContext(TemplateContext):
    """README.md: what the YAMLs say, plus the memory that training this spec takes."""

    config: ConfigContext
    train_memory: str  # e.g. "108 GB"
    suggest_tiny: bool  # too big for an ordinary machine: point at the tiny preset


def readme_context(config: ConfigContext, spec: ModelSpec) -> ReadmeContext:
    """The README's context: `config` and the memory that training this spec takes."""
    # 16 bytes per parameter whatever the precision: fp32 weights, gradients and both AdamW
    # moments on CPU; bf16 weights and gradients, an fp32 master copy and moments under amp.
    train_bytes = spec.train_bytes_adamw
    if train_bytes >= 1e9:
        return ReadmeContext(config, f"{train_bytes / 1e9:,.0f} GB", suggest_tiny=True)
    return ReadmeContext(config, f"{train_bytes / 1e6:,.1f} MB", suggest_tiny=False)


def check_expressible(spec: ModelSpec) -> None:
    """Raise OptionError for what this target does not emit: biases (the Model Zoo has the keys,
    use_projection_bias_in_attention, use_ffn_bias_in_attention and use_ffn_bias, but model.py
    and convert.py here are bias-free, and the interleaved RoPE rows of q/k biases are not
    converted)."""
    flags = [flag for flag in ("attention_bias", "mlp_bias") if getattr(spec, flag)]
    if flags:
        raise OptionError(
            f"{' and '.join(flags)}: the cerebras target emits bias-free projections only "
            "(torch, jax and onnx support them)"
        )


def check_yarn_expressible(spec: ModelSpec) -> None:
    """The Model Zoo's YaRN scales cos and sin by mscale_a * ln(factor) + mscale_b, and by 1
    whatever those say when factor <= 1: the params YAML gives the spec's attention_factor as
    mscale_b with mscale_a 0, which says it exactly unless factor is 1 (OptionError then)."""
    scaling = spec.rope_scaling
    if scaling is None or scaling.type != "yarn":
        return
    if scaling.factor <= 1 and scaling.attention_factor != 1:
        raise OptionError(
            f"rope_scaling yarn with factor {scaling.factor} and attention_factor "
            f"{scaling.attention_factor}: the Model Zoo scales cos and sin by 1 when factor <= 1"
        )


class CerebrasBackend:
    name = "cerebras"
    description = (
        "Cerebras Model Zoo params (trainer + legacy), cstorch model, train loop, converter"
    )
    template_dir = Path(__file__).parent / "templates"
    accepts: frozenset[str] = frozenset({"parallel"})
    filters: ClassVar[dict[str, Any]] = {"yaml": yaml_scalar}

    # RoPE scaling kinds the Model Zoo cannot express as transformers runs them (its
    # RotaryPositionEmbeddingHelper, 2.10: pos_scaling_type linear, yarn, llama3, longrope).
    refused_rope: Mapping[str, str] = MappingProxyType(
        {
            "dynamic": "the Model Zoo has no dynamic NTK scaling (its pos_scaling_type is "
            "linear, yarn, llama3 or longrope)",
            "longrope": "the Model Zoo's longrope picks one factor set when the model is built "
            "(long_factor when max_position_embeddings > original_max_position_embeddings), "
            "while transformers switches between short_factor and long_factor with each "
            "sequence's length",
        }
    )

    def plan(self, spec: ModelSpec, options: BuildOptions) -> list[Artifact]:
        check_expressible(spec)
        refuse_rope_scaling(spec, self.refused_rope)
        check_yarn_expressible(spec)
        model = model_context(spec, options)
        config = ConfigContext(
            model.spec,
            ModelZooKeys.of(spec),
            training_context(spec),
            cluster_context(spec, options),
        )
        train = TrainContext(
            model.spec, model.names, f"params_{spec.name}.yaml", spec.training.seq_len
        )
        legacy = Rendered(
            f"configs/legacy/params_{spec.name}.yaml", "configs/legacy/params.yaml.jinja", config
        )
        return [
            Rendered(f"configs/params_{spec.name}.yaml", "configs/params.yaml.jinja", config),
            # Model Zoo <= 2.3's GPT2LMHeadModel has no attention_inner_dim: no legacy file then
            *([legacy] if spec.head_dim_is_derived else []),
            Rendered("model.py", "model.py.jinja", model),
            Rendered("train.py", "train.py.jinja", train),
            Rendered("convert.py", "convert.py.jinja", model),
            CHECKED_READER,
            Rendered("README.md", "README.md.jinja", readme_context(config, spec)),
        ]


BACKEND = CerebrasBackend()

__all__ = ["BACKEND", "CerebrasBackend", "CheckpointLayout"]
