"""The architecture spec: frozen pydantic models, validated early, with derived numbers.

No framework is imported here; every other layer reads these objects.
"""

from __future__ import annotations

import hashlib
import json
import math
from enum import Enum
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    computed_field,
    field_validator,
    model_validator,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

PositiveInt = Annotated[int, Field(gt=0, le=2**31 - 1)]

# Upper bounds of a spec, so that no input costs more than its size suggests (a 1e9-head spec
# would build tables of a billion rows; a dim of 2**30 a 4 GiB RoPE table in the ONNX graph).
# Each is 8x or more above the largest LLaMA (405B: dim 16384, 128 heads, ffn 53248, 126 layers,
# vocab 128256, context 131072).
MAX_DIM = 2**17  # model width
MAX_HEADS = 2**12  # attention (and key/value) heads
MAX_FFN = 2**20  # FFN hidden width, given or derived by Meta's rule
MAX_FFN_MULTIPLIER = 16.0  # Meta's ffn_dim_multiplier (1.3 and 1.5 in the released models)
MAX_VOCAB = 2**24
MAX_LAYERS = 1024
MAX_SEQ_LEN = 2**24
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
UnitFloat = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class DType(str, Enum):
    """Parameter and activation dtype of an emitted model."""

    float32 = "float32"
    bfloat16 = "bfloat16"


class LinearRopeScaling(_Frozen):
    """Position interpolation: every frequency divided by `factor`."""

    type: Literal["linear"] = "linear"
    factor: Annotated[float, Field(ge=1, allow_inf_nan=False)]


class Llama3RopeScaling(_Frozen):
    """Llama-3.1 frequency-dependent scaling (long wavelengths divided by `factor`)."""

    type: Literal["llama3"] = "llama3"
    factor: Annotated[float, Field(ge=1, allow_inf_nan=False)]
    low_freq_factor: PositiveFloat
    high_freq_factor: PositiveFloat
    original_max_position_embeddings: PositiveInt

    @model_validator(mode="after")
    def _check_band(self) -> Llama3RopeScaling:
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"high_freq_factor ({self.high_freq_factor}) must exceed "
                f"low_freq_factor ({self.low_freq_factor})"
            )
        return self


RopeScaling = Annotated[LinearRopeScaling | Llama3RopeScaling, Field(discriminator="type")]


