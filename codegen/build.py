"""The build pipeline: render in memory, stamp a manifest, compare, write atomically."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from backends import BuildOptions, get_backend
from backends.base import OptionError, check_quantize
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
        for name in ("weights", "embed_weights", "parallel", "quantize")
        if getattr(options, name) and name not in backend.accepts
    }
    if unused:
        flags = ", ".join("--" + name.replace("_", "-") for name in sorted(unused))
        raise OutputError(f"target {target!r} does not take {flags}")
    try:
        check_quantize(spec, options)
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


# --- ownership: what in an existing output folder this tool wrote --------------------------

MAX_MANIFEST_BYTES = 16 * 2**20
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Inside our private work folders only; a folder holding it is ours to remove after a crash.
WORK_MARK = ".llama-codegen-work"


def _safe_relative(path: object) -> bool:
    """A manifest entry: a relative POSIX path inside the folder (no `..`, no absolute path)."""
    if not isinstance(path, str) or not path or "\\" in path or path.startswith("/"):
        return False
    parts = path.split("/")
    return all(part not in ("", ".", "..") for part in parts) and path != MANIFEST


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """`folder`'s manifest if it is a valid one of this tool (its generator, target, spec hash
    and a sha256 for every listed file), else None. A planted `{"generator": ...}` is not."""
    path = folder / MANIFEST
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode) or path.stat().st_size > MAX_MANIFEST_BYTES:
            return None
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR:
        return None
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return None
    valid = all(
        _safe_relative(name) and isinstance(digest, str) and _SHA256.fullmatch(digest)
        for name, digest in files.items()
    )
    if not valid or not isinstance(manifest.get("target"), str):
        return None
    if not isinstance(manifest.get("spec_sha256"), str):
        return None
    return manifest


def _sha256_of(path: Path) -> str | None:
    """sha256 of a regular file (streamed), None for links and anything else."""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _entries(root: Path) -> tuple[list[str], list[str]]:
    """Every non-folder entry under `root` and every empty folder, as relative POSIX paths
    (links are entries, never followed)."""
    entries, empty = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in list(dirnames):
            if (base / name).is_symlink():
                dirnames.remove(name)  # a link to a folder is kept as a link
                filenames.append(name)
        if base != root and not dirnames and not filenames:
            empty.append(base.relative_to(root).as_posix())
        entries += [(base / name).relative_to(root).as_posix() for name in filenames]
    return sorted(entries), sorted(empty)


def is_ours(folder: Path) -> bool:
    """True when `folder` holds a valid manifest and every file it lists has its recorded hash."""
    manifest = read_manifest(folder)
    if manifest is None:
        return False
    try:
        return all(
            _sha256_of(folder / name) == digest for name, digest in manifest["files"].items()
        )
    except OSError:
        return False


@dataclass(frozen=True)
class Carry:
    """What of an existing output folder goes into its replacement (the user's files)."""

    files: list[tuple[str, str]]  # (path in the old folder, path in the new one)
    empty_dirs: list[str]
    backups: list[tuple[str, str]]  # the subset of `files` renamed: edited or colliding


def _backup_name(rel: str, taken: set[str]) -> str:
    for n in range(1, 1000):
        candidate = f"{rel}.edited" if n == 1 else f"{rel}.edited-{n}"
        if candidate not in taken:
            return candidate
    raise OutputError(f"no free backup name for {rel}")


def _collides(rel: str, files: dict[str, bytes]) -> bool:
    """True when a new file sits at `rel`, or `rel` is a folder the new build needs."""
    return rel in files or any(name.startswith(rel + "/") for name in files)


def plan_carry(dest: Path, files: dict[str, bytes], force: bool) -> Carry | None:
    """Which files of `dest` are the user's (carried over) and which this tool wrote (replaced);
    None when `dest` already holds exactly this build. Raises OutputError, naming the file, for
    anything only --force may touch: a folder without a valid manifest, another spec's build, a
    generated file edited since, a user file where the build writes one. With --force those are
    still kept: edited or colliding files as `<name>.edited` beside the new ones."""
    if not dest.exists():
        return Carry([], [], [])
    if dest.is_symlink() or not dest.is_dir():
        raise OutputError(f"{_shown(dest)} exists and is not a folder")
    entries, empty_dirs = _entries(dest)
    manifest = read_manifest(dest)
    if manifest is None and (entries or empty_dirs) and not force:
        raise OutputError(
            f"{_shown(dest)} is not empty and has no valid {MANIFEST} of {GENERATOR}; "
            "use --force to build into it (its files are kept)"
        )
    if manifest is not None and _same(dest, files):
        return None  # exactly this build (its manifest too); the user's files stay untouched
    new = json.loads(files[MANIFEST])
    if manifest is not None and not force:
        if manifest["target"] != new["target"]:
            raise OutputError(
                f"{_shown(dest)} holds a {_printable(manifest['target'])} build; use --force"
            )
        if manifest["spec_sha256"] != new["spec_sha256"]:
            other = manifest.get("spec", {})
            name = other.get("name") if isinstance(other, dict) else None
            raise OutputError(
                f"{_shown(dest)} holds a build of another spec ({_printable(name)}); "
                "use --force to replace it"
            )
    listed = manifest["files"] if manifest is not None else {}
    carried, conflicts = [], []
    for rel in entries:
        if manifest is not None and rel == MANIFEST:
            continue
        if rel in listed and _sha256_of(dest / rel) == listed[rel]:
            continue  # ours, unchanged: the new build replaces or drops it
        if rel in listed or _collides(rel, files):
            conflicts.append(rel)
        else:
            carried.append(rel)
    kept = carried + conflicts + empty_dirs
    blocked = [rel for rel in kept if any(rel.startswith(name + "/") for name in files)]
    if blocked:
        raise OutputError(f"{_shown(dest / blocked[0])}: the new build writes a file at its folder")
    if conflicts and not force:
        rel = conflicts[0]
        why = f"was edited after {GENERATOR} wrote it" if rel in listed else "is not this tool's"
        raise OutputError(
            f"{_shown(dest / rel)} {why}; use --force to rebuild "
            f"(your version is then kept as {Path(rel).name}.edited)"
        )
    taken = set(files) | set(entries) | set(empty_dirs)
    backups = []
    for rel in conflicts:
        backup = _backup_name(rel, taken)
        taken.add(backup)
        backups.append((rel, backup))
    return Carry([(rel, rel) for rel in carried] + backups, empty_dirs, backups)


def _same(dest: Path, files: dict[str, bytes]) -> bool:
    """Every new file already in `dest` with the same bytes (the manifest too, so no file of
    an earlier build of ours is left over)."""
    for rel, data in files.items():
        path = dest / rel
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode) or path.read_bytes() != data:
                return False
        except OSError:
            return False
    return True


