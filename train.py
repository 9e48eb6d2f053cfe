"""Training: the reference recipe (softmax pre-training, then triplet loss) and Hive-MTL.

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
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from audio import waveform_cache_dir
from augment import AugmentConfig, NO_AUGMENTATION
from batcher import (
    AugmentedBatches,
    AugmentedTripletBatches,
    FixedBatches,
    HardNegativeTripletBatches,
    SpeakerClassBatches,
    TrainingData,
    TripletBatches,
    check_triplet_batch_size,
    check_triplet_training,
    load_training_data,
    triplet_speakers,
)
from constants import (
    AAM_MARGIN,
    AAM_SCALE,
    BATCH_SIZE,
    PAD_MODES,
    TRIM_MODES,
    CHECKPOINTS_MTL_DIR,
    CHECKPOINTS_SOFTMAX_DIR,
    CHECKPOINTS_TRIPLET_DIR,
    TRIPLET_STEPS_PER_EPOCH,
)
from conv_models import (
    EMBEDDING_LAYER_NAME,
    SPEAKER_OUTPUT,
    SPEAKER_HEADS,
    DeepSpeakerModel,
    build_mtl_model,
    embedding_model,
    load_weights_by_name,
)
from fileio import save_model_atomically, write_atomically, write_json_atomically
from margin_softmax import AdditiveAngularMarginLoss
from precision import TRAINING_PRECISIONS, policy_reason, training_policy
from tasks import LabelTask, entry_sources, gender_task, parse_tasks, speaker_source_files
from triplet_loss import deep_speaker_loss

logger = logging.getLogger(__name__)

MODES = ("softmax", "triplet", "mtl")
RUN_DIRS = {"softmax": CHECKPOINTS_SOFTMAX_DIR, "triplet": CHECKPOINTS_TRIPLET_DIR, "mtl": CHECKPOINTS_MTL_DIR}
DISTRIBUTIONS = ("none", "mirrored", "multi_worker", "data_parallel")
DEFAULT_LEARNING_RATES = {"softmax": 1e-3, "triplet": 1e-2, "mtl": 1e-3}
BEST_CHECKPOINT = "best.h5"
SNAPSHOTS_DIR = "snapshots"
LATEST_CHECKPOINT = "latest.weights.h5"  # Runs written before state.json named its weights file.
STATE_FILE = "state.json"
METRICS_FILE = "metrics.csv"
SPLIT_FILE = "split.json"


class TrainingError(RuntimeError):
    """Training cannot go on: a NaN loss, or a run directory made by another configuration."""


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as `config.json` in the run directory."""

    mode: str = "softmax"
    model_size: str = "full"
    epochs: int = 1000
    steps_per_epoch: int | None = None  # None: one pass over the training utterances (triplet: 2,000).
    validation_steps: int = 10
    batch_size: int = BATCH_SIZE
    learning_rate: float | None = None  # None: Adam 1e-3 (softmax, mtl), SGD 1e-2 (triplet).
    seed: int = 0
    held_out_speakers: list[str] = field(default_factory=list)
    hard_negative: bool = False  # Triplet mode: mine hard negatives instead of random triplets.
    initial_checkpoint: str | None = None  # Triplet mode default: the softmax run's best.h5.
    speaker_loss_weight: float = 1.0  # Hive-MTL per-head loss weights.
    gender_loss_weight: float = 1.0
    triplet_loss_weight: float = 0.0  # Hive-MTL: > 0 adds the triplet loss on the embedding.
    early_stopping_patience: int = 20
    reduce_lr_patience: int = 10
    min_learning_rate: float = 1e-4
    input_workers: int = 4  # Threads that read batches from the cache ahead of the model.
    precision: str = "float32"  # auto: the fastest this machine does well; mixed: float16 (GPU) or bfloat16 (CPU), refused where neither is native (precision.py).
    distribution: str = "none"
    # The recipe beyond the reference (softmax mode); defaults are the reference's behaviour.
    head: str = "softmax"  # Speaker head of softmax and mtl modes: the reference's Dense softmax, or aam (additive angular margin on `ln`).
    aam_margin: float = AAM_MARGIN
    aam_scale: float = AAM_SCALE
    balanced_sampling: bool = False  # Each row: a uniform speaker, then one of its utterances.
    fixed_validation: bool = True  # Validation batches drawn once (seeded), not redrawn each epoch.
    trim: str = "reference"  # Silence trim of the cached audio that augmented training reads.
    pad: str = "zeros"  # How windows of clips shorter than 160 frames are filled: zeros or repeat.
    speed_perturb: bool = False
    noise_probability: float = 0.0
    band_limit_probability: float = 0.0
    spec_mask_probability: float = 0.0
    snapshot_every: int = 0  # > 0: keep snapshots/epoch_<n>.h5 every n epochs (learning curves).
    validation_split: float = 0.0  # > 0: validate on this share of each speaker's training utterances, not on its test ones.
    tasks: dict = field(default_factory=dict)  # Hive-MTL label tasks beyond speaker and gender, per speaker or per clip (tasks.py).

    def validate(self) -> None:
        """Refuse impossible settings before any work starts."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}; got {self.distribution!r}")
        for name in ("epochs", "validation_steps", "batch_size", "input_workers"):
            if getattr(self, name) < (0 if name == "validation_steps" else 1):
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be positive; got {self.steps_per_epoch}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive; got {self.learning_rate}")
        for name in ("speaker_loss_weight", "gender_loss_weight", "triplet_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.uses_triplets:
            check_triplet_batch_size(self.batch_size)
        if self.hard_negative and self.mode != "triplet":
            raise ValueError("hard_negative mining is a triplet-mode option")
        if self.head not in SPEAKER_HEADS:
            raise ValueError(f"head must be one of {', '.join(SPEAKER_HEADS)}; got {self.head!r}")
        if self.trim not in TRIM_MODES:
            raise ValueError(f"trim must be one of {', '.join(TRIM_MODES)}; got {self.trim!r}")
        if self.precision not in TRAINING_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(TRAINING_PRECISIONS)}; got {self.precision!r}")
        if self.pad not in PAD_MODES:
            raise ValueError(f"pad must be one of {', '.join(PAD_MODES)}; got {self.pad!r}")
        if self.snapshot_every < 0:
            raise ValueError(f"snapshot_every must be >= 0; got {self.snapshot_every}")
        if self.hard_negative and self.uses_waveforms:
            raise ValueError("hard_negative mining reads the cached features: it cannot be combined with augmentation or a non-reference trim")
        if not 0 <= self.validation_split < 1:
            raise ValueError(f"validation_split must be in [0, 1); got {self.validation_split}")
        if self.tasks and self.mode != "mtl":
            raise ValueError("tasks are Hive-MTL heads: they need mode 'mtl'")
        parse_tasks(self.tasks)  # Its errors name the task and the key.
        self.augment.validate()

    @property
    def augment(self) -> AugmentConfig:
        return AugmentConfig(self.speed_perturb, self.noise_probability, self.band_limit_probability, self.spec_mask_probability)

    @property
    def label_tasks(self) -> list[LabelTask]:
        """Hive-MTL's label tasks: gender (weight `gender_loss_weight`), then the declared `tasks`."""
        return [gender_task(self.gender_loss_weight), *parse_tasks(self.tasks)] if self.mode == "mtl" else []

    @property
    def uses_waveforms(self) -> bool:
        """Augmentation and a non-reference trim read the cached audio, not the cached features."""
        return self.augment != NO_AUGMENTATION or self.trim != "reference"

    @property
    def uses_triplets(self) -> bool:
        """Triplet mode and Hive-MTL both draw stacked triplet batches."""
        return self.mode in ("triplet", "mtl")

    @property
    def optimizer_learning_rate(self) -> float:
        return self.learning_rate or DEFAULT_LEARNING_RATES[self.mode]


