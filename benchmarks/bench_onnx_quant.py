"""Quantized ONNX graphs on CPU: batch-1 decode tokens/s of float32, int8 and int4 builds, and the
standard-domain alternative the ONNX target did not choose, measured in the same run.

The emitted quantized graphs compute every linear layer with onnxruntime's `MatMulNBits`
(backends/onnx/quantized.py). The alternative, ONNX's own `DequantizeLinear` (blocked uint4 with
zero points, or per-axis int8) feeding a `MatMul`, is made here from the same integers by
rewriting each MatMulNBits node; onnxruntime's optimized graph (`optimized_model_filepath`) then
shows whether it fused DequantizeLinear + MatMul back into MatMulNBits.

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
from onnx import TensorProto, helper, numpy_helper

from backends import BuildOptions
from backends.quantize import unpack_int4
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


def dequantize_linear_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same integers as DequantizeLinear (opset 23) + MatMul: B transposed to MatMul's
    (K, N), blocks along axis 0 (int4: uint4 with zero points; int8: int8, per-axis scales)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type != "MatMulNBits":
            nodes.append(node)
            continue
        attrs = {a.name: a.i for a in node.attribute}
        k, n, bits, block = attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]
        x, q_name, s_name, z_name = node.input
        q = numpy_helper.to_array(inits.pop(q_name))
        scales = numpy_helper.to_array(inits.pop(s_name))
        zero = numpy_helper.to_array(inits.pop(z_name))
        if bits == 4:
            values = unpack_int4(q.reshape(n, -1))[:, :k].T  # (K, N)
            zero_points = unpack_int4(zero)[:, : k // block].T  # (K / block, N)
            uint4 = helper.tensor_dtype_to_np_dtype(TensorProto.UINT4)
            new = [
                numpy_helper.from_array(values.astype(uint4), q_name),
                numpy_helper.from_array(np.ascontiguousarray(scales.T), s_name),
                numpy_helper.from_array(zero_points.astype(uint4), z_name),
            ]
            dq = helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [q_name + ".dq"],
                                  axis=0, block_size=block)  # fmt: skip
        else:
            values = (q.reshape(n, -1)[:, :k].astype(np.int16) - 128).astype(np.int8).T
            new = [
                numpy_helper.from_array(np.ascontiguousarray(values), q_name),
                numpy_helper.from_array(np.ascontiguousarray(scales[:, 0]), s_name),
            ]
            dq = helper.make_node("DequantizeLinear", [q_name, s_name], [q_name + ".dq"], axis=1)
        inits.update({t.name: t for t in new})
        nodes += [dq, helper.make_node("MatMul", [x, q_name + ".dq"], list(node.output))]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(inits.values())
    return model


def session(path: Path, optimized: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
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
        optimized = work / f"{label}.optimized.onnx"
        sessions[f"{label} MatMulNBits" if quantize else label] = session(graph, optimized)
        if quantize:
            print(f"{label} MatMulNBits, optimized graph ops:", op_counts(optimized))
            standard = dequantize_linear_form(onnx.load(graph))
            onnx.checker.check_model(standard, full_check=True)
            path = work / f"{label}.dq.onnx"
            onnx.save(standard, path)
            optimized = work / f"{label}.dq.optimized.onnx"
            sessions[f"{label} DequantizeLinear+MatMul"] = session(path, optimized)
            print(f"{label} DQ+MatMul, optimized graph ops:", op_counts(optimized))
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
