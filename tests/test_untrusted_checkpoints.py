"""Untrusted checkpoints (issue 14, items 9-11): one checked reader, in the compiler and in every
emitted loader, held to the safetensors library's own verdict.

The oracle is the installed safetensors library (`safe_open`, Rust): a header it refuses must be
refused by every reader, one it accepts must be accepted (if names and shapes fit the model).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

from backends.safetensors_format import CheckpointError, read_header, read_headers
from codegen.cli import main
from codegen.verifier.checkpoints import random_weights, save_hf_checkpoint
from codegen.verifier.emitted import build_target, import_file, import_package
from spec import ModelSpec, get_preset, to_hf_config

# A one-layer model with a small vocabulary: every reader runs in milliseconds.
MICRO = ModelSpec.model_validate(
    get_preset("tiny").model_dump(include={"vocab_size", "dim", "n_heads", "ffn_dim"})
    | {"name": "micro", "n_layers": 1, "vocab_size": 32}
)


def encode(header: str | bytes, data: bytes = b"") -> bytes:
    raw = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(raw)) + raw + data


def library_accepts(file: Path) -> bool:
    """The oracle: the safetensors library (Rust) opens the file and lists its tensors."""
    try:
        with safe_open(file, framework="np") as f:
            list(f.keys())
    except Exception:  # noqa: BLE001 - safetensors' own error types; any refusal is a refusal
        return False
    return True


def one_line(message: str) -> bool:
    return bool(message.strip()) and "\n" not in message.strip() and "Traceback" not in message


# --- item 10: the header rules, case by case -------------------------------------------------


def t(name="a", shape="[2]", offsets="[0,8]", dtype='"F32"', extra="") -> str:
    """One tensor entry of a header, as JSON text."""
    return f'"{name}":{{"dtype":{dtype},"shape":{shape},"data_offsets":{offsets}{extra}}}'


def obj(*members: str) -> str:
    return "{" + ",".join(members) + "}"


HEADER_CASES = {
    "valid": (obj(t()), 8),
    "duplicate tensor (the last wins, as in Rust)": (obj(t(shape="[1]", offsets="[0,4]"), t()), 8),
    "duplicate __metadata__": (obj('"__metadata__":{}', '"__metadata__":{}', t()), 8),
    "duplicate field": (obj(t(dtype='"F32","dtype":"F32"')), 8),
    "overlapping ranges": (obj(t(), t("b", shape="[1]", offsets="[4,8]")), 8),
    "uncovered bytes before": (obj(t(shape="[1]", offsets="[4,8]")), 8),
    "uncovered bytes after": (obj(t(shape="[1]", offsets="[0,4]")), 8),
    "unknown dtype": (obj(t(dtype='"F33"')), 8),
    "negative shape": (obj(t(shape="[-2]")), 8),
    "zero-size shape (valid)": (obj(t(shape="[0,3]", offsets="[0,0]")), 0),
    "scalar (valid)": (obj(t(shape="[]", offsets="[0,4]")), 4),
    "float shape": (obj(t(shape="[2.0]")), 8),
    "-0 offset": (obj(t(offsets="[-0,8]")), 8),
    "shape with the wrong byte count": (obj(t(shape="[3]")), 8),
    "shape overflowing a u64": (obj(t(shape="[4294967296,4294967296,0]", offsets="[0,0]")), 0),
    "half a byte of F4": (obj(t(dtype='"F4"', shape="[3]", offsets="[0,2]")), 2),
    "non-UTF8 header": (obj(t()).replace('"a"', '"a\xff"').encode("latin-1"), 8),
    "header not starting with { (valid)": (" " + obj(t()), 8),
    "NUL after the JSON": (obj(t()) + "\0", 8),
    "NaN in an ignored field": (obj(t(extra=',"x":NaN')), 8),
    "lone surrogate": (obj(t("\\ud800")), 8),
    "126 levels deep (valid)": (obj(t(extra=',"x":' + "[" * 125 + "]" * 125)), 8),
    "128 levels deep": (obj(t(extra=',"x":' + "[" * 126 + "]" * 126)), 8),
    "200k levels deep": ("[" * 200_000 + "]" * 200_000, 0),
    "metadata value not a string": (obj('"__metadata__":{"k":1}', t()), 8),
    "top-level array": ("[]", 0),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_the_compiler_reader_gives_the_library_verdict(case, tmp_path):
    header, data_size = HEADER_CASES[case]
    file = tmp_path / "x.safetensors"
    file.write_bytes(encode(header, bytes(data_size)))
    expected = library_accepts(file)
    try:
        read_header(file, tmp_path)
        ours = True
    except CheckpointError as exc:
        assert one_line(str(exc)) and str(file) in str(exc)
        ours = False
    assert ours == expected, case


def test_header_size_limit_is_the_library_limit(tmp_path):
    file = tmp_path / "x.safetensors"
    file.write_bytes(struct.pack("<Q", 100_000_001) + b"{}")
    assert not library_accepts(file)
    with pytest.raises(CheckpointError, match="exceeds 100000000 bytes"):
        read_header(file, tmp_path)


# --- emitted packages and a checkpoint of MICRO ----------------------------------------------


@pytest.fixture(scope="module")
def emitted(tmp_path_factory):
    """MICRO built for every target, the torch and JAX packages imported, convert.py loaded."""
    root = tmp_path_factory.mktemp("emitted")
    folders = {
        target: build_target(MICRO, target, root) for target in ("torch", "jax", "onnx", "cerebras")
    }
    return {
        "folders": folders,
        "torch": import_package(folders["torch"]),
        "jax": import_package(folders["jax"]),
        "convert": import_file(folders["cerebras"] / "convert.py"),
    }


def run_convert_py(convert, src: Path, dst: Path) -> tuple[int, str]:
    """Emitted convert.py's main() in process: (exit code, stderr)."""
    argv, err = sys.argv, io.StringIO()
    sys.argv = ["convert.py", "to-cerebras", str(src), str(dst)]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            convert.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return code, err.getvalue()


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def verdicts(emitted, checkpoint: Path, scratch: Path) -> dict[str, tuple[bool, str]]:
    """Every reader on one checkpoint: reader -> (accepted, message). Refusals must be one named
    line of the reader's CheckpointError (never a KeyError/RuntimeError traceback), and a
    refusing command must write nothing."""
    results: dict[str, tuple[bool, str]] = {}
    try:
        read_headers(checkpoint)
        results["compiler reader"] = (True, "")
    except CheckpointError as exc:
        results["compiler reader"] = (False, str(exc))
    torch_pkg, jax_pkg = emitted["torch"], emitted["jax"]
    try:
        torch_pkg.load_checkpoint(torch_pkg.Model(), checkpoint)
        results["torch load_checkpoint"] = (True, "")
    except torch_pkg.CheckpointError as exc:
        results["torch load_checkpoint"] = (False, str(exc))
    try:
        jax_pkg.load_checkpoint(checkpoint)
        results["jax load_checkpoint"] = (True, "")
    except jax_pkg.CheckpointError as exc:
        results["jax load_checkpoint"] = (False, str(exc))
    onnx = emitted["folders"]["onnx"]
    before = folder_digest(onnx)
    result = CliRunner().invoke(main, ["bind", str(onnx), "--weights", str(checkpoint)])
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert folder_digest(onnx) == before, "a refused bind changed the folder"
    results["onnx bind"] = (result.exit_code == 0, result.output)
    dst = scratch / "cs.safetensors"
    code, err = run_convert_py(emitted["convert"], checkpoint, dst)
    assert code in (0, 2), err
    if code == 2:
        assert not dst.exists(), "a refused convert.py wrote its output"
    results["cerebras convert.py"] = (code == 0, err)
    return results


