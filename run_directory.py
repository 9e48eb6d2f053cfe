"""The run directory of a training run, and the callbacks that keep it resumable.

A run lives in one directory, `<working_dir>/checkpoints-<mode>/`, holding everything needed to
understand and resume it:

    config.json               the TrainConfig that produced it
    speakers.json             training speakers in class order, their genders, the held-out speakers
    split.json                each training speaker's train and test cache entries, as the run drew them
    latest-<epoch>.weights.h5 model and optimizer state after the last finished epoch (for resuming)
    state.json                last finished epoch, the weights file of that epoch, best monitored value
                              and its epoch, learning rate, early-stopping and learning-rate-schedule
                              counters, whether the run is finished
    best.h5                   the best model so far (legacy HDF5: loads by layer name, like the reference)
    final.h5                  the model after the last epoch, written when the run finishes (experiments score it:
                              the whole budget, not an epoch chosen on the validation set)
    metrics.csv               one row of losses and metrics per finished epoch
    tensorboard/              TensorBoard logs (TensorFlow backend)

Every file is written atomically and flushed to disk. The weights of an epoch are written before
the state.json that names them, and best.h5 after it, so an interruption at any point leaves a
consistent pair and never a best checkpoint of an epoch that state.json has not finished (a best
checkpoint it names but lacks is written when the run resumes); running the same command again
resumes after the last finished epoch, on the same utterances.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from batcher import TrainingData
from constants import CHECKPOINTS_MTL_DIR, CHECKPOINTS_SOFTMAX_DIR, CHECKPOINTS_TRIPLET_DIR
from conv_models import SPEAKER_OUTPUT
from fileio import save_model_atomically, write_atomically, write_json_atomically
from tasks import LabelTask
from train_config import RESUMABLE_CHANGES, TrainConfig, TrainingError, upgraded_config

logger = logging.getLogger(__name__)

RUN_DIRS = {"softmax": CHECKPOINTS_SOFTMAX_DIR, "triplet": CHECKPOINTS_TRIPLET_DIR, "mtl": CHECKPOINTS_MTL_DIR}
BEST_CHECKPOINT = "best.h5"
FINAL_CHECKPOINT = "final.h5"
SNAPSHOTS_DIR = "snapshots"
LATEST_CHECKPOINT = "latest.weights.h5"  # Runs written before state.json named its weights file.
STATE_FILE = "state.json"
METRICS_FILE = "metrics.csv"
SPLIT_FILE = "split.json"


def run_dir(working_dir: str | os.PathLike, mode: str) -> Path:
    return Path(working_dir) / RUN_DIRS[mode]



# ----------------------------------------------------------------------------------------------
# Callbacks that make a run safe to interrupt.


class ResumableCounters:
    """Mixin for callbacks whose counters Keras resets in `on_train_begin`: puts back those saved in
    state.json, so patience and cooldown count across a resume instead of starting over."""

    COUNTERS: tuple[str, ...] = ()

    def __init__(self, *args, counters: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.restored = counters or {}

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        for name in self.COUNTERS:
            if self.restored.get(name) is not None:
                setattr(self, name, self.restored[name])

    def counters(self) -> dict:
        return {name: json_number(getattr(self, name)) for name in self.COUNTERS}


class ResumableEarlyStopping(ResumableCounters, keras.callbacks.EarlyStopping):
    COUNTERS = ("wait", "best", "best_epoch")


class ResumableReduceLROnPlateau(ResumableCounters, keras.callbacks.ReduceLROnPlateau):
    COUNTERS = ("wait", "best", "cooldown_counter")


def json_number(value) -> int | float | None:
    """A counter as JSON: None for unset or non-finite values (JSON has no infinity)."""
    if value is None or (np.ndim(value) == 0 and not math.isfinite(float(value))):
        return None
    return int(value) if isinstance(value, (int, np.integer)) else float(value)


class RunCheckpoint(keras.callbacks.Callback):
    """Atomic latest and best checkpoints, `metrics.csv` and `state.json`, only for epochs with a finite loss.

    It must run after the callbacks in `counters` (see `make_callbacks`): it records their
    counters, and the learning rate, as they left them at the end of the epoch.
    """

    def __init__(self, directory: Path, monitor: str, mode: str, best: float | None = None, snapshot_every: int = 0):
        super().__init__()
        self.directory = directory
        self.snapshot_every = snapshot_every
        self.monitor = monitor
        self.sign = 1.0 if mode == "max" else -1.0
        self.best = best
        self.stopped_on_nan_epoch: int | None = None
        self.counters: dict[str, ResumableCounters] = {}
        previous = read_state(directory) or {}
        self.train_seconds = float(previous.get("train_seconds") or 0.0)  # Wall time of all finished epochs, across resumes.
        self.rows = read_metrics(directory / METRICS_FILE, before_epoch=int(previous.get("epoch") or 0))
        self.best_epoch: int | None = previous.get("best_epoch")
        self.best_unwritten = previous.get("epoch") is not None and previous.get("best_epoch") == previous.get("epoch")
        self.epoch_started = time.monotonic()

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Write the best checkpoint state.json names when it is the epoch just resumed from: a run killed
        after that epoch's state.json and before its best.h5 would otherwise keep an older best.h5. The
        model holds that epoch's weights (`train` loaded them), so writing it again is harmless."""
        if self.best_unwritten:
            save_model_atomically(self.model, self.directory / BEST_CHECKPOINT)
            self.best_unwritten = False

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if not all(math.isfinite(float(v)) for v in logs.values() if np.ndim(v) == 0):
            self.stopped_on_nan_epoch = epoch + 1
            self.model.stop_training = True
            return
        if self.monitor not in logs and self.monitor != "loss":  # E.g. no validation this epoch: judge by the loss.
            logger.warning("%s is not in this epoch's logs; the best checkpoint follows the training loss instead", self.monitor)
            self.monitor, self.sign, self.best = "loss", -1.0, None
        value = float(logs.get(self.monitor, np.nan))
        improved = self.best is None or self.sign * (value - self.best) > 0
        if improved:
            self.best, self.best_epoch = value, epoch + 1
        if self.snapshot_every and (epoch + 1) % self.snapshot_every == 0:
            (self.directory / SNAPSHOTS_DIR).mkdir(exist_ok=True)
            shutil.copyfile(self.directory / "config.json", self.directory / SNAPSHOTS_DIR / "config.json")  # Their front end.
            save_model_atomically(self.model, self.directory / SNAPSHOTS_DIR / f"epoch_{epoch + 1:04d}.h5")
        # Weights first, then the metrics, then the state that names both, then best.h5: a kill between
        # any two leaves state.json with the weights of its own epoch (rows past it are dropped on resume),
        # and best.h5 never ahead of state.json (a best it names but lacks is written on resume).
        latest = latest_checkpoint_name(epoch + 1)
        save_model_atomically(self.model, self.directory / latest)
        self.train_seconds += time.monotonic() - self.epoch_started
        self.rows = [row for row in self.rows if int(row["epoch"]) < epoch] + [{"epoch": epoch, **{k: csv_value(v) for k, v in logs.items()}}]
        write_metrics(self.directory / METRICS_FILE, self.rows)
        write_state(self.directory, {
            "epoch": epoch + 1, "latest": latest, "monitor": self.monitor, "best": self.best, "best_epoch": self.best_epoch, "finished": False,
            "train_seconds": self.train_seconds, "learning_rate": self.learning_rate(),
            "callbacks": {name: callback.counters() for name, callback in self.counters.items()},
        })
        if improved:
            save_model_atomically(self.model, self.directory / BEST_CHECKPOINT)
        remove_other_latest_checkpoints(self.directory, keep=latest)

    def learning_rate(self) -> float | None:
        optimizer = getattr(self.model, "optimizer", None)
        return None if optimizer is None else float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def latest_checkpoint_name(epoch: int) -> str:
    """The weights after `epoch` finished epochs: named by their epoch, so state.json can name them."""
    return f"latest-{epoch:04d}.weights.h5"


