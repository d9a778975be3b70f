"""The jax target: the emitted package's jitted pure functions over its loaded params pytree."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import jax
import numpy as np

from backends import BuildOptions
from spec import DType, ModelSpec

from ..emitted import build_target, import_package


class JaxRunner:
    def __init__(self, package: ModuleType, params):
        self.package, self.params = package, params
        self._forward = jax.jit(package.forward)
        self._forward_cached = jax.jit(package.forward_cached)

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        return np.asarray(self._forward(self.params, tokens))

    def decode(self, tokens: np.ndarray, prefill: int) -> np.ndarray:
        cache = self.package.init_cache(tokens.shape[0], tokens.shape[1])
        logits, cache = self._forward_cached(self.params, tokens[:, :prefill], cache, 0)
        steps = [logits]
        for t in range(prefill, tokens.shape[1]):
            logits, cache = self._forward_cached(self.params, tokens[:, t : t + 1], cache, t)
            steps.append(logits)
        return np.concatenate([np.asarray(step) for step in steps], axis=1)

    def generate(self, tokens: np.ndarray, max_new_tokens: int) -> np.ndarray:
        # No EOS stop: every target's runner returns exactly max_new_tokens (Runner.generate).
        return np.asarray(
            self.package.generate(self.params, tokens, max_new_tokens, eos_token_id=None)
        )


class JaxAdapter:
    target = "jax"
    dtypes = ("float32", "bfloat16")

    def load(self, spec: ModelSpec, dtype: str, checkpoint: Path, workdir: Path) -> JaxRunner:
        folder = build_target(spec, "jax", workdir, BuildOptions(dtype=DType(dtype)))
        return self.open(folder, checkpoint, workdir)

    def open(self, folder: Path, checkpoint: Path, workdir: Path) -> JaxRunner:
        package = import_package(folder)
        return JaxRunner(package, package.load_checkpoint(checkpoint))
