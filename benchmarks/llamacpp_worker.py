"""The llama.cpp side of bench_quant.py, run by the venv of scripts/llamacpp_env.sh (it imports
llama_cpp and gguf, which the project's environment does not have).

One JSON request per stdin line, one JSON answer per stdout line, so bench_quant.py can time
llama.cpp in turns with its other contenders while the models stay loaded:

    {"op": "quantize", "src": PATH, "dst": PATH, "ftype": "Q8_0"}  -> {"ok": true}
    {"op": "bytes", "path": PATH}  -> {"bytes": N, "types": {TYPE: N, ...}}
    {"op": "load", "path": PATH, "threads": 2, "n_ctx": 1024}  -> {"ok": true}
    {"op": "run", "path": PATH, "prompt": [ids], "new": N}  -> {"seconds": S, "tokens": [ids]}

An error answers {"error": "..."} in one line and the worker goes on.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time

import llama_cpp
import numpy as np

MODELS: dict[str, llama_cpp.Llama] = {}


def quantize(src: str, dst: str, ftype: str) -> dict:
    """llama.cpp's own quantizer (what `llama-quantize SRC DST FTYPE` runs), on 2 threads."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = 2
    code = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if code:
        raise RuntimeError(f"llama_model_quantize returned {code}")
    return {"ok": True}


def weight_bytes(path: str) -> dict:
    """Bytes one decode step reads: every tensor of the file, except the embedding table when a
    separate output.weight exists (then a step reads one row of it). With tied embeddings the
    file has no output.weight and token_embd is the head, read whole each step."""
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(path).tensors}
    skip = {"token_embd.weight"} if "output.weight" in tensors else set()
    types: dict[str, int] = {}
    for name, tensor in tensors.items():
        if name not in skip:
            kind = tensor.tensor_type.name
            types[kind] = types.get(kind, 0) + int(tensor.n_bytes)
    return {"bytes": sum(types.values()), "types": types}


def load(path: str, threads: int, n_ctx: int) -> dict:
    MODELS[path] = llama_cpp.Llama(
        model_path=path, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads,
        n_threads_batch=threads, logits_all=False, verbose=False, seed=0,
    )  # fmt: skip
    return {"ok": True}


def run(path: str, prompt: list[int], new: int) -> dict:
    """Greedy decoding with no end-of-sequence stop: the prompt in one llama_decode (batched up
    to n_batch), then `new` tokens, each the argmax of the last logits, fed back one at a time.
    Seconds from the prompt's first evaluation to the last token chosen."""
    llm = MODELS[path]
    llm.reset()
    vocab = llm.n_vocab()
    tokens = []
    started = time.perf_counter()
    llm.eval(prompt)
    for i in range(new):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), (vocab,))
        tokens.append(int(logits.argmax()))
        if i + 1 < new:
            llm.eval(tokens[-1:])
    return {"seconds": time.perf_counter() - started, "tokens": tokens}


def answer(request: dict) -> dict:
    op = request["op"]
    if op == "quantize":
        return quantize(request["src"], request["dst"], request["ftype"])
    if op == "bytes":
        return weight_bytes(request["path"])
    if op == "load":
        return load(request["path"], request["threads"], request["n_ctx"])
    if op == "run":
        return run(request["path"], request["prompt"], request["new"])
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    for line in sys.stdin:
        try:
            reply = answer(json.loads(line))
        except Exception as exc:  # noqa: BLE001 -- one line back, the worker stays up for the next request
            reply = {"error": f"{type(exc).__name__}: {exc}".replace("\n", " ")}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
