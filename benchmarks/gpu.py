"""GPU benchmark for the `device` tool: one self-contained script, under 6 minutes on one H100.

    python benchmarks/gpu.py            # from the repository root, on a machine with a CUDA GPU

bf16 training step (forward, backward, fused AdamW) of the emitted PyTorch model on a 1B-class
config (vocab 32000, dim 2048, 16 layers, 16 heads, ffn 5632, batch 4 x 2048), eager and
torch.compile, against transformers' LlamaForCausalLM on the same config in the same run; MFU
against the bf16 GEMM rate measured here; bf16 prefill. Prints one table.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spec import ModelSpec, to_hf_config  # noqa: E402
from tests.support import build_target, import_package  # noqa: E402

SPEC = ModelSpec(
    name="gpu-1b", vocab_size=32000, dim=2048, n_layers=16, n_heads=16, ffn_dim=5632,
    max_seq_len=2048,
)  # fmt: skip
BATCH, SEQ, STEPS = 4, 2048, 10


def cuda_time(fn, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def gemm_flops() -> float:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    return 2 * n**3 / cuda_time(lambda: a @ b, steps=20)


def train_flops_per_token() -> float:
    """6 * params + 6 * layers * seq * dim (DESIGN.md's MFU convention)."""
    return 6 * SPEC.param_count + 6 * SPEC.n_layers * SEQ * SPEC.dim


def train_step_fn(model, logits_of):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, SPEC.vocab_size, (BATCH, SEQ + 1), device="cuda")

    def step():
        logits = logits_of(model, ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def ours_model(folder: Path):
    package = import_package(build_target(SPEC, "torch", folder))
    with torch.device("cuda"):
        return package.Model(package.ModelArgs(dtype=torch.bfloat16))


def theirs_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**to_hf_config(SPEC), attn_implementation="sdpa")
    return LlamaForCausalLM(config).to(device="cuda", dtype=torch.bfloat16)


def main() -> None:
    peak = gemm_flops()
    flops = train_flops_per_token()
    tokens = BATCH * SEQ
    results: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        candidates = [
            ("ours eager", lambda: ours_model(Path(tmp) / "a"), lambda m, x: m(x), False),
            ("ours compiled", lambda: ours_model(Path(tmp) / "b"), lambda m, x: m(x), True),
            ("transformers eager", theirs_model, lambda m, x: m(x).logits, False),
            ("transformers compiled", theirs_model, lambda m, x: m(x).logits, True),
        ]
        for name, make, logits_of, compiled in candidates:
            model = make()
            if compiled:
                model = torch.compile(model)
            seconds = cuda_time(train_step_fn(model, logits_of), steps=STEPS)
            results.append((f"train {name}", tokens / seconds))
            del model
            torch.cuda.empty_cache()
        model = ours_model(Path(tmp) / "c").eval()
        ids = torch.randint(0, SPEC.vocab_size, (BATCH, SEQ), device="cuda")
        with torch.inference_mode():
            seconds = cuda_time(lambda: model(ids), steps=STEPS)
        prefill = tokens / seconds
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"measured bf16 GEMM: {peak / 1e12:.0f} TFLOP/s")
    print("| what | tokens/s | MFU |\n|---|---|---|")
    for name, rate in results:
        print(f"| {name} | {rate:,.0f} | {100 * rate * flops / peak:.1f}% |")
    print(f"| prefill ours eager | {prefill:,.0f} | {100 * prefill * flops / 3 / peak:.1f}% |")
    rates = dict(results)
    print(
        "ratio ours compiled / transformers compiled: "
        f"{rates['train ours compiled'] / rates['train transformers compiled']:.2f}x"
    )


if __name__ == "__main__":
    main()
