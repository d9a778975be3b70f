"""Batch-1 decode and 512-token prefill on CPU at float32 / 16-bit / int8 / int4: the emitted
models against llama.cpp, onnxruntime-genai and transformers on the same weights (issue 16).

    PYTHON=python bash scripts/llamacpp_env.sh   # once: builds llama-cpp-python (minutes)
    python benchmarks/bench_quant.py             # --smoke: a tiny model, a few tokens, one round

The model: SmolLM2-135M's shape (vocab 49152, dim 576, 30 layers, 9 heads / 3 KV heads, FFN 1536,
tied embeddings, rope_theta 10000, 2048 positions) with random weights from transformers'
`LlamaForCausalLM` initialisation (seed 0): no hub is reachable here. Decode speed does not depend
on the values, only on the bytes read. The converters want a tokenizer, so a byte-fallback BPE of
exactly 49152 entries is made with the `tokenizers` library (its merges are synthetic; no text is
ever tokenized). Every contender reads that one folder:

- llama.cpp (llama-cpp-python from scripts/llamacpp_env.sh): llama.cpp's own converter
  (convert_hf_to_gguf.py from the sdist) writes f32 and f16 GGUFs, llama.cpp's own quantizer
  (`llama_model_quantize`) q8_0, q4_0, q4_1 and q4_K_M from the f32 one; run in a worker process
  (benchmarks/llamacpp_worker.py) with n_threads = torch's thread count.
- onnxruntime-genai: its model builder at fp32, int8 and int4 (`-e cpu`, default options).
- transformers: `generate` in float32 (eager, dynamic cache).
- ours: the emitted torch model (eager and `generate(compile=True)`) and the emitted ONNX
  `run.py` session, at float32, bfloat16 (torch) and `--quantize int8/int4` (reported as not
  built yet while the build refuses the option).

Measured, greedy, no end-of-sequence stop, each contender in turns with the others (median of
--repeat rounds after a warm-up round that also compiles):

- decode tok/s = (N - 1) / (t(64-token prompt + N new) - t(64-token prompt + 1 new)), N = 128:
  the same subtraction for every contender, whatever its API, so the prefill and the first token
  drop out;
- prefill tok/s = 512 / t(512-token prompt + 1 new).

Threads: --threads (default torch's, 2 here) for torch and llama.cpp; ONNX Runtime and genai keep
their default (one per core). Run it on a quiet machine: llama.cpp's threads spin at barriers,
and with the cores oversubscribed (load average ~10 on 2 cores, 2026-11-30) its 2-thread decode
ran 11-15x slower than 1 thread; the load average before and after is printed.

The limit: a decode step reads every weight once (an embedding table that is not also the head:
one row, not counted), so % of limit = decode tok/s x bytes per token / bandwidth, with bytes per
token counted from each contender's own files at their own bit widths (GGUF tensor sizes; ONNX
initializers; torch state dicts), scales and zero points included; the KV cache (under 2% here)
and activations are not counted. The bandwidth is measured in the same run (common.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import machine_line, measured_bandwidth

from backends import BuildOptions
from codegen.verifier.emitted import build_target, import_file, import_package
from spec import DType
from spec.io import load_spec

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("LLAMA_CODEGEN_CACHE", Path.home() / ".cache" / "llama-codegen"))
LLAMACPP_VERSION = "0.3.36"  # scripts/llamacpp_env.sh's
LLAMACPP_PYTHON = CACHE / "llamacpp-venv" / "bin" / "python"
CONVERTER = (
    CACHE / "llamacpp-src" / f"llama_cpp_python-{LLAMACPP_VERSION}" / "vendor" / "llama.cpp"
    / "convert_hf_to_gguf.py"
)  # fmt: skip
# sentencepiece, which the converter imports before it looks for a tokenizer.json.
CONVERTER_DEPS = CACHE / "llamacpp-convert-deps"

SMOLLM2_135M = {
    "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "intermediate_size": 1536, "tie_word_embeddings": True,
    "rope_theta": 10000.0, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
    "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip
SMOKE_SHAPE = SMOLLM2_135M | {
    "vocab_size": 2048, "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 512, "max_position_embeddings": 256,
}  # fmt: skip
NOT_BUILT = "not built yet"


@dataclasses.dataclass
class Contender:
    """One row: `run(prompt ids, new tokens) -> (seconds, new token ids)`, or why it has none."""

    name: str
    bits: str  # fp32, 16-bit, int8, int4
    run: Callable[[list[int], int], tuple[float, list[int]]] | None = None
    weight_bytes: int | None = None  # read per decode step
    note: str = ""  # why it was not measured
    times: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    tokens: list[int] = dataclasses.field(default_factory=list)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 160 else text[:157] + "..."


# --- the shared weights -----------------------------------------------------------------------


def save_tokenizer(folder: Path, vocab_size: int) -> None:
    """A Llama-style byte-fallback BPE (tokenizer.json, as LlamaTokenizerFast saves it) with
    exactly `vocab_size` entries: <unk> <s> </s>, the 256 <0xNN> byte tokens, printable ASCII and
    U+2581, then synthetic two- and three-character merges. llama.cpp's converter reads it as
    a Llama HF vocabulary (gguf.LlamaHfVocab), the genai builder copies it."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    specials = ["<unk>", "<s>", "</s>"]
    vocab = {token: i for i, token in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    chars = ["\u2581", *string.printable[:94]]
    vocab |= {c: len(vocab) + i for i, c in enumerate(chars)}
    merges = []
    pairs = [(a, b) for a in chars for b in chars]
    for left, right in pairs + [(a + b, c) for a, b in pairs for c in chars]:
        if len(vocab) == vocab_size:
            break
        vocab[left + right] = len(vocab)
        merges.append((left, right))
    if len(vocab) != vocab_size:
        raise ValueError(f"cannot make a {vocab_size}-token vocabulary (at most {len(vocab)})")
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    tokenizer.decoder = decoders.Sequence([
        decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(" ", 1, 0),
    ])  # fmt: skip
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
              "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def save_model(folder: Path, shape: dict) -> Path:
    """The random-weight model in float32 (config.json, model.safetensors, tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape, torch_dtype="float32"))
    model.save_pretrained(folder)
    save_tokenizer(folder, shape["vocab_size"])
    return folder


def run_logged(command: list[str], log: Path, env: dict | None = None) -> None:
    """Run a converter, its output into `log`; RuntimeError with its last line on failure."""
    with log.open("w") as out:
        code = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, check=False
        ).returncode
    if code:
        lines = log.read_text(errors="replace").strip().splitlines() or ["(no output)"]
        raise RuntimeError(f"{Path(command[1]).name} exited {code}: {lines[-1][:200]}")


# --- bytes read per decode step ---------------------------------------------------------------


def torch_weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of every tensor in the state dict, each storage once (tied weights), except an
    embedding table that shares no storage with another tensor (the head reads it otherwise)."""
    owners: dict[int, list[tuple[str, torch.Tensor]]] = {}
    for name, tensor in module.state_dict().items():
        owners.setdefault(tensor.untyped_storage().data_ptr(), []).append((name, tensor))
    total = 0
    for named in owners.values():
        if len(named) == 1 and "embed_tokens" in named[0][0]:
            continue
        total += max(t.untyped_storage().nbytes() for _, t in named)
    return total


def onnx_weight_bytes(graph_file: Path) -> int:
    """Bytes of the initializers (inline or external, each external range once) of an ONNX model,
    except those only a Gather reads (an untied embedding table: one row per token)."""
    import onnx

    model = onnx.load(str(graph_file), load_external_data=False)
    consumers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    seen, total = set(), 0
    for init in model.graph.initializer:
        if consumers.get(init.name, set()) <= {"Gather"}:
            continue
        external = {e.key: e.value for e in init.external_data}
        if external:
            key = (external["location"], external.get("offset", "0"))
            if key in seen:
                continue
            seen.add(key)
            total += int(external["length"])
        elif init.HasField("raw_data"):  # as stored: int4 packs two values per byte
            total += len(init.raw_data)
        else:  # typed fields (numpy unpacks int4 to one byte each, so only for other dtypes)
            total += len(onnx.numpy_helper.to_array(init).tobytes())
    return total


# --- baselines --------------------------------------------------------------------------------


class LlamaCpp:
    """The worker process of benchmarks/llamacpp_worker.py, in the llama.cpp venv."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [str(LLAMACPP_PYTHON), str(HERE / "llamacpp_worker.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def ask(self, **request) -> dict:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the llama.cpp worker exited")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def llamacpp_contenders(
    hf: Path, work: Path, threads: int, n_ctx: int
) -> tuple[list[Contender], LlamaCpp | None]:
    """f32 and f16 from llama.cpp's converter, the rest from its quantizer (on the f32 GGUF);
    the worker that runs them (None when scripts/llamacpp_env.sh has not run)."""
    kinds = [("f32", "fp32"), ("f16", "16-bit"), ("q8_0", "int8"), ("q4_0", "int4"),
             ("q4_1", "int4"), ("q4_K_M", "int4")]  # fmt: skip
    if not (LLAMACPP_PYTHON.exists() and CONVERTER.exists() and CONVERTER_DEPS.exists()):
        note = "not set up: run bash scripts/llamacpp_env.sh"
        return [Contender(f"llama.cpp {kind}", bits, note=note) for kind, bits in kinds], None
    worker = LlamaCpp()
    env = dict(os.environ, PYTHONPATH=str(CONVERTER_DEPS))
    contenders = []
    for kind, bits in kinds:
        contender = Contender(f"llama.cpp {kind}", bits)
        gguf = work / f"model-{kind}.gguf"
        try:
            if kind in ("f32", "f16"):
                command = [sys.executable, str(CONVERTER), str(hf), "--outtype", kind,
                           "--outfile", str(gguf)]  # fmt: skip
                run_logged(command, work / f"convert-{kind}.log", env)
            else:
                worker.ask(op="quantize", src=str(work / "model-f32.gguf"), dst=str(gguf),
                           ftype=kind.upper())  # fmt: skip
            contender.weight_bytes = worker.ask(op="bytes", path=str(gguf))["bytes"]
            worker.ask(op="load", path=str(gguf), threads=threads, n_ctx=n_ctx)
        except Exception as exc:  # noqa: BLE001 -- one broken contender must not hide the rest
            contender.note = f"failed: {one_line(exc)}"
        else:

            def run(prompt, new, path=str(gguf)):
                reply = worker.ask(op="run", path=path, prompt=prompt, new=new)
                return reply["seconds"], reply["tokens"]

            contender.run = run
        contenders.append(contender)
    return contenders, worker


def genai_contenders(hf: Path, work: Path) -> list[Contender]:
    """onnxruntime-genai's model builder at fp32, int8 and int4 (-e cpu), run by og.Generator."""
    import onnxruntime_genai as og

    contenders = []
    for precision in ("fp32", "int8", "int4"):
        contender = Contender(f"onnxruntime-genai {precision}", precision)
        out = work / f"genai-{precision}"
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf),
                   "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(work / "genai-cache")]  # fmt: skip
        try:
            run_logged(command, work / f"genai-{precision}.log")
            contender.weight_bytes = onnx_weight_bytes(out / "model.onnx")
            model = og.Model(str(out))
        except Exception as exc:  # noqa: BLE001 -- one broken contender must not hide the rest
            contender.note = f"failed: {one_line(exc)}"
        else:

            def run(prompt, new, model=model):
                params = og.GeneratorParams(model)
                length = len(prompt) + new
                params.set_search_options(max_length=length, min_length=length, do_sample=False)
                generator = og.Generator(model, params)
                started = time.perf_counter()
                generator.append_tokens(prompt)
                for _ in range(new):
                    generator.generate_next_token()
                seconds = time.perf_counter() - started
                return seconds, [int(t) for t in generator.get_sequence(0)[len(prompt) :]]

            contender.run = run
        contenders.append(contender)
    return contenders


