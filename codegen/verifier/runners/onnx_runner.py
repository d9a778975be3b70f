"""The ONNX target in the equivalence harness: graphs bound to the checkpoint by reference, run
by onnxruntime on CPU through the emitted run.py (forward: model.onnx; decode and generate:
model_with_past.onnx). A pytorch_model.bin checkpoint, whose tensors onnxruntime cannot read by
reference, is embedded instead."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from backends import BuildOptions, checked_reader
from spec import ModelSpec

from ...build import MANIFEST
from ..emitted import build_target, import_file


class OnnxRunner:
    def __init__(self, folder: Path, weights: Path, exact: bool = False):
        """`exact`: onnxruntime's fused quantized products keep float32 activations
        (accuracy_level 0), so a quantized build is held to the oracle on its dequantized
        weights; run.py keeps onnxruntime's default level 4, which rounds them to int8."""
        self.run = import_file(folder / "run.py")
        self.prefill, self.with_past = (
            self.exact_session(folder / graph) if exact else self.run.load_session(graph, weights)
            for graph in ("model.onnx", "model_with_past.onnx")
        )

    @staticmethod
    def exact_session(path: Path):  # onnxruntime is imported only where it runs
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        mask = np.ones_like(tokens)
        feeds = self.run.feeds(tokens, mask, self.run.positions_of(mask), {})
        return self.prefill.run(["logits"], feeds)[0]

    def decode(self, tokens: np.ndarray, prefill: int) -> np.ndarray:
        tokens = tokens.astype(np.int64)
        names = [output.name for output in self.with_past.get_outputs()]
        mask = np.ones_like(tokens)
        positions = self.run.positions_of(mask)
        empty = self.run.empty_cache(tokens.shape[0])
        feeds = self.run.feeds(
            tokens[:, :prefill], mask[:, :prefill], positions[:, :prefill], empty
        )
        steps = []
        for t in range(prefill, tokens.shape[1] + 1):
            logits, *present = self.with_past.run(names, feeds)
            steps.append(logits)
            past = {
                n.replace("present", "past_key_values"): v
                for n, v in zip(names[1:], present, strict=True)
            }
            window = slice(t, t + 1)
            feeds = self.run.feeds(tokens[:, window], mask[:, : t + 1], positions[:, window], past)
        return np.concatenate(steps, axis=1)

    def generate(self, tokens: np.ndarray, max_new_tokens: int) -> np.ndarray:
        # No EOS stop: every target's runner returns exactly max_new_tokens (Runner.generate).
        return self.run.generate(self.with_past, tokens, max_new_tokens, eos_token_id=None)


def pickled(checkpoint: Path) -> bool:
    """Whether the checkpoint is pytorch_model.bin (or its shards); a checkpoint that cannot be
    read says so when the graphs are bound."""
    try:
        return any(map(checked_reader.is_bin, checked_reader.checkpoint_files(checkpoint)[1]))
    except checked_reader.CheckpointError:
        return False


class OnnxAdapter:
    target = "onnx"
    dtypes = ("float32",)  # the graphs compute in float32 whatever the weights' storage dtype

    def load(
        self, spec: ModelSpec, dtype: str, checkpoint: Path, workdir: Path,
        quantize: str | None = None, group_size: int | None = None,
    ) -> OnnxRunner:  # fmt: skip
        options = BuildOptions(
            weights=checkpoint, embed_weights=pickled(checkpoint),
            quantize=quantize, group_size=group_size,  # type: ignore[arg-type]
        )  # fmt: skip
        folder = build_target(spec, "onnx", workdir, options)
        return OnnxRunner(folder, checkpoint, exact=quantize is not None)

    def open(self, folder: Path, checkpoint: Path, workdir: Path) -> OnnxRunner:
        """The folder's graphs bound to the checkpoint as `codegen bind` binds them (quantized
        as its manifest records), written to workdir/onnx: the folder itself is left as it is."""
        manifest = json.loads((folder / MANIFEST).read_text())
        spec = ModelSpec.model_validate(manifest["spec"])
        options = manifest.get("options") or {}
        return self.load(
            spec, "float32", checkpoint, workdir, options.get("quantize"), options.get("group_size")
        )
