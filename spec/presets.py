"""Named model sizes: LLaMA (Touvron et al., 2023), Llama 2, Llama 3/3.1, and tiny test models.

One keyword row per preset; the keys every size of a family shares come from the family's dict
(the papers' tables and Meta's params.json files).
"""

from __future__ import annotations

from typing import Any

from .model import Llama3RopeScaling, ModelSpec, TrainingSpec

_LLAMA1_SMALL = TrainingSpec(peak_lr=3e-4, total_tokens=10**12)
_LLAMA1_LARGE = TrainingSpec(peak_lr=1.5e-4, total_tokens=14 * 10**11)
_LLAMA2_SMALL = TrainingSpec(peak_lr=3e-4, total_tokens=2 * 10**12, seq_len=4096)
_LLAMA2_LARGE = TrainingSpec(peak_lr=1.5e-4, total_tokens=2 * 10**12, seq_len=4096)
# Meta published no learning rates for Llama 3 8B/70B; Llama 2's values by size stand in.
_LLAMA3_SMALL = TrainingSpec(peak_lr=3e-4, total_tokens=15 * 10**12, seq_len=8192)
_LLAMA3_LARGE = TrainingSpec(peak_lr=1.5e-4, total_tokens=15 * 10**12, seq_len=8192)
_TINY_TRAINING = TrainingSpec(
    peak_lr=1e-3, warmup_steps=10, batch_tokens=8 * 128, seq_len=128, total_tokens=100 * 8 * 128
)

_LLAMA3_ROPE = Llama3RopeScaling(
    factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
)
_TINY_LLAMA3_ROPE = Llama3RopeScaling(
    factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64
)

# What every size of a family shares, with the training recipe of its smaller and larger sizes.
# LLaMA 1/2 keep the spec's default token ids, their SentencePiece <s> 1 and </s> 2.
_LLAMA1: dict[str, Any] = {"vocab_size": 32000, "multiple_of": 256, "max_seq_len": 2048}
_LLAMA1_S = {**_LLAMA1, "training": _LLAMA1_SMALL}
_LLAMA1_L = {**_LLAMA1, "training": _LLAMA1_LARGE}
_LLAMA2: dict[str, Any] = {"vocab_size": 32000, "norm_eps": 1e-5, "max_seq_len": 4096}
_LLAMA2_S = {**_LLAMA2, "training": _LLAMA2_SMALL}
_LLAMA2_L = {**_LLAMA2, "training": _LLAMA2_LARGE}
_LLAMA3: dict[str, Any] = {"vocab_size": 128256, "n_kv_heads": 8, "ffn_dim_multiplier": 1.3}
_LLAMA3 |= {"norm_eps": 1e-5, "rope_theta": 500000.0, "max_seq_len": 8192}
# Llama 3 base models' config.json: <|begin_of_text|> 128000, <|end_of_text|> 128001.
_LLAMA3 |= {"bos_token_id": 128000, "eos_token_id": [128001]}
_LLAMA3_S = {**_LLAMA3, "training": _LLAMA3_SMALL}
_LLAMA3_L = {**_LLAMA3, "training": _LLAMA3_LARGE}
_TINY: dict[str, Any] = {"vocab_size": 515, "dim": 64, "n_layers": 2, "n_heads": 4}
_TINY |= {"multiple_of": 16, "max_seq_len": 128, "norm_eps": 1e-5, "training": _TINY_TRAINING}

_SPECS = [
    ModelSpec(name="7b", dim=4096, n_layers=32, n_heads=32, norm_eps=1e-6, **_LLAMA1_S),
    ModelSpec(name="13b", dim=5120, n_layers=40, n_heads=40, norm_eps=1e-6, **_LLAMA1_S),
    ModelSpec(name="33b", dim=6656, n_layers=60, n_heads=52, norm_eps=1e-6, **_LLAMA1_L),
    ModelSpec(name="65b", dim=8192, n_layers=80, n_heads=64, norm_eps=1e-5, **_LLAMA1_L),
    ModelSpec(name="llama2-7b", dim=4096, n_layers=32, n_heads=32, **_LLAMA2_S),
    ModelSpec(name="llama2-13b", dim=5120, n_layers=40, n_heads=40, **_LLAMA2_S),
    ModelSpec(
        name="llama2-70b",
        dim=8192,
        n_layers=80,
        n_heads=64,
        **_LLAMA2_L,
        n_kv_heads=8,
        ffn_dim_multiplier=1.3,
        multiple_of=4096,
    ),
    ModelSpec(name="llama3-8b", dim=4096, n_layers=32, n_heads=32, multiple_of=1024, **_LLAMA3_S),
    ModelSpec(name="llama3-70b", dim=8192, n_layers=80, n_heads=64, multiple_of=4096, **_LLAMA3_L),
    ModelSpec(
        name="llama3.1-8b",
        **{**_LLAMA3_S, "max_seq_len": 131072},
        dim=4096,
        n_layers=32,
        n_heads=32,
        multiple_of=1024,
        rope_scaling=_LLAMA3_ROPE,
    ),
    ModelSpec(name="tiny", **_TINY),
    ModelSpec(name="tiny-gqa", n_kv_heads=2, tie_embeddings=True, **_TINY),
    ModelSpec(
        name="tiny-llama3",
        **{**_TINY, "max_seq_len": 256},
        n_kv_heads=1,
        rope_theta=500000.0,
        rope_scaling=_TINY_LLAMA3_ROPE,
    ),
]
PRESETS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


class UnknownPresetError(KeyError):
    def __str__(self) -> str:
        return f"unknown preset {self.args[0]!r}; choose one of: {', '.join(PRESETS)}"


def get_preset(name: str) -> ModelSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(name) from None
