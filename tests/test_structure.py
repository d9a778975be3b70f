"""The repository's shape: no import cycles in the CLI; the installed package works on its own."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("module", ["cmd_bind", "cmd_convert", "cmd_verify", "common"])
def test_command_modules_do_not_import_the_cli(module):
    # A fresh interpreter: the test session has long since imported codegen.cli.
    code = f"import sys, codegen.{module}; print('codegen.cli' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def copy_source_tree(dest: Path) -> Path:
    """The checkout's files as git sees them (tracked, or new and not ignored) copied to dest, so
    building a wheel writes its build/ and egg-info folders there, not into the checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a deleted but still tracked file is skipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.mark.slow
def test_installed_package_builds_and_verifies_from_outside_the_checkout(tmp_path):
    source = copy_source_tree(tmp_path / "source")
    site = tmp_path / "site"
    # Not editable, no dependencies (this environment has them), no network for a build backend.
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(source)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(site)
    work = tmp_path / "work"
    work.mkdir()

    def run(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    where = run("-c", "import codegen, spec, backends, sys; print(codegen.__file__, spec.__file__, "
                "backends.__file__, *[p for p in sys.path if p])")  # fmt: skip
    assert str(ROOT) not in where.split()
    assert all(Path(p).is_relative_to(site) for p in where.split()[:3]), where
    run("-m", "codegen", "build", "--size", "tiny", "--target", "all", "--out", "out")
    output = run("-m", "codegen", "verify", "out")
    rows = {line.split()[0]: line for line in output.splitlines()[3:]}
    assert rows.keys() == {"torch", "jax", "onnx", "cerebras"}, output
    assert all("pass" in row for row in rows.values()), output


def test_verify_of_a_torch_build_needs_no_other_framework(tmp_path):
    from codegen.verifier.emitted import build_target
    from spec import get_preset

    build_target(get_preset("tiny"), "torch", tmp_path / "out")
    # A None entry in sys.modules makes `import jax` raise ImportError, as if it were not installed.
    code = (
        "import sys\n"
        "for name in ('jax', 'jaxlib', 'onnxruntime'):\n"
        "    sys.modules[name] = None\n"
        "from codegen.cli import main\n"
        f"main(['verify', {str(tmp_path / 'out')!r}])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torch" in result.stdout and "pass" in result.stdout


def test_a_clone_with_nothing_beside_it_passes_a_fast_subset(tmp_path):
    """Committed code only (a clone of HEAD), in a folder whose parent holds no shared/."""
    clone = tmp_path / "repo"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, cwd=tmp_path)
    assert not (clone.parent / "shared").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(clone)
    subset = ["tests/test_spec.py", "tests/test_cerebras.py", "-k", "spec or layout or preset"]
    command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *subset]
    result = subprocess.run(
        command, cwd=clone, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Among them the two that compare with Cerebras's Model Zoo files.
    for name in ("test_trainer_layout_matches_model_zoo", "test_legacy_layout_matches_model_zoo"):
        assert re.search(rf"::{name}\S* PASSED", result.stdout), name


def test_ci_runs_the_readme_test_command_from_a_clone():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    command = next(line for line in readme.splitlines() if line.endswith("python -m pytest"))
    assert command in ci.splitlines()
    clone_at = ci.index('git clone --quiet "$repo" "$tmp/repo"')
    assert clone_at < ci.index('cd "$tmp/repo"') < ci.index(command)


def _verify_with_blocked(out: Path, blocked: tuple[str, ...]) -> subprocess.CompletedProcess:
    """`codegen verify OUT` in a subprocess where `blocked` modules cannot be imported (a None
    entry in sys.modules makes their import raise ImportError, as if not installed)."""
    code = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None\n"
        "from codegen.cli import main\n"
        f"main(['verify', {str(out)!r}])\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_verify_without_safetensors_says_what_to_install_in_one_line(tmp_path):
    """README command 1 installs no safetensors: verify says so instead of a traceback."""
    from codegen.verifier.emitted import build_target
    from spec import get_preset

    build_target(get_preset("tiny"), "torch", tmp_path / "out")
    result = _verify_with_blocked(tmp_path / "out", ("safetensors",))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "safetensors" in result.stderr and "pip install" in result.stderr


def test_verify_names_a_missing_framework_and_fails(tmp_path):
    from codegen.verifier.emitted import build_target
    from spec import get_preset

    for target in ("torch", "jax"):
        build_target(get_preset("tiny"), target, tmp_path / "out")
    result = _verify_with_blocked(tmp_path / "out", ("jax", "jaxlib"))
    assert result.returncode == 1, result.stdout + result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "pass" in rows["torch"]
    assert "NOT RUN: needs jax" in rows["jax"] and "'.[jax]'" in rows["jax"]


def test_verify_takes_one_target_folder_too(tmp_path):
    from codegen.verifier.emitted import build_target
    from spec import get_preset

    folder = build_target(get_preset("tiny"), "torch", tmp_path / "out")
    result = _verify_with_blocked(folder, ())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pass" in result.stdout