def transformers_contender(hf: Path) -> Contender:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()

    @torch.inference_mode()
    def run(prompt, new):
        ids = torch.tensor([prompt])
        started = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             pad_token_id=0)  # fmt: skip
        return time.perf_counter() - started, out[0, len(prompt) :].tolist()

    return Contender("transformers generate", "fp32", run, torch_weight_bytes(model))


# --- ours -------------------------------------------------------------------------------------


def quantize_options(**options) -> BuildOptions | None:
    """BuildOptions with `quantize`/`group_size`, or None where this checkout has no such field."""
    fields = {field.name for field in dataclasses.fields(BuildOptions)}
    return BuildOptions(**options) if "quantize" in options.keys() <= fields else None


def torch_contenders(spec, hf: Path, work: Path, bits: str, options: BuildOptions | None):
    """The emitted torch model, eager and generate(compile=True), from one build."""
    names = [f"ours torch eager {bits}", f"ours torch compiled {bits}"]
    if options is None:
        return [Contender(name, bits, note=NOT_BUILT) for name in names]
    try:
        package = import_package(build_target(spec, "torch", work / f"torch-{bits}", options))
        model = package.Model().eval()
        if options.dtype is None:
            package.load_checkpoint(model, hf)
        else:  # a 16-bit copy of the float32 checkpoint (the loader refuses to cast it)
            reference = package.Model().eval()
            package.load_checkpoint(reference, hf)
            model.load_state_dict(reference.state_dict())
            del reference
    except Exception as exc:  # noqa: BLE001 -- one broken contender must not hide the rest
        refused = "does not take --quantize" in str(exc)
        note = NOT_BUILT if refused else f"failed: {one_line(exc)}"
        return [Contender(name, bits, note=note) for name in names]
    weight_bytes = torch_weight_bytes(model)

    def runner(compile: bool):
        def run(prompt, new):
            ids = torch.tensor([prompt])
            started = time.perf_counter()
            out = model.generate(ids, new, compile=compile, eos_token_id=None)
            return time.perf_counter() - started, out[0, len(prompt) :].tolist()

        return run

    return [Contender(name, bits, runner(compile), weight_bytes)
            for name, compile in zip(names, (False, True), strict=True)]  # fmt: skip


