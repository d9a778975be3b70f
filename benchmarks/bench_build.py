"""Build speed and memory: `build --size 65b --target all`, wall time and peak RSS.

    python benchmarks/bench_build.py

Baseline: the memory a traced export would need just to hold the float32 weights
(param_count x 4 bytes), which is what `torch.onnx.export` or optimum must materialise.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time

from benchmarks.common import ROOT, Row, format_rows
from spec import get_preset


def rows() -> list[Row]:
    spec = get_preset("65b")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "codegen", "build", "--size", "65b", "--target", "all",
             "--out", tmp],  # fmt: skip
            cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
        seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    weights_mib = spec.weight_bytes_fp32 / 2**20
    return [
        Row("build 65b, all targets: wall", seconds, 5.0, "target", "s", higher_is_better=False),
        Row("build 65b, all targets: peak RSS", peak_mib, weights_mib, "fp32 weights",
            "MiB", higher_is_better=False),  # fmt: skip
    ]


if __name__ == "__main__":
    print(format_rows(rows()))