def run_dir(working_dir: str | os.PathLike, mode: str) -> Path:
    return Path(working_dir) / RUN_DIRS[mode]


# ----------------------------------------------------------------------------------------------
# Models and their compilation.


def build_model(config: TrainConfig, num_speakers: int, label_tasks: list[LabelTask] = ()) -> keras.Model:
    """The model a mode trains, compiled with the reference's optimizer and losses.

    Hive-MTL gets a head per task of `label_tasks` (those its training data has labels for), an
    adversarial task's behind a gradient reversal. With speed perturbation each speaker at each speed is a class of its own (softmax, mtl).
    """
    num_classes = num_speakers * len(config.augment.speeds)
    speaker_loss = AdditiveAngularMarginLoss(config.aam_margin, config.aam_scale) if config.head == "aam" else "sparse_categorical_crossentropy"
    if config.mode == "softmax":
        model = DeepSpeakerModel(include_softmax=True, num_speakers_softmax=num_classes, model_size=config.model_size, head=config.head).m
        model.compile(keras.optimizers.Adam(config.optimizer_learning_rate), speaker_loss, metrics=["accuracy"])
    elif config.mode == "triplet":
        model = DeepSpeakerModel(model_size=config.model_size).m
        model.compile(keras.optimizers.SGD(config.optimizer_learning_rate), deep_speaker_loss)
    else:
        model = build_mtl_model(
            num_classes, label_heads={task.output: task.units for task in label_tasks},
            reversed_heads={task.output: task.reversal_lambda for task in label_tasks if task.adversarial}, speaker_head=config.head,
            model_size=config.model_size, embedding_output=config.triplet_loss_weight > 0,
        )
        losses = {SPEAKER_OUTPUT: speaker_loss}
        weights = {SPEAKER_OUTPUT: config.speaker_loss_weight}
        weighted_metrics = {}
        for task in label_tasks:  # Weighted metrics: rows without a label are masked.
            binary = task.loss == "binary"
            losses[task.output] = "binary_crossentropy" if binary else "sparse_categorical_crossentropy"
            weights[task.output] = task.weight
            weighted_metrics[task.output] = ["binary_accuracy" if binary else "sparse_categorical_accuracy"]
        if config.triplet_loss_weight > 0:
            losses[EMBEDDING_LAYER_NAME] = deep_speaker_loss
            weights[EMBEDDING_LAYER_NAME] = config.triplet_loss_weight
        # Keras prefixes metric names with the output name only when there are several outputs.
        accuracy_name = "accuracy" if len(losses) > 1 else f"{SPEAKER_OUTPUT}_accuracy"
        metrics = {SPEAKER_OUTPUT: [keras.metrics.SparseCategoricalAccuracy(name=accuracy_name)]}
        model.compile(keras.optimizers.Adam(config.optimizer_learning_rate), losses, loss_weights=weights, metrics=metrics, weighted_metrics=weighted_metrics or None)
    return model


