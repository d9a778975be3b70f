"""JAX target speed on CPU: the emitted package's jitted forward (and jitted KV-cache generation)
against the emitted PyTorch model in eager mode, measured in the same run on the same weights and
config (common.BENCH_SPEC: vocab 32000, dim 512, 8 layers, 8 heads, ffn 1408; batch 4 x seq 256),
float32.

Contenders run in turns (median of --repeat rounds after a warm-up round that also compiles), so
a machine busy with other work slows both alike. Compile time is reported separately.

    python benchmarks/bench_jax.py [--repeat 5] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import torch
from common import (
    BATCH,
    BENCH_SPEC,
    SEQ,
    Row,
    format_rows,
    in_turns,
    machine_line,
    measured_gemm_flops,
    prefill_flops,
    timed,
)

from codegen.verifier import oracle
from codegen.verifier.checkpoints import random_weights, save_hf_checkpoint
from codegen.verifier.emitted import build_target, import_package
from spec import ModelSpec


def rows(repeat: int = 5, new: int = 32) -> list[Row]:
    spec = ModelSpec(**BENCH_SPEC)
    ids = np.random.default_rng(0).integers(0, spec.vocab_size, (BATCH, SEQ))
    torch_ids = torch.from_numpy(ids)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_hf_checkpoint(spec, random_weights(spec, 0, std=0.02), Path(tmp) / "hf")
        jax_pkg = import_package(build_target(spec, "jax", Path(tmp)))
        torch_pkg = import_package(build_target(spec, "torch", Path(tmp)))
        params = jax_pkg.load_checkpoint(checkpoint)
        model = torch_pkg.Model().eval()
        torch_pkg.load_checkpoint(model, checkpoint)

    forward = jax.jit(jax_pkg.forward)
    started = time.perf_counter()
    logits = forward(params, ids).block_until_ready()
    compile_s = time.perf_counter() - started
    with torch.inference_mode():
        reference = model(torch_ids).numpy()
    error = oracle.relative_error(np.asarray(logits), reference)
    assert error < 1e-5, f"JAX and torch disagree: relative error {error:.2e}"

    prompt = ids[:, : SEQ // 4]
    jax_tokens = np.asarray(jax_pkg.generate(params, prompt, new, eos_token_id=None))
    torch_tokens = model.generate(
        torch.from_numpy(prompt), max_new_tokens=new, eos_token_id=None
    ).numpy()
    agree = float(np.mean(jax_tokens == torch_tokens))

    forward_s = in_turns({
        "jax": timed(lambda: forward(params, ids).block_until_ready()),
        "torch": timed(torch.inference_mode()(lambda: model(torch_ids))),
    }, repeat)  # fmt: skip
    generate_s = in_turns({
        "jax": timed(lambda: jax_pkg.generate(params, prompt, new, eos_token_id=None).block_until_ready()),
        "torch": timed(lambda: model.generate(torch.from_numpy(prompt), max_new_tokens=new, eos_token_id=None)),
    }, repeat)  # fmt: skip

    flops = prefill_flops(spec, BATCH * SEQ, SEQ)
    gemm = measured_gemm_flops()
    table = [
        Row(
            f"JAX jitted forward fp32 {BATCH}x{SEQ}", BATCH * SEQ / forward_s["jax"],
            BATCH * SEQ / forward_s["torch"], "torch eager, emitted", "tok/s",
            limit_share=flops / forward_s["jax"] / gemm,
        ),
        Row(
            f"JAX greedy generate {BATCH}x({SEQ // 4}+{new})", BATCH * new / generate_s["jax"],
            BATCH * new / generate_s["torch"], "torch eager, emitted, KV cache", "new tok/s",
        ),
    ]  # fmt: skip
    print(
        f"JAX vs torch: forward relative error {error:.1e}; first call (compile + run) "
        f"{compile_s:.2f} s; generate: {100 * agree:.0f}% of tokens identical"
    )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    print(f"JAX target (jax {jax.__version__}, {jax.devices()[0].platform}) on {machine_line()}")
    print(format_rows(rows(args.repeat, args.new_tokens)))


if __name__ == "__main__":
    main()
