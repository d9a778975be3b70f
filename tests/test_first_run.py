"""A new user's first run: the README's commands, what a build says it made, spec files that
round-trip, the emitted READMEs' next steps, the Cerebras set-up script and a quiet test run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from codegen.build import read_tree
from codegen.cli import main
from codegen.verifier.checkpoints import random_weights, save_hf_checkpoint
from spec import PRESETS, ModelSpec, TrainingSpec, get_preset, load_spec

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
HEAVY = ("torch", "jax", "jaxlib", "onnxruntime")
# Not copied into a fresh checkout: environments, caches and build output.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", ".hypothesis", ".pytest_cache", "out", "build"
)


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def readme_command(n: int) -> str:
    """Command n (1: the main job, 2: the tests) of the README's "Two commands"."""
    section = README.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return fenced_blocks(section, "bash")[n - 1].strip()


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def child_env(**extra: str) -> dict[str, str]:
    """The environment minus PYTHONPATH, so a child imports only what its own Python has."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return env | extra


# --- 1. command 1: the minimal install runs the main job -------------------------------------


def package_index() -> str:
    """The index pip uses here (its configuration, else PyPI)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], check=True, capture_output=True, text=True
    ).stdout
    found = re.findall(r"^[^=]*\.index-url='([^']+)'", listed, flags=re.MULTILINE)
    return os.environ.get("PIP_INDEX_URL") or (found[-1] if found else "https://pypi.org/simple")


def unreachable(index: str) -> str | None:
    """Why `index` cannot be read (None when it can): the one reason the test may skip."""
    try:
        with urllib.request.urlopen(index.rstrip("/") + "/pydantic/", timeout=15):
            return None
    except (urllib.error.URLError, OSError) as exc:
        return f"package index {index} unreachable: {getattr(exc, 'reason', exc)}"


def test_readme_command_1_is_the_minimal_install_and_the_main_job():
    assert readme_command(1) == (
        "pip install -e . && python -m codegen build --size 7b --target cerebras"
    )


def test_ci_runs_the_readme_test_command_verbatim():
    assert readme_command(2) in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.slow
def test_command_1_in_a_fresh_venv_needs_no_torch_jax_or_onnxruntime(tmp_path):
    """README command 1, verbatim, in a fresh venv inside a copy of the repo (so the build's
    out/ and pip's egg-info land there): it succeeds, builds what generated/7b holds, and
    installs none of the heavy frameworks."""
    reason = unreachable(package_index())
    if reason:
        pytest.skip(reason)
    checkout = tmp_path / "llama-codegen"
    shutil.copytree(ROOT, checkout, ignore=NOT_SOURCE)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = child_env(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", "-c", readme_command(1)], check=False, cwd=checkout, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "next: read out/7b/cerebras/README.md" in result.stdout
    built = checkout / "out" / "7b" / "cerebras"
    golden = ROOT / "generated" / "7b" / "cerebras"
    files = sorted(p.relative_to(golden) for p in golden.rglob("*") if p.is_file())
    assert sorted(p.relative_to(built) for p in built.rglob("*") if p.is_file()) == files
    assert all((built / f).read_bytes() == (golden / f).read_bytes() for f in files)
    probe = f"import importlib.util as u; print([m for m in {HEAVY!r} if u.find_spec(m)])"
    present = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], env=env, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    assert present.stdout.strip() == "[]"


# --- 3. scripts/cerebras_env.sh finds a Python 3.11 or says how to give one -------------------

SCRIPT = ROOT / "scripts" / "cerebras_env.sh"


