"""Training on two devices gives what one device gives, for the triplet and Hive-MTL models, batch norms training.

tf.distribute hands each replica a contiguous slice of a batch, and the triplet loss splits what
it sees in thirds: so under MirroredStrategy `make_batches` stacks [anchors; positives; negatives]
per replica. keras.distribution on JAX computes the loss on the global batch, so there the one
stacked batch stays. Each backend runs in a child process (tests/distributed_step.py): its two
devices must be set up before it starts.

The batch norms train, as in `train`, and what "the same" means for their statistics is each
engine's own, checked here:
- TensorFlow (`mirrored`; `multi_worker` cuts batches the same way, tests/test_cluster.py): each
  replica normalises with the batch statistics of its own slice (no sync BN, as tf.distribute and
  PyTorch's DDP do by default), and the moving mean and variance take the mean of the replicas'
  updates. Two replicas must give one device stepping on each replica's slice from the same
  weights, averaged: the loss, the gradient (tf.distribute sums the replicas' gradients of their
  loss over the replica count) and the moving statistics. Each replica runs the operations of that
  one-device step, so they agree to float32 round-off of a sum of two.
- JAX (`data_parallel`): the batch is sharded but the program is one device's on the global batch,
  so the batch statistics are the global batch's: two devices must give one device stepping on the
  whole batch. The loss and moving statistics agree to round-off; the gradient sums its terms in
  another order, and through training batch norms on 12 windows float32 gradients are accurate to
  about 1 % (measured: one device's float32 gradient is 0.6 % from float64's, relative norm).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import feature_cache

TESTS = Path(__file__).resolve().parent
TRAIN_CLEAN = TESTS.parent / "samples" / "LibriSpeech" / "train-clean-100"
TOLERANCE = 1e-5
JAX_GRADIENT_TOLERANCE = 0.03  # Relative norm of the difference; see the module docstring.
MODES = ("triplet", "mtl")
BATCH_NORMS = 28  # Of the small ResCNN: every one trains.


@pytest.fixture(scope="module")
def one_and_two_devices(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Both backends' child runs on a cache of 3 speakers x 8 utterances, one after the other (side by side they
    would take the second worker's core too): each mostly imports and traces."""
    working_dir = tmp_path_factory.mktemp("distribution_cache")
    feature_cache.build_feature_cache(TRAIN_CLEAN, working_dir, workers=1, progress=False)
    environments = {"tensorflow": {"KERAS_BACKEND": "tensorflow"}}
    if importlib.util.find_spec("jax") is not None:  # Two host devices, then the thread settings of tests/conftest.py (its
        # documented single-thread setting ends in a bare token after which XLA reads no more flags).
        xla_flags = " ".join(filter(None, ["--xla_force_host_platform_device_count=2", os.environ.get("XLA_FLAGS", "")]))
        environments["jax"] = {"KERAS_BACKEND": "jax", "XLA_FLAGS": xla_flags}
    finished = {}
    for backend, variables in environments.items():
        finished[backend] = subprocess.run([sys.executable, str(TESTS / "distributed_step.py"), str(working_dir)], capture_output=True, text=True,
                                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **variables}, timeout=900)
    return finished


def results(runs: dict[str, subprocess.CompletedProcess], backend: str, mode: str) -> dict:
    run = runs[backend]
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])[mode]


def assert_batch_norms_trained(result: dict) -> None:
    assert result["training_batch_norms"] == BATCH_NORMS, "every batch norm trains in the step compared"
    assert result["statistics_change"] > 1e-3, "one step must move the moving statistics for their comparison to mean anything"
    assert result["gradient_size"] > 1e-3, "the gradients compared must not be all but zero"


@pytest.mark.parametrize("mode", MODES)
def test_mirrored_strategy_on_two_replicas_matches_one_device_stepping_on_each_replicas_slice(one_and_two_devices, mode):
    result = results(one_and_two_devices, "tensorflow", mode)
    assert result["replicas"] == 2
    assert_batch_norms_trained(result)
    assert abs(result["loss_two"] - result["loss_reference"]) <= TOLERANCE, result
    assert result["gradient_difference"] <= TOLERANCE, result
    assert result["statistics_difference"] <= TOLERANCE, result  # The mean of the replicas' moving statistics, on every replica.
    # One device's single stacked order pairs the wrong rows on each replica: another loss, silently.
    # How much another depends on the drawn batch (2.7e-4 on today's sampler's); ten times the
    # tolerance of "the same" above tells the two apart.
    assert abs(result["loss_two_contiguous"] - result["loss_two_evaluated"]) > 10 * TOLERANCE, result


@pytest.mark.parametrize("mode", MODES)
def test_jax_data_parallel_on_two_devices_matches_one_device_stepping_on_the_global_batch(one_and_two_devices, jax_subprocess_env, mode):
    result = results(one_and_two_devices, "jax", mode)
    assert result["replicas"] == 1, "keras.distribution computes the loss on the global batch"
    assert_batch_norms_trained(result)
    assert abs(result["loss_two"] - result["loss_reference"]) <= TOLERANCE, result
    assert result["statistics_difference"] <= TOLERANCE, result
    assert result["gradient_relative_difference"] <= JAX_GRADIENT_TOLERANCE, result
