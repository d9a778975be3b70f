"""CPU prefill and decode of the emitted PyTorch model against transformers, same weights.

    python benchmarks/bench_cpu.py

Prefill (float32, batch 4 x 256 tokens): tokens/s, and the share of this machine's measured
float32 GEMM FLOP/s. Decode (batch 1, 64-token prompt, 128 new tokens, greedy), eager and with
`generate(compile=True)` (its compilation happens in the warm-up round): tokens/s, and the share of
the bandwidth limit (weight bytes read per token over measured memory bandwidth).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from common import (
    BATCH,
    BENCH_SPEC,
    SEQ,
    Row,
    format_rows,
    in_turns,
    measured_bandwidth,
    measured_gemm_flops,
    prefill_flops,
    timed,
)
from transformers import LlamaConfig, LlamaForCausalLM

from codegen.verifier.emitted import build_target, import_package
from spec import ModelSpec, to_hf_config

PROMPT, NEW_TOKENS = 64, 128


def models(spec: ModelSpec, folder: Path):
    package = import_package(build_target(spec, "torch", folder))
    torch.manual_seed(0)
    ours = package.Model().eval()
    config = LlamaConfig(**to_hf_config(spec), attn_implementation="sdpa")
    theirs = LlamaForCausalLM(config).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def rows() -> list[Row]:
    spec = ModelSpec(**BENCH_SPEC)
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = models(spec, Path(tmp))
    ids = torch.randint(
        0, spec.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(0)
    )
    gemm = measured_gemm_flops()
    with torch.inference_mode():
        seconds = in_turns({"ours": timed(lambda: ours(ids)),
                            "theirs": timed(lambda: theirs(ids).logits)}, repeat=5)  # fmt: skip
    t_ours, t_theirs = seconds["ours"], seconds["theirs"]
    tokens = BATCH * SEQ
    prefill = Row(
        "CPU prefill fp32 4x256", tokens / t_ours, tokens / t_theirs, "transformers sdpa",
        "tok/s", prefill_flops(spec, tokens, SEQ) / t_ours / gemm,
    )  # fmt: skip

    prompt = ids[:1, :PROMPT]
    mask = torch.ones_like(prompt)
    with torch.inference_mode():
        seconds = in_turns({
            "ours": timed(lambda: ours.generate(prompt, NEW_TOKENS, eos_token_id=None)),
            "ours compiled": timed(lambda: ours.generate(prompt, NEW_TOKENS, compile=True, eos_token_id=None)),
            "theirs": timed(lambda: theirs.generate(
                prompt, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
            )),
        }, repeat=3)  # fmt: skip
    # Each decode step reads every weight except the embedding table (one row of it).
    weight_bytes = 4 * (spec.param_count - spec.vocab_size * spec.dim * (not spec.tie_embeddings))
    limit = measured_bandwidth() / weight_bytes  # tokens/s
    decode = [
        Row(
            f"CPU decode fp32 1x(64+128), {name}",
            NEW_TOKENS / seconds[key],
            NEW_TOKENS / seconds["theirs"],
            "transformers generate",
            "tok/s",
            NEW_TOKENS / seconds[key] / limit,
        )
        for name, key in [("eager", "ours"), ("torch.compile", "ours compiled")]
    ]
    return [prefill, *decode]


if __name__ == "__main__":
    print(format_rows(rows()))