def _shown(path: Path) -> str:
    """A path for a one-line message: as is when printable, else escaped by ascii()."""
    text = str(path)
    return text if text.isprintable() else ascii(text)


def _printable(text: object) -> str:
    text = str(text)
    return text if text.isprintable() and len(text) <= 80 else ascii(text[:80])


# --- writing --------------------------------------------------------------------------------


def _work_prefix(dest: Path) -> str:
    return f".{dest.name}.{GENERATOR}-"


def _lock(folder: Path) -> int:
    """An exclusive flock on `folder` (the output's parent), held until the returned descriptor
    is closed: a second write into the same place waits, then sees the first one's result. A
    lock on the folder itself, not a lock file, so nothing is left behind or can collide."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        os.close(fd)
        raise
    return fd


def recover_interrupted(dest: Path) -> None:
    """Undo what a killed write left (call with the lock held): our work folders only, known by
    their name and the WORK_MARK inside; a swapped-out previous output goes back first."""
    for work in sorted(dest.parent.glob(glob.escape(_work_prefix(dest)) + "*")):
        if work.is_symlink() or not work.is_dir():
            continue
        if not (work / WORK_MARK).is_file():
            with contextlib.suppress(OSError):
                work.rmdir()  # killed between mkdtemp and the mark: still empty
            continue
        old = work / "old"
        if old.is_dir() and not os.path.lexists(dest):
            os.replace(old, dest)
        shutil.rmtree(work)


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


def _swap_in(work: Path, dest: Path) -> None:
    """Put the finished folder `work/new` at `dest`. Where the OS can, the swap is one atomic
    step, so `dest` is complete at every instant; otherwise the old folder waits in `work/old`
    until the new one is in place, and `recover_interrupted` finishes the job after a crash."""
    tmp = work / "new"
    if not dest.exists():
        os.replace(tmp, dest)
    elif not _exchange(tmp, dest):  # after an exchange `work/new` holds the previous output
        os.replace(dest, work / "old")
        os.replace(tmp, dest)


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def _carry_over(old: Path, new: Path, carry: Carry) -> None:
    """The user's files into the new folder: hard links (no copy of a large checkpoint; the
    old folder's removal then frees nothing of theirs), copies where linking is impossible."""
    for src_rel, dst_rel in carry.files:
        src, dst = old / src_rel, new / dst_rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        mode = os.lstat(src).st_mode
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISREG(mode):
            try:
                os.link(src, dst)
            except OSError:  # another file system mounted inside, or links not allowed
                shutil.copy2(src, dst)
        else:
            raise OutputError(f"{_shown(src)}: cannot keep it (not a file, folder or link)")
    for rel in carry.empty_dirs:
        (new / rel).mkdir(parents=True, exist_ok=True)
    # sub-folder modes as the user left them (last: a read-only folder would refuse the links);
    # the top folder keeps the umask's mode (earlier versions left 0700 there)
    for dirpath, _, _ in sorted(os.walk(old), reverse=True):
        rel = Path(dirpath).relative_to(old)
        if rel != Path(".") and (new / rel).is_dir() and not (new / rel).is_symlink():
            os.chmod(new / rel, stat.S_IMODE(os.stat(dirpath).st_mode))


