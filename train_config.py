"""The configuration of a training run (`TrainConfig`, saved as the run's `config.json`): its
checks, its derived settings, and the upgrade of config.json files written by earlier versions."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from augment import AugmentConfig, NO_AUGMENTATION
from batcher import check_triplet_batch_size
from constants import AAM_MARGIN, AAM_SCALE, BATCH_SIZE, MIN_WINDOW_FRAMES, PAD_MODES, TRIM_MODES, WINDOW_STEP_S
from conv_models import SPEAKER_HEADS
from precision import TRAINING_PRECISIONS
from tasks import LabelTask, gender_task, parse_tasks

MODES = ("softmax", "triplet", "mtl")
DISTRIBUTIONS = ("none", "mirrored", "multi_worker", "data_parallel")
DEFAULT_LEARNING_RATES = {"softmax": 1e-3, "triplet": 1e-2, "mtl": 1e-3}
RESUMABLE_CHANGES = {"epochs", "input_workers", "input_processes", "learning_rate", "precision"}  # May differ when a run is resumed.
RECIPE_FOLDERS = ("rir_dir", "noise_dir")  # Folder settings a recipe file names relative to itself.


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
    calibration_speakers: list[str] = field(default_factory=list)  # Kept out of training and of every figure: `calibrate-model` fits on them.
    hard_negative: bool = False  # Triplet mode: mine hard negatives instead of random triplets.
    initial_checkpoint: str | None = None  # Triplet mode default: the softmax run's best.h5.
    speaker_loss_weight: float = 1.0  # Hive-MTL per-head loss weights.
    gender_loss_weight: float = 1.0
    triplet_loss_weight: float = 0.0  # Hive-MTL: > 0 adds the triplet loss on the embedding.
    early_stopping_patience: int = 20
    reduce_lr_patience: int = 10
    min_learning_rate: float = 1e-4
    input_workers: int = 4  # Threads (or, with input_processes, processes) that read batches ahead of the model.
    input_processes: bool = False  # Read in worker processes: threads share one interpreter lock, which bounds a GPU's input.
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
    reverb_probability: float = 0.0  # Chance of reverberation per window: rooms of rir_dir, else simulated ones.
    rir_dir: str | None = None  # Room impulse responses (RIRS_NOISES' simulated_rirs/, or any folder of audio).
    noise_dir: str | None = None  # Noise of noise_probability (MUSAN's noise/ music/ speech/, or any folder of audio).
    window_seconds: list[float] | None = None  # [shortest, longest] training window, one length per batch; None: 160 frames.
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
        self.check_windows()
        for name in ("rir_dir", "noise_dir"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a folder path; got {getattr(self, name)!r}")
        self.augment.validate()

    def check_windows(self) -> None:
        """window_seconds: two numbers, shortest first, each window at least MIN_WINDOW_FRAMES frames."""
        if self.window_seconds is None:
            return
        seconds = self.window_seconds
        if not isinstance(seconds, (list, tuple)) or len(seconds) != 2 or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in seconds):
            raise ValueError(f"window_seconds must be [shortest, longest] in seconds, e.g. [0.5, 2]; got {seconds!r}")
        low, high = self.window_frames
        if low > high or low < MIN_WINDOW_FRAMES:
            raise ValueError(f"window_seconds must be shortest first, each at least {MIN_WINDOW_FRAMES * WINDOW_STEP_S:g} s; got {list(seconds)}")
        if self.hard_negative:
            raise ValueError("hard_negative mining keeps a history of fixed-length windows: it cannot be combined with window_seconds")
        if self.steps_per_epoch == 1:  # training_batches.make_batches checks the number it computes when none is given.
            raise ValueError("window_seconds needs at least 2 batches per epoch (Keras reads the window length of the first two); steps_per_epoch is 1")

    @property
    def augment(self) -> AugmentConfig:
        return AugmentConfig(self.speed_perturb, self.noise_probability, self.band_limit_probability, self.spec_mask_probability,
                             self.reverb_probability, self.rir_dir, self.noise_dir)

    @property
    def window_frames(self) -> tuple[int, int] | None:
        """window_seconds in frames (lowest, highest), or None for the fixed NUM_FRAMES."""
        if self.window_seconds is None:
            return None
        low, high = self.window_seconds
        return round(low / WINDOW_STEP_S), round(high / WINDOW_STEP_S)

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
        """Whether batches are stacked triplets: for a triplet loss (triplet mode, Hive-MTL with one). Hive-MTL without
        it draws each row on its own, as single-task training does, so a comparison of the two differs only in heads."""
        return self.mode == "triplet" or (self.mode == "mtl" and self.triplet_loss_weight > 0)

    @property
    def optimizer_learning_rate(self) -> float:
        return self.learning_rate or DEFAULT_LEARNING_RATES[self.mode]


def upgraded_config(saved: dict) -> dict:
    """A config.json of an earlier version in today's keys: `mixed_precision` true/false became
    `precision` 'mixed'/'float32' (what it meant then), so such runs still resume."""
    if "mixed_precision" in saved and "precision" not in saved:
        saved = {**saved, "precision": "mixed" if saved["mixed_precision"] else "float32"}
        del saved["mixed_precision"]
    return saved


def resolve_recipe_folders(settings: dict, base: str | os.PathLike) -> dict:
    """`settings` with each of RECIPE_FOLDERS resolved against `base`, the recipe file's folder, so a recipe
    means the same folders from any working directory (`train --recipe` and an experiment's `train` objects)."""
    return {**settings, **{key: str((Path(base) / settings[key]).resolve()) for key in RECIPE_FOLDERS if isinstance(settings.get(key), str)}}
