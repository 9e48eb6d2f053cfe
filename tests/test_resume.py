"""Interrupted training: NaN losses, kills at any point, resumes, and the files a resume trusts.

Split from test_train.py (same fixtures and helpers) so that the two halves run on both
pytest-xdist workers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import feature_cache
from conftest import cli_failure
from conv_models import DeepSpeakerModel
from test_train import (  # noqa: F401  (samples_cache is a fixture: imported, it serves this module's tests too)
    REPO,
    SAMPLES,
    TINY,
    compiled_small_model,
    copy_speakers,
    fresh_copy,
    latest_weights,
    metrics_rows,
    samples_cache,
)
from train import train
from train_config import TrainConfig, TrainingError


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(samples_cache, tmp_path):
    working_dir = fresh_copy(samples_cache, tmp_path)
    run = train(working_dir, TrainConfig(mode="softmax", **{**TINY, "epochs": 1}))
    good = (run / "latest-0001.weights.h5").read_bytes()
    with pytest.raises(TrainingError, match="NaN or infinite in epoch 2; .* last good checkpoint, after epoch 1, is .*latest-0001.weights.h5"):
        train(working_dir, TrainConfig(mode="softmax", learning_rate=1e30, **{**TINY, "epochs": 2}))
    assert (run / "latest-0001.weights.h5").read_bytes() == good and latest_weights(run) == ["latest-0001.weights.h5"]
    assert json.loads((run / "state.json").read_text())["epoch"] == 1
    assert [row["epoch"] for row in metrics_rows(run)] == ["0"]  # metrics.csv holds finished epochs only.
    train(working_dir, TrainConfig(mode="softmax", learning_rate=1e-4, **{**TINY, "epochs": 2}))  # Continued at a lower rate.
    assert [row["epoch"] for row in metrics_rows(run)] == ["0", "1"]  # Each epoch once, not the NaN one and its rerun.


def test_nan_loss_in_the_first_epoch_says_nothing_was_saved(samples_cache, tmp_path):
    working_dir = fresh_copy(samples_cache, tmp_path)
    with pytest.raises(TrainingError, match="no epoch had finished, so nothing was saved"):
        train(working_dir, TrainConfig(mode="softmax", learning_rate=1e30, **TINY))
    assert latest_weights(working_dir / "checkpoints-softmax") == []


class Killed(Exception):
    """Stands for a SIGKILL at one chosen point of a run."""


def test_a_run_killed_between_its_weights_and_its_state_resumes_from_the_weights_state_json_names(samples_cache, tmp_path, monkeypatch, caplog):
    import run_directory

    working_dir = fresh_copy(samples_cache, tmp_path)
    write_json = run_directory.write_json_atomically

    def killed_before_the_state_of_epoch_2(path, payload):
        if Path(path).name == "state.json" and payload.get("epoch") == 2 and not payload.get("finished"):
            raise Killed  # Epoch 2's weights are on disk, its state.json is not.
        write_json(path, payload)

    monkeypatch.setattr(run_directory, "write_json_atomically", killed_before_the_state_of_epoch_2)
    with pytest.raises(Killed):
        train(working_dir, TrainConfig(mode="softmax", **TINY))
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="train"):
        run = train(working_dir, TrainConfig(mode="softmax", **TINY))
    assert "after epoch 1 (optimizer step 2)" in caplog.text  # Epoch 1's weights with epoch 1's state: epoch 2 is trained once.
    assert latest_weights(run) == [json.loads((run / "state.json").read_text())["latest"]] == ["latest-0002.weights.h5"]
    assert [row["epoch"] for row in metrics_rows(run)] == ["0", "1"]


@pytest.mark.parametrize("killed_before", ["state.json", "best.h5"])
def test_a_run_killed_around_the_state_of_an_epoch_has_no_best_checkpoint_ahead_of_that_state(tmp_path, monkeypatch, killed_before):
    """Killed before epoch 1's state.json, the run has no finished epoch, so it must have no best.h5 either
    (it would hold the weights of an epoch trained again, absent from metrics.csv). Killed after that
    state.json and before best.h5, the resume writes the best.h5 the state names: epoch 1's weights."""
    import numpy as np

    import run_directory
    from run_directory import RunCheckpoint

    logs = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5}
    write_json, save = run_directory.write_json_atomically, run_directory.save_model_atomically

    def killed_before_the_state(path, payload):
        if killed_before == "state.json" and Path(path).name == "state.json":
            raise Killed
        write_json(path, payload)

    def killed_before_best_h5(model, path):
        if killed_before == "best.h5" and Path(path).name == "best.h5":
            raise Killed
        save(model, path)

    monkeypatch.setattr(run_directory, "write_json_atomically", killed_before_the_state)
    monkeypatch.setattr(run_directory, "save_model_atomically", killed_before_best_h5)
    checkpoint = RunCheckpoint(tmp_path, "val_accuracy", "max")
    checkpoint.set_model(compiled_small_model())
    with pytest.raises(Killed):
        checkpoint.on_epoch_end(0, logs)  # The first epoch: always the best so far.
    monkeypatch.undo()
    assert not (tmp_path / "best.h5").exists()
    if killed_before == "state.json":
        assert not (tmp_path / "state.json").exists()
        return
    state = json.loads((tmp_path / "state.json").read_text())
    assert (state["epoch"], state["best_epoch"], state["latest"]) == (1, 1, "latest-0001.weights.h5")
    resumed = compiled_small_model()  # As `train` resumes: a fresh model with the weights state.json names.
    resumed.load_weights(tmp_path / state["latest"])
    checkpoint = RunCheckpoint(tmp_path, "val_accuracy", "max", state["best"])
    checkpoint.set_model(resumed)
    checkpoint.on_train_begin()
    best = keras_model(tmp_path / "best.h5")
    for layer in best.layers:
        for saved, trained in zip(layer.get_weights(), resumed.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(saved, trained)


def keras_model(path: Path):
    import keras

    import conv_models  # noqa: F401  (registers the custom layers)

    return keras.models.load_model(path, compile=False)


def test_runs_written_before_state_json_named_their_weights_resume_from_latest_weights_h5(tmp_path):
    from run_directory import latest_checkpoint

    assert latest_checkpoint(tmp_path, {"epoch": 3, "finished": False}) == tmp_path / "latest.weights.h5"
    assert latest_checkpoint(tmp_path, {"epoch": 3, "latest": "latest-0003.weights.h5"}) == tmp_path / "latest-0003.weights.h5"


def grow_speaker(tmp_path: Path, working_dir: Path, speaker: str, count: int) -> None:
    """Add `count` utterances to `speaker` in the cache, named so that they sort before its own ones."""
    folder = tmp_path / "more" / speaker
    folder.mkdir(parents=True)
    for index, path in enumerate(sorted((SAMPLES / "LibriSpeech" / "test-other").rglob("*.flac"))[:count]):
        shutil.copy(path, folder / f"0-{index}.flac")
    feature_cache.build_feature_cache(folder.parent, working_dir, workers=1, progress=False)


def started_run(working_dir: Path, config: TrainConfig) -> Path:
    """The run directory of `config` after its first epoch: config, speakers, split and state (no weights are read before the checks)."""
    from batcher import load_training_data
    from run_directory import prepare_run_directory, run_dir

    run = run_dir(working_dir, config.mode)
    run.mkdir(parents=True)
    prepare_run_directory(run, config, load_training_data(working_dir, config.held_out_speakers))
    (run / "state.json").write_text(json.dumps({"epoch": 1, "monitor": "val_accuracy", "best": 0.5, "finished": False}))
    return run


def test_a_resume_on_a_cache_whose_training_speakers_changed_stops_naming_them(samples_cache, tmp_path):
    working_dir = fresh_copy(samples_cache, tmp_path)
    config = TrainConfig(mode="softmax", held_out_speakers=["1688"], **TINY)
    started_run(working_dir, config)
    feature_cache.build_feature_cache(copy_speakers(tmp_path, {"p225": 2}), working_dir, workers=1, progress=False)
    with pytest.raises(TrainingError, match=r"speakers.json: the training speakers changed since this run started \(added p225\)"):
        train(working_dir, config)


def test_a_run_whose_config_predates_a_setting_resumes_with_it_at_its_default_and_not_with_another_value(samples_cache, tmp_path):
    """A config.json written before window_seconds and reverb_probability existed: that run had neither."""
    from batcher import load_training_data
    from run_directory import prepare_run_directory

    working_dir = fresh_copy(samples_cache, tmp_path)
    config = TrainConfig(mode="softmax", **TINY)
    run = started_run(working_dir, config)
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({k: v for k, v in saved.items() if k not in ("window_seconds", "reverb_probability")}))
    data = load_training_data(working_dir)
    state, _ = prepare_run_directory(run, config, data)
    assert state["epoch"] == 1
    (run / "config.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "window_seconds"}))
    with pytest.raises(TrainingError, match=r"another configuration \(window_seconds differ\)"):
        prepare_run_directory(run, TrainConfig(mode="softmax", window_seconds=[0.5, 2.0], **TINY), data)


def test_a_resume_trains_on_the_split_the_run_recorded_when_the_cache_grew(samples_cache, tmp_path):
    from batcher import load_training_data
    from run_directory import recorded_split

    working_dir = fresh_copy(samples_cache, tmp_path)
    run = started_run(working_dir, TrainConfig(mode="softmax", **TINY))
    before = load_training_data(working_dir)
    grow_speaker(tmp_path, working_dir, "19", 4)
    grown = load_training_data(working_dir)
    assert grown.test["19"] != before.test["19"]  # The 80 % boundary moved: some training utterances would become test ones.
    resumed = recorded_split(run, grown)
    assert (resumed.train, resumed.test, resumed.speakers) == (before.train, before.test, before.speakers)


def test_killed_run_resumes_after_its_last_finished_epoch(samples_cache, tmp_path, invoke_cli, caplog):
    """The run is killed in a process of its own; the same command then resumes it in this one (it reads only the run
    directory the killed process left), and once more finds it finished."""
    working_dir = fresh_copy(samples_cache, tmp_path)
    command = ["train", "--working_dir", str(working_dir), "--mode", "softmax", "--model_size", "small",
               "--epochs", "3", "--steps_per_epoch", "2", "--batch_size", "12", "--validation_steps", "1"]
    state = working_dir / "checkpoints-softmax" / "state.json"
    process = subprocess.Popen([sys.executable, "cli.py", *command], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not state.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(state.read_text())["epoch"]
    assert 1 <= killed_at < 3, "the run must be killed mid-way for this test to mean anything"
    with caplog.at_level(logging.INFO, logger="train"):
        resumed = invoke_cli(*command)
    assert resumed.exit_code == 0, cli_failure(resumed)
    assert f"resuming {working_dir / 'checkpoints-softmax'} after epoch {killed_at} (optimizer step {2 * killed_at})" in caplog.text
    epochs = [int(row["epoch"]) for row in metrics_rows(working_dir / "checkpoints-softmax")]
    assert epochs == [0, 1, 2]
    final = json.loads(state.read_text())
    assert (final["epoch"], final["finished"], final["monitor"], final["latest"]) == (3, True, "val_accuracy", "latest-0003.weights.h5")
    assert latest_weights(working_dir / "checkpoints-softmax") == ["latest-0003.weights.h5"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="train"):
        again = invoke_cli(*command)
    assert again.exit_code == 0 and "has finished already" in caplog.text


def test_patience_counters_and_the_reduced_learning_rate_survive_a_resume(tmp_path):
    import keras

    from run_directory import RunCheckpoint, make_callbacks, read_state

    config = TrainConfig(mode="softmax", early_stopping_patience=5, reduce_lr_patience=2, min_learning_rate=1e-4, learning_rate=1e-3, **TINY)

    def run_epochs(first_epoch: int, val_accuracies: list[float]) -> None:
        """Drive the run's callbacks, in the order fit() calls them, through epochs with these validation accuracies."""
        state = read_state(tmp_path)
        model = compiled_small_model()
        checkpoint = RunCheckpoint(tmp_path, "val_accuracy", "max", state["best"] if state else None)
        callbacks = make_callbacks(config, tmp_path, "val_accuracy", "max", checkpoint, state)
        assert callbacks[-1] is checkpoint  # Last: it records what the other callbacks did this epoch.
        callback_list = keras.callbacks.CallbackList([c for c in callbacks if not isinstance(c, keras.callbacks.TensorBoard)], model=model)
        callback_list.on_train_begin()
        for epoch, value in enumerate(val_accuracies, first_epoch):
            callback_list.on_epoch_begin(epoch)
            callback_list.on_epoch_end(epoch, {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": value})

    run_epochs(0, [0.5, 0.5])  # One epoch without improvement; then the run is killed.
    counters = json.loads((tmp_path / "state.json").read_text())["callbacks"]
    assert counters == {"early_stopping": {"wait": 1, "best": 0.5, "best_epoch": 0}, "reduce_lr": {"wait": 1, "best": 0.5, "cooldown_counter": 0}}
    run_epochs(2, [0.5])  # A second flat epoch after the resume: patience 2 is used up, so the rate halves.
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["callbacks"]["early_stopping"]["wait"] == 2 and state["callbacks"]["reduce_lr"]["wait"] == 0
    assert state["learning_rate"] == pytest.approx(5e-4)
    saved = compiled_small_model()
    saved.load_weights(tmp_path / state["latest"])
    assert float(saved.optimizer.learning_rate.numpy()) == pytest.approx(5e-4)  # The weights were saved after the reduction.


def test_metrics_csv_after_a_resume_keeps_the_earlier_rows_once_and_drops_those_of_unfinished_epochs(tmp_path):
    from run_directory import RunCheckpoint

    # Epoch 2 was logged, then the run was killed before its state.json said so.
    (tmp_path / "metrics.csv").write_text("epoch,accuracy,loss\n0,0.1,3.0\n1,0.2,2.5\n2,0.3,2.0\n")
    (tmp_path / "state.json").write_text(json.dumps({"epoch": 2, "monitor": "accuracy", "best": 0.2, "finished": False}))
    checkpoint = RunCheckpoint(tmp_path, "accuracy", "max", best=0.2)
    checkpoint.set_model(DeepSpeakerModel(model_size="small").m)
    checkpoint.on_epoch_end(2, {"accuracy": 0.25, "loss": 2.2})
    assert metrics_rows(tmp_path) == [
        {"epoch": "0", "accuracy": "0.1", "loss": "3.0"},
        {"epoch": "1", "accuracy": "0.2", "loss": "2.5"},
        {"epoch": "2", "accuracy": "0.25", "loss": "2.2"},
    ]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # No temporary file left behind.


def test_checkpoints_are_flushed_to_disk_then_their_rename_is(tmp_path, monkeypatch):
    from fileio import save_model_atomically

    model = DeepSpeakerModel(model_size="small").m
    synced = []
    fsync = os.fsync

    def record(descriptor: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{descriptor}"))
        synced.append((path, path.is_dir(), [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")]))
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", record)
    for name in ("best.h5", "latest-0001.weights.h5"):
        synced.clear()
        save_model_atomically(model, tmp_path / name)
        (file, file_is_dir, before), (folder, folder_is_dir, after) = synced
        assert not file_is_dir and file.parent == tmp_path.resolve() and name not in before  # The temporary file, before the rename.
        assert folder_is_dir and folder == tmp_path.resolve() and name in after  # Then the folder, after it.