def run_script(tmp_path: Path, path: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """The script with only `path` as PATH and a cache in tmp_path (never the real one)."""
    env = child_env(PATH=path, LLAMA_CODEGEN_CACHE=str(tmp_path / "cache"))
    env = {key: value for key, value in env.items() if key != "PYTHON"} | extra
    return subprocess.run(
        ["/bin/bash", str(SCRIPT), "--python"], check=False, env=env, capture_output=True, text=True
    )


def other_python() -> str:
    """A real CPython that is not 3.11 (on PATH or installed by pyenv), to be refused."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for name in ("python3.12", "python3.13", "python3.10"):
        for found in (shutil.which(name), *sorted(pyenv.glob(f"*/bin/{name}"))):
            if (
                found
                and subprocess.run([found, "-V"], check=False, capture_output=True).returncode == 0
            ):
                return str(found)
    pytest.skip("no CPython other than 3.11 found to show the refusal with")


def link(folder: Path, name: str, target: str) -> str:
    folder.mkdir(exist_ok=True)
    (folder / name).symlink_to(target)
    return str(folder)


def test_cerebras_env_finds_python311_by_that_name(tmp_path):
    bin_dir = link(tmp_path / "bin", "python3.11", sys.executable)
    link(tmp_path / "bin", "python3", other_python())
    result = run_script(tmp_path, bin_dir)
    assert result.returncode == 0 and result.stdout.strip() == "python3.11"


def test_cerebras_env_takes_python3_when_it_is_311(tmp_path):
    assert sys.version_info[:2] == (3, 11), "the test command runs on Python 3.11"
    result = run_script(tmp_path, link(tmp_path / "bin", "python3", sys.executable))
    assert result.returncode == 0 and result.stdout.strip() == "python3"


def test_cerebras_env_without_python311_says_how_in_one_line(tmp_path):
    result = run_script(tmp_path, link(tmp_path / "bin", "python3", other_python()))
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "PYTHON=/path/to/python3.11" in result.stderr
    assert not (tmp_path / "cache").exists()


def test_cerebras_env_refuses_a_python_env_var_that_is_not_311(tmp_path):
    result = run_script(tmp_path, "/nonexistent", PYTHON=other_python())
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "3.11 only" in result.stderr


# --- 4. build says what it made and what to read next -----------------------------------------


def test_build_names_the_folder_its_files_and_the_readme_to_read(tmp_path):
    out = tmp_path / "out"
    result = run_cli("build", "--size", "tiny", "--target", "onnx", "--out", str(out))
    lines = result.output.splitlines()
    assert lines[0].startswith(f"wrote {out / 'onnx'} (6 files, ")
    made = sorted(p.name for p in (out / "onnx").iterdir())
    assert lines[1].split() == made
    assert lines[2] == f"next: read {out / 'onnx' / 'README.md'}" and len(lines) == 3
    both = run_cli("build", "--size", "tiny", "--target", "all", "--out", str(out)).output
    readmes = re.search(r"^next: read (.*)$", both, flags=re.MULTILINE).group(1).split(", ")
    assert readmes and all(Path(readme).is_file() for readme in readmes)
    assert {Path(readme).parent.name for readme in readmes} == {"torch", "jax", "onnx", "cerebras"}


# --- 5. spec files: documented, and written by `show --as-spec` -------------------------------


def export(tmp_path: Path, *source: str) -> Path:
    result = run_cli("show", *source, "--as-spec")
    assert result.exit_code == 0, result.output
    path = tmp_path / "exported.yaml"
    path.write_text(result.output)
    return path


def assert_same_spec(loaded: ModelSpec, expected: ModelSpec) -> None:
    assert loaded == expected
    assert loaded.canonical_json() == expected.canonical_json()


@pytest.mark.parametrize("preset", list(PRESETS))
def test_as_spec_round_trips_every_preset(preset, tmp_path):
    assert_same_spec(load_spec(export(tmp_path, "--size", preset)), get_preset(preset))


def hf_configs() -> dict[str, dict]:
    """transformers' own LlamaConfig dicts: its default (LLaMA-2 7B shape) and a Llama-3.1 8B
    shape, whose intermediate_size 14336 is not Meta's rule for multiple_of 256."""
    from transformers import LlamaConfig

    llama31 = LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_key_value_heads=8, vocab_size=128256,
        max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )  # fmt: skip
    return {"default": LlamaConfig().to_dict(), "llama3.1-8b": llama31.to_dict()}


@pytest.mark.parametrize("name", ["default", "llama3.1-8b"])
def test_as_spec_round_trips_a_hugging_face_config(name, tmp_path):
    folder = tmp_path / f"Llama-{name}"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_configs()[name]))
    expected = load_spec(folder)
    assert_same_spec(load_spec(export(tmp_path, "--spec", str(folder))), expected)
    built = {}
    for source in (
        ["--spec", str(folder)],
        ["--spec", str(export(tmp_path, "--spec", str(folder)))],
    ):
        out = tmp_path / f"out{len(built)}"
        assert run_cli("build", *source, "--target", "cerebras", "--out", str(out)).exit_code == 0
        built[len(built)] = {
            p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()
        }
    assert built[0] == built[1]


