"""docs/llama-config.md lists every LlamaConfig field and what each target does with it: no
"refused" without the one-line error behind it, and no field of transformers' LlamaConfig left
out of the table."""

from __future__ import annotations

import inspect
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import LlamaConfig, LlamaForCausalLM

from codegen.cli import main

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "llama-config.md"
COLUMNS = ("field", "default", "torch", "jax", "onnx", "cerebras", "convert", "input")
TARGETS = COLUMNS[2:7]


def table_rows() -> list[dict[str, str]]:
    """Every row of the doc's tables (header and rule lines skipped), by column name."""
    rows = []
    for line in TABLE.read_text().splitlines():
        if not line.startswith("| ") or line.startswith(("| field", "|---")):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == len(COLUMNS), line
        rows.append(dict(zip(COLUMNS, cells, strict=True)))
    return rows


def refusals() -> list[tuple[str, str, dict, str]]:
    """(row, target, input merged into config.json, expected error text) per refused cell."""
    cases = []
    for row in table_rows():
        for target in TARGETS:
            cell = row[target]
            if not cell.startswith("refused"):
                assert "refused" not in cell and "unsupported" not in cell, (row["field"], cell)
                continue
            error = re.fullmatch(r"refused: `([^`]+)`", cell)
            given = re.fullmatch(r"`(\{.*\})`", row["input"])
            assert error and given, f"{row['field']}: a refusal needs its error and an input"
            cases.append((row["field"], target, json.loads(given.group(1)), error.group(1)))
    return cases


def test_every_llama_config_field_has_a_row():
    """The keyword parameters of transformers' LlamaConfig and PretrainedConfig (its
    __init__'s signature) and what to_dict() writes, each named in a row's field column."""
    names = set(inspect.signature(LlamaConfig.__init__).parameters) - {"self", "kwargs"}
    names |= set(LlamaConfig().to_dict()) | {"torch_dtype", "rope_theta", "rope_scaling"}
    fields = {name for row in table_rows() for name in re.findall(r"`([^`]+)`", row["field"])}
    missing = sorted(names - fields)
    assert not missing, missing


def test_every_cell_says_used_ignored_refused_or_kept():
    for row in table_rows():
        for target in TARGETS:
            assert row[target].split(":")[0].split(" (")[0] in {
                "used",
                "ignored",
                "refused",
                "kept",
            }, (row["field"], target, row[target])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random checkpoint as transformers saves it (config.json + model.safetensors)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    folder = tmp_path_factory.mktemp("table") / "hf"
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def run(target: str, folder: Path, out: Path):
    if target == "convert":
        args = ["convert", "--to", "cerebras", str(folder), str(out / "cs.safetensors")]
    else:
        args = ["build", "--spec", str(folder), "--target", target, "--out", str(out)]
    return CliRunner().invoke(main, args)


CASES = refusals()


@pytest.mark.parametrize(
    ("field", "target", "given", "error"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_each_refused_cell_is_a_one_line_error(checkpoint, field, target, given, error, tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(checkpoint, folder)
    config = json.loads((folder / "config.json").read_text()) | given
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    out.mkdir()
    result = run(target, folder, out)
    message = result.output.strip()
    assert result.exit_code == 2, (field, target, message)
    assert "\n" not in message and error in message, (field, target, message)
    assert list(out.iterdir()) == [], (field, target)


def test_the_unrefused_form_of_each_refused_field_builds(checkpoint, tmp_path):
    """The checkpoint the refusals start from builds for every target and converts: each
    refusal above is the input's doing."""
    for target in TARGETS:
        out = tmp_path / target
        out.mkdir()
        result = run(target, checkpoint, out)
        assert result.exit_code == 0, (target, result.output)
