"""One training step of the triplet and Hive-MTL models on one device and on two, for test_distribution.py.

Devices must be set up before TensorFlow or JAX starts, so this runs in a child process:

    KERAS_BACKEND=tensorflow python tests/distributed_step.py <working_dir>    # MirroredStrategy, 2 logical CPUs
    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/distributed_step.py <working_dir>

Batch normalisation trains, as in `train`. What two devices must reproduce depends on the backend
(see test_distribution.py): under tf.distribute each replica normalises with its own slice's batch
statistics, so the reference is one device stepping on each replica's slice from the same weights,
averaged (losses, gradients, moving statistics); under JAX's DataParallel the batch statistics are
the global batch's, so the reference is one device stepping on the whole batch.

It prints one JSON object: per model, the replica count `make_batches` used, the losses of the
reference and of two devices, and how far the gradients and batch-norm moving statistics after one
step on two devices are from the reference's.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BACKEND = os.environ["KERAS_BACKEND"]
if BACKEND == "tensorflow":
    import tensorflow as tf

    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from batcher import FixedBatches, TrainingData, load_training_data  # noqa: E402
from distribution import distribution_scope, loss_replicas  # noqa: E402
from train_config import TrainConfig  # noqa: E402
from training_batches import make_batches  # noqa: E402
from training_models import build_model, build_training_state  # noqa: E402

# Triplet mode's SGD gradient is read as the weights' change over the learning rate: at 1.0 (one step,
# so the rate changes nothing else) float32 round-off of that change is not divided by the default 0.01.
CONFIGS = {
    "triplet": TrainConfig(mode="triplet", model_size="small", batch_size=12, steps_per_epoch=1, validation_steps=0, input_workers=1, learning_rate=1.0),
    "mtl": TrainConfig(mode="mtl", model_size="small", batch_size=12, steps_per_epoch=1, validation_steps=0, input_workers=1, triplet_loss_weight=0.5),
}


def two_devices() -> contextlib.AbstractContextManager:
    """MirroredStrategy over the two logical CPUs (its default takes only CPU:0), or the project's DataParallel scope."""
    if BACKEND == "tensorflow":
        return MIRRORED.scope()
    assert len(keras.distribution.list_devices()) == 2, keras.distribution.list_devices()
    return distribution_scope("data_parallel")


# One strategy for the whole process: on logical CPU devices (TF 2.21), a second MirroredStrategy's
# all-reduce failed with "Shape mismatch in the collective instance".
MIRRORED = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if BACKEND == "tensorflow" else None


def model_for_one_step(config: TrainConfig, data: TrainingData, weights: list[np.ndarray] | None) -> keras.Model:
    """The mode's model as `build_model` compiles it (batch normalisation trains), from `weights` when given."""
    keras.utils.set_random_seed(config.seed)
    model = build_model(config, len(data.speakers), config.label_tasks)
    if weights is not None:
        model.set_weights(weights)
    return model


def first_batch(config: TrainConfig, data: TrainingData, model: keras.Model) -> FixedBatches:
    """The first training batch `make_batches` gives, kept: every fit and evaluate then sees the same rows."""
    task_values = {"gender_pred": (data.gender_labels(data.speakers), True)} if config.mode == "mtl" else None
    return FixedBatches.draw(make_batches(config, data, model, 0, task_values=task_values)[0], 1)


def replica_slices(batches: FixedBatches, replicas: int) -> list[FixedBatches]:
    """What each replica of tf.distribute gets of the one batch: a contiguous slice of every array (windows, targets, weights)."""
    (batch,) = batches.batches
    rows = len(batch[0])
    return [FixedBatches([keras.tree.map_structure(lambda a, r=r: a[r * rows // replicas : (r + 1) * rows // replicas], batch)])
            for r in range(replicas)]


def moving_statistics(model: keras.Model) -> list[np.ndarray]:
    """Moving mean and variance of every batch norm."""
    return [keras.ops.convert_to_numpy(v) for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
            for v in (layer.moving_mean, layer.moving_variance)]


def step(model: keras.Model, batches) -> dict:
    """Loss of one training step, the gradient it applied, and the moving statistics after it.

    SGD (triplet mode): the weights' change over the learning rate. Adam (Hive-MTL): from its first
    moment (`_momentums`), which one step takes from m to beta_1 m + (1 - beta_1) x gradient; its step
    itself is about sign(gradient), which would turn round-off in near-zero gradients into differences
    of a whole step. So a model can take several steps, each from weights set again, and each reads
    its own gradient.
    """
    optimizer = model.optimizer
    before = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    adam = isinstance(optimizer, keras.optimizers.Adam)
    moments = [keras.ops.convert_to_numpy(m) for m in optimizer._momentums] if adam and optimizer.built else [np.zeros_like(b) for b in before]
    loss = float(model.fit(batches, epochs=1, verbose=0, shuffle=False).history["loss"][0])
    if adam:
        gradients = [(keras.ops.convert_to_numpy(m) - optimizer.beta_1 * m0) / (1 - optimizer.beta_1) for m, m0 in zip(optimizer._momentums, moments)]
    else:
        rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        gradients = [(b - keras.ops.convert_to_numpy(v)) / rate for b, v in zip(before, model.trainable_variables)]
    return {"loss": loss, "gradients": gradients, "statistics": moving_statistics(model)}


def steps_from(model: keras.Model, weights: list[np.ndarray], parts: list) -> list[dict]:
    """One step on each of `parts`, each from `weights` (one model: its training function is traced once, its
    optimizer slots and metrics built first as `train` builds them, or TensorFlow would trace it twice)."""
    build_training_state(model, parts[0].batches[0])
    steps = []
    for part in parts:
        model.set_weights(weights)
        steps.append(step(model, part))
    return steps


def mean_of_steps(steps: list[dict]) -> dict:
    """The step of several replicas from their own steps: mean loss, mean gradient (tf.distribute sums each
    replica's gradient of its loss over the replica count), mean moving statistics."""
    return {
        "loss": float(np.mean([s["loss"] for s in steps])),
        **{key: [np.mean(arrays, axis=0) for arrays in zip(*(s[key] for s in steps))] for key in ("gradients", "statistics")},
    }


def largest_difference(first: list[np.ndarray], second: list[np.ndarray]) -> float:
    return max(float(np.abs(a - b).max()) for a, b in zip(first, second, strict=True))


def relative_difference(first: list[np.ndarray], second: list[np.ndarray]) -> float:
    """Norm of the difference over the norm of `first`, all arrays taken as one vector."""
    return float(np.sqrt(sum(np.sum(np.square(a - b, dtype=np.float64)) for a, b in zip(first, second, strict=True)))
                 / np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in first)))


def one_device_reference(config: TrainConfig, data: TrainingData) -> dict:
    """Initial weights, the batch in one device's and in two replicas' row order, and the reference step on one device.

    Every one-device step runs before any step on two devices in this process: on these logical CPU
    devices (TF 2.21, Keras 3.15), a model built and fitted after a MirroredStrategy had fitted and
    evaluated another one now and then reported half a loss (and another gradient) on its first step.
    """
    one_device = model_for_one_step(config, data, None)
    prepared = {"initial": one_device.get_weights(), "initial_statistics": moving_statistics(one_device)}
    prepared["one_device_batches"] = first_batch(config, data, one_device)
    with two_devices():  # Only to read the replica count and draw the batch as `train` does under it.
        prepared["replicas"] = loss_replicas()
        prepared["batches"] = first_batch(config, data, one_device)
    if BACKEND == "tensorflow":  # Per-replica batch statistics: one device on each replica's slice.
        slices = replica_slices(prepared["batches"], MIRRORED.num_replicas_in_sync)
        prepared["reference"] = mean_of_steps(steps_from(model_for_one_step(config, data, None), prepared["initial"], slices))
    else:  # Global batch statistics: one device on the whole batch.
        prepared["reference"] = step(one_device, prepared["one_device_batches"])
    return prepared


def compare(config: TrainConfig, data: TrainingData, prepared: dict) -> dict:
    """One step on two devices from the weights and rows of `one_device_reference`, against its reference step.

    On two replicas, also the losses of the same weights evaluated (batch norm in inference mode) on
    the batch `make_batches` stacks per replica and on one device's single stacked order: only the
    pairing of rows differs. Each model trains before it evaluates, as in `train`: on these logical
    CPU devices, a train function traced after a test function got another gender loss on one replica.
    """
    initial, batches, reference = prepared["initial"], prepared["batches"], prepared["reference"]
    loss_two_evaluated = loss_two_contiguous = None
    with two_devices():
        two = model_for_one_step(config, data, initial)
        assert loss_replicas() == prepared["replicas"]
        two_devices_step = step(two, batches)
        if prepared["replicas"] > 1:
            two.set_weights(initial)
            loss_two_evaluated = float(two.evaluate(batches, verbose=0, return_dict=True)["loss"])
            loss_two_contiguous = float(two.evaluate(prepared["one_device_batches"], verbose=0, return_dict=True)["loss"])
    return {
        "replicas": prepared["replicas"],
        "loss_reference": reference["loss"],
        "loss_two": two_devices_step["loss"],
        "loss_two_evaluated": loss_two_evaluated,
        "loss_two_contiguous": loss_two_contiguous,
        "gradient_difference": largest_difference(reference["gradients"], two_devices_step["gradients"]),
        "gradient_relative_difference": relative_difference(reference["gradients"], two_devices_step["gradients"]),
        "gradient_size": max(float(np.abs(g).max()) for g in reference["gradients"]),
        "statistics_difference": largest_difference(reference["statistics"], two_devices_step["statistics"]),
        "statistics_change": largest_difference(reference["statistics"], prepared["initial_statistics"]),
        "training_batch_norms": sum(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable for layer in two.layers),
    }


if __name__ == "__main__":
    training_data = load_training_data(sys.argv[1])
    references = {mode: one_device_reference(config, training_data) for mode, config in CONFIGS.items()}
    print(json.dumps({mode: compare(config, training_data, references[mode]) for mode, config in CONFIGS.items()}))