def model_outputs(model: keras.Model) -> tuple[str, ...]:
    """Names of a Hive-MTL model's outputs (its targets' keys)."""
    return tuple(model.output.keys()) if isinstance(model.output, dict) else ()


@contextlib.contextmanager
def distribution_scope(name: str):
    """Build and compile inside the engine that spreads batches over devices and machines.

    TensorFlow backend: `mirrored` (all GPUs of one machine) and `multi_worker` (a cluster
    described by TF_CONFIG). JAX backend: `data_parallel` (all local devices). Batch norms train
    on each replica's own slice under tf.distribute, on the global batch under `data_parallel`
    (tests/test_distribution.py).
    """
    backend = keras.backend.backend()
    if name == "none":
        yield
    elif name in ("mirrored", "multi_worker"):
        if backend != "tensorflow":
            raise ValueError(f"distribution {name!r} is tf.distribute: it needs KERAS_BACKEND=tensorflow, not {backend}")
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy() if name == "mirrored" else multi_worker_strategy()
        logger.info("%s over %d replicas", type(strategy).__name__, strategy.num_replicas_in_sync)
        with strategy.scope():
            yield
    elif name == "data_parallel":
        if backend != "jax":
            raise ValueError(f"distribution 'data_parallel' is keras.distribution: it needs KERAS_BACKEND=jax, not {backend}")
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        logger.info("DataParallel over %d devices", len(devices))
        try:
            yield
        finally:
            keras.distribution.set_distribution(None)
    else:
        raise ValueError(f"unknown distribution {name!r}")


