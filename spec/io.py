"""Reading specs from files (ours, Hugging Face `config.json`, Meta `params.json`) and writing HF configs."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter

from .model import DType, Llama3RopeScaling, ModelSpec, RopeScaling

MAX_SPEC_BYTES = 1 << 20
# LLaMA-1's params.json says vocab_size -1: the size came from its SentencePiece tokenizer.
LLAMA1_TOKENIZER_VOCAB = 32000


class SpecFormatError(ValueError):
    """A spec file that cannot be read or recognised (as opposed to one that fails validation)."""


def load_spec(path: str | Path) -> ModelSpec:
    """Read a spec from our YAML/JSON, an HF `config.json` or a Meta `params.json`."""
    path = Path(path)
    if path.is_dir():
        for candidate in ("config.json", "params.json"):
            if (path / candidate).is_file():
                return load_spec(path / candidate)
        raise SpecFormatError(f"{path}: folder holds neither config.json nor params.json")
    data = _read_mapping(path)
    name = _name_from_path(path)
    try:
        if "hidden_size" in data or "model_type" in data:
            generation = path.parent / "generation_config.json"
            if generation.is_file():  # transformers' generate reads its token ids from there
                data = data | token_ids(_read_mapping(generation))
            return from_hf_config(data, name=name)
        if "dim" in data and "n_layers" in data and "name" not in data:
            return from_meta_params(data, name=name)
    except KeyError as exc:
        raise SpecFormatError(f"{path}: required key {exc.args[0]!r} is missing") from None
    except (TypeError, AttributeError):
        # e.g. `rope_scaling: [1, 2]` where a mapping belongs; pydantic errors pass through
        raise SpecFormatError(f"{path}: a value has the wrong type for a {_kind(data)}") from None
    return ModelSpec.model_validate(data)


def _kind(data: dict[str, Any]) -> str:
    return "Hugging Face config.json" if "hidden_size" in data else "Meta params.json"


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of a file of at most `limit` bytes. A larger regular file is refused by its
    size before any read; anything else (/dev/zero, a pipe) by reading at most limit + 1 bytes.
    Raises SpecFormatError."""
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if stat.S_ISREG(info.st_mode) and info.st_size > limit:
                raise SpecFormatError(
                    f"{path}: {info.st_size} bytes; a spec file is at most {limit}"
                )
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise SpecFormatError(f"{path}: cannot read ({exc.strerror})") from None
    if len(raw) > limit:
        raise SpecFormatError(f"{path}: more than {limit} bytes; a spec file is at most {limit}")
    return raw


def _read_mapping(path: Path) -> dict[str, Any]:
    raw = read_bounded(path, MAX_SPEC_BYTES)
    try:
        text = raw.decode("utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError, RecursionError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecFormatError(f"{path}: not valid {path.suffix or 'YAML'}: {first_line}") from None
    if not isinstance(data, dict):
        raise SpecFormatError(f"{path}: expected a mapping at the top, got {type(data).__name__}")
    return data


def _name_from_path(path: Path) -> str:
    """A spec name from the checkpoint folder's name (`Llama-2-7b-hf/config.json` -> `Llama-2-7b-hf`)."""
    stem = path.parent.name if path.stem in {"config", "params"} else path.stem
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:64]
    return cleaned or "model"


