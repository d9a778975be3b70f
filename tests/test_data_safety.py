"""Issue 14, "your data is safe": no command destroys a file it did not write, and every input's
cost is bounded. Each test is one of the issue's reproducers, through the real CLI.

Write paths: build (one target and `all`), bind, convert (both directions), verify's temporary
builds. The right values come from outside the compiler: the checkpoint's own bytes, the
umask, os.stat, transformers for the logits of graphs bound in place.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from codegen.build import OutputError, render_target
from codegen.cli import main
from codegen.verifier.checkpoints import random_weights, save_hf_checkpoint
from spec import get_preset

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def build(out: Path, *extra: str, size: str = "tiny", target: str = "torch"):
    return cli("build", "--size", size, "--target", target, "--out", out, *extra)


def one_line_error(result) -> str:
    """The result of a refused command: exit 2, one line, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output, result.output
    return result.output


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones too) with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def ck(tmp_path_factory) -> Path:
    """A tiny Hugging Face checkpoint folder: config.json + model.safetensors."""
    spec = get_preset("tiny")
    return save_hf_checkpoint(spec, random_weights(spec, 0), tmp_path_factory.mktemp("ck") / "ck")


# --- 1, 2: rebuilds keep the user's files ---------------------------------------------------


def test_rebuild_keeps_files_the_user_added(tmp_path):
    assert build(tmp_path).exit_code == 0
    torch_dir = tmp_path / "torch"
    (torch_dir / "NOTES.md").write_text("notes")
    (torch_dir / "runs" / "a").mkdir(parents=True)
    (torch_dir / "runs" / "a" / "log.txt").write_text("step 1")
    (torch_dir / "empty").mkdir()
    for extra in ([], ["--force"]):  # unchanged, then forced to rewrite
        assert build(tmp_path, *extra).exit_code == 0
        assert (torch_dir / "NOTES.md").read_text() == "notes"
        assert (torch_dir / "runs" / "a" / "log.txt").read_text() == "step 1"
        assert (torch_dir / "empty").is_dir()
    # another spec (with --force) rewrites every generated file and still keeps them
    assert build(tmp_path, "--force", size="tiny-gqa").exit_code == 0
    assert (torch_dir / "NOTES.md").read_text() == "notes"
    assert (torch_dir / "runs" / "a" / "log.txt").read_text() == "step 1"
    expected = render_target(get_preset("tiny-gqa"), "torch", _options())
    assert all((torch_dir / rel).read_bytes() == data for rel, data in expected.items())


def _options():
    from backends import BuildOptions

    return BuildOptions()


def test_edited_generated_file_is_refused_by_name_and_kept_with_force(tmp_path):
    assert build(tmp_path).exit_code == 0
    model = tmp_path / "torch" / "model.py"
    edited = model.read_text() + "\n# my fix\n"
    model.write_text(edited)
    message = one_line_error(build(tmp_path))
    assert "model.py" in message and "--force" in message
    assert model.read_text() == edited
    forced = build(tmp_path, "--force")
    assert forced.exit_code == 0, forced.output
    assert model.read_text() != edited  # the generated version is back ...
    assert (tmp_path / "torch" / "model.py.edited").read_text() == edited  # ... and theirs kept
    assert "model.py.edited" in forced.output


def test_a_planted_manifest_does_not_make_a_folder_ours(tmp_path):
    folder = tmp_path / "u" / "torch"
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("mine")
    (folder / "manifest.json").write_text('{"generator":"llama-codegen"}')
    message = one_line_error(build(tmp_path / "u"))
    assert "--force" in message
    assert (folder / "thesis.tex").read_text() == "mine"
    assert build(tmp_path / "u", "--force").exit_code == 0
    assert (folder / "thesis.tex").read_text() == "mine"  # --force builds into it, keeping it
    assert json.loads((folder / "manifest.json.edited").read_text()) == {
        "generator": "llama-codegen"
    }