def multi_worker_strategy():
    """tf.distribute.MultiWorkerMirroredStrategy with a `reduce` that takes what Keras 3's fit hands it.

    Keras 3 (3.15 with TF 2.21; keras-team/keras#20585) calls `reduce` in two ways that
    MirroredStrategy accepts and MultiWorkerMirroredStrategy refuses: on a whole (x, y) batch
    before the first step ("Attempt to convert a value (PerReplica ...) to a Tensor"), and on each
    replica's scalar logs with axis=0, which a scalar has not ("Invalid reduction dimension 0").
    This `reduce` maps itself over nested structures, as MirroredStrategy's does, and reduces
    scalars across replicas only: the mean of the replicas' values, what fit logs under
    MirroredStrategy. Every other call is passed on unchanged.

    How a cluster shares a batch: Keras wraps the batches (a PyDataset) in a generator dataset
    and hands it to the strategy's `experimental_distribute_dataset`. A generator has no files
    to share out, so the AUTO shard policy falls back to DATA: every worker runs the whole
    generator, cuts each global batch into one contiguous slice per replica of the cluster and
    keeps its share of the slices (with one replica per worker, worker k of n keeps rows
    [k B/n, (k+1) B/n) of a batch of B). Batches are a pure function of (seed, epoch, index), so
    all workers draw the same global batch, and a cluster trains on the slices one worker with as
    many replicas would; stacked triplet blocks stay whole, one per slice (`loss_replicas` counts
    the replicas of the whole cluster). tests/test_cluster.py checks two workers against one
    process with two replicas. Batch normalisation is per replica, so one device with the whole
    batch computes something else.
    """
    import tensorflow as tf

    class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            def reduce_one(one):
                scalar = axis == 0 and all(getattr(v, "shape", tf.TensorShape([])).rank == 0 for v in self.experimental_local_results(one))
                return super(MultiWorkerMirroredStrategy, self).reduce(reduce_op, one, None if scalar else axis)

            return tf.nest.map_structure(reduce_one, value)

    return MultiWorkerMirroredStrategy()


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


# ----------------------------------------------------------------------------------------------
# The training entry point.


def train(working_dir: str | os.PathLike, config: TrainConfig, run_root: str | os.PathLike | None = None, *, own_copy: bool = False) -> Path:
    """Train one mode on the feature cache of `working_dir`; returns the run directory.

    The run goes to `<run_root>/checkpoints-<mode>/` (`run_root` defaults to `working_dir`).
    Resumes an interrupted run of the same configuration; a finished run is left as it is.
    In a multi-worker cluster only the chief writes there; the other workers train on a private
    copy (`train_beside_chief`; `own_copy` says `run_root` is one).
    """
    config.validate()
    if config.distribution == "multi_worker" and not own_copy and not is_cluster_chief(os.environ.get("TF_CONFIG")):
        return train_beside_chief(working_dir, config, run_dir(run_root or working_dir, config.mode))
    policy = training_policy(config.precision)  # Before any work: an impossible explicit request refuses here.
    logger.info("precision %s: %s (%s)", config.precision, policy, policy_reason(policy))
    data = load_training_data(working_dir, config.held_out_speakers, validation_split=config.validation_split)
    directory = run_dir(run_root or working_dir, config.mode)
    directory.mkdir(parents=True, exist_ok=True)
    task_values = label_task_values(config, data, working_dir)
    label_tasks = [task for task in config.label_tasks if task.output in task_values]
    state, saved_config = prepare_run_directory(directory, config, data, label_tasks, policy)
    if state and state["finished"]:
        logger.info("%s: this run has finished already; nothing to do", directory)
        return directory
    if state:
        data = recorded_split(directory, data)
    first_epoch = state["epoch"] if state else 0
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        with distribution_scope(config.distribution):
            if config.distribution == "multi_worker":
                check_workers_agree(data)
            keras.utils.set_random_seed(config.seed)  # Same seed, same initial weights.
            model = build_model(config, len(data.speakers), label_tasks)
            if state:
                model.optimizer.build(model.trainable_variables)  # So its saved state has somewhere to go.
                model.load_weights(latest_checkpoint(directory, state))
                logger.info("resuming %s after epoch %d (optimizer step %d)", directory, first_epoch, int(keras.ops.convert_to_numpy(model.optimizer.iterations)))
                if saved_config.get("learning_rate") != config.learning_rate:  # E.g. a lower rate after a NaN loss.
                    model.optimizer.learning_rate.assign(config.optimizer_learning_rate)
            elif config.mode == "triplet":
                load_initial_checkpoint(model, config, working_dir)
            train_batches, validation_batches = make_batches(config, data, model, first_epoch, working_dir, task_values)
            if validation_batches is not None and config.fixed_validation:
                validation_batches = FixedBatches.draw(validation_batches, len(validation_batches))
            monitor, monitor_mode = monitored_metric(config, validation_batches is not None)
            checkpoint = RunCheckpoint(directory, monitor, monitor_mode, state["best"] if state else None, config.snapshot_every)
            model.fit(
                train_batches,
                validation_data=validation_batches,
                epochs=config.epochs,
                initial_epoch=first_epoch,
                callbacks=make_callbacks(config, directory, monitor, monitor_mode, checkpoint, state),
                verbose=2,
            )
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    if checkpoint.stopped_on_nan_epoch is not None:
        last_good = read_state(directory)
        kept = f"the last good checkpoint, after epoch {last_good['epoch']}, is {latest_checkpoint(directory, last_good)}" if last_good else "no epoch had finished, so nothing was saved"
        raise TrainingError(
            f"the loss became NaN or infinite in epoch {checkpoint.stopped_on_nan_epoch}; training stopped and {kept}. "
            "Run again with a lower --learning_rate to continue from there."
        )
    last_state = read_state(directory) or {"epoch": first_epoch, "monitor": monitor, "best": None}
    write_state(directory, {**last_state, "finished": True})
    return directory


