"""Training input pipeline at LibriSpeech scale: windows/s and peak RAM (a benchmark, not a test).

Builds a synthetic feature cache of 921 speakers x 100 utterances (train-clean-100 + 360 size)
with random features, then streams softmax, triplet and Hive-MTL batches from it as training
does, and optionally trains a few steps. The cache entries are hard links to a pool of distinct
random feature files of LibriSpeech-like lengths, so the benchmark needs a few hundred MB of
disk instead of tens of GB; the pipeline opens every entry by its own name as with real data.

The straightforward path, the reference's, materialises every softmax training window (speakers
x 600 windows x 160 x 64 float32) in one array: the script builds that array for a few speakers,
measures it, and prints what it would take for the whole corpus beside this pipeline's figures.

    python bench/bench_training.py --working_dir /tmp/bench_cache            # pipeline only
    python bench/bench_training.py --working_dir /tmp/bench_cache --train_steps 5 --model_size small
    python bench/bench_training.py --working_dir W --compare_precision 30 --model_size small   # float32 vs bfloat16 vs XLA

`--compare_precision N` trains the same initial weights on the same N pre-drawn batches (drawn
once into RAM, so only the model is timed) in float32, in float32 with XLA (`jit_compile`), and
in mixed precision (bfloat16 on a CPU with AVX512-BF16 or AMX, float16 on a GPU), side by side,
and prints windows/s and the loss curves, so a faster setting is also shown to learn the same.

`--output FILE.json` also writes every printed figure, as numbers, for `bench/render_tables.py`:

    python bench/bench_training.py --working_dir /tmp/bench_cache --train_steps 6 --model_size small --output bench/results/training_steps_small.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feature_cache import CORPUS_INDEX_FILE_NAME, cache_dir  # noqa: E402
from fileio import write_json_atomically  # noqa: E402
from batcher import SpeakerClassBatches, TripletBatches, load_training_data, read_window  # noqa: E402
from constants import BATCH_SIZE, NUM_FBANKS, NUM_FRAMES  # noqa: E402
from conv_models import ClippedReLU, FusedBatchNormalization  # noqa: E402
from render_tables import TRAINING_BASELINE as BASELINE, results_path, results_record, write_results  # noqa: E402

REFERENCE_WINDOWS_PER_SPEAKER = 600


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_synthetic_cache(working_dir: Path, speakers: int, utterances: int, pool_size: int, seed: int) -> None:
    """Random (frames, 64) features, LibriSpeech-like lengths (2-35 s), linked under every entry name."""
    directory = cache_dir(working_dir)
    if (working_dir / CORPUS_INDEX_FILE_NAME).is_file():
        return
    pool = working_dir / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(pool_size):
        frames = int(rng.integers(200, 3500))
        np.save(pool / f"{i}.npy", rng.standard_normal((frames, NUM_FBANKS), dtype=np.float32))
    index = {"audio_dir": "synthetic", "genders": {}, "speakers": {}}
    for s in range(speakers):
        speaker = str(10_000 + s)
        index["genders"][speaker] = "F" if s % 2 else "M"
        index["speakers"][speaker] = []
        for u in range(utterances):
            utterance = f"{s}-{u:04d}"
            entry = directory / f"{speaker}_{utterance}.npy"
            if not entry.exists():
                os.link(pool / f"{(s * utterances + u) % pool_size}.npy", entry)
            index["speakers"][speaker].append(utterance)
    write_json_atomically(working_dir / CORPUS_INDEX_FILE_NAME, index)


def time_batches(batches, num_batches: int) -> float:
    """Windows per second of drawing `num_batches` batches through Keras's PyDataset machinery."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(batches, shuffle=False)
    iterator = adapter.get_numpy_iterator()
    windows = 0
    start = time.perf_counter()
    for i, batch in enumerate(iterator):
        windows += len(batch[0])
        if i + 1 >= num_batches:
            break
    elapsed = time.perf_counter() - start
    adapter.on_epoch_end()
    return windows / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--working_dir", type=Path, required=True)
    parser.add_argument("--speakers", type=int, default=921)
    parser.add_argument("--utterances", type=int, default=100)
    parser.add_argument("--pool_size", type=int, default=2000, help="Distinct random feature files behind the entries.")
    parser.add_argument("--batches", type=int, default=200, help="Batches drawn per batcher.")
    parser.add_argument("--batch_size", type=int, default=BATCH_SIZE)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--reference_speakers", type=int, default=40, help="Speakers whose windows the straightforward path materialises (then scaled up).")
    parser.add_argument("--train_steps", type=int, default=0, help="Also train this many steps (softmax mode) and report windows/s.")
    parser.add_argument("--model_size", default="small", choices=["small", "full"])
    parser.add_argument("--compare_precision", type=int, default=0, metavar="STEPS",
                        help="Train STEPS identical batches in float32, float32 + XLA and mixed precision, side by side.")
    parser.add_argument("--output", type=results_path, metavar="FILE.json",
                        help="Also write every printed figure to this JSON file (for bench/render_tables.py).")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    if args.compare_precision:
        build_synthetic_cache(args.working_dir, args.speakers, args.utterances, args.pool_size, seed=0)
        part = compare_precision(load_training_data(args.working_dir), args.model_size, args.batch_size, args.compare_precision)
        if args.output:
            part |= {"backend": keras.backend.backend(), "speakers": args.speakers, "utterances": args.utterances}
            write_results(args.output, results_record("bench_training", load_at_start, part))
        return

    start = time.perf_counter()
    build_synthetic_cache(args.working_dir, args.speakers, args.utterances, args.pool_size, seed=0)
    cache_seconds = time.perf_counter() - start
    print(f"synthetic cache: {args.speakers} speakers x {args.utterances} utterances ready in {cache_seconds:.1f} s")

    data = load_training_data(args.working_dir)
    loader = {"workers": args.workers, "use_multiprocessing": False, "max_queue_size": 2 * args.workers}
    genders = data.gender_labels(data.speakers)
    results = {
        "softmax": time_batches(SpeakerClassBatches(data.train, data.speakers, args.batch_size, args.batches, **loader), args.batches),
        "triplet": time_batches(TripletBatches(data.train, args.batch_size, args.batches, **loader), args.batches),
        "mtl": time_batches(TripletBatches(data.train, args.batch_size, args.batches, outputs=("speaker_pred", "gender_pred"), speakers=data.speakers, task_values={"gender_pred": (genders, True)}, **loader), args.batches),
    }
    pipeline_peak = peak_rss_mb()
    print(f"input pipeline ({args.workers} reader threads, batch {args.batch_size}):")
    for mode, rate in results.items():
        print(f"  {mode:8s} {rate:10.0f} windows/s")
    print(f"peak RAM of this process (index + pipeline, TensorFlow loaded): {pipeline_peak:.0f} MB")

    reference_rate, reference_gb = materialise_like_the_reference(data.train, args.reference_speakers)
    array_gb = len(data.train) * REFERENCE_WINDOWS_PER_SPEAKER * NUM_FRAMES * NUM_FBANKS * 4 / 2**30
    print(f"straightforward path (the reference's): every softmax window in one array, built at {reference_rate:.0f} windows/s; "
          f"measured on {args.reference_speakers} speakers and scaled to {len(data.train)}: {reference_gb:.1f} GB of RAM while "
          f"building ({reference_gb * 1024 / pipeline_peak:.0f}x this pipeline's peak; the finished array alone: {array_gb:.1f} GB)")
    summary = {"speakers": args.speakers, "utterances": args.utterances, "pipeline_windows_per_s": results, "peak_rss_mb": pipeline_peak,
               "reference_windows_per_s": reference_rate, "reference_gb": reference_gb}
    if args.train_steps:
        from train_config import TrainConfig
        from training_models import build_model

        model = build_model(TrainConfig(mode="softmax", model_size=args.model_size, batch_size=args.batch_size), len(data.speakers), False)
        batches = SpeakerClassBatches(data.train, data.speakers, args.batch_size, args.train_steps + 1, **loader)
        timer = StepTimer()
        model.fit(batches, epochs=1, verbose=0, callbacks=[timer])
        rate = args.batch_size * (len(timer.times) - 1) / sum(timer.times[1:])  # The first step traces the graph.
        print(f"training ({args.model_size} model, {keras.backend.backend()}): {rate:.1f} windows/s; peak RAM {peak_rss_mb():.0f} MB")
        summary |= {"train_windows_per_s": rate, "model_size": args.model_size, "peak_rss_mb_training": peak_rss_mb()}
    print(json.dumps(summary))
    if args.output:
        rows = [{"path": f"input pipeline, {mode} batches", "batches": mode, "windows_per_s": rate} for mode, rate in results.items()]
        rows.append({"path": "reference: every softmax window in one array", "windows_per_s": reference_rate, "ram_gb_while_building": reference_gb,
                     "array_gb": array_gb, "ratio_to_pipeline_peak": reference_gb * 1024 / pipeline_peak, "measured_speakers": args.reference_speakers})
        if args.train_steps:
            rows.append({"path": f"training, {args.model_size} model", "windows_per_s": summary["train_windows_per_s"],
                         "peak_rss_mb": summary["peak_rss_mb_training"], "steps": args.train_steps})
        part = {"mode": "train_steps" if args.train_steps else "pipeline", "model_size": args.model_size, "backend": keras.backend.backend(),
                "speakers": args.speakers, "utterances": args.utterances, "batch_size": args.batch_size, "batches": args.batches,
                "workers": args.workers, "synthetic_cache_s": cache_seconds, "peak_rss_mb": pipeline_peak, "rows": rows}
        write_results(args.output, results_record("bench_training", load_at_start, part))


