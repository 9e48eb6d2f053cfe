"""A real cluster of two: `cli.py train --distribution multi_worker` in two worker processes on 127.0.0.1.

One scenario runs once for the module, and each test states one thing about it:

1. Two workers (TF_CONFIG with free ports) start a softmax run of 2 epochs on one shared feature
   cache. When the chief (worker 0) has checkpointed epoch 1, worker 1 is killed (SIGKILL). The
   chief stops with an error: TensorFlow's coordination service misses worker 1's heartbeats and
   aborts the collectives it waits in.
2. The same command on both workers again resumes from the chief's state.json and finishes.
3. Alongside, one process with two replicas (MirroredStrategy over two logical CPUs, see
   tests/cli_on_two_cpus.py) trains the same run, stopped after epoch 1 and resumed as well.

All draw the same global batches (a pure function of seed, epoch and index) and cut them into
the same per-replica halves (see `distribution.multi_worker_strategy`); batch normalisation is per
replica, hence two replicas in the one-worker run too. Both runs are resumed after epoch 1
because a resume draws new dropout masks: a resumed run differs from an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import feature_cache
from distribution import is_cluster_chief

REPO = Path(__file__).resolve().parents[1]
TRAIN_CLEAN = REPO / "samples" / "LibriSpeech" / "train-clean-100"
TRAIN_OPTIONS = ["--mode", "softmax", "--model_size", "small", "--steps_per_epoch", "2", "--batch_size", "6",
                 "--validation_steps", "1", "--input_workers", "1"]
RUN_DIR = "checkpoints-softmax"
FINISHED_RUN = {"best.h5", "config.json", "final.h5", "latest-0002.weights.h5", "metrics.csv", "speakers.json", "split.json", "state.json", "tensorboard"}
TOLERANCE = 1e-5  # Measured: equal to the last bit (same slices, same order of sums).
TIMEOUT = 300  # Seconds any one process may take.


@contextlib.contextmanager
def processes():
    """Start processes through the yielded function; on leaving, kill (and reap) those still running."""
    started: list[subprocess.Popen] = []

    def start(command: list[str], log: Path, **environment: str) -> subprocess.Popen:
        env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
        env.update(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **environment)  # CPUs only, everywhere.
        with open(log, "w") as output:
            started.append(subprocess.Popen([sys.executable, *command], cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
                                            start_new_session=True))
        return started[-1]

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now: bound at once (so they differ), then released for the workers."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for handle in sockets:
            handle.bind(("127.0.0.1", 0))
        return [handle.getsockname()[1] for handle in sockets]


def start_cluster(start, working_dir: Path, logs: Path, name: str, second_working_dir: Path | None = None) -> list[subprocess.Popen]:
    """Both workers of a 2-epoch run (worker 1 on `second_working_dir` if given, as on another machine);
    worker 1's $TMPDIR is `<logs>/<name>-tmp1`, for its private copy of the run."""
    ports = free_ports(2)
    workers = []
    for index, directory in enumerate((working_dir, second_working_dir or working_dir)):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]}, "task": {"type": "worker", "index": index}}
        tmp = logs / f"{name}-tmp{index}"
        tmp.mkdir()
        command = ["cli.py", "train", "--working_dir", str(directory), "--epochs", "2", "--distribution", "multi_worker", *TRAIN_OPTIONS]
        workers.append(start(command, logs / f"{name}-worker{index}.log", TF_CONFIG=json.dumps(tf_config), TMPDIR=str(tmp)))
    return workers


def finish(process: subprocess.Popen, log: Path) -> dict:
    """Wait for `process`; its exit status and output."""
    process.wait(timeout=TIMEOUT)
    return {"returncode": process.returncode, "pid": process.pid, "log": log.read_text()}


