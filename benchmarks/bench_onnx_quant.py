"""Quantized ONNX graphs on CPU: batch-1 decode tokens/s of float32, int8 and int4 builds in one
run, and what onnxruntime makes of their DequantizeLinear + MatMul pairs.

The emitted quantized graphs dequantize each linear layer's weight with the standard
`DequantizeLinear` (blocked uint4 with zero points, or per-axis int8) feeding `MatMul`
(backends/onnx/quantized.py). onnxruntime's CPU optimizer fuses each pair into its
`com.microsoft.MatMulNBits` kernel (printed here from `optimized_model_filepath`), with
`accuracy_level` from the session config entry `session.qdq_matmulnbits_accuracy_level`: 4 by
default (activations rounded to int8 per block inside the kernel), 0 for float32 activations.
Both are timed.

Model: the SmolLM2-135M shape (vocabulary 49152, dim 576, 30 layers, 9 heads, 3 key/value heads,
FFN 1536, tied embeddings) with random weights; a 64-token prompt, then --decode-steps greedy
steps through model_with_past.onnx, run in turns (median of --repeat rounds).

    python benchmarks/bench_onnx_quant.py [--decode-steps 32] [--repeat 3]
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from common import in_turns, machine_line, measured_bandwidth

from backends import BuildOptions
from codegen.verifier.checkpoints import random_weights, save_hf_checkpoint
from codegen.verifier.emitted import build_target, import_file
from spec import ModelSpec

SMOLLM2_135M = {
    "name": "smollm2-135m-shape",
    "vocab_size": 49152,
    "dim": 576,
    "n_layers": 30,
    "n_heads": 9,
    "n_kv_heads": 3,
    "ffn_dim": 1536,
    "tie_embeddings": True,
    "max_seq_len": 2048,
}
PROMPT = 64


def session(path: Path, optimized: Path, accuracy_level: int = 4) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(accuracy_level))
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def op_counts(path: Path) -> dict[str, int]:
    graph = onnx.load(path, load_external_data=False).graph
    return dict(collections.Counter(node.op_type for node in graph.node))


def decode_seconds(run, sess: ort.InferenceSession, steps: int) -> float:
    names = [o.name for o in sess.get_outputs()]
    ids = np.random.default_rng(0).integers(0, 49152, (1, PROMPT))
    mask = np.ones_like(ids)
    feeds = run.feeds(ids, mask, run.positions_of(mask), run.empty_cache(1))
    started = None
    for t in range(steps + 1):
        if t == 1:
            started = time.perf_counter()  # the prefill excluded
        logits, *present = sess.run(names, feeds)
        past = {n.replace("present", "past_key_values"): v for n, v in zip(names[1:], present)}
        cached = PROMPT + t
        feeds = run.feeds(logits[:, -1:].argmax(-1), np.ones((1, cached + 1)),
                          np.full((1, 1), cached), past)  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    spec = ModelSpec(**SMOLLM2_135M)
    work = Path(tempfile.mkdtemp())
    checkpoint = save_hf_checkpoint(spec, random_weights(spec, 0, std=0.02), work / "hf")
    sessions, runs, sizes = {}, {}, {}
    for quantize in (None, "int8", "int4"):
        label = quantize or "fp32"
        options = BuildOptions(weights=checkpoint, embed_weights=True, quantize=quantize)
        folder = build_target(spec, "onnx", work / label, options)
        runs[label] = import_file(folder / "run.py")
        graph = folder / "model_with_past.onnx"
        # bytes a decode step reads: all but a quantized build's embedding (one row looked up)
        unread = 4 * spec.vocab_size * spec.dim if quantize else 0
        sizes[label] = graph.stat().st_size - unread
        if not quantize:
            sessions[label] = session(graph, work / "fp32.optimized.onnx")
            continue
        for level in (4, 0):
            optimized = work / f"{label}.{level}.optimized.onnx"
            sessions[f"{label} accuracy_level {level}"] = session(graph, optimized, level)
            fused = [n for n in onnx.load(optimized, load_external_data=False).graph.node
                     if n.op_type == "MatMulNBits"]  # fmt: skip
            attributes = {a.name: a.i for a in fused[0].attribute} if fused else {}
            print(f"{label}, level {level}: optimized graph ops {op_counts(optimized)}; "
                  f"first MatMulNBits {attributes}")  # fmt: skip
    run = runs["fp32"]
    seconds = in_turns(
        {
            name: (lambda s=s: decode_seconds(run, s, args.decode_steps))
            for name, s in sessions.items()
        },
        args.repeat,
    )
    bandwidth = measured_bandwidth()
    print(
        f"onnxruntime {ort.__version__} on {machine_line()}; bandwidth {bandwidth / 1e9:.1f} GB/s"
    )
    print(
        "| graph | weight bytes read per token | decode tok/s (batch 1) | % of bandwidth limit |\n|---|---|---|---|"
    )
    for name, s in seconds.items():
        nbytes = sizes[name.split()[0]]
        rate = args.decode_steps / s
        print(
            f"| {name} | {nbytes / 1e6:.0f} MB | {rate:.1f} | {100 * nbytes * rate / bandwidth:.0f}% |"
        )


if __name__ == "__main__":
    main()
