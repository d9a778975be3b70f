"""Batch-1 bf16 decoding on one GPU (device tool), in one invocation of about 6 minutes on an
H200: the emitted generate, eager, compiled, compiled with CUDA graphs, and compiled as
generate(compile=True) compiles on CUDA (CUDA graphs + coordinate-descent tuning, the emitted
compile_options), against transformers' generate, eager and with its static cache +
torch.compile, on the same random weights.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_decode.py      # --smoke: tiny configs, any device

Configs: gpu.py's 1B-class one (vocab 32000, dim 2048, 16 layers, 16 heads, ffn 5632) and a
7B-shaped one (Llama-2-7B's: dim 4096, 32 layers, 32 heads, ffn 11008, vocab 32000). Each:
64-token prompt, 128 new tokens, greedy, no EOS stop; a contender's time is the best of two timed
calls after one warm-up call (where compilation and CUDA-graph capture happen). The limit is the
measured memory bandwidth (a 1 GiB device-to-device copy, bytes read plus written) over the
weight bytes each token reads (every weight but the embedding table, of which one row).
A contender that fails prints its error and the run goes on; one that would start after
BUDGET_S seconds is skipped, so the run stays within the device's time.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable

import torch
from gpu import DEVICE, SMOKE, load_emitted, synchronize

PROMPT, NEW_TOKENS = (8, 8) if SMOKE else (64, 128)
BUDGET_S = float("inf") if SMOKE else 400.0
# name: (vocab, dim, layers, heads, ffn); the 7B shape first, the target (>= 60% of the limit)
CONFIGS = (
    {"7B-shaped": (512, 128, 2, 4, 256), "1B-class": (512, 64, 2, 4, 160)}
    if SMOKE
    else {"7B-shaped": (32000, 4096, 32, 32, 11008), "1B-class": (32000, 2048, 16, 16, 5632)}
)
STARTED = time.perf_counter()


def bandwidth() -> float:
    """Bytes/s of a 1 GiB copy on the device (read + write), best of ten."""
    source = torch.empty(1 << (20 if SMOKE else 29), dtype=torch.bfloat16, device=DEVICE)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(11):
        synchronize()
        started = time.perf_counter()
        target.copy_(source)
        synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * source.nbytes / best


def best_seconds(generate: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    """Best of two timed calls after one warm-up call, and the tokens of the last."""
    tokens = generate()
    best = float("inf")
    for _ in range(2):
        synchronize()
        started = time.perf_counter()
        tokens = generate()
        synchronize()
        best = min(best, time.perf_counter() - started)
    return best, tokens


def models(llama, vocab: int, dim: int, layers: int, heads: int, ffn: int):
    """(ours, transformers'), bf16 on the device, transformers' holding ours' random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    args = llama.ModelArgs(
        vocab_size=vocab, dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=heads,
        hidden_dim=ffn, max_seq_len=PROMPT + NEW_TOKENS, dtype=torch.bfloat16,
    )  # fmt: skip
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, intermediate_size=ffn, max_position_embeddings=PROMPT + NEW_TOKENS,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False, attn_implementation="sdpa",
    )  # fmt: skip
    with torch.device(DEVICE):
        ours = llama.Model(args).eval()
        theirs = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def contenders(
    ours, theirs, prompt: torch.Tensor, emitted_options: dict
) -> dict[str, Callable[[], torch.Tensor]]:
    """name: a call generating NEW_TOKENS; emitted_options: the emitted compile_options for
    the prompt's device."""
    from transformers import CompileConfig

    mask = torch.ones_like(prompt)
    static = CompileConfig(fullgraph=True)  # mode reduce-overhead: CUDA graphs, as ours
    static._compile_all_devices = True  # on CPU too (--smoke)

    def theirs_generate(**options) -> Callable[[], torch.Tensor]:
        return lambda: theirs.generate(
            prompt, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
            do_sample=False, pad_token_id=0, **options,
        )  # fmt: skip

    return {
        "ours eager": lambda: ours.generate(prompt, NEW_TOKENS, eos_token_id=None),
        "ours compiled": lambda: compiled(ours, prompt, "default"),
        "ours compiled, CUDA graph": lambda: compiled(
            ours, prompt, "reduce-overhead", mode="reduce-overhead"
        ),
        "ours compiled, CUDA graph + tuning (generate's default)": lambda: compiled(
            ours, prompt, "emitted", **emitted_options
        ),
        "transformers eager": theirs_generate(),
        "transformers static cache + compile": theirs_generate(
            cache_implementation="static", compile_config=static
        ),
    }


def compiled(ours, prompt: torch.Tensor, key: str, **compile_kwargs) -> torch.Tensor:
    """ours.generate(compile=True) with its decode step compiled with torch.compile's
    `compile_kwargs` (mode or options), once per key (generate's own choice on CUDA is the
    emitted compile_options; this sets each explicitly)."""
    cache = ours.__dict__.setdefault("bench_compiled", {})
    if key not in cache:
        cache[key] = torch.compile(ours.forward, fullgraph=True, **compile_kwargs)
    ours.compiled_forward = cache[key]  # replaces the cached_property's value
    return ours.generate(prompt, NEW_TOKENS, compile=True, eos_token_id=None)


def run_config(llama, name: str, shape: tuple[int, ...], limit_bandwidth: float) -> list[str]:
    vocab, dim = shape[:2]
    ours, theirs = models(llama, *shape)
    params = sum(p.numel() for p in ours.parameters())
    weight_bytes = 2 * (params - vocab * dim)  # bf16; one embedding row per token
    limit = limit_bandwidth / weight_bytes
    print(f"{name}: {params / 1e9:.2f} B parameters, limit {limit:,.0f} tok/s", flush=True)
    prompt = torch.randint(0, vocab, (1, PROMPT), device=DEVICE)
    rows, outputs = [], {}
    with torch.inference_mode():
        options = llama.model.compile_options(prompt.device)
        for key, generate in contenders(ours, theirs, prompt, options).items():
            if time.perf_counter() - STARTED > BUDGET_S:
                print(f"{name}, {key}: skipped (past {BUDGET_S:.0f} s)", flush=True)
                continue
            began = time.perf_counter()
            try:
                seconds, outputs[key] = best_seconds(generate)
            except Exception:  # noqa: BLE001 report and go on: one run must bring back every other row
                print(f"{name}, {key}: FAILED\n{traceback.format_exc(limit=-3)}", flush=True)
                continue
            rate = NEW_TOKENS / seconds
            print(
                f"{name}, {key}: {rate:,.0f} tok/s ({time.perf_counter() - began:.0f} s)",
                flush=True,
            )
            rows.append(
                f"| {name} bf16 1x({PROMPT}+{NEW_TOKENS}), {key} | {rate:,.0f} tok/s | {100 * rate / limit:.0f}% |"
            )
    for key, tokens in outputs.items():
        if key != "ours eager" and "ours eager" in outputs:
            same = (tokens == outputs["ours eager"]).float().mean().item()
            print(f"{name}, {key}: tokens equal to ours eager at {100 * same:.0f}% of positions")
    del ours, theirs
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (no CUDA)"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    llama = load_emitted("torch")
    limit_bandwidth = bandwidth()
    print(f"measured bandwidth: {limit_bandwidth / 1e12:.2f} TB/s (copy, read + write)", flush=True)
    table = ["| what | tok/s | % of bandwidth limit |", "|---|---|---|"]
    for config, shape in CONFIGS.items():
        table += run_config(llama, config, shape, limit_bandwidth)
    print("\n".join(table))
    print(f"total {time.perf_counter() - STARTED:.0f} s")


if __name__ == "__main__":
    main()
