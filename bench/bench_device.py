"""GPU benchmark of the full ResCNN on JAX: training and inference windows/s, the input pipeline, GPU memory.

Run on the lent GPU machine by `bash bench/device_run.sh` (it installs the carried wheels, sets
KERAS_BACKEND=jax and calls this script); `bash bench/device_run.sh --dry-run` rehearses the same
logic here on the CPU with tiny sizes.

    python bench/bench_device.py --working_dir /tmp/hive_bench --require_gpu   # the GPU run
    python bench/bench_device.py --working_dir /tmp/hive_bench_tiny --tiny     # CPU rehearsal
    python bench/bench_device.py --table bench_device.json                     # results as a Markdown table

What it measures, for each dtype policy (mixed_bfloat16, float32, mixed_float16):
  * training: windows/s of `fit` on the softmax-mode model (`training_models.build_model`, mode softmax:
    `DeepSpeakerModel(include_softmax=True, ...)`, Adam, sparse categorical cross-entropy) on
    batches held in RAM, so only the model and the host-to-device copy are timed;
  * inference: windows/s of the embedding model through one jitted stateless call, as
    `inference.Embedder` runs it on JAX: with the batch already on the GPU, and with NumPy in and
    out (what `Embedder` pays);
  * end to end (first policy only): `fit` fed by `batcher.SpeakerClassBatches` reading windows
    through memory maps from a synthetic feature cache, with the training default of 4 reader
    threads, then with 4 reader processes (train --input_processes), then `AugmentedBatches` on
    synthetic cached audio with 16 processes (recipes/voxceleb2_resnet.json's augmentation, less
    MUSAN and rooms): whether the input keeps the GPU busy;
  * the input pipeline alone (4 and 16 reader threads, no model; worker processes with
    --pipeline_processes; the augmented reader on synthetic cached audio with --augmented_workers
    and --augmented_processes), and peak GPU memory (`memory_stats()['peak_bytes_in_use']`, the
    highest so far in that policy's process).

The parent process never imports Keras or JAX, so it never holds the GPU: it builds the cache
and runs one worker process per policy (and one for the pipeline, on the CPU), one after
another, each within what is left of `--budget_s`. A worker prints a RESULT line as soon as it
has a figure, so a worker stopped at the budget still leaves what it measured. At the end the
script prints one JSON line with every figure and writes it to `--out` (default
`$OUT/bench_device.json` when OUT is set).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from constants import (  # noqa: E402  (constants.py imports nothing: safe without Keras)
    CACHE_DIR_NAME,
    EMBEDDING_SIZE,
    MODEL_FILTERS,
    NORMALISATION_STD_FLOOR,
    NUM_FBANKS,
    NUM_FRAMES,
    NUM_RES_BLOCKS,
    RES_CONV_KERNEL,
    SAMPLE_RATE,
    STAGE_CONV_KERNEL,
    STAGE_CONV_STRIDES,
    WAVEFORM_CACHE_DIR_NAME,
    WINDOW_STEP_S,
)

TARGETS = {"train_windows_per_s": 10_000, "inference_windows_per_s": 30_000}  # bf16, one H100/H200-class GPU.
TARGET_POLICY = "mixed_bfloat16"
RESULT_PREFIX = "RESULT "
CORPUS_INDEX_FILE_NAME = "corpus.json"  # feature_cache.CORPUS_INDEX_FILE_NAME; feature_cache.py needs soundfile, so not imported here.
TINY = {
    "model_size": "small", "speakers": 6, "utterances": 4, "pool_size": 6, "policies": "mixed_bfloat16,float32",
    "train_batch_sizes": "6", "infer_batch_sizes": "8", "train_windows": 12, "e2e_windows": 12,
    "pipeline_windows": 24, "pipeline_workers": "2", "e2e_processes": "2", "e2e_augmented_processes": "2", "infer_seconds": 0.2, "budget_s": 300,
    "min_worker_s": 0,
}


# ----------------------------------------------------------------------------------------------
# Pure helpers: work per window, the synthetic cache.


def forward_flops(model_size: str, num_classes: int = 0, frames: int = NUM_FRAMES) -> int:
    """Multiply-adds x 2 of one window through the ResCNN (convolutions and dense layers only).

    Each stage's 5x5 convolution has stride 2 and 'same' padding (time and frequency halve,
    rounding up), then NUM_RES_BLOCKS identity blocks of two 3x3 convolutions; then `affine`
    (freq x channels -> 512) and, with `num_classes`, the softmax layer. Full model, 160 frames:
    5.3 GFLOP; a training step costs about 3 times the forward pass.
    """
    time_steps, freq, channels, flops = frames, NUM_FBANKS, 1, 0
    for filters in MODEL_FILTERS[model_size]:
        time_steps, freq = math.ceil(time_steps / STAGE_CONV_STRIDES), math.ceil(freq / STAGE_CONV_STRIDES)
        flops += 2 * time_steps * freq * STAGE_CONV_KERNEL**2 * channels * filters
        flops += NUM_RES_BLOCKS * 2 * (2 * time_steps * freq * RES_CONV_KERNEL**2 * filters * filters)
        channels = filters
    flops += 2 * freq * channels * EMBEDDING_SIZE
    return flops + 2 * EMBEDDING_SIZE * num_classes


def librispeech_like_frames(rng: np.random.Generator, count: int) -> np.ndarray:
    """Utterance lengths in frames (100 per second): mean 12.5 s, sd 4.5 s, from 1 to 35 s, like LibriSpeech's."""
    return np.clip(rng.normal(1250, 450, count), 100, 3500).astype(np.int64)


