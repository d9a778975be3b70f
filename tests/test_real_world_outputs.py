"""Issue 13, reproducers 4, 6 and 7: the tool's own outputs read back, `convert` trusts no input,
and checkpoints written by the Cerebras Model Zoo's trainer convert exactly.

Right values come from outside this compiler: transformers (`LlamaForCausalLM`, `LlamaConfig`),
the safetensors library opening every output, and the published Llama-3-8B config and parameter
count. The CLI and the emitted convert.py run in subprocesses, as a user runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from hypothesis import given
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from backends import BuildOptions
from codegen.build import MANIFEST, manifest_for, read_manifest
from codegen.cli import main
from codegen.verifier import oracle
from codegen.verifier.runners.onnx_runner import OnnxRunner
from spec import ModelSpec, get_preset, load_spec, to_hf_config
from tests.strategies import round_trip_specs

ROOT = Path(__file__).resolve().parent.parent
TINY = get_preset("tiny")
TOKENS = np.random.default_rng(3).integers(0, 256, (2, 9))

# The published meta-llama/Meta-Llama-3-8B config.json (architecture and token keys).
LLAMA3_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 8192,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.40.0.dev0", "use_cache": True, "vocab_size": 128256,
}  # fmt: skip
LLAMA3_8B_PARAMETERS = 8_030_261_248  # Meta's model card: "8B"; the safetensors index's total / 2


def cli(*args: object, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`python -m codegen ARGS` in a subprocess, this checkout first on the path."""
    return subprocess.run(  # noqa: PLW1510 - the tests read returncode
        [sys.executable, "-m", "codegen", *map(str, args)],
        capture_output=True, text=True, timeout=300, cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def convert_py(folder: Path, *args: object) -> subprocess.CompletedProcess:
    """The emitted `python convert.py ARGS` in a subprocess."""
    return subprocess.run(  # noqa: PLW1510 - the tests read returncode
        [sys.executable, str(folder / "convert.py"), *map(str, args)],
        capture_output=True, text=True, timeout=300, cwd=folder,
    )  # fmt: skip


def one_line_refusal(completed: subprocess.CompletedProcess) -> str:
    """The single stderr line of a run that exited 2 (a user error)."""
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert completed.stderr.count("\n") == 1, completed.stderr
    return completed.stderr


def save_transformers(folder: Path, seed: int = 0, **config: object) -> dict[str, torch.Tensor]:
    """A random `LlamaForCausalLM` of `config` saved by transformers; its tensors as saved."""
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**config)).save_pretrained(folder)
    return load_file(folder / "model.safetensors")


def tiny_config(**change: object) -> dict[str, object]:
    """The tiny preset as transformers' LlamaConfig keyword arguments, with `change` applied."""
    return to_hf_config(TINY) | change


# --- 4: the tool's own outputs read back ---------------------------------------------------------


def test_4_ffn_off_metas_rule_builds_binds_and_verifies(tmp_path):
    """hidden 128 / intermediate 448 (Meta's rule gives 384 or 512): build, bind and verify
    accept the folder, and the bound graph computes transformers' logits."""
    config = {"model_type": "llama", "vocab_size": 256, "hidden_size": 128,
              "intermediate_size": 448, "num_hidden_layers": 2, "num_attention_heads": 8,
              "num_key_value_heads": 2}  # fmt: skip
    weights = tmp_path / "hf"
    save_transformers(weights, **config)
    out = tmp_path / "out"
    assert cli("build", "--spec", weights / "config.json", "--target", "onnx", "--out", out).returncode == 0  # fmt: skip
    bound = cli("bind", out / "onnx", "--weights", weights)
    assert bound.returncode == 0, bound.stderr
    verified = cli("verify", out, "--weights", weights)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "onnx" in verified.stdout and "pass" in verified.stdout
    reference = LlamaForCausalLM.from_pretrained(weights).eval()
    with torch.no_grad():
        expected = reference(torch.from_numpy(TOKENS)).logits.numpy()
    logits = OnnxRunner(out / "onnx", weights).forward(TOKENS)
    assert oracle.relative_error(logits, expected) <= oracle.TOLERANCE["float32"]


def test_4_llama3_8b_config_builds_a_folder_that_bind_and_verify_read(tmp_path):
    """The real Llama-3-8B config.json: its ONNX folder's manifest reads back to the same spec,
    with the published parameter count; verify and bind get past the manifest (verify refuses
    the 8B by its memory budget, bind a folder without weights, each in one line)."""
    folder = tmp_path / "Meta-Llama-3-8B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA3_8B_CONFIG))
    out = tmp_path / "out"
    built = cli("build", "--spec", folder / "config.json", "--target", "onnx", "--out", out)
    assert built.returncode == 0, built.stderr
    spec = ModelSpec.model_validate(read_manifest(out / "onnx")["spec"])  # as bind and verify do
    assert spec == load_spec(folder / "config.json") and spec.param_count == LLAMA3_8B_PARAMETERS
    ours = LlamaConfig(**to_hf_config(spec))
    skip = {"transformers_version", "architectures", "torch_dtype", "rope_scaling", "rope_theta"}
    for key, value in LLAMA3_8B_CONFIG.items():
        if key not in skip:
            assert getattr(ours, key) == value, key
    assert ours.rope_parameters["rope_theta"] == LLAMA3_8B_CONFIG["rope_theta"]  # transformers 5
    assert "needs about" in one_line_refusal(cli("verify", out))
    refusal = one_line_refusal(cli("bind", out / "onnx", "--weights", folder))
    assert MANIFEST not in refusal and "safetensors" in refusal


def _read_back_forms(spec: ModelSpec, folder: Path) -> dict[str, ModelSpec]:
    """`spec` written in every form this tool writes, each read back as its readers read it."""
    forms = {}
    # manifest.json: as `build` stamps it, as `bind` and `verify` read it
    target = folder / "onnx"
    target.mkdir()
    files = {"README.md": b"a built file\n"}
    (target / "README.md").write_bytes(files["README.md"])
    (target / MANIFEST).write_bytes(manifest_for(spec, "onnx", BuildOptions(), files))
    manifest = read_manifest(target)
    assert manifest["spec_sha256"] == spec.fingerprint()
    forms["manifest"] = ModelSpec.model_validate(manifest["spec"])
    # `show --as-spec` (YAML) and `show --json`, read back by `build --spec`
    given = folder / "given.yaml"
    given.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_computed_fields=True)))
    for flag, name in (("--as-spec", "spec.yaml"), ("--json", "spec.json")):
        shown = CliRunner().invoke(main, ["show", "--spec", str(given), flag])
        assert shown.exit_code == 0, shown.output
        (folder / name).write_text(shown.output)
        forms[flag] = load_spec(folder / name)
    # an HF config.json (convert --to hf, verify's checkpoints, the emitted convert.py's)
    hf = folder / spec.name / "config.json"
    hf.parent.mkdir()
    hf.write_text(json.dumps(to_hf_config(spec)))
    forms["config.json"] = load_spec(hf)
    return forms


@given(spec=round_trip_specs())
def test_4_every_spec_round_trips_through_every_form_we_write(spec, tmp_path_factory):
    """Every valid spec (explicit FFN widths off Meta's rule, RoPE scaling, tying, token ids,
    dtypes, training recipes) reads back equal, with the same fingerprint, from each form. An
    HF config.json carries neither the spec's name (the folder gives it) nor its training
    recipe: those two are compared on the other forms only. transformers reads the same
    numbers from that config.json."""
    forms = _read_back_forms(spec, tmp_path_factory.mktemp("forms"))
    forms["config.json"] = forms["config.json"].model_copy(
        update={"name": spec.name, "training": spec.training}
    )
    for form, back in forms.items():
        assert back == spec, form
        assert back.fingerprint() == spec.fingerprint(), form
    theirs = LlamaConfig(**to_hf_config(spec))
    eos = theirs.eos_token_id if theirs.eos_token_id is None else np.atleast_1d(theirs.eos_token_id)
    assert (theirs.hidden_size, theirs.intermediate_size, theirs.num_key_value_heads) == (
        spec.dim, spec.ffn_dim, spec.n_kv_heads,
    )  # fmt: skip
    assert (theirs.bos_token_id, theirs.pad_token_id) == (spec.bos_token_id, spec.pad_token_id)
    assert (None if eos is None else tuple(eos.tolist())) == spec.eos_token_id
    assert theirs.tie_word_embeddings == spec.tie_embeddings


# --- 6: convert trusts no input ------------------------------------------------------------------


@pytest.fixture(scope="module")
def emitted(tmp_path_factory) -> Path:
    """The tiny preset's Cerebras folder (convert.py and its checked reader)."""
    out = tmp_path_factory.mktemp("cerebras")
    assert cli("build", "--size", "tiny", "--target", "cerebras", "--out", out).returncode == 0
    return out / "cerebras"


