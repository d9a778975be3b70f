"""An independent float64 numpy LLaMA forward pass: the reference every backend is held to.

Written from the LLaMA paper and docs/DESIGN.md ("Numeric conventions"), not from the templates.
Weights are a dict in our canonical layout: Hugging Face names, half-layout RoPE rows.
"""

from __future__ import annotations

import math

import numpy as np

from spec import LinearRopeScaling, Llama3RopeScaling, LongRopeScaling, ModelSpec, YarnRopeScaling
from spec.weights import hf_name


def inv_frequencies(spec: ModelSpec, seq_len: int = 1) -> np.ndarray:
    """The rotation frequencies for a sequence of seq_len tokens (LongRoPE picks its factor set
    by it; the others do not depend on it)."""
    d = spec.head_dim
    freqs = 1.0 / spec.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    scaling = spec.rope_scaling
    if isinstance(scaling, LinearRopeScaling):
        return freqs / scaling.factor
    if isinstance(scaling, Llama3RopeScaling):
        out = []
        for f in freqs:
            wavelength = 2 * math.pi / f
            original = scaling.original_max_position_embeddings
            if wavelength < original / scaling.high_freq_factor:
                out.append(f)
            elif wavelength > original / scaling.low_freq_factor:
                out.append(f / scaling.factor)
            else:
                t = (original / wavelength - scaling.low_freq_factor) / (
                    scaling.high_freq_factor - scaling.low_freq_factor
                )
                out.append((1 - t) * f / scaling.factor + t * f)
        return np.array(out)
    if isinstance(scaling, YarnRopeScaling):
        return _yarn(freqs, spec.rope_theta, d, scaling)
    if isinstance(scaling, LongRopeScaling):
        long = seq_len > scaling.original_max_position_embeddings
        return freqs / np.array(scaling.long_factor if long else scaling.short_factor)
    return freqs


def _yarn(freqs: np.ndarray, theta: float, d: int, s: YarnRopeScaling) -> np.ndarray:
    """YaRN as transformers indexes it: pair i ramps from its own frequency (i <= low) to
    frequency / factor (i >= high), low and high being the pair indices whose wavelength fits
    beta_fast and beta_slow times into the original context."""
    L = s.original_max_position_embeddings
    edges = [
        d * math.log(L / (2 * math.pi * b)) / (2 * math.log(theta))
        for b in (s.beta_fast, s.beta_slow)
    ]
    if s.truncate:
        edges = [math.floor(edges[0]), math.ceil(edges[1])]
    low, high = max(edges[0], 0), min(edges[1], d - 1)
    width = (high - low) or 0.001
    gamma = np.clip((np.arange(len(freqs)) - low) / width, 0.0, 1.0)  # 1: fully interpolated
    return gamma * freqs / s.factor + (1 - gamma) * freqs


def attention_factor(spec: ModelSpec) -> float:
    """YaRN's and LongRoPE's scale of cos and sin (the spec holds it resolved); 1 otherwise."""
    scaling = spec.rope_scaling
    if isinstance(scaling, YarnRopeScaling | LongRopeScaling):
        return scaling.attention_factor
    return 1.0


def rotate(
    x: np.ndarray, positions: np.ndarray, freqs: np.ndarray, scale: float = 1.0
) -> np.ndarray:
    """Half-layout rotation of x (T, heads, head_dim): pair i with i + head_dim/2, cos and sin
    times `scale`."""
    angles = positions[:, None] * freqs[None, :]  # (T, head_dim/2)
    cos, sin = scale * np.cos(angles)[:, None, :], scale * np.sin(angles)[:, None, :]
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, groups: int) -> np.ndarray:
    """Causal attention for one sequence: q (T, H, d), k/v (T, KV, d); KV head j serves
    query heads j*groups .. (j+1)*groups - 1."""
    T, n_heads, d = q.shape
    out = np.empty_like(q)
    causal = np.tril(np.ones((T, T), dtype=bool))
    for h in range(n_heads):
        scores = q[:, h] @ k[:, h // groups].T / math.sqrt(d)
        scores = np.where(causal, scores, -np.inf)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        out[:, h] = (scores / scores.sum(axis=-1, keepdims=True)) @ v[:, h // groups]
    return out


def forward(spec: ModelSpec, weights: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """Logits (B, T, vocab) in float64 for integer tokens (B, T)."""
    w = {name: np.asarray(value, dtype=np.float64) for name, value in weights.items()}
    scale = attention_factor(spec)
    batch = []
    for seq in np.asarray(tokens):
        T = len(seq)
        freqs = inv_frequencies(spec, T)
        positions = np.arange(T, dtype=np.float64)
        x = w[hf_name("embed")][seq]
        for i in range(spec.n_layers):

            def proj(h: np.ndarray, key: str, bias: str, i: int = i) -> np.ndarray:
                """h @ W.T (+ b when the spec has that bias): an HF (out, in) Linear."""
                out = h @ w[hf_name(key, i)].T
                return out + w[hf_name(bias, i)] if hf_name(bias, i) in w else out

            h = rms_norm(x, w[hf_name("attn_norm", i)], spec.norm_eps)
            q = proj(h, "wq", "bq").reshape(T, spec.n_heads, spec.head_dim)
            k = proj(h, "wk", "bk").reshape(T, spec.n_kv_heads, spec.head_dim)
            v = proj(h, "wv", "bv").reshape(T, spec.n_kv_heads, spec.head_dim)
            q, k = rotate(q, positions, freqs, scale), rotate(k, positions, freqs, scale)
            y = attention(q, k, v, spec.kv_groups).reshape(T, spec.n_heads * spec.head_dim)
            x = x + proj(y, "wo", "bo")
            h = rms_norm(x, w[hf_name("mlp_norm", i)], spec.norm_eps)
            gate, up = proj(h, "w_gate", "b_gate"), proj(h, "w_up", "b_up")
            x = x + proj(silu(gate) * up, "w_down", "b_down")
        x = rms_norm(x, w[hf_name("norm")], spec.norm_eps)
        head = w[hf_name("embed" if spec.tie_embeddings else "lm_head")]
        batch.append(x @ head.T)
    return np.stack(batch)


# Relative L2 error of logits against the float64 oracle that a backend may reach, per dtype
# (docs/DESIGN.md, "Numeric conventions").
TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 4e-3}


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """‖out − ref‖ / ‖ref‖ over all elements, in float64."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
