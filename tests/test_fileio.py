"""fileio.py: every write is atomic and synced; the writers of trials, plots and results go through it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fileio import save_npy_atomically
from plots import plot_score_histograms
from trials import Trial, write_trials


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk pulled out mid-write")


def test_atomic_save_leaves_no_partial_file_when_writing_fails(tmp_path):
    target = tmp_path / "entry.npy"
    broken = np.array([1, Unpicklable()], dtype=object)
    with pytest.raises(RuntimeError, match="mid-write"):
        save_npy_atomically(target, broken)
    assert list(tmp_path.iterdir()) == []
    save_npy_atomically(target, np.arange(3))
    np.testing.assert_array_equal(np.load(target), np.arange(3))


def test_atomic_write_flushes_the_file_then_the_rename_in_its_folder(tmp_path, monkeypatch):
    target = tmp_path / "entry.npy"
    synced = []
    fsync = os.fsync

    def record(descriptor: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{descriptor}"))
        synced.append((path, path.is_dir(), target.exists()))
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", record)
    save_npy_atomically(target, np.arange(3))
    (file, file_is_dir, renamed_before), (folder, folder_is_dir, renamed_after) = synced
    assert not file_is_dir and file.parent == tmp_path.resolve() and not renamed_before
    assert folder_is_dir and folder == tmp_path.resolve() and renamed_after


def synced_paths(monkeypatch) -> list[Path]:
    """Record the path of every descriptor os.fsync is called on from now on."""
    synced, fsync = [], os.fsync

    def record(descriptor: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{descriptor}")))
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", record)
    return synced


@pytest.mark.parametrize("writer", ["trial list", "score histogram"])
def test_trial_lists_and_plots_are_written_atomically_and_synced(writer, tmp_path, monkeypatch):
    synced = synced_paths(monkeypatch)
    if writer == "trial list":
        target = write_trials(tmp_path / "trials.txt", [Trial(1, "a.wav", "b.wav"), Trial(0, "a.wav", "c.wav")])
        assert target.read_text() == "1 a.wav b.wav\n0 a.wav c.wav\n"
    else:
        scores, labels = np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0])
        target = plot_score_histograms(scores, labels, None, tmp_path / "scores.png")
        assert target.read_bytes().startswith(b"\x89PNG")
    assert tmp_path.resolve() in synced and any(p.parent == tmp_path.resolve() and p.name.startswith(f".{target.name}.") for p in synced)
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


@pytest.mark.parametrize("target_exists", [True, False])
def test_a_folder_replaced_whole_holds_every_new_file_and_none_of_the_old(target_exists, tmp_path):
    from fileio import replace_directory

    target, new = tmp_path / "shipped", tmp_path / ".shipped.new"
    if target_exists:
        target.mkdir()
        (target / "model.h5").write_text("old weights")
        (target / "stale.txt").write_text("old")
    new.mkdir()
    (new / "model.h5").write_text("new weights")
    replace_directory(new, target)
    assert {p.name: p.read_text() for p in target.iterdir()} == {"model.h5": "new weights"}
