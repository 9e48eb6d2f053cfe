"""Shared fixtures: real filterbank windows from the bundled samples; a JAX-backend child environment."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from constants import NORMALISATION_STD_FLOOR, NUM_FBANKS, NUM_FRAMES, RESAMPLE_QUALITY, SAMPLE_RATE
from precision import use_onednn_kernels

use_onednn_kernels()  # As cli.py does, before any test imports TensorFlow, so tests compute as the verbs do.

# Under pytest-xdist each worker gets its share of the cores for TensorFlow, oneDNN and XLA (and
# the child processes tests start inherit it): with every library's default, two workers on two
# cores ran four or more compute threads that spin and preempt each other (a training test took
# 1.4x the wall time and 1.1x the CPU time with two threads as with one, beside other work).
# Set in the environment before any test imports TensorFlow; a value the user set is kept.
if (workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(name, threads)
    if threads == "1":  # JAX's documented single-thread setting.
        os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = REPO_ROOT / "samples"
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


def pytest_configure(config) -> None:
    """The suite reads real speech from ../shared/data: say so once instead of failing test by test."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.exit(f"{SHARED_DATA_DIR}: missing. The tests read real speech from the shared data folder beside the "
                    "repository (../shared/data, see README): clone the repository next to it.", returncode=4)


# Test files of two minutes or more (CPU time on a 2-core AMD EPYC), longest first, scheduled before
# all others: xdist (--dist loadfile) hands files out in collection order, and a long one handed out
# last keeps one worker busy alone while the other has finished.
LONG_TEST_FILES = ("test_train.py", "test_cluster.py", "test_conv_models.py", "test_distribution.py", "test_resume.py", "test_export.py",
                   "test_experiment.py")


def pytest_collection_modifyitems(items: list) -> None:
    def rank(item) -> int:
        name = item.path.name
        return LONG_TEST_FILES.index(name) if name in LONG_TEST_FILES else len(LONG_TEST_FILES)

    items.sort(key=rank)  # Stable: the order within each file stays.


# Rows of `real_features`: two utterances of one speaker, then two other speakers (19 and 26),
# so tests can stack real triplets (anchor, positive, negative).
REAL_FEATURE_FILES = (
    SAMPLES_DIR / "PhilippeRemy" / "PhilippeRemy_001.wav",
    SAMPLES_DIR / "PhilippeRemy" / "PhilippeRemy_002.wav",
    SAMPLES_DIR / "LibriSpeech" / "train-clean-100" / "19" / "198" / "19-198-0001.flac",
    SAMPLES_DIR / "LibriSpeech" / "train-clean-100" / "26" / "495" / "26-495-0007.flac",
)


def _first_window(path: Path) -> np.ndarray:
    """Reference features of the first NUM_FRAMES frames: (NUM_FRAMES, NUM_FBANKS, 1) float32."""
    import python_speech_features
    import soundfile
    import soxr

    signal, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
    signal = signal.mean(axis=1)
    if sample_rate != SAMPLE_RATE:
        signal = soxr.resample(signal, sample_rate, SAMPLE_RATE, quality=RESAMPLE_QUALITY)
    energies = python_speech_features.fbank(signal, samplerate=SAMPLE_RATE, nfilt=NUM_FBANKS)[0]
    mean = energies.mean(axis=1, keepdims=True)
    std = np.maximum(energies.std(axis=1, keepdims=True), NORMALISATION_STD_FLOOR)
    window = ((energies - mean) / std).astype(np.float32)[:NUM_FRAMES]
    assert window.shape == (NUM_FRAMES, NUM_FBANKS), path
    return window[..., np.newaxis]


@pytest.fixture(scope="session")
def real_features() -> np.ndarray:
    """(4, NUM_FRAMES, NUM_FBANKS, 1) float32 windows of REAL_FEATURE_FILES, in that order."""
    return np.stack([_first_window(path) for path in REAL_FEATURE_FILES])


EMODB_DIR = SHARED_DATA_DIR / "EmoDB"
EMODB_SAMPLE_SPEAKERS = ("10", "11", "13", "14")  # 10 M, 11 M, 13 F, 14 F.


