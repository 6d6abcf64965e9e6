"""Atomic outputs: a file or a folder appears at its final path complete, or not at all.

Every stage writes its outputs through these helpers, so an interrupted run (killed, out of
memory, power cut) never leaves a half-written file that looks complete to the next stage, to
`dvc status` or to the Prefect flow's "outputs exist" check:

- `atomic_file(path)` yields a temporary sibling path (`.NAME.tmp-PID-XXXXXX.SUFFIX`, same
  folder, same suffix so writers that infer the format from it still work); when the block
  ends without an error the file is fsynced, renamed onto `path` (os.replace) and the folder
  fsynced. On an error the temporary file is removed and `path` is left as it was.
- `atomic_dir(path)` yields a temporary sibling folder to build the whole output in; on
  success every file in it is fsynced and the folder renamed into place (an old `path` is
  first renamed aside and then removed, so a crash in between leaves `path` missing, never
  mixed).
- Leftovers of a killed writer (temporary siblings whose process is gone) are removed the
  next time the same path is written.
- "No space left on device" (ENOSPC, EDQUOT) becomes a DiskFullError naming the file and the
  folder to free space in.
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path

from drm.base.errors import DRMError

TMP = ".tmp-"
OLD = ".old-"
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(DRMError):
    """The disk (or quota) filled up while writing an output; nothing was replaced."""

    def __init__(self, path, *, what: str = "", fix: str | None = None):
        self.path = Path(path)
        fix = fix or f"free space there and rerun ({self.path.name}, if it existed before, is unchanged)"
        super().__init__(f"disk full: no space left on the device holding {shown(self.path.parent)} while writing "
                         f"{shown(self.path)}{what}; {fix}")


def shown(path) -> str:
    """A path as a message shows it: relative to the working folder when inside it (the project
    root under dvc), else as given."""
    p = Path(path)
    try:
        return os.path.relpath(p) if p.resolve().is_relative_to(Path.cwd().resolve()) else str(p)
    except (OSError, ValueError):
        return str(p)


def is_disk_full(e: BaseException) -> bool:
    """Whether an error means the disk is full (pyarrow's IO errors carry no errno, only the text)."""
    return isinstance(e, OSError) and (e.errno in _FULL or "No space left on device" in str(e))


def _sibling(path: Path, mark: str) -> Path:
    return path.with_name(f".{path.name}{mark}{os.getpid()}-{secrets.token_hex(3)}{path.suffix}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def clean_stale(path) -> list[Path]:
    """Remove the temporary siblings of `path` left by writers that no longer run; returns them."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for mark in (TMP, OLD):
        prefix = f".{path.name}{mark}"
        for p in path.parent.glob(f"{prefix}*"):
            pid = p.name[len(prefix):].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                _remove(p)
                removed.append(p)
    return removed


def _fsync_file(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(d) -> None:
    """fsync a folder (its entries: a rename in it becomes durable); a no-op where unsupported."""
    try:
        fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            p = Path(dirpath, f)
            if not p.is_symlink():
                _fsync_file(p)
        fsync_dir(dirpath)


def _replace(src, dst) -> None:
    """The one rename that publishes an output (os.replace: atomic within a file system)."""
    os.replace(src, dst)


@contextmanager
def atomic_file(path):
    """Yield a temporary path to write `path`'s content to; publish it atomically on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = _sibling(path, TMP)
    try:
        yield tmp
        _fsync_file(tmp)
        _replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as e:
        _remove(tmp)
        if is_disk_full(e):
            raise DiskFullError(path) from e
        raise


@contextmanager
def atomic_dir(path):
    """Yield a temporary folder to build `path` in; swap it into place on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = _sibling(path, TMP)
    tmp.mkdir()
    old = None
    try:
        yield tmp
        _fsync_tree(tmp)
        if path.exists() or path.is_symlink():
            old = _sibling(path, OLD)
            _replace(path, old)
        _replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as e:
        _remove(tmp)
        if old is not None and not path.exists():  # the swap failed half-way: put the old one back
            os.replace(old, path)
            old = None
        if is_disk_full(e):
            raise DiskFullError(path) from e
        raise
    if old is not None:
        _remove(old)


def write_bytes(path, data: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path, text: str, encoding: str = "utf-8") -> Path:
    return write_bytes(path, text.encode(encoding))