def onnx_contender(spec, hf: Path, work: Path, bits: str, options: BuildOptions | None):
    """The emitted ONNX graphs bound to the checkpoint, run by run.py's own generate."""
    name = f"ours ONNX run.py {bits}"
    if options is None:
        return Contender(name, bits, note=NOT_BUILT)
    try:
        folder = build_target(spec, "onnx", work / f"onnx-{bits}", options)
        script = import_file(folder / "run.py")
        session = script.load_session("model_with_past.onnx", hf)
    except Exception as exc:  # noqa: BLE001 -- one broken contender must not hide the rest
        refused = "does not take --quantize" in str(exc)
        return Contender(name, bits, note=NOT_BUILT if refused else f"failed: {one_line(exc)}")

    def run(prompt, new):
        ids = np.array([prompt], dtype=np.int64)
        started = time.perf_counter()
        out = script.generate(session, ids, new, eos_token_id=None)
        return time.perf_counter() - started, out[0, len(prompt) :].tolist()

    return Contender(name, bits, run, onnx_weight_bytes(folder / "model_with_past.onnx"))


def ours(spec, hf: Path, work: Path, group_size: int) -> list[Contender]:
    builds = {
        "fp32": BuildOptions(weights=hf),
        "16-bit": BuildOptions(dtype=DType.bfloat16),
        "int8": quantize_options(weights=hf, quantize="int8"),
        "int4": quantize_options(weights=hf, quantize="int4", group_size=group_size),
    }
    rows = []
    for bits, options in builds.items():
        torch_options = options and dataclasses.replace(options, weights=None)
        rows += torch_contenders(spec, hf, work, bits, torch_options)
        if bits != "16-bit":  # ONNX Runtime's CPU kernels have no fast bfloat16/float16 MatMul
            rows.append(onnx_contender(spec, hf, work, bits, options))
    return rows


