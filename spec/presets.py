"""Named model sizes: LLaMA (Touvron et al., 2023), Llama 2, Llama 3/3.1, and tiny test models."""

from __future__ import annotations

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


def _llama1(name: str, dim: int, n_layers: int, n_heads: int, eps: float, training: TrainingSpec):
    return ModelSpec(
        name=name, vocab_size=32000, dim=dim, n_layers=n_layers, n_heads=n_heads,
        multiple_of=256, norm_eps=eps, max_seq_len=2048, training=training,
    )  # fmt: skip


def _llama2(name: str, dim: int, n_layers: int, n_heads: int, training: TrainingSpec, **gqa):
    return ModelSpec(
        name=name, vocab_size=32000, dim=dim, n_layers=n_layers, n_heads=n_heads,
        norm_eps=1e-5, max_seq_len=4096, training=training, **gqa,
    )  # fmt: skip


def _llama3(name: str, dim: int, n_layers: int, n_heads: int, training: TrainingSpec, **extra):
    return ModelSpec(
        name=name, vocab_size=128256, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=8,
        ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, training=training,
        **{"multiple_of": 1024, "max_seq_len": 8192, **extra},
    )  # fmt: skip


PRESETS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        _llama1("7b", 4096, 32, 32, 1e-6, _LLAMA1_SMALL),
        _llama1("13b", 5120, 40, 40, 1e-6, _LLAMA1_SMALL),
        _llama1("33b", 6656, 60, 52, 1e-6, _LLAMA1_LARGE),
        _llama1("65b", 8192, 80, 64, 1e-5, _LLAMA1_LARGE),
        _llama2("llama2-7b", 4096, 32, 32, _LLAMA2_SMALL),
        _llama2("llama2-13b", 5120, 40, 40, _LLAMA2_SMALL),
        _llama2(
            "llama2-70b", 8192, 80, 64, _LLAMA2_LARGE,
            n_kv_heads=8, ffn_dim_multiplier=1.3, multiple_of=4096,
        ),  # fmt: skip
        _llama3("llama3-8b", 4096, 32, 32, _LLAMA3_SMALL),
        _llama3("llama3-70b", 8192, 80, 64, _LLAMA3_LARGE, multiple_of=4096),
        _llama3(
            "llama3.1-8b", 4096, 32, 32, _LLAMA3_SMALL,
            max_seq_len=131072, rope_scaling=_LLAMA3_ROPE,
        ),  # fmt: skip
        ModelSpec(
            name="tiny", vocab_size=515, dim=64, n_layers=2, n_heads=4, multiple_of=16,
            max_seq_len=128, norm_eps=1e-5, training=_TINY_TRAINING,
        ),  # fmt: skip
        ModelSpec(
            name="tiny-gqa", vocab_size=515, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
            multiple_of=16, max_seq_len=128, norm_eps=1e-5, tie_embeddings=True,
            training=_TINY_TRAINING,
        ),  # fmt: skip
        ModelSpec(
            name="tiny-llama3", vocab_size=515, dim=64, n_layers=2, n_heads=4, n_kv_heads=1,
            multiple_of=16, max_seq_len=256, norm_eps=1e-5, rope_theta=500000.0,
            rope_scaling=Llama3RopeScaling(
                factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
            training=_TINY_TRAINING,
        ),  # fmt: skip
    ]
}


class UnknownPresetError(KeyError):
    def __str__(self) -> str:
        return f"unknown preset {self.args[0]!r}; choose one of: {', '.join(PRESETS)}"


def get_preset(name: str) -> ModelSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(name) from None
