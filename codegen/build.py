"""The build pipeline: render in memory, stamp a manifest, compare, write atomically."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from backends import BuildOptions, get_backend
from backends.base import OptionError
from spec import ModelSpec

from . import __version__
from .render import render_plan

MANIFEST = "manifest.json"
_LIBC = ctypes.CDLL(None, use_errno=True)
GENERATOR = "llama-codegen"


class OutputError(Exception):
    """The output folder cannot be written as asked (user error: exit code 2)."""


@dataclass(frozen=True)
class BuildResult:
    path: Path
    files: dict[str, bytes]
    changed: bool


def manifest_for(
    spec: ModelSpec, target: str, options: BuildOptions, files: dict[str, bytes]
) -> bytes:
    """A deterministic record of what was built from what (no timestamps, no absolute paths)."""
    manifest = {
        "generator": GENERATOR,
        "version": __version__,
        "target": target,
        "spec": json.loads(spec.canonical_json()),
        "spec_sha256": spec.fingerprint(),
        "options": options.describe(),
        "files": {path: hashlib.sha256(data).hexdigest() for path, data in sorted(files.items())},
    }
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def render_target(spec: ModelSpec, target: str, options: BuildOptions) -> dict[str, bytes]:
    """All files of one target, manifest included, in memory."""
    backend = get_backend(target)
    unused = {
        name
        for name in ("weights", "embed_weights", "parallel")
        if getattr(options, name) and name not in backend.accepts
    }
    if unused:
        flags = ", ".join("--" + name.replace("_", "-") for name in sorted(unused))
        raise OutputError(f"target {target!r} does not take {flags}")
    try:
        files = render_plan(spec, backend, options)
    except OptionError as exc:
        raise OutputError(f"target {target!r}: {exc}") from exc
    files[MANIFEST] = manifest_for(spec, target, options, files)
    return dict(sorted(files.items()))


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def compare(expected: dict[str, bytes], root: Path) -> list[str]:
    """Differences between an in-memory build and a folder, one line each (empty: identical)."""
    if not root.is_dir():
        return [f"{root}: missing"]
    actual = read_tree(root)
    problems = [f"{path}: missing" for path in expected if path not in actual]
    problems += [f"{path}: not produced by this build" for path in actual if path not in expected]
    problems += [
        f"{path}: differs"
        for path, data in expected.items()
        if path in actual and actual[path] != data
    ]
    return problems


def is_ours(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("generator") == GENERATOR


def _old_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.old"


def recover_interrupted(dest: Path) -> None:
    """Undo what a killed build left: a swapped-out previous output, stray temporary folders."""
    old = _old_path(dest)
    if old.exists():
        if dest.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, dest)
    for stray in dest.parent.glob(f".{dest.name}.tmp-*"):
        shutil.rmtree(stray, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic step (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    renameat2 = getattr(_LIBC, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code))


def _swap_in(tmp: Path, dest: Path) -> None:
    """Put the finished folder `tmp` at `dest`. Where the OS can, the swap is one atomic step, so
    `dest` is complete at every instant; otherwise the old folder waits in `.<name>.old` until
    the new one is in place, and `recover_interrupted` finishes the job after a crash."""
    if not dest.exists():
        os.replace(tmp, dest)
    elif _exchange(tmp, dest):
        shutil.rmtree(tmp)  # now holds the previous output
    else:
        os.replace(dest, _old_path(dest))
        os.replace(tmp, dest)


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def write_atomically(dest: Path, files: dict[str, bytes], force: bool = False) -> bool:
    """Replace `dest` with exactly `files`; a crash at any point leaves the old or the new folder.

    Returns False when `dest` already held exactly these files (nothing written).
    """
    dest = dest.absolute()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        recover_interrupted(dest)
    except OSError as exc:
        raise OutputError(f"cannot write to {dest.parent}: {exc.strerror}") from None
    if dest.exists():
        if not dest.is_dir():
            raise OutputError(f"{dest} exists and is not a folder")
        if not force and any(dest.iterdir()) and not is_ours(dest):
            raise OutputError(
                f"{dest} is not empty and was not written by {GENERATOR}; use --force to replace it"
            )
        if not compare(files, dest):
            return False
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    except OSError as exc:
        raise OutputError(f"cannot write to {dest.parent}: {exc.strerror}") from None
    try:
        _write_tree(tmp, files)
        _swap_in(tmp, dest)
    except OSError as exc:
        recover_interrupted(dest)  # puts the previous output back, removes the partial one
        raise OutputError(f"cannot write {dest}: {exc.strerror or exc}") from None
    shutil.rmtree(_old_path(dest), ignore_errors=True)
    return True


def build(
    spec: ModelSpec, target: str, out: Path, options: BuildOptions, force: bool = False
) -> BuildResult:
    files = render_target(spec, target, options)
    dest = out / target
    changed = write_atomically(dest, files, force=force)
    return BuildResult(path=dest, files=files, changed=changed)
