"""Atomic file writes: a reader never sees a half-written file, and a crash leaves the old one in place."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path


def _umask() -> int:
    """The process umask. Read from /proc where Linux has it, since setting and restoring it (the only portable
    way) is process-wide and races with threads creating files."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _mode(full: int, replaces: Path) -> int:
    """The mode a finished file or folder gets: that of the one it replaces, else ``full`` (0o666 for files, 0o777
    for folders) less the umask, as ``open`` or ``mkdir`` would give. tempfile makes its files 0o600 and its folders
    0o700, private to their owner, which outputs should not be."""
    try:
        return stat.S_IMODE(replaces.stat().st_mode)
    except OSError:
        return full & ~_umask()


class atomic_path:
    """Context manager giving a temporary path next to ``path``; on success it replaces ``path`` in one step.

    Readers never see a half-written file, and a crash leaves the old file (or none) in place.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __enter__(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            os.chmod(self.tmp, _mode(0o666, self.path))
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.unlink(self.tmp)
        return False


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (folders are created)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically (folders are created)."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def torch_save_atomic(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` atomically: an interrupted save never leaves a torn file, and the previous one
    stays until the new one is complete (training and optimisation state)."""
    import torch  # here, so that the module stays light for the writers that need no torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def replace_path(new: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move ``new`` (a file or a folder, on the same file system) to ``target`` with renames only: a crash leaves
    the old ``target`` or the new one, never a mix. A folder cannot be swapped in one rename, so the old one is first
    renamed aside (``.<name>.old``) and removed once the new one is in place."""
    new, target = Path(new), Path(target)
    old = target.with_name(f".{target.name}.old")
    _remove(old)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    _remove(old)
    return target


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


class atomic_dir:
    """Like :class:`atomic_path` for a whole folder: fill the temporary folder, it replaces ``path`` on success."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            os.chmod(self.tmp, _mode(0o777, self.path))
            replace_path(self.tmp, self.path)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False
