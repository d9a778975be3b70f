"""Accuracy of the torch target's --quantize builds against its float build, random weights.

    python benchmarks/quant_accuracy_torch.py     # ~12 minutes on 2 busy cores

Two random models (dim 64 / 2 layers, dim 256 / 4 layers) at init std 0.02-0.3 (larger stds
give logits structure: the float model's top probability, printed as maxprob, grows), 4 x 160
positions: logits relative error, top-1 agreement with the float model, and a 32-token greedy
continuation (share of tokens equal, tokens before the first difference). docs/quantization.md
(## torch) records one run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from common import machine_line  # first: puts the checkout on sys.path

from backends import BuildOptions
from codegen.verifier.checkpoints import random_weights, save_hf_checkpoint
from codegen.verifier.emitted import build_target, import_package
from spec import ModelSpec

SPECS = {
    "tiny": ModelSpec(name="a", vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      ffn_dim=192, max_seq_len=160),
    "bigger": ModelSpec(name="b", vocab_size=2048, dim=256, n_layers=4, n_heads=8, n_kv_heads=4,
                        ffn_dim=768, max_seq_len=160),
}  # fmt: skip
FORMATS = {"int8": BuildOptions(quantize="int8"), "int4": BuildOptions(quantize="int4"),
           "int4-g64": BuildOptions(quantize="int4", group_size=64),
           "int4-g128": BuildOptions(quantize="int4", group_size=128)}  # fmt: skip
STDS = (0.02, 0.1, 0.2, 0.3)


def packages(spec: ModelSpec, root: Path) -> dict:
    """The float build and every quantized build the spec takes (g128 needs dim >= 128)."""
    built = {"float": import_package(build_target(spec, "torch", root / "float"))}
    for name, options in FORMATS.items():
        if options.quantize == "int4" and spec.dim % options.int4_group_size:
            continue
        built[name] = import_package(build_target(spec, "torch", root / name, options))
    return built


def compare(quantized, floating, ids: torch.Tensor) -> str:
    with torch.no_grad():
        ours, theirs = quantized(ids), floating(ids)
    prompt = ids[:1, :16]
    mine, float_tokens = (
        m.generate(prompt, 32, eos_token_id=None)[0, 16:] for m in (quantized, floating)
    )
    rel = float((ours - theirs).norm() / theirs.norm())
    top1 = float((ours.argmax(-1) == theirs.argmax(-1)).float().mean())
    same = float((mine == float_tokens).float().mean())
    prefix = int((mine != float_tokens).int().cumsum(0).eq(0).sum())
    return f"rel={rel:.4f} top1={top1:.4f} greedy_same={same:.3f} greedy_prefix={prefix}/32"


def main() -> None:
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in SPECS.items():
            built = packages(spec, Path(tmp) / name)
            for std in STDS:
                checkpoint = save_hf_checkpoint(
                    spec, random_weights(spec, seed=5, std=std), Path(tmp) / f"{name}-{std}"
                )
                ids = torch.from_numpy(
                    np.random.default_rng(2).integers(0, spec.vocab_size, (4, 160))
                )
                models = {}
                for fmt, package in built.items():
                    models[fmt] = package.Model().eval()
                    package.load_checkpoint(models[fmt], checkpoint)
                with torch.no_grad():
                    top = float(models["float"](ids).softmax(-1).max(-1).values.mean())
                for fmt in [fmt for fmt in built if fmt != "float"]:
                    result = compare(models[fmt], models["float"], ids)
                    print(f"{name} std={std} {fmt}: {result} maxprob={top:.3f}", flush=True)


if __name__ == "__main__":
    main()
