"""The one registry of per-target runners, used by `codegen verify` and by the test suite.

Each target contributes an adapter that opens an emitted folder with a Hugging Face-layout
safetensors checkpoint (`open`), or builds the folder from a spec first (`load`), and returns a
`Runner`. Factories import their framework only when called, so verifying a torch build never
imports jax.

Add a target: write `<target>_runner.py` with a class satisfying `Adapter`, add one line to
`ADAPTERS`. `codegen verify` and the equivalence tests (tests/test_equivalence.py) then cover it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from spec import ModelSpec


class Runner(Protocol):
    def forward(self, tokens: np.ndarray) -> np.ndarray:
        """Logits (B, T, vocab) for int tokens (B, T), as a float numpy array."""

    def decode(self, tokens: np.ndarray, prefill: int) -> np.ndarray:
        """Logits (B, T, vocab): prefill the first `prefill` tokens, then one token at a time
        through the KV cache."""

    def generate(self, tokens: np.ndarray, max_new_tokens: int) -> np.ndarray:
        """Greedy generation: prompt + new tokens, (B, T + max_new_tokens)."""


class Adapter(Protocol):
    target: str
    dtypes: tuple[str, ...]

    def load(self, spec: ModelSpec, dtype: str, checkpoint: Path, workdir: Path) -> Runner:
        """Build `target` for `spec` in `workdir`, load the HF-layout checkpoint folder."""

    def open(self, folder: Path, checkpoint: Path, workdir: Path) -> Runner:
        """The emitted folder `folder` (built earlier) holding the HF-layout checkpoint; scratch
        files, if any, go to `workdir`, which must outlive the runner."""


def _torch() -> Adapter:
    from .torch_runner import TorchAdapter

    return TorchAdapter()


def _jax() -> Adapter:
    from .jax_runner import JaxAdapter

    return JaxAdapter()


def _onnx() -> Adapter:
    from .onnx_runner import OnnxAdapter

    return OnnxAdapter()


def _cerebras() -> Adapter:
    from .cerebras_runner import CerebrasAdapter

    return CerebrasAdapter()


# target -> factory; factories import their framework lazily.
ADAPTERS: dict[str, Callable[[], Adapter]] = {
    "torch": _torch,
    "jax": _jax,
    "onnx": _onnx,
    "cerebras": _cerebras,
}
