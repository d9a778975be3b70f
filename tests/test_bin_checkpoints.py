"""Issue 13: checkpoints stored as pytorch_model.bin load in every target, and never run code.

transformers 4.28-4.34 saved `pytorch_model.bin` by default (`save_function=torch.save` on the
state dict; sharded as `pytorch_model-0000N-of-0000M.bin` with `pytorch_model.bin.index.json`),
and e.g. OpenLLaMA-3B ships only that. transformers 5 no longer writes .bin files, so they are
written here exactly as 4.x wrote them (torch.save of the state dict, its index) and each folder
is first read back by transformers 5's own `from_pretrained`: the right values (logits, tensors)
come from transformers, never from our code.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from codegen.cli import main
from codegen.verifier import oracle
from codegen.verifier.emitted import import_file, import_package
from codegen.verifier.runners.onnx_runner import OnnxRunner

CONFIG = {"vocab_size": 96, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
          "rms_norm_eps": 1e-5, "tie_word_embeddings": False}  # fmt: skip
HEAD, EMBEDDING = "lm_head.weight", "model.embed_tokens.weight"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def one_line_refusal(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output, result.output
    return result.output


def reference_model(config: dict, seed: int) -> LlamaForCausalLM:
    """transformers' model of `config` with random weights (norm gains around 1, not 1)."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(0.1 * torch.randn_like(parameter))
            if name.endswith("norm.weight"):
                parameter.add_(1.0)
    return model