@pytest.fixture(scope="session")
def emodb_sample(tmp_path_factory) -> Path:
    """A small EmoDB corpus, `<tmp>/EmoDB`, copied from ../shared/data/EmoDB: for each of four actors (10 M, 11 M, 13 F,
    14 F) one clip of each of the seven emotions (the version listeners recognised best), with those rows of its
    clips.tsv (28 clips) and speakers.tsv."""
    import csv
    import shutil

    folder = tmp_path_factory.mktemp("emodb") / "EmoDB"
    with open(EMODB_DIR / "clips.tsv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle, delimiter="\t") if row["speaker"] in EMODB_SAMPLE_SPEAKERS]
    chosen = [max((r for r in rows if (r["speaker"], r["emotion"]) == key), key=lambda r: float(r["recognised_percent"]))
              for key in sorted({(r["speaker"], r["emotion"]) for r in rows})]
    for row in chosen:
        (folder / row["speaker"]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(EMODB_DIR / row["path"], folder / row["path"])
    with open(folder / "clips.tsv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(chosen[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(chosen)
    lines = (EMODB_DIR / "speakers.tsv").read_text().splitlines(keepends=True)
    (folder / "speakers.tsv").write_text(lines[0] + "".join(line for line in lines[1:] if line.split("\t")[0] in EMODB_SAMPLE_SPEAKERS))
    return folder


@pytest.fixture(scope="session")
def jax_subprocess_env() -> dict[str, str]:
    """Environment for a child Python on the JAX backend; fails in CI (env CI set) if jax is missing."""
    if importlib.util.find_spec("jax") is None:
        message = "jax is not installed (pip install jax): the second-backend tests need it."
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": pythonpath, "TF_CPP_MIN_LOG_LEVEL": "2"}


def run_cli_in_process(*args: object):
    """Run a `cli.py` command in this process with click's CliRunner, from the repository root.

    The same command function a user's `python cli.py ...` runs, without a fresh Python that would
    spend most of a short test importing TensorFlow. Returns click's Result (exit_code, stdout,
    stderr, exception); a command that exits with a message leaves a SystemExit there, one that
    crashed leaves its exception.
    """
    import contextlib

    from click.testing import CliRunner

    import cli

    with contextlib.chdir(REPO_ROOT):
        return CliRunner().invoke(cli.cli, [str(arg) for arg in args])


def cli_failure(result) -> str:
    """What an in-process `cli.py` command (click's Result) printed, and the exception that stopped it: the message of
    an assertion on its exit code."""
    return f"{result.output[-3000:]}\n{result.exception!r}"


@pytest.fixture
def invoke_cli():
    """`run_cli_in_process`, as a fixture."""
    return run_cli_in_process


def built_once_per_run(tmp_path_factory, name: str, build) -> Path:
    """A folder of this worker's own holding what `build(folder)` writes, built once for the whole test run.

    Under pytest-xdist each worker has its own session, so a session fixture used by test files
    that land on both workers would be built twice. Here the first worker to need it builds it in
    the run's temporary folder (shared by the workers) under a file lock, while another waits for
    it; each worker then copies it into a folder of its own, so tests that write into it still
    see only their worker's writes. A failed build leaves nothing that another worker would take.
    """
    import fcntl
    import shutil

    own = tmp_path_factory.mktemp(name)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        build(own)
        return own
    run_root = tmp_path_factory.getbasetemp().parent  # This run's folder, above every worker's basetemp.
    shared = run_root / name
    with open(run_root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file is closed.
        if not shared.is_dir():
            staging = run_root / f"{name}.{worker}"
            build(staging)
            staging.rename(shared)
    shutil.copytree(shared, own, dirs_exist_ok=True)
    return own


def _train_mtl(working_dir: Path) -> None:
    result = run_cli_in_process(
        "train", "--audio_dir", "samples/LibriSpeech", "--working_dir", working_dir, "--mode", "mtl", "--model_size", "small", "--epochs", "1",
        "--steps_per_epoch", "2", "--batch_size", "12", "--validation_steps", "1", "--held_out_speakers", "1688,1998")
    assert result.exit_code == 0, result.output[-3000:]


@pytest.fixture(scope="session")
def trained_mtl(tmp_path_factory) -> Path:
    """A working dir holding a Hive-MTL run of the small model, trained with `cli.py train` (in this process) on the
    bundled LibriSpeech samples with the test-other speakers 1688 and 1998 held out; trained once per test run and
    copied for each pytest-xdist worker (`built_once_per_run`)."""
    return built_once_per_run(tmp_path_factory, "trained_mtl", _train_mtl)