# --- measuring and the table ------------------------------------------------------------------

BASELINES = {
    "fp32": ["llama.cpp f32"],
    "16-bit": ["llama.cpp f16"],
    "int8": ["llama.cpp q8_0"],
    "int4": ["onnxruntime-genai int4", "llama.cpp q4_0"],
}


def measure(contenders: list[Contender], prompt: list[int], long_prompt: list[int],
            new: int, repeat: int) -> None:  # fmt: skip
    """Every contender's three timings, in turns, one warm-up round then `repeat` rounds."""
    runs = {"decode": (prompt, new), "first": (prompt, 1), "prefill": (long_prompt, 1)}
    for round_ in range(repeat + 1):
        for contender in contenders:
            if contender.run is None:
                continue
            print(f"round {round_}/{repeat}: {contender.name}", file=sys.stderr, flush=True)
            for what, (ids, count) in runs.items():
                try:
                    seconds, tokens = contender.run(ids, count)
                except Exception as exc:  # noqa: BLE001 -- reported in its row
                    contender.run, contender.note = None, f"failed: {one_line(exc)}"
                    break
                if round_:
                    contender.times.setdefault(what, []).append(seconds)
                if what == "decode":
                    contender.tokens = tokens


def rates(contender: Contender, new: int, long: int) -> tuple[float | None, float] | None:
    """(decode tok/s, prefill tok/s) from the medians, or None when not measured; decode is None
    when the run with `new` tokens was not slower than the one with 1 (noise swamped it)."""
    if contender.run is None or not contender.times:
        return None
    median = {what: statistics.median(values) for what, values in contender.times.items()}
    steps = median["decode"] - median["first"]
    return ((new - 1) / steps if steps > 0 else None), long / median["prefill"]


HEADER = (
    "| contender | bits | decode tok/s | prefill tok/s | MB read/token | % of limit "
    "| decode ratio to baseline | greedy tokens = transformers |\n|---|---|---|---|---|---|---|---|"
)


