"""The repository's shape: no import cycles in the CLI."""

from __future__ import annotations

import subprocess
import sys

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
