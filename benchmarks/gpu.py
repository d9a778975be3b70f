"""GPU benchmark for the `device` tool: one self-contained script, under 6 minutes on one H100.

    PYTHONUNBUFFERED=1 python benchmarks/gpu.py       # from the repository root, one CUDA GPU

Needs only torch, transformers and jax (no pydantic, no build): it imports the emitted code that
is checked in under generated/7b/ and gives it the benchmark's config, as a user would.

Rows, each measured in this run:
- bf16 training step (forward, cross-entropy, backward, fused AdamW) of the emitted PyTorch model,
  eager and torch.compile, against transformers' LlamaForCausalLM (sdpa) on the same config;
  config: vocab 32000, dim 2048, 16 layers, 16 heads, ffn 5632, batch 4 x 2048 tokens;
- the emitted JAX train step (value_and_grad of the loss, AdamW with global-norm clipping);
- bf16 prefill (inference forward) of the emitted PyTorch model against transformers.
MFU is model FLOPs per token (6 x params + 6 x layers x seq x dim for training, a third of that
for a forward) over the bf16 GEMM rate measured here (8192^3 matmul).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

EMITTED = Path(__file__).resolve().parent.parent / "generated" / "7b"
SMOKE = "--smoke" in sys.argv  # a tiny config that runs anywhere, to check the script itself
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if SMOKE:
    VOCAB, DIM, LAYERS, HEADS, FFN, MAX_SEQ = 512, 64, 2, 4, 160, 64
    BATCH, SEQ, STEPS = 2, 64, 1
else:
    VOCAB, DIM, LAYERS, HEADS, FFN, MAX_SEQ = 32000, 2048, 16, 16, 5632, 2048
    BATCH, SEQ, STEPS = 4, 2048, 10
TOKENS = BATCH * SEQ
PARAMS = VOCAB * DIM * 2 + LAYERS * (4 * DIM * DIM + 3 * DIM * FFN + 2 * DIM) + DIM
TRAIN_FLOPS_PER_TOKEN = 6 * PARAMS + 6 * LAYERS * SEQ * DIM


def load_emitted(target: str):
    """The emitted package generated/7b/<target> under its own name (its imports are relative)."""
    name = f"llama_{target}"
    folder = EMITTED / target
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def device_seconds(fn: Callable[[], object], steps: int = STEPS, warmup: int = 3) -> float:
    """Mean seconds per call after `warmup` calls (compilation happens there)."""
    for _ in range(warmup):
        fn()
    synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize()
    return (time.perf_counter() - started) / steps


def bf16_gemm_flops() -> float:
    n = 1024 if SMOKE else 8192
    a, b = (torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    return 2 * n**3 / device_seconds(lambda: a @ b, steps=20)


def ours_model(llama):
    args = llama.ModelArgs(
        vocab_size=VOCAB, dim=DIM, n_layers=LAYERS, n_heads=HEADS, n_kv_heads=HEADS,
        hidden_dim=FFN, max_seq_len=MAX_SEQ, dtype=torch.bfloat16,
    )  # fmt: skip
    with torch.device(DEVICE):
        return llama.Model(args)


def transformers_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=HEADS, intermediate_size=FFN, max_position_embeddings=MAX_SEQ,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
        attn_implementation="sdpa",
    )  # fmt: skip
    with torch.device(DEVICE):
        return LlamaForCausalLM(config).to(torch.bfloat16)


def torch_train_step(model, logits_of):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ + 1), device=DEVICE)

    def step():
        logits = logits_of(model, ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def train_rate(make: Callable, logits_of: Callable, compiled: bool) -> float:
    model = make()
    step = torch_train_step(torch.compile(model) if compiled else model, logits_of)
    return TOKENS / device_seconds(step)


def prefill_rate(make: Callable, logits_of: Callable) -> float:
    model = make().eval()
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), device=DEVICE)
    with torch.inference_mode():
        return TOKENS / device_seconds(lambda: logits_of(model, ids))


def check_same_logits(llama) -> str:
    """The emitted model and transformers agree on CUDA in bf16 with the same weights."""
    ours, theirs = ours_model(llama).eval(), transformers_model().eval()
    theirs.load_state_dict(ours.state_dict())
    ids = torch.randint(0, VOCAB, (2, min(128, SEQ)), device=DEVICE)
    with torch.inference_mode():
        a, b = ours(ids), theirs(ids).logits.float()
    return f"max |logits ours - transformers| (bf16, 2 sequences): {(a - b).abs().max().item():.3g}"


def jax_train_tokens_per_s() -> float:
    """The JAX train step, measured in a process of its own so that torch's cached memory and
    XLA's preallocation never meet."""
    command = [sys.executable, __file__, "--jax"] + ["--smoke"] * SMOKE
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return float(result.stdout.split()[-1])