def wait_for_epoch(state: Path, epoch: int, chief: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not (state.is_file() and json.loads(state.read_text())["epoch"] >= epoch):
        assert chief.poll() is None and time.monotonic() < deadline, f"the chief never finished epoch {epoch}"
        time.sleep(0.05)


def listing(directory: Path) -> dict:
    """What the tests read of a run directory: its files, state, metrics, and the processes that wrote TensorBoard events."""
    events = sorted(directory.glob("tensorboard/*/events.out.tfevents.*"))
    return {
        "files": sorted(p.name for p in directory.iterdir()),
        "state": json.loads((directory / "state.json").read_text()),
        "metrics": (directory / "metrics.csv").read_text(),
        "event_pids": {int(p.name.split(".")[-3]) for p in events},  # events.out.tfevents.<time>.<host>.<pid>.<n>.v2
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> dict:
    """The scenario of the module docstring: what each process did, and the run directories after each stage."""
    root = tmp_path_factory.mktemp("cluster")
    cluster_dir, one_worker_dir, logs = root / "cluster", root / "one_worker", root / "logs"
    logs.mkdir()
    # The shared cache is built once, before any worker starts: workers must not race to build it.
    feature_cache.build_feature_cache(TRAIN_CLEAN, cluster_dir, workers=1, progress=False)
    feature_cache.build_feature_cache(TRAIN_CLEAN, one_worker_dir, workers=1, progress=False)
    result: dict = {}
    with processes() as start:
        one_worker = ["tests/cli_on_two_cpus.py", "train", "--working_dir", str(one_worker_dir), "--distribution", "mirrored", *TRAIN_OPTIONS]
        # One process at a time beside the cluster's two: more would only share the same two cores.
        result["one_worker_first_half"] = finish(start([*one_worker, "--epochs", "1"], logs / "one-worker-1.log"), logs / "one-worker-1.log")
        result["one_worker_second_half"] = finish(start([*one_worker, "--epochs", "2"], logs / "one-worker-2.log"), logs / "one-worker-2.log")
        chief, worker = start_cluster(start, cluster_dir, logs, "killed")
        wait_for_epoch(cluster_dir / RUN_DIR / "state.json", 1, chief)
        os.kill(worker.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        result["killed_chief"] = finish(chief, logs / "killed-worker0.log")
        result["chief_stopped_after_s"] = time.monotonic() - killed_at
        result["killed_worker"] = finish(worker, logs / "killed-worker1.log")
        result["after_kill"] = listing(cluster_dir / RUN_DIR)
        chief, worker = start_cluster(start, cluster_dir, logs, "resumed")
        result["resumed_chief"] = finish(chief, logs / "resumed-worker0.log")
        result["resumed_worker"] = finish(worker, logs / "resumed-worker1.log")
    result.update(cluster_dir=cluster_dir / RUN_DIR, one_worker_dir=one_worker_dir / RUN_DIR, logs=logs, final=listing(cluster_dir / RUN_DIR))
    return result


def succeeded(run: dict) -> None:
    assert run["returncode"] == 0, run["log"][-3000:]


def weights(path: Path) -> dict[str, np.ndarray]:
    """Every array of an HDF5 weights file, by its path in the file."""
    arrays = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


def test_a_killed_worker_stops_the_chief_with_one_clear_error_and_the_run_directory_stays_at_its_last_finished_epoch(cluster):
    assert cluster["killed_worker"]["returncode"] == -signal.SIGKILL
    assert cluster["killed_chief"]["returncode"] != 0, "the chief must not finish without its worker"
    assert cluster["chief_stopped_after_s"] < 120, "it stops, it does not hang (measured: 6 to 14 s)"
    assert "/job:worker/replica:0/task:1" in cluster["killed_chief"]["log"], "the chief's error names the worker it lost"
    assert "run the same command on every worker again to resume" in cluster["killed_chief"]["log"]
    assert "Traceback (most recent call last)" not in cluster["killed_chief"]["log"]  # One message, not a stack from inside TensorFlow.
    after = cluster["after_kill"]
    assert (after["state"]["epoch"], after["state"]["finished"], after["state"]["latest"]) == (1, False, "latest-0001.weights.h5")
    assert after["files"] == sorted(FINISHED_RUN - {"latest-0002.weights.h5", "final.h5"} | {"latest-0001.weights.h5"})
    left = [path.name for path in (cluster["logs"] / "killed-tmp1").iterdir()]
    assert len(left) == 1 and left[0].startswith("hive-mtl-worker-"), "killed outright, the worker leaves its private copy in its $TMPDIR"


def test_the_same_command_on_both_workers_resumes_from_the_chiefs_last_epoch_and_finishes(cluster):
    for run in ("resumed_chief", "resumed_worker"):
        succeeded(cluster[run])
        assert re.search(r"resuming \S+ after epoch 1 \(optimizer step 2\)", cluster[run]["log"]), cluster[run]["log"][-3000:]
        assert "MultiWorkerMirroredStrategy over 2 replicas" in cluster[run]["log"]
        assert "the 2 workers agree on the training data: 3 speakers, 18 training utterances" in cluster[run]["log"]
    assert (cluster["final"]["state"]["epoch"], cluster["final"]["state"]["finished"]) == (2, True)


def test_only_the_chief_writes_the_run_directory_and_the_other_worker_removes_its_private_copy(cluster):
    final = cluster["final"]
    assert final["files"] == sorted(FINISHED_RUN), "a complete run, and no stray or hidden temporary file"
    assert [row.split(",")[0] for row in final["metrics"].splitlines()[1:]] == ["0", "1"]
    chief_pids = {cluster["killed_chief"]["pid"], cluster["resumed_chief"]["pid"]}
    assert final["event_pids"] == chief_pids, "TensorBoard events of the chief's two runs, and of no other process"
    private_copy = re.search(r"not the cluster's chief: writing into (\S+)", cluster["resumed_worker"]["log"]).group(1)
    assert Path(private_copy).parent == cluster["logs"] / "resumed-tmp1", "in the worker's $TMPDIR"
    assert not any((cluster["logs"] / "resumed-tmp1").iterdir()), "removed when the worker finished"
    assert not [path for name in ("killed", "resumed") for path in (cluster["logs"] / f"{name}-tmp0").iterdir()], "the chief needs no copy"


def test_two_workers_train_what_one_worker_with_two_replicas_trains_on_the_same_global_batches(cluster):
    for run in ("one_worker_first_half", "one_worker_second_half"):
        succeeded(cluster[run])
        assert "MirroredStrategy over 2 replicas" in cluster[run]["log"]
    one_worker = listing(cluster["one_worker_dir"])
    rows = [[float(cell) for cell in row.split(",")] for row in cluster["final"]["metrics"].splitlines()[1:]]
    one_worker_rows = [[float(cell) for cell in row.split(",")] for row in one_worker["metrics"].splitlines()[1:]]
    assert cluster["final"]["metrics"].splitlines()[0] == one_worker["metrics"].splitlines()[0]
    np.testing.assert_allclose(rows, one_worker_rows, rtol=TOLERANCE, atol=0)
    for name in ("latest-0002.weights.h5", "best.h5"):
        trained, reference = weights(cluster["cluster_dir"] / name), weights(cluster["one_worker_dir"] / name)
        assert trained.keys() == reference.keys()
        assert max(float(np.abs(trained[key] - reference[key]).max(initial=0)) for key in trained) <= TOLERANCE, name


def test_workers_whose_caches_differ_by_one_file_stop_before_training_and_say_so(tmp_path):
    """Worker 1's machine could not decode one file, so its cache lacks it: its speaker list and split differ."""
    corpus, logs = tmp_path / "train-clean-100", tmp_path / "logs"
    shutil.copytree(TRAIN_CLEAN, corpus)
    logs.mkdir()
    feature_cache.build_feature_cache(corpus, tmp_path / "machine0", workers=1, progress=False)
    (corpus / "19" / "198" / "19-198-0001.flac").write_bytes(b"not audio")
    assert len(feature_cache.build_feature_cache(corpus, tmp_path / "machine1", workers=1, progress=False).failed) == 1
    with processes() as start:
        workers = start_cluster(start, tmp_path / "machine0", logs, "mismatch", second_working_dir=tmp_path / "machine1")
        runs = [finish(worker, logs / f"mismatch-worker{index}.log") for index, worker in enumerate(workers)]
    for run in runs:
        assert run["returncode"] == 1, run["log"][-3000:]
        assert re.search(r"Error: the workers of the cluster do not train on the same data \(worker 0: 3 speakers, 18 training utterances "
                         r"\(digest [0-9a-f]{24}\); worker 1: 3 speakers, 17 training utterances \(digest [0-9a-f]{24}\)\)", run["log"]), run["log"][-3000:]
        assert "Traceback (most recent call last)" not in run["log"] and "Epoch 1/2" not in run["log"]
    assert not (tmp_path / "machine0" / RUN_DIR / "state.json").exists(), "no epoch was trained"


@pytest.mark.parametrize(
    "tf_config, chief",
    [
        (None, True),  # No cluster: the one worker.
        ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}', True),
        ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}', False),
        ('{"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', True),
        ('{"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}', False),
    ],
)
def test_the_chief_is_the_chief_task_else_worker_0(tf_config, chief):
    assert is_cluster_chief(tf_config) is chief


def test_a_tf_config_that_is_not_json_is_refused_by_name():
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        is_cluster_chief("{worker: 0}")
