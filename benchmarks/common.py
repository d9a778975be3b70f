"""Shared benchmark helpers: timing, the machine's limits, the results table.

Every benchmark reports ours, a named baseline measured in the same run, the ratio, and where it
applies the share of the machine's measured limit (GEMM FLOP/s or memory bandwidth).
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from spec import ModelSpec

# The CPU benchmark model of issues 3, 4 and 7 (a small LLaMA with a real vocabulary).
BENCH_SPEC = {
    "name": "bench",
    "vocab_size": 32000,
    "dim": 512,
    "n_layers": 8,
    "n_heads": 8,
    "ffn_dim": 1408,
    "max_seq_len": 512,
}
BATCH, SEQ = 4, 256


@dataclass
class Row:
    what: str
    ours: float
    baseline: float
    baseline_name: str
    unit: str
    limit_share: float | None = None  # ours as a fraction of the machine's limit
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.higher_is_better else self.baseline / self.ours


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """A contender for `in_turns` that times the whole call."""

    def run() -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    return run


def in_turns(contenders: dict[str, Callable[[], float]], repeat: int) -> dict[str, float]:
    """Median seconds of each contender (each returns the seconds of its timed part), run in
    turns after one warm-up round, so a machine busy with other work slows every one alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(repeat + 1):
        for name, contender in contenders.items():
            seconds = contender()
            if round_:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def best_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Fastest wall time of `repeat` runs after `warmup` runs, in seconds: for a machine's limit
    the best run is the measurement, slower ones only saw interference."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def measured_gemm_flops(dtype_name: str = "float32", n: int = 2048) -> float:
    """FLOP/s of one large square matmul in torch: the CPU's practical GEMM limit."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    seconds = best_time(lambda: a @ b, repeat=10)
    return 2 * n**3 / seconds


def measured_bandwidth(nbytes: int = 1 << 28) -> float:
    """Bytes/s streamed by a large read (sum) in torch: the memory-bandwidth limit for decode."""
    import torch

    x = torch.ones(nbytes // 4, dtype=torch.float32)
    seconds = best_time(lambda: x.sum(), repeat=10)
    return nbytes / seconds


def prefill_flops(spec: ModelSpec, tokens: int, seq: int) -> float:
    """Matmul FLOPs of a forward pass: 2 per weight per token (the embedding lookup is free)
    plus causal attention's QK^T and AV (2 * 2 * seq/2 * dim per token per layer)."""
    matmul_params = spec.param_count - spec.vocab_size * spec.dim
    return tokens * (2 * matmul_params + 2 * spec.n_layers * seq * spec.dim)


def format_rows(rows: list[Row]) -> str:
    header = "| what | ours | baseline | ratio | % of limit |\n|---|---|---|---|---|\n"
    lines = [
        f"| {r.what} | {r.ours:,.1f} {r.unit} | {r.baseline:,.1f} {r.unit} ({r.baseline_name}) "
        f"| {r.ratio:.2f}x | {'' if r.limit_share is None else f'{100 * r.limit_share:.0f}%'} |"
        for r in rows
    ]
    return header + "\n".join(lines)


def machine_line() -> str:
    import torch

    return (
        f"{platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )
