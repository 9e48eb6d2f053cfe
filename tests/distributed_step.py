"""One training step of the triplet and Hive-MTL models on one device and on two, for test_distribution.py.

Devices must be set up before TensorFlow or JAX starts, so this runs in a child process:

    KERAS_BACKEND=tensorflow python tests/distributed_step.py <working_dir>    # MirroredStrategy, 2 logical CPUs
    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/distributed_step.py <working_dir>

It prints one JSON object: per model, the replica count `make_batches` used, the losses on one
and two devices, and how far one step's gradients on two devices are from those on one.
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
from train import TrainConfig, build_model, distribution_scope, loss_replicas, make_batches  # noqa: E402

CONFIGS = {
    "triplet": TrainConfig(mode="triplet", model_size="small", batch_size=12, steps_per_epoch=1, validation_steps=0, input_workers=1),
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
    """The mode's model as `build_model` compiles it, with batch normalisation frozen.

    Frozen, it normalises with its moving statistics; in training mode it would use each
    replica's own batch statistics, which differ from the global batch's by design.
    """
    keras.utils.set_random_seed(config.seed)
    model = build_model(config, len(data.speakers), config.label_tasks)
    if weights is not None:
        model.set_weights(weights)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return model


def first_batch(config: TrainConfig, data: TrainingData, model: keras.Model) -> FixedBatches:
    """The first training batch `make_batches` gives, kept: every fit and evaluate then sees the same rows."""
    task_values = {"gender_pred": (data.gender_labels(data.speakers), True)} if config.mode == "mtl" else None
    return FixedBatches.draw(make_batches(config, data, model, 0, task_values=task_values)[0], 1)


def step(model: keras.Model, batches) -> tuple[float, list[np.ndarray]]:
    """Loss of the model's first training step and the gradient it applied.

    SGD (triplet mode): the weights' change over the learning rate. Adam (Hive-MTL): its first
    moment (`_momentums`) after one step, (1 - beta_1) x gradient; its step itself is about sign(gradient),
    which would turn round-off in near-zero gradients into differences of a whole step.
    """
    optimizer = model.optimizer
    before = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    loss = float(model.fit(batches, epochs=1, verbose=0, shuffle=False).history["loss"][0])
    if isinstance(optimizer, keras.optimizers.Adam):
        return loss, [keras.ops.convert_to_numpy(m) / (1 - optimizer.beta_1) for m in optimizer._momentums]
    rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    return loss, [(b - keras.ops.convert_to_numpy(v)) / rate for b, v in zip(before, model.trainable_variables)]


def compare(config: TrainConfig, data: TrainingData) -> dict:
    """One step on one device and on two from the same weights and triplets; the contiguous order's loss on two.

    Each model trains before it evaluates, as in `train`: on these logical CPU devices (TF 2.21,
    Keras 3.15), a train function traced after a test function got another gender loss on one
    replica.
    """
    one_device = model_for_one_step(config, data, None)
    initial = one_device.get_weights()
    one_device_batches = first_batch(config, data, one_device)
    loss_one, gradients_one = step(one_device, one_device_batches)
    with two_devices():
        two = model_for_one_step(config, data, initial)
        batches = first_batch(config, data, two)
        replicas = loss_replicas()
        loss_two, gradients_two = step(two, batches)
        loss_two_contiguous = loss_two  # One replica: the batches are one device's.
        if replicas > 1:  # One device's single stacked order, on two replicas.
            two.set_weights(initial)
            loss_two_contiguous = float(two.evaluate(one_device_batches, verbose=0, return_dict=True)["loss"])
    return {
        "replicas": replicas,
        "loss_one": loss_one,
        "loss_two": loss_two,
        "loss_two_contiguous": loss_two_contiguous,
        "gradient_difference": max(float(np.abs(g1 - g2).max()) for g1, g2 in zip(gradients_one, gradients_two)),
        "gradient_size": max(float(np.abs(g).max()) for g in gradients_one),
    }


if __name__ == "__main__":
    training_data = load_training_data(sys.argv[1])
    print(json.dumps({mode: compare(config, training_data) for mode, config in CONFIGS.items()}))
