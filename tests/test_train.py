"""train.py and `cli.py train`: recipe tests in the manner of SpeechBrain's.

Each mode trains end to end on real audio for a few steps with the small model, and each test
checks the files the run must leave behind. One test kills a run mid-way and resumes it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import keras
import pytest

import feature_cache
from conftest import cli_failure
from corpus import CorpusError
from conv_models import DeepSpeakerModel, load_weights_by_name
from train import train, train_reference_recipe
from train_config import TrainConfig, TrainingError

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
SHARED_DATA = REPO.parent / "shared" / "data"
RUN_FILES = {"config.json", "speakers.json", "split.json", "best.h5", "final.h5", "state.json", "metrics.csv", "tensorboard"}
TINY = {"model_size": "small", "epochs": 2, "steps_per_epoch": 2, "validation_steps": 1, "batch_size": 12, "input_workers": 2}


@pytest.fixture(scope="module")
def samples_cache(tmp_path_factory) -> Path:
    """Feature cache of the bundled LibriSpeech subset: 5 speakers, 32 utterances, all with genders."""
    working_dir = tmp_path_factory.mktemp("samples_cache")
    feature_cache.build_feature_cache(SAMPLES / "LibriSpeech", working_dir, workers=2, progress=False)
    return working_dir


def fresh_copy(cache: Path, tmp_path: Path) -> Path:
    """A working dir with the cache but no runs, so tests do not see each other's checkpoints."""
    target = tmp_path / "work"
    shutil.copytree(cache, target, ignore=shutil.ignore_patterns("checkpoints-*"))
    return target


def metrics_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def latest_weights(run: Path) -> list[str]:
    """Names of the run's latest-weights files: only the one state.json names should be left."""
    return sorted(p.name for p in run.glob("latest*.weights.h5"))


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=REPO, capture_output=True, text=True, timeout=900, **kwargs)


def conv_kernel(checkpoint: Path, layer: str) -> np.ndarray:
    with h5py.File(checkpoint, "r") as f:
        group = f["model_weights"][layer]
        names = []
        group.visit(names.append)
        kernel = next(n for n in names if n.endswith("kernel") or n.endswith("kernel:0"))
        return group[kernel][()]


SOFTMAX_RUN = TrainConfig(mode="softmax", held_out_speakers=["1688"], **TINY)


@pytest.fixture(scope="module")
def softmax_run(samples_cache, tmp_path_factory) -> SimpleNamespace:
    """One softmax run of SOFTMAX_RUN on a copy of the samples cache, for the tests that read it (a test that trains
    on it again works on a copy), and how many times `keras.Model.train_step` was traced while it trained."""
    working_dir = fresh_copy(samples_cache, tmp_path_factory.mktemp("softmax_run"))
    traced = []
    train_step = keras.Model.train_step
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keras.Model, "train_step", lambda self, data: traced.append(data) or train_step(self, data))
        run = train(working_dir, SOFTMAX_RUN)
    return SimpleNamespace(working_dir=working_dir, run=run, traces=len(traced))


def test_softmax_run_writes_every_run_file_and_a_checkpoint_that_loads_by_name(softmax_run):
    run = softmax_run.run
    assert run == softmax_run.working_dir / "checkpoints-softmax"
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    assert [row["epoch"] for row in metrics_rows(run)] == ["0", "1"]
    assert {"accuracy", "loss", "val_accuracy", "val_loss"} <= set(metrics_rows(run)[0])
    speakers = json.loads((run / "speakers.json").read_text())
    assert speakers["speakers"] == ["19", "26", "27", "1998"] and speakers["held_out_speakers"] == ["1688"]
    assert speakers["genders"] == {"19": "F", "26": "M", "27": "M", "1998": "F"}
    assert json.loads((run / "config.json").read_text())["mode"] == "softmax"
    state = json.loads((run / "state.json").read_text())
    assert state["finished"] is True
    assert latest_weights(run) == [state["latest"]] == ["latest-0002.weights.h5"]
    split = json.loads((run / "split.json").read_text())
    assert set(split) == {"19", "26", "27", "1998"}  # Training speakers only; 19 has 8 utterances, sorted, first 80 % train.
    train_19 = ["19_198-0000.npy", "19_198-0001.npy", "19_198-0002.npy", "19_198-0008.npy", "19_198-0037.npy", "19_227-0037.npy"]
    assert split["19"] == {"train": train_19, "test": ["19_227-0063.npy", "19_227-0070.npy"], "validation": []}  # Validation: the test utterances.
    embedder = DeepSpeakerModel(model_size="small")
    skipped = load_weights_by_name(embedder.m, run / "best.h5")
    assert skipped == []
    np.testing.assert_array_equal(embedder.m.get_layer("conv16-s").get_weights()[0], conv_kernel(run / "best.h5", "conv16-s"))


