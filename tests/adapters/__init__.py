"""One harness over backends. Each backend contributes an adapter that builds an emitted
package from a spec, loads the shared canonical (HF-layout safetensors) checkpoint, and runs it.

Add a backend: write `<target>_adapter.py` with a class satisfying `Adapter`, add one line to
`ADAPTERS`. The equivalence tests in tests/test_equivalence.py then cover it.
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


def _torch() -> Adapter:
    from .torch_adapter import TorchAdapter

    return TorchAdapter()


def _jax() -> Adapter:
    from .jax_adapter import JaxAdapter

    return JaxAdapter()


def _onnx() -> Adapter:
    from .onnx_adapter import OnnxAdapter

    return OnnxAdapter()


def _cerebras() -> Adapter:
    from .cerebras_adapter import CerebrasAdapter

    return CerebrasAdapter()


# target -> factory; factories import their framework lazily.
ADAPTERS: dict[str, Callable[[], Adapter]] = {
    "torch": _torch,
    "jax": _jax,
    "onnx": _onnx,
    "cerebras": _cerebras,
}
