"""Run every benchmark and print one table; write it to benchmarks/RESULTS.md.

    pip install -e ".[all,bench]"        # bench adds onnxscript for the torch.onnx.export baseline
    python benchmarks/run_all.py

Each row: what, ours, the named baseline measured in the same run, the ratio (>1 means ours is
better), and the share of this machine's measured limit where one applies.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.util
from pathlib import Path

from common import Row, format_rows, machine_line

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
# Sections from here on hold results of benchmarks/gpu.py on a device machine, pasted by hand:
# a CPU run keeps them.
GPU_HEADING = "\n## GPU"
MODULES = ["bench_build", "bench_cpu", "bench_generate", "bench_jax", "bench_onnx"]


def versions() -> str:
    names = ["torch", "transformers", "jax", "onnxruntime", "onnx"]
    found = []
    for name in names:
        if importlib.util.find_spec(name) is not None:
            found.append(f"{name} {importlib.import_module(name).__version__}")
    return ", ".join(found)


def main() -> None:
    table: list[Row] = []
    skipped: list[str] = []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
            table += module.rows()
        except ModuleNotFoundError as exc:  # e.g. onnxscript for the export baseline
            skipped.append(f"{name}: skipped, missing module {exc.name!r}")
        print(f"{name}: done", flush=True)
    text = format_rows(table)
    print(text)
    for line in skipped:
        print(line)
    today = datetime.date.today().isoformat()
    RESULTS.write_text(
        f"# Benchmark results\n\n{today}, CPU: {machine_line()}; {versions()}.\n"
        "Command: `python benchmarks/run_all.py`. Ratio > 1 means ours is better.\n\n"
        f"{text}\n" + "".join(f"\n{line}\n" for line in skipped) + gpu_sections()
    )


def gpu_sections() -> str:
    old = RESULTS.read_text() if RESULTS.exists() else ""
    start = old.find(GPU_HEADING)
    return old[start:] if start >= 0 else ""


if __name__ == "__main__":
    main()