@pytest.fixture(scope="module")
def hf_tiny(tmp_path_factory) -> Path:
    """A transformers checkpoint of the tiny preset (folder with config.json)."""
    folder = tmp_path_factory.mktemp("hf") / "tiny"
    save_transformers(folder, **tiny_config())
    return folder


# Checkpoints that do not fit --size tiny, each with the tensor and shapes the refusal names.
MISFITS = {
    "other-dims": (
        {"hidden_size": 32, "intermediate_size": 96},
        "model.embed_tokens.weight [515, 32]", "[515, 64]",
    ),
    "vocab+1": ({"vocab_size": 516}, "model.embed_tokens.weight [516, 64]", "[515, 64]"),
}  # fmt: skip


def _misfit(tmp_path: Path, change: dict[str, object], with_config: bool) -> Path:
    """A transformers checkpoint of the tiny preset changed by `change`: its folder (with the
    config.json transformers wrote) or its lone model.safetensors (a folder without one)."""
    folder = tmp_path / "src"
    save_transformers(folder, **tiny_config(**change))
    if with_config:
        return folder
    (folder / "config.json").unlink()
    return folder / "model.safetensors"


def _nothing_written(folder: Path, before: set[Path]) -> None:
    after = set(folder.rglob("*"))
    assert after == before, sorted(map(str, after - before))


@pytest.mark.parametrize("misfit", MISFITS)
@pytest.mark.parametrize("tool", ["codegen", "convert.py"])
def test_6_checkpoint_of_other_shapes_is_refused_naming_tensor_and_shapes(
    misfit, tool, emitted, tmp_path
):
    """No config.json to go by: every tensor's shape is checked against the spec first."""
    change, tensor, expected = MISFITS[misfit]
    src = _misfit(tmp_path, change, with_config=False)
    dst = tmp_path / "out" / "cs.safetensors"
    dst.parent.mkdir()
    before = set(tmp_path.rglob("*"))
    if tool == "codegen":
        completed = cli("convert", "--to", "cerebras", "--size", "tiny", src, dst)
    else:
        completed = convert_py(emitted, "to-cerebras", src, dst)
    message = one_line_refusal(completed)
    assert tensor in message and f"(model has {expected})" in message
    _nothing_written(tmp_path, before)


@pytest.mark.parametrize("single_file", [False, True], ids=["folder", "file-beside-config"])
@pytest.mark.parametrize("tool", ["codegen", "convert.py"])
def test_6_config_with_another_head_count_is_refused(single_file, tool, emitted, tmp_path):
    """8 heads of 8 instead of 4 of 16: every shape is the same, but the q/k rows would be
    permuted per the wrong heads; the config.json beside the weights (in the folder, or beside
    the one file given) says so and is believed over silence."""
    folder = _misfit(tmp_path, {"num_attention_heads": 8, "num_key_value_heads": 8}, True)
    src = folder / "model.safetensors" if single_file else folder
    dst = tmp_path / "cs.safetensors"
    before = set(tmp_path.rglob("*"))
    if tool == "codegen":
        completed = cli("convert", "--to", "cerebras", "--size", "tiny", src, dst)
    else:
        completed = convert_py(emitted, "to-cerebras", src, dst)
    message = one_line_refusal(completed)
    assert "config.json" in message and "8" in message and "4" in message
    _nothing_written(tmp_path, before)


