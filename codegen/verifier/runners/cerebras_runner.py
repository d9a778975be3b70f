"""The emitted Cerebras model.py in the main torch: HF checkpoint -> emitted convert.py -> Model."""

from __future__ import annotations

from pathlib import Path

from backends import BuildOptions
from spec import DType, ModelSpec

from ..emitted import build_target, import_file
from .torch_runner import TorchRunner


class CerebrasAdapter:
    target = "cerebras"
    dtypes = ("float32", "bfloat16")

    def load(self, spec: ModelSpec, dtype: str, checkpoint: Path, workdir: Path) -> TorchRunner:
        folder = build_target(spec, "cerebras", workdir, BuildOptions(dtype=DType(dtype)))
        return self.open(folder, checkpoint, workdir)

    def open(self, folder: Path, checkpoint: Path, workdir: Path) -> TorchRunner:
        """The emitted Cerebras folder's model holding an HF checkpoint, through its convert.py."""
        model_py, convert = import_file(folder / "model.py"), import_file(folder / "convert.py")
        model = model_py.Model().eval()
        # Same API as the torch target's model (forward/start_pos, setup_cache, generate).
        model.load_state_dict(convert.hf_to_cs(convert.load_hf(checkpoint)))
        return TorchRunner(model)
