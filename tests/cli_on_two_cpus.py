"""Run `cli.py` with this process's CPU split into two logical devices, for test_cluster.py and test_train.py:

    python tests/cli_on_two_cpus.py train --working_dir W ... --distribution mirrored

MirroredStrategy then trains two replicas in one process: one worker with the global batch of a
cluster of two one-CPU workers, cut into the same two halves. Devices must be set up before
TensorFlow starts, hence a process of its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tensorflow as tf

tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli import cli  # noqa: E402

if __name__ == "__main__":
    cli()
