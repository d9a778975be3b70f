"""Batch-1 CPU decode of the emitted torch model: float32 against --quantize int8 and int4.

    python benchmarks/bench_torch_quant.py                 # BENCH_SPEC and the SmolLM2-135M shape
    python benchmarks/bench_torch_quant.py --smoke         # a tiny model, a few tokens

Each build decodes NEW_TOKENS tokens after a PROMPT-token prompt, greedy, eager and through
`compiled_forward` as `generate(compile=True)` runs it (compilation in the warm-up round,
outside the timed ones); only the decode steps are timed. Besides torch's weight-only
kernels (the builds' default), each quantized build runs once more with its layers forced onto
the dequantize-then-matmul path, to measure what keeping the weights packed for the kernel buys.
The limit: each decode step reads every weight's bytes once (quantized: integers, scales and
zero points), so tokens/s <= measured bandwidth / those bytes.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from common import BENCH_SPEC, in_turns, machine_line, measured_bandwidth

from backends import BuildOptions
from codegen.verifier.emitted import build_target, import_package
from spec import ModelSpec

SMOKE = "--smoke" in sys.argv
PROMPT, NEW_TOKENS, REPEAT = (8, 4, 1) if SMOKE else (64, 32, 2)
SMOLLM2_135M = {"name": "smollm2-135m-shape", "vocab_size": 49152, "dim": 576, "n_layers": 30,
                "n_heads": 9, "n_kv_heads": 3, "ffn_dim": 1536, "max_seq_len": 256,
                "tie_embeddings": True}  # fmt: skip
SMOKE_SPEC = {"name": "smoke", "vocab_size": 512, "dim": 64, "n_layers": 2, "n_heads": 4,
              "ffn_dim": 192, "max_seq_len": 64}  # fmt: skip
FORMATS = {"float32": BuildOptions(), "int8": BuildOptions(quantize="int8"),
           "int4": BuildOptions(quantize="int4")}  # fmt: skip


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes one decode step reads: every parameter and buffer but the RoPE tables, the
    embedding counted as one row per token (a lookup) unless it is also the float head."""
    embedding = model.model.embed_tokens.weight
    lookup_only = getattr(model.lm_head, "weight", None) is not embedding
    total = 0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if name.startswith("rope_"):
            continue
        rows = tensor.shape[0] if tensor is embedding and lookup_only else 1
        total += tensor.numel() * tensor.element_size() // rows
    return total


def dequantizing(model: torch.nn.Module, package) -> None:
    """Force every quantized layer onto the dequantize-then-matmul path (re-packing int4 plain)."""
    module = package.model
    if hasattr(module, "INT8_KERNEL_DEVICES"):
        module.INT8_KERNEL_DEVICES = frozenset()
        return
    generator = torch.Generator().manual_seed(0)
    for layer in model.modules():
        if isinstance(layer, module.Int4Linear):
            layer.kernel_layout = lambda device: "plain"
            weight = torch.randn(layer.out_features, layer.in_features, generator=generator) * 0.02
            layer.quantize_(weight)


def decode_seconds(model, ids: torch.Tensor, compiled: bool) -> float:
    """Seconds of NEW_TOKENS greedy batch-1 decode steps after a prefill of `ids` (1, PROMPT),
    as generate runs them (a tensor start_pos: one compiled graph for every position)."""
    step = model.compiled_forward if compiled else model
    model.setup_cache(1, PROMPT + NEW_TOKENS + 1)
    try:
        token = model(ids, logits_to_keep=1)[:, -1:].argmax(-1)
        slot = torch.tensor(PROMPT)
        started = time.perf_counter()
        for _ in range(NEW_TOKENS):
            token = step(token, start_pos=slot)[:, -1:].argmax(-1)
            slot = slot + 1
        return time.perf_counter() - started
    finally:
        model.clear_cache()


def decode_rates(model, spec: ModelSpec) -> dict[str, float]:
    """Decode tokens/s, eager and compiled: median of REPEAT after a warm-up (compilation)."""
    ids = torch.randint(0, spec.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    runs = {
        how: lambda how=how: decode_seconds(model, ids, how == "compiled")
        for how in ("eager", "compiled")
    }
    return {how: NEW_TOKENS / seconds for how, seconds in in_turns(runs, REPEAT).items()}


def main() -> None:
    print(machine_line())
    bandwidth = measured_bandwidth()
    print(f"measured bandwidth: {bandwidth / 1e9:.1f} GB/s")
    specs = [SMOKE_SPEC] if SMOKE else [BENCH_SPEC, SMOLLM2_135M]
    with tempfile.TemporaryDirectory() as tmp:
        for fields in specs:
            spec = ModelSpec(**fields)
            for name, options in FORMATS.items():
                package = import_package(
                    build_target(spec, "torch", Path(tmp) / f"{spec.name}-{name}", options)
                )
                torch.manual_seed(0)
                model = package.Model().eval()
                variants = (
                    {"kernel": False}
                    if name == "float32"
                    else {"kernel": False, "dequantize": True}
                )
                for variant, dequantize in variants.items():
                    if dequantize:
                        dequantizing(model, package)
                    size = weight_bytes(model)
                    rates = decode_rates(model, spec)
                    limit = bandwidth / size
                    shown = ", ".join(
                        f"{how} {rate:6.1f} tok/s ({100 * rate / limit:3.0f}% of {limit:.0f})"
                        for how, rate in rates.items()
                    )
                    label = name if name == "float32" else f"{name} {variant}"
                    print(
                        f"{spec.name:20s} {label:18s} {size / 1e6:7.1f} MB/token  {shown}",
                        flush=True,
                    )
                    torch._dynamo.reset()  # each build compiles afresh


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