def assert_verdict(results: dict[str, tuple[bool, str]], expected: dict[str, bool]) -> None:
    for reader, (accepted, message) in results.items():
        assert accepted == expected[reader], f"{reader}: {message or 'accepted'}"
        if not accepted:
            assert one_line(message), f"{reader}: {message!r}"


# --- item 10: Hypothesis over headers and indexes, every reader ------------------------------

DTYPE_MUTATIONS = ["F16", "F64", "BF16", "U8", "F33", "f32", ""]  # each changes the byte count
SHAPE_MUTATIONS = ["negative", "zero", "float", "same bytes", "extra dim", "string"]
RAW_MUTATIONS = ["truncate", "append", "deep", "non-utf8", "length+1", "length-1", "bom", "nan"]
INDEX_MUTATIONS = [
    "valid", "dotdot", "absolute", "symlink out", "non-string", "no weight_map", "list",
    "missing shard", "deep", "same tensor in two shards",
]  # fmt: skip

mutations = st.one_of(
    st.just(("none",)),
    st.tuples(st.just("dtype"), st.integers(0, 30), st.sampled_from(DTYPE_MUTATIONS)),
    st.tuples(st.just("shape"), st.integers(0, 30), st.sampled_from(SHAPE_MUTATIONS)),
    st.tuples(
        st.just("offsets"),
        st.integers(0, 30),
        st.sampled_from([-8, -4, -1, 1, 4, 8]),
        st.integers(0, 1),
    ),
    st.tuples(st.just("duplicate"), st.integers(0, 30), st.booleans()),
    st.tuples(st.just("drop"), st.integers(0, 30)),
    st.tuples(st.just("raw"), st.sampled_from(RAW_MUTATIONS)),
    st.tuples(st.just("index"), st.sampled_from(INDEX_MUTATIONS)),
)


