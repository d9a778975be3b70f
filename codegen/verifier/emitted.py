"""Emitted code on this machine: build one target into a folder, import an emitted package or
script under a fresh module name (emitted packages use relative imports only)."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

from backends import BuildOptions
from spec import ModelSpec

from ..build import render_target, write_atomically

_package_ids = itertools.count()


def build_target(
    spec: ModelSpec, target: str, out: Path, options: BuildOptions | None = None
) -> Path:
    """Build one target into out/<target> and return that folder."""
    dest = out / target
    write_atomically(dest, render_target(spec, target, options or BuildOptions()))
    return dest


def _load(name: str, path: Path, search_locations: list[str] | None = None) -> ModuleType:
    module_spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=search_locations
    )
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


def import_package(folder: Path) -> ModuleType:
    """Import an emitted folder as a package under a fresh name (its imports are relative)."""
    name = f"emitted_{folder.name}_{next(_package_ids)}"
    return _load(name, folder / "__init__.py", [str(folder)])


def import_file(path: Path) -> ModuleType:
    """Import one emitted script (run.py, model.py, convert.py) as a module under a fresh name,
    with its folder first on sys.path as `python script.py` has it (for checkpoint_files.py)."""
    sys.modules.pop("checkpoint_files", None)  # the one beside this script, not another folder's
    sys.path.insert(0, str(path.parent))
    try:
        return _load(f"emitted_{path.parent.name}_{path.stem}_{next(_package_ids)}", path)
    finally:
        sys.path.remove(str(path.parent))