def test_as_spec_round_trips_a_meta_params_json(tmp_path):
    """Meta's params.json for Llama 3 8B, as published with the weights."""
    folder = tmp_path / "Meta-Llama-3-8B"
    folder.mkdir()
    (folder / "params.json").write_text(
        '{"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, '
        '"multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0}'
    )  # which states no context length (Llama 3's is 8192): given on the command line
    exported = export(tmp_path, "--spec", str(folder), "--max-seq-len", "8192")
    assert_same_spec(load_spec(exported), load_spec(folder, max_seq_len=8192))


def test_show_takes_one_output_format():
    result = CliRunner().invoke(main, ["show", "--size", "7b", "--json", "--as-spec"])
    assert result.exit_code == 2 and "at most one of --json and --as-spec" in result.output


def test_show_json_output_is_a_spec_file_of_the_same_model(tmp_path):
    """The obvious template (`show --json > m.yaml`) builds: derived values that agree with the
    inputs are accepted, so the build equals the preset's byte for byte."""
    path = tmp_path / "m.yaml"
    path.write_text(run_cli("show", "--size", "tiny", "--json").output)
    from_file = run_cli(
        "build", "--spec", str(path), "--target", "torch", "--out", str(tmp_path / "a")
    )
    from_preset = run_cli(
        "build", "--size", "tiny", "--target", "torch", "--out", str(tmp_path / "b")
    )
    assert from_file.exit_code == 0 and from_preset.exit_code == 0
    assert read_tree(tmp_path / "a" / "torch") == read_tree(tmp_path / "b" / "torch")


