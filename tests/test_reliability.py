"""Reliability and security: malformed specs, code injection, killed builds, determinism,
untrusted checkpoints, full and read-only disks, memory bounds.

More fuzzing: FUZZ_EXAMPLES=5000 python -m pytest tests/test_reliability.py -k malformed
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from backends import TARGETS, BuildOptions
from codegen.build import compare, render_target
from codegen.cli import main
from codegen.verifier.checkpoints import random_weights, save_hf_checkpoint
from codegen.verifier.emitted import build_target, import_package
from spec import PRESETS, get_preset

ROOT = Path(__file__).resolve().parent.parent
VALID = {"name": "fuzz", "vocab_size": 100, "dim": 64, "n_layers": 2, "n_heads": 4}
NUMERIC = ["vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "norm_eps",
           "rope_theta", "max_seq_len", "init_std", "multiple_of"]  # fmt: skip

# --- malformed spec files -------------------------------------------------------------------

wrong_types = st.sampled_from(NUMERIC + ["name", "tie_embeddings", "rope_scaling"]).flatmap(
    lambda key: st.sampled_from([[1, 2], {"a": 1}, "twelve", None, [], "1e400"]).map(
        lambda value: {**VALID, key: value}
    )
)
# (without `name` the same keys are a valid Meta params.json, which load_spec accepts)
missing_keys = st.sampled_from(sorted(set(VALID) - {"name"})).map(
    lambda key: {k: v for k, v in VALID.items() if k != key}
)
unknown_keys = (
    st.text(min_size=1, max_size=20)
    .filter(
        lambda k: (
            k not in VALID
            and k not in NUMERIC
            and k
            not in {"training", "rope_scaling", "dtype", "tie_embeddings", "ffn_dim_multiplier"}
        )
    )
    .map(lambda key: {**VALID, key: 1})
)
bad_numbers = st.tuples(
    st.sampled_from(
        [
            "vocab_size",
            "dim",
            "n_layers",
            "n_heads",
            "max_seq_len",
            "norm_eps",
            "rope_theta",
            "init_std",
        ]
    ),
    st.sampled_from([0, -1, -(2**40), 2**63, math.nan, math.inf, -math.inf]),
).map(lambda kv: {**VALID, kv[0]: kv[1]})
bad_names = (
    st.text(min_size=1, max_size=30)
    .filter(
        lambda s: not all(c.isascii() and (c.isalnum() or c in "._-") for c in s) or s[0] in "._-"
    )
    .map(lambda name: {**VALID, "name": name})
)
non_divisible = (
    st.integers(1, 64).filter(lambda h: 64 % h).map(lambda heads: {**VALID, "n_heads": heads})
)


def _yaml_text(data: dict) -> str:
    return yaml.safe_dump(data, allow_unicode=True)


special_files = st.sampled_from([
    "name: x\nvocab_size: !!python/object/apply:os.system ['touch /tmp/pwned']\n",
    "!!python/object:__main__.Spec {name: x}\n",
    ("a: &a [1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c]\n"
    "name: bomb\nvocab_size: *d\ndim: 64\nn_layers: 2\nn_heads: 4\n"),
    "[" * 100_000 + "]" * 100_000,
    "name: x\n" + "dim: 1\n" * 3,  # duplicate keys (YAML takes the last, then it is incomplete)
    "\x00\x01\x02 binary",
    "",
    "name: x\nvocab_size: 100\n" + "  " * 5 + "bad indentation: [\n",
])  # fmt: skip


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "40")))
@given(
    content=st.one_of(
        st.one_of(
            wrong_types, missing_keys, unknown_keys, bad_numbers, bad_names, non_divisible
        ).map(_yaml_text),
        special_files,
    ),
    suffix=st.sampled_from([".yaml", ".json.yaml"]),
)
def test_malformed_spec_is_refused_with_one_line(tmp_path_factory, content, suffix):
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / f"spec{suffix}"
    path.write_text(content, encoding="utf-8", errors="surrogateescape")
    out = folder / "out"
    result = CliRunner().invoke(
        main, ["build", "--spec", str(path), "--target", "torch", "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not out.exists()
    assert not Path("/tmp/pwned").exists()


def test_ten_megabyte_spec_is_refused(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("name: x\n" + "# padding\n" * 1_100_000)
    result = CliRunner().invoke(main, ["show", "--spec", str(path)])
    assert result.exit_code == 2 and "at most" in result.output


def test_huge_model_is_still_buildable(tmp_path):
    """No weight is materialised, so a 10-trillion-parameter spec builds like any other."""
    spec = tmp_path / "huge.yaml"
    spec.write_text(yaml.safe_dump({**VALID, "name": "huge", "vocab_size": 2**20, "dim": 65536,
                                    "n_layers": 200, "n_heads": 512}))  # fmt: skip
    result = CliRunner().invoke(
        main, ["build", "--spec", str(spec), "--target", "torch", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output


# --- code injection -------------------------------------------------------------------------

INJECTIONS = [
    'x"; import os; os.system("id"); "',
    "x'\n__import__('os').system('id')\n#",
    "x\nmodel:\n  name: evil",
    "x}} {{ 7*7 }}",
    'x" /> <evil',
    "name with spaces",
]


@pytest.mark.parametrize("name", INJECTIONS)
def test_injected_names_are_refused(name, tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**VALID, "name": name}))
    result = CliRunner().invoke(main, ["build", "--spec", str(path), "--target", "torch"])
    assert result.exit_code == 2 and "name" in result.output


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_unusual_but_valid_names_produce_parseable_output(target):
    import ast

    spec = get_preset("tiny").model_copy(update={"name": "9-Odd.name_v2--x"})
    for path, data in render_target(spec, target, BuildOptions()).items():
        if path.endswith(".py"):
            ast.parse(data)
        elif path.endswith((".yaml", ".yml")):
            yaml.safe_load(data)
        elif path.endswith(".json"):
            json.loads(data)
        elif path.endswith(".onnx"):
            import onnx

            graph = onnx.load_from_string(data).graph  # weights are external: parse, don't load
            assert spec.name not in {node.op_type for node in graph.node}


# --- interrupted builds ---------------------------------------------------------------------


def test_killed_builds_leave_old_or_new_output_never_a_partial_one(tmp_path):
    """SIGKILL at random moments across many builds that alternate between two specs."""
    out = tmp_path / "out"
    specs = [get_preset("tiny"), get_preset("tiny-gqa")]
    expected = [render_target(s, "torch", BuildOptions()) for s in specs]
    rng = random.Random(0)

    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "codegen", "build", "--size", name, "--target", "torch",
             "--out", str(out), "--force"],  # fmt: skip (another spec's build needs --force)
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    started = time.perf_counter()
    start("tiny").wait()
    duration = time.perf_counter() - started  # kill anywhere from start-up to the final rename
    kills = attempt = 0
    while kills < 20 and attempt < 100:
        attempt += 1
        process = start(specs[attempt % 2].name)
        time.sleep(rng.uniform(0.0, duration))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        dest = out / "torch"
        if dest.exists():
            assert any(compare(files, dest) == [] for files in expected), attempt
    assert kills == 20  # the random delays did hit running builds
    result = CliRunner().invoke(
        main, ["build", "--size", "tiny", "--target", "torch", "--out", str(out), "--force"]
    )
    assert result.exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["torch"]  # stray temporaries recovered


def _mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir()
    completed = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if completed.returncode != 0:
        pytest.skip(f"needs mount(8) with root rights for a tmpfs: {completed.stderr.decode()}")


@pytest.mark.parametrize(("options", "words"), [("size=24k", "No space"), ("ro", "Read-only")])
def test_full_or_read_only_disk_gives_a_clear_error(tmp_path, options, words):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, options)
    try:
        result = CliRunner().invoke(
            main, ["build", "--size", "7b", "--target", "torch", "--out", str(disk / "o")]
        )
        assert result.exit_code == 2 and words in result.output, result.output
        assert result.output.count("\n") == 1
        leftovers = [p for p in disk.rglob("*") if p.is_file()]
        assert leftovers == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# --- determinism ----------------------------------------------------------------------------


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_preset_builds_byte_identically(target):
    for spec in PRESETS.values():
        assert render_target(spec, target, BuildOptions()) == render_target(
            spec, target, BuildOptions()
        ), spec.name


def test_identical_across_hash_seeds_and_working_directories(tmp_path):
    outputs = []
    for seed, cwd in [("0", ROOT), ("12345", tmp_path)]:
        out = tmp_path / f"out-{seed}"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "codegen",
                "build",
                "--size",
                "7b",
                "--target",
                "all",
                "--out",
                str(out),
            ],
            cwd=cwd,
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)},
            check=True,
            capture_output=True,
        )
        outputs.append({p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    assert outputs[0] == outputs[1]


# --- untrusted checkpoints (torch target) ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_torch(tmp_path_factory):
    spec = get_preset("tiny")
    package = import_package(build_target(spec, "torch", tmp_path_factory.mktemp("pkg")))
    return spec, package


def _load_error(package, path: Path) -> str:
    with pytest.raises(package.CheckpointError) as caught:
        package.load_checkpoint(package.Model(), path)
    return str(caught.value)


def test_truncated_safetensors(tiny_torch, tmp_path):
    spec, package = tiny_torch
    folder = save_hf_checkpoint(spec, random_weights(spec, 0), tmp_path / "ck")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "not a valid safetensors file" in _load_error(package, folder)


def test_header_that_lies_about_sizes(tiny_torch, tmp_path):
    spec, package = tiny_torch
    folder = save_hf_checkpoint(spec, random_weights(spec, 0), tmp_path / "ck")
    file = folder / "model.safetensors"
    data = file.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    entry = header["model.norm.weight"]
    entry["data_offsets"][1] += 10**9  # claims a gigabyte more than the file holds
    raw = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])
    assert "not a valid safetensors file" in _load_error(package, folder)


def test_wrong_dtype_names_the_tensor(tiny_torch, tmp_path):
    spec, package = tiny_torch
    weights = random_weights(spec, 0)
    weights["model.norm.weight"] = weights["model.norm.weight"].astype(np.int32)
    folder = save_hf_checkpoint(spec, weights, tmp_path / "ck")
    assert "'model.norm.weight' has dtype I32" in _load_error(package, folder)


def test_pickled_code_in_meta_checkpoint_never_runs(tiny_torch, tmp_path):
    spec, package = tiny_torch
    sentinel = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    folder = tmp_path / "meta"
    folder.mkdir()
    torch.save({"tok_embeddings.weight": Exploit()}, folder / "consolidated.00.pth")
    (folder / "params.json").write_text(json.dumps({"dim": spec.dim}))
    message = _load_error(package, folder)
    assert "refused" in message and not sentinel.exists()


# --- resource bounds ------------------------------------------------------------------------


def test_largest_presets_build_every_target_under_1_gb(tmp_path):
    """Peak resident memory of the build process tree, measured with getrusage."""
    largest = max(PRESETS.values(), key=lambda s: s.param_count)
    script = (
        "import resource, subprocess, sys\n"
        f"for size in ({largest.name!r}, 'llama3.1-8b'):\n"
        "    subprocess.run([sys.executable, '-m', 'codegen', 'build', '--size', size,"
        f" '--target', 'all', '--out', {str(tmp_path)!r}, '--force'], check=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, check=True, capture_output=True, text=True
    )
    peak_kib = int(completed.stdout.split()[-1])
    assert peak_kib < 1024 * 1024, f"peak {peak_kib / 1024:.0f} MiB"


@pytest.mark.parametrize("command", ["convert", "verify"])
def test_compiler_commands_refuse_a_truncated_checkpoint(command, tmp_path):
    """`convert` and `verify` read checkpoints through the same checked header reader."""
    spec = get_preset("tiny")
    folder = save_hf_checkpoint(spec, random_weights(spec, 0), tmp_path / "ck")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-100])
    if command == "convert":
        args = ["convert", "--to", "cerebras", str(folder), str(tmp_path / "cs.safetensors")]
    else:
        build_target(spec, "torch", tmp_path / "out")
        args = ["verify", str(tmp_path / "out"), "--weights", str(folder)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "truncated or corrupt" in result.output and result.output.count("\n") == 1