def compare_precision(data, model_size: str, batch_size: int, steps: int) -> dict:
    """Windows/s and loss curves of the training settings on the same batches and weights.

    The baseline is the model as it was built before the fused batch norm (Keras's own
    BatchNormalization and the clipped ReLU written min(max(x, 0), 20)) in float32; then the model
    as built now in float32, with XLA, in mixed precision, and mixed precision with Keras's batch
    norm, which splits the gain between the two changes. Returns the figures it printed: one row
    per setting ("path", its policy and XLA flag, windows/s, the ratio to the baseline, the first
    and last loss, the largest gap to the baseline's losses, and every loss)."""
    from precision import mixed_precision_policy

    source = SpeakerClassBatches(data.train, data.speakers, batch_size, steps, seed=0)
    batches = [source[i] for i in range(steps)]
    mixed = mixed_precision_policy()
    settings = {  # name: (policy, jit_compile, layers as before)
        BASELINE: ("float32", False, True),
        "float32": ("float32", False, False),
        mixed: (mixed, False, False),
        f"{mixed}, Keras batch norm": (mixed, False, True),
        "float32 + XLA": ("float32", True, False),  # Last: XLA's own thread pool would stay behind for the others.
    }
    results = {}
    initial = None
    for name, (policy, jit, before) in settings.items():
        keras.mixed_precision.set_global_policy(policy)
        model = softmax_model(data, model_size, batch_size, before)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", jit_compile=jit)
        initial = initial or model.get_weights()
        model.set_weights(initial)
        model.optimizer.build(model.trainable_variables)
        fresh_optimizer = [variable.numpy() for variable in model.optimizer.variables]
        model.train_on_batch(*batches[0])  # Trace and compile; then restart from the same weights and optimizer state.
        model.set_weights(initial)
        for variable, value in zip(model.optimizer.variables, fresh_optimizer):
            variable.assign(value)
        losses, start = [], time.perf_counter()
        for x, y in batches:
            losses.append(float(model.train_on_batch(x, y, return_dict=True)["loss"]))  # The model also keeps build_model's accuracy.
        rate = batch_size * steps / (time.perf_counter() - start)
        results[name] = {"windows_per_s": rate, "losses": losses}
        keras.mixed_precision.set_global_policy("float32")
    base = results[BASELINE]
    print(f"training the {model_size} model, batch {batch_size}, {steps} identical batches ({keras.backend.backend()}):")
    rows = []
    for name, result in results.items():
        gap = max(abs(a - b) for a, b in zip(result["losses"], base["losses"]))
        rows.append({"path": name, "policy": settings[name][0], "jit_compile": settings[name][1], "keras_batch_norm": settings[name][2],
                     "windows_per_s": result["windows_per_s"], "ratio": result["windows_per_s"] / base["windows_per_s"],
                     "loss_first": result["losses"][0], "loss_last": result["losses"][-1], "largest_loss_gap": gap, "losses": result["losses"]})
        print(f"  {name:38s} {result['windows_per_s']:7.1f} windows/s  ({rows[-1]['ratio']:.2f}x the baseline)  "
              f"loss {result['losses'][0]:.3f} -> {result['losses'][-1]:.3f}, largest gap to the baseline's {gap:.3f}")
    print(json.dumps({"model_size": model_size, "batch_size": batch_size, "steps": steps, "results": results}))
    return {"mode": "compare_precision", "model_size": model_size, "batch_size": batch_size, "steps": steps, "rows": rows}