def jax_train_rate() -> float:
    import jax

    model = load_emitted("jax").model
    sharding = importlib.import_module("llama_jax.sharding")
    config = model.Config(
        vocab_size=VOCAB, dim=DIM, n_layers=LAYERS, n_heads=HEADS, n_kv_heads=HEADS,
        hidden_dim=FFN, max_seq_len=MAX_SEQ, dtype="bfloat16",
    )  # fmt: skip

    def step(params, opt_state, tokens, targets):
        loss, grads = jax.value_and_grad(model.loss)(params, tokens, targets, config)
        params, opt_state = sharding.adamw(params, grads, opt_state)
        return params, opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    params = model.init_params(jax.random.key(0), config)

    def zeros():  # float32 moments; mu and nu need buffers of their own, both are donated
        return jax.tree.map(lambda p: jax.numpy.zeros(p.shape, "float32"), params)

    opt_state = {"step": jax.numpy.zeros((), "int32"), "mu": zeros(), "nu": zeros()}
    ids = jax.random.randint(jax.random.key(1), (BATCH, SEQ + 1), 0, VOCAB)
    tokens, targets = ids[:, :-1], ids[:, 1:]
    for _ in range(3):
        params, opt_state, loss = step(params, opt_state, tokens, targets)
    loss.block_until_ready()
    started = time.perf_counter()
    for _ in range(STEPS):
        params, opt_state, loss = step(params, opt_state, tokens, targets)
    loss.block_until_ready()
    return TOKENS * STEPS / (time.perf_counter() - started)


def report(rows: list[tuple[str, float, float]], peak: float) -> None:
    print(f"\nmeasured bf16 GEMM: {peak / 1e12:.0f} TFLOP/s")
    print("| what | tokens/s | MFU |\n|---|---|---|")
    for name, rate, flops in rows:
        print(f"| {name} | {rate:,.0f} | {100 * rate * flops / peak:.1f}% |")
    rates = {name: rate for name, rate, _ in rows}
    for ours, theirs in [("train ours compiled", "train transformers compiled"),
                         ("train ours eager", "train transformers eager"),
                         ("prefill ours eager", "prefill transformers eager")]:  # fmt: skip
        if ours in rates and theirs in rates:
            print(f"ratio {ours} / {theirs}: {rates[ours] / rates[theirs]:.2f}x")


def measure(rows: list, name: str, flops: float, fn: Callable[[], float]) -> None:
    """Append (name, tokens/s, FLOPs per token); a failure is printed and the run goes on."""
    started = time.perf_counter()
    try:
        rate = fn()
    except Exception:  # noqa: BLE001 -- one broken contender must not hide the others' numbers
        traceback.print_exc()
        return
    rows.append((name, rate, flops))
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    print(f"{name}: {rate:,.0f} tokens/s ({time.perf_counter() - started:.0f} s)", flush=True)


def main() -> None:
    if "--jax" in sys.argv:
        print(jax_train_rate())
        return
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (no CUDA)"
    print(f"device: {name}, torch {torch.__version__}, smoke: {SMOKE}", flush=True)
    peak = bf16_gemm_flops()
    print(f"measured bf16 GEMM: {peak / 1e12:.1f} TFLOP/s", flush=True)
    rows: list[tuple[str, float, float]] = []
    measure(rows, "train JAX jit", TRAIN_FLOPS_PER_TOKEN, jax_train_tokens_per_s)
    llama = load_emitted("torch")
    print(check_same_logits(llama), flush=True)
    contenders = [
        ("ours eager", lambda: ours_model(llama), lambda m, x: m(x), False),
        ("transformers eager", transformers_model, lambda m, x: m(x).logits, False),
        ("ours compiled", lambda: ours_model(llama), lambda m, x: m(x), True),
        ("transformers compiled", transformers_model, lambda m, x: m(x).logits, True),
    ]
    for name, make, logits_of, compiled in contenders:
        train = functools.partial(train_rate, make, logits_of, compiled)
        measure(rows, f"train {name}", TRAIN_FLOPS_PER_TOKEN, train)
    for name, make, logits_of, _ in contenders[:2]:
        prefill = functools.partial(prefill_rate, make, logits_of)
        measure(rows, f"prefill {name}", TRAIN_FLOPS_PER_TOKEN / 3, prefill)
    report(rows, peak)


if __name__ == "__main__":
    main()
