"""Spreading training over devices and machines: the distribution scopes of each backend, the
replicas a loss is computed on, and the checks that the workers of a cluster train on the same data."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os

import keras

from batcher import TrainingData
from train_config import TrainingError

logger = logging.getLogger(__name__)


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