def is_cluster_chief(tf_config: str | None) -> bool:
    """Whether this process is the chief of the cluster TF_CONFIG describes, the worker that writes the
    run directory: the `chief` task, else worker 0 (tf.distribute's rule); without TF_CONFIG, the one worker."""
    try:
        cluster = json.loads(tf_config) if tf_config else {}
    except ValueError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error})") from None
    task = cluster.get("task") or {}
    task_type, index = task.get("type"), int(task.get("index", 0))
    if task_type in (None, "chief"):
        return True
    return task_type == "worker" and index == 0 and "chief" not in (cluster.get("cluster") or {})


def cluster_size(tf_config: str | None) -> int:
    """How many tasks (chief and workers) the cluster TF_CONFIG describes has; 1 without one."""
    cluster = (json.loads(tf_config) if tf_config else {}).get("cluster") or {}
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))


def training_data_digest(data: TrainingData) -> str:
    """SHA-256 of the training speakers in class order and of each one's train, test and validation cache
    entries: what speakers.json and split.json record, and what every worker of a cluster must share."""
    split = {s: [[p.name for p in part.get(s, [])] for part in (data.train, data.test, data.validation)] for s in data.speakers}
    return hashlib.sha256(json.dumps({"speakers": data.speakers, "split": split}, sort_keys=True).encode()).hexdigest()


DIGEST_PIECES = 6  # The first 96 bits of the digest, as 16-bit pieces: exact in float32, which every collective carries.