def header_pairs(file: Path) -> tuple[list[tuple[str, dict]], bytes]:
    data = file.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return list(json.loads(data[8 : 8 + n]).items()), data[8 + n :]


def write_pairs(file: Path, pairs: list[tuple[str, object]], data: bytes) -> None:
    text = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}"
    file.write_bytes(encode(text, data))


def mutate_header(file: Path, mutation: tuple) -> None:
    pairs, data = header_pairs(file)
    kind = mutation[0]
    tensors = [i for i, (name, _) in enumerate(pairs) if name != "__metadata__"]
    i = (
        tensors[mutation[1] % len(tensors)]
        if kind in ("dtype", "shape", "offsets", "duplicate", "drop")
        else 0
    )
    name, entry = pairs[i] if pairs else ("", {})
    if kind == "dtype":
        entry["dtype"] = mutation[2]
    elif kind == "shape":
        shape = entry["shape"]
        entry["shape"] = {
            "negative": [-s for s in shape] or [-1],
            "zero": [0, *shape],
            "float": [float(s) for s in shape] or [1.0],
            "same bytes": [int(np.prod(shape))] if len(shape) > 1 else [1, *shape],  # 2-D -> 1-D
            "extra dim": [*shape, 2],
            "string": [str(s) for s in shape] or ["1"],
        }[mutation[2]]
    elif kind == "offsets":
        entry["data_offsets"][mutation[3]] += mutation[2]
    elif kind == "duplicate":  # the same entry again, or the next tensor's entry under this name
        pairs.append(
            (
                name,
                dict(entry) if mutation[2] else pairs[tensors[(mutation[1] + 1) % len(tensors)]][1],
            )
        )
    elif kind == "drop":
        del pairs[i]
    write_pairs(file, pairs, data)


def mutate_raw(file: Path, how: str) -> None:
    data = file.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header, body = data[8 : 8 + n], data[8 + n :]
    if how == "truncate":
        file.write_bytes(data[:-7])
    elif how == "append":
        file.write_bytes(data + b"\0" * 4)
    elif how == "deep":
        file.write_bytes(encode(b"[" * 200_000 + b"]" * 200_000, body))
    elif how == "non-utf8":
        file.write_bytes(encode(header[:-1] + b"\xff}", body))
    elif how in ("length+1", "length-1"):
        delta = 1 if how == "length+1" else -1
        file.write_bytes(struct.pack("<Q", n + delta) + header + body)
    elif how == "bom":
        file.write_bytes(encode(b"\xef\xbb\xbf" + header, body))
    elif how == "nan":
        file.write_bytes(encode(header.rstrip()[:-1] + b',"x":{"dtype":NaN}}', body))