def test_a_manifest_whose_hashes_do_not_match_is_not_ours(tmp_path):
    """A copied real manifest, next to files that are not the ones it lists."""
    assert build(tmp_path / "real").exit_code == 0
    folder = tmp_path / "u" / "torch"
    folder.mkdir(parents=True)
    shutil.copy(tmp_path / "real" / "torch" / "manifest.json", folder)
    (folder / "model.py").write_text("my own model")
    message = one_line_error(build(tmp_path / "u"))
    assert "model.py" in message
    assert (folder / "model.py").read_text() == "my own model"


# --- 3: bind into the folder holding the checkpoint ----------------------------------------


def test_bind_keeps_a_checkpoint_inside_the_onnx_folder_and_the_graphs_work(tmp_path, ck):
    import torch
    from transformers import LlamaForCausalLM

    from codegen.verifier.runners.onnx_runner import OnnxRunner

    assert build(tmp_path / "o9", target="onnx").exit_code == 0
    inside = tmp_path / "o9" / "onnx" / "w"
    shutil.copytree(ck, inside)
    before = tree(inside)
    result = cli("bind", tmp_path / "o9" / "onnx", "--weights", inside)
    assert result.exit_code == 0, result.output
    assert tree(inside) == before
    tokens = np.array([[1, 17, 300, 42, 7]])
    logits = OnnxRunner(tmp_path / "o9" / "onnx", inside).forward(tokens)
    reference = LlamaForCausalLM.from_pretrained(ck, dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = reference(torch.as_tensor(tokens)).logits.numpy()
    assert np.linalg.norm(logits - expected) <= 1e-4 * np.linalg.norm(expected)


# --- 4, 5: convert ------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink", "hardlink"])
def test_convert_onto_its_source_is_refused(tmp_path, ck, spelling):
    src = tmp_path / "ck"
    shutil.copytree(ck, src)
    source = src / "model.safetensors"
    before = source.read_bytes()
    dst = {
        "same": source,
        "dotdot": src / ".." / "ck" / "model.safetensors",
        "symlink": tmp_path / "link.safetensors",
        "hardlink": tmp_path / "hard.safetensors",
    }[spelling]
    if spelling == "symlink":
        dst.symlink_to(source)
    if spelling == "hardlink":
        os.link(source, dst)
    message = one_line_error(cli("convert", "--size", "tiny", "--to", "cerebras", source, dst))
    assert "source" in message
    assert source.read_bytes() == before


def test_convert_to_hf_onto_its_source_folder_is_refused(tmp_path, ck):
    cs = tmp_path / "cs.safetensors"
    assert cli("convert", "--to", "cerebras", ck, cs).exit_code == 0
    folder = tmp_path / "f"
    folder.mkdir()
    os.link(cs, folder / "model.safetensors")
    before = cs.read_bytes()
    message = one_line_error(cli("convert", "--size", "tiny", "--to", "hf", cs, folder, "--force"))
    assert "source" in message and cs.read_bytes() == before


def test_convert_refuses_a_foreign_output_without_force(tmp_path, ck):
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"someone else's file")
    message = one_line_error(cli("convert", "--to", "cerebras", ck, dst))
    assert "--force" in message and dst.read_bytes() == b"someone else's file"
    assert cli("convert", "--to", "cerebras", ck, dst).exit_code == 2
    assert cli("convert", "--to", "cerebras", ck, dst, "--force").exit_code == 0
    assert cli("convert", "--to", "cerebras", ck, dst).exit_code == 0  # ours now: replaced


# Sets one resource limit, then becomes `python -m codegen ARGS...`. A launcher rather than
# subprocess's preexec_fn, which forks a process that has JAX's threads (a deadlock risk).
LIMITED_CLI = (
    "import os, resource, sys; kind, value = getattr(resource, sys.argv[1]), int(sys.argv[2]); "
    "resource.setrlimit(kind, (value, value)); "
    "os.execv(sys.executable, [sys.executable, '-m', 'codegen', *sys.argv[3:]])"
)


