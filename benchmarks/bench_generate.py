"""CPU greedy generation of the emitted PyTorch model against transformers, same weights.

    python benchmarks/bench_generate.py            # --smoke: a tiny model, a few tokens

Batch 1 (a 64-token prompt) and batch 8 (prompts of 8 to 64 tokens, left padded, with their
attention_mask), 64 new tokens, greedy, no EOS stop. Ours eager and `generate(compile=True)`;
baselines measured in the same run: transformers' `generate` (dynamic cache, eager) and its
static cache + torch.compile (`cache_implementation="static"`, the fairest baseline). Compilation
happens in the warm-up round, outside the timed ones. The limit: every decode step reads each
weight once for the whole batch (the embedding table: one row per token), so batch B's tokens/s
limit is B x measured bandwidth / weight bytes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from common import BENCH_SPEC, Row, format_rows, in_turns, measured_bandwidth, timed
from transformers import CompileConfig, LlamaConfig, LlamaForCausalLM

from codegen.verifier.emitted import build_target, import_package
from spec import ModelSpec, to_hf_config

SMOKE = "--smoke" in sys.argv
PROMPT, NEW_TOKENS, REPEAT = (8, 4, 1) if SMOKE else (64, 64, 3)
SPEC = (
    {"name": "smoke", "vocab_size": 512, "dim": 64, "n_layers": 2, "n_heads": 4, "ffn_dim": 160,
     "max_seq_len": 64}
    if SMOKE
    else BENCH_SPEC
)  # fmt: skip


def models(spec: ModelSpec, folder: Path):
    package = import_package(build_target(spec, "torch", folder))
    torch.manual_seed(0)
    ours = package.Model().eval()
    config = LlamaConfig(**to_hf_config(spec), attn_implementation="sdpa")
    theirs = LlamaForCausalLM(config).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def batch(spec: ModelSpec, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (size, PROMPT), left padded with 0, prompt lengths spread over PROMPT/8..PROMPT,
    and their attention_mask."""
    rng = torch.Generator().manual_seed(size)
    ids = torch.randint(1, spec.vocab_size, (size, PROMPT), generator=rng)
    mask = torch.ones_like(ids)
    for row in range(size - 1):  # the last row is full length
        pad = PROMPT - max(1, PROMPT * (row + 1) // size)
        ids[row, :pad], mask[row, :pad] = 0, 0
    return ids, mask


def contenders(ours, theirs, ids, mask) -> dict:
    static = CompileConfig(fullgraph=True, mode="default")
    static._compile_all_devices = True  # transformers compiles on CUDA alone unless told

    def theirs_generate(**options):
        return timed(lambda: theirs.generate(
            ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
            do_sample=False, pad_token_id=0, **options,
        ))  # fmt: skip

    ours_options = {"attention_mask": mask, "eos_token_id": None}
    return {
        "eager": timed(lambda: ours.generate(ids, NEW_TOKENS, **ours_options)),
        "torch.compile": timed(
            lambda: ours.generate(ids, NEW_TOKENS, compile=True, **ours_options)
        ),
        "theirs": theirs_generate(),
        "theirs static": theirs_generate(cache_implementation="static", compile_config=static),
    }


def rows() -> list[Row]:
    spec = ModelSpec(**SPEC)
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = models(spec, Path(tmp))
    # Each decode step reads every weight except the embedding table (one row of it per token).
    weight_bytes = 4 * (spec.param_count - spec.vocab_size * spec.dim * (not spec.tie_embeddings))
    bandwidth = measured_bandwidth()
    table = []
    for size in (1, 8):
        ids, mask = batch(spec, size)
        with torch.inference_mode():
            seconds = in_turns(contenders(ours, theirs, ids, mask), repeat=REPEAT)
        limit = size * bandwidth / weight_bytes  # tokens/s
        what = f"CPU generate fp32 {size}x({PROMPT}+{NEW_TOKENS}){' padded' if size > 1 else ''}"
        for name in ("eager", "torch.compile"):
            rate = size * NEW_TOKENS / seconds[name]
            for baseline, label in (("theirs", "transformers generate"),
                                    ("theirs static", "transformers static cache + compile")):  # fmt: skip
                base = size * NEW_TOKENS / seconds[baseline]
                table.append(Row(f"{what}, {name}", rate, base, label, "tok/s", rate / limit))
    return table


if __name__ == "__main__":
    print(format_rows(rows()))