def latest_checkpoint(directory: Path, state: dict) -> Path:
    """The weights file `state` names; `latest.weights.h5` for runs written before it named one."""
    return directory / state.get("latest", LATEST_CHECKPOINT)


def remove_other_latest_checkpoints(directory: Path, keep: str) -> None:
    """Delete latest weights that state.json no longer names (older epochs, an older run's latest.weights.h5)."""
    for path in [*directory.glob("latest-*.weights.h5"), directory / LATEST_CHECKPOINT]:
        if path.name != keep:
            path.unlink(missing_ok=True)


def csv_value(value) -> object:
    """A log value as a CSV cell, as keras.callbacks.CSVLogger writes it."""
    return float(value) if np.ndim(value) == 0 else f"[{', '.join(map(str, np.ravel(value)))}]"


def read_metrics(path: Path, before_epoch: int) -> list[dict]:
    """Rows of `metrics.csv` for epochs before `before_epoch`: the finished epochs a resumed run keeps."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [row for row in csv.DictReader(handle) if row.get("epoch", "").isdigit() and int(row["epoch"]) < before_epoch]


def write_metrics(path: Path, rows: list[dict]) -> None:
    """`metrics.csv` as a whole, atomically: `epoch`, then the sorted log keys ("NA" where a row lacks one)."""
    keys = sorted({key for row in rows for key in row} - {"epoch"})

    def write(handle) -> None:
        writer = csv.DictWriter(handle, ["epoch", *keys], restval="NA", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)

    write_atomically(path, write, text=True)


def write_state(directory: Path, state: dict) -> None:
    """`state.json`: what a resume needs (see the module docstring); written last for each epoch."""
    write_json_atomically(directory / STATE_FILE, state)


def read_state(directory: Path) -> dict | None:
    path = directory / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_split(directory: Path) -> dict[str, dict[str, list[str]]] | None:
    """`split.json` of a run: speaker -> {"train": [cache entry names], "test": [...]}; None for older runs."""
    path = directory / SPLIT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def monitored_metric(config: TrainConfig, has_validation: bool) -> tuple[str, str]:
    """What 'best' means: validation accuracy (softmax), validation speaker accuracy (MTL), validation loss (triplet)."""
    prefix = "val_" if has_validation else ""
    if config.mode == "softmax":
        return f"{prefix}accuracy", "max"
    if config.mode == "mtl":
        return f"{prefix}{SPEAKER_OUTPUT}_accuracy", "max"
    return f"{prefix}loss", "min"


def make_callbacks(config: TrainConfig, directory: Path, monitor: str, monitor_mode: str, checkpoint: RunCheckpoint, state: dict | None = None) -> list:
    """The run's callbacks in the order fit() calls them; `state` restores early-stopping and learning-rate counters.

    The checkpoint comes last, so that it records the counters and the learning rate after the
    other callbacks updated them for the epoch.
    """
    restored = (state or {}).get("callbacks") or {}
    callbacks: list = [keras.callbacks.TerminateOnNaN()]
    if config.mode in ("softmax", "mtl"):
        checkpoint.counters = {
            "early_stopping": ResumableEarlyStopping(
                monitor, min_delta=0.001, patience=config.early_stopping_patience, mode=monitor_mode, counters=restored.get("early_stopping")
            ),
            "reduce_lr": ResumableReduceLROnPlateau(
                monitor, factor=0.5, patience=config.reduce_lr_patience, min_lr=config.min_learning_rate, mode=monitor_mode, counters=restored.get("reduce_lr")
            ),
        }
        callbacks += checkpoint.counters.values()
    if keras.backend.backend() == "tensorflow":
        callbacks.append(keras.callbacks.TensorBoard(str(directory / "tensorboard")))
    return [*callbacks, checkpoint]



def copy_for_resume(directory: Path, copy: Path) -> None:
    """Into `copy`, what resuming the run in `directory` reads: its files, the weights (.h5) as links.

    state.json comes last: for a resumed run the chief writes it before config.json, so a copy
    cannot pair a new config with an old state. The chief cannot finish an epoch meanwhile: it
    waits for this worker at the first training step.
    """
    copy.mkdir(parents=True, exist_ok=True)
    names = [p.name for p in directory.glob("*") if p.is_file() and not p.name.startswith(".")] if directory.is_dir() else []
    for name in sorted(names, key=lambda name: name == STATE_FILE):
        if name.endswith(".h5"):
            (copy / name).symlink_to((directory / name).resolve())
        else:
            with contextlib.suppress(FileNotFoundError):  # Removed by the chief meanwhile.
                shutil.copyfile(directory / name, copy / name)


def prepare_run_directory(directory: Path, config: TrainConfig, data: TrainingData, label_tasks: list[LabelTask] = (),
                          policy: str = "float32") -> tuple[dict | None, dict]:
    """Write config, speaker index and split of a new run; for an existing one check the config and
    the training speakers, and return (state, saved config).

    config.json is the TrainConfig plus `precision_policy`, the Keras dtype policy its precision
    meant on the machine that trained (last) on it.
    """
    config_path = directory / "config.json"
    state = read_state(directory)
    current = dataclasses.asdict(config)
    if config_path.is_file() and state:
        saved = upgraded_config(json.loads(config_path.read_text()))
        defaults = dataclasses.asdict(TrainConfig())  # A setting its config.json lacks came later: the run had its default.
        changed = sorted(k for k in current if saved.get(k, defaults[k]) != current[k] and k not in RESUMABLE_CHANGES)
        if changed:
            raise TrainingError(f"{directory} holds a run with another configuration ({', '.join(changed)} differ); use another --working_dir or delete {directory}")
        check_training_speakers(directory, data.speakers)
        if saved.get("epochs") != config.epochs and state["finished"] and state["epoch"] < config.epochs:
            state = {**state, "finished": False}  # More epochs asked for: continue the finished run,
            write_state(directory, state)  # and say so on disk, or a stop before its next epoch (a NaN) would leave it "finished".
        write_json_atomically(config_path, {**current, "precision_policy": policy})
        return state, saved
    write_json_atomically(config_path, {**current, "precision_policy": policy})
    write_json_atomically(
        directory / "speakers.json",
        {
            "speakers": data.speakers,
            "genders": {s: data.genders[s] for s in data.speakers if s in data.genders},
            "tasks": {task.name: {"output": task.output, "loss": task.loss, "classes": list(task.classes)} for task in label_tasks},
            "held_out_speakers": sorted(set(data.held_out) - set(config.calibration_speakers)),
            "calibration_speakers": sorted(set(data.held_out) & set(config.calibration_speakers)),
            "speeds": list(config.augment.speeds) if config.mode != "triplet" else [1.0],  # Class s + k * len(speakers) is speaker s at speeds[k].
        },
    )
    write_json_atomically(directory / SPLIT_FILE, {
        s: {"train": [p.name for p in data.train[s]], "test": [p.name for p in data.test[s]], "validation": [p.name for p in data.validation.get(s, [])]}
        for s in data.speakers
    })
    return None, {}



def check_training_speakers(directory: Path, speakers: list[str]) -> None:
    """A resumed run must see the speakers, in the class order, it started with: on a cache whose
    speakers changed since, class indices would silently mean other speakers."""
    path = directory / "speakers.json"
    if not path.is_file():
        return
    recorded = json.loads(path.read_text())["speakers"]
    if recorded == speakers:
        return
    added, removed = [s for s in speakers if s not in recorded], [s for s in recorded if s not in speakers]
    changes = [f"{verb} {some_of(names)}" for verb, names in (("added", added), ("removed", removed)) if names]
    raise TrainingError(
        f"{path}: the training speakers changed since this run started ({'; '.join(changes) or 'the same speakers in another order'}). "
        f"Resume on the cache the run started with, or start a new run in another --working_dir."
    )


def some_of(names: list[str], shown: int = 10) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def recorded_split(directory: Path, data: TrainingData) -> TrainingData:
    """The training data with the utterances the run started with (split.json), so that a cache that
    grew since cannot move the 80 % boundary under a resumed run; older runs keep the recomputed split."""
    split = read_split(directory)
    if split is None:
        return data
    parts = {part: {s: [data.cache_dir / name for name in split[s].get(part, [])] for s in data.speakers} for part in ("train", "test", "validation")}
    missing = [str(p) for part in parts.values() for entries in part.values() for p in entries if not p.is_file()]
    if missing:
        raise TrainingError(f"{directory / SPLIT_FILE}: {len(missing)} of the run's cache entries are missing (e.g. {missing[0]}); rebuild the cache it started with")
    return dataclasses.replace(data, train=parts["train"], test=parts["test"], validation={s: v for s, v in parts["validation"].items() if v})
