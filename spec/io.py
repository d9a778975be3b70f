"""Reading specs from files (ours, Hugging Face `config.json`, Meta `params.json`) and writing HF configs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from .model import DType, Llama3RopeScaling, ModelSpec, RopeScaling

MAX_SPEC_BYTES = 1 << 20
# LLaMA-1's params.json says vocab_size -1: the size came from its SentencePiece tokenizer.
LLAMA1_TOKENIZER_VOCAB = 32000


class SpecFormatError(ValueError):
    """A spec file that cannot be read or recognised (as opposed to one that fails validation)."""


def load_spec(
    path: str | Path, *, rope_scaling_factor: float | None = None, max_seq_len: int | None = None
) -> ModelSpec:
    """Read a spec from our YAML/JSON, an HF `config.json` or a Meta `params.json`.

    `rope_scaling_factor` and `max_seq_len` (the CLI's --rope-scaling-factor, --max-seq-len) give
    what a params.json does not state (from_meta_params); any other file must state the same
    values. Raises SpecFormatError (one line) for a contradiction or an unstated value.
    """
    path = Path(path)
    stated = {"rope_scaling_factor": rope_scaling_factor, "max_seq_len": max_seq_len}
    if path.is_dir():
        for candidate in ("config.json", "params.json"):
            if (path / candidate).is_file():
                return load_spec(path / candidate, **stated)
        raise SpecFormatError(f"{path}: folder holds neither config.json nor params.json")
    data = _read_mapping(path)
    name = _name_from_path(path)
    try:
        if "hidden_size" in data or "model_type" in data:
            generation = path.parent / "generation_config.json"
            if generation.is_file():  # transformers' generate reads its token ids from there
                given = token_ids(_read_mapping(generation))
                with _naming_the_file(generation, fields=set(given)):
                    return _agreeing(from_hf_config(data | given, name=name), path, **stated)
            return _agreeing(from_hf_config(data, name=name), path, **stated)
        if "dim" in data and "n_layers" in data and "name" not in data:
            sibling = path.parent / "config.json"
            hf_config = (
                _read_mapping(sibling) if path.name != "config.json" and sibling.is_file() else None
            )
            return from_meta_params(data, name=name, hf_config=hf_config, where=str(path), **stated)
    except KeyError as exc:
        raise SpecFormatError(f"{path}: required key {exc.args[0]!r} is missing") from None
    except (TypeError, AttributeError):
        # e.g. `rope_scaling: [1, 2]` where a mapping belongs; pydantic errors pass through
        raise SpecFormatError(f"{path}: a value has the wrong type for a {_kind(data)}") from None
    return _agreeing(ModelSpec.model_validate(data), path, **stated)


@contextlib.contextmanager
def _naming_the_file(path: Path, fields: set[str]) -> Iterator[None]:
    """Reports a validation error of a field that `path` supplied as an error of that file (the
    token ids of a generation_config.json, which the user would otherwise look for in config.json)."""
    try:
        yield
    except ValidationError as exc:
        ours = [
            error
            for error in exc.errors()
            if (
                error["loc"][0] in fields
                if error["loc"]
                else any(f in error["msg"] for f in fields)
            )
        ]
        if not ours:
            raise
        error = ours[0]
        field = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        raise SpecFormatError(f"{path}: {field + ': ' if field else ''}{message}") from None


def _agreeing(
    spec: ModelSpec, path: Path, rope_scaling_factor: float | None, max_seq_len: int | None
) -> ModelSpec:
    """`spec` (read from a file that states every value) when the options agree with it."""
    if rope_scaling_factor is not None:
        if spec.rope_scaling is None:
            raise SpecFormatError(
                f"{path}: --rope-scaling-factor {rope_scaling_factor} given, but the model "
                "has no RoPE scaling"
            )
        if spec.rope_scaling.factor != rope_scaling_factor:
            raise SpecFormatError(
                f"{path}: RoPE scaling factor {spec.rope_scaling.factor}; "
                f"--rope-scaling-factor {rope_scaling_factor} contradicts it"
            )
    if max_seq_len is not None and spec.max_seq_len != max_seq_len:
        raise SpecFormatError(
            f"{path}: context length {spec.max_seq_len}; --max-seq-len {max_seq_len} contradicts it"
        )
    return spec


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
    """The token-id keys `config` gives (config.json or generation_config.json), as given, except
    that a negative id is None: LLaMA's SentencePiece tokenizer reports -1 for a piece it lacks,
    and early conversions copied it (decapoda-research/llama-7b-hf: "pad_token_id": -1, which
    transformers keeps but no embedding row can be)."""
    given = {key: config[key] for key in HF_TOKEN_DEFAULTS if key in config}
    return {key: _none_if_negative(value) for key, value in given.items()}


def _none_if_negative(value: Any) -> Any:
    negative = isinstance(value, int) and not isinstance(value, bool) and value < 0
    return None if negative else value


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
    dropout = config.get("attention_dropout") or 0.0
    if dropout != 0:  # at inference transformers skips it, but train.py would train without it
        raise SpecFormatError(
            f"attention_dropout {str(dropout)[:40]}: no target trains with attention dropout "
            "(the Cerebras YAML and train.py use 0, as every released Llama)"
        )
    if view["hidden_act"] != "silu":
        raise SpecFormatError(f"hidden_act {view['hidden_act']!r}: SwiGLU needs silu")
    return ModelSpec(
        name=name,
        vocab_size=view["vocab_size"],
        dim=view["hidden_size"],
        n_layers=view["num_hidden_layers"],
        n_heads=view["num_attention_heads"],
        # transformers: `head_dim = config.head_dim or hidden_size // num_attention_heads`
        head_dim=config.get("head_dim") or None,
        n_kv_heads=view["num_key_value_heads"],
        attention_bias=view["attention_bias"],
        mlp_bias=view["mlp_bias"],
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


# What a Meta params.json leaves unsaid, with the values of the releases that share the file's
# form (Meta's model cards and the same releases' Hugging Face config.json files).
UNSTATED = {
    "rope_scaling_factor": (
        "use_scaled_rope but no factor",
        "--rope-scaling-factor",
        "8 for Llama 3.1, 32 for Llama 3.2 1B/3B",
    ),
    "max_seq_len": (
        "no context length",
        "--max-seq-len",
        "2048 for LLaMA 1, 4096 for Llama 2, 8192 for Llama 3, 131072 for Llama 3.1/3.2",
    ),
}


def _one_value(key: str, where: str, sources: dict[str, Any]) -> Any:
    """The value the given sources (label -> value or None) agree on; SpecFormatError when they
    contradict each other, or when none gives one (naming the known values: never a guess)."""
    given = {label: value for label, value in sources.items() if value is not None}
    if len(set(given.values())) > 1:
        listed = ", ".join(f"{label} says {value}" for label, value in given.items())
        raise SpecFormatError(f"{where}: {key.replace('_', ' ')}: {listed}")
    if not given:
        fault, option, known = UNSTATED[key]
        raise SpecFormatError(
            f"{where}: params.json states {fault}: give {option} ({known}) or put the "
            "release's config.json beside it"
        )
    return next(iter(given.values()))


def _sibling_view(params: dict[str, Any], hf_config: dict[str, Any], where: str) -> dict[str, Any]:
    """The config.json beside a params.json, read as transformers reads it, when it describes the
    same model (dim, layers, heads); else SpecFormatError naming the first difference."""
    view = hf_view(hf_config, where)
    for ours, theirs in (("dim", "hidden_size"), ("n_layers", "num_hidden_layers"),
                         ("n_heads", "num_attention_heads")):  # fmt: skip
        if view[theirs] != params[ours]:
            raise SpecFormatError(
                f"{where}: the config.json beside it says {theirs} {view[theirs]!r}, "
                f"params.json {ours} {params[ours]!r}: not the same model"
            )
    return view


def from_meta_params(
    params: dict[str, Any],
    name: str = "model",
    *,
    rope_scaling_factor: float | None = None,
    max_seq_len: int | None = None,
    hf_config: dict[str, Any] | None = None,
    where: str = "params.json",
) -> ModelSpec:
    """Spec from Meta's `params.json` (LLaMA 1/2/3).

    params.json states neither the context length nor (Llama 3.1/3.2, `use_scaled_rope`) the
    RoPE scaling factor, and releases of one form differ in both. Each comes from params.json's
    own key (`max_seq_len`, `rope_scaling_factor`, written by some tools and by Meta's later
    reference code), the option of that name, or `hf_config` (the same release's config.json
    beside it: its `max_position_embeddings` and llama3 `rope_scaling`); the sources given must
    agree, and none given is a SpecFormatError naming the known values.
    """
    view = _sibling_view(params, hf_config, where) if hf_config is not None else None
    sibling_rope = view["rope_scaling"] if view is not None else {"type": "none"}
    sibling_factor = sibling_rope["factor"] if sibling_rope["type"] == "llama3" else None
    scaling = None
    if params.get("use_scaled_rope"):
        factor = _one_value("rope_scaling_factor", where, {
            "params.json": params.get("rope_scaling_factor"),
            "--rope-scaling-factor": rope_scaling_factor,
            "config.json": sibling_factor,
        })  # fmt: skip
        # Meta's reference code hard-wires the other constants for `use_scaled_rope`; the
        # release's config.json states them (the same values for 3.1 and 3.2).
        constants = {"low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192}  # fmt: skip
        if sibling_rope["type"] == "llama3":
            constants = {key: sibling_rope[key] for key in constants}
        scaling = Llama3RopeScaling(factor=factor, **constants)
    elif rope_scaling_factor is not None:
        raise SpecFormatError(
            f"{where}: --rope-scaling-factor given, but params.json has no use_scaled_rope"
        )
    context = _one_value("max_seq_len", where, {
        "params.json": params.get("max_seq_len"),
        "--max-seq-len": max_seq_len,
        "config.json": hf_config.get("max_position_embeddings") if hf_config else None,
    })  # fmt: skip
    vocab = params.get("vocab_size", -1)
    optional = {
        key: params[key]
        for key in ("n_kv_heads", "ffn_dim_multiplier")
        if params.get(key) is not None
    }
    return ModelSpec(
        name=name,
        vocab_size=LLAMA1_TOKENIZER_VOCAB if vocab == -1 else vocab,
        dim=params["dim"],
        n_layers=params["n_layers"],
        n_heads=params["n_heads"],
        multiple_of=params.get("multiple_of", 256),
        norm_eps=params.get("norm_eps", 1e-5),  # Meta's ModelArgs default (LLaMA 1, 2 and 3)
        rope_theta=params.get("rope_theta", 10000.0),
        rope_scaling=scaling,
        max_seq_len=context,
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
        "attention_bias": spec.attention_bias,
        "mlp_bias": spec.mlp_bias,
        "initializer_range": spec.init_std,
        "torch_dtype": spec.dtype.value,
        # The token ids too, as transformers writes them (one eos id as an int), so that the
        # config reads back to the same spec (tests/test_real_world_outputs.py).
        "bos_token_id": spec.bos_token_id,
        "eos_token_id": _eos_as_hf(spec.eos_token_id),
        "pad_token_id": spec.pad_token_id,
    }


def _eos_as_hf(eos: tuple[int, ...] | None) -> int | list[int] | None:
    """The spec's eos ids as config.json gives them: an int for one id, else a list (or null)."""
    if eos is None:
        return None
    return eos[0] if len(eos) == 1 else list(eos)


SPEC_FILE_HEADER = """\
# A llama-codegen model spec: the inputs only (derived numbers: `python -m codegen show --spec FILE`).
# Build from it: python -m codegen build --spec FILE --target torch|jax|onnx|cerebras|all
"""


def to_spec_yaml(spec: ModelSpec) -> str:
    """The spec as a YAML spec file that `load_spec` reads back to an equal spec.

    Every input field is written; computed ones are derived on reading, so they are left out.
    """
    data = spec.input_fields()
    return SPEC_FILE_HEADER + yaml.safe_dump(data, sort_keys=False, width=100)
