"""Inference speed and accuracy: `Embedder` in float32 and bfloat16, and the TFLite files, against `model.predict`.

A benchmark, not a test. Each part prints the straightforward path beside this project's,
measured in the same run: the paths take turns (`--repeats` rounds, each path once a round) so
that other work on a shared machine slows them alike, and each path's best round is reported,
with its median and the CPU seconds this process spent. Compilation (the first call) is left out.

1. Windows/s (default): the full model (random weights, batch norms moved off the identity so
   folding them is real work) on the same real windows of the bundled samples:
   `model.predict(window[None])` one window a call; `model.predict(windows, batch_size=32)`,
   the reference's batched predict; `Embedder(model)` (the Keras model as is, float32, as the
   training loop uses it); `Embedder(model, precision=...)` in float32 and bfloat16 (batch norms
   folded, `inference.inference_model`). Also the cosine of the bfloat16 embeddings to float32's.
2. `--end_to_end`: the shipped model (`pretrained/model.h5`) on audio files (default: the 100
   files of LibriSpeech test-other), decode + features + model, in x real time (audio seconds
   per wall-clock second). The reference path: bench_features.py's reference features
   (librosa.load, 95th-percentile trim, python_speech_features fbank, the per-frame loop), then
   one `model.predict` (batches of 32, float32) per file on its sliding windows, their mean,
   L2-normalised. This project's: `Embedder.from_checkpoint(..., precision=P).embed_files(files)`
   for float32 and auto; with `--tflite`, the exported TFLite files too (`audio.read_audio`, then
   the interpreter).
3. `--accuracy`: EER and minDCF (p_target 0.01) per held-out corpus (test-other, VCTK, FSDD;
   all pairs, `verification.corpus_verification`, as `cli.py test-model` scores them) of the shipped
   model through each path: Embedder float32 and bfloat16, TFLite float32 and int8; with the
   cosine of each path's embeddings to Embedder float32's.

`--threads` (default 2) sets TensorFlow's intra- and inter-op threads and the TFLite
interpreter's. The TFLite files are exported once into `--export_dir` (default: a temporary
folder) and reused from there. `--output FILE.json` also writes every printed figure of the part
that ran, as numbers, for `bench/render_tables.py` (one part a file).

    python bench/bench_inference.py                                  # windows/s, full model
    python bench/bench_inference.py --model_size small --windows 512
    python bench/bench_inference.py --end_to_end --tflite --export_dir /tmp/shipped_export
    python bench/bench_inference.py --accuracy --export_dir /tmp/shipped_export
    python bench/bench_inference.py --windows 96 --repeats 5 --output bench/results/inference_windows_full.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from audio import read_audio  # noqa: E402
from constants import INFERENCE_BATCH_SIZE, MODEL_FILTERS  # noqa: E402
from conv_models import DeepSpeakerModel  # noqa: E402
from inference import (  # noqa: E402
    Embedder,
    expand_audio_paths,
    l2_normalize,
    load_embedding_model,
    pretrained_checkpoint,
    read_features,
    resolve_precision,
    utterance_windows,
)
from render_tables import results_path, results_record, write_results  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data"
END_TO_END_FILES = SHARED_DATA / "LibriSpeech" / "test-other"
ACCURACY_CORPORA = [SHARED_DATA / "LibriSpeech" / "test-other", SHARED_DATA / "VCTK", SHARED_DATA / "FSDD"]


@dataclass
class Timings:
    """Wall and CPU seconds of each round of one path."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.wall)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)