# How transformers reads each architecture key of a LlamaConfig dict when it is absent or null:
# `transformers.LlamaConfig()`'s defaults (5.x; 4.x has the same), {"same_as": key} for a key
# that defaults to another's value (listed after it), None where we require the key (the sizes:
# transformers' defaults describe LLaMA 7B, which a checkpoint should not be taken to be).
# The compiler and every emitted loader read config.json through this table and one function,
# checked_reader.hf_config_view, so a folder that builds always loads (tests/test_config_reader).
HF_DEFAULTS: dict[str, Any] = {
    "vocab_size": None,
    "hidden_size": None,
    "intermediate_size": None,
    "num_hidden_layers": None,
    "num_attention_heads": None,
    "num_key_value_heads": {"same_as": "num_attention_heads"},
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
}
# The transformers keys an emitted loader checks in a config.json beside the weights, with the
# spec field and the emitted config attribute (torch ModelArgs, JAX Config) each one equals.
HF_CHECKED: tuple[tuple[str, str, str], ...] = (
    ("vocab_size", "vocab_size", "vocab_size"),
    ("hidden_size", "dim", "dim"),
    ("num_hidden_layers", "n_layers", "n_layers"),
    ("num_attention_heads", "n_heads", "n_heads"),
    ("num_key_value_heads", "n_kv_heads", "n_kv_heads"),
    ("intermediate_size", "ffn_dim", "hidden_dim"),
    ("rms_norm_eps", "norm_eps", "norm_eps"),
    ("rope_theta", "rope_theta", "rope_theta"),
    ("tie_word_embeddings", "tie_embeddings", "tie_embeddings"),
)


def hf_view(config: dict[str, Any], where: str = "config.json") -> dict[str, Any]:
    """`config` as transformers reads it (HF_DEFAULTS for absent or null keys; 4.x rope_theta /
    rope_scaling or 5.x rope_parameters). Raises SpecFormatError naming a malformed RoPE key."""
    from backends.checked_reader import CheckpointError, hf_config_view  # stdlib only, no cycle

    try:
        return hf_config_view(config, where, HF_DEFAULTS)
    except CheckpointError as exc:
        raise SpecFormatError(str(exc)) from None


def hf_checked_values(spec: ModelSpec) -> dict[str, Any]:
    """What a config.json of `spec` says under the keys loaders check (hf_config_view's form)."""
    values = {key: getattr(spec, field) for key, field, _ in HF_CHECKED}
    scaling = spec.rope_scaling.model_dump(mode="json") if spec.rope_scaling else {"type": "none"}
    return values | {"rope_scaling": scaling}


# transformers' LlamaConfig defaults for the token ids (PretrainedConfig: a key given as null is None).
HF_TOKEN_DEFAULTS: dict[str, Any] = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None}


def token_ids(config: dict[str, Any]) -> dict[str, Any]:
    """The token-id keys `config` gives (config.json or generation_config.json), as given."""
    return {key: config[key] for key in HF_TOKEN_DEFAULTS if key in config}


_ROPE_SCALING: TypeAdapter[RopeScaling] = TypeAdapter(RopeScaling)


def _rope_from_hf(scaling: dict[str, Any]) -> RopeScaling | None:
    """A RopeScaling from hf_config_view's {"type": ..., params} form (values resolved as
    transformers resolves them); pydantic's ValidationError for values out of bounds."""
    if scaling["type"] == "none":
        return None
    return _ROPE_SCALING.validate_python(scaling)


def _dtype_from_hf(config: dict[str, Any]) -> DType:
    """The checkpoint's dtype: `dtype` (transformers 5) or `torch_dtype` (4.x); float32 without
    either, as transformers loads. SpecFormatError for one no target builds (never a silent
    change of dtype)."""
    dtype = config.get("dtype", config.get("torch_dtype")) or "float32"
    if dtype not in DType.__members__:
        raise SpecFormatError(
            f"dtype {str(dtype)[:40]!r}: the targets build float32, bfloat16 or float16"
        )
    return DType(dtype)