def _opened(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, as the safetensors library opens it."""
    with safe_open(path, framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118


@pytest.mark.parametrize("tool", ["codegen", "convert.py"])
def test_6_fitting_checkpoint_converts_and_the_library_opens_it(tool, emitted, hf_tiny, tmp_path):
    dst = tmp_path / "cs.safetensors"
    if tool == "codegen":
        completed = cli("convert", "--to", "cerebras", "--size", "tiny", hf_tiny, dst)
    else:
        completed = convert_py(emitted, "to-cerebras", hf_tiny, dst)
    assert completed.returncode == 0, completed.stderr
    tensors = _opened(dst)
    original = load_file(hf_tiny / "model.safetensors")
    assert torch.equal(tensors["embedding_layer.word_embeddings.weight"],
                       original["model.embed_tokens.weight"])  # fmt: skip
    assert sorted(tmp_path.iterdir()) == [dst]  # no temporary left beside it


def _plant(folder: Path, tmp_path: Path, old: str, new: str) -> Path:
    """A copy of the emitted folder with one line of convert.py changed."""
    copy = tmp_path / "planted"
    copy.mkdir()
    for name in ("convert.py", "checkpoint_files.py"):
        (copy / name).write_text((folder / name).read_text())
    source = (copy / "convert.py").read_text()
    assert source.count(old) == 1
    (copy / "convert.py").write_text(source.replace(old, new))
    return copy


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_6_emitted_short_write_is_caught_and_nothing_remains(suffix, emitted, hf_tiny, tmp_path):
    """A writer that leaves the file 131 KB short (the issue's symptom), planted in a copy of
    convert.py: the read-back refuses it, the old output stays, no temporary remains."""
    planted = _plant(emitted, tmp_path, "os.fsync(written.fileno())",
                     "os.fsync(written.fileno()); os.truncate(temporary, os.path.getsize(temporary) - 131_072)")  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    dst = out / f"cs{suffix}"
    dst.write_bytes(b"old")
    completed = convert_py(planted, "to-cerebras", hf_tiny, dst, "--force")
    assert completed.returncode == 1 and completed.stderr.count("\n") == 1, completed.stderr
    assert "does not read back" in completed.stderr
    assert dst.read_bytes() == b"old" and sorted(out.iterdir()) == [dst]


# --- 7: checkpoints written by the Model Zoo's trainer -------------------------------------------


@pytest.fixture(scope="module")
def cerebras_tiny(emitted, hf_tiny, tmp_path_factory) -> Path:
    """The tiny transformers checkpoint in the Model Zoo's names and RoPE layout."""
    dst = tmp_path_factory.mktemp("cs") / "cs.safetensors"
    assert convert_py(emitted, "to-cerebras", hf_tiny, dst).returncode == 0
    return dst


def _as_trainer_saved(cs: Path, dst: Path, prefix: str = "model.", only=lambda name: True) -> Path:
    """The checkpoint with `prefix` on the names `only` picks, as `cszoo fit` saves its
    wrapper module's state dict; .pt as {"model": state_dict}, else safetensors."""
    tensors = {(prefix + k if only(k) else k): v.clone() for k, v in load_file(cs).items()}
    if dst.suffix == ".pt":
        torch.save({"model": tensors}, dst)
    else:
        save_file(tensors, dst)
    return dst


# codegen convert reads safetensors only; the emitted convert.py reads .pt (and .mdl) too
@pytest.mark.parametrize(
    ("tool", "suffix"),
    [("codegen", ".safetensors"), ("convert.py", ".safetensors"), ("convert.py", ".pt")],
)
def test_7_trainer_checkpoint_converts_to_hf_exactly(suffix, tool, emitted, hf_tiny,
                                                     cerebras_tiny, tmp_path):  # fmt: skip
    """Every key `model.`-prefixed: both converters give back transformers' tensors bit for bit,
    and transformers loads the folder."""
    src = _as_trainer_saved(cerebras_tiny, tmp_path / f"checkpoint_100{suffix}")
    dst = tmp_path / "hf"
    if tool == "codegen":
        completed = cli("convert", "--to", "hf", "--size", "tiny", src, dst)
    else:
        completed = convert_py(emitted, "to-hf", src, dst)
    assert completed.returncode == 0, completed.stderr
    original, back = load_file(hf_tiny / "model.safetensors"), _opened(dst / "model.safetensors")
    assert set(back) == set(original)
    assert all(torch.equal(back[name], original[name]) for name in original)
    LlamaForCausalLM.from_pretrained(dst)  # transformers reads the folder it wrote


TRAINER_MISFITS = {
    "some-keys": ("model.", lambda name: "layers" in name),
    "two-prefixes": ("model.model.", lambda name: True),
    "other-prefix": ("module.", lambda name: True),
}


@pytest.mark.parametrize("misfit", TRAINER_MISFITS)
@pytest.mark.parametrize("tool", ["codegen", "convert.py"])
def test_7_a_prefix_is_never_guessed(misfit, tool, emitted, cerebras_tiny, tmp_path):
    """Only one `model.` on every key is the trainer's: anything else is refused, naming keys."""
    prefix, only = TRAINER_MISFITS[misfit]
    src = _as_trainer_saved(cerebras_tiny, tmp_path / "ck.safetensors", prefix, only)
    dst = tmp_path / "hf"
    if tool == "codegen":
        completed = cli("convert", "--to", "hf", "--size", "tiny", src, dst)
    else:
        completed = convert_py(emitted, "to-hf", src, dst)
    assert "not a Cerebras checkpoint" in one_line_refusal(completed)
    assert not dst.exists()


def test_7_readme_says_which_model_zoo_release_reads_each_params_file(emitted):
    """The legacy file lacks `model.name`, as Cerebras's 2.3.1 file does; the README sends
    Model Zoo 2.4+ users to the trainer-layout file, which has it, as Cerebras's 2.10 file."""
    from tests.cerebras_modelzoo import MODELZOO_FILES

    legacy = yaml.safe_load((emitted / "configs/legacy/params_tiny.yaml").read_text())
    trainer = yaml.safe_load((emitted / "configs/params_tiny.yaml").read_text())
    theirs_legacy = yaml.safe_load(MODELZOO_FILES["modelzoo-2.3.1/params_llama_7b.yaml"])
    theirs_trainer = yaml.safe_load(MODELZOO_FILES["modelzoo-2.10.0/params_llama2_7b.yaml"])
    assert "name" not in legacy["model"] and "name" not in theirs_legacy["model"]
    name = trainer["trainer"]["init"]["model"]["name"]
    assert name == theirs_trainer["trainer"]["init"]["model"]["name"] == "llama"
    readme = (emitted / "README.md").read_text()
    assert "Model Zoo 2.3 and earlier (`run.py`): `configs/legacy/params_tiny.yaml`" in readme
    assert "Model Zoo 2.4 to 2.10 (`cszoo fit`): `configs/params_tiny.yaml`" in readme
    assert "Model Zoo 2.4 and later require `model.name`" in readme


def test_7_trainer_mdl_converts_to_hf_exactly_under_cerebras_pytorch(emitted, hf_tiny,
                                                                      cerebras_tiny, tmp_path):  # fmt: skip
    """The form `cszoo fit` writes: a cstorch.save .mdl of {"model": state dict}, every key
    `model.`-prefixed, converted by the emitted convert.py under cerebras-pytorch 2.10.0."""
    from tests.test_cerebras_cstorch import PYTHON, run_in_venv

    if not PYTHON.exists():
        pytest.skip("cerebras venv missing: run bash scripts/cerebras_env.sh")
    prefixed = _as_trainer_saved(cerebras_tiny, tmp_path / "prefixed.safetensors")
    mdl = tmp_path / "checkpoint_100.mdl"
    save = (
        "import sys, cerebras.pytorch as cstorch; from safetensors.torch import load_file; "
        "cstorch.save({'model': load_file(sys.argv[1])}, sys.argv[2])"
    )
    saved = run_in_venv(emitted, "-c", save, str(prefixed), str(mdl))
    assert saved.returncode == 0, saved.stderr[-2000:]
    converted = run_in_venv(emitted, "convert.py", "to-hf", str(mdl), str(tmp_path / "hf"))
    assert converted.returncode == 0, converted.stderr[-2000:]
    original = load_file(hf_tiny / "model.safetensors")
    back = _opened(tmp_path / "hf" / "model.safetensors")
    assert set(back) == set(original)
    assert all(torch.equal(back[name], original[name]) for name in original)
    # and the .mdl that convert.py itself writes (read back through cstorch before the rename)
    written = tmp_path / "from_hf.mdl"
    converted = run_in_venv(emitted, "convert.py", "to-cerebras", str(hf_tiny), str(written))
    assert converted.returncode == 0, converted.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_4_convert_to_hf_writes_the_specs_token_ids_and_keeps_a_configs_own(cerebras_tiny,
                                                                            tmp_path):  # fmt: skip
    """A new config.json says the spec's bos/eos/pad (transformers reads them back); one already
    there keeps its own (the tokenizer's), as the README promises."""
    spec_file = tmp_path / "tiny.yaml"
    ids = {"bos_token_id": 7, "eos_token_id": [8, 9], "pad_token_id": 10}
    spec_file.write_text(
        yaml.safe_dump(TINY.model_dump(mode="json", exclude_computed_fields=True) | ids)
    )
    dst = tmp_path / "hf"
    assert cli("convert", "--to", "hf", "--spec", spec_file, cerebras_tiny, dst).returncode == 0
    theirs = LlamaConfig.from_pretrained(dst)
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (7, [8, 9], 10)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(
        json.dumps(config | {"bos_token_id": 128000, "eos_token_id": 128001})
    )
    assert cli("convert", "--to", "hf", "--spec", spec_file, cerebras_tiny, dst).returncode == 0
    theirs = LlamaConfig.from_pretrained(dst)
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (128000, 128001, 10)
