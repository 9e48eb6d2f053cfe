"""Inference speed: compiled `Embedder` batches vs `model.predict` (a benchmark, not a test).

Two figures, each with its ratio:
- windows/s: `model.m.predict(window[None])` one 160-frame window at a time (the reference's
  way) vs `Embedder.embed_windows` (one compiled function on fixed batches of windows);
- files/s for whole-utterance embeddings of the bundled samples: one `model.predict` per file
  on its sliding windows vs `Embedder.embed_files` (windows of all files batched together).
Both paths read the same random weights; the largest difference of their embeddings is printed.
Compilation (the first call) is timed apart from the steady state.

    python bench/bench_inference.py                          # full model, 64 windows, CPU
    python bench/bench_inference.py --model_size small --windows 256 --batch_size 64
    KERAS_BACKEND=jax python bench/bench_inference.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from constants import INFERENCE_BATCH_SIZE, MODEL_FILTERS  # noqa: E402
from conv_models import DeepSpeakerModel  # noqa: E402
from inference import Embedder, expand_audio_paths, l2_normalize, read_features, segment_means, utterance_windows  # noqa: E402


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def real_windows(mfccs: list[np.ndarray], count: int) -> np.ndarray:
    """`count` real windows: the sliding windows of the samples, cycled."""
    pool = np.concatenate([utterance_windows(m) for m in mfccs])
    return pool[np.arange(count) % len(pool)]


def predict_per_window(model: keras.Model, windows: np.ndarray) -> np.ndarray:
    return np.concatenate([model.predict(window[np.newaxis], verbose=0) for window in windows])


def predict_per_file(model: keras.Model, mfccs: list[np.ndarray]) -> np.ndarray:
    """Whole-utterance embeddings the plain way: one `predict` call on each file's windows."""
    means = [segment_means(model.predict(utterance_windows(m), verbose=0), np.array([len(utterance_windows(m))]))[0] for m in mfccs]
    return l2_normalize(np.stack(means))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_size", choices=sorted(MODEL_FILTERS), default="full")
    parser.add_argument("--windows", type=int, default=64, help="Windows timed on each path (default 64).")
    parser.add_argument("--batch_size", type=int, default=INFERENCE_BATCH_SIZE, help=f"Embedder batch (default {INFERENCE_BATCH_SIZE}).")
    parser.add_argument("--jit_compile", action="store_true", help="TensorFlow: compile the Embedder's function with XLA.")
    parser.add_argument("--skip_files", action="store_true", help="Only the windows/s figure.")
    args = parser.parse_args()

    files = expand_audio_paths([REPO / "samples"])
    mfccs = read_features(files)
    windows = real_windows(mfccs, args.windows)
    model = DeepSpeakerModel(model_size=args.model_size).m
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, model {args.model_size}, {os.cpu_count()} CPUs, "
          f"{args.windows} windows, batch {args.batch_size}{', XLA' if args.jit_compile else ''}")

    _, first_predict = timed(predict_per_window, model, windows[:1])
    reference, predict_time = timed(predict_per_window, model, windows)
    embedder = Embedder(model, args.batch_size, args.jit_compile)
    _, compile_time = timed(embedder.embed_windows, windows[:1])
    embeddings, embedder_time = timed(embedder.embed_windows, windows)
    predict_rate, embedder_rate = len(windows) / predict_time, len(windows) / embedder_time
    print(f"windows/s  predict one window at a time: {predict_rate:8.1f}   (first call {first_predict:.2f} s)")
    print(f"windows/s  Embedder (compiled batches):  {embedder_rate:8.1f}   (first call, tracing {embedder.traces}x: {compile_time:.2f} s)")
    print(f"ratio {embedder_rate / predict_rate:.2f}x   max |difference| {np.abs(embeddings - reference).max():.2e}")

    if args.skip_files:
        return
    predict_per_file(model, mfccs[:1])  # Warm-up.
    per_file, per_file_time = timed(predict_per_file, model, mfccs)
    embedder.embed_files(files[:1])  # Warm-up (already traced).
    batched, files_time = timed(embedder.embed_files, files)
    per_file_rate, files_rate = len(files) / per_file_time, len(files) / files_time
    num_windows = sum(len(utterance_windows(m)) for m in mfccs)
    print(f"files/s    one predict per file:         {per_file_rate:8.2f}   ({len(files)} bundled samples, {num_windows} windows, features precomputed)")
    print(f"files/s    Embedder.embed_files:         {files_rate:8.2f}   (features read from audio included)")
    print(f"ratio {files_rate / per_file_rate:.2f}x   max |difference| {np.abs(batched - per_file).max():.2e}")


if __name__ == "__main__":
    main()
