"""Batch-1 bf16 decoding on one GPU (device tool): the emitted generate, eager and compiled,
against transformers' generate, with the same weights, on gpu.py's 1B config.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_decode.py      # --smoke: tiny config, any device

64-token prompt, 128 new tokens, greedy. The limit is the measured memory bandwidth (a large
device-to-device copy, bytes read plus written) over the weight bytes each token reads.
"""

from __future__ import annotations

import time

import torch
from gpu import (
    DEVICE,
    DIM,
    PARAMS,
    SMOKE,
    VOCAB,
    load_emitted,
    ours_model,
    synchronize,
    transformers_model,
)

PROMPT, NEW_TOKENS = (16, 16) if SMOKE else (64, 128)


def bandwidth() -> float:
    """Bytes/s of a 1 GiB copy on the device (read + write), best of ten."""
    source = torch.empty(1 << 29, dtype=torch.bfloat16, device=DEVICE)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(11):
        synchronize()
        started = time.perf_counter()
        target.copy_(source)
        synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * source.nbytes / best


def best_seconds(generate) -> tuple[float, torch.Tensor]:
    """Best of three timed calls after one warm-up call (where compilation happens), and the
    tokens generated."""
    tokens = generate()
    best = float("inf")
    for _ in range(3):
        synchronize()
        started = time.perf_counter()
        tokens = generate()
        synchronize()
        best = min(best, time.perf_counter() - started)
    return best, tokens


def main() -> None:
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (no CUDA)"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    llama = load_emitted("torch")
    ours, theirs = ours_model(llama).eval(), transformers_model().eval()
    theirs.load_state_dict(ours.state_dict())
    prompt = torch.randint(0, VOCAB, (1, PROMPT), device=DEVICE)
    mask = torch.ones_like(prompt)
    contenders = {
        "ours eager": lambda: ours.generate(prompt, NEW_TOKENS, eos_token_id=None),
        "ours compiled": lambda: ours.generate(prompt, NEW_TOKENS, compile=True, eos_token_id=None),
        "transformers": lambda: theirs.generate(
            prompt, attention_mask=mask, max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
        ),
    }  # fmt: skip
    with torch.inference_mode():
        rates, outputs = {}, {}
        for key, generate in contenders.items():
            seconds, outputs[key] = best_seconds(generate)
            rates[key] = NEW_TOKENS / seconds
            print(f"{key}: {rates[key]:,.0f} tok/s", flush=True)
    weight_bytes = 2 * (PARAMS - VOCAB * DIM)  # bf16; one embedding row per token
    limit = bandwidth() / weight_bytes
    print(f"bandwidth limit: {limit:,.0f} tok/s ({weight_bytes / 1e9:.2f} GB of weights per token)")
    for key, rate in rates.items():
        print(f"| decode bf16 1x(64+128), {key} | {rate:,.0f} tok/s | {100 * rate / limit:.0f}% |")
    for key in ("ours eager", "ours compiled"):
        same = (outputs[key] == outputs["transformers"]).float().mean().item()
        print(
            f"{key} / transformers: {rates[key] / rates['transformers']:.2f}x; "
            f"tokens equal to transformers': {100 * same:.0f}%"
        )


if __name__ == "__main__":
    main()