def sharded(folder: Path, weights: dict[str, np.ndarray], how: str) -> bool:
    """Two shards and an index, mutated by `how`; True when the paths are acceptable."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(to_hf_config(MICRO)))
    names = sorted(weights)
    halves = {"model-1.safetensors": names[::2], "model-2.safetensors": names[1::2]}
    if how == "same tensor in two shards":
        halves["model-2.safetensors"] = [*halves["model-2.safetensors"], names[0]]
    for shard, shard_names in halves.items():
        save_file({n: weights[n] for n in shard_names}, folder / shard)
    weight_map: object = {n: shard for shard, ns in halves.items() for n in ns}
    outside = folder.parent / "outside"
    outside.mkdir()
    if how in ("dotdot", "absolute", "symlink out"):
        os.replace(folder / "model-2.safetensors", outside / "model-2.safetensors")
        target = {
            "dotdot": "../outside/model-2.safetensors",
            "absolute": str(outside / "model-2.safetensors"),
        }
        if how == "symlink out":
            os.symlink(outside / "model-2.safetensors", folder / "model-2.safetensors")
        else:
            weight_map = {
                n: target[how] if s == "model-2.safetensors" else s for n, s in weight_map.items()
            }
    elif how == "non-string":
        weight_map = {n: 2 if s == "model-2.safetensors" else s for n, s in weight_map.items()}
    elif how == "list":
        weight_map = sorted(halves)
    elif how == "missing shard":
        (folder / "model-2.safetensors").unlink()
    index: object = {"metadata": {}, "weight_map": weight_map}
    if how == "no weight_map":
        index = {"metadata": {}}
    text = json.dumps(index) if how != "deep" else "[" * 200_000 + "]" * 200_000
    (folder / "model.safetensors.index.json").write_text(text)
    return how in ("valid",)


@given(mutation=mutations)
def test_every_reader_gives_the_library_verdict_in_one_line(emitted, mutation):
    weights = random_weights(MICRO, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        folder = tmp_path / "ck"
        if mutation[0] == "index":
            paths_ok = sharded(folder, weights, mutation[1])
            headers_ok = True
            fits = mutation[1] != "same tensor in two shards"
        else:
            save_hf_checkpoint(MICRO, weights, folder)
            file = folder / "model.safetensors"
            if mutation[0] == "raw":
                mutate_raw(file, mutation[1])
            elif mutation[0] != "none":
                mutate_header(file, mutation)
            paths_ok, headers_ok = True, library_accepts(file)
            fits = False
            if headers_ok:  # names, dtypes and shapes the library reads, against the model's
                with safe_open(file, framework="np") as f:
                    found = {
                        n: (f.get_slice(n).get_dtype(), tuple(f.get_slice(n).get_shape()))
                        for n in f.keys()  # noqa: SIM118 - a safe_open handle, not a dict
                    }
                fits = found == {n: ("F32", w.shape) for n, w in weights.items()}
        loads = paths_ok and headers_ok and fits
        expected = {
            "compiler reader": paths_ok and headers_ok and fits
            if mutation[0] == "index"
            else headers_ok,
            "torch load_checkpoint": loads,
            "jax load_checkpoint": loads,
            "onnx bind": loads,
            "cerebras convert.py": loads,
        }
        assert_verdict(verdicts(emitted, folder, tmp_path), expected)


# --- item 9: paths out of the folder, the Hugging Face cache ---------------------------------


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink out"])
def test_shard_paths_out_of_the_folder_are_refused_by_every_reader(emitted, how, tmp_path):
    """The reproducer: `../other/x.safetensors` in weight_map was followed by every reader, and
    bind wrote a `../` external-data location and said "bound"."""
    folder = tmp_path / "ck"
    sharded(folder, random_weights(MICRO, seed=3), how)
    results = verdicts(emitted, folder, tmp_path)
    assert_verdict(results, dict.fromkeys(results, False))
    assert "outside the checkpoint folder" in results["compiler reader"][1]


def hf_cache_snapshot(root: Path, weights: dict[str, np.ndarray]) -> Path:
    """The Hugging Face hub cache layout: snapshots/<rev>/ files are symlinks into ../../blobs/."""
    plain = save_hf_checkpoint(MICRO, weights, root / "plain")
    repo = root / "hub" / "models--org--micro"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        blob = hashlib.sha256(name.encode()).hexdigest()
        os.replace(plain / name, repo / "blobs" / blob)
        os.symlink(f"../../blobs/{blob}", snapshot / name)
    return snapshot


def test_the_hugging_face_cache_layout_loads_and_bind_says_why_not(emitted, tmp_path):
    """Loaders accept the cache's symlinks into blobs/; onnxruntime refuses external data that
    resolves out of the folder it is given, so `bind` refuses by reference, saying so, and
    embeds on request."""
    snapshot = hf_cache_snapshot(tmp_path, random_weights(MICRO, seed=3))
    results = verdicts(emitted, snapshot, tmp_path)
    assert_verdict(
        results,
        {
            "compiler reader": True,
            "torch load_checkpoint": True,
            "jax load_checkpoint": True,
            "onnx bind": False,
            "cerebras convert.py": True,
        },
    )
    assert "onnxruntime refuses external data there" in results["onnx bind"][1]
    assert "cp -rL" in results["onnx bind"][1]
    onnx = emitted["folders"]["onnx"]
    embedded = CliRunner().invoke(
        main, ["bind", str(onnx), "--weights", str(snapshot), "--embed-weights"]
    )
    assert embedded.exit_code == 0, embedded.output


def test_bind_writes_only_plain_relative_locations(emitted, tmp_path):
    """Every external-data location bind writes is a name inside the weights folder."""
    import onnx

    folder = tmp_path / "ck"
    sharded(folder, random_weights(MICRO, seed=3), "valid")
    target = emitted["folders"]["onnx"]
    result = CliRunner().invoke(main, ["bind", str(target), "--weights", str(folder)])
    assert result.exit_code == 0, result.output
    graph = onnx.load(target / "model.onnx", load_external_data=False)
    locations = {
        entry.value
        for tensor in graph.graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    assert locations == {"model-1.safetensors", "model-2.safetensors"}


def test_bound_run_py_refuses_another_checkpoint_in_one_line(tmp_path):
    """run.py checks the weights folder it is given against the tensors it was bound to."""
    import subprocess

    weights = random_weights(MICRO, seed=3)
    folder = save_hf_checkpoint(MICRO, weights, tmp_path / "ck")
    from backends import BuildOptions

    built = build_target(MICRO, "onnx", tmp_path / "out", BuildOptions(weights=folder))
    other = tmp_path / "other"
    sharded(other, weights, "valid")  # the same tensors, other files
    completed = subprocess.run(
        [sys.executable, str(built / "run.py"), "--weights", str(other), "--ids", "1", "2",
         "--max-new-tokens", "1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert completed.returncode == 2, completed.stderr
    assert one_line(completed.stderr) and "model.safetensors" in completed.stderr


@pytest.mark.parametrize(
    ("key", "value"),
    [("rms_norm_eps", 1e-3), ("rope_scaling", {"rope_type": "linear", "factor": 2.0})],
)
def test_bound_run_py_checks_the_config_json_like_every_loader(tmp_path, key, value):
    """The bound folder itself, with a config.json of another model beside the weights: run.py
    refuses it in one line, as the torch and JAX loaders and convert.py do."""
    import subprocess

    from backends import BuildOptions

    folder = save_hf_checkpoint(MICRO, random_weights(MICRO, seed=3), tmp_path / "ck")
    built = build_target(MICRO, "onnx", tmp_path / "out", BuildOptions(weights=folder))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {key: value}))
    completed = subprocess.run(
        [sys.executable, str(built / "run.py"), "--weights", str(folder), "--ids", "1", "2",
         "--max-new-tokens", "1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert completed.returncode == 2, completed.stderr
    assert one_line(completed.stderr) and "describes another model" in completed.stderr


# --- item 10: a wrong shape of the right byte count, in the compiler's convert ---------------


def test_convert_refuses_a_wrong_shape_with_the_right_byte_count(tmp_path):
    """The reproducer: rows were silently scrambled by `convert` when a [64, 64] matrix was
    declared [32, 128] (the same bytes)."""
    spec = get_preset("tiny")
    weights = random_weights(spec, seed=0)
    name = "model.layers.0.self_attn.q_proj.weight"
    weights[name] = weights[name].reshape(32, 128)
    folder = save_hf_checkpoint(spec, weights, tmp_path / "ck")
    dst = tmp_path / "cs.safetensors"
    result = CliRunner().invoke(
        main, ["convert", "--size", "tiny", "--to", "cerebras", str(folder), str(dst)]
    )
    assert result.exit_code == 2, result.output
    assert one_line(result.output) and name in result.output and not dst.exists()


# --- item 11: malformed indexes, Meta shards, rope_scaling -----------------------------------


def save_meta(folder: Path, shards: list[dict[str, torch.Tensor]]) -> Path:
    folder.mkdir(parents=True)
    for i, shard in enumerate(shards):
        torch.save(shard, folder / f"consolidated.{i:02d}.pth")
    return folder


def meta_state(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """A Meta-layout state dict from HF-named random weights (names only matter here)."""
    hf_to_meta = {
        "model.embed_tokens.weight": "tok_embeddings.weight",
        "model.norm.weight": "norm.weight",
        "lm_head.weight": "output.weight",
    }
    layer = {
        "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
        "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
        "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
        "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
        "post_attention_layernorm": "ffn_norm",
    }  # fmt: skip
    state = {}
    for name, value in random_weights(spec, seed=1).items():
        if name in hf_to_meta:
            state[hf_to_meta[name]] = torch.from_numpy(value)
        else:
            i, rest = name.removeprefix("model.layers.").split(".", 1)
            state[f"layers.{i}.{layer[rest.removesuffix('.weight')]}.weight"] = torch.from_numpy(
                value
            )
    return state


def torch_refusal(package, path: Path) -> str:
    with pytest.raises(package.CheckpointError) as caught:
        package.load_checkpoint(package.Model(), path)
    assert one_line(str(caught.value)), str(caught.value)
    return str(caught.value)


def test_meta_shards_with_differing_keys_are_named(emitted, tmp_path):
    state = meta_state(MICRO)
    half = {k: v for k, v in state.items() if k != "norm.weight"}
    folder = save_meta(tmp_path / "meta", [state, half])
    assert "'norm.weight'" in torch_refusal(emitted["torch"], folder)


def test_a_wrong_shaped_meta_tensor_is_named(emitted, tmp_path):
    state = meta_state(MICRO)
    state["layers.0.attention.wq.weight"] = state["layers.0.attention.wq.weight"][:-8]
    folder = save_meta(tmp_path / "meta", [state])
    assert "'layers.0.attention.wq.weight'" in torch_refusal(emitted["torch"], folder)


def test_meta_params_json_with_llama3_rope_is_refused(emitted, tmp_path):
    folder = save_meta(tmp_path / "meta", [meta_state(MICRO)])
    params = {"dim": MICRO.dim, "n_layers": 1, "n_heads": MICRO.n_heads, "norm_eps": MICRO.norm_eps,
              "rope_theta": MICRO.rope_theta, "use_scaled_rope": True}  # fmt: skip
    (folder / "params.json").write_text(json.dumps(params))
    assert "use_scaled_rope True" in torch_refusal(emitted["torch"], folder)


LLAMA3_ROPE = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"rope_scaling": LLAMA3_ROPE}, "rope_scaling"),
        ({"rope_parameters": {"rope_theta": MICRO.rope_theta, **LLAMA3_ROPE}}, "rope_scaling"),
        ({"rope_parameters": [1, 2]}, "rope_parameters"),
        ({"rope_scaling": {"rope_type": "linear"}}, "'factor'"),
        ({"rope_scaling": "yarn"}, "rope_scaling"),
        ({"rms_norm_eps": 1e-3}, "norm_eps"),
    ],
    ids=["llama3-4.x", "llama3-5.x", "parameters-list", "linear-no-factor", "string", "eps"],
)
def test_config_json_describing_another_rope_or_eps_is_refused(emitted, tmp_path, change, named):
    """The reproducer: a checkpoint whose config.json says llama3 RoPE loaded into a model built
    without it; a malformed rope_scaling gave an AttributeError traceback."""
    folder = save_hf_checkpoint(MICRO, random_weights(MICRO, seed=3), tmp_path / "ck")
    config = to_hf_config(MICRO) | change
    (folder / "config.json").write_text(json.dumps(config))
    results = verdicts(emitted, folder, tmp_path)
    assert_verdict(results | {"compiler reader": (False, "x")}, dict.fromkeys(results, False))
    for reader in (
        "torch load_checkpoint",
        "jax load_checkpoint",
        "cerebras convert.py",
        "onnx bind",
    ):
        assert named in results[reader][1], (reader, results[reader][1])


@pytest.mark.parametrize(
    "index",
    [
        '{"weight_map": 3}',
        '{"weight_map": {}}',
        "[]",
        '{"weight_map": {"a": null}}',
        "{",
        "\ufeff{}",
    ],
)
def test_malformed_indexes_are_one_named_line(emitted, tmp_path, index):
    folder = save_hf_checkpoint(MICRO, random_weights(MICRO, seed=3), tmp_path / "ck")
    (folder / "model.safetensors.index.json").write_text(index)
    results = verdicts(emitted, folder, tmp_path)
    assert_verdict(results, dict.fromkeys(results, False))
    for reader, (_, message) in results.items():
        assert "model.safetensors.index.json" in message, reader


def test_every_emitted_reader_is_the_compilers_reader_verbatim(emitted, tmp_path):
    """One checked reader: each target's checkpoint_files.py is backends/checked_reader.py."""
    from backends import BuildOptions

    source = (Path(__file__).resolve().parent.parent / "backends" / "checked_reader.py").read_text()
    folder = save_hf_checkpoint(MICRO, random_weights(MICRO, seed=3), tmp_path / "ck")
    bound = build_target(MICRO, "onnx", tmp_path / "bound", BuildOptions(weights=folder))
    folders = [emitted["folders"][t] for t in ("torch", "jax", "cerebras")] + [bound]
    for target in folders:
        emitted_lines = (target / "checkpoint_files.py").read_text().splitlines(keepends=True)
        header = [line for line in emitted_lines if line.startswith("# ")][:3]
        assert header[0].startswith("# @generated by llama-codegen"), target
        assert "".join(emitted_lines[len(header) :]) == source, target