def check_workers_agree(data: TrainingData) -> None:
    """Stop unless every worker of the cluster trains on the same speakers and split.

    Each worker draws the whole global batch from its own cache and keeps its share, so one file
    that decoded on one machine and not on another shifts class indices there, and the workers
    silently train on different batches. Inside the cluster's strategy, every worker hands in its
    `training_data_digest` with its numbers of speakers and training utterances, learns all of
    them (one all-reduce, before the model is built) and raises the same TrainingError when they
    differ, naming each worker's figures.
    """
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    digest = training_data_digest(data)
    mine = [int(digest[4 * i : 4 * i + 4], 16) for i in range(DIGEST_PIECES)] + [len(data.speakers), sum(map(len, data.train.values()))]
    replicas = strategy.num_replicas_in_sync

    def own_row(context) -> tf.Tensor:  # This replica's figures in its own row, zeros elsewhere: their sum holds every replica's.
        return tf.tensor_scatter_nd_update(tf.zeros((replicas, len(mine))), [[context.replica_id_in_sync_group]], tf.constant([mine], tf.float32))

    # A sum, not `strategy.gather`: on two workers that one leaves an autograph file in $TMPDIR of a worker that is killed.
    values = strategy.experimental_distribute_values_from_function(own_row)
    rows = [tuple(int(v) for v in row) for row in strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None).numpy()]  # Worker by worker.
    size = cluster_size(os.environ.get("TF_CONFIG"))
    workers: dict[tuple, set[int]] = {}  # Figures -> the workers that have them.
    for replica, row in enumerate(rows):
        workers.setdefault(row, set()).add(replica * size // len(rows))
    if len(workers) == 1:
        logger.info("the %d workers agree on the training data: %d speakers, %d training utterances (digest %s)",
                    size, mine[-2], mine[-1], digest[: 4 * DIGEST_PIECES])
        return
    described = "; ".join(f"worker{'s' * (len(ws) > 1)} {', '.join(map(str, sorted(ws)))}: {row[-2]} speakers, {row[-1]} training "
                          f"utterances (digest {''.join(f'{v:04x}' for v in row[:DIGEST_PIECES])})" for row, ws in workers.items())
    raise TrainingError(
        f"the workers of the cluster do not train on the same data ({described}). Each worker reads its speaker list and split from "
        "its own feature cache: build the same cache on every machine (compare their corpus.json; a file that failed to decode on one "
        "of them is listed in build-mfcc-cache's report), then run the same command on every worker again."
    )


def train_beside_chief(working_dir: str | os.PathLike, config: TrainConfig, directory: Path) -> Path:
    """Train as a worker of a cluster that is not its chief; returns the chief's run `directory`.

    Every worker runs every callback, saves included, as TensorFlow's multi-worker guide asks: a
    save may read sync-on-read variables (Keras's metrics have them), and reading one all-reduces
    it across workers, so all must save at the same moments; and all judge "best" and the
    learning rate from the same reduced logs.
    So this worker trains on a private copy of `directory` in the system's temporary folder
    ($TMPDIR), removed when it stops. The copy holds what a resume reads, so every worker resumes
    from the chief's last finished epoch; the run directory gets nothing from this worker, even
    when it is killed.
    """
    scratch = Path(tempfile.mkdtemp(prefix="hive-mtl-worker-"))
    try:
        copy_for_resume(directory, run_dir(scratch, config.mode))
        logger.info("not the cluster's chief: writing into %s (removed at the end); the chief writes %s", scratch, directory)
        train(working_dir, config, run_root=scratch, own_copy=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return directory


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
        changed = sorted(k for k in current if saved.get(k) != current[k] and k not in RESUMABLE_CHANGES)
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
            "held_out_speakers": sorted(data.held_out),
            "speeds": list(config.augment.speeds) if config.mode != "triplet" else [1.0],  # Class s + k * len(speakers) is speaker s at speeds[k].
        },
    )
    write_json_atomically(directory / SPLIT_FILE, {
        s: {"train": [p.name for p in data.train[s]], "test": [p.name for p in data.test[s]], "validation": [p.name for p in data.validation.get(s, [])]}
        for s in data.speakers
    })
    return None, {}


def upgraded_config(saved: dict) -> dict:
    """A config.json of an earlier version in today's keys: `mixed_precision` true/false became
    `precision` 'mixed'/'float32' (what it meant then), so such runs still resume."""
    if "mixed_precision" in saved and "precision" not in saved:
        saved = {**saved, "precision": "mixed" if saved["mixed_precision"] else "float32"}
        del saved["mixed_precision"]
    return saved


