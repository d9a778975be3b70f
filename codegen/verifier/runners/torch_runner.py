"""The torch target: the emitted package's Model holding an HF checkpoint, run on CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from backends import BuildOptions
from spec import DType, ModelSpec

from ..emitted import build_target, import_package


class TorchRunner:
    def __init__(self, model: torch.nn.Module, **generate_options: Any):
        """generate_options: extra keywords of the model's generate (the torch target's
        eos_token_id=None; the Cerebras model's generate takes none)."""
        self.model = model
        self.generate_options = generate_options

    @torch.inference_mode()
    def forward(self, tokens: np.ndarray) -> np.ndarray:
        return self.model(torch.as_tensor(tokens, dtype=torch.long)).numpy()

    @torch.inference_mode()
    def decode(self, tokens: np.ndarray, prefill: int) -> np.ndarray:
        ids = torch.as_tensor(tokens, dtype=torch.long)
        self.model.setup_cache(ids.shape[0], ids.shape[1])
        try:
            steps = [self.model(ids[:, :prefill])]
            for t in range(prefill, ids.shape[1]):
                steps.append(self.model(ids[:, t : t + 1], start_pos=t))
        finally:
            self.model.clear_cache()
        return torch.cat(steps, dim=1).numpy()

    def generate(self, tokens: np.ndarray, max_new_tokens: int) -> np.ndarray:
        ids = torch.as_tensor(tokens, dtype=torch.long)
        return self.model.generate(ids, max_new_tokens, **self.generate_options).numpy()


class TorchAdapter:
    target = "torch"
    dtypes = ("float32", "bfloat16")

    def load(self, spec: ModelSpec, dtype: str, checkpoint: Path, workdir: Path) -> TorchRunner:
        folder = build_target(spec, "torch", workdir, BuildOptions(dtype=DType(dtype)))
        return self.open(folder, checkpoint, workdir)

    def open(self, folder: Path, checkpoint: Path, workdir: Path) -> TorchRunner:
        package = import_package(folder)
        model = package.Model().eval()
        package.load_checkpoint(model, checkpoint)
        # No EOS stop: every target's runner returns exactly max_new_tokens (Runner.generate).
        return TorchRunner(model, eos_token_id=None)