class MaxMinClippedReLU(ClippedReLU):
    """The clipped ReLU as the model wrote it before: min(max(x, 0), 20), the same numbers."""

    def call(self, inputs):
        return keras.ops.minimum(keras.ops.maximum(inputs, 0.0), self.max_value)


def softmax_model(data, model_size: str, batch_size: int, layers_as_before: bool) -> keras.Model:
    """`training_models.build_model`'s softmax model (dropout off, so every setting draws the same masks: none).

    `layers_as_before`: Keras's BatchNormalization and `MaxMinClippedReLU` in place of the
    model's own layers, with the same names and weights."""
    from train_config import TrainConfig
    from training_models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(TrainConfig(mode="softmax", model_size=model_size, batch_size=batch_size), len(data.speakers), False)

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.Dropout):
            config["rate"] = 0.0
        if layers_as_before and isinstance(layer, FusedBatchNormalization):
            return keras.layers.BatchNormalization.from_config(config)
        if layers_as_before and isinstance(layer, ClippedReLU):
            return MaxMinClippedReLU.from_config(config)
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone)


def materialise_like_the_reference(utterances: dict[str, list[Path]], num_speakers: int) -> tuple[float, float]:
    """Build the reference's array of all softmax windows for `num_speakers` speakers.

    Returns windows/s of building it and the RAM the array would take for every speaker (GB),
    scaled from the measured growth of this process.
    """
    speakers = list(utterances)[:num_speakers]
    rng = np.random.default_rng(0)
    before = current_rss_mb()
    start = time.perf_counter()
    windows = np.stack([
        read_window(entries[rng.integers(len(entries))], rng)
        for speaker in speakers for entries in [utterances[speaker]] for _ in range(REFERENCE_WINDOWS_PER_SPEAKER)
    ])
    elapsed = time.perf_counter() - start
    grown_mb = max(current_rss_mb() - before, windows.nbytes / 2**20)
    del windows
    return len(speakers) * REFERENCE_WINDOWS_PER_SPEAKER / elapsed, grown_mb / 1024 * len(utterances) / len(speakers)


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class StepTimer(keras.callbacks.Callback):
    """Records each training step's wall time."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self.start)


if __name__ == "__main__":
    main()
