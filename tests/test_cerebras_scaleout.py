"""Scale-out, Cerebras half: the parallel spec becomes weight streaming's `num_csx` (data x fsdp
systems) in both params layouts, with the batch per system shown; tensor parallelism and a batch
the systems cannot share evenly are refused with one line (CLI exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from backends import BuildOptions
from backends.base import OptionError
from backends.cerebras import BACKEND
from codegen.build import OutputError, compare, render_target
from codegen.cli import main
from spec import ParallelSpec, get_preset

GOLDEN = Path(__file__).resolve().parent.parent / "generated" / "7b" / "cerebras"
BATCH_7B = 2048  # the 7b preset's training.batch_size


def parallel(**mesh: int) -> ParallelSpec:
    return ParallelSpec.model_validate({"mesh": mesh})


def build(options: BuildOptions, size: str = "7b") -> tuple[dict, dict, dict[str, bytes]]:
    files = render_target(get_preset(size), "cerebras", options)
    trainer = yaml.safe_load(files[f"configs/params_{size}.yaml"])
    legacy = yaml.safe_load(files[f"configs/legacy/params_{size}.yaml"])
    return trainer, legacy, files


def cluster_values(trainer: dict, legacy: dict) -> tuple[dict, dict]:
    """(trainer.init.backend.cluster_config, the runconfig keys that go with num_csx)."""
    backend = trainer["trainer"]["init"]["backend"]
    assert backend["backend_type"] == "CSX"
    run = legacy["runconfig"]
    return backend["cluster_config"], {k: run[k] for k in ("num_csx", "num_workers_per_csx")}


def test_default_build_is_one_system_and_equals_the_golden_record():
    trainer, legacy, files = build(BuildOptions())
    ours, theirs = cluster_values(trainer, legacy)
    assert ours == theirs == {"num_csx": 1, "num_workers_per_csx": 1}
    assert compare(files, GOLDEN) == [], (
        "run: python -m codegen build --size 7b --target cerebras --out generated/7b"
    )
    assert "parallel" not in json.loads(files["manifest.json"])["options"]


@pytest.mark.parametrize(
    ("mesh", "num_csx"),
    [
        ({"data": 4, "fsdp": 1}, 4),
        ({"data": 2, "fsdp": 2}, 4),
        ({"data": 1, "fsdp": 8}, 8),
        ({"data": 2}, 2),  # fsdp -1 ("every device left over") counts as 1
        ({}, 1),
    ],
)
def test_num_csx_is_data_times_fsdp_in_both_layouts(mesh, num_csx):
    trainer, legacy, files = build(BuildOptions(parallel=parallel(**mesh)))
    ours, theirs = cluster_values(trainer, legacy)
    assert ours == theirs == {"num_csx": num_csx, "num_workers_per_csx": 1}
    # The global batch is unchanged; the per-system share is shown next to num_csx.
    assert trainer["trainer"]["fit"]["train_dataloader"]["batch_size"] == BATCH_7B
    assert legacy["train_input"]["batch_size"] == BATCH_7B
    share = f"batch_size {BATCH_7B} / {num_csx} = {BATCH_7B // num_csx} sequences"
    for path in ("configs/params_7b.yaml", "configs/legacy/params_7b.yaml"):
        line = next(x for x in files[path].decode().splitlines() if "num_csx:" in x)
        assert share in line and f"{BATCH_7B // num_csx * 2048:,} tokens" in line, line
    readme = files["README.md"].decode()
    assert f"`num_csx: {num_csx}`, {BATCH_7B} / {num_csx} = {BATCH_7B // num_csx}" in readme
    assert "trainer.init.backend.cluster_config.num_csx" in readme and "runconfig.num_csx" in readme


def test_tensor_parallel_is_refused_naming_the_degree():
    with pytest.raises(OptionError, match=r"mesh\.tensor = 2") as caught:
        BACKEND.plan(get_preset("7b"), BuildOptions(parallel=parallel(data=2, tensor=2)))
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)
    with pytest.raises(OutputError, match="target 'cerebras': tensor parallelism"):
        render_target(get_preset("7b"), "cerebras", BuildOptions(parallel=parallel(tensor=4)))


def test_indivisible_batch_is_refused_naming_the_numbers():
    message = rf"global batch \({BATCH_7B} sequences, training.batch_size\) is not divisible by num_csx \(3\)"
    with pytest.raises(OptionError, match=message):
        BACKEND.plan(get_preset("7b"), BuildOptions(parallel=parallel(data=3)))
    with pytest.raises(OutputError, match=message):
        render_target(get_preset("7b"), "cerebras", BuildOptions(parallel=parallel(data=1, fsdp=3)))


def run_cli(tmp_path: Path, spec: dict) -> tuple[int, str]:
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(main, ["build", "--size", "7b", "--target", "cerebras",
                                       "--out", str(tmp_path / "o"), "--parallel", str(tmp_path / "p.yaml")])  # fmt: skip
    return result.exit_code, result.output


def test_cli_writes_num_csx_and_records_the_parallel_spec(tmp_path):
    code, output = run_cli(tmp_path, {"mesh": {"data": 2, "fsdp": 4, "tensor": 1}})
    assert code == 0, output
    folder = tmp_path / "o" / "cerebras"
    trainer = yaml.safe_load((folder / "configs" / "params_7b.yaml").read_text())
    legacy = yaml.safe_load((folder / "configs" / "legacy" / "params_7b.yaml").read_text())
    assert cluster_values(trainer, legacy)[0]["num_csx"] == legacy["runconfig"]["num_csx"] == 8
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["options"]["parallel"]["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"mesh": {"data": 1, "fsdp": 1, "tensor": 2}}, "tensor parallelism (mesh.tensor = 2)"),
        # The parallel spec's own check (batch over data x fsdp) answers first ...
        (
            {"mesh": {"data": 3, "fsdp": 1}},
            "batch (2048) is not divisible by the data x fsdp degree (3)",
        ),
        # ... and the target's check covers rules that keep the batch off fsdp.
        (
            {"mesh": {"data": 1, "fsdp": 3}, "rules": {"batch": ["data"], "embed": None}},
            "global batch (2048 sequences, training.batch_size) is not divisible by num_csx (3)",
        ),
    ],
    ids=["tensor", "batch-by-spec", "batch-by-target"],
)
def test_cli_refusals_are_one_line_exit_2(tmp_path, spec, expected):
    code, output = run_cli(tmp_path, spec)
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: ") and expected in lines[0], lines[0]
    assert not (tmp_path / "o").exists()
