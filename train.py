"""Training: the reference recipe (softmax pre-training, then triplet loss) and Hive-MTL.

`train` orchestrates one run: its configuration (train_config.py), its run directory and the
callbacks that keep it resumable (run_directory.py, whose docstring lists the files), the model
(training_models.py), the batches (training_batches.py), and the devices and machines it is
spread over (distribution.py). Running the same command again resumes after the last finished
epoch, on the same utterances.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path

import keras

from batcher import FixedBatches, load_training_data
from distribution import check_workers_agree, distribution_scope, is_cluster_chief
from fileio import save_model_atomically
from precision import policy_reason, training_policy
from run_directory import (
    BEST_CHECKPOINT,
    FINAL_CHECKPOINT,
    RunCheckpoint,
    copy_for_resume,
    latest_checkpoint,
    make_callbacks,
    monitored_metric,
    prepare_run_directory,
    read_state,
    recorded_split,
    run_dir,
    write_state,
)
from train_config import TrainConfig, TrainingError
from training_batches import label_task_values, make_batches
from training_models import build_model, build_training_state, load_initial_checkpoint

logger = logging.getLogger(__name__)


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
    if config.precision == "auto":
        logger.info("precision auto: %s (%s)", policy, policy_reason(policy))
    else:
        logger.info("precision %s: %s (as asked)", config.precision, policy)
    data = load_training_data(working_dir, [*config.held_out_speakers, *config.calibration_speakers], validation_split=config.validation_split)
    directory = run_dir(run_root or working_dir, config.mode)
    directory.mkdir(parents=True, exist_ok=True)
    task_values = label_task_values(config, data, working_dir)
    label_tasks = [task for task in config.label_tasks if task.output in task_values]
    state, saved_config = prepare_run_directory(directory, config, data, label_tasks, policy)
    finished = bool(state and state["finished"])
    if finished and (directory / FINAL_CHECKPOINT).is_file():
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
                if finished:  # Finished before runs kept their final model: write it from the last epoch's weights.
                    save_model_atomically(model, directory / FINAL_CHECKPOINT)
                    logger.info("%s finished before runs kept %s: written from the weights of epoch %d", directory, FINAL_CHECKPOINT, first_epoch)
                    return directory
                logger.info("resuming %s after epoch %d (optimizer step %d)", directory, first_epoch, int(keras.ops.convert_to_numpy(model.optimizer.iterations)))
                if saved_config.get("learning_rate") != config.learning_rate:  # E.g. a lower rate after a NaN loss.
                    model.optimizer.learning_rate.assign(config.optimizer_learning_rate)
            elif config.mode == "triplet":
                load_initial_checkpoint(model, config, working_dir)
            train_batches, validation_batches = make_batches(config, data, model, first_epoch, working_dir, task_values)
            if validation_batches is not None and config.fixed_validation:
                validation_batches = FixedBatches.draw(validation_batches, len(validation_batches))
            if validation_batches is not None:
                build_training_state(model, validation_batches[0])
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
    save_model_atomically(model, directory / FINAL_CHECKPOINT)  # The model at the end of its budget, before the run is called finished.
    last_state = read_state(directory) or {"epoch": first_epoch, "monitor": monitor, "best": None}
    write_state(directory, {**last_state, "finished": True})
    return directory


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



def train_reference_recipe(working_dir: str | os.PathLike, config: TrainConfig) -> list[Path]:
    """Softmax pre-training, then triplet training from its best checkpoint: the reference recipe."""
    softmax = train(working_dir, dataclasses.replace(config, mode="softmax", hard_negative=False))  # Mining is the triplet phase's.
    triplet = train(working_dir, dataclasses.replace(config, mode="triplet", initial_checkpoint=str(softmax / BEST_CHECKPOINT)))
    return [softmax, triplet]