def _limited_cli(
    kind: str, value: int, args: list[str], timeout: float | None = None
) -> subprocess.CompletedProcess:
    """The CLI in a subprocess under one resource limit (`kind` names a resource.RLIMIT_*)."""
    return subprocess.run(  # noqa: PLW1510 - the tests read returncode
        [sys.executable, "-c", LIMITED_CLI, kind, str(value), *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _convert_with_file_limit(args: list[str], limit_bytes: int) -> subprocess.CompletedProcess:
    """`ulimit -f`: the write fails with EFBIG (Python ignores SIGXFSZ)."""
    return _limited_cli("RLIMIT_FSIZE", limit_bytes, ["convert", *args])


def test_failing_convert_keeps_the_old_output_and_leaves_no_temporary(tmp_path, ck):
    dst = tmp_path / "cs.safetensors"
    assert cli("convert", "--to", "cerebras", ck, dst).exit_code == 0
    good = dst.read_bytes()
    completed = _convert_with_file_limit(["--to", "cerebras", str(ck), str(dst)], 200 * 1024)
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.count("\n") == 1 and "File too large" in completed.stderr
    assert dst.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cs.safetensors"]


def test_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    """Ctrl-C in the middle of writing (KeyboardInterrupt raised by the writer)."""
    from codegen.build import write_file_atomically

    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old")

    def interrupted(handle) -> None:
        handle.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_file_atomically(path, interrupted)
    assert path.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [path]

    def bad(written: Path) -> None:
        raise OutputError("does not read back")

    with pytest.raises(OutputError):
        write_file_atomically(path, lambda handle: handle.write(b"new"), check=bad)
    assert path.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [path]


def test_convert_to_hf_keeps_the_keys_of_an_existing_config(tmp_path, ck):
    cs = tmp_path / "cs.safetensors"
    assert cli("convert", "--to", "cerebras", ck, cs).exit_code == 0
    dst = tmp_path / "hf"
    assert cli("convert", "--size", "tiny", "--to", "hf", cs, dst).exit_code == 0
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(
        json.dumps({**config, "bos_token_id": 1, "eos_token_id": 2, "my_key": "x"})
    )
    assert cli("convert", "--size", "tiny", "--to", "hf", cs, dst).exit_code == 0
    merged = json.loads((dst / "config.json").read_text())
    assert (merged["bos_token_id"], merged["eos_token_id"], merged["my_key"]) == (1, 2, "x")
    # a config.json of another model is not silently replaced
    (dst / "config.json").write_text(json.dumps({**config, "hidden_size": 128, "eos_token_id": 2}))
    message = one_line_error(cli("convert", "--size", "tiny", "--to", "hf", cs, dst))
    assert (
        "config.json" in message
        and json.loads((dst / "config.json").read_text())["hidden_size"] == 128
    )
    assert cli("convert", "--size", "tiny", "--to", "hf", cs, dst, "--force").exit_code == 0
    forced = json.loads((dst / "config.json").read_text())
    assert forced["hidden_size"] == 64 and forced["eos_token_id"] == 2


# --- 6: two builds into the same folder at once --------------------------------------------


@pytest.mark.parametrize("user_file", [False, True])
def test_concurrent_builds_into_one_folder_end_consistent_and_lose_nothing(tmp_path, user_file):
    """Four builds at once, two specs, several rounds: every build succeeds, the folder is one
    whole build (plus the user's file), no temporary is left."""
    out = tmp_path / "out"
    assert build(out).exit_code == 0
    if user_file:
        (out / "torch" / "NOTES.md").write_text("notes")
    expected = {
        name: render_target(get_preset(name), "torch", _options()) for name in ("tiny", "tiny-gqa")
    }
    for _ in range(3 if user_file else 6):  # a race: more rounds when it is all we test
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "codegen",
                    "build",
                    "--size",
                    name,
                    "--target",
                    "torch",
                    "--out",
                    str(out),
                    "--force",
                ],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in ("tiny", "tiny-gqa", "tiny", "tiny-gqa")
        ]
        for process in processes:
            _, stderr = process.communicate(timeout=120)
            assert process.returncode == 0, stderr
        files = tree(out / "torch")
        assert not user_file or files.pop("NOTES.md") == b"notes"
        assert files in expected.values()
        assert sorted(p.name for p in out.iterdir()) == ["torch"]


