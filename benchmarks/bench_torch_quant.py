"""Batch-1 CPU decode of the emitted torch model: float32 against --quantize int8 and int4.

    python benchmarks/bench_torch_quant.py                 # BENCH_SPEC and the SmolLM2-135M shape
    python benchmarks/bench_torch_quant.py --smoke         # a tiny model, a few tokens

Each build decodes NEW_TOKENS tokens after a PROMPT-token prompt, greedy, eager and with
`generate(compile=True)` (compilation in the warm-up round, outside the timed ones); the decode
time is the generation's time less a prefill-only generation's. Besides torch's weight-only
kernels (the builds' default), each quantized build runs once more with its layers forced onto
the dequantize-then-matmul path, to measure what keeping the weights packed for the kernel buys.
The limit: each decode step reads every weight's bytes once (quantized: integers, scales and
zero points), so tokens/s <= measured bandwidth / those bytes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from common import BENCH_SPEC, in_turns, machine_line, measured_bandwidth, timed

from backends import BuildOptions
from codegen.verifier.emitted import build_target, import_package
from spec import ModelSpec

SMOKE = "--smoke" in sys.argv
PROMPT, NEW_TOKENS, REPEAT = (8, 4, 1) if SMOKE else (64, 64, 3)
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


def decode_rates(model, spec: ModelSpec) -> dict[str, float]:
    """Decode tokens/s, eager and compiled, best of REPEAT, contenders in turns."""
    ids = torch.randint(0, spec.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    runs = {
        f"{how} {steps}": timed(
            lambda steps=steps, how=how: model.generate(
                ids, steps, compile=how == "compiled", eos_token_id=None
            )
        )
        for how in ("eager", "compiled")
        for steps in (1, NEW_TOKENS)
    }
    seconds = in_turns(runs, REPEAT)
    return {
        how: (NEW_TOKENS - 1) / (seconds[f"{how} {NEW_TOKENS}"] - seconds[f"{how} 1"])
        for how in ("eager", "compiled")
    }


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
