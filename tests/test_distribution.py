"""Training on two devices gives the loss and gradients of one device, for the triplet and Hive-MTL models.

tf.distribute hands each replica a contiguous slice of a batch, and the triplet loss splits what
it sees in thirds: so under MirroredStrategy `make_batches` stacks [anchors; positives; negatives]
per replica. keras.distribution on JAX computes the loss on the global batch, so there the one
stacked batch stays. Each backend runs in a child process (tests/distributed_step.py): its two
devices must be set up before it starts. Batch normalisation is frozen there, since in training
mode it normalises with each replica's own batch statistics (no sync BN), by design.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import audio

TESTS = Path(__file__).resolve().parent
TRAIN_CLEAN = TESTS.parent / "samples" / "LibriSpeech" / "train-clean-100"
TOLERANCE = 1e-5
MODES = ("triplet", "mtl")


@pytest.fixture(scope="module")
def one_and_two_devices(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Both backends' child runs on a cache of 3 speakers x 8 utterances, side by side: each mostly imports and traces."""
    working_dir = tmp_path_factory.mktemp("distribution_cache")
    audio.build_feature_cache(TRAIN_CLEAN, working_dir, workers=1, progress=False)
    environments = {"tensorflow": {"KERAS_BACKEND": "tensorflow"}}
    if importlib.util.find_spec("jax") is not None:
        environments["jax"] = {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    children = {
        backend: subprocess.Popen([sys.executable, str(TESTS / "distributed_step.py"), str(working_dir)], env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **variables},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for backend, variables in environments.items()
    }
    finished = {}
    for backend, child in children.items():
        stdout, stderr = child.communicate(timeout=600)
        finished[backend] = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
    return finished


def results(runs: dict[str, subprocess.CompletedProcess], backend: str, mode: str) -> dict:
    run = runs[backend]
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])[mode]


def assert_two_devices_match_one(result: dict) -> None:
    assert abs(result["loss_two"] - result["loss_one"]) <= TOLERANCE, result
    assert result["gradient_size"] > 1e-3, "the gradients compared must not be all but zero"
    assert result["gradient_difference"] <= TOLERANCE, result


@pytest.mark.parametrize("mode", MODES)
def test_mirrored_strategy_on_two_replicas_matches_one_device(one_and_two_devices, mode):
    result = results(one_and_two_devices, "tensorflow", mode)
    assert result["replicas"] == 2
    assert_two_devices_match_one(result)
    # One device's single stacked order pairs the wrong rows on each replica: another loss, silently.
    assert abs(result["loss_two_contiguous"] - result["loss_one"]) > 1e-3, result


@pytest.mark.parametrize("mode", MODES)
def test_jax_data_parallel_on_two_devices_matches_one_device(one_and_two_devices, jax_subprocess_env, mode):
    result = results(one_and_two_devices, "jax", mode)
    assert result["replicas"] == 1, "keras.distribution computes the loss on the global batch"
    assert_two_devices_match_one(result)