def save_bin(model: LlamaForCausalLM, folder: Path, shards: int = 1) -> Path:
    """`folder` as transformers 4.28-4.34 `save_pretrained(safe_serialization=False)` wrote it:
    config.json, and torch.save of the state dict (a tied head kept: torch.save shares storage,
    so 4.x removed no alias) in one pytorch_model.bin, or split into `shards` files named by a
    pytorch_model.bin.index.json {"metadata": {"total_size"}, "weight_map"}."""
    folder.mkdir()
    model.config.to_json_file(folder / "config.json")
    state = dict(model.state_dict())
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return folder
    names = list(state)
    weight_map, size = {}, 0
    for k in range(shards):
        file = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        part = {name: state[name] for name in names[k::shards]}
        torch.save(part, folder / file)
        weight_map |= dict.fromkeys(part, file)
        size += sum(t.numel() * t.element_size() for t in part.values())
    index = {"metadata": {"total_size": size}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    return folder


def transformers_logits(model: LlamaForCausalLM, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.numpy()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The reference model, its .bin folders (single, three shards) each read back by
    transformers itself, and every target built from its config."""
    root = tmp_path_factory.mktemp("bin")
    reference = reference_model(CONFIG, seed=11)
    folders = {"single": save_bin(reference, root / "single"),
               "sharded": save_bin(reference, root / "sharded", shards=3)}  # fmt: skip
    for folder in folders.values():
        loaded = LlamaForCausalLM.from_pretrained(folder).state_dict()
        assert all(torch.equal(loaded[n], t) for n, t in reference.state_dict().items())
    assert not list(folders["sharded"].glob("*.safetensors"))
    result = invoke("build", "--spec", str(folders["single"]), "--target", "all", "--out",
                    str(root / "out"))  # fmt: skip
    assert result.exit_code == 0, result.output
    return reference, folders, root / "out"


IDS = np.random.default_rng(12).integers(0, 96, (2, 20))


@pytest.mark.parametrize("form", ["single", "sharded"])
def test_bin_checkpoint_matches_transformers_in_torch_and_jax(built, form):
    """Before: "no .safetensors files" from both loaders."""
    reference, folders, out = built
    expected = transformers_logits(reference, IDS)
    package = import_package(out / "torch")
    model = package.Model().eval()
    package.load_checkpoint(model, folders[form])
    with torch.no_grad():
        logits = model(torch.from_numpy(IDS)).numpy()
    assert oracle.relative_error(logits, expected) <= 1e-5
    jax_package = import_package(out / "jax")
    params = jax_package.load_checkpoint(folders[form])
    logits = np.asarray(jax.jit(jax_package.forward)(params, IDS))
    assert oracle.relative_error(logits, expected) <= 1e-5


@pytest.mark.parametrize("form", ["single", "sharded"])
def test_bin_checkpoint_binds_to_onnx_with_embedded_weights(built, form, tmp_path):
    reference, folders, _ = built
    result = invoke("build", "--spec", str(folders[form]), "--target", "onnx", "--out",
                    str(tmp_path / "out"))  # fmt: skip
    assert result.exit_code == 0, result.output
    onnx = tmp_path / "out" / "onnx"
    bound = invoke("bind", str(onnx), "--weights", str(folders[form]), "--embed-weights")
    assert bound.exit_code == 0, bound.output
    logits = OnnxRunner(onnx, folders[form]).forward(IDS)
    assert oracle.relative_error(logits, transformers_logits(reference, IDS)) <= 1e-5
    # by reference, onnxruntime would need raw byte ranges: refused, saying what to do instead
    message = one_line_refusal(invoke("bind", str(onnx), "--weights", str(folders[form])))
    assert "--embed-weights" in message and "pytorch_model.bin" in message


def test_verify_runs_every_target_on_a_bin_checkpoint(built):
    """`verify --weights` reads the .bin for its float64 oracle, and every target passes on it."""
    _, folders, out = built
    result = invoke("verify", str(out), "--weights", str(folders["sharded"]), "--seq", "8")
    assert result.exit_code == 0, result.output
    for target in ("torch", "jax", "onnx"):
        assert target in result.output


@pytest.mark.parametrize("form", ["single", "sharded"])
def test_bin_checkpoint_converts_to_cerebras_and_back_bit_exactly(built, form, tmp_path):
    """Both converters: `codegen convert` and the emitted convert.py; the round trip gives back
    transformers' own tensors, bit for bit."""
    reference, folders, out = built
    state = reference.state_dict()
    cs = tmp_path / "cs.safetensors"
    result = invoke("convert", "--to", "cerebras", str(folders[form]), str(cs))
    assert result.exit_code == 0, result.output
    back = invoke("convert", "--to", "hf", "--spec", str(folders[form]), str(cs),
                  str(tmp_path / "hf"))  # fmt: skip
    assert back.exit_code == 0, back.output
    round_trip = load_file(tmp_path / "hf" / "model.safetensors")
    assert round_trip.keys() == state.keys()
    assert all(torch.equal(round_trip[name], t) for name, t in state.items())
    convert = import_file(out / "cerebras" / "convert.py")
    emitted = convert.hf_to_cs(convert.load_hf(folders[form]))
    assert emitted.keys() == load_file(cs).keys()
    assert all(torch.equal(emitted[n], t) for n, t in load_file(cs).items())
    hf = convert.cs_to_hf(emitted)
    assert all(torch.equal(hf[name], t) for name, t in state.items())


def test_bfloat16_bin_reads_bit_exactly(built, tmp_path):
    """bfloat16 has no numpy dtype: the JAX loader views its bits; the converters copy them.
    Right values: torch's own bfloat16 -> float32 widening, and the saved tensors themselves."""
    reference, folders, out = built
    state = {name: t.to(torch.bfloat16) for name, t in reference.state_dict().items()}
    (tmp_path / "w").mkdir()
    file = tmp_path / "w" / "pytorch_model.bin"
    torch.save(state, file)
    jax_package = import_package(out / "jax")
    held = jax_package.to_hf(jax_package.load_checkpoint(file))  # float32 params
    for name, tensor in state.items():
        np.testing.assert_array_equal(held[name], tensor.float().numpy())
    cs, back = tmp_path / "cs.safetensors", tmp_path / "hf"
    spec = str(folders["single"])
    result = invoke("convert", "--to", "cerebras", "--spec", spec, str(file), str(cs))
    assert result.exit_code == 0, result.output
    result = invoke("convert", "--to", "hf", "--spec", spec, str(cs), str(back))
    assert result.exit_code == 0, result.output
    round_trip = load_file(back / "model.safetensors")
    assert all(torch.equal(round_trip[name], t) for name, t in state.items())
    assert {t.dtype for t in round_trip.values()} == {torch.bfloat16}


def test_tied_bin_checkpoint_stores_the_head_and_loads(tmp_path):
    """A tied model saved by torch.save keeps lm_head.weight beside the embedding (one storage):
    accepted as equal in every loader; a differing head is refused naming both tensors."""
    reference = reference_model({**CONFIG, "tie_word_embeddings": True}, seed=13)
    folder = save_bin(reference, tmp_path / "tied")
    assert HEAD in torch.load(folder / "pytorch_model.bin", weights_only=True)
    result = invoke("build", "--spec", str(folder), "--target", "all", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    expected = transformers_logits(reference, IDS)
    package = import_package(tmp_path / "o" / "torch")
    model = package.Model().eval()
    package.load_checkpoint(model, folder)
    with torch.no_grad():
        assert oracle.relative_error(model(torch.from_numpy(IDS)).numpy(), expected) <= 1e-5
    jax_package = import_package(tmp_path / "o" / "jax")
    logits = jax_package.forward(jax_package.load_checkpoint(folder), IDS)
    assert oracle.relative_error(np.asarray(logits), expected) <= 1e-5
    converted = invoke("convert", "--to", "cerebras", str(folder), str(tmp_path / "cs.safetensors"))
    assert converted.exit_code == 0, converted.output

    state = {name: t.clone() for name, t in reference.state_dict().items()}
    state[HEAD][3, 5] = torch.nextafter(state[HEAD][3, 5], torch.tensor(1.0))  # one ulp
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(package.CheckpointError, match="lm_head.weight differs from model.embed"):
        package.load_checkpoint(package.Model(), folder)
    with pytest.raises(jax_package.CheckpointError, match="lm_head.weight differs"):
        jax_package.load_checkpoint(folder)
    convert = import_file(tmp_path / "o" / "cerebras" / "convert.py")
    with pytest.raises(convert.CheckpointError, match="lm_head.weight differs"):
        convert.load_hf(folder)
    message = one_line_refusal(
        invoke("convert", "--to", "cerebras", str(folder), str(tmp_path / "cs2.safetensors"))
    )
    assert HEAD in message and EMBEDDING in message


class Hostile:
    """Unpickling this runs `os.system(command)`: what a malicious pytorch_model.bin does."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def write_hostile(folder: Path, marker: Path, form: str) -> None:
    """A pytorch_model.bin that, fully unpickled, writes `marker`: in torch's zip format (the
    pickle inside torch.save's archive) or as a bare pickle (torch's legacy format)."""
    payload = {EMBEDDING: torch.zeros(2), "x": Hostile(f"touch {marker}")}
    if form == "zip":
        torch.save(payload, folder / "pytorch_model.bin")
    else:
        with open(folder / "pytorch_model.bin", "wb") as handle:
            pickle.dump(payload, handle)


# The bare-pickle form is written with protocol 4, which torch's weights-only unpickler warns
# about before it refuses the payload: the warning is expected here, and only here.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")
@pytest.mark.parametrize("form", ["zip", "legacy"])
def test_hostile_pickle_is_refused_everywhere_and_runs_nothing(built, form, tmp_path):
    _, folders, out = built
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "config.json").write_text((folders["single"] / "config.json").read_text())
    marker = tmp_path / "pwned"
    write_hostile(folder, marker, form)
    package = import_package(out / "torch")
    with pytest.raises(
        package.CheckpointError, match="refused, not a plain tensor checkpoint"
    ) as e:
        package.load_checkpoint(package.Model(), folder)
    assert "\n" not in str(e.value)
    if form == "zip":  # the reason named is what the pickle asked for, not torch's boilerplate
        assert "posix.system" in str(e.value), e.value
    jax_package = import_package(out / "jax")
    with pytest.raises(jax_package.CheckpointError, match="refused"):
        jax_package.load_checkpoint(folder)
    convert = import_file(out / "cerebras" / "convert.py")
    with pytest.raises(convert.CheckpointError, match="refused"):
        convert.load_hf(folder)
    onnx = tmp_path / "onnx"
    onnx_args = ["--target", "onnx", "--weights", str(folder), "--embed-weights", "--out"]
    for result in (
        invoke("convert", "--to", "cerebras", str(folder), str(tmp_path / "cs.safetensors")),
        invoke("build", "--spec", str(folder), *onnx_args, str(onnx)),
    ):
        assert "refused, not a plain tensor checkpoint" in one_line_refusal(result)
    assert not marker.exists()
    assert not (tmp_path / "cs.safetensors").exists() and not onnx.exists()


def test_the_hostile_payload_does_run_code_when_fully_unpickled(tmp_path):
    """The control: the file of the test above really writes its marker under a plain load."""
    folder, marker = tmp_path, tmp_path / "pwned"
    write_hostile(folder, marker, "zip")
    torch.load(folder / "pytorch_model.bin", weights_only=False)
    assert marker.exists()


def test_safetensors_are_preferred_when_both_are_present(built, tmp_path):
    """As transformers: model.safetensors wins over pytorch_model.bin (here a hostile one, so
    reading it at all would show)."""
    reference, _, out = built
    folder = tmp_path / "both"
    reference.save_pretrained(folder)  # transformers 5 writes model.safetensors
    marker = tmp_path / "pwned"
    write_hostile(folder, marker, "zip")
    package = import_package(out / "torch")
    model = package.Model().eval()
    package.load_checkpoint(model, folder)
    with torch.no_grad():
        logits = model(torch.from_numpy(IDS)).numpy()
    assert oracle.relative_error(logits, transformers_logits(reference, IDS)) <= 1e-5
    result = invoke("convert", "--to", "cerebras", str(folder), str(tmp_path / "cs.safetensors"))
    assert result.exit_code == 0, result.output
    assert not marker.exists()


@pytest.mark.parametrize(
    "edit, fault",
    [
        (lambda m: m | {EMBEDDING: "../pytorch_model-00001-of-00003.bin"}, "outside"),
        (lambda m: m | {EMBEDDING: "/tmp/pytorch_model-00001-of-00003.bin"}, "outside"),
        (lambda m: {**m, "model.extra.weight": m[EMBEDDING]}, "is in no shard"),
        (lambda m: {k: v for k, v in m.items() if k != EMBEDDING}, "but it is in"),
    ],
    ids=["dotdot", "absolute", "mapped-not-found", "found-not-mapped"],
)
def test_bin_index_is_checked_like_the_safetensors_index(built, edit, fault, tmp_path):
    _, folders, out = built
    folder = tmp_path / "edited"
    folder.mkdir()
    for file in folders["sharded"].iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    index["weight_map"] = edit(index["weight_map"])
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    package = import_package(out / "torch")
    with pytest.raises(package.CheckpointError, match=fault):
        package.load_checkpoint(package.Model(), folder)
    result = invoke("convert", "--to", "cerebras", str(folder), str(tmp_path / "cs.safetensors"))
    assert fault in one_line_refusal(result)


def test_bin_index_naming_a_tensor_twice_is_refused(built, tmp_path):
    _, folders, out = built
    folder = tmp_path / "twice"
    folder.mkdir()
    for file in folders["sharded"].iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    text = (folder / "pytorch_model.bin.index.json").read_text()
    first = f'"{EMBEDDING}": "pytorch_model-00001-of-00003.bin",'
    text = text.replace('"weight_map": {', '"weight_map": {' + first, 1)
    (folder / "pytorch_model.bin.index.json").write_text(text)
    package = import_package(out / "torch")
    with pytest.raises(package.CheckpointError, match="given twice"):
        package.load_checkpoint(package.Model(), folder)


def test_training_args_bin_is_never_taken_for_weights(built, tmp_path):
    """Hugging Face folders often hold training_args.bin (a pickled TrainingArguments)."""
    _, _, out = built
    folder = tmp_path / "args"
    folder.mkdir()
    torch.save({"x": torch.zeros(1)}, folder / "training_args.bin")
    package = import_package(out / "torch")
    with pytest.raises(package.CheckpointError, match="no .safetensors files"):
        package.load_checkpoint(package.Model(), folder)


def test_jax_without_torch_names_the_fix(built, tmp_path):
    """The JAX target does not need torch, except for a .bin: then one line names the fix."""
    _, folders, out = built
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"  # torch absent: `import torch` fails
        "from codegen.verifier.emitted import import_package\n"
        f"package = import_package(__import__('pathlib').Path({str(out / 'jax')!r}))\n"
        "try:\n"
        f"    package.load_checkpoint({str(folders['single'])!r})\n"
        "except package.CheckpointError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "pip install torch" in done.stdout and done.stdout.count("\n") == 1, done.stdout


def with_inv_freq(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """The state dict as transformers 4.28-4.30 saved it: each layer's RoPE buffer included,
    `inv_freq = 1 / theta ** (arange(0, head_dim, 2) / head_dim)` (float32, as 4.28 computed it)."""
    head_dim = CONFIG["hidden_size"] // CONFIG["num_attention_heads"]
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    state = dict(model.state_dict())
    for i in range(CONFIG["num_hidden_layers"]):
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    return state


def save_with_inv_freq(model: LlamaForCausalLM, folder: Path, form: str) -> Path:
    """`folder` with config.json and the 4.28-4.30 state dict, as pytorch_model.bin
    (torch.save) or model.safetensors (the safetensors library)."""
    from safetensors.torch import save_file

    folder.mkdir()
    model.config.to_json_file(folder / "config.json")
    state = with_inv_freq(model)
    if form == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file({n: t.contiguous() for n, t in state.items()}, folder / "model.safetensors")
    return folder


@pytest.mark.parametrize("form", ["bin", "safetensors"])
def test_saved_rope_buffers_are_ignored_as_transformers_ignores_them(built, form, tmp_path):
    """Before: "checkpoint does not fit the model; unexpected: model.layers.0.self_attn.
    rotary_emb.inv_freq" from every loader and converter, while transformers loads the folder."""
    reference, _, out = built
    folder = save_with_inv_freq(reference, tmp_path / "w", form)
    expected = transformers_logits(LlamaForCausalLM.from_pretrained(folder).eval(), IDS)
    assert oracle.relative_error(expected, transformers_logits(reference, IDS)) == 0
    package = import_package(out / "torch")
    model = package.Model().eval()
    package.load_checkpoint(model, folder)
    with torch.no_grad():
        assert oracle.relative_error(model(torch.from_numpy(IDS)).numpy(), expected) <= 1e-5
    jax_package = import_package(out / "jax")
    logits = jax.jit(jax_package.forward)(jax_package.load_checkpoint(folder), IDS)
    assert oracle.relative_error(np.asarray(logits), expected) <= 1e-5
    onnx = tmp_path / "onnx"
    result = invoke("build", "--spec", str(folder), "--target", "onnx", "--out", str(onnx))
    assert result.exit_code == 0, result.output
    embed = ["--embed-weights"] if form == "bin" else []
    bound = invoke("bind", str(onnx / "onnx"), "--weights", str(folder), *embed)
    assert bound.exit_code == 0, bound.output
    logits = OnnxRunner(onnx / "onnx", folder).forward(IDS)
    assert oracle.relative_error(logits, expected) <= 1e-5

    state = reference.state_dict()
    cs = tmp_path / "cs.safetensors"
    result = invoke("convert", "--to", "cerebras", str(folder), str(cs))
    assert result.exit_code == 0, result.output
    back = invoke("convert", "--to", "hf", "--spec", str(folder), str(cs), str(tmp_path / "hf"))
    assert back.exit_code == 0, back.output
    round_trip = load_file(tmp_path / "hf" / "model.safetensors")
    assert round_trip.keys() == state.keys()
    assert all(torch.equal(round_trip[name], t) for name, t in state.items())
    convert = import_file(out / "cerebras" / "convert.py")
    emitted = convert.hf_to_cs(convert.load_hf(folder))
    assert emitted.keys() == load_file(cs).keys()
    assert all(torch.equal(emitted[n], t) for n, t in load_file(cs).items())


@pytest.mark.parametrize(
    "name",
    [
        "model.layers.0.self_attn.rotary_emb.inv_freq_",
        "model.layers.0.rotary_emb.inv_freq",
        "model.rotary_emb.inv_freq",
        "layers.0.self_attn.rotary_emb.inv_freq",
        "model.layers.x.self_attn.rotary_emb.inv_freq",
    ],
)
def test_only_the_exact_rope_buffer_names_are_ignored(built, name, tmp_path):
    """Any other extra tensor, however close its name, is still refused as unexpected."""
    from safetensors.torch import save_file

    reference, _, out = built
    state = {n: t.contiguous() for n, t in with_inv_freq(reference).items()}
    state[name] = torch.zeros(8)
    (tmp_path / "w").mkdir()
    save_file(state, tmp_path / "w" / "model.safetensors")
    package = import_package(out / "torch")
    with pytest.raises(package.CheckpointError, match=f"unexpected: {name}$"):
        package.load_checkpoint(package.Model(), tmp_path / "w")
    spec, cs = str(built[1]["single"]), str(tmp_path / "cs.safetensors")
    message = one_line_refusal(
        invoke("convert", "--to", "cerebras", "--spec", spec, str(tmp_path / "w"), cs)
    )
    assert name in message and not Path(cs).exists()


@pytest.mark.parametrize("form", ["bin", "safetensors"])
def test_checkpoint_dtype_other_than_the_configs_is_refused_not_cast(form, tmp_path):
    """A float16 checkpoint under a config.json saying bfloat16: transformers 5 loads it cast to
    bfloat16 without a word (its default dtype="auto" takes the config's). Ours build the model
    in the config's dtype, so the torch and JAX loaders and ONNX bind refuse, in one line naming
    the tensor, its stored dtype and the config's. Before: each loader cast it silently."""
    reference = reference_model(CONFIG, seed=17).half()
    folder = tmp_path / "w"
    if form == "bin":
        save_bin(reference, folder)
    else:
        reference.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert next(reference.parameters()).dtype == torch.float16
    config["dtype"] = config["torch_dtype"] = "bfloat16"
    (folder / "config.json").write_text(json.dumps(config))
    assert LlamaForCausalLM.from_pretrained(folder).dtype == torch.bfloat16  # cast, silently
    out = tmp_path / "out"
    result = invoke("build", "--spec", str(folder), "--target", "all", "--out", str(out))
    assert result.exit_code == 0, result.output
    said = r"is stored as float16 but .*config\.json says dtype bfloat16"
    package = import_package(out / "torch")
    with pytest.raises(package.CheckpointError, match=said):
        package.load_checkpoint(package.Model(), folder)
    jax_package = import_package(out / "jax")
    with pytest.raises(jax_package.CheckpointError, match=said):
        jax_package.load_checkpoint(folder)
    embed = ["--embed-weights"] if form == "bin" else []
    message = one_line_refusal(invoke("bind", str(out / "onnx"), "--weights", str(folder), *embed))
    assert re.search(said, message), message
    # the converters build no model: they keep every tensor's bytes and dtype, as documented
    convert = import_file(out / "cerebras" / "convert.py")
    assert {t.dtype for t in convert.load_hf(folder).values()} == {torch.float16}
    cs = tmp_path / "cs.safetensors"
    result = invoke("convert", "--to", "cerebras", str(folder), str(cs))
    assert result.exit_code == 0, result.output
    assert {t.dtype for t in load_file(cs).values()} == {torch.float16}
