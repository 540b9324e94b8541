"""Atomic writes: all or nothing, and files readable as any other file the user writes (not tempfile's 0o600)."""

from __future__ import annotations

import os
import stat

import pytest

from disentkit.files import atomic_dir, atomic_path, replace_path, torch_save_atomic, write_text_atomic


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(old)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)])
def test_written_files_and_folders_get_the_modes_open_would_give(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    path = write_text_atomic(tmp_path / "a" / "metrics.csv", "x\n")
    assert stat.S_IMODE(path.stat().st_mode) == file_mode
    with atomic_dir(tmp_path / "run") as folder:
        (folder / "f.txt").write_text("y")
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == dir_mode


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    path = write_text_atomic(tmp_path / "schedule.json", "old")
    path.chmod(0o640)
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o640


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


def test_torch_state_and_whole_folders_replace_what_was_there(tmp_path):
    import torch

    path = torch_save_atomic({"step": 1}, tmp_path / "state.pt")
    torch_save_atomic({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 2} and [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    for content in ("old", "new"):  # a folder replaces a folder, and a file a file, leaving nothing aside
        (tmp_path / content).mkdir()
        (tmp_path / content / "weights").write_text(content)
        replace_path(tmp_path / content, tmp_path / "pipeline")
    assert (tmp_path / "pipeline" / "weights").read_text() == "new"
    write_text_atomic(tmp_path / "report.new", "2")
    replace_path(tmp_path / "report.new", tmp_path / "pipeline")  # a file may replace a folder too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline", "state.pt"]
    assert (tmp_path / "pipeline").read_text() == "2"