# --- 7: temporaries of interrupted writes ---------------------------------------------------


def test_verify_runs_no_hidden_temporary_as_a_target(tmp_path):
    out = tmp_path / "out"
    assert build(out).exit_code == 0
    for stray in (".torch.tmp-abc123", ".torch.llama-codegen-xyz"):
        shutil.copytree(out / "torch", out / stray)
        (out / stray / "model.py").write_text("raise SystemExit('a temporary was run')\n")
    result = cli("verify", out)
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.output.splitlines()[3:]] == ["torch"]


def test_a_users_old_folder_next_to_the_output_survives_builds(tmp_path):
    assert build(tmp_path).exit_code == 0
    for name in (".torch.old", ".torch.tmp-mine"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep.txt").write_text("mine")
    assert build(tmp_path).exit_code == 0  # unchanged
    assert build(tmp_path, "--force", size="tiny-gqa").exit_code == 0  # rewritten
    for name in (".torch.old", ".torch.tmp-mine"):
        assert (tmp_path / name / "keep.txt").read_text() == "mine"


def test_verify_writes_nothing_into_the_folder_it_checks(tmp_path):
    out = tmp_path / "out"
    for target in ("torch", "onnx"):
        assert build(out, target=target).exit_code == 0
    before = tree(out)
    result = cli("verify", out)
    assert result.exit_code == 0, result.output
    assert tree(out) == before and sorted(p.name for p in out.iterdir()) == ["onnx", "torch"]


# --- 8: modes, all targets or none, another spec, config.json --------------------------------


def test_outputs_honour_the_umask(tmp_path, ck):
    old = os.umask(0o022)
    try:
        assert build(tmp_path / "o").exit_code == 0
        assert cli("convert", "--to", "cerebras", ck, tmp_path / "cs.safetensors").exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "o" / "torch").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "o" / "torch" / "model.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "cs.safetensors").stat().st_mode) == 0o644


def test_all_targets_are_checked_before_any_is_written(tmp_path, ck):
    parallel = tmp_path / "parallel.yaml"
    parallel.write_text(yaml.safe_dump({"mesh": {"data": 1}}))
    for extra in (["--weights", str(ck)], ["--parallel", str(parallel)]):
        out = tmp_path / f"out{len(extra[1])}"
        result = build(out, *extra, target="all")
        one_line_error(result)
        assert not out.exists() or list(out.iterdir()) == [], result.output
    # a folder that would be refused stops every target, before the first is written
    out = tmp_path / "blocked"
    (out / "onnx").mkdir(parents=True)
    (out / "onnx" / "mine.txt").write_text("mine")
    one_line_error(build(out, target="all"))
    assert sorted(p.name for p in out.iterdir()) == ["onnx"]


def test_another_spec_into_the_same_folder_needs_force(tmp_path):
    assert build(tmp_path).exit_code == 0
    before = tree(tmp_path / "torch")
    message = one_line_error(build(tmp_path, size="tiny-gqa"))
    assert "another spec" in message and tree(tmp_path / "torch") == before
    assert build(tmp_path, "--force", size="tiny-gqa").exit_code == 0


# --- 12: bounded input costs ----------------------------------------------------------------


def _run_limited(
    args: list[str], memory_bytes: int = 3 * 2**30
) -> tuple[subprocess.CompletedProcess, float]:
    """The CLI in a subprocess under an address-space limit; returns it and its wall time."""
    started = time.perf_counter()
    completed = _limited_cli("RLIMIT_AS", memory_bytes, args, timeout=120)
    return completed, time.perf_counter() - started