class TrainingSpec(_Frozen):
    """How the model is trained (the LLaMA paper's recipe by default); read by the Cerebras target."""

    optimizer: Literal["adamw"] = "adamw"
    beta1: UnitFloat = 0.9
    beta2: UnitFloat = 0.95
    adam_eps: PositiveFloat = 1e-8
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.1
    grad_clip: PositiveFloat = 1.0
    peak_lr: PositiveFloat = 3e-4
    min_lr_ratio: UnitFloat = 0.1
    warmup_steps: Annotated[int, Field(ge=0, le=2**31 - 1)] = 2000
    batch_tokens: PositiveInt = 4 * 2**20
    seq_len: PositiveInt = 2048
    total_tokens: Annotated[int, Field(gt=0, le=10**15)] = 10**12
    precision: DType = DType.bfloat16

    @model_validator(mode="after")
    def _check_batch(self) -> TrainingSpec:
        if self.batch_tokens % self.seq_len:
            raise ValueError(
                f"batch_tokens ({self.batch_tokens}) must be a multiple of seq_len ({self.seq_len})"
            )
        return self

    @computed_field
    @property
    def batch_size(self) -> int:
        """Sequences per optimizer step."""
        return self.batch_tokens // self.seq_len

    @computed_field
    @property
    def total_steps(self) -> int:
        """Optimizer steps to see `total_tokens`: total_tokens / (batch_size * seq_len), rounded up."""
        return -(-self.total_tokens // self.batch_tokens)


def meta_ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Meta's rule: 2/3 of 4*dim, optionally scaled, rounded up to a multiple of `multiple_of`."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * -(-hidden // multiple_of)


class ModelSpec(_Frozen):
    """One LLaMA-family decoder: everything a backend needs to emit it."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    vocab_size: Annotated[int, Field(gt=0, le=MAX_VOCAB)]
    dim: Annotated[int, Field(gt=0, le=MAX_DIM)]
    n_layers: Annotated[int, Field(gt=0, le=MAX_LAYERS)]
    n_heads: Annotated[int, Field(gt=0, le=MAX_HEADS)]
    n_kv_heads: Annotated[int, Field(gt=0, le=MAX_HEADS)] | None = Field(
        default=None, description="Key/value heads (GQA); None means n_heads."
    )
    ffn_dim: Annotated[int, Field(gt=0, le=MAX_FFN)] | None = Field(
        default=None, description="FFN hidden size; None derives it by Meta's rule."
    )
    multiple_of: Annotated[int, Field(gt=0, le=MAX_FFN)] = 256
    ffn_dim_multiplier: (
        Annotated[float, Field(gt=0, le=MAX_FFN_MULTIPLIER, allow_inf_nan=False)] | None
    ) = None
    norm_eps: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = 1e-6
    rope_theta: Annotated[float, Field(gt=1, allow_inf_nan=False)] = 10000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: Annotated[int, Field(gt=0, le=MAX_SEQ_LEN)] = 2048
    tie_embeddings: bool = False
    dtype: DType = DType.float32
    init_std: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.02
    training: TrainingSpec = TrainingSpec()

    @field_validator("name")
    @classmethod
    def _name_not_dunder(cls, value: str) -> str:
        if value.startswith("_"):
            raise ValueError("name must not start with an underscore")
        return value

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelSpec:
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if (self.dim // self.n_heads) % 2:
            raise ValueError(
                f"head_dim = dim / n_heads = {self.dim // self.n_heads} must be even for RoPE"
            )
        if self.n_heads % self.num_kv_heads:
            raise ValueError(
                f"n_kv_heads ({self.num_kv_heads}) must divide n_heads ({self.n_heads})"
            )
        if self.ffn_dim is None and self.hidden_dim > MAX_FFN:
            raise ValueError(
                f"Meta's rule gives an FFN width of {self.hidden_dim}, over the limit {MAX_FFN}"
            )
        given = {"multiple_of", "ffn_dim_multiplier"} & self.model_fields_set
        if self.ffn_dim is not None and given:
            rule = meta_ffn_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)
            if rule != self.ffn_dim:
                raise ValueError(
                    f"ffn_dim ({self.ffn_dim}) contradicts Meta's rule for dim {self.dim}, "
                    f"multiple_of {self.multiple_of}, ffn_dim_multiplier "
                    f"{self.ffn_dim_multiplier} (gives {rule}); give one or the other"
                )
        return self

    @computed_field
    @property
    def num_kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @computed_field
    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @computed_field
    @property
    def kv_groups(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.num_kv_heads

    @computed_field
    @property
    def hidden_dim(self) -> int:
        """FFN hidden size, explicit or by Meta's rule."""
        if self.ffn_dim is not None:
            return self.ffn_dim
        return meta_ffn_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    @computed_field
    @property
    def params_per_layer(self) -> int:
        attention = 2 * self.dim * self.dim + 2 * self.dim * self.num_kv_heads * self.head_dim
        return attention + 3 * self.dim * self.hidden_dim + 2 * self.dim

    @computed_field
    @property
    def param_count(self) -> int:
        """Exact number of parameters (embedding, layers, final norm, LM head unless tied)."""
        embeddings = self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
        return embeddings + self.n_layers * self.params_per_layer + self.dim

    @computed_field
    @property
    def flops_per_token_forward(self) -> int:
        """2 * params + 2 * n_layers * max_seq_len * dim (Kaplan et al.; attention at full context)."""
        return 2 * self.param_count + 2 * self.n_layers * self.max_seq_len * self.dim

    @computed_field
    @property
    def flops_per_token_train(self) -> int:
        """Forward plus backward: three times the forward FLOPs."""
        return 3 * self.flops_per_token_forward

    @computed_field
    @property
    def weight_bytes_fp32(self) -> int:
        return 4 * self.param_count

    @computed_field
    @property
    def weight_bytes_bf16(self) -> int:
        return 2 * self.param_count

    @computed_field
    @property
    def train_bytes_adamw(self) -> int:
        """Mixed-precision AdamW state: bf16 weights and grads, fp32 master, two fp32 moments."""
        return (2 + 2 + 4 + 4 + 4) * self.param_count

    def rope_inv_freq(self) -> list[float]:
        """Inverse frequencies theta^(-2i/head_dim) after scaling, as float64 Python numbers."""
        half = self.head_dim // 2
        inv = [self.rope_theta ** (-2 * i / self.head_dim) for i in range(half)]
        scaling = self.rope_scaling
        if isinstance(scaling, LinearRopeScaling):
            return [f / scaling.factor for f in inv]
        if isinstance(scaling, Llama3RopeScaling):
            return [_llama3_scale(f, scaling) for f in inv]
        return inv

    def canonical_json(self) -> str:
        """The spec as sorted JSON (inputs only): the identity a build is reproducible from."""
        return json.dumps(
            self.model_dump(mode="json", exclude_computed_fields=True), sort_keys=True
        )

    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def _llama3_scale(freq: float, s: Llama3RopeScaling) -> float:
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / freq
    if wavelen < high_wavelen:
        return freq
    if wavelen > low_wavelen:
        return freq / s.factor
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    return (1 - smooth) * freq / s.factor + smooth * freq