def normalised_features(rng: np.random.Generator, frames: int) -> np.ndarray:
    """Random (frames, 64) float32 features, each frame normalised as `audio.normalize_frames` does."""
    features = rng.standard_normal((frames, NUM_FBANKS), dtype=np.float32)
    mean = features.mean(axis=1, keepdims=True)
    std = np.maximum(features.std(axis=1, keepdims=True), NORMALISATION_STD_FLOOR)
    return ((features - mean) / std).astype(np.float32)


def build_synthetic_cache(working_dir: Path, speakers: int, utterances: int, pool_size: int, seed: int = 0) -> dict:
    """A feature cache in the layout of `feature_cache.build_feature_cache`, of random features; returns its figures.

    `corpus.json` lists `speakers` x `utterances` entries `audio-fbanks/<speaker>_<utterance>.npy`,
    hard links to `pool_size` distinct random files of LibriSpeech-like lengths, so the cache
    takes the disk of the pool only. Written without audio.py (which imports soundfile), so it
    runs on a machine that has no audio libraries. An existing cache is reused.
    """
    index_path = working_dir / CORPUS_INDEX_FILE_NAME
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        return {"speakers": len(index["speakers"]), "entries": sum(map(len, index["speakers"].values())), "reused": True}
    pool, cache = working_dir / "pool", working_dir / CACHE_DIR_NAME
    pool.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lengths = librispeech_like_frames(rng, pool_size)
    for i, frames in enumerate(lengths):
        np.save(pool / f"{i}.npy", normalised_features(rng, int(frames)))
    index = {"audio_dirs": ["synthetic"], "genders": {}, "speakers": {}}
    for s in range(speakers):
        speaker = str(10_000 + s)
        index["genders"][speaker] = "F" if s % 2 else "M"
        index["speakers"][speaker] = [f"{s}-{u:04d}" for u in range(utterances)]
        for u, utterance in enumerate(index["speakers"][speaker]):
            os.link(pool / f"{(s * utterances + u) % pool_size}.npy", cache / f"{speaker}_{utterance}.npy")
    index_path.write_text(json.dumps(index))
    return {"speakers": speakers, "entries": speakers * utterances, "reused": False,
            "pool_files": pool_size, "mean_frames": float(lengths.mean()), "pool_mb": float(lengths.sum() * NUM_FBANKS * 4 / 2**20)}


def build_synthetic_waveforms(working_dir: Path, pool_size: int, seed: int = 1) -> dict:
    """The synthetic cache's audio as a run with `--trim energy` keeps it (`audio-waveforms-energy/<entry>.npy`, float16
    at 16 kHz), for the augmented reader: hard links to `pool_size` random waveforms of LibriSpeech-like lengths (the
    reader's cost does not depend on what the samples say). Reused when there."""
    folder = working_dir / f"{WAVEFORM_CACHE_DIR_NAME}-energy"
    if folder.is_dir():
        return {"reused": True}
    pool = working_dir / "waveform_pool"
    pool.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = librispeech_like_frames(rng, pool_size) * round(SAMPLE_RATE * WINDOW_STEP_S)
    for i, count in enumerate(samples):
        np.save(pool / f"{i}.npy", (0.1 * rng.standard_normal(int(count), dtype=np.float32)).astype(np.float16))
    staging = working_dir / f".{folder.name}"
    staging.mkdir(exist_ok=True)
    for i, entry in enumerate(sorted((working_dir / CACHE_DIR_NAME).glob("*.npy"))):
        os.link(pool / f"{i % pool_size}.npy", staging / entry.name)
    staging.rename(folder)
    return {"reused": False, "pool_files": pool_size, "pool_mb": float(samples.sum() * 2 / 2**20)}


