"""The model each training mode builds, compiled with its optimizer and losses, and the triplet
phase's starting weights."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import keras

from conv_models import EMBEDDING_LAYER_NAME, SPEAKER_OUTPUT, DeepSpeakerModel, build_mtl_model, load_weights_by_name
from margin_softmax import AdditiveAngularMarginLoss
from run_directory import BEST_CHECKPOINT, run_dir
from tasks import LabelTask
from train_config import TrainConfig
from triplet_loss import deep_speaker_loss

logger = logging.getLogger(__name__)


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