def test_a_finished_run_keeps_its_last_epochs_model_and_a_run_finished_without_one_gets_it_without_training(softmax_run, tmp_path):
    """final.h5 is the model after the last epoch (what an experiment scores: its whole budget), whichever epoch best.h5
    holds; a run finished by a version without final.h5 gets it from its last weights when its command is run again."""
    from training_models import build_model

    run = softmax_run.run
    state = json.loads((run / "state.json").read_text())
    last_epoch = build_model(SOFTMAX_RUN, 4)
    last_epoch.optimizer.build(last_epoch.trainable_variables)
    last_epoch.load_weights(run / state["latest"])
    np.testing.assert_array_equal(conv_kernel(run / "final.h5", "conv16-s"), last_epoch.get_layer("conv16-s").get_weights()[0])
    np.testing.assert_array_equal(conv_kernel(run / "final.h5", "softmax"), last_epoch.get_layer("softmax").get_weights()[0])  # The head too.

    working_dir = tmp_path / "earlier"
    shutil.copytree(softmax_run.working_dir, working_dir)
    earlier = working_dir / "checkpoints-softmax"
    (earlier / "final.h5").unlink()
    metrics, best = (earlier / "metrics.csv").read_text(), (earlier / "best.h5").stat().st_mtime_ns
    assert train(working_dir, SOFTMAX_RUN) == earlier
    np.testing.assert_array_equal(conv_kernel(earlier / "final.h5", "conv16-s"), conv_kernel(run / "final.h5", "conv16-s"))
    assert (earlier / "metrics.csv").read_text() == metrics and (earlier / "best.h5").stat().st_mtime_ns == best  # Not trained again.
    assert json.loads((earlier / "state.json").read_text()) == state


def test_a_run_traces_its_training_step_once(softmax_run):
    """Keras on TensorFlow, without a strategy, creates the optimizer's slots and the metrics inside the first
    trace, and TensorFlow then traces the step again; `build_training_state` creates them before `fit`. Once in
    all: the shared run trains two epochs."""
    assert softmax_run.traces == 1


def test_reference_recipe_starts_triplet_training_from_the_softmax_checkpoint(samples_cache, tmp_path):
    working_dir = fresh_copy(samples_cache, tmp_path)
    runs = train_reference_recipe(working_dir, TrainConfig(learning_rate=1e-12, **{**TINY, "epochs": 1}))  # One epoch of each phase.
    assert [r.name for r in runs] == ["checkpoints-softmax", "checkpoints-triplets"]
    softmax_best, triplet_best = runs[0] / "best.h5", runs[1] / "best.h5"
    # SGD at 1e-12 cannot move a kernel: equal kernels prove the triplet run started from the softmax weights.
    np.testing.assert_allclose(conv_kernel(triplet_best, "res2_1_branch_2a"), conv_kernel(softmax_best, "res2_1_branch_2a"), atol=1e-9)
    assert {"loss", "val_loss"} <= set(metrics_rows(runs[1])[0])


def test_mtl_run_trains_speaker_and_gender_heads_and_the_triplet_term_on_shared_librispeech(tmp_path):
    working_dir = tmp_path / "work"
    feature_cache.build_feature_cache(SHARED_DATA / "LibriSpeech" / "test-other", working_dir, workers=2, progress=False)
    run = train(working_dir, TrainConfig(mode="mtl", triplet_loss_weight=0.5, gender_loss_weight=0.3, held_out_speakers=["367", "533"], **{**TINY, "epochs": 1}))
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    row = metrics_rows(run)[-1]
    for column in ("speaker_pred_accuracy", "gender_pred_binary_accuracy", "ln_loss", "val_speaker_pred_accuracy"):
        assert np.isfinite(float(row[column])), column
    assert len(json.loads((run / "speakers.json").read_text())["speakers"]) == 8


def test_hard_negative_batches_mine_the_embeddings_of_the_model_being_trained(samples_cache):
    """The mining itself is tested in test_batcher.py; here, that a hard-negative run mines with its own model
    as it trains: after a training step, the next refresh of the history embeds with the new weights."""
    from batcher import load_training_data
    from conv_models import embedding_model
    from training_batches import make_batches
    from training_models import build_model

    config = TrainConfig(mode="triplet", hard_negative=True, learning_rate=0.1, **TINY)
    data = load_training_data(samples_cache)
    model = build_model(config, len(data.speakers))
    initial = model.get_weights()
    batches, _ = make_batches(config, data, model, 0)
    batches.refresh_every = 1  # Every batch refreshes the history (the default waits 100 batches).
    windows, targets, weights = batches[0]  # Fills the history with the untrained model.
    assert windows.shape == (12, 160, 64, 1)
    model.train_on_batch(windows, targets, sample_weight=weights)
    first_slot = batches.next_slot
    batches[1]  # Refreshes: embeds new windows.
    refreshed = (first_slot + np.arange((batches.next_slot - first_slot) % len(batches.history_speakers))) % len(batches.history_speakers)
    assert len(refreshed) == 10  # 5 speakers x 2 utterances.
    trained = embedding_model(model).predict(batches.history_windows[refreshed], verbose=0)
    np.testing.assert_allclose(batches.history_embeddings[refreshed], trained, atol=1e-5)
    model.set_weights(initial)
    untrained = embedding_model(model).predict(batches.history_windows[refreshed], verbose=0)
    assert np.abs(trained - untrained).max() > 1e-3, "the step must change the embeddings for this test to mean anything"