def test_show_json_with_an_edited_derived_value_fails_in_one_line(tmp_path):
    data = json.loads(run_cli("show", "--size", "tiny", "--json").output)
    data["dim"] *= 2  # head_dim, param_count, ... now contradict the inputs
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["build", "--spec", str(path), "--target", "torch"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "derived" in result.output


def readme_spec_example() -> str:
    section = README.split("## Spec files", 1)[1].split("\n## ", 1)[0]
    (example,) = fenced_blocks(section, "yaml")
    return example


def test_readme_spec_example_names_every_input_and_builds(tmp_path):
    example = readme_spec_example()
    data = yaml.safe_load(example)
    inputs = set(ModelSpec.model_fields)
    assert set(data) == inputs and set(data["training"]) == set(TrainingSpec.model_fields)
    # every default shown is the spec's default
    spec = ModelSpec.model_validate(data)
    defaults = ModelSpec.model_validate(
        {k: data[k] for k in ("name", "vocab_size", "dim", "n_layers", "n_heads")}
    )
    assert spec == defaults
    path = tmp_path / "my_model.yaml"
    path.write_text(example)
    out = tmp_path / "out"
    result = run_cli("build", "--spec", str(path), "--target", "torch", "--out", str(out))
    assert result.exit_code == 0 and (out / "torch" / "model.py").is_file()


# --- 6. the emitted READMEs and run.py --------------------------------------------------------

# LLaMA-7B's parameter count as transformers' LlamaForCausalLM counts it for Meta's 7B config.
LLAMA_7B_PARAMS = 6_738_415_616


def test_cerebras_readme_states_the_cpu_training_memory(tmp_path):
    run_cli("build", "--size", "7b", "--target", "cerebras", "--out", str(tmp_path / "big"))
    big = (tmp_path / "big" / "cerebras" / "README.md").read_text()
    # 16 bytes per parameter: fp32 weights, gradients and AdamW's two moments
    assert f"about\n{round(16 * LLAMA_7B_PARAMS / 1e9)} GB in memory" in big
    assert "python -m codegen build --size tiny --target cerebras" in big
    run_cli("build", "--size", "tiny", "--target", "cerebras", "--out", str(tmp_path / "tiny"))
    tiny = (tmp_path / "tiny" / "cerebras" / "README.md").read_text()
    assert "MB in memory" in tiny and "--target cerebras --out tiny/" not in tiny
    assert "drops the tool's exit code" in tiny and "cerebras.pytorch.__file__" in tiny


def test_jax_readme_warns_that_a_folder_named_jax_shadows_jax(tmp_path):
    run_cli("build", "--size", "tiny", "--target", "jax", "--out", str(tmp_path))
    text = " ".join((tmp_path / "jax" / "README.md").read_text().split())
    assert "a folder named `jax` there would shadow JAX" in text
    assert "renamed or on sys.path" not in text


def readme_run_commands(readme: str, folder: Path, checkpoint: Path) -> list[str]:
    """The indented commands of the README's Run section, with its placeholders filled in."""
    section = readme.split("## Run", 1)[1]
    commands = [line.strip() for line in section.splitlines() if line.startswith("    python")]
    return [
        command.replace("path/to/this/folder", str(folder))
        .replace("path/to/hf_model_dir", str(checkpoint))
        .replace("python run.py", f"python {folder / 'run.py'}")
        .replace("--ids 1 450 7483", "--ids 1 450 483")  # within the tiny vocabulary (515)
        for command in commands
    ]


def test_unbound_onnx_run_py_fails_in_one_line_and_the_readme_says_what_to_do(tmp_path):
    spec = get_preset("tiny")
    assert (
        run_cli("build", "--size", "tiny", "--target", "onnx", "--out", str(tmp_path)).exit_code
        == 0
    )
    folder = tmp_path / "onnx"
    unbound = subprocess.run(
        [sys.executable, str(folder / "run.py"), "--ids", "1", "2"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert unbound.returncode == 2 and len(unbound.stderr.splitlines()) == 1, unbound.stderr
    assert "not bound" in unbound.stderr and "python -m codegen bind" in unbound.stderr
    checkpoint = save_hf_checkpoint(spec, random_weights(spec, seed=1), tmp_path / "hf")
    commands = readme_run_commands((folder / "README.md").read_text(), folder, checkpoint)
    assert [c.split()[:4] for c in commands] == [
        ["python", "-m", "codegen", "bind"], ["python", str(folder / "run.py"), "--weights",
                                             str(checkpoint)]
    ]  # fmt: skip
    env = child_env(PYTHONPATH=str(ROOT))
    for command in commands:
        argv = [sys.executable, *command.split()[1:]]
        done = subprocess.run(
            argv, check=False, cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    assert len(done.stdout.split()) == 3 + 16  # the prompt, then --max-new-tokens 16 tokens


def test_onnx_run_py_with_a_truncated_weight_file_fails_in_one_line(tmp_path):
    """A stray or truncated model.onnx.data: onnxruntime's own error, as one line, no traceback."""
    assert (
        run_cli("build", "--size", "tiny", "--target", "onnx", "--out", str(tmp_path)).exit_code
        == 0
    )
    folder = tmp_path / "onnx"
    (folder / "model.onnx.data").write_bytes(b"\0" * 1000)
    result = subprocess.run(
        [sys.executable, str(folder / "run.py"), "--ids", "1", "2"],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert (
        "onnxruntime cannot load the graphs" in result.stderr and "out of bounds" in result.stderr
    )


def test_bound_onnx_run_py_names_a_missing_checkpoint_file_in_one_line(tmp_path):
    spec = get_preset("tiny")
    checkpoint = save_hf_checkpoint(spec, random_weights(spec, seed=1), tmp_path / "hf")
    run_cli("build", "--size", "tiny", "--target", "onnx", "--out", str(tmp_path),
            "--weights", str(checkpoint))  # fmt: skip
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, str(tmp_path / "onnx" / "run.py"), "--weights", str(empty), "--ids", "1"],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "model.safetensors not found" in result.stderr


# --- 7. test output: upstream warnings filtered precisely -------------------------------------

WARNING_TESTS = """
import warnings


def test_upstream():
    import torch.utils.mkldnn  # torch's own module: decorates with torch.jit.script_method


def test_ours():
    warnings.warn("`torch.jit.script_method` is deprecated. Ours.", DeprecationWarning)
"""


def test_pytest_config_hides_torch_script_method_warning_only_from_torch(tmp_path):
    (tmp_path / "test_warnings.py").write_text(WARNING_TESTS)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir",
         str(tmp_path), "-p", "no:cacheprovider", str(tmp_path / "test_warnings.py")],
        check=False, cwd=tmp_path, env=child_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout
    assert "2 passed, 1 warning" in result.stdout
    assert "test_warnings.py::test_ours" in result.stdout and "_script.py" not in result.stdout


def test_readme_says_how_long_the_thorough_profile_takes():
    text = " ".join(README.split())
    assert "HYPOTHESIS_PROFILE=thorough" in text and "40 minutes or more on 2 cores" in text
