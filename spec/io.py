"""Reading specs from files (ours, Hugging Face `config.json`, Meta `params.json`) and writing HF configs."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from .model import LinearRopeScaling, Llama3RopeScaling, ModelSpec, RopeScaling

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


def _rope_from_hf(params: dict[str, Any] | None) -> RopeScaling | None:
    if not params:
        return None
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return None
    if kind == "linear":
        return LinearRopeScaling(factor=params["factor"])
    if kind == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        return Llama3RopeScaling(**{k: params[k] for k in keys})
    raise SpecFormatError(f"rope scaling type {kind!r} is not supported (default, linear, llama3)")


def from_hf_config(config: dict[str, Any], name: str = "model") -> ModelSpec:
    """Spec from a transformers `LlamaConfig` dict (4.x `rope_theta`/`rope_scaling` or 5.x `rope_parameters`)."""
    model_type = config.get("model_type", "llama")
    if model_type != "llama":
        raise SpecFormatError(f"model_type {model_type!r} is not a LLaMA config")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise SpecFormatError(f"{flag}: true is not a LLaMA architecture (no biases)")
    if config.get("hidden_act", "silu") != "silu":
        raise SpecFormatError(f"hidden_act {config['hidden_act']!r}: SwiGLU needs silu")
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim * heads != config["hidden_size"]:
        raise SpecFormatError(
            f"head_dim {head_dim} x {heads} heads != hidden_size {config['hidden_size']}: "
            "decoupled head sizes are not supported"
        )
    rope_parameters = config.get("rope_parameters") or {}
    rope_theta = rope_parameters.get("rope_theta", config.get("rope_theta", 10000.0))
    scaling = _rope_from_hf(rope_parameters or config.get("rope_scaling"))
    dtype = config.get("dtype", config.get("torch_dtype")) or "float32"
    return ModelSpec(
        name=name,
        vocab_size=config["vocab_size"],
        dim=config["hidden_size"],
        n_layers=config["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=config.get("num_key_value_heads", heads),
        ffn_dim=config["intermediate_size"],
        norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=rope_theta,
        rope_scaling=scaling,
        max_seq_len=config.get("max_position_embeddings", 2048),
        tie_embeddings=config.get("tie_word_embeddings", False),
        dtype="bfloat16" if dtype in ("bfloat16", "float16") else "float32",
        init_std=config.get("initializer_range", 0.02),
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
        scaling = spec.rope_scaling.model_dump()
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