def test_a_tensor_name_with_control_characters_is_printed_escaped(emitted, tmp_path):
    """Names come from the file: a newline or terminal escape in one must not break the line."""
    weights = random_weights(MICRO, seed=3) | {"evil\nname\x1b[31m": np.ones(2, np.float32)}
    folder = save_hf_checkpoint(MICRO, weights, tmp_path / "ck")
    results = verdicts(emitted, folder, tmp_path)
    assert_verdict(results, dict.fromkeys(results, False) | {"compiler reader": True})
    for reader, (_, message) in results.items():
        assert "\x1b" not in message, reader


def test_compiler_convert_refuses_a_config_json_with_llama3_rope(tmp_path):
    """`convert --size tiny` on a folder whose config.json says llama3 RoPE: one line, no file."""
    spec = get_preset("tiny")
    folder = save_hf_checkpoint(spec, random_weights(spec, seed=0), tmp_path / "ck")
    (folder / "config.json").write_text(
        json.dumps(to_hf_config(spec) | {"rope_scaling": LLAMA3_ROPE})
    )
    dst = tmp_path / "cs.safetensors"
    result = CliRunner().invoke(
        main, ["convert", "--size", "tiny", "--to", "cerebras", str(folder), str(dst)]
    )
    assert result.exit_code == 2, result.output
    assert one_line(result.output) and "rope_scaling" in result.output and not dst.exists()


@pytest.mark.parametrize("fault", ["llama3 config", "same bytes, wrong shape"])
def test_verify_refuses_a_checkpoint_of_another_model_in_one_line(tmp_path, fault):
    spec = get_preset("tiny")
    weights = random_weights(spec, seed=0)
    if fault == "same bytes, wrong shape":
        weights["model.norm.weight"] = weights["model.norm.weight"].reshape(2, 32)
    folder = save_hf_checkpoint(spec, weights, tmp_path / "ck")
    if fault == "llama3 config":
        config = to_hf_config(spec) | {"rope_scaling": LLAMA3_ROPE}
        (folder / "config.json").write_text(json.dumps(config))
    build_target(spec, "torch", tmp_path / "out")
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "out"), "--weights", str(folder)])
    assert result.exit_code == 2, result.output
    named = "rope_scaling" if fault == "llama3 config" else "model.norm.weight"
    assert one_line(result.output) and named in result.output
