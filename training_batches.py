"""What a training run reads: the training and validation batch streams of each mode, and the
labels of Hive-MTL's tasks."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import keras
import numpy as np

from feature_cache import waveform_cache_dir
from augment import NO_AUGMENTATION
from batcher import (
    AugmentedBatches,
    AugmentedTripletBatches,
    HardNegativeTripletBatches,
    SpeakerClassBatches,
    TrainingData,
    TripletBatches,
    check_triplet_training,
    triplet_speakers,
)
from constants import TRIPLET_STEPS_PER_EPOCH
from conv_models import embedding_model
from distribution import loss_replicas
from tasks import entry_sources, speaker_source_files
from train_config import TrainConfig
from training_models import model_outputs

logger = logging.getLogger(__name__)


def make_batches(config: TrainConfig, data: TrainingData, model: keras.Model, first_epoch: int, working_dir: str | os.PathLike = ".",
                 task_values: dict[str, tuple[np.ndarray, bool]] | None = None):
    """Training and validation batch streams for the mode (validation None when the data allows none).

    Validation reads the run's validation utterances when it has some (`validation_split`), else
    the test utterances of the training speakers (triplet mode: the held-out speakers first).
    Training that augments, or reads another trim, cuts its windows from the cached audio. Training
    windows have `window_seconds`' lengths when it is set, validation's the fixed NUM_FRAMES.
    """
    loader = {"workers": config.input_workers, "use_multiprocessing": config.input_processes, "max_queue_size": 2 * config.input_workers}
    num_utterances = sum(len(entries) for entries in data.train.values())
    steps = config.steps_per_epoch or (TRIPLET_STEPS_PER_EPOCH if config.mode == "triplet" else max(1, num_utterances // config.batch_size))
    if config.window_frames is not None and steps < 2:  # Keras would type the frame axis from one batch's length.
        raise ValueError(f"window_seconds needs at least 2 batches per epoch (Keras reads the window length of the first two); this run has {steps}")
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
                                        task_values=task_values if outputs else None, replicas=replicas, triplets=config.uses_triplets, **loader)
            has_validation = len(validation_pool) >= 2
        speakers = data.speakers if config.mode != "triplet" else list(data.speakers) + [s for s in validation_pool if s not in data.train]
        train_batches = batches(audio(data.train), speakers, config.batch_size, steps, config.augment, seed, first_epoch, window_frames=config.window_frames)
        validation = batches(audio(validation_pool), speakers, config.batch_size, config.validation_steps, NO_AUGMENTATION, seed + 1, 0) if has_validation else None
        return train_batches, validation if config.validation_steps else None
    if config.mode == "softmax":
        train_batches = SpeakerClassBatches(data.train, data.speakers, config.batch_size, steps, seed, first_epoch, config.balanced_sampling, config.pad,
                                            window_frames=config.window_frames, **loader)
        validation = SpeakerClassBatches(validation_pool, data.speakers, config.batch_size, config.validation_steps, seed + 1, 0, config.balanced_sampling, config.pad, **loader) if validation_pool else None
        return train_batches, validation if config.validation_steps else None
    # Triplet batches are stacked per replica, so each replica's loss pairs its own rows; every triplet batch has the run's sampling options.
    triplets = {"replicas": loss_replicas(), "balanced": config.balanced_sampling, "pad": config.pad, "triplets": config.uses_triplets}
    pool = triplet_pool(validation_pool) or (triplet_pool(data.test) if config.mode == "triplet" and not config.validation_split else None)
    if config.mode == "triplet":
        if config.hard_negative:
            from inference import Embedder  # The compiled inference path; it reads the weights as they train.

            embed = Embedder(embedding_model(model)).embed_windows
            train_batches = HardNegativeTripletBatches(data.train, config.batch_size, steps, embed, seed, first_epoch, workers=1, use_multiprocessing=False, **triplets)
        else:
            train_batches = TripletBatches(data.train, config.batch_size, steps, seed, first_epoch, window_frames=config.window_frames, **triplets, **loader)
        validation = TripletBatches(pool, config.batch_size, config.validation_steps, seed + 1, **triplets, **loader) if pool and config.validation_steps else None
        return train_batches, validation
    outputs = {"outputs": model_outputs(model), "speakers": data.speakers, "task_values": task_values}
    train_batches = TripletBatches(data.train, config.batch_size, steps, seed, first_epoch, window_frames=config.window_frames, **outputs, **triplets, **loader)
    validation = TripletBatches(pool, config.batch_size, config.validation_steps, seed + 1, **outputs, **triplets, **loader) if pool and config.validation_steps else None
    return train_batches, validation


def triplet_pool(utterances: dict[str, list[Path]]) -> dict[str, list[Path]] | None:
    """The speakers with utterances, when they can form triplets (2 speakers, one with 2 utterances)."""
    pool = {speaker: entries for speaker, entries in utterances.items() if entries}
    return pool if len(pool) >= 2 and triplet_speakers(pool) else None


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