def set_threads(threads: int) -> None:
    """TensorFlow's thread pools (before its first operation); other backends keep theirs."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def round_robin(paths: dict[str, Callable[[], np.ndarray]], repeats: int) -> tuple[dict[str, Timings], dict[str, np.ndarray]]:
    """Each path once (warm-up, compilation; its result kept), then `repeats` rounds of every path in turn."""
    results = {name: run() for name, run in paths.items()}
    timings = {name: Timings() for name in paths}
    for _ in range(repeats):
        for name, run in paths.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            timings[name].wall.append(time.perf_counter() - wall)
            timings[name].cpu.append(time.process_time() - cpu)
    return timings, results


def rate_rows(timings: dict[str, Timings], amount: float, baseline: str) -> list[dict]:
    """Per path: `amount` per second of its best round ("rate") and of its median round, its fewest CPU
    seconds of a round and `amount` per such CPU second, the ratio of its rate to `baseline`'s, and every round's seconds."""
    return [{"path": name, "rate": amount / timing.best, "median_rate": amount / timing.median, "cpu_s": min(timing.cpu),
             "cpu_rate": amount / min(timing.cpu), "ratio": timings[baseline].best / timing.best, "wall_s_rounds": timing.wall,
             "cpu_s_rounds": timing.cpu} for name, timing in timings.items()]


def print_rates(rows: list[dict], unit: str, baseline: str) -> None:
    """One line per path: `amount` per best-round second, median, CPU seconds, and the ratio to `baseline`."""
    width = max(len(row["path"]) for row in rows)
    for row in rows:
        print(f"  {row['path']:<{width}}  {row['rate']:9.1f} {unit} (median {row['median_rate']:8.1f}; CPU {row['cpu_s']:6.2f} s)   "
              f"{row['ratio']:5.2f}x {baseline}")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=1)


# ----------------------------------------------------------------------------------------------
# 1. Windows/s of one model.


def randomize_batch_norms(model: keras.Model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.get_weights()[0].shape
            layer.set_weights([rng.uniform(0.5, 1.5, shape), rng.normal(0, 0.1, shape), rng.normal(0, 0.1, shape), rng.uniform(0.5, 1.5, shape)])


def real_windows(count: int) -> np.ndarray:
    """`count` real windows: the sliding windows of the bundled samples, cycled."""
    pool = np.concatenate([utterance_windows(m) for m in read_features(expand_audio_paths([REPO / "samples"]))])
    return pool[np.arange(count) % len(pool)]


def windows_per_second(args: argparse.Namespace) -> dict:
    windows = real_windows(args.windows)
    model = DeepSpeakerModel(model_size=args.model_size).m
    randomize_batch_norms(model, seed=0)
    embedders = {
        "Embedder, Keras model (float32)": Embedder(model, args.batch_size, args.jit_compile),
        "Embedder, float32 (folded)": Embedder(model, args.batch_size, args.jit_compile, precision="float32"),
        "Embedder, bfloat16 (folded)": Embedder(model, args.batch_size, args.jit_compile, precision="bfloat16"),
    }
    paths = {
        "predict, one window a call": lambda: np.concatenate([model.predict(w[np.newaxis], verbose=0) for w in windows]),
        f"predict, batches of {args.batch_size}": lambda: model.predict(windows, batch_size=args.batch_size, verbose=0),
        **{name: (lambda e=embedder: e.embed_windows(windows)) for name, embedder in embedders.items()},
    }
    print(f"windows/s, model {args.model_size}, {len(windows)} real windows, Embedder batches of {args.batch_size}"
          f"{', XLA' if args.jit_compile else ''}; best of {args.repeats} rounds")
    timings, results = round_robin(paths, args.repeats)
    baseline = f"predict, batches of {args.batch_size}"
    rows = rate_rows(timings, len(windows), baseline)
    print_rates(rows, "windows/s", baseline)
    reference = results[baseline]
    for row, (name, embeddings) in zip(rows, results.items()):
        similarity = cosines(embeddings, reference)
        row |= {"max_difference": float(np.abs(embeddings - reference).max()),
                "cosine_min": float(similarity.min()), "cosine_mean": float(similarity.mean())}
        print(f"  {name}: max |difference| to batched predict {row['max_difference']:.1e}, "
              f"cosine min {row['cosine_min']:.6f} mean {row['cosine_mean']:.6f}")
    return {"mode": "windows", "model_size": args.model_size, "windows": len(windows), "batch_size": args.batch_size,
            "jit_compile": args.jit_compile, "unit": "windows/s", "baseline": baseline, "rows": rows}


# ----------------------------------------------------------------------------------------------
# 2. End to end: decode, features, model.


def reference_feature_path() -> Callable[[Path], np.ndarray]:
    """bench_features.py's reference path. Importing it holds BLAS pools to one thread through
    environment variables (for its one-core figures); they are put back, since NumPy has long started."""
    saved = dict(os.environ)
    sys.path.insert(0, str(REPO / "bench"))
    import bench_features

    os.environ.clear()
    os.environ.update(saved)
    return bench_features.reference_features


def reference_embed_files(model: keras.Model, files: list[Path], features: Callable[[Path], np.ndarray]) -> np.ndarray:
    """The reference's way: per file, its features, then one `predict` on its sliding windows; their mean, normalised."""
    means = [model.predict(utterance_windows(features(path)), batch_size=INFERENCE_BATCH_SIZE, verbose=0).mean(axis=0) for path in files]
    return l2_normalize(np.stack(means))


