"""The ONNX target's own contracts: graphs pass the full checker, bind to safetensors checkpoints
by reference (against transformers), build 65B in little memory, decode equals prefill, and
refuse a checkpoint that does not fit with one clear error."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

import backends.onnx as onnx_backend
from backends import BuildOptions
from backends.onnx import CheckpointError
from codegen.build import OutputError, render_target
from codegen.cli import main
from codegen.verifier import oracle
from codegen.verifier.checkpoints import random_weights, round_to_bfloat16, save_hf_checkpoint
from codegen.verifier.emitted import build_target
from codegen.verifier.oracle import TOLERANCE
from codegen.verifier.runners.onnx_runner import OnnxRunner
from spec import DType, ModelSpec, get_preset, to_hf_config

ROOT = Path(__file__).resolve().parent.parent
GQA_TIED = get_preset("tiny-gqa")
MQA_LLAMA3 = get_preset("tiny-llama3")
TOKENS = np.random.default_rng(7).integers(0, 515, (2, 40))


def weight_initializers(graph: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.graph.initializer if t.name.endswith(".weight")}


def external_data(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def load_graph(path: Path) -> onnx.ModelProto:
    return onnx.load(path, load_external_data=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    weights = random_weights(GQA_TIED, seed=3, std=0.3)
    return save_hf_checkpoint(GQA_TIED, weights, tmp_path_factory.mktemp("ck") / "hf"), weights


def test_bound_graph_points_into_the_safetensors_file(checkpoint, tmp_path):
    folder, weights = checkpoint
    built = build_target(GQA_TIED, "onnx", tmp_path, BuildOptions(weights=folder))
    data = (folder / "model.safetensors").read_bytes()
    for name in ("model.onnx", "model_with_past.onnx"):
        graph = load_graph(built / name)
        assert set(weight_initializers(graph)) == set(weights)
        for tensor in weight_initializers(graph).values():
            assert tensor.data_location == onnx.TensorProto.EXTERNAL and not tensor.raw_data
            entry = external_data(tensor)
            assert entry["location"] == "model.safetensors"
            start, length = int(entry["offset"]), int(entry["length"])
            stored = np.frombuffer(data[start : start + length], dtype=np.float32)
            np.testing.assert_array_equal(stored, weights[tensor.name].ravel())
        assert str(tmp_path) not in (built / name).read_text(errors="replace")
        assert (built / name).stat().st_size < 64 * 1024  # the graph alone
        # onnx.checker resolves external data beside the graph: check it in the checkpoint folder.
        beside = folder / name
        beside.write_bytes((built / name).read_bytes())
        try:
            onnx.checker.check_model(beside, full_check=True)
        finally:
            beside.unlink()
    runner = OnnxRunner(built, folder)
    expected = oracle.forward(GQA_TIED, weights, TOKENS)
    assert oracle.relative_error(runner.forward(TOKENS), expected) <= TOLERANCE["float32"]


def transformers_checkpoint(
    spec: ModelSpec, folder: Path, dtype: str, max_shard_size: str | None = None
) -> np.ndarray:
    """save_pretrained a transformers model of `spec` with random weights in `dtype`; the logits
    for TOKENS of that checkpoint read back by transformers in float32."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**to_hf_config(spec))).eval()
    weights = {k: torch.from_numpy(v) for k, v in random_weights(spec, 11, std=0.1).items()}
    model.load_state_dict(weights, strict=not spec.tie_embeddings)
    shards = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.to(getattr(torch, dtype)).save_pretrained(folder, **shards)
    # Read back in float32 rather than calling model.float(): .to(bfloat16) also rounds the
    # RoPE inv_freq buffer, which the checkpoint does not hold.
    reference = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return reference(torch.from_numpy(TOKENS)).logits.numpy()