def label_task_values(config: TrainConfig, data: TrainingData, working_dir: str | os.PathLike) -> dict[str, tuple[np.ndarray | dict[str, float], bool]]:
    """For each label task its training data has labels for: output name -> (labels, whether binary). A per-speaker
    task's labels are each training speaker's class (an array in `data.speakers` order, NaN where unknown); a per-clip
    task's, each labelled cache entry's class ({entry name: class}). A task without any label gets no head."""
    tasks = config.label_tasks
    files = speaker_source_files(working_dir) if any(isinstance(task.labels, dict) for task in tasks) else {s: "" for s in data.speakers}
    clips = training_clips(data, working_dir) if any(task.per_clip for task in tasks) else {}
    values = {}
    for task in tasks:
        what, labels = ("clips", task.clip_labels(clips)) if task.per_clip else ("speakers", task.speaker_labels({s: files[s] for s in data.speakers}, data.genders))
        if not labels:
            logger.warning("no training %s has a %s label: Hive-MTL trains without the %s head", what[:-1], task.name, task.name)
            continue
        logger.info("task %s: %d of %d training %s labelled (%s)", task.name, len(labels), len(clips) if task.per_clip else len(data.speakers), what,
                    ", ".join(f"{c}: {sum(v == c for v in labels.values())}" for c in task.classes))
        if task.per_clip:
            values[task.output] = (dict(zip(labels, task.values(list(labels), labels).tolist())), task.loss == "binary")
        else:
            values[task.output] = (task.values(data.speakers, labels), task.loss == "binary")
    return values


def training_clips(data: TrainingData, working_dir: str | os.PathLike) -> dict[str, Path]:
    """Cache entry name -> audio file of every utterance of the training speakers (train, validation and test parts)."""
    sources = entry_sources(working_dir)
    names = [entry.name for part in (data.train, data.validation, data.test) for s in data.speakers for entry in part.get(s, [])]
    return {name: sources[name] for name in names if name in sources}


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


RESUMABLE_CHANGES = {"epochs", "input_workers", "learning_rate", "precision"}  # May differ when a run is resumed.


def load_initial_checkpoint(model: keras.Model, config: TrainConfig, working_dir: str | os.PathLike) -> None:
    """Triplet training starts from the softmax run's best checkpoint (by layer name) when there is one."""
    path = Path(config.initial_checkpoint) if config.initial_checkpoint else run_dir(working_dir, "softmax") / BEST_CHECKPOINT
    if not path.is_file():
        if config.initial_checkpoint:
            raise FileNotFoundError(f"{path}: initial checkpoint not found")
        logger.warning("no softmax checkpoint at %s: triplet training starts from random weights", path)
        return
    skipped = load_weights_by_name(model, path)
    logger.info("triplet training starts from %s%s", path, f" (not in it: {', '.join(skipped)})" if skipped else "")


