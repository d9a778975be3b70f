"""The architecture spec: frozen pydantic models, validated early, with derived numbers.

No framework is imported here; every other layer reads these objects.
"""

from __future__ import annotations

import hashlib
import json
import math
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
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
HeadCount = Annotated[int, Field(gt=0, le=MAX_HEADS)]
FfnWidth = Annotated[int, Field(gt=0, le=MAX_FFN)]
FfnMultiplier = Annotated[float, Field(gt=0, le=MAX_FFN_MULTIPLIER, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
UnitFloat = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
TokenId = Annotated[int, Field(ge=0, lt=2**24)]
# Fields read by generation only (tokenizer facts): not part of the architecture fingerprint.
NOT_ARCHITECTURE = frozenset({"training", "bos_token_id", "eos_token_id", "pad_token_id"})


class _Frozen(BaseModel):
    """Immutable, strict about unknown keys, documented field by field (attribute docstrings)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, use_attribute_docstrings=True
    )

    @model_validator(mode="wrap")
    @classmethod
    def _accept_derived_values(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Derived values (computed fields) may appear in the input, as `model_dump()` writes
        them, if they agree with the fields they derive from; they are never inputs."""
        derived = {}
        if isinstance(data, dict):
            derived = {key: data[key] for key in cls.model_computed_fields if key in data}
            data = {key: value for key, value in data.items() if key not in derived}
        model = handler(data)
        for key, given in derived.items():
            if given != getattr(model, key):
                raise ValueError(
                    f"{key} ({given!r}) is derived from the other fields, which give "
                    f"{getattr(model, key)!r}; leave it out"
                )
        return model


class DType(str, Enum):
    """Parameter and activation dtype of an emitted model."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


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


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature 0.1 * mscale * ln(factor) + 1, and 1 for factor <= 1
    (Peng et al. 2023, arXiv:2309.00071, eq. 22; transformers `_compute_yarn_parameters`)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


class YarnRopeScaling(_Frozen):
    """YaRN (Peng et al. 2023): frequencies blended between interpolated (divided by `factor`)
    and original along a ramp over the dimensions that rotate between `beta_slow` and
    `beta_fast` times in `original_max_position_embeddings` tokens; cos and sin are multiplied
    by `attention_factor`. transformers `_compute_yarn_parameters`."""

    type: Literal["yarn"] = "yarn"
    factor: Annotated[float, Field(ge=1, allow_inf_nan=False)]
    original_max_position_embeddings: PositiveInt
    beta_fast: PositiveFloat = 32.0
    """Rotations in the original context above which a dimension is left unscaled."""
    beta_slow: PositiveFloat = 1.0
    """Rotations below which a dimension is fully interpolated."""
    truncate: bool = True
    """Round the ramp's ends to whole dimensions (floor and ceil), as transformers does by default."""
    attention_factor: PositiveFloat = Field(default=None, validate_default=False)  # type: ignore[assignment]
    """Multiplies cos and sin. Default: 0.1 ln(factor) + 1 (a config.json's `mscale` and
    `mscale_all_dim` are resolved into it when read)."""

    @model_validator(mode="before")
    @classmethod
    def _resolve_attention_factor(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("attention_factor") is None:
            factor = data.get("factor")
            if isinstance(factor, (int, float)) and not isinstance(factor, bool):
                data = dict(data) | {"attention_factor": yarn_mscale(float(factor))}
        return data


class LongRopeScaling(_Frozen):
    """LongRoPE (Ding et al. 2024, arXiv:2402.13753): each frequency divided by its own factor,
    `short_factor` while the sequence (highest position + 1) is at most
    `original_max_position_embeddings`, `long_factor` beyond; cos and sin are multiplied by
    `attention_factor`. transformers `_compute_longrope_parameters` and `dynamic_rope_update`."""

    type: Literal["longrope"] = "longrope"
    short_factor: Annotated[tuple[PositiveFloat, ...], Field(min_length=1, max_length=MAX_HEADS)]
    long_factor: Annotated[tuple[PositiveFloat, ...], Field(min_length=1, max_length=MAX_HEADS)]
    original_max_position_embeddings: PositiveInt
    factor: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    """Context extension ratio; only sets the default attention_factor. A config.json without it
    gives max_position_embeddings / original_max_position_embeddings, as transformers does."""
    attention_factor: PositiveFloat = Field(default=None, validate_default=False)  # type: ignore[assignment]
    """Multiplies cos and sin. Default: sqrt(1 + ln(factor) / ln(original)), 1 for factor <= 1."""

    @model_validator(mode="before")
    @classmethod
    def _resolve_attention_factor(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("attention_factor") is None:
            factor, original = data.get("factor"), data.get("original_max_position_embeddings")
            numbers = all(isinstance(v, (int, float)) and v > 0 for v in (factor, original))
            if numbers and original > 1:
                value = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
                data = dict(data) | {"attention_factor": value}
        return data

    @model_validator(mode="after")
    def _check_lengths(self) -> LongRopeScaling:
        if len(self.short_factor) != len(self.long_factor):
            raise ValueError(
                f"short_factor has {len(self.short_factor)} entries, long_factor "
                f"{len(self.long_factor)}: one per frequency (head_dim / 2) each"
            )
        return self


class DynamicRopeScaling(_Frozen):
    """Dynamic NTK scaling (transformers `_compute_dynamic_ntk_parameters`): past
    max_position_embeddings, the base grows with the current sequence length; up to it the
    frequencies are the unscaled ones."""

    type: Literal["dynamic"] = "dynamic"
    factor: Annotated[float, Field(ge=1, allow_inf_nan=False)]


RopeScaling = Annotated[
    LinearRopeScaling | Llama3RopeScaling | YarnRopeScaling | LongRopeScaling | DynamicRopeScaling,
    Field(discriminator="type"),
]


class TrainingSpec(_Frozen):
    """How the model is trained: the LLaMA paper's recipe by default (Touvron et al. 2023,
    arXiv:2302.13971, section 2.3 and Table 2). Read by the Cerebras target's params YAML and
    train.py; not part of the architecture, so not of `ModelSpec.fingerprint()`."""

    optimizer: Literal["adamw"] = "adamw"
    """The optimizer: AdamW, Adam with decoupled weight decay (Loshchilov & Hutter 2019)."""
    beta1: UnitFloat = 0.9
    """AdamW's first-moment decay rate (dimensionless); 0.9 in the LLaMA paper."""
    beta2: UnitFloat = 0.95
    """AdamW's second-moment decay rate (dimensionless); 0.95 in the LLaMA paper."""
    adam_eps: PositiveFloat = 1e-8
    """AdamW's epsilon, added to the root of the second moment; the paper gives none, this is
    PyTorch's `torch.optim.AdamW` default."""
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.1
    """Decoupled weight decay per step, as a fraction of the learning rate times the weight; 0.1
    in the LLaMA paper."""
    grad_clip: PositiveFloat = 1.0
    """Gradients are rescaled to at most this global L2 norm; 1.0 in the LLaMA paper."""
    peak_lr: PositiveFloat = 3e-4
    """Learning rate at the end of warm-up (per step, dimensionless): 3e-4 for LLaMA 7B and 13B,
    1.5e-4 for 33B and 65B (paper, Table 2)."""
    min_lr_ratio: UnitFloat = 0.1
    """Final learning rate of the cosine schedule as a fraction of `peak_lr`; 10% in the paper."""
    warmup_steps: Annotated[int, Field(ge=0, le=2**31 - 1)] = 2000
    """Optimizer steps of linear warm-up from 0 to `peak_lr`; 2000 in the paper."""
    batch_tokens: PositiveInt = 4 * 2**20
    """Tokens per optimizer step (all sequences of a global batch); "4M" in the paper, read as
    4 * 2**20 = 2048 sequences of 2048 tokens."""
    seq_len: PositiveInt = 2048
    """Tokens per training sequence: 2048 for LLaMA, 4096 for Llama 2, 8192 for Llama 3."""
    total_tokens: Annotated[int, Field(gt=0, le=10**15)] = 10**12
    """Tokens seen in the whole run: 1.0T for LLaMA 7B/13B, 1.4T for 33B/65B, 2T for Llama 2."""
    precision: DType = DType.bfloat16
    """Compute dtype of training (mixed precision: float32 master weights and optimizer state)."""

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


# Validators of the inputs that defaults are resolved from, before the fields are validated.
_POSITIVE_INT: TypeAdapter[int] = TypeAdapter(PositiveInt)
_MULTIPLIER: TypeAdapter[float | None] = TypeAdapter(FfnMultiplier | None)
_FFN_WIDTH: TypeAdapter[int] = TypeAdapter(FfnWidth)
_DIM: TypeAdapter[int] = TypeAdapter(Annotated[int, Field(gt=0, le=MAX_DIM)])
_HEADS: TypeAdapter[int] = TypeAdapter(HeadCount)
# Fields added after the first manifests were written: left out of the canonical JSON (and so of
# the fingerprint, the manifests and spec files) while they hold these values, which every
# earlier spec had, so specs without them keep their fingerprints and their manifests stay valid.
# head_dim is left out likewise while it is dim // n_heads (ModelSpec.input_fields).
LATER_FIELD_DEFAULTS: dict[str, Any] = {"attention_bias": False, "mlp_bias": False}


def _valid_or_none(value: Any, kind: TypeAdapter[Any]) -> Any:
    """`value` validated by `kind`, or None when it is not valid (its own field reports that)."""
    try:
        return kind.validate_python(value)
    except ValidationError:
        return None


def _derivation_input(name: str, value: Any, kind: TypeAdapter[Any]) -> Any:
    """An input that only derives ffn_dim, validated by `kind`; ValueError naming it if bad."""
    try:
        return kind.validate_python(value)
    except ValidationError as exc:
        raise ValueError(f"{name}: {exc.errors()[0]['msg']}") from None


def _resolve_kv_heads(data: dict[str, Any]) -> None:
    """n_kv_heads defaults to n_heads (multi-head attention)."""
    if data.get("n_kv_heads") is None:
        data.pop("n_kv_heads", None)
        n_heads = _valid_or_none(data.get("n_heads"), _POSITIVE_INT)
        if n_heads is not None:
            data["n_kv_heads"] = n_heads


def _resolve_head_dim(data: dict[str, Any]) -> None:
    """head_dim defaults to dim // n_heads, as in transformers' LlamaConfig (`head_dim` absent
    or null). Raises ValueError when that default is asked for and n_heads does not divide dim."""
    if data.get("head_dim") is not None:
        return
    data.pop("head_dim", None)
    dim = _valid_or_none(data.get("dim"), _DIM)
    n_heads = _valid_or_none(data.get("n_heads"), _HEADS)
    if dim is None or n_heads is None:
        return
    if dim % n_heads:
        raise ValueError(
            f"dim ({dim}) must be divisible by n_heads ({n_heads}), or head_dim be given"
        )
    data["head_dim"] = dim // n_heads


def _resolve_ffn_dim(data: dict[str, Any]) -> None:
    """ffn_dim defaults to Meta's rule; multiple_of and ffn_dim_multiplier are consumed here.

    Raises ValueError when an explicit ffn_dim contradicts an explicit multiple_of or
    ffn_dim_multiplier, when one of those two is invalid, or when the rule's width exceeds
    MAX_FFN.
    """
    rule_given = {"multiple_of", "ffn_dim_multiplier"} & data.keys()
    multiple_of = _derivation_input("multiple_of", data.pop("multiple_of", 256), _FFN_WIDTH)
    multiplier = _derivation_input(
        "ffn_dim_multiplier", data.pop("ffn_dim_multiplier", None), _MULTIPLIER
    )
    if data.get("ffn_dim") is None:
        data.pop("ffn_dim", None)
    dim = _valid_or_none(data.get("dim"), _DIM)
    if dim is None:
        return
    rule = meta_ffn_hidden_dim(dim, multiple_of, multiplier)
    given = _valid_or_none(data.get("ffn_dim"), _POSITIVE_INT)
    if "ffn_dim" not in data:
        if rule > MAX_FFN:
            raise ValueError(f"Meta's rule gives an FFN width of {rule}, over the limit {MAX_FFN}")
        data["ffn_dim"] = rule
    elif rule_given and given is not None and given != rule:
        raise ValueError(
            f"ffn_dim ({given}) contradicts Meta's rule for dim {dim}, multiple_of "
            f"{multiple_of}, ffn_dim_multiplier {multiplier} (gives {rule}); give one or the other"
        )


def meta_ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Meta's rule: 2/3 of 4*dim, optionally scaled, rounded up to a multiple of `multiple_of`."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * -(-hidden // multiple_of)


class ModelSpec(_Frozen):
    """One LLaMA-family decoder: everything a backend needs to emit it.

    Every quantity has one name. Two inputs only derive `ffn_dim` and are not stored: give
    `multiple_of` (default 256) and optionally `ffn_dim_multiplier` instead of `ffn_dim`, as Meta's
    params.json does; given with `ffn_dim` they must agree with it. `n_kv_heads` defaults to
    `n_heads`. So a model has the same fields, and the same fingerprint, however it was written.
    """

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    """Identifier of the model: names the output folder and appears in emitted code and
    headers (letters, digits, `.`, `_`, `-`; at most 64 characters)."""
    vocab_size: Annotated[int, Field(gt=0, le=MAX_VOCAB)]
    """Rows of the token embedding and of the output head (tokens): 32000 for LLaMA 1/2's
    SentencePiece tokenizer, 128256 for Llama 3's. HF `vocab_size`."""
    dim: Annotated[int, Field(gt=0, le=MAX_DIM)]
    """Width of the residual stream (features per token). HF `hidden_size`, Meta `dim`."""
    n_layers: Annotated[int, Field(gt=0, le=MAX_LAYERS)]
    """Decoder blocks (attention + feed-forward). HF `num_hidden_layers`, Meta `n_layers`."""
    n_heads: HeadCount
    """Query heads of each attention layer. HF `num_attention_heads`."""
    head_dim: Annotated[int, Field(gt=0, le=MAX_DIM)] = Field(default=None, validate_default=False)  # type: ignore[assignment]
    """Features of each query, key and value head; even, for RoPE's pairs. Default: dim //
    n_heads, as in transformers (`head_dim = config.head_dim or hidden_size //
    num_attention_heads`); width-pruned models (NVIDIA Minitron) keep the original heads on a
    narrower residual stream, so q_proj is (n_heads * head_dim, dim). HF `head_dim`; Meta's
    params.json has no such key (always dim / n_heads)."""
    n_kv_heads: HeadCount = Field(default=None, validate_default=False)  # type: ignore[assignment]
    """Key/value heads (grouped-query attention, Ainslie et al. 2023, arXiv:2305.13245); each
    serves n_heads / n_kv_heads consecutive query heads. Default: n_heads (multi-head attention).
    HF `num_key_value_heads`, Meta `n_kv_heads`."""
    ffn_dim: FfnWidth = Field(default=None, validate_default=False)  # type: ignore[assignment]
    """Hidden width of the SwiGLU feed-forward (features; Shazeer 2020, arXiv:2002.05202). HF
    `intermediate_size`. Default: Meta's rule from `multiple_of` and `ffn_dim_multiplier`,
    `meta_ffn_hidden_dim` (meta-llama/llama, model.py, FeedForward)."""
    norm_eps: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = 1e-6
    """Added to the mean square in RMSNorm (Zhang & Sennrich 2019): 1e-6 for LLaMA 7B-33B, 1e-5
    for LLaMA 65B, Llama 2 and 3. HF `rms_norm_eps`, Meta `norm_eps`."""
    rope_theta: Annotated[float, Field(gt=1, allow_inf_nan=False)] = 10000.0
    """Base of the rotary position embedding's frequencies theta^(-2i/head_dim) (Su et al. 2021,
    arXiv:2104.09864): 10000 for LLaMA 1/2, 500000 for Llama 3. HF `rope_theta`."""
    rope_scaling: RopeScaling | None = None
    """Rescaling of the RoPE frequencies for contexts longer than trained: none, linear
    (position interpolation) or llama3 (Llama 3.1). HF `rope_scaling` / `rope_parameters`."""
    max_seq_len: Annotated[int, Field(gt=0, le=MAX_SEQ_LEN)] = 2048
    """Longest sequence (tokens): the size of the RoPE tables and KV caches emitted. HF
    `max_position_embeddings`."""
    attention_bias: bool = False
    """Whether q, k, v and o projections add a bias (transformers' LlamaConfig `attention_bias`;
    false for every Meta LLaMA, true e.g. for InternLM-style checkpoints)."""
    mlp_bias: bool = False
    """Whether the gate, up and down projections add a bias (transformers' LlamaConfig
    `mlp_bias`; false for every Meta LLaMA)."""
    tie_embeddings: bool = False
    """Whether the output head reuses the token embedding matrix (no separate lm_head.weight).
    HF `tie_word_embeddings`; false for every LLaMA."""
    dtype: DType = DType.float32
    """Default parameter and activation dtype of the emitted models (RMSNorm and softmax always
    compute in float32)."""
    init_std: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.02
    """Standard deviation of the normal initialisation of weight matrices in emitted models (norm
    weights start at 1). HF `initializer_range`."""
    training: TrainingSpec = TrainingSpec()
    """The training recipe; outside the architecture fingerprint."""
    bos_token_id: TokenId | None = 1
    """Token that starts every sequence (beginning of sequence): 1 for LLaMA 1/2's SentencePiece
    tokenizer, 128000 for Llama 3's. HF `bos_token_id` (config.json; generation_config.json wins,
    as in transformers). A tokenizer fact, outside the architecture fingerprint."""
    eos_token_id: Annotated[tuple[TokenId, ...], Field(min_length=1, max_length=64)] | None = (2,)
    """Tokens that end a sequence (an int in config.json is read as a one-item list): generation
    stops a row at any of them. 2 for LLaMA 1/2, 128001 for Llama 3 base models (the instruct
    models add 128009). HF `eos_token_id`; outside the architecture fingerprint."""
    pad_token_id: TokenId | None = None
    """Token that finished rows emit while others still generate; None (as in LLaMA's configs)
    means the first eos id, as transformers' generate does. HF `pad_token_id`; outside the
    architecture fingerprint."""

    @model_validator(mode="before")
    @classmethod
    def _resolve_defaults(cls, data: Any) -> Any:
        """Fill n_kv_heads and ffn_dim from the fields they default to, so that a model given
        with or without them validates to the same spec. A default whose inputs are invalid
        is left unset: the error on those inputs is the one to report."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        _resolve_kv_heads(data)
        _resolve_head_dim(data)
        _resolve_ffn_dim(data)
        return data

    @field_validator("eos_token_id", mode="before")
    @classmethod
    def _one_eos_is_a_list(cls, value: Any) -> Any:
        """config.json gives an int or a list; the spec holds a tuple either way."""
        return [value] if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("name")
    @classmethod
    def _name_not_dunder(cls, value: str) -> str:
        if value.startswith("_"):
            raise ValueError("name must not start with an underscore")
        return value

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelSpec:
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for RoPE")
        if self.n_heads * self.head_dim > MAX_DIM:
            raise ValueError(
                f"n_heads x head_dim ({self.n_heads * self.head_dim}) exceeds the limit {MAX_DIM}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})")
        scaling = self.rope_scaling
        if isinstance(scaling, LongRopeScaling) and len(scaling.short_factor) != self.head_dim // 2:
            raise ValueError(
                f"rope_scaling.short_factor has {len(scaling.short_factor)} entries; LongRoPE "
                f"needs one per frequency, head_dim / 2 = {self.head_dim // 2}"
            )
        return self

    @model_validator(mode="after")
    def _check_token_ids(self) -> ModelSpec:
        ids = {"bos_token_id": self.bos_token_id, "pad_token_id": self.pad_token_id}
        ids |= {"eos_token_id": max(self.eos_token_id or [0])}
        for key, value in ids.items():
            if value is not None and value >= self.vocab_size:
                raise ValueError(f"{key} ({value}) is not below vocab_size ({self.vocab_size})")
        return self

    @property
    def head_dim_is_derived(self) -> bool:
        """Whether head_dim is transformers' default, dim // n_heads (not a decoupled width)."""
        return self.head_dim * self.n_heads == self.dim

    @computed_field
    @property
    def kv_groups(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    @computed_field
    @property
    def params_per_layer(self) -> int:
        """Weights (and biases, if any) of one decoder layer: q/o are (n_heads * head_dim) x
        dim, k/v (n_kv_heads * head_dim) x dim, the SwiGLU three ffn_dim x dim, two norms."""
        q_width, kv_width = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        attention = 2 * self.dim * q_width + 2 * self.dim * kv_width
        if self.attention_bias:  # q, k, v biases of their output widths; o's of dim
            attention += q_width + 2 * kv_width + self.dim
        mlp = 3 * self.dim * self.ffn_dim + (2 * self.ffn_dim + self.dim) * self.mlp_bias
        return attention + mlp + 2 * self.dim

    @computed_field
    @property
    def param_count(self) -> int:
        """Exact number of parameters (embedding, layers, final norm, LM head unless tied)."""
        embeddings = self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
        return embeddings + self.n_layers * self.params_per_layer + self.dim

    @computed_field
    @property
    def flops_per_token_forward(self) -> int:
        """2 * params + 2 * n_layers * max_seq_len * n_heads * head_dim (Kaplan et al. 2020,
        Table 1, with d_attn = n_heads * head_dim; attention at full context)."""
        d_attn = self.n_heads * self.head_dim
        return 2 * self.param_count + 2 * self.n_layers * self.max_seq_len * d_attn

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

    def rope_inv_freq(self, long: bool = False) -> list[float]:
        """Inverse frequencies theta^(-2i/head_dim) after scaling, as float64 Python numbers
        (LongRoPE: the short factors, or the long ones with `long`). Dynamic NTK: the unscaled
        frequencies, which are its frequencies up to max_seq_len."""
        half = self.head_dim // 2
        inv = [self.rope_theta ** (-2 * i / self.head_dim) for i in range(half)]
        scaling = self.rope_scaling
        if isinstance(scaling, LinearRopeScaling):
            return [f / scaling.factor for f in inv]
        if isinstance(scaling, Llama3RopeScaling):
            return [_llama3_scale(f, scaling) for f in inv]
        if isinstance(scaling, YarnRopeScaling):
            return _yarn_scale(inv, self.rope_theta, self.head_dim, scaling)
        if isinstance(scaling, LongRopeScaling):
            factors = scaling.long_factor if long else scaling.short_factor
            return [f / e for f, e in zip(inv, factors, strict=True)]
        return inv

    def input_fields(self, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The fields as JSON values (no computed ones), less `exclude` and the later fields
        that hold the value every earlier spec had (LATER_FIELD_DEFAULTS, head_dim when it is
        dim // n_heads): what spec files, manifests and the fingerprint hold."""
        data = self.model_dump(mode="json", exclude_computed_fields=True, exclude=set(exclude))
        for key, default in LATER_FIELD_DEFAULTS.items():
            if data.get(key, not default) == default:
                del data[key]
        if self.head_dim_is_derived:
            data.pop("head_dim", None)
        return data

    def rope_attention_factor(self) -> float:
        """What cos and sin are multiplied by (YaRN and LongRoPE; 1 for the other kinds)."""
        if isinstance(self.rope_scaling, YarnRopeScaling | LongRopeScaling):
            return self.rope_scaling.attention_factor
        return 1.0

    def canonical_json(self) -> str:
        """The whole spec as sorted JSON (input_fields, training included): what a build is
        reproducible from, written into every manifest."""
        return json.dumps(self.input_fields(), sort_keys=True)

    def fingerprint(self) -> str:
        """sha256 (hex) of the architecture: the canonical JSON without the training recipe and
        the token ids (NOT_ARCHITECTURE). Printed in every emitted file's header, so a new
        learning rate or eos token changes no header."""
        architecture = self.input_fields(exclude=NOT_ARCHITECTURE)
        return hashlib.sha256(json.dumps(architecture, sort_keys=True).encode()).hexdigest()


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


def _yarn_scale(inv: list[float], theta: float, head_dim: int, s: YarnRopeScaling) -> list[float]:
    """YaRN's blend of interpolated (inv / factor) and original frequencies: dimension pair i
    keeps its original frequency below the ramp (fast rotations) and is interpolated above it."""

    def correction_dim(rotations: float) -> float:
        # the pair index whose wavelength fits `rotations` times in the original context
        original = s.original_max_position_embeddings
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # as transformers does, so the ramp has a width
    out = []
    for i, f in enumerate(inv):
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)
        out.append(f / s.factor * ramp + f * (1 - ramp))
    return out