def _refused_in_one_line(completed: subprocess.CompletedProcess, words: str) -> None:
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert completed.stderr.count("\n") == 1 and words in completed.stderr, completed.stderr


def test_spec_from_dev_zero_is_refused_without_reading_it_all():
    completed, seconds = _run_limited(["show", "--spec", "/dev/zero"])
    _refused_in_one_line(completed, "at most")
    assert seconds < 30


def test_a_one_gib_config_json_is_refused_by_its_size(tmp_path):
    config = tmp_path / "ck" / "config.json"
    config.parent.mkdir()
    with open(config, "wb") as handle:  # sparse: 1 GiB that costs no disk
        handle.truncate(2**30)
    completed, _ = _run_limited(["show", "--spec", str(config.parent)], memory_bytes=2**30)
    _refused_in_one_line(completed, f"{2**30} bytes")


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"hidden_size": 2_000_000_000, "num_attention_heads": 1_000_000_000,
          "num_hidden_layers": 1, "intermediate_size": 8, "vocab_size": 8}, "less than or equal"),
        ({"dim": 64, "n_layers": 2, "n_heads": 4, "vocab_size": 100, "max_seq_len": 2048,
          "ffn_dim_multiplier": 1e308}, "ffn_dim_multiplier"),
        ({"dim": 64, "n_layers": 2, "n_heads": 4, "vocab_size": 100, "max_seq_len": 2048,
          "ffn_dim_multiplier": 1e300}, "ffn_dim_multiplier"),
        ({"dim": 2**17, "n_layers": 2, "n_heads": 4, "vocab_size": 100, "max_seq_len": 2048,
          "ffn_dim_multiplier": 16}, "FFN width"),
    ],
)  # fmt: skip
def test_absurd_sizes_are_refused_fast_in_one_line(tmp_path, config, words):
    path = tmp_path / "params.json"
    path.write_text(json.dumps(config))
    completed, seconds = _run_limited(["show", "--spec", str(path)])
    _refused_in_one_line(completed, words)
    assert seconds < 30


def test_a_huge_dim_with_the_onnx_target_is_one_line(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"name": "x", "dim": 2**30, "n_layers": 2, "n_heads": 4,
                                "vocab_size": 100}))  # fmt: skip
    completed, _ = _run_limited(["build", "--spec", str(path), "--target", "onnx",
                                 "--out", str(tmp_path / "o")])  # fmt: skip
    _refused_in_one_line(completed, "dim")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("size", "extra"), [("65b", []), ("tiny", ["--batch", "100000000"])])
def test_verify_refuses_absurd_work_up_front(tmp_path, size, extra):
    out = tmp_path / "out"
    assert build(out, size=size).exit_code == 0
    completed, seconds = _run_limited(["verify", str(out), *extra], memory_bytes=4 * 2**30)
    _refused_in_one_line(completed, "GiB")
    assert seconds < 60


def test_a_user_file_with_an_odd_name_in_the_way_is_named_on_one_line(tmp_path):
    """A folder of the user's where the build writes README.md, holding a file whose name has a
    newline: refused even with --force (nothing may be lost), the name escaped by ascii()."""
    assert build(tmp_path).exit_code == 0
    readme = tmp_path / "torch" / "README.md"
    readme.unlink()
    readme.mkdir()
    (readme / "a\nb").write_text("mine")
    for extra in ([], ["--force"]):
        message = one_line_error(build(tmp_path, *extra))
        assert "a\\nb" in message
    assert (readme / "a\nb").read_text() == "mine"


def test_bind_refuses_an_edited_run_py_and_keeps_it_with_force(tmp_path, ck):
    assert build(tmp_path, target="onnx").exit_code == 0
    run_py = tmp_path / "onnx" / "run.py"
    edited = run_py.read_text() + "\n# my change\n"
    run_py.write_text(edited)
    message = one_line_error(cli("bind", tmp_path / "onnx", "--weights", ck))
    assert "run.py" in message and run_py.read_text() == edited
    assert cli("bind", tmp_path / "onnx", "--weights", ck, "--force").exit_code == 0
    assert (tmp_path / "onnx" / "run.py.edited").read_text() == edited