def row(c: Contender, measured: dict, bandwidth: float, reference: list[int]) -> str:
    """One table line: the rates, the bytes and their share of the limit, the ratios to the
    baselines of its bit width, and where its greedy tokens first leave transformers'."""
    if measured[c.name] is None:
        return f"| {c.name} | {c.bits} | {c.note or 'not measured'} | | | | | |"
    decode, prefill = measured[c.name]
    if decode is None:
        return f"| {c.name} | {c.bits} | too noisy | {prefill:.1f} | | | | |"
    megabytes = f"{c.weight_bytes / 1e6:.1f}" if c.weight_bytes else ""
    share = f"{100 * decode * c.weight_bytes / bandwidth:.0f}%" if c.weight_bytes else ""
    ratios = ", ".join(
        f"{decode / measured[b][0]:.2f}x {b}"
        for b in BASELINES[c.bits] if b != c.name and (measured.get(b) or (None,))[0]
    )  # fmt: skip
    first = next((i for i, (a, b) in enumerate(zip(c.tokens, reference)) if a != b), None)
    agree = f"{len(reference)}/{len(reference)}" if first is None else f"first {first}"
    return (
        f"| {c.name} | {c.bits} | {decode:.1f} | {prefill:.1f} | {megabytes} | {share} "
        f"| {ratios} | {agree} |"
    )


def table(contenders: list[Contender], new: int, long: int, bandwidth: float) -> str:
    """The markdown table; the first contender (transformers fp32) gives the reference tokens."""
    measured = {c.name: rates(c, new, long) for c in contenders}
    reference = contenders[0].tokens
    return "\n".join([HEADER] + [row(c, measured, bandwidth, reference) for c in contenders])


ORDER = ["fp32", "16-bit", "int8", "int4"]
FOOTNOTE = (
    "MB read/token: each contender's weight bytes at its own bit widths (scales included; an "
    "untied embedding table, read one row per token, excluded; the tied head counted once); "
    "% of limit = decode tok/s x those bytes / bandwidth. greedy tokens: position of the first "
    "decode token that differs from transformers fp32 (random weights: near-ties flip under any "
    "rounding, so this only shows that each contender runs the same model)."
)


def all_contenders(args, shape: dict, work: Path, n_ctx: int):
    """Every row in bit-width order, and the llama.cpp worker to close (None without one)."""
    hf = save_model(work / "hf", shape)
    spec = load_spec(hf / "config.json")
    contenders = [transformers_contender(hf), *ours(spec, hf, work, args.group_size)]
    worker = None
    if not args.no_baselines:
        llamacpp, worker = llamacpp_contenders(hf, work, args.threads, n_ctx)
        contenders += llamacpp + genai_contenders(hf, work)
    return sorted(contenders, key=lambda c: ORDER.index(c.bits)), worker


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--smoke", action="store_true", help="a tiny model, few tokens, 1 round")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (median)")
    parser.add_argument("--group-size", type=int, default=32, help="for ours at int4")
    parser.add_argument("--no-baselines", action="store_true", help="ours and transformers only")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(),
        help="torch's and llama.cpp's threads (default: torch's); ONNX Runtime keeps its default",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = SMOKE_SHAPE if args.smoke else SMOLLM2_135M
    prompt_len, new, long = (8, 8, 32) if args.smoke else (64, 128, 512)
    repeat = 1 if args.smoke else args.repeat
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, shape["vocab_size"], prompt_len).tolist()  # no special ids
    long_prompt = rng.integers(3, shape["vocab_size"], long).tolist()
    load = os.getloadavg()[0]  # other work on the machine: llama.cpp's spinning threads suffer most
    bandwidth = measured_bandwidth()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        contenders, worker = all_contenders(args, shape, Path(tmp), long + prompt_len + new)
        setup = time.perf_counter() - started
        measure(contenders, prompt, long_prompt, new, repeat)
        if worker is not None:
            worker.close()
    bandwidth = max(bandwidth, measured_bandwidth())  # the better of before and after
    print(f"bench_quant on {machine_line()} (llama.cpp: as many threads)")
    print(
        f"{os.cpu_count()} CPUs, load average before the run {load:.1f}, after {os.getloadavg()[0]:.1f}"
    )
    print(f"model: {shape}, random weights (seed 0): decode speed does not depend on the values")
    print(f"batch 1, greedy, no eos stop: decode {prompt_len}-token prompt + {new} new tokens, "
          f"prefill {long} tokens; median of {repeat} rounds in turns; setup {setup:.0f} s")  # fmt: skip
    print(f"bandwidth limit (measured in this run): {bandwidth / 1e9:.1f} GB/s")
    print(table(contenders, new, long, bandwidth))
    print(FOOTNOTE)


if __name__ == "__main__":
    main()