@pytest.fixture(scope="module")
def short_clips_cache(tmp_path_factory) -> Path:
    """Cached FSDD digits, every clip shorter than a 160-frame window: george 10, jackson 3, lucas 3 (8, 2 and 2 train)."""
    corpus = tmp_path_factory.mktemp("fsdd_digits")
    for speaker, count in {"george": 10, "jackson": 3, "lucas": 3}.items():
        (corpus / speaker).mkdir()
        for path in sorted((SHARED_DATA / "FSDD" / speaker).glob("*.wav"))[:count]:
            shutil.copy(path, corpus / speaker / path.name)
    working_dir = tmp_path_factory.mktemp("fsdd_cache")
    feature_cache.build_feature_cache(corpus, working_dir, workers=1, progress=False)
    return working_dir


@pytest.mark.parametrize("mode, hard_negative", [("triplet", False), ("triplet", True), ("mtl", False)])
def test_every_triplet_batch_fills_short_clips_as_the_run_pads(short_clips_cache, mode, hard_negative):
    from batcher import load_training_data
    from training_batches import make_batches
    from training_models import build_model

    data = load_training_data(short_clips_cache)
    assert all(len(np.load(entry)) < 160 for entries in data.train.values() for entry in entries)
    model = build_model(TrainConfig(mode=mode, **TINY), len(data.speakers))
    for pad in ("zeros", "repeat"):
        batches = make_batches(TrainConfig(mode=mode, hard_negative=hard_negative, pad=pad, **TINY), data, model, 0)
        for windows in (batches[0][0][0], batches[1][0][0]):  # Training, then validation.
            silent_frames = np.all(windows[..., 0] == 0, axis=2)
            if pad == "zeros":
                assert silent_frames[:, -1].all(), "each short clip ends in zero frames"
            else:
                assert not silent_frames.any(), "each short clip's frames are repeated to fill its window"


@pytest.fixture(scope="module")
def emodb_cache(tmp_path_factory, emodb_sample) -> Path:
    """Cached features and energy-trimmed audio of four EmoDB actors (10 M, 11 M, 13 F, 14 F), one clip per emotion each."""
    working_dir = tmp_path_factory.mktemp("emodb_cache")
    feature_cache.build_feature_cache(emodb_sample, working_dir, workers=1, progress=False, waveform_trim="energy")
    return working_dir


