"""Hypothesis strategies for tiny random specs covering every architectural switch."""

from __future__ import annotations

from hypothesis import strategies as st

from spec import (
    DType,
    LinearRopeScaling,
    Llama3RopeScaling,
    ModelSpec,
    TrainingSpec,
    YarnRopeScaling,
)


@st.composite
def rope_scalings(
    draw: st.DrawFn,
) -> LinearRopeScaling | Llama3RopeScaling | YarnRopeScaling | None:
    """Every kind all targets run (longrope, which Cerebras refuses, has tests/test_rope_types)."""
    kind = draw(st.sampled_from(["none", "linear", "llama3", "yarn"]))
    if kind == "none":
        return None
    factor = draw(st.sampled_from([2.0, 8.0, 32.0]))
    if kind == "linear":
        return LinearRopeScaling(factor=factor)
    if kind == "yarn":
        return YarnRopeScaling(
            factor=factor,
            original_max_position_embeddings=draw(st.sampled_from([16, 32, 64])),
            truncate=draw(st.booleans()),
        )
    high = draw(st.sampled_from([2.0, 4.0]))
    return Llama3RopeScaling(
        factor=factor,
        low_freq_factor=1.0,
        high_freq_factor=high,
        original_max_position_embeddings=draw(st.sampled_from([16, 32, 64])),
    )


@st.composite
def tiny_specs(draw: st.DrawFn, max_seq_len: int = 128, biases: bool = False) -> ModelSpec:
    """MHA/GQA/MQA, tied or not, any rope theta and scaling, odd vocab sizes; head_dim
    sometimes decoupled from dim (width-pruned, Minitron-style: n_heads * head_dim != dim);
    with `biases`, attention_bias and mlp_bias drawn too (the cerebras target has none)."""
    n_heads = draw(st.sampled_from([1, 2, 4]))
    n_kv_heads = draw(st.sampled_from([k for k in (1, 2, 4) if n_heads % k == 0]))
    head_dim = draw(st.sampled_from([8, 16, 32]))
    dim = draw(st.one_of(st.just(n_heads * head_dim), st.sampled_from([24, 40, 96])))
    flags = st.booleans() if biases else st.just(False)
    return ModelSpec(
        name="tiny-random",
        vocab_size=draw(st.integers(17, 700)),
        dim=dim,
        n_layers=draw(st.integers(1, 3)),
        n_heads=n_heads,
        head_dim=head_dim,
        n_kv_heads=n_kv_heads,
        attention_bias=draw(flags),
        mlp_bias=draw(flags),
        ffn_dim=draw(st.integers(8, 160)),
        norm_eps=draw(st.sampled_from([1e-5, 1e-6])),
        rope_theta=draw(st.sampled_from([10000.0, 500000.0, 77.0])),
        rope_scaling=draw(rope_scalings()),
        max_seq_len=max_seq_len,
        tie_embeddings=draw(st.booleans()),
    )


def token_batches(spec: ModelSpec, max_len: int = 64) -> st.SearchStrategy:
    """(batch, seq) token lists over the whole vocabulary."""
    return st.integers(1, 2).flatmap(
        lambda batch: st.integers(1, max_len).flatmap(
            lambda seq: st.lists(
                st.lists(st.integers(0, spec.vocab_size - 1), min_size=seq, max_size=seq),
                min_size=batch,
                max_size=batch,
            )
        )
    )


@st.composite
def token_ids(draw: st.DrawFn, vocab_size: int) -> dict[str, object]:
    """bos/eos/pad ids as configs give them: absent (None), one eos id or several."""
    ids = st.integers(0, vocab_size - 1)
    eos = draw(st.none() | st.lists(ids, min_size=1, max_size=3).map(tuple))
    return {
        "bos_token_id": draw(st.none() | ids),
        "eos_token_id": eos,
        "pad_token_id": draw(st.none() | ids),
    }


@st.composite
def training_specs(draw: st.DrawFn) -> TrainingSpec:
    """Training recipes other than the paper's (the Cerebras YAML and train.py read them)."""
    seq_len = draw(st.sampled_from([64, 2048, 8192]))
    return TrainingSpec(
        peak_lr=draw(st.sampled_from([3e-4, 1.5e-4, 1e-3])),
        warmup_steps=draw(st.integers(0, 5000)),
        seq_len=seq_len,
        batch_tokens=seq_len * draw(st.integers(1, 4096)),
        weight_decay=draw(st.sampled_from([0.0, 0.1])),
        precision=draw(st.sampled_from(list(DType))),
    )


@st.composite
def round_trip_specs(draw: st.DrawFn) -> ModelSpec:
    """Any valid spec, tiny or of a real model's size (no weights are made from these): explicit
    FFN widths that Meta's rule would not give, RoPE scaling, tying, token ids, dtypes, odd names,
    floats that YAML and JSON must keep exactly, training recipes."""
    base = draw(tiny_specs()) if draw(st.booleans()) else None
    n_heads = draw(st.sampled_from([1, 8, 32, 40]))
    n_kv_heads = draw(st.sampled_from([k for k in (1, 2, 8, 40) if n_heads % k == 0]))
    fields = base.model_dump(exclude_computed_fields=True) if base else {
        "name": "m",
        "vocab_size": draw(st.integers(1, 2**17)),
        "dim": n_heads * draw(st.sampled_from([2, 64, 128])),
        "n_layers": draw(st.integers(1, 80)),
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "ffn_dim": draw(st.integers(1, 60000)),
        "rope_theta": draw(st.floats(1.5, 1e7, allow_nan=False)),
        "rope_scaling": draw(rope_scalings()),
        "max_seq_len": draw(st.integers(1, 2**17)),
        "tie_embeddings": draw(st.booleans()),
    }  # fmt: skip
    fields |= {
        "name": draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)),
        "norm_eps": draw(st.floats(1e-9, 0.5, allow_nan=False)),
        "init_std": draw(st.floats(1e-4, 1.0, allow_nan=False)),
        "dtype": draw(st.sampled_from(list(DType))),
        "training": draw(training_specs()),
        **draw(token_ids(fields["vocab_size"])),
    }
    return ModelSpec(**fields)
