"""Build speed and memory: `build --size 65b --target all`, wall time and peak RSS.

    python benchmarks/bench_build.py

Baseline: the memory a traced export would need just to hold the float32 weights
(param_count x 4 bytes), which is what `torch.onnx.export` or optimum must materialise.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time

from common import ROOT, Row, format_rows

from spec import get_preset

BUILD = """
import sys, time
from pathlib import Path
from codegen.cli import main
started = time.perf_counter()
main(["build", "--size", "65b", "--target", "all", "--out", sys.argv[1]], standalone_mode=False)
seconds = time.perf_counter() - started
status = Path("/proc/self/status").read_text()
peak_kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
print(seconds, peak_kib)
"""


def rows() -> list[Row]:
    """Peak RSS is VmHWM: ru_maxrss would carry the parent's peak across exec on Linux."""
    spec = get_preset("65b")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, "-c", BUILD, tmp], cwd=ROOT, check=True, capture_output=True,
            text=True,
        )  # fmt: skip
        wall = time.perf_counter() - started
    _, peak_kib = completed.stdout.split()[-2:]
    weights_mib = spec.weight_bytes_fp32 / 2**20
    return [
        Row(
            "build 65b, all targets: wall (incl. start-up)",
            wall,
            5.0,
            "target",
            "s",
            higher_is_better=False,
        ),
        Row(
            "build 65b, all targets: peak RSS",
            int(peak_kib) / 1024,
            weights_mib,
            "fp32 weights",
            "MiB",
            higher_is_better=False,
        ),
    ]


if __name__ == "__main__":
    print(format_rows(rows()))