def exported_shipped_model(export_dir: Path | None) -> Path:
    """The folder holding the shipped model's export (made there when missing)."""
    from export import TFLITE_FILE_NAME, export_embedding_model

    folder = Path(export_dir) if export_dir else Path(tempfile.mkdtemp(prefix="shipped_export_"))
    if not (folder / TFLITE_FILE_NAME).is_file():
        start = time.perf_counter()
        export_embedding_model(pretrained_checkpoint(), folder)
        print(f"exported the shipped model to {folder} in {time.perf_counter() - start:.0f} s")
    return folder


def tflite_paths(export_dir: Path | None, threads: int) -> dict[str, Callable[[list[Path]], np.ndarray]]:
    """name -> embed(files) through each TFLite file: `audio.read_audio`, then the interpreter."""
    from export import INT8_TFLITE_FILE_NAME, TFLITE_FILE_NAME, tflite_embedder

    folder = exported_shipped_model(export_dir)
    paths = {}
    for name, file_name in (("TFLite float32", TFLITE_FILE_NAME), ("TFLite int8", INT8_TFLITE_FILE_NAME)):
        embed = tflite_embedder(folder / file_name, num_threads=threads)
        paths[f"{name} ({(folder / file_name).stat().st_size / 2**20:.1f} MB)"] = (
            lambda files, embed=embed: np.stack([embed(read_audio(path))["embedding"] for path in files])
        )
    return paths


def end_to_end(args: argparse.Namespace) -> dict:
    import soundfile

    files = expand_audio_paths([args.audio_dir])[: args.files]
    audio_seconds = sum(soundfile.info(path).duration for path in files)
    checkpoint = pretrained_checkpoint()
    model = load_embedding_model(checkpoint)
    features = reference_feature_path()
    auto = Embedder.from_checkpoint(checkpoint, precision="auto")
    paths = {
        "reference: librosa + psf features, predict per file": lambda: reference_embed_files(model, files, features),
        "Embedder.embed_files, float32": lambda e=Embedder.from_checkpoint(checkpoint, precision="float32"): e.embed_files(files),
        f"Embedder.embed_files, auto ({auto.precision})": lambda: auto.embed_files(files),
    }
    if args.tflite:
        paths.update({name: (lambda embed=embed: embed(files)) for name, embed in tflite_paths(args.export_dir, args.threads).items()})
    print(f"end to end (decode, features, model), shipped model, {len(files)} files of {args.audio_dir} "
          f"({audio_seconds:.1f} s of audio); x real time, best of {args.repeats} rounds")
    timings, results = round_robin(paths, args.repeats)
    rows = rate_rows(timings, audio_seconds, next(iter(paths)))
    print_rates(rows, "x real time", next(iter(paths)))
    float32 = results["Embedder.embed_files, float32"]
    for row, (name, embeddings) in zip(rows, results.items()):
        similarity = cosines(embeddings, float32)
        row |= {"cosine_min": float(similarity.min()), "cosine_mean": float(similarity.mean())}
        print(f"  {name}: cosine to Embedder float32 min {row['cosine_min']:.6f} mean {row['cosine_mean']:.6f}")
    return {"mode": "end_to_end", "audio_dir": str(args.audio_dir), "files": len(files), "audio_seconds": audio_seconds,
            "unit": "x real time", "baseline": next(iter(paths)), "rows": rows}


# ----------------------------------------------------------------------------------------------
# 3. Accuracy per corpus.


