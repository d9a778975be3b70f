"""Would fusing q/k/v and gate/up projections pay? One GPU run of the question (device tool).

    PYTHONUNBUFFERED=1 python benchmarks/gpu_fusion.py      # --smoke: tiny config, any device

The emitted model keeps Hugging Face's separate q_proj/k_proj/v_proj and gate_proj/up_proj (their
names are the checkpoint format and the tensor-parallel plans). This script fuses them at load
time into one (q+k+v, dim) and one (2 x ffn, dim) weight per layer, as gpt-fast does, and measures
the bf16 training step of both models, eager and torch.compile, on gpu.py's config.
"""

from __future__ import annotations

import functools
import types

import torch
import torch.nn.functional as F
from gpu import (
    DEVICE,
    SEQ,
    TOKENS,
    TRAIN_FLOPS_PER_TOKEN,
    VOCAB,
    bf16_gemm_flops,
    load_emitted,
    measure,
    ours_model,
    train_rate,
)
from torch import Tensor, nn


def fused_attention(self, x: Tensor, cos: Tensor, sin: Tensor, start_pos: int) -> Tensor:
    B, T, _ = x.shape
    q_size, kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
    q, k, v = F.linear(x, self.qkv_weight).split([q_size, kv_size, kv_size], dim=-1)
    q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
    k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
    v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
    q, k = self.apply_rope(q, cos, sin), self.apply_rope(k, cos, sin)
    y = F.scaled_dot_product_attention(
        q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads
    )
    return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


def fused_mlp(self, x: Tensor) -> Tensor:
    gate, up = F.linear(x, self.gate_up_weight).chunk(2, dim=-1)
    return self.down_proj(F.silu(gate) * up)


def fuse(model: nn.Module, apply_rope) -> nn.Module:
    """Replace each layer's separate projections by one concatenated weight, in place."""
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        qkv = [attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]
        attention.qkv_weight = nn.Parameter(torch.cat(qkv).detach())
        del attention.q_proj, attention.k_proj, attention.v_proj
        attention.apply_rope = apply_rope
        attention.forward = types.MethodType(fused_attention, attention)
        mlp.gate_up_weight = nn.Parameter(
            torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()
        )
        del mlp.gate_proj, mlp.up_proj
        mlp.forward = types.MethodType(fused_mlp, mlp)
    return model


def main() -> None:
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (no CUDA)"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    peak = bf16_gemm_flops()
    llama = load_emitted("torch")
    separate = functools.partial(ours_model, llama)

    def fused():
        return fuse(ours_model(llama), llama.model.apply_rope)

    ids = torch.randint(0, VOCAB, (2, min(64, SEQ)), device=DEVICE)
    with torch.inference_mode():
        model = separate().eval()
        reference = model(ids)
        same = fuse(model, llama.model.apply_rope)(ids)
    print(f"max |logits fused - separate| (bf16): {(same - reference).abs().max().item():.3g}")
    rows: list[tuple[str, float, float]] = []
    for compiled in (False, True):
        for label, make in (("separate", separate), ("fused", fused)):
            rate = functools.partial(train_rate, make, lambda m, x: m(x), compiled)
            mode = "compiled" if compiled else "eager"
            measure(rows, f"train {label} {mode}", TRAIN_FLOPS_PER_TOKEN, rate)
    print(f"\nmeasured bf16 GEMM: {peak / 1e12:.0f} TFLOP/s, {TOKENS} tokens per step")
    rates = {row[0]: row[1] for row in rows}
    for name, rate, flops in rows:
        print(f"| {name} | {rate:,.0f} tok/s | MFU {100 * rate * flops / peak:.1f}% |")
    for mode in ("eager", "compiled"):
        key_fused, key_separate = f"train fused {mode}", f"train separate {mode}"
        if key_fused in rates and key_separate in rates:
            print(f"fused / separate, {mode}: {rates[key_fused] / rates[key_separate]:.3f}x")


if __name__ == "__main__":
    main()
