"""Hypothesis strategies for tiny random specs covering every architectural switch."""

from __future__ import annotations

from hypothesis import strategies as st

from spec import LinearRopeScaling, Llama3RopeScaling, ModelSpec, YarnRopeScaling


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
def tiny_specs(draw: st.DrawFn, max_seq_len: int = 128) -> ModelSpec:
    """MHA/GQA/MQA, tied or not, any rope theta and scaling, odd vocab sizes."""
    n_heads = draw(st.sampled_from([1, 2, 4]))
    n_kv_heads = draw(st.sampled_from([k for k in (1, 2, 4) if n_heads % k == 0]))
    head_dim = draw(st.sampled_from([8, 16, 32]))
    return ModelSpec(
        name="tiny-random",
        vocab_size=draw(st.integers(17, 700)),
        dim=n_heads * head_dim,
        n_layers=draw(st.integers(1, 3)),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
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
