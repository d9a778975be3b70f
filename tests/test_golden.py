"""generated/ is the golden record: it must equal a fresh in-memory build, file by file."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends import TARGETS, BuildOptions
from codegen.build import compare, render_target
from spec import get_preset

GENERATED = Path(__file__).resolve().parent.parent / "generated"
FOLDERS = sorted(p for p in GENERATED.glob("*/*") if p.is_dir())


def test_every_target_has_a_golden_record_for_7b():
    assert {p.name for p in (GENERATED / "7b").iterdir()} == set(TARGETS)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_generated_equals_fresh_build(folder):
    spec = get_preset(folder.parent.name)
    fresh = render_target(spec, folder.name, BuildOptions())
    assert compare(fresh, folder) == [], "run: python -m codegen build --size " + (
        f"{spec.name} --target {folder.name} --out generated/{spec.name}"
    )


def test_builds_are_byte_identical_across_runs():
    spec = get_preset("tiny-llama3")
    for target in TARGETS:
        assert render_target(spec, target, BuildOptions()) == render_target(
            spec, target, BuildOptions()
        ), target