# ----------------------------------------------------------------------------------------------
# Worker: one process per policy (Keras and JAX are imported only here).


def emit(record: dict) -> None:
    print(RESULT_PREFIX + json.dumps(record), flush=True)


def note(message: str) -> None:
    print(f"[bench_device {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def gpu_memory() -> dict:
    """Peak and current bytes on the first JAX device (None where the device keeps no statistics, as on CPU)."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return {"peak_gpu_bytes": stats.get("peak_bytes_in_use"), "gpu_bytes_in_use": stats.get("bytes_in_use"), "gpu_bytes_limit": stats.get("bytes_limit")}


def environment() -> dict:
    import jax
    import keras

    device = jax.local_devices()[0]
    return {"measure": "environment", "python": platform.python_version(), "jax": jax.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "keras_backend": keras.backend.backend(), "jax_backend": jax.default_backend(),
            "device_kind": device.device_kind, "device_count": jax.local_device_count(), "cpu_count": os.cpu_count(),
            "jax_compilation_cache_dir": os.environ.get("JAX_COMPILATION_CACHE_DIR")}


def softmax_model(model_size: str, num_classes: int):
    """The softmax-mode model compiled as `training_models.build_model` compiles it; says which path built it."""
    try:
        from train_config import TrainConfig
        from training_models import build_model
    except ImportError as error:  # train_config.py imports batcher.py, which imports audio.py: soundfile, soxr, python_speech_features.
        import keras

        from conv_models import DeepSpeakerModel

        model = DeepSpeakerModel(include_softmax=True, num_speakers_softmax=num_classes, model_size=model_size).m
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model, f"conv_models, compiled as training_models.build_model does (training_models.py does not import: {error})"
    return build_model(TrainConfig(mode="softmax", model_size=model_size), num_classes), "training_models.build_model"


def in_memory_batches(batch_size: int, steps: int, num_classes: int, seed: int = 0, distinct: int = 4):
    """A PyDataset of `steps` batches cycling over `distinct` random batches held in RAM (no disk, no decoding)."""
    import keras

    rng = np.random.default_rng(seed)
    batches = [(rng.standard_normal((batch_size, NUM_FRAMES, NUM_FBANKS, 1), dtype=np.float32),
                rng.integers(0, num_classes, batch_size).astype(np.int32)) for _ in range(min(distinct, steps))]

    class InMemoryBatches(keras.utils.PyDataset):
        def __len__(self) -> int:
            return steps

        def __getitem__(self, index: int):
            return batches[index % len(batches)]

    return InMemoryBatches()


def timed_fit(model, batches) -> tuple[float, float]:
    """Seconds of one `fit` epoch over `batches`, and its last loss."""
    start = time.perf_counter()
    history = model.fit(batches, epochs=1, verbose=0)
    return time.perf_counter() - start, float(history.history["loss"][-1])


def measure_training(model, batch_size: int, windows: int, num_classes: int, flops: int) -> dict:
    """`fit` windows/s on batches in RAM; a 2-step `fit` first compiles the step (same shapes, same function)."""
    compile_s, _ = timed_fit(model, in_memory_batches(batch_size, 2, num_classes))
    steps = max(2, math.ceil(windows / batch_size))
    seconds, loss = timed_fit(model, in_memory_batches(batch_size, steps, num_classes, seed=1))
    rate = steps * batch_size / seconds
    return {"windows_per_s": rate, "steps": steps, "seconds": seconds, "compile_s": compile_s, "loss": loss,
            "tflops": rate * 3 * flops / 1e12}


# The augmentation of recipes/voxceleb2_resnet.json without its folders: babble in place of MUSAN, no rooms (simulating
# them needs pyroomacoustics, which the GPU machine lacks; bench_augment.py measures what rooms and MUSAN add).
VOXCELEB_AUGMENTATION = {"speed_perturb": True, "noise_probability": 0.6, "band_limit_probability": 0.1, "spec_mask_probability": 0.5}


def reader(working_dir: str, batch_size: int, windows: int, input_workers: int, processes: bool, augmented: bool, seed: int):
    """The plain reader `SpeakerClassBatches` on the synthetic cache, or with `augmented` `AugmentedBatches` on its audio
    with VOXCELEB_AUGMENTATION, as `training_batches.make_batches` sets them up: `input_workers` reader threads, or with
    `processes` that many reader processes (PyDataset's use_multiprocessing; train --input_processes)."""
    from batcher import AugmentedBatches, SpeakerClassBatches, load_training_data
    from train_config import TrainConfig

    data = load_training_data(working_dir)
    steps = max(2, math.ceil(windows / batch_size))
    loader = {"workers": input_workers, "use_multiprocessing": processes, "max_queue_size": 2 * input_workers}
    if not augmented:
        return SpeakerClassBatches(data.train, data.speakers, batch_size, steps, seed=seed, **loader)
    folder = Path(working_dir) / f"{WAVEFORM_CACHE_DIR_NAME}-energy"
    waveforms = {s: [folder / entry.name for entry in entries] for s, entries in data.train.items()}
    return AugmentedBatches(waveforms, data.speakers, batch_size, steps, TrainConfig(**VOXCELEB_AUGMENTATION).augment, seed=seed, **loader)


def measure_end_to_end(model, batch_size: int, windows: int, working_dir: str, input_workers: int, processes: bool = False,
                       augmented: bool = False) -> dict:
    """`fit` windows/s fed by `reader`. The model's classes are the cache's speakers, so an augmented reader's speed
    classes (speaker x 3) are folded back onto them: the cost measured is the reader's and the model's, not the labels'."""
    batches = reader(working_dir, batch_size, windows, input_workers, processes, augmented, seed=2)
    if augmented:
        batches.num_speakers = 0  # Class = speaker + speed index x num_speakers: 0 keeps each row's speaker.
    seconds, loss = timed_fit(model, batches)
    steps = len(batches)
    return {"windows_per_s": steps * batch_size / seconds, "steps": steps, "seconds": seconds, "loss": loss,
            "input_workers": input_workers, "processes": processes, "augmented": augmented}


def measure_inference(model, batch_size: int, min_seconds: float, flops: int) -> dict:
    """Windows/s of the jitted stateless call `inference.Embedder` uses on JAX, on one fixed batch shape.

    `windows_per_s`: the batch already on the device, calls queued back to back (the model's
    speed). `host_io_windows_per_s`: NumPy in, NumPy out at every call, as `Embedder` does.
    """
    import jax

    compiled = jax.jit(lambda trainable, non_trainable, x: model.stateless_call(trainable, non_trainable, x, training=False)[0])
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    host = np.random.default_rng(0).standard_normal((batch_size, NUM_FRAMES, NUM_FBANKS, 1), dtype=np.float32)
    device = jax.device_put(host)
    start = time.perf_counter()
    compiled(trainable, non_trainable, device).block_until_ready()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(3):
        compiled(trainable, non_trainable, device).block_until_ready()
    calls = int(np.clip(math.ceil(min_seconds / ((time.perf_counter() - start) / 3)), 3, 2000))
    start = time.perf_counter()
    for _ in range(calls):
        out = compiled(trainable, non_trainable, device)
    out.block_until_ready()
    rate = calls * batch_size / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(calls):
        np.asarray(compiled(trainable, non_trainable, host))
    host_rate = calls * batch_size / (time.perf_counter() - start)
    return {"windows_per_s": rate, "host_io_windows_per_s": host_rate, "calls": calls, "compile_s": compile_s,
            "tflops": rate * flops / 1e12}


def measure_pipeline(working_dir: str, batch_size: int, windows: int, input_workers: int, processes: bool = False, augmented: bool = False) -> dict:
    """Windows/s of `reader` through Keras's PyDataset machinery, no model (as bench_training.py)."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    batches = reader(working_dir, batch_size, windows, input_workers, processes, augmented, seed=4 if augmented else 3)
    adapter = PyDatasetAdapter(batches, shuffle=False)
    drawn, start = 0, time.perf_counter()
    for batch in adapter.get_numpy_iterator():
        drawn += len(batch[0])
    seconds = time.perf_counter() - start
    adapter.on_epoch_end()
    return {"windows_per_s": drawn / seconds, "seconds": seconds, "windows": drawn}


def worker_plan(spec: dict) -> list[tuple[str, int]]:
    """(measure, batch size) in order of importance: largest training batch, largest inference batch,
    end to end, then the other batch sizes; so a budget that runs out cuts the least useful last."""
    train, infer = spec["train_batch_sizes"], spec["infer_batch_sizes"]
    plan = [("training", train[0]), ("inference", infer[0])]
    if spec.get("end_to_end"):
        plan.append(("end_to_end", train[0]))
    return plan + [("inference", b) for b in infer[1:]] + [("training", b) for b in train[1:]]


def block_imports(names: list[str]) -> None:
    """Make `import name` fail as it does where the package is not installed (the rehearsal of a machine without it)."""
    import importlib.abc

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname.split(".")[0] in names:
                raise ModuleNotFoundError(f"No module named {fullname!r} (blocked by --block_modules)", name=fullname)
            return None

    sys.meta_path.insert(0, Blocker())


def run_worker(spec: dict) -> int:
    """Measure one policy (or the pipeline) and print a RESULT line per figure."""
    block_imports(spec.get("block_modules", []))
    import keras

    if spec["kind"] == "pipeline":
        for workers in spec["pipeline_workers"]:
            run_measure({"measure": "pipeline", "batch_size": spec["batch_size"], "input_workers": workers},
                        lambda workers=workers: measure_pipeline(spec["working_dir"], spec["batch_size"], spec["pipeline_windows"], workers))
        for workers in spec.get("pipeline_processes", []):
            run_measure({"measure": "pipeline", "batch_size": spec["batch_size"], "input_workers": workers, "processes": True},
                        lambda workers=workers: measure_pipeline(spec["working_dir"], spec["batch_size"], spec["pipeline_windows"], workers, True))
        augmented = [(w, False) for w in spec.get("augmented_workers", [])] + [(w, True) for w in spec.get("augmented_processes", [])]
        for workers, processes in augmented:
            run_measure({"measure": "augmented_pipeline", "batch_size": spec["batch_size"], "input_workers": workers, "processes": processes},
                        lambda workers=workers, processes=processes: measure_pipeline(
                            spec["working_dir"], spec["batch_size"], spec["augmented_windows"], workers, processes, augmented=True))
        return 0
    env = environment()
    emit({**env, "policy": spec["policy"]})
    if keras.backend.backend() != "jax":
        emit({"measure": "environment", "error": f"KERAS_BACKEND must be jax, not {keras.backend.backend()}"})
        return 2
    if spec["require_gpu"] and env["jax_backend"] != "gpu":
        emit({"measure": "environment", "error": f"--require_gpu: JAX sees no GPU (backend {env['jax_backend']}, device {env['device_kind']})"})
        return 3
    keras.mixed_precision.set_global_policy(spec["policy"])
    keras.utils.set_random_seed(0)
    models = {}
    size, classes = spec["model_size"], spec["num_classes"]
    for measure, batch_size in worker_plan(spec):
        base = {"measure": measure, "policy": spec["policy"], "batch_size": batch_size}
        if measure == "inference":
            if "embedding" not in models:
                from conv_models import DeepSpeakerModel

                models["embedding"] = DeepSpeakerModel(model_size=size).m
            run_measure(base, lambda: measure_inference(models["embedding"], batch_size, spec["infer_seconds"], forward_flops(size)))
            continue
        if "softmax" not in models:
            models["softmax"], built_by = softmax_model(size, classes)
            emit({"measure": "model", "policy": spec["policy"], "built_by": built_by, "params": models["softmax"].count_params()})
        if measure == "training":
            run_measure(base, lambda: measure_training(models["softmax"], batch_size, spec["train_windows"], classes, forward_flops(size, classes)))
        else:
            readers = ([(spec["input_workers"], False, False)] + [(w, True, False) for w in spec.get("e2e_processes", [])]
                       + [(w, True, True) for w in spec.get("e2e_augmented_processes", [])])
            for workers, processes, augmented in readers:
                run_measure({**base, "input_workers": workers, "processes": processes, "augmented": augmented},
                            lambda workers=workers, processes=processes, augmented=augmented: measure_end_to_end(
                                models["softmax"], batch_size, spec["e2e_windows"], spec["working_dir"], workers, processes, augmented))
    return 0


def run_measure(base: dict, measure) -> None:
    """Emit `base` with the figures of `measure()` and the GPU memory so far, or with the error it raised."""
    note(" ".join(f"{k} {v}" for k, v in base.items()) + " ...")
    try:
        record = {**base, **measure()}
    except Exception as error:  # One failed figure (an out-of-memory, a missing module) must not lose the others.
        traceback.print_exc()
        record = {**base, "error": f"{type(error).__name__}: {error}"}
    if base["measure"] != "pipeline":
        record |= gpu_memory()
    emit(record)


# ----------------------------------------------------------------------------------------------
# Parent: cache, workers within the budget, summary.


def run_child(spec: dict, timeout_s: float, cpu_only: bool) -> tuple[list[dict], str | None]:
    """Run one worker; returns its records and why it stopped early (None when it finished cleanly)."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONUNBUFFERED": "1"}
    if cpu_only:
        env["JAX_PLATFORMS"] = "cpu"  # The pipeline worker must not take the GPU the policy workers need.
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    stopped = None
    try:
        out, _ = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        out, _ = child.communicate()
        stopped = f"stopped at the budget after {timeout_s:.0f} s"
    records = []
    for line in out.splitlines():
        if line.startswith(RESULT_PREFIX):
            records.append(json.loads(line[len(RESULT_PREFIX):]))
        elif line.strip():
            print(line, file=sys.stderr)
    if stopped is None and child.returncode:
        stopped = f"exit status {child.returncode}"
    return records, stopped


def summarise(records: list[dict], config: dict, notes: list[str]) -> dict:
    """Every record, plus the headline figures by policy and batch size and the verdicts against the targets."""
    def table(measure: str, key: str = "windows_per_s") -> dict:
        out: dict = {}
        for r in records:
            if r.get("measure") == measure and key in r and not r.get("processes"):
                out.setdefault(r["policy"], {})[str(r["batch_size"])] = round(r[key], 1)
        return out

    train, infer = table("training"), table("inference")
    best_train = max(train.get(TARGET_POLICY, {}).values(), default=None)
    best_infer = max(infer.get(TARGET_POLICY, {}).values(), default=None)
    def reader_rates(measure: str, processes: bool, augmented: bool = False) -> dict:
        """Reader workers -> windows/s of a measure's records read with threads or with worker processes, plain or augmented."""
        return {str(r["input_workers"]): round(r["windows_per_s"], 1) for r in records
                if r.get("measure") == measure and "windows_per_s" in r
                and bool(r.get("processes")) == processes and bool(r.get("augmented")) == augmented}

    pipeline, pipeline_processes = reader_rates("pipeline", False), reader_rates("pipeline", True)
    augmented = ({f"{w} threads": v for w, v in reader_rates("augmented_pipeline", False).items()}
                 | {f"{w} processes": v for w, v in reader_rates("augmented_pipeline", True).items()})
    e2e_processes, e2e_augmented = reader_rates("end_to_end", True), reader_rates("end_to_end", True, augmented=True)
    e2e = [r for r in records if r.get("measure") == "end_to_end" and "windows_per_s" in r]
    keeps_up = None
    if e2e:
        fastest = max(e2e, key=lambda r: r["windows_per_s"])  # With the readers that did best.
        alone = train.get(fastest["policy"], {}).get(str(fastest["batch_size"]))
        keeps_up = bool(alone and fastest["windows_per_s"] >= 0.9 * alone)
    peaks = {}
    for r in records:
        if r.get("peak_gpu_bytes") is not None:
            peaks[r["policy"]] = max(peaks.get(r["policy"], 0), r["peak_gpu_bytes"])
    env = next((r for r in records if r.get("measure") == "environment" and "error" not in r), {})
    return {
        "benchmark": "bench_device", "config": config, "environment": {k: v for k, v in env.items() if k not in ("measure", "policy")},
        "targets": {**TARGETS, "policy": TARGET_POLICY},
        "train_windows_per_s": train, "inference_windows_per_s": infer, "inference_host_io_windows_per_s": table("inference", "host_io_windows_per_s"),
        "train_tflops": table("training", "tflops"), "inference_tflops": table("inference", "tflops"),
        "end_to_end_windows_per_s": table("end_to_end"), **({"end_to_end_processes_windows_per_s": e2e_processes} if e2e_processes else {}),
        **({"end_to_end_augmented_processes_windows_per_s": e2e_augmented} if e2e_augmented else {}),
        "pipeline_windows_per_s": pipeline,
        **({"pipeline_processes_windows_per_s": pipeline_processes} if pipeline_processes else {}),
        **({"augmented_pipeline_windows_per_s": augmented} if augmented else {}), "peak_gpu_bytes": peaks,
        "meets_train_target": None if best_train is None else best_train >= TARGETS["train_windows_per_s"],
        "meets_inference_target": None if best_infer is None else best_infer >= TARGETS["inference_windows_per_s"],
        "pipeline_keeps_up": keeps_up,
        "errors": [" ".join(str(r[k]) for k in ("measure", "policy", "batch_size") if k in r) + f": {r['error']}" for r in records if "error" in r],
        "notes": notes, "records": records,
    }


def write_summary(summary: dict, out: Path | None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(summary) + "\n")
        os.replace(tmp, out)


def int_list(text: str) -> list[int]:
    """"4,16" -> [4, 16]; "" -> []."""
    return [int(w) for w in text.split(",") if w]


def run_benchmark(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    deadline = started + args.budget_s
    working_dir = Path(args.working_dir)
    note(f"synthetic cache in {working_dir}: {args.speakers} speakers x {args.utterances} utterances")
    cache = build_synthetic_cache(working_dir, args.speakers, args.utterances, args.pool_size)
    augmented_workers, augmented_processes = int_list(args.augmented_workers), int_list(args.augmented_processes)
    e2e_augmented_processes = int_list(args.e2e_augmented_processes)
    if augmented_workers or augmented_processes or e2e_augmented_processes:
        cache["waveforms"] = build_synthetic_waveforms(working_dir, min(args.pool_size, 200))
    cache["seconds"] = round(time.monotonic() - started, 2)
    note(f"cache ready: {cache}")
    policies = [p for p in args.policies.split(",") if p]  # None: the input pipeline alone.
    train_batches = int_list(args.train_batch_sizes)
    common = {"working_dir": str(working_dir), "model_size": args.model_size, "num_classes": cache["speakers"],
              "train_batch_sizes": train_batches, "infer_batch_sizes": int_list(args.infer_batch_sizes),
              "train_windows": args.train_windows, "e2e_windows": args.e2e_windows, "infer_seconds": args.infer_seconds,
              "input_workers": args.input_workers, "e2e_processes": int_list(args.e2e_processes),
              "e2e_augmented_processes": e2e_augmented_processes, "require_gpu": args.require_gpu,
              "block_modules": [m for m in args.block_modules.split(",") if m]}
    children = [({**common, "kind": "pipeline", "batch_size": train_batches[0], "pipeline_windows": args.pipeline_windows,
                  "pipeline_workers": int_list(args.pipeline_workers), "pipeline_processes": int_list(args.pipeline_processes),
                  "augmented_windows": args.augmented_windows, "augmented_workers": augmented_workers, "augmented_processes": augmented_processes}, True)]
    children += [({**common, "kind": "policy", "policy": p, "end_to_end": i == 0}, False) for i, p in enumerate(policies)]
    config = {k: v for k, v in vars(args).items() if k not in ("worker", "table", "out")} | {"cache": cache}
    records: list[dict] = []
    notes: list[str] = []
    for i, (spec, cpu_only) in enumerate(children):
        name = spec.get("policy", "pipeline")
        later = len(children) - i - 1
        remaining = deadline - time.monotonic()
        timeout_s = max(remaining - args.reserve_s * later, 0.5 * remaining)
        if remaining < args.min_worker_s:
            notes.append(f"{name}: not run, {remaining:.0f} s of the {args.budget_s:.0f} s budget left")
            continue
        note(f"worker {name} (at most {timeout_s:.0f} s)")
        new, stopped = run_child(spec, timeout_s, cpu_only)
        records += new
        if stopped:
            notes.append(f"{name}: {stopped}")
        write_summary(summarise(records, config, notes), args.out)
        if any(r.get("measure") == "environment" and "error" in r for r in new):
            notes.append("stopped: the environment cannot run this benchmark (see errors)")
            break
    notes.append(f"total {time.monotonic() - started:.0f} s")
    summary = summarise(records, config, notes)
    write_summary(summary, args.out)
    return summary


# ----------------------------------------------------------------------------------------------
# The results table for bench/README.md.


def markdown_table(summary: dict) -> str:
    """Rows of every training, end-to-end and inference figure of a summary, then the verdicts."""
    env = summary.get("environment", {})
    lines = [f"Device: {env.get('device_kind', '?')} ({env.get('jax_backend', '?')}), JAX {env.get('jax', '?')}, Keras {env.get('keras', '?')}, "
             f"model {summary['config']['model_size']}, {summary['config']['cache']['speakers']} classes.", "",
             "| measure | policy | batch | windows/s | TFLOP/s | compile s | peak GPU GiB |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in summary["records"]:
        if r.get("measure") not in ("training", "end_to_end", "inference"):
            continue
        measure = r["measure"] + (f" ({'augmented, ' if r.get('augmented') else ''}{r['input_workers']} processes)" if r.get("processes") else "")
        if "error" in r:
            lines.append(f"| {measure} | {r['policy']} | {r['batch_size']} | error: {r['error'][:60]} | | | |")
            continue
        rate = f"{r['windows_per_s']:,.0f}" + (f" ({r['host_io_windows_per_s']:,.0f} NumPy in/out)" if "host_io_windows_per_s" in r else "")
        tflops, compile_s, peak = r.get("tflops"), r.get("compile_s"), r.get("peak_gpu_bytes")
        lines.append(f"| {measure} | {r['policy']} | {r['batch_size']} | {rate} | {'' if tflops is None else f'{tflops:.3g}'} | "
                     f"{'' if compile_s is None else f'{compile_s:.1f}'} | {'' if peak is None else f'{peak / 2**30:.1f}'} |")
    pipeline = ", ".join([f"{w} threads {v:,.0f}" for w, v in summary["pipeline_windows_per_s"].items()]
                         + [f"{w} processes {v:,.0f}" for w, v in summary.get("pipeline_processes_windows_per_s", {}).items()])
    augmented = ", ".join(f"{readers} {v:,.0f}" for readers, v in summary.get("augmented_pipeline_windows_per_s", {}).items())
    lines += ["", f"Input pipeline alone (windows/s): {pipeline or 'not measured'}. Keeps up in training: {summary['pipeline_keeps_up']}.",
              *([f"Augmented reader alone (windows/s, speed, babble, band limit and masks as recipes/voxceleb2_resnet.json, no rooms): {augmented}."]
                if augmented else []),
              f"Targets ({TARGET_POLICY}): training {TARGETS['train_windows_per_s']:,} windows/s: {summary['meets_train_target']}; "
              f"inference {TARGETS['inference_windows_per_s']:,} windows/s: {summary['meets_inference_target']}."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--working_dir", default="/tmp/hive_bench", help="Where the synthetic feature cache goes (reused when there).")
    parser.add_argument("--tiny", action="store_true", help="Rehearsal sizes: small model, tiny cache and batches (CPU, seconds).")
    parser.add_argument("--require_gpu", action="store_true", help="Stop when JAX sees no GPU instead of measuring a CPU.")
    parser.add_argument("--model_size", default="full", choices=sorted(MODEL_FILTERS))
    parser.add_argument("--speakers", type=int, default=500, help="Speakers of the cache, and classes of the softmax model.")
    parser.add_argument("--utterances", type=int, default=40, help="Utterances per speaker.")
    parser.add_argument("--pool_size", type=int, default=1000, help="Distinct random feature files behind the entries.")
    parser.add_argument("--policies", default="mixed_bfloat16,float32,mixed_float16", help="Keras dtype policies, in order of importance; empty: the input pipeline alone.")
    parser.add_argument("--train_batch_sizes", default="1024,256,96", help="Training batch sizes; the first is also the end-to-end and pipeline batch.")
    parser.add_argument("--infer_batch_sizes", default="1024,256")
    parser.add_argument("--train_windows", type=int, default=16_384, help="Windows per timed training epoch.")
    parser.add_argument("--e2e_windows", type=int, default=16_384, help="Windows of the end-to-end epoch.")
    parser.add_argument("--pipeline_windows", type=int, default=16_384)
    parser.add_argument("--pipeline_workers", default="4,16", help="Reader threads of the pipeline-alone measure.")
    parser.add_argument("--augmented_workers", default="", help="Reader threads of the augmented-reader measure (synthetic cached audio), e.g. 1; none by default.")
    parser.add_argument("--augmented_processes", default="", help="Reader processes of the augmented-reader measure, e.g. 4,16; none by default.")
    parser.add_argument("--augmented_windows", type=int, default=8_192, help="Windows of each augmented-reader measure.")
    parser.add_argument("--pipeline_processes", default="", help="Reader processes of the pipeline-alone measure (PyDataset's use_multiprocessing), e.g. 4,16; none by default.")
    parser.add_argument("--input_workers", type=int, default=4, help="Reader threads end to end (TrainConfig.input_workers).")
    parser.add_argument("--e2e_augmented_processes", default="16", help="Reader processes of end-to-end measures with the augmented reader (synthetic cached audio); empty: none.")
    parser.add_argument("--e2e_processes", default="4", help="Reader processes of further end-to-end measures (train --input_processes); empty: none.")
    parser.add_argument("--infer_seconds", type=float, default=2.0, help="Timed inference seconds per batch size (at least 3 calls).")
    parser.add_argument("--budget_s", type=float, default=400, help="Wall-clock seconds for everything; workers still running then are stopped.")
    parser.add_argument("--reserve_s", type=float, default=45, help="Seconds kept for each worker still to come.")
    parser.add_argument("--min_worker_s", type=float, default=30, help="A worker is not started with less left than this.")
    parser.add_argument("--block_modules", default="", help="Comma-separated packages the workers may not import (e.g. tensorflow, to rehearse the GPU machine, which has none).")
    parser.add_argument("--out", type=Path, default=None, help="JSON summary file (default $OUT/bench_device.json when OUT is set).")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--table", type=Path, metavar="JSON", help="Print the Markdown table of a summary file and exit.")
    args = parser.parse_args(argv)
    if args.tiny:
        explicit = {a.split("=")[0].lstrip("-") for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--")}
        for key, value in TINY.items():
            if key not in explicit:
                setattr(args, key, value)
    if args.out is None and os.environ.get("OUT"):
        args.out = Path(os.environ["OUT"]) / "bench_device.json"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(json.loads(args.worker))
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return 0
    summary = run_benchmark(args)
    print(json.dumps(summary), flush=True)
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
