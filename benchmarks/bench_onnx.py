"""ONNX target speed on CPU: onnxruntime prefill and decode tokens/s against baselines measured in
the same run, on the same weights and config (common.BENCH_SPEC, batch BATCH x SEQ):

- the emitted PyTorch model in eager mode (its static KV cache for decode);
- onnxruntime running `torch.onnx.export` of that same torch model, for prefill. torch's default
  exporter (`dynamo=True`, which needs `pip install onnxscript`) exports it only at one fixed
  shape: with a dynamic sequence length, and in the older TorchScript exporter at any shape,
  SDPA's `is_causal=T > 1` becomes a symbolic value and the export fails. Nor can an export
  decode: the emitted model's KV cache is Python state updated in place at a Python `start_pos`.
  So the export baseline has a prefill row only; that is the gap the ONNX target fills.

Each measurement runs in turns with its baselines (median of --repeat rounds), so a machine
busy with other work slows every contender alike.

    pip install onnxscript
    python benchmarks/bench_onnx.py [--decode-steps 32] [--repeat 5]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from common import (
    BATCH,
    BENCH_SPEC,
    SEQ,
    Row,
    format_rows,
    in_turns,
    machine_line,
    measured_bandwidth,
    measured_gemm_flops,
    prefill_flops,
    timed,
)

from backends import BuildOptions
from codegen.verifier import oracle
from codegen.verifier.checkpoints import random_weights, save_hf_checkpoint
from codegen.verifier.emitted import build_target, import_file, import_package
from spec import ModelSpec


def cache_feeds(run, names: list[str], outputs: list[np.ndarray], cached: int) -> dict:
    """The next step's inputs from a model_with_past.onnx run that left `cached` tokens in the
    cache: the greedy token at position `cached`, the mask over every token, and the cache."""
    logits, *present = outputs
    past = {
        n.replace("present", "past_key_values"): v for n, v in zip(names[1:], present, strict=True)
    }
    batch = logits.shape[0]
    mask, position = np.ones((batch, cached + 1), np.int64), np.full((batch, 1), cached)
    return run.feeds(logits[:, -1:].argmax(-1), mask, position, past)


def rows(steps: int = 32, repeat: int = 5) -> list[Row]:
    spec = ModelSpec(**BENCH_SPEC)
    ids = np.random.default_rng(0).integers(0, spec.vocab_size, (BATCH, SEQ))
    torch_ids = torch.from_numpy(ids)
    work = Path(tempfile.mkdtemp())  # the checkpoint outlives every session reading it
    checkpoint = save_hf_checkpoint(spec, random_weights(spec, 0, std=0.02), work / "hf")
    run = import_file(build_target(spec, "onnx", work, BuildOptions(weights=checkpoint)) / "run.py")
    prefill = run.load_session("model.onnx", checkpoint)
    with_past = run.load_session("model_with_past.onnx", checkpoint)
    package = import_package(build_target(spec, "torch", work))
    model = package.Model().eval()
    package.load_checkpoint(model, checkpoint)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch_ids,), work / "exported.onnx", dynamo=True,
            input_names=["input_ids"], output_names=["logits"],
        )  # fmt: skip
    export = ort.InferenceSession(work / "exported.onnx", providers=["CPUExecutionProvider"])

    with torch.inference_mode():
        reference = model(torch_ids).numpy()
    ones = np.ones_like(ids)
    prefill_feeds = run.feeds(ids, ones, run.positions_of(ones), {})
    for name, session, feeds in (
        ("ours", prefill, prefill_feeds), ("torch.onnx.export", export, {"input_ids": ids}),
    ):  # fmt: skip
        error = oracle.relative_error(session.run(["logits"], feeds)[0], reference)
        assert error < 1e-4, f"{name} disagrees with the torch model: {error:.2e}"

    @torch.inference_mode()
    def torch_steps() -> float:
        model.setup_cache(BATCH, SEQ + steps)
        try:
            next_ids = model(torch_ids)[:, -1:].argmax(-1)
            started = time.perf_counter()
            for t in range(steps):
                next_ids = model(next_ids, start_pos=SEQ + t)[:, -1:].argmax(-1)
            return time.perf_counter() - started
        finally:
            model.clear_cache()

    names = [output.name for output in with_past.get_outputs()]

    def ort_steps() -> float:
        feeds = prefill_feeds | run.empty_cache(BATCH)
        feeds = cache_feeds(run, names, with_past.run(names, feeds), SEQ)
        started = time.perf_counter()
        for t in range(steps):
            feeds = cache_feeds(run, names, with_past.run(names, feeds), SEQ + t + 1)
        return time.perf_counter() - started

    prefill_s = in_turns({
        "ours": timed(lambda: prefill.run(["logits"], prefill_feeds)),
        "torch": timed(torch.inference_mode()(lambda: model(torch_ids))),
        "export": timed(lambda: export.run(["logits"], {"input_ids": ids})),
    }, repeat)  # fmt: skip
    decode_s = in_turns({"ours": ort_steps, "torch": torch_steps}, repeat)

    flops = prefill_flops(spec, BATCH * SEQ, SEQ)
    gemm, bandwidth = measured_gemm_flops(), measured_bandwidth()
    prefill_tokens, decode_tokens = BATCH * SEQ, BATCH * steps
    table = [
        Row(
            f"ONNX Runtime prefill fp32 {BATCH}x{SEQ}",
            prefill_tokens / prefill_s["ours"],
            prefill_tokens / prefill_s[key],
            label,
            "tok/s",
            limit_share=flops / prefill_s["ours"] / gemm,
        )
        for key, label in (
            ("torch", "torch eager, emitted"),
            ("export", "ORT on torch.onnx.export"),
        )
    ]
    table.append(Row(
        f"ONNX Runtime decode {BATCH}x({SEQ}+{steps})", decode_tokens / decode_s["ours"],
        decode_tokens / decode_s["torch"], "torch eager, emitted, KV cache", "tok/s",
        limit_share=4 * spec.param_count * steps / decode_s["ours"] / bandwidth,
    ))  # fmt: skip
    shutil.rmtree(work)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"ONNX target (onnxruntime {ort.__version__}, CPU) on {machine_line()}")
    print(f"spec: {BENCH_SPEC}, float32")
    print(format_rows(rows(args.decode_steps, args.repeat)))
    print(
        "% of limit: prefill FLOP/s over the measured float32 GEMM rate; decode float32 weight "
        "bytes read per second over the measured memory bandwidth."
    )


if __name__ == "__main__":
    main()