def loss_replicas() -> int:
    """How many replicas compute the loss each on its own contiguous slice of a batch.

    tf.distribute (mirrored, multi_worker) runs the loss once per replica on its slice of the
    global batch. JAX's keras.distribution shards a batch over devices but computes the loss on
    the global batch, as one device does: there it is 1. Call it inside `distribution_scope`.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.distribute.get_strategy().num_replicas_in_sync if tf.distribute.has_strategy() else 1
    if backend == "jax" and keras.distribution.distribution() is not None:
        import jax

        if jax.process_count() > 1:  # Each process feeds its own batch; their concatenation has no global [a; p; n] thirds.
            raise ValueError("stacked triplet batches cannot be spread over several JAX processes; train triplets on one machine")
    return 1


def make_batches(config: TrainConfig, data: TrainingData, model: keras.Model, first_epoch: int, working_dir: str | os.PathLike = ".",
                 task_values: dict[str, tuple[np.ndarray, bool]] | None = None):
    """Training and validation batch streams for the mode (validation None when the data allows none).

    Validation reads the run's validation utterances when it has some (`validation_split`), else
    the test utterances of the training speakers (triplet mode: the held-out speakers first).
    Training that augments, or reads another trim, cuts its windows from the cached audio.
    """
    loader = {"workers": config.input_workers, "use_multiprocessing": False, "max_queue_size": 2 * config.input_workers}
    num_utterances = sum(len(entries) for entries in data.train.values())
    steps = config.steps_per_epoch or (TRIPLET_STEPS_PER_EPOCH if config.mode == "triplet" else max(1, num_utterances // config.batch_size))
    seed = config.seed
    validation_pool = {s: e for s, e in (data.validation if config.validation_split else data.test).items() if e}
    if config.mode == "triplet" and not config.validation_split:
        validation_pool = {s: e for s, e in data.held_out.items() if e} or validation_pool
    if config.uses_triplets:
        check_triplet_training(data.train)
    if config.uses_waveforms:
        waveforms = waveform_cache_dir(working_dir, config.trim)

        def audio(split: dict[str, list[Path]]) -> dict[str, list[Path]]:
            return {s: [waveforms / entry.name for entry in entries] for s, entries in split.items()}

        if config.mode == "softmax":
            batches = functools.partial(AugmentedBatches, balanced=config.balanced_sampling, pad=config.pad, **loader)
            has_validation = bool(validation_pool)
        else:
            replicas = loss_replicas()  # Triplet batches are stacked per replica, so each replica's loss pairs its own rows.
            outputs = model_outputs(model)
            batches = functools.partial(AugmentedTripletBatches, balanced=config.balanced_sampling, pad=config.pad, outputs=outputs,
                                        task_values=task_values if outputs else None, replicas=replicas, **loader)
            has_validation = len(validation_pool) >= 2
        speakers = data.speakers if config.mode != "triplet" else list(data.speakers) + [s for s in validation_pool if s not in data.train]
        train_batches = batches(audio(data.train), speakers, config.batch_size, steps, config.augment, seed, first_epoch)
        validation = batches(audio(validation_pool), speakers, config.batch_size, config.validation_steps, NO_AUGMENTATION, seed + 1, 0) if has_validation else None
        return train_batches, validation if config.validation_steps else None
    if config.mode == "softmax":
        train_batches = SpeakerClassBatches(data.train, data.speakers, config.batch_size, steps, seed, first_epoch, config.balanced_sampling, config.pad, **loader)
        validation = SpeakerClassBatches(validation_pool, data.speakers, config.batch_size, config.validation_steps, seed + 1, 0, config.balanced_sampling, config.pad, **loader) if validation_pool else None
        return train_batches, validation if config.validation_steps else None
    # Triplet batches are stacked per replica, so each replica's loss pairs its own rows; every triplet batch has the run's sampling options.
    triplets = {"replicas": loss_replicas(), "balanced": config.balanced_sampling, "pad": config.pad}
    pool = triplet_pool(validation_pool) or (triplet_pool(data.test) if config.mode == "triplet" and not config.validation_split else None)
    if config.mode == "triplet":
        if config.hard_negative:
            from inference import Embedder  # The compiled inference path; it reads the weights as they train.

            embed = Embedder(embedding_model(model)).embed_windows
            train_batches = HardNegativeTripletBatches(data.train, config.batch_size, steps, embed, seed, first_epoch, workers=1, use_multiprocessing=False, **triplets)
        else:
            train_batches = TripletBatches(data.train, config.batch_size, steps, seed, first_epoch, **triplets, **loader)
        validation = TripletBatches(pool, config.batch_size, config.validation_steps, seed + 1, **triplets, **loader) if pool and config.validation_steps else None
        return train_batches, validation
    outputs = {"outputs": model_outputs(model), "speakers": data.speakers, "task_values": task_values}
    train_batches = TripletBatches(data.train, config.batch_size, steps, seed, first_epoch, **outputs, **triplets, **loader)
    validation = TripletBatches(pool, config.batch_size, config.validation_steps, seed + 1, **outputs, **triplets, **loader) if pool and config.validation_steps else None
    return train_batches, validation


def triplet_pool(utterances: dict[str, list[Path]]) -> dict[str, list[Path]] | None:
    """The speakers with utterances, when they can form triplets (2 speakers, one with 2 utterances)."""
    pool = {speaker: entries for speaker, entries in utterances.items() if entries}
    return pool if len(pool) >= 2 and triplet_speakers(pool) else None


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


def train_reference_recipe(working_dir: str | os.PathLike, config: TrainConfig) -> list[Path]:
    """Softmax pre-training, then triplet training from its best checkpoint: the reference recipe."""
    softmax = train(working_dir, dataclasses.replace(config, mode="softmax", hard_negative=False))  # Mining is the triplet phase's.
    triplet = train(working_dir, dataclasses.replace(config, mode="triplet", initial_checkpoint=str(softmax / BEST_CHECKPOINT)))
    return [softmax, triplet]