def write_atomically(
    dest: Path,
    files: dict[str, bytes],
    force: bool = False,
    on_backup: Callable[[str], None] | None = None,
) -> bool:
    """Replace `dest` with `files` plus the user's files in it; a crash at any point leaves
    the old or the new folder, with the user's files in both.

    Returns False when `dest` already held these files (nothing written). Raises OutputError
    (see plan_carry) before writing anything the user did not ask to replace. New folders get
    the umask's mode; a replaced folder keeps its own. `on_backup` hears of every file kept
    under a new name (with --force).
    """
    dest = dest.absolute()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        lock = _lock(dest.parent)
    except OSError as exc:
        raise OutputError(f"cannot write to {dest.parent}: {exc.strerror}") from None
    try:
        return _write_locked(dest, files, force, on_backup)
    finally:
        os.close(lock)  # releases the lock


def _write_locked(
    dest: Path, files: dict[str, bytes], force: bool, on_backup: Callable[[str], None] | None
) -> bool:
    try:
        recover_interrupted(dest)
        carry = plan_carry(dest, files, force)
    except OSError as exc:
        raise OutputError(f"cannot read {dest}: {exc.strerror or exc}") from None
    if carry is None:
        return False
    try:
        work = Path(tempfile.mkdtemp(prefix=_work_prefix(dest), dir=dest.parent))
    except OSError as exc:
        raise OutputError(f"cannot write to {dest.parent}: {exc.strerror}") from None
    try:
        (work / WORK_MARK).write_text(f"{GENERATOR}: temporary folder of a write to {dest.name}\n")
        (work / "new").mkdir()  # mkdir honours the umask (mkdtemp's 0700 stays on `work`)
        _write_tree(work / "new", files)
        if dest.exists():
            _carry_over(dest, work / "new", carry)
        _swap_in(work, dest)
    except OSError as exc:
        recover_interrupted(dest)  # puts the previous output back, removes the partial one
        raise OutputError(f"cannot write {dest}: {exc.strerror or exc}") from None
    except BaseException:
        recover_interrupted(dest)
        raise
    shutil.rmtree(work, ignore_errors=True)
    for old, backup in carry.backups:
        if on_backup is not None:
            on_backup(f"kept {dest / old} (not this build's version) as {dest / backup}")
    return True


def current_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it; set back at once (the CLI has one thread)
    os.umask(mask)
    return mask


def write_file_atomically(
    path: Path, write: Callable[[BinaryIO], None], check: Callable[[Path], None] | None = None
) -> None:
    """Write one file as `write` fills it: into a private temporary in the same folder, fsynced,
    `check`ed (it raises on a bad file), then renamed over `path` in one step. Whatever fails or
    interrupts it (an error, a full disk, Ctrl-C) leaves `path` as it was and no temporary.
    The file gets the umask's mode. Raises OutputError for the OS's errors."""
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{path.name}.{GENERATOR}-", suffix=".tmp", dir=path.parent
        )
    except OSError as exc:
        raise OutputError(f"cannot write to {path.parent}: {exc.strerror}") from None
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def preflight(dest: Path, files: dict[str, bytes], force: bool) -> None:
    """Raise the OutputError a write of `files` to `dest` would raise, writing nothing (so a
    multi-target build can check every target before it writes any)."""
    try:
        plan_carry(dest.absolute(), files, force)
    except OSError as exc:
        raise OutputError(f"cannot read {dest}: {exc.strerror or exc}") from None


def build(
    spec: ModelSpec,
    target: str,
    out: Path,
    options: BuildOptions,
    force: bool = False,
    on_backup: Callable[[str], None] | None = None,
) -> BuildResult:
    files = render_target(spec, target, options)
    dest = out / target
    changed = write_atomically(dest, files, force=force, on_backup=on_backup)
    return BuildResult(path=dest, files=files, changed=changed)