@pytest.mark.parametrize("trim", ["reference", "energy"], ids=["cached_features", "cached_audio"])
def test_every_mtl_batch_gives_each_row_its_own_clips_label_and_masks_clips_without_one(emodb_sample, emodb_cache, tmp_path, trim):
    """The emotion task reads each clip's label from a clips table (here without the neutral clips' labels), in
    batches of cached features (TripletBatches) and of cached audio (AugmentedTripletBatches) alike."""
    from batcher import load_training_data
    from training_batches import label_task_values, make_batches
    from training_models import build_model

    lines = (emodb_sample / "clips.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    table = tmp_path / "clips.tsv"  # Paths made absolute, so the table may lie anywhere.
    table.write_text("path\temotion\n" + "".join(f"{emodb_sample / r['path']}\t{'' if r['emotion'] == 'neutral' else r['emotion']}\n" for r in rows))
    config = TrainConfig(mode="mtl", trim=trim, tasks={"emotion": {"clips": str(table), "column": "emotion", "loss": "categorical"}}, **{**TINY, "batch_size": 30})
    data = load_training_data(emodb_cache)
    values = label_task_values(config, data, emodb_cache)
    emotion, binary = values["emotion_pred"]
    classes = ["anger", "boredom", "disgust", "fear", "happiness", "sadness"]
    assert not binary and emotion == {f"{r['speaker']}_{Path(r['path']).stem}.npy": float(classes.index(r["emotion"])) for r in rows if r["emotion"] != "neutral"}
    model = build_model(config, len(data.speakers), [task for task in config.label_tasks if task.output in values])
    batches, _ = make_batches(config, data, model, 0, emodb_cache, values)
    _, targets, weights = batches[0]
    if trim == "energy":
        drawn = batches.stacked_rows(batches.rng(0))[0]
    else:
        drawn = batches.windows_and_rows(0)[1][batches.row_order]
    names = [batches.entries[row].name for row in drawn]
    labelled = np.array([name in emotion for name in names])
    assert labelled.any() and not labelled.all()
    np.testing.assert_array_equal(targets["emotion_pred"][labelled], [emotion[name] for name in names if name in emotion])
    assert np.all(weights["emotion_pred"][~labelled] == 0) and np.allclose(weights["emotion_pred"][labelled], 30 / labelled.sum())
    genders = {"10": 0.0, "11": 0.0, "13": 1.0, "14": 1.0}  # Gender stays a label per speaker, from speakers.tsv.
    np.testing.assert_array_equal(targets["gender_pred"][:, 0], [genders[name.split("_")[0]] for name in names])


@pytest.mark.parametrize("mode, extra", [("triplet", {}), ("mtl", {"triplet_loss_weight": 1.0}), ("mtl", {})], ids=["triplet", "mtl_triplet", "mtl"])
def test_every_triplet_and_hive_mtl_batch_draws_speakers_as_the_run_samples(short_clips_cache, mode, extra):
    """Balanced: anchors (the first third's rows) of every speaker alike; else as many as its share of the training
    utterances (george 8 of 12)."""
    from batcher import load_training_data
    from training_batches import make_batches
    from training_models import build_model

    data = load_training_data(short_clips_cache)
    model = build_model(TrainConfig(mode=mode, **extra, **TINY), len(data.speakers))
    for balanced, george_share in ((True, 1 / 3), (False, 8 / 12)):
        batches, _ = make_batches(TrainConfig(mode=mode, balanced_sampling=balanced, **extra, **TINY), data, model, 0)
        rng = np.random.default_rng(0)
        anchors = np.concatenate([np.split(batches.sample(rng)[1], 3)[0] for _ in range(500)])  # 2,000 anchors.
        assert np.mean(np.array(batches.speaker_names)[anchors] == "george") == pytest.approx(george_share, abs=0.05), balanced


@pytest.mark.parametrize("trim", ["reference", "energy"], ids=["cached_features", "cached_audio"])
def test_hive_mtl_draws_stacked_triplets_only_for_a_triplet_loss_and_else_the_single_task_batches(samples_cache, tmp_path, trim):
    """With a triplet loss, each batch is [anchors; positives; negatives] (a positive shares its anchor's class, a negative
    never does); without one, Hive-MTL's batches are single-task training's: the same windows and speaker classes for
    the same seed, so the comparison of the two differs only in their heads."""
    from batcher import load_training_data
    from training_batches import make_batches
    from training_models import build_model

    working_dir = fresh_copy(samples_cache, tmp_path)
    if trim == "energy":  # Adds the cached audio.
        feature_cache.build_feature_cache(SAMPLES / "LibriSpeech", working_dir, workers=1, progress=False, waveform_trim="energy")
    data = load_training_data(working_dir)
    settings = {**TINY, "trim": trim, "balanced_sampling": True, "pad": "repeat"}

    def first_batch(mode: str, **extra):
        config = TrainConfig(mode=mode, **extra, **settings)
        batches, _ = make_batches(config, data, build_model(config, len(data.speakers)), 0, working_dir)
        windows, targets = batches[0][:2]
        return windows, targets["speaker_pred"] if isinstance(targets, dict) else targets

    windows, classes = first_batch("mtl", triplet_loss_weight=1.0)
    anchors, positives, negatives = np.split(classes, 3)
    np.testing.assert_array_equal(anchors, positives)
    assert np.all(anchors != negatives)
    single_windows, single_classes = first_batch("softmax")
    mtl_windows, mtl_classes = first_batch("mtl")
    np.testing.assert_array_equal(mtl_classes, single_classes)
    np.testing.assert_array_equal(mtl_windows, single_windows)
    assert not np.array_equal(np.split(mtl_classes, 3)[0], np.split(mtl_classes, 3)[1])  # Not anchors and positives.


@pytest.mark.parametrize("trim", ["reference", "energy"])
def test_batches_read_in_worker_processes_are_the_batches_reader_threads_give(samples_cache, tmp_path, trim):
    """--input_processes changes who reads, not what: through Keras's reader (the path `fit` takes), worker processes
    give the windows and classes that threads give, batch for batch (each batch is seeded by its epoch and index)."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    from batcher import load_training_data
    from training_batches import make_batches
    from training_models import build_model

    working_dir = fresh_copy(samples_cache, tmp_path)
    augment = {}
    if trim == "energy":  # Augmented windows cut from the cached audio.
        feature_cache.build_feature_cache(SAMPLES / "LibriSpeech", working_dir, workers=1, progress=False, waveform_trim="energy")
        augment = {"speed_perturb": True, "noise_probability": 0.5, "spec_mask_probability": 0.5}
    data = load_training_data(working_dir)

    def one_epoch(processes: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        config = TrainConfig(mode="softmax", trim=trim, input_processes=processes, **augment, **{**TINY, "steps_per_epoch": 4})
        batches, _ = make_batches(config, data, build_model(config, len(data.speakers)), 0, working_dir)
        assert batches.use_multiprocessing is processes and batches.workers == 2
        adapter = PyDatasetAdapter(batches, shuffle=False)
        drawn = [(np.array(x), np.array(y)) for x, y, *_ in adapter.get_numpy_iterator()]
        adapter.on_epoch_end()
        return drawn

    threads, processes = one_epoch(False), one_epoch(True)
    assert len(processes) == len(threads) == 4
    for (x_threads, y_threads), (x_processes, y_processes) in zip(threads, processes):
        np.testing.assert_array_equal(x_processes, x_threads)
        np.testing.assert_array_equal(y_processes, y_threads)
    assert not np.array_equal(threads[0][0], threads[1][0])  # Distinct batches, so the order is checked too.


def test_mtl_on_own_data_without_gender_labels_trains_the_speaker_head_only(tmp_path, caplog):
    corpus = tmp_path / "my_speakers"
    for speaker in ("george", "jackson", "lucas"):
        (corpus / speaker).mkdir(parents=True)
        for path in sorted((SHARED_DATA / "FSDD" / speaker).glob("*.wav"))[:6]:
            shutil.copy(path, corpus / speaker / path.name)
    working_dir = tmp_path / "work"
    feature_cache.build_feature_cache(corpus, working_dir, workers=2, progress=False)
    with caplog.at_level(logging.WARNING):
        run = train(working_dir, TrainConfig(mode="mtl", **{**TINY, "epochs": 1}))
    assert "no training speaker has a gender label: Hive-MTL trains without the gender head" in caplog.text
    columns = set(metrics_rows(run)[0])
    assert "speaker_pred_accuracy" in columns and not any(c.startswith("gender") for c in columns)


def test_one_shot_train_builds_the_cache_and_runs_the_reference_recipe_with_hard_negatives_in_its_triplet_phase(tmp_path, invoke_cli):
    result = invoke_cli("train", "--audio_dir", "samples", "--working_dir", tmp_path, "--model_size", "small",
                        "--epochs", "1", "--steps_per_epoch", "1", "--batch_size", "12", "--validation_steps", "1", "--hard_negative")
    assert result.exit_code == 0, cli_failure(result)
    assert "49 written" in result.stdout  # 37 FLAC and WAV files, 12 MP3.
    for name in ("checkpoints-softmax", "checkpoints-triplets"):
        assert RUN_FILES <= {p.name for p in (tmp_path / name).iterdir()}
    assert not json.loads((tmp_path / "checkpoints-softmax" / "config.json").read_text())["hard_negative"]
    assert json.loads((tmp_path / "checkpoints-triplets" / "config.json").read_text())["hard_negative"]


def test_train_without_a_cache_says_to_build_it_first(tmp_path, invoke_cli):
    result = invoke_cli("train", "--working_dir", tmp_path)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "build-mfcc-cache" in result.stderr


@pytest.mark.parametrize(
    "options, message",
    [
        (["--mode", "triplet", "--batch_size", "10"], "multiple of 3"),
        (["--mode", "mtl", "--gender_loss_weight", "-1"], "gender_loss_weight must be >= 0"),
        (["--mode", "softmax", "--batch_size", "0"], "batch_size must be positive"),
        (["--mode", "mtl", "--held_out_speakers", "19,nobody"], "held-out speakers not in the cache"),
        (["--mode", "mtl", "--tasks", "{not json"], "--tasks: neither a JSON object nor a JSON file"),
        (["--mode", "softmax", "--mixed_precision", "--precision", "float32"], "--mixed_precision is --precision mixed; it contradicts --precision float32"),
        (["--mode", "softmax", "--window_seconds", "0.5"], "--window_seconds: expected shortest,longest in seconds, e.g. 0.5,2; got '0.5'"),
        (["--mode", "softmax", "--window_seconds", "2,0.5"], "window_seconds must be shortest first, each at least 0.2 s; got [2.0, 0.5]"),
        (["--mode", "softmax", "--window_seconds", "0.5,2", "--steps_per_epoch", "1"], "window_seconds needs at least 2 batches per epoch"),
        (["--mode", "softmax", "--reverb_probability", "0.5", "--rir_dir", "no_such_rooms"], "--rir_dir no_such_rooms: no such folder"),
    ],
)
def test_impossible_settings_are_refused_before_training(samples_cache, tmp_path, invoke_cli, options, message):
    working_dir = fresh_copy(samples_cache, tmp_path)
    result = invoke_cli("train", "--working_dir", working_dir, "--model_size", "small", *options)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit) and message in result.stderr
    assert not list(working_dir.glob("checkpoints-*"))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"mode": "mtl", "tasks": {"gender": {"labels": {"a": "M", "b": "F"}}}}, "task 'gender' is built in"),
        ({"mode": "softmax", "tasks": {"language": {"labels": {"a": "en", "b": "fa"}}}}, "tasks are Hive-MTL heads: they need mode 'mtl'"),
        ({"mode": "mtl", "validation_split": 1.5}, r"validation_split must be in \[0, 1\)"),
        ({"mode": "triplet", "hard_negative": True, "trim": "energy"}, "hard_negative mining reads the cached features"),
        ({"mode": "softmax", "precision": "bfloat16"}, "precision must be one of auto, float32, mixed; got 'bfloat16'"),
        ({"mode": "softmax", "window_seconds": [2, 0.5]}, r"window_seconds must be shortest first, each at least 0.2 s; got \[2, 0.5\]"),
        ({"mode": "softmax", "window_seconds": [0.1, 2]}, "each at least 0.2 s"),
        ({"mode": "softmax", "window_seconds": "0.5-2"}, r"window_seconds must be \[shortest, longest\] in seconds"),
        ({"mode": "triplet", "hard_negative": True, "window_seconds": [0.5, 2]}, "hard_negative mining keeps a history of fixed-length windows"),
        ({"mode": "softmax", "rir_dir": "rooms"}, "rir_dir is read by reverberation: give reverb_probability > 0"),
    ],
)
def test_impossible_task_and_validation_settings_are_refused_by_the_config(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings).validate()


def test_a_run_directory_of_an_earlier_version_reads_mixed_precision_as_the_precision_it_meant():
    from train_config import upgraded_config

    assert upgraded_config({"mode": "softmax", "mixed_precision": True}) == {"mode": "softmax", "precision": "mixed"}
    assert upgraded_config({"mode": "softmax", "mixed_precision": False}) == {"mode": "softmax", "precision": "float32"}
    assert upgraded_config({"mode": "softmax", "precision": "auto"}) == {"mode": "softmax", "precision": "auto"}


def test_unknown_mode_is_refused(invoke_cli):
    result = invoke_cli("train", "--working_dir", "anywhere", "--mode", "siamese")
    assert result.exit_code == 2 and "siamese" in result.stderr


def copy_speakers(tmp_path: Path, files_per_speaker: dict[str, int]) -> Path:
    corpus = tmp_path / "corpus"
    for speaker, count in files_per_speaker.items():
        (corpus / speaker).mkdir(parents=True)
        for path in sorted((SHARED_DATA / "VCTK" / speaker).glob("*.wav"))[:count]:
            shutil.copy(path, corpus / speaker / path.name)
    return corpus


def test_a_single_speaker_corpus_is_refused_with_what_is_missing(tmp_path):
    feature_cache.build_feature_cache(copy_speakers(tmp_path, {"p225": 4}), tmp_path / "work", workers=1, progress=False)
    with pytest.raises(CorpusError, match="at least 2 speakers"):
        train(tmp_path / "work", TrainConfig(mode="softmax", **TINY))


def test_triplets_from_speakers_with_one_utterance_each_are_refused(tmp_path):
    feature_cache.build_feature_cache(copy_speakers(tmp_path, {"p225": 1, "p226": 1}), tmp_path / "work", workers=1, progress=False)
    with pytest.raises(CorpusError, match="at least 2 training utterances"):
        train(tmp_path / "work", TrainConfig(mode="triplet", **TINY))


def test_a_run_directory_of_another_configuration_is_not_overwritten(softmax_run, tmp_path):
    working_dir = Path(shutil.copytree(softmax_run.working_dir, tmp_path / "work"))
    run_files = {path.name: path.read_bytes() for path in (working_dir / "checkpoints-softmax").iterdir() if path.is_file()}
    with pytest.raises(TrainingError, match=r"another configuration \(batch_size differ\)"):
        train(working_dir, dataclasses.replace(SOFTMAX_RUN, batch_size=6))
    assert {path.name: path.read_bytes() for path in (working_dir / "checkpoints-softmax").iterdir() if path.is_file()} == run_files


# `cli.py train --distribution mirrored` on two logical CPUs: tests/test_cluster.py runs it (tests/cli_on_two_cpus.py),
# stopped and resumed, and checks it trains what two workers train.


def test_training_runs_on_the_jax_backend_with_data_parallel(samples_cache, tmp_path):
    working_dir = fresh_copy(samples_cache, tmp_path)
    result = run_cli("train", "--working_dir", str(working_dir), "--mode", "mtl", "--model_size", "small", "--epochs", "1",
                     "--steps_per_epoch", "1", "--batch_size", "12", "--validation_steps", "1", "--triplet_loss_weight", "0.5",
                     "--distribution", "data_parallel", env={**os.environ, "KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stderr
    assert "DataParallel over" in result.stderr
    assert len(metrics_rows(working_dir / "checkpoints-mtl")) == 1


@pytest.mark.parametrize("precision", ["auto", "mixed"])
def test_reduced_precision_training_keeps_float32_checkpoints_says_and_records_its_policy_and_restores_the_global_one(precision, samples_cache, tmp_path, caplog):
    """'auto' runs on every machine (float32 where nothing faster is native); its twin 'mixed'
    needs float16 or bfloat16 hardware, which a CPU without AVX512-BF16 or AMX cannot have."""
    import keras

    from precision import policy_reason, training_policy

    try:
        policy = training_policy(precision)
    except ValueError as error:
        pytest.skip(f"this machine cannot train in mixed precision: {error}")
    working_dir = fresh_copy(samples_cache, tmp_path)
    with caplog.at_level(logging.INFO, logger="train"):
        run = train(working_dir, TrainConfig(mode="mtl", precision=precision, triplet_loss_weight=0.5, **{**TINY, "epochs": 1}))
    said = [r.getMessage() for r in caplog.records if r.name == "train" and r.getMessage().startswith("precision ")]
    assert said == [f"precision {precision}: {policy} ({policy_reason(policy) if precision == 'auto' else 'as asked'})"]
    assert keras.mixed_precision.global_policy().name == "float32"
    assert json.loads((run / "config.json").read_text())["precision_policy"] == policy
    assert all(np.isfinite(float(value)) for value in metrics_rows(run)[0].values())
    assert conv_kernel(run / "best.h5", "conv16-s").dtype == np.float32


# ---------------------------------------------------------------------------------------------- the recipe beyond the reference


def test_fixed_validation_batches_stay_the_same_across_epochs_where_drawn_ones_change(samples_cache):
    from batcher import FixedBatches, SpeakerClassBatches, load_training_data

    data = load_training_data(samples_cache)
    test = {s: e for s, e in data.test.items() if e}
    drawn = SpeakerClassBatches(test, data.speakers, 12, 2, seed=1)
    fixed = FixedBatches.draw(SpeakerClassBatches(test, data.speakers, 12, 2, seed=1), 2)
    first_drawn, first_fixed = drawn[0][0].copy(), fixed[0][0].copy()
    drawn.on_epoch_end()
    fixed.on_epoch_end()
    assert not np.array_equal(drawn[0][0], first_drawn)
    np.testing.assert_array_equal(fixed[0][0], first_fixed)
    np.testing.assert_array_equal(first_fixed, first_drawn)  # Drawn once from the same seeded stream.


def test_gender_loss_weights_average_over_labelled_rows_only():
    from batcher import TripletBatches

    utterances = {s: [Path(f"{s}_{i}.npy") for i in range(2)] for s in ("a", "b", "c")}
    genders = np.array([1.0, np.nan, 0.0], dtype=np.float32)
    batches = TripletBatches(utterances, 12, 1, outputs=("speaker_pred", "gender_pred"), speakers=["a", "b", "c"], task_values={"gender_pred": (genders, True)})
    rows = np.array([0, 2, 4, 3, 2, 3, 1, 5, 2, 3, 0, 3])  # Utterances a_0, b_0, c_0, b_1, ...: speakers a b c b b b a c b b a b.
    _, weights = batches.targets(rows)
    labelled = batches.row_speakers[rows] != 1
    assert np.all(weights["gender_pred"][~labelled] == 0)
    # Keras divides the weighted sum by all 12 rows: the weights make that the mean over the 5 labelled ones.
    np.testing.assert_allclose(weights["gender_pred"][labelled], 12 / 5)
    assert weights["gender_pred"].sum() == pytest.approx(12)


def test_best_checkpoint_follows_the_loss_when_the_monitored_metric_is_missing(tmp_path):
    import keras

    from run_directory import RunCheckpoint

    model = DeepSpeakerModel(model_size="small").m
    (tmp_path / "config.json").write_text("{}")
    checkpoint = RunCheckpoint(tmp_path, "val_accuracy", "max")
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"loss": 3.0})
    checkpoint.on_epoch_end(1, {"loss": 4.0})  # Worse loss: with 'max' it would have been kept as best.
    assert (checkpoint.monitor, checkpoint.best) == ("loss", 3.0)
    assert json.loads((tmp_path / "state.json").read_text())["best"] == 3.0
    assert isinstance(model, keras.Model)


def test_recipe_run_on_mp3_and_flac_with_aam_augmentation_and_snapshots(tmp_path, invoke_cli):
    """The shipped model's recipe end to end on the bundled samples: MP3 with a speaker table and FLAC."""
    recipe = json.loads((REPO / "recipes" / "pretrained_small.json").read_text())
    recipe.update({"epochs": 2, "steps_per_epoch": 2, "batch_size": 12, "validation_steps": 1, "snapshot_every": 1, "audio_dirs": [],
                   # The recipe's calibration split, as far as the samples hold it: one Common Voice and one LibriSpeech speaker.
                   "calibration_speakers": [s for s in recipe["calibration_speakers"] if s in ("0874d76d", "19", "26", "27", "00243bfe", "fbc91278")]})
    assert recipe["calibration_speakers"] == ["0874d76d", "19", "27"]
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(json.dumps(recipe))
    working_dir = tmp_path / "work"
    result = invoke_cli("train", "--working_dir", working_dir, "--recipe", recipe_file, "--audio_dir", "samples/LibriSpeech", "--audio_dir", "samples/CommonVoice-fa")
    assert result.exit_code == 0, cli_failure(result)
    run = working_dir / "checkpoints-softmax"
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    assert sorted(p.name for p in (run / "snapshots").glob("*.h5")) == ["epoch_0001.h5", "epoch_0002.h5"]
    config = json.loads((run / "config.json").read_text())
    assert (config["head"], config["trim"], config["pad"], config["balanced_sampling"]) == ("aam", "energy", "repeat", True)
    speakers = json.loads((run / "speakers.json").read_text())
    assert {"fbc91278", "00243bfe", "26"} <= set(speakers["speakers"]) and speakers["calibration_speakers"] == ["0874d76d", "19", "27"]
    assert not {"0874d76d", "19", "27"} & set(speakers["speakers"])  # Set aside: no training window comes from them.
    assert speakers["genders"]["fbc91278"] == "F"
    assert speakers["speeds"] == [1.0, 0.9, 1.1]
    with h5py.File(run / "best.h5", "r") as f:
        names = []
        f["model_weights"]["speaker_cosine"].visit(names.append)
        kernel = f["model_weights"]["speaker_cosine"][next(n for n in names if n.endswith("kernel"))]
        assert kernel.shape == (512, 3 * len(speakers["speakers"]))
    state = json.loads((run / "state.json").read_text())
    assert state["finished"] and state["train_seconds"] > 0
    assert any((working_dir / "audio-waveforms-energy").glob("fbc91278_*.npy"))
    embedding = DeepSpeakerModel(model_size="small").m
    assert load_weights_by_name(embedding, run / "best.h5") == []


def test_mtl_with_the_shipped_recipe_trains_declared_tasks_on_augmented_triplets_and_validates_apart_from_test(tmp_path, invoke_cli):
    """Hive-MTL with the AAM speaker head on `ln`, augmentation, a language task from folder labels,
    the triplet term, and a validation split taken from the training utterances."""
    recipe = json.loads((REPO / "recipes" / "pretrained_small.json").read_text())
    recipe.update({"mode": "mtl", "epochs": 1, "steps_per_epoch": 2, "batch_size": 12, "validation_steps": 1, "audio_dirs": [], "calibration_speakers": [],
                   "triplet_loss_weight": 1.0, "validation_split": 0.25,
                   "window_seconds": [0.5, 1.0], "reverb_probability": 0.5})  # Variable windows and simulated rooms, streamed by the workers.
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(json.dumps(recipe))
    tasks = {"language": {"labels": {"LibriSpeech": "en", "CommonVoice-fa": "fa"}, "loss": "binary", "weight": 0.5}}
    working_dir = tmp_path / "work"
    result = invoke_cli("train", "--working_dir", working_dir, "--recipe", recipe_file, "--tasks", json.dumps(tasks),
                        "--audio_dir", "samples/LibriSpeech", "--audio_dir", "samples/CommonVoice-fa")
    assert result.exit_code == 0, cli_failure(result)
    run = working_dir / "checkpoints-mtl"
    (row,) = metrics_rows(run)
    for column in ("speaker_pred_accuracy", "gender_pred_binary_accuracy", "language_pred_binary_accuracy", "ln_loss", "val_language_pred_loss"):
        assert np.isfinite(float(row[column])), column
    config = json.loads((run / "config.json").read_text())
    assert (config["window_seconds"], config["reverb_probability"]) == ([0.5, 1.0], 0.5)
    speakers = json.loads((run / "speakers.json").read_text())
    assert speakers["tasks"]["language"]["classes"] == ["en", "fa"] and speakers["speeds"] == [1.0, 0.9, 1.1]
    split = json.loads((run / "split.json").read_text())
    validation = {name for parts in split.values() for name in parts["validation"]}
    assert validation and not validation & {name for parts in split.values() for name in parts["test"] + parts["train"]}
    with h5py.File(run / "best.h5", "r") as f:
        assert {"speaker_pred", "language_pred", "gender_pred", "shared"} <= set(f["model_weights"])
        assert "speaker_task" not in f["model_weights"]  # The AAM speaker head reads the embedding itself.
    embedding = DeepSpeakerModel(model_size="small").m
    assert set(load_weights_by_name(embedding, run / "best.h5")) == set()


def test_an_unknown_recipe_key_is_refused_naming_it(tmp_path, invoke_cli):
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(json.dumps({"mode": "softmax", "learning_rat": 0.1}))
    result = invoke_cli("train", "--working_dir", tmp_path, "--recipe", recipe_file)
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert "learning_rat" in result.stderr


# ---------------------------------------------------------------------------------------------- what a run directory records


def compiled_small_model():
    """The small softmax model with its optimizer built, as fit() leaves it."""
    from training_models import build_model

    model = build_model(TrainConfig(mode="softmax", model_size="small"), num_speakers=4)
    model.optimizer.build(model.trainable_variables)
    return model


def test_a_recipes_noise_and_room_folders_are_relative_to_the_recipe_file(tmp_path, invoke_cli):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    recipe_file = recipes / "recipe.json"
    recipe_file.write_text(json.dumps({"mode": "softmax", "noise_probability": 0.5, "noise_dir": "../musan"}))
    result = invoke_cli("train", "--working_dir", tmp_path / "work", "--recipe", recipe_file)
    assert result.exit_code == 1 and f"--noise_dir {(tmp_path / 'musan').resolve()}: no such folder" in result.stderr