def from_hf_config(config: dict[str, Any], name: str = "model") -> ModelSpec:
    """Spec from a transformers `LlamaConfig` dict (4.x `rope_theta`/`rope_scaling` or 5.x
    `rope_parameters`), omitted keys taking transformers' defaults (HF_DEFAULTS,
    HF_TOKEN_DEFAULTS; load_spec merges a generation_config.json's token ids in first).

    Raises KeyError for a required key that is absent or null, SpecFormatError for what is not
    a LLaMA, pydantic's ValidationError for values out of bounds."""
    model_type = config.get("model_type", "llama")
    if model_type != "llama":
        raise SpecFormatError(f"model_type {model_type!r} is not a LLaMA config")
    view = hf_view(config)
    missing = [key for key, default in HF_DEFAULTS.items() if default is None and view[key] is None]
    if missing:
        raise KeyError(missing[0])
    for flag in ("attention_bias", "mlp_bias"):
        if view[flag]:
            raise SpecFormatError(f"{flag}: true is not a LLaMA architecture (no biases)")
    dropout = config.get("attention_dropout") or 0.0
    if dropout != 0:  # at inference transformers skips it, but train.py would train without it
        raise SpecFormatError(
            f"attention_dropout {str(dropout)[:40]}: no target trains with attention dropout "
            "(the Cerebras YAML and train.py use 0, as every released Llama)"
        )
    if view["hidden_act"] != "silu":
        raise SpecFormatError(f"hidden_act {view['hidden_act']!r}: SwiGLU needs silu")
    heads = view["num_attention_heads"]
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim * heads != view["hidden_size"]:
        raise SpecFormatError(
            f"head_dim {head_dim} x {heads} heads != hidden_size {view['hidden_size']}: "
            "decoupled head sizes are not supported"
        )
    return ModelSpec(
        name=name,
        vocab_size=view["vocab_size"],
        dim=view["hidden_size"],
        n_layers=view["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=view["num_key_value_heads"],
        ffn_dim=view["intermediate_size"],
        norm_eps=view["rms_norm_eps"],
        rope_theta=view["rope_theta"],
        rope_scaling=_rope_from_hf(view["rope_scaling"]),
        max_seq_len=view["max_position_embeddings"],
        tie_embeddings=view["tie_word_embeddings"],
        dtype=_dtype_from_hf(config),
        init_std=view["initializer_range"],
        **(HF_TOKEN_DEFAULTS | token_ids(config)),
    )


def from_meta_params(params: dict[str, Any], name: str = "model") -> ModelSpec:
    """Spec from Meta's `params.json` (LLaMA 1/2/3)."""
    vocab = params.get("vocab_size", -1)
    scaling = None
    if params.get("use_scaled_rope"):
        # Meta's reference code hard-wires these constants for `use_scaled_rope` (Llama 3.1).
        scaling = Llama3RopeScaling(
            factor=params.get("rope_scaling_factor", 8.0),
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        )
    optional = {
        key: params[key]
        for key in ("n_kv_heads", "ffn_dim_multiplier", "max_seq_len")
        if params.get(key) is not None
    }
    return ModelSpec(
        name=name,
        vocab_size=LLAMA1_TOKENIZER_VOCAB if vocab == -1 else vocab,
        dim=params["dim"],
        n_layers=params["n_layers"],
        n_heads=params["n_heads"],
        multiple_of=params.get("multiple_of", 256),
        norm_eps=params.get("norm_eps", 1e-6),
        rope_theta=params.get("rope_theta", 10000.0),
        rope_scaling=scaling,
        **optional,
    )


def to_hf_config(spec: ModelSpec) -> dict[str, Any]:
    """A transformers `LlamaConfig` dict (4.x keys, which 5.x also reads) for the spec."""
    scaling: dict[str, Any] | None = None
    if spec.rope_scaling is not None:
        scaling = spec.rope_scaling.model_dump(mode="json")
        scaling["rope_type"] = scaling.pop("type")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.dim,
        "intermediate_size": spec.ffn_dim,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads,
        "num_key_value_heads": spec.n_kv_heads,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_seq_len,
        "rms_norm_eps": spec.norm_eps,
        "rope_theta": spec.rope_theta,
        "rope_scaling": scaling,
        "tie_word_embeddings": spec.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": spec.init_std,
        "torch_dtype": spec.dtype.value,
    }


SPEC_FILE_HEADER = """\
# A llama-codegen model spec: the inputs only (derived numbers: `python -m codegen show --spec FILE`).
# Build from it: python -m codegen build --spec FILE --target torch|jax|onnx|cerebras|all
"""


def to_spec_yaml(spec: ModelSpec) -> str:
    """The spec as a YAML spec file that `load_spec` reads back to an equal spec.

    Every input field is written; computed ones are derived on reading, so they are left out.
    """
    data = spec.model_dump(mode="json", exclude_computed_fields=True)
    return SPEC_FILE_HEADER + yaml.safe_dump(data, sort_keys=False, width=100)
