"""The command line as a user meets it: help, presets, show, build, --check, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from codegen.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_help_teaches_with_examples():
    result = run("build", "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.output and "--size 7b --target torch" in result.output


def test_list_shows_every_preset():
    result = run("list")
    assert result.exit_code == 0
    for name in ("7b", "13b", "33b", "65b", "llama2-70b", "llama3-8b", "llama3.1-8b"):
        assert f"\n{name} " in result.output


def test_show_prints_the_derived_numbers():
    result = run("show", "--size", "65b")
    assert result.exit_code == 0
    assert "65,285,660,672" in result.output
    assert "FLOPs per token, training" in result.output and "AdamW" in result.output


def test_show_json_is_machine_readable():
    data = json.loads(run("show", "--size", "65b", "--json").output)
    assert data["param_count"] == 65_285_660_672 and data["head_dim"] == 128


def test_repeated_target_builds_each_one(tmp_path):
    """`--target torch --target jax` used to build only the last one, silently (click keeps the
    last value of a single option)."""
    result = run("build", "--size", "tiny", "--target", "torch", "--target", "jax",
                 "--target", "torch", "--out", str(tmp_path))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jax", "torch"]
    assert result.output.count("wrote") == 2


def test_build_check_and_rebuild(tmp_path):
    out = tmp_path / "out"
    first = run("build", "--size", "tiny", "--target", "torch", "--out", str(out))
    assert first.exit_code == 0 and first.output.startswith("wrote")
    assert run("build", "--size", "tiny", "--target", "torch", "--out", str(out)).output.startswith(
        "unchanged"
    )
    assert (
        run("build", "--size", "tiny", "--target", "torch", "--out", str(out), "--check").exit_code
        == 0
    )
    (out / "torch" / "model.py").write_text("# edited\n")
    (out / "torch" / "stray.py").write_text("")
    checked = CliRunner().invoke(
        main, ["build", "--size", "tiny", "--target", "torch", "--out", str(out), "--check"]
    )
    assert checked.exit_code == 1
    assert "model.py: differs" in checked.output and "stray.py: not produced" in checked.output


def test_build_from_hf_config(tmp_path):
    config = tmp_path / "My-Llama" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({
        "model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    }))  # fmt: skip
    result = run("build", "--spec", str(config), "--target", "torch", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o" / "torch" / "manifest.json").read_text())
    assert manifest["spec"]["name"] == "My-Llama" and manifest["spec"]["n_kv_heads"] == 2


def test_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "precious.txt").write_text("mine")
    result = CliRunner().invoke(
        main, ["build", "--size", "tiny", "--target", "torch", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--force" in result.output
    assert (tmp_path / "torch" / "precious.txt").read_text() == "mine"
    forced = run("build", "--size", "tiny", "--target", "torch", "--out", str(tmp_path), "--force")
    assert forced.exit_code == 0  # builds into it, and still keeps the user's file
    assert (tmp_path / "torch" / "precious.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["build", "--size", "8b", "--target", "torch"], "unknown preset '8b'"),
        (["build", "--target", "torch"], "exactly one of --size"),
        (["build", "--size", "7b", "--target", "tpu"], "Invalid value for '--target'"),
        (["show", "--spec", "/nonexistent/spec.yaml"], "cannot read"),
    ],
)
def test_user_errors_exit_2_with_one_line(args, words):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert words in result.output


def test_invalid_spec_file_names_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nvocab_size: 100\ndim: 64\nn_layers: 2\nn_heads: 5\n")
    result = CliRunner().invoke(main, ["build", "--spec", str(bad), "--target", "torch"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "n_heads (5)" in lines[0] and "Traceback" not in result.output


def test_a_whole_spec_error_is_not_prefixed_with_a_field(tmp_path):
    """An error about the spec as a whole (no field) reads `invalid spec: dim (65) must be ...`."""
    path = tmp_path / "odd.json"
    path.write_text(
        json.dumps({"name": "odd", "vocab_size": 10, "dim": 65, "n_layers": 1, "n_heads": 4})
    )
    result = run("show", "--spec", str(path))
    assert result.exit_code == 2
    assert result.output.startswith("Error: invalid spec: dim (65) must be divisible"), (
        result.output
    )


def test_module_entry_point_builds_7b(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "codegen",
            "build",
            "--size",
            "7b",
            "--target",
            "torch",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert completed.stdout.startswith(f"wrote {tmp_path / 'torch'}")
    assert (tmp_path / "torch" / "model.py").is_file()


@pytest.mark.parametrize("target", ["torch", "all"])
def test_building_imports_no_framework(tmp_path, target):
    """Builds never materialise weights: no framework is even imported (DESIGN.md section 1)."""
    script = (
        "import sys\nfrom codegen.cli import main\n"
        f"main(['build', '--size', '65b', '--target', {target!r}, '--out', {str(tmp_path)!r}],"
        " standalone_mode=False)\n"
        "loaded = {'torch', 'jax', 'jaxlib', 'onnxruntime'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)


@pytest.mark.parametrize("target", ["torch", "jax"])
def test_bad_parallel_file_exits_2_naming_the_numbers(target, tmp_path):
    """Every target that takes a parallel spec refuses a bad one in one line, writing nothing."""
    (tmp_path / "p.json").write_text(json.dumps({"mesh": {"tensor": 4}}))
    result = CliRunner().invoke(main, ["build", "--size", "tiny-gqa", "--target", target,
                                       "--out", str(tmp_path / "o"), "--parallel", str(tmp_path / "p.json")])  # fmt: skip
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, lines
    assert "kv_heads (2) is not divisible by the tensor degree (4)" in lines[0]
    assert "vocab (515) is not divisible by the tensor degree (4)" in lines[0]
    assert not (tmp_path / "o").exists()
    (tmp_path / "p.json").write_text('{"rules": {"embed": "tensor"}}')
    result = CliRunner().invoke(main, ["build", "--size", "tiny", "--target", target,
                                       "--parallel", str(tmp_path / "p.json")])  # fmt: skip
    assert result.exit_code == 2 and "rules.embed: the tensor axis splits only" in result.output