@pytest.mark.parametrize(
    ("spec", "dtype"),
    [(get_preset("tiny"), "float32"), (GQA_TIED, "float32"), (MQA_LLAMA3, "bfloat16")],
    ids=["mha", "gqa-tied", "mqa-llama3-bf16"],
)
def test_binding_by_reference_matches_transformers(spec, dtype, tmp_path):
    expected = transformers_checkpoint(spec, tmp_path / "hf", dtype)
    result = CliRunner().invoke(main, [
        "build", "--spec", str(tmp_path / "hf"), "--target", "onnx", "--out", str(tmp_path / "out"),
        "--weights", str(tmp_path / "hf"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    graph = load_graph(tmp_path / "out" / "onnx" / "model.onnx")
    stored = {t.data_type for t in weight_initializers(graph).values()}
    assert stored == {onnx.TensorProto.BFLOAT16 if dtype == "bfloat16" else onnx.TensorProto.FLOAT}
    logits = OnnxRunner(tmp_path / "out" / "onnx", tmp_path / "hf").forward(TOKENS)
    assert oracle.relative_error(logits, expected) <= TOLERANCE["float32"]


def test_sharded_checkpoint_binds_each_tensor_in_its_shard(tmp_path):
    spec = get_preset("tiny")
    expected = transformers_checkpoint(spec, tmp_path / "hf", "float32", max_shard_size="100KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    built = build_target(spec, "onnx", tmp_path, BuildOptions(weights=tmp_path / "hf"))
    graph = load_graph(built / "model.onnx")
    locations = {external_data(t)["location"] for t in weight_initializers(graph).values()}
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert locations == set(index["weight_map"].values()) and len(locations) > 1
    logits = OnnxRunner(built, tmp_path / "hf").forward(TOKENS)
    assert oracle.relative_error(logits, expected) <= TOLERANCE["float32"]


SPARSE_65B = """
import json, math, sys, time
from pathlib import Path
from backends import BuildOptions
from codegen.build import render_target
from spec import get_preset
spec, weights = get_preset("65b"), None
if len(sys.argv) > 1:  # a sparse 65B bf16 checkpoint: real headers, no data on disk
    from backends.onnx.checkpoint import expected_shapes
    weights, header, offset = Path(sys.argv[1]), {}, 0
    for name, shape in expected_shapes(spec).items():
        size = 2 * math.prod(shape)
        header[name] = {
            "dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    with open(weights / "model.safetensors", "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + offset)
started = time.perf_counter()
files = render_target(spec, "onnx", BuildOptions(weights=weights))
seconds = time.perf_counter() - started
# VmHWM, not ru_maxrss: Linux carries the parent's (pytest's) peak into ru_maxrss across exec.
status = Path("/proc/self/status").read_text()
peak = int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM:"))) * 1024
sizes = {k: len(v) for k, v in files.items()}
print(json.dumps({"peak": peak, "seconds": seconds, "sizes": sizes}))
"""


@pytest.mark.parametrize("bound", [False, True], ids=["unbound", "bound-to-sparse-bf16"])
def test_65b_build_stays_under_1_gb(bound, tmp_path):
    args = [str(tmp_path)] if bound else []
    completed = subprocess.run(
        [sys.executable, "-c", SPARSE_65B, *args], cwd=ROOT, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    report = json.loads(completed.stdout)
    assert report["peak"] < 2**30, report
    assert report["seconds"] < 30, report
    assert report["sizes"]["model_with_past.onnx"] < 4 * 2**20, report
    assert "model.onnx.data" not in report["sizes"]


def test_decode_graph_step_by_step_equals_prefill(tmp_path):
    spec = MQA_LLAMA3  # one KV head, llama3 rope scaling; positions past the original 64
    weights = random_weights(spec, seed=5, std=0.3)
    folder = save_hf_checkpoint(spec, weights, tmp_path / "hf")
    runner = OnnxRunner(build_target(spec, "onnx", tmp_path, BuildOptions(weights=folder)), folder)
    tokens = np.random.default_rng(2).integers(0, spec.vocab_size, (2, 200))
    full, decoded = runner.forward(tokens), runner.decode(tokens, 37)
    assert oracle.relative_error(full, oracle.forward(spec, weights, tokens)) <= 1e-5
    for t in range(tokens.shape[1]):
        assert oracle.relative_error(decoded[:, t], full[:, t]) <= 1e-5, t


def greedy_by_oracle(spec: ModelSpec, weights, prompt: np.ndarray, steps: int) -> np.ndarray:
    tokens = prompt
    for _ in range(steps):
        logits = oracle.forward(spec, weights, tokens)[:, -1]
        tokens = np.concatenate([tokens, logits.argmax(-1)[:, None]], axis=1)
    return tokens


def test_run_script_generates_greedily(checkpoint, tmp_path):
    folder, weights = checkpoint
    built = build_target(GQA_TIED, "onnx", tmp_path, BuildOptions(weights=folder))
    prompt = TOKENS[:1, :9]
    completed = subprocess.run(
        [sys.executable, str(built / "run.py"), "--weights", str(folder), "--max-new-tokens", "6",
         "--ids", *map(str, prompt[0])],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    tokens = np.array([[int(t) for t in completed.stdout.split()]])
    np.testing.assert_array_equal(tokens, greedy_by_oracle(GQA_TIED, weights, prompt, 6))


def test_run_script_stops_at_eos_and_refuses_past_the_context(checkpoint, tmp_path):
    """--eos-token-id stops after the first such token; --no-eos runs the full length; a prompt
    and --max-new-tokens past max_seq_len exit with code 2 and one line."""
    folder, weights = checkpoint
    built = build_target(GQA_TIED, "onnx", tmp_path, BuildOptions(weights=folder))
    prompt = TOKENS[:1, :9]
    greedy = greedy_by_oracle(GQA_TIED, weights, prompt, 8)[0].tolist()
    stop = greedy[11]
    expected = greedy[: greedy.index(stop, 9) + 1]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(built / "run.py"), "--weights", str(folder), "--ids",
             *map(str, prompt[0]), *args],
            capture_output=True, text=True, check=False,
        )  # fmt: skip

    stopped = run("--max-new-tokens", "8", "--eos-token-id", str(stop))
    assert [int(t) for t in stopped.stdout.split()] == expected
    full = run("--max-new-tokens", "8", "--no-eos")
    assert [int(t) for t in full.stdout.split()] == greedy
    refused = run("--max-new-tokens", str(GQA_TIED.max_seq_len))
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == (
        "run.py: error: 9 prompt ids + --max-new-tokens 128 exceed max_seq_len 128\n"
    )


def write_declared_data(folder: Path, weights: dict[str, np.ndarray], dtype: str) -> None:
    """Bind an unbound build the plain ONNX way: write model.onnx.data in the layout its graph
    declares (each initializer's offset and length)."""
    graph = load_graph(folder / "model.onnx")
    with open(folder / "model.onnx.data", "wb") as data:
        for tensor in weight_initializers(graph).values():
            entry = external_data(tensor)
            assert entry["location"] == "model.onnx.data"
            value = weights[tensor.name]
            raw = (round_to_bfloat16(value).view(np.uint32) >> 16).astype(np.uint16).tobytes() if (
                dtype == "bfloat16") else value.tobytes()  # fmt: skip
            assert len(raw) == int(entry["length"])
            data.seek(int(entry["offset"]))
            data.write(raw)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_unbound_graphs_declare_their_data_file(dtype, tmp_path):
    spec = MQA_LLAMA3
    options = BuildOptions(dtype=DType(dtype))
    assert render_target(spec, "onnx", options) == render_target(spec, "onnx", options)
    folder = build_target(spec, "onnx", tmp_path, options)
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "genai_config.json", "manifest.json", "model.onnx", "model_with_past.onnx",
        "run.py",
    ]  # fmt: skip
    weights = random_weights(spec, seed=9, std=0.1)
    write_declared_data(folder, weights, dtype)
    for name in ("model.onnx", "model_with_past.onnx"):
        onnx.checker.check_model(folder / name, full_check=True)
    held = weights if dtype == "float32" else {k: round_to_bfloat16(v) for k, v in weights.items()}
    logits = OnnxRunner(folder, folder).forward(TOKENS)
    assert oracle.relative_error(logits, oracle.forward(spec, held, TOKENS)) <= 1e-5


@pytest.mark.parametrize("data_file", [False, True], ids=["inline", "data-file"])
def test_embedded_weights(data_file, checkpoint, tmp_path, monkeypatch):
    folder, weights = checkpoint
    if data_file:  # what a model past 2 GB gets, at test size
        monkeypatch.setattr(onnx_backend, "INLINE_LIMIT", 0)
    options = BuildOptions(weights=folder, embed_weights=True)
    built = build_target(GQA_TIED, "onnx", tmp_path, options)
    assert (built / "model.onnx.data").is_file() == data_file
    for name in ("model.onnx", "model_with_past.onnx"):
        onnx.checker.check_model(built / name, full_check=True)
        stored = weight_initializers(load_graph(built / name)).values()
        locations = {external_data(t).get("location") for t in stored}
        assert locations == ({"model.onnx.data"} if data_file else {None})
    logits = OnnxRunner(built, built).forward(TOKENS)
    assert oracle.relative_error(logits, oracle.forward(GQA_TIED, weights, TOKENS)) <= 1e-5


def test_bind_command_equals_building_with_weights(checkpoint, tmp_path):
    folder, _ = checkpoint
    runner = CliRunner()
    built = runner.invoke(main, ["build", "--size", "tiny-gqa", "--target", "onnx", "--out",
                                 str(tmp_path / "a")])  # fmt: skip
    assert built.exit_code == 0, built.output
    bound = runner.invoke(main, ["bind", str(tmp_path / "a" / "onnx"), "--weights", str(folder)])
    assert bound.exit_code == 0 and bound.output.startswith("bound "), bound.output
    direct = runner.invoke(main, ["build", "--size", "tiny-gqa", "--target", "onnx", "--out",
                                  str(tmp_path / "b"), "--weights", str(folder)])  # fmt: skip
    assert direct.exit_code == 0, direct.output
    for name in ("model.onnx", "model_with_past.onnx", "README.md", "run.py", "manifest.json"):
        a, b = (tmp_path / "a" / "onnx" / name), (tmp_path / "b" / "onnx" / name)
        assert a.read_bytes() == b.read_bytes(), name


def corrupt(weights: dict[str, np.ndarray], fault: str) -> tuple[dict[str, np.ndarray], str]:
    """One fault in a checkpoint, and the words the error must contain."""
    weights = dict(weights)
    name = "model.layers.1.self_attn.k_proj.weight"
    if fault == "shape":
        weights[name] = weights[name][:, :32]
        return weights, f"wrong shape: {name} [32, 32] (spec needs [32, 64])"
    if fault == "dtype":
        weights[name] = weights[name].astype(np.int32)
        return weights, f"wrong dtype (the graph reads F32, BF16, F16): {name} I32"
    if fault == "missing":
        del weights[name]
        return weights, f"missing: {name}"
    # (a tied head equal to the embedding is accepted: tests/test_real_world_inputs.py)
    weights["model.extra.weight"] = np.ones(3, np.float32)
    return weights, "unexpected: model.extra.weight"


@contextmanager
def refused_checkpoint(match: str | None = None) -> Iterator[pytest.ExceptionInfo]:
    """The build refuses the checkpoint: a user error whose cause is the backend's CheckpointError."""
    with pytest.raises(OutputError, match=match) as caught:
        yield caught
    assert isinstance(caught.value.__cause__, CheckpointError)


@pytest.mark.parametrize("fault", ["shape", "dtype", "missing", "unexpected"])
def test_bad_checkpoint_gives_one_clear_error(fault, checkpoint, tmp_path):
    _, weights = checkpoint
    bad, words = corrupt(weights, fault)
    folder = tmp_path / "bad"
    folder.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in bad.items()}, folder / "model.safetensors")
    with refused_checkpoint() as caught:
        render_target(GQA_TIED, "onnx", BuildOptions(weights=folder))
    assert words in str(caught.value)
    runner = CliRunner()
    runner.invoke(main, ["build", "--size", "tiny-gqa", "--target", "onnx", "--out", str(tmp_path)])
    result = runner.invoke(main, ["bind", str(tmp_path / "onnx"), "--weights", str(folder)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in result.output


def test_truncated_file_and_foreign_config_are_refused(checkpoint, tmp_path):
    folder, weights = checkpoint
    short = save_hf_checkpoint(GQA_TIED, weights, tmp_path / "short")
    data = (short / "model.safetensors").read_bytes()
    (short / "model.safetensors").write_bytes(data[:-100])
    with refused_checkpoint(match="truncated or corrupt"):
        render_target(GQA_TIED, "onnx", BuildOptions(weights=short))
    other = save_hf_checkpoint(GQA_TIED, weights, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    config["rms_norm_eps"] = 1e-6
    (other / "config.json").write_text(json.dumps(config))
    with refused_checkpoint(match=r"norm_eps 1e-06 \(spec has 1e-05\)"):
        render_target(GQA_TIED, "onnx", BuildOptions(weights=other))
    with refused_checkpoint(match="--dtype bfloat16 asked, but the checkpoint stores F32"):
        render_target(GQA_TIED, "onnx", BuildOptions(weights=folder, dtype=DType.bfloat16))


def test_graph_uses_the_opset_23_operators_and_genai_names():
    files = render_target(GQA_TIED, "onnx", BuildOptions())
    graph = onnx.load_model_from_string(files["model_with_past.onnx"])
    assert {"RMSNormalization", "RotaryEmbedding", "Attention"} <= {
        n.op_type for n in graph.graph.node
    }
    assert [(o.domain, o.version) for o in graph.opset_import] == [("", 23)]
    cache = [f"{i}.{kind}" for i in range(GQA_TIED.n_layers) for kind in ("key", "value")]
    inputs = ["input_ids", "attention_mask", "position_ids"]
    assert [i.name for i in graph.graph.input] == inputs + [f"past_key_values.{c}" for c in cache]
    assert [o.name for o in graph.graph.output] == ["logits"] + [f"present.{c}" for c in cache]
    prefill = onnx.load_model_from_string(files["model.onnx"])
    assert [i.name for i in prefill.graph.input] == inputs


def test_genai_config_names_the_graph_and_its_inputs():
    """genai_config.json points onnxruntime-genai at model_with_past.onnx with the names its
    inputs and outputs really have, the spec's sizes and token ids (pad None: the first eos)."""
    spec = GQA_TIED.model_copy(update={"bos_token_id": 5, "eos_token_id": (6, 7)})
    files = render_target(spec, "onnx", BuildOptions())
    config = json.loads(files["genai_config.json"])
    decoder = config["model"]["decoder"]
    graph = onnx.load_model_from_string(files[decoder["filename"]]).graph
    layers = range(decoder["num_hidden_layers"])
    names = decoder["inputs"] | decoder["outputs"]
    listed = [names["input_ids"], names["attention_mask"], names["position_ids"]]
    listed += [names[f"past_{k}_names"] % i for i in layers for k in ("key", "value")]
    assert listed == [i.name for i in graph.input]
    listed = [names["logits"]]
    listed += [names[f"present_{k}_names"] % i for i in layers for k in ("key", "value")]
    assert listed == [o.name for o in graph.output]
    assert (decoder["num_attention_heads"], decoder["num_key_value_heads"]) == (
        spec.n_heads, spec.n_kv_heads,
    )  # fmt: skip
    assert (decoder["head_size"], decoder["hidden_size"]) == (spec.head_dim, spec.dim)
    model = config["model"]
    assert (model["bos_token_id"], model["eos_token_id"], model["pad_token_id"]) == (5, [6, 7], 6)
    assert (model["type"], model["vocab_size"]) == ("llama", spec.vocab_size)