def test_a_write_killed_mid_swap_is_undone_and_only_marked_work_folders_are_removed(tmp_path):
    """The state a write leaves when killed between its two renames (systems without
    renameat2): the previous output in a marked work folder, none at the destination."""
    from codegen.build import WORK_MARK

    assert build(tmp_path).exit_code == 0
    (tmp_path / "torch" / "NOTES.md").write_text("notes")
    before = tree(tmp_path / "torch")
    work = tmp_path / ".torch.llama-codegen-killed"
    work.mkdir()
    (work / WORK_MARK).write_text("")
    os.replace(tmp_path / "torch", work / "old")
    unmarked = tmp_path / ".torch.llama-codegen-notmine"
    unmarked.mkdir()
    (unmarked / "data.bin").write_text("mine")
    result = build(tmp_path)
    assert result.exit_code == 0 and result.output.startswith("unchanged"), result.output
    assert tree(tmp_path / "torch") == before
    assert not work.exists() and (unmarked / "data.bin").read_text() == "mine"


# --- the emitted Cerebras convert.py: the same write rules as `codegen convert` ---------------


@pytest.fixture(scope="module")
def convert_py(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cerebras")
    assert build(out, target="cerebras").exit_code == 0
    return out / "cerebras" / "convert.py"


def _run_convert_py(convert_py: Path, *args: str, file_limit: int | None = None):
    """`python convert.py ARGS` in a subprocess, optionally under `ulimit -f` (through a launcher
    that sets the limit and then execs, rather than a fork of this JAX-threaded process)."""
    launch = (
        "import os, resource, sys; limit = int(sys.argv[1]); "
        "limit > 0 and resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
    )
    return subprocess.run(  # noqa: PLW1510 - the tests read returncode
        [sys.executable, "-c", launch, str(file_limit or 0), str(convert_py), *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_emitted_convert_refuses_to_write_over_its_source(convert_py, ck, tmp_path):
    cs = tmp_path / "cs.safetensors"
    assert _run_convert_py(convert_py, "to-cerebras", str(ck), str(cs)).returncode == 0
    before = cs.read_bytes()
    completed = _run_convert_py(convert_py, "to-cerebras", str(cs), str(cs), "--force")
    assert completed.returncode == 2 and completed.stderr.count("\n") == 1, completed.stderr
    assert "being read" in completed.stderr and cs.read_bytes() == before


def test_emitted_convert_keeps_an_existing_file_without_force(convert_py, ck, tmp_path):
    cs = tmp_path / "cs.safetensors"
    cs.write_bytes(b"someone else's file")
    completed = _run_convert_py(convert_py, "to-cerebras", str(ck), str(cs))
    assert completed.returncode == 2 and "--force" in completed.stderr, completed.stderr
    assert cs.read_bytes() == b"someone else's file"
    assert _run_convert_py(convert_py, "to-cerebras", str(ck), str(cs), "--force").returncode == 0
    assert cs.read_bytes() != b"someone else's file"


def test_emitted_convert_failing_write_leaves_the_old_output_whole(convert_py, ck, tmp_path):
    hf_out = tmp_path / "hf"
    cs = tmp_path / "cs.safetensors"
    assert _run_convert_py(convert_py, "to-cerebras", str(ck), str(cs)).returncode == 0
    assert _run_convert_py(convert_py, "to-hf", str(cs), str(hf_out)).returncode == 0
    good = {path.name: path.read_bytes() for path in hf_out.iterdir()}
    failed = _run_convert_py(
        convert_py, "to-hf", str(cs), str(hf_out), "--force", file_limit=100 * 1024
    )
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1, failed.stderr
    assert "File too large" in failed.stderr
    assert {path.name: path.read_bytes() for path in hf_out.iterdir()} == good  # no temporaries