def accuracy(args: argparse.Namespace) -> dict:
    from verification import corpus_verification, evaluation_corpora

    checkpoint = pretrained_checkpoint()
    embed_paths = {
        f"Embedder {precision}": (lambda files, e=Embedder.from_checkpoint(checkpoint, precision=precision): e.embed_files(files))
        for precision in ("float32", "bfloat16")
    }
    embed_paths.update(tflite_paths(args.export_dir, args.threads))
    corpora = evaluation_corpora(args.eval_audio_dirs, {})
    every_file = sorted({str(p) for corpus in corpora for paths in corpus.speakers.values() for p in paths})
    print(f"accuracy of the shipped model per held-out corpus (all pairs; EER, minDCF p_target 0.01), {len(every_file)} files")
    embeddings, rows = {}, []
    for name, embed in embed_paths.items():
        embeddings[name] = dict(zip(every_file, embed(every_file)))
        figures, _ = corpus_verification(corpora, lambda files, known=embeddings[name]: np.stack([known[str(f)] for f in files]), None, seed=0)
        line = "   ".join(f"{corpus} EER {f['eer']:.4f} minDCF {f['min_dcf_001']:.3f}" for corpus, f in figures.items())
        print(f"  {name:<28} {line}")
        rows.append({"path": name, "corpora": {corpus: {"eer": float(f["eer"]), "min_dcf_001": float(f["min_dcf_001"]), "trials": f["num_trials"]}
                                               for corpus, f in figures.items()}})
    float32 = np.stack([embeddings["Embedder float32"][f] for f in every_file])
    for row, (name, known) in zip(rows, embeddings.items()):
        similarity = cosines(np.stack([known[f] for f in every_file]), float32)
        row |= {"cosine_min": float(similarity.min()), "cosine_mean": float(similarity.mean())}
        print(f"  {name}: cosine to Embedder float32 min {row['cosine_min']:.6f} mean {row['cosine_mean']:.6f}")
    return {"mode": "accuracy", "eval_audio_dirs": args.eval_audio_dirs, "files": len(every_file), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra- and inter-op threads, TFLite threads (default 2).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed rounds of every path (default 3).")
    parser.add_argument("--model_size", choices=sorted(MODEL_FILTERS), default="full", help="Windows/s: the model (default full).")
    parser.add_argument("--windows", type=int, default=128, help="Windows/s: windows per round (default 128).")
    parser.add_argument("--batch_size", type=int, default=INFERENCE_BATCH_SIZE, help=f"Embedder and batched predict (default {INFERENCE_BATCH_SIZE}).")
    parser.add_argument("--jit_compile", action="store_true", help="TensorFlow: compile the Embedder's function with XLA.")
    parser.add_argument("--end_to_end", action="store_true", help="x real time of the shipped model on --audio_dir, decode included.")
    parser.add_argument("--audio_dir", default=str(END_TO_END_FILES), help="End to end: the files (default LibriSpeech test-other).")
    parser.add_argument("--files", type=int, default=100, help="End to end: the first N files (default 100).")
    parser.add_argument("--tflite", action="store_true", help="End to end: the TFLite files too.")
    parser.add_argument("--accuracy", action="store_true", help="EER per corpus of the shipped model through every path.")
    parser.add_argument("--eval_audio_dir", dest="eval_audio_dirs", action="append",
                        help="Accuracy: a held-out corpus (repeatable; default test-other, VCTK, FSDD of ../shared/data).")
    parser.add_argument("--export_dir", type=Path, help="TFLite: the shipped model's export, made here when missing (default: a temporary folder).")
    parser.add_argument("--output", type=results_path, metavar="FILE.json",
                        help="Also write every printed figure to this JSON file (for bench/render_tables.py); one part a file.")
    args = parser.parse_args()
    if args.output and args.end_to_end and args.accuracy:
        parser.error("--output holds one part: run --end_to_end and --accuracy separately, each with its own file")
    load_at_start = os.getloadavg()[0]
    args.eval_audio_dirs = args.eval_audio_dirs or [str(d) for d in ACCURACY_CORPORA]
    set_threads(args.threads)
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, {os.cpu_count()} CPUs, {args.threads} threads, "
          f"precision auto = {resolve_precision('auto')}")
    if args.end_to_end:
        part = end_to_end(args)
    if args.accuracy:
        part = accuracy(args)
    if not (args.end_to_end or args.accuracy):
        part = windows_per_second(args)
    if args.output:
        settings = {"backend": keras.backend.backend(), "threads": args.threads, "repeats": args.repeats, "precision_auto": resolve_precision("auto")}
        write_results(args.output, results_record("bench_inference", load_at_start, {**part, **settings}))


if __name__ == "__main__":
    main()
