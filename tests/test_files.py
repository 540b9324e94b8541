"""Atomic writes: all or nothing, and files readable as any other file the user writes (not tempfile's 0o600)."""

from __future__ import annotations

import os
import stat

import pytest

from disentkit.files import atomic_dir, atomic_path, write_text_atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_files_and_folders_get_the_usual_modes(tmp_path, umask_022):
    path = write_text_atomic(tmp_path / "a" / "metrics.csv", "x\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # as open() would make it under umask 022
    with atomic_dir(tmp_path / "run") as folder:
        (folder / "f.txt").write_text("y")
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "schedule.json", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["schedule.json"]
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "run") as folder:
            (folder / "part").write_text("half")
            raise RuntimeError("crash mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["schedule.json"]
