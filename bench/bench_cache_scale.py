"""The feature cache and the training input at VoxCeleb scale (a benchmark, not a test).

Makes a synthetic corpus of N real-speech files in the VoxCeleb layout
(`<root>/idNNNNN/<video>/<utt>.wav`, 100 utterances a speaker by default) from the 16 kHz
recordings of `../shared/data` (LibriSpeech, VCTK): each file a random crop (1 to 3 s by
default) of a random recording, with a random gain (+-6 dB) and white noise at a random SNR
(15 to 40 dB), so that no two entries are the same. The corpus goes to a folder outside the
repository (default `/tmp/scale_corpus_<N>`) and is reused when complete. Then it measures:

1. the feature cache build (`audio.build_feature_cache`, every core): entries/s, the CPU
   seconds per entry, and the peak RAM of the main process and of the largest worker;
2. the corpus index (`corpus.json`): its size on disk, and the time of the steps around the
   feature work (indexing the folder, checking entry sources, writing the index), each at a
   tenth of the corpus and at all of it, so that a step growing faster than linearly shows as
   a per-entry cost that grows with N;
3. the time to start a training run, from the cache to the first batch: reading and splitting
   the index (`load_training_data`), writing the run's speakers.json and split.json, the label
   tasks' values, the batch stream and its first batch (the model's build and compile are not
   counted: they do not depend on the corpus);
4. the streamed reader (`batcher.SpeakerClassBatches`, what feeds softmax/AAM training; no
   model) in one thread: windows per wall second and per CPU second, and how many such cores
   the GPU target of 10,000 training windows/s (full model, one H100/H200) takes; with
   `--waveforms TRIM`, also the augmented reader (`batcher.AugmentedBatches` with the speed,
   noise, band-limit and mask probabilities of `recipes/voxceleb2_resnet.json`, babble and
   coloured noise in place of its MUSAN folder, no reverberation), which cuts each window from
   the cached audio and computes its features after augmenting it.

    nice -n 5 python bench/bench_cache_scale.py --entries 2000                      # rehearsal
    nice -n 5 python bench/bench_cache_scale.py --entries 100000 --output bench/results/cache_scale.json
    nice -n 5 python bench/bench_cache_scale.py --entries 2000 --waveforms energy --output bench/results/cache_scale_waveforms.json

The cache (about 50 kB an entry) and the corpus (about 64 kB an entry) need about 12 GB of disk
at 100,000 entries; `--keep` keeps them, otherwise the cache is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# Keras and TensorFlow are imported only after the cache build (inside the functions that need
# them), as `cli.py build-mfcc-cache` does: the build's worker processes re-import this module.
from audio import read_audio  # noqa: E402
from corpus import Corpus, index_corpus  # noqa: E402
from feature_cache import (  # noqa: E402
    CORPUS_INDEX_FILE_NAME,
    build_feature_cache,
    cache_dir,
    check_entry_sources,
    waveform_cache_dir,
    write_corpus_index,
)
from constants import SAMPLE_RATE  # noqa: E402
from render_tables import results_path, results_record, write_results  # noqa: E402

GPU_TARGET_WINDOWS_PER_S = 10_000  # Full model, one H100/H200 (bench/README.md, "GPU").
SOURCE_FOLDERS = ("LibriSpeech/train-clean-100", "LibriSpeech/test-other", "VCTK")
COMPLETE_MARKER = ".complete"


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def cpu_seconds() -> float:
    """CPU time of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def source_recordings(data_dir: Path, limit: int) -> list[np.ndarray]:
    """Up to `limit` 16 kHz recordings of at least 3 s, decoded once."""
    files = sorted(p for folder in SOURCE_FOLDERS for p in (data_dir / folder).rglob("*") if p.suffix.lower() in (".flac", ".wav"))
    if not files:
        raise SystemExit(f"{data_dir}: none of {', '.join(SOURCE_FOLDERS)} holds FLAC or WAV files")
    step = max(1, len(files) // limit)
    recordings = [read_audio(path, SAMPLE_RATE) for path in tqdm(files[::step][:limit], desc="sources", unit="file")]
    return [r for r in recordings if len(r) >= 3 * SAMPLE_RATE]


def make_corpus(root: Path, entries: int, per_speaker: int, min_seconds: float, max_seconds: float, data_dir: Path, seed: int) -> float:
    """Write the synthetic corpus (reused when a complete one of that size is there); returns the seconds it took."""
    marker = root / COMPLETE_MARKER
    if marker.is_file() and marker.read_text().strip() == str(entries):
        return 0.0
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    sources = source_recordings(data_dir, 300)
    videos_per_speaker = 5
    for number in tqdm(range(entries), desc="corpus", unit="file"):
        speaker, utterance = divmod(number, per_speaker)
        path = root / f"id{10000 + speaker:05d}" / f"v{utterance % videos_per_speaker:02d}" / f"{utterance:05d}.wav"
        if number % per_speaker == 0:
            for video in range(videos_per_speaker):
                (path.parent.parent / f"v{video:02d}").mkdir(parents=True, exist_ok=True)
        recording = sources[int(rng.integers(len(sources)))]
        length = min(len(recording), int(rng.uniform(min_seconds, max_seconds) * SAMPLE_RATE))
        begin = int(rng.integers(0, len(recording) - length + 1))
        crop = recording[begin : begin + length] * np.float32(10 ** (rng.uniform(-6, 6) / 20))
        noise_scale = np.sqrt(np.mean(crop**2) / 10 ** (rng.uniform(15, 40) / 10))
        noisy = crop + noise_scale * rng.standard_normal(length, dtype=np.float32)
        soundfile.write(path, np.clip(noisy, -1, 1), SAMPLE_RATE, subtype="PCM_16")
    marker.write_text(f"{entries}\n")
    return time.perf_counter() - start


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def index_steps(corpus: Corpus, working_dir: Path, scratch: Path, fractions: tuple[float, ...]) -> list[dict]:
    """Seconds per 1,000 entries of the steps around the feature work, on the first part of the corpus and on all of it.

    Each size gets a fresh working dir whose cache folder is a link to the real one, so
    `load_training_data` finds every entry, and the index is written from scratch as a build does.
    """
    rows = []
    for fraction in fractions:
        count = max(2, int(len(corpus.utterances) * fraction))
        part = Corpus(corpus.root, corpus.utterances[:count], corpus.genders)
        directory = scratch / f"part-{count}"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        cache_dir(directory).symlink_to(cache_dir(working_dir))
        _, check_s = timed(check_entry_sources, directory, part)
        _, write_s = timed(write_corpus_index, directory, part)
        _, merge_s = timed(write_corpus_index, directory, part)  # A second corpus into the same working dir merges into the index.
        start = run_start(directory)
        rows.append({"entries": count, "check_sources_s_per_1000": 1000 * check_s / count, "write_index_s_per_1000": 1000 * write_s / count,
                     "merge_index_s_per_1000": 1000 * merge_s / count, **{f"{k}_per_1000": 1000 * v / count for k, v in start.items() if k.endswith("_s")},
                     "index_bytes": (directory / CORPUS_INDEX_FILE_NAME).stat().st_size})
    return rows


def run_start(working_dir: Path) -> dict:
    """Seconds of each step from the cache to the first training batch, as `train.train` takes them (no model)."""
    from batcher import SpeakerClassBatches, load_training_data
    from run_directory import prepare_run_directory, run_dir
    from train_config import TrainConfig
    from training_batches import label_task_values

    config = TrainConfig(mode="softmax", batch_size=128)
    data, load_s = timed(load_training_data, working_dir)
    directory = run_dir(working_dir, config.mode)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    _, values_s = timed(label_task_values, config, data, working_dir)
    _, prepare_s = timed(prepare_run_directory, directory, config, data)
    start = time.perf_counter()
    batches = SpeakerClassBatches(data.train, data.speakers, config.batch_size, 100)
    batches[0]
    first_batch_s = time.perf_counter() - start
    shutil.rmtree(directory)
    return {"load_and_split_s": load_s, "label_values_s": values_s, "run_files_s": prepare_s, "first_batch_s": first_batch_s,
            "total_s": load_s + values_s + prepare_s + first_batch_s, "speakers": len(data.speakers)}


def reader_rate(working_dir: Path, batches: int, batch_size: int, waveform_trim: str | None = None) -> dict:
    """Windows/s of the softmax reader in this thread alone: per wall second and per CPU second of this process.

    With `waveform_trim`, of the augmented reader on the waveform cache, with the VoxCeleb recipe's probabilities
    (babble and coloured noise: its noise and room folders are the user's).
    """
    from batcher import AugmentedBatches, SpeakerClassBatches, load_training_data
    from train_config import TrainConfig

    data = load_training_data(working_dir)
    if waveform_trim:
        recipe = json.loads((REPO / "recipes" / "voxceleb2_resnet.json").read_text())
        augment = TrainConfig(**{k: recipe[k] for k in ("speed_perturb", "noise_probability", "band_limit_probability", "spec_mask_probability")}).augment
        waveforms = waveform_cache_dir(working_dir, waveform_trim)
        stream = AugmentedBatches({s: [waveforms / e.name for e in entries] for s, entries in data.train.items()}, data.speakers, batch_size,
                                  batches, augment, seed=1, pad=recipe["pad"])
    else:
        stream = SpeakerClassBatches(data.train, data.speakers, batch_size, batches, seed=1)
    stream[0]
    wall, cpu = time.perf_counter(), time.process_time()
    for index in tqdm(range(1, batches), desc="reader", unit="batch"):
        stream[index]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    windows = (batches - 1) * batch_size
    per_core = windows / cpu
    return {"windows_per_s": windows / wall, "windows_per_cpu_s": per_core, "cores_for_gpu_target": GPU_TARGET_WINDOWS_PER_S / per_core,
            "batches": batches - 1, "batch_size": batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--per_speaker", type=int, default=100, help="Utterances per synthetic speaker.")
    parser.add_argument("--min_seconds", type=float, default=1.0)
    parser.add_argument("--max_seconds", type=float, default=3.0)
    parser.add_argument("--data_dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--corpus_dir", type=Path, help="Default: /tmp/scale_corpus_<entries>.")
    parser.add_argument("--working_dir", type=Path, help="Default: /tmp/scale_cache_<entries> (emptied first).")
    parser.add_argument("--workers", type=int, help="Cache build processes (default: every core).")
    parser.add_argument("--batches", type=int, default=200, help="Batches the reader draws.")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--waveforms", dest="waveform_trim", choices=["reference", "energy", "none"],
                        help="Also cache the trimmed audio and measure the augmented reader on it.")
    parser.add_argument("--keep", action="store_true", help="Keep the feature cache (the corpus is always kept).")
    parser.add_argument("--output", type=results_path, metavar="FILE.json", help="Also write every printed figure to this JSON file.")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    corpus_dir = args.corpus_dir or Path(f"/tmp/scale_corpus_{args.entries}")
    working_dir = args.working_dir or Path(f"/tmp/scale_cache_{args.entries}")
    if REPO in [corpus_dir.resolve(), *corpus_dir.resolve().parents]:
        raise SystemExit(f"{corpus_dir}: the synthetic corpus must live outside the repository")

    corpus_s = make_corpus(corpus_dir, args.entries, args.per_speaker, args.min_seconds, args.max_seconds, args.data_dir, seed=0)
    corpus_bytes = sum(p.stat().st_size for p in corpus_dir.rglob("*.wav"))
    print(f"corpus: {args.entries:,} files, {corpus_bytes / 2**30:.2f} GiB in {corpus_dir}" + (f", written in {corpus_s:.0f} s" if corpus_s else " (reused)"))

    shutil.rmtree(working_dir, ignore_errors=True)
    rss_before = peak_rss_mb()
    cpu_before = cpu_seconds()
    report, build_s = timed(lambda: build_feature_cache(corpus_dir, working_dir, workers=args.workers, waveform_trim=args.waveform_trim))
    build_cpu = cpu_seconds() - cpu_before
    index_bytes = (working_dir / CORPUS_INDEX_FILE_NAME).stat().st_size
    cache_bytes = sum(p.stat().st_size for p in cache_dir(working_dir).iterdir())
    build = {"entries": report.written, "failed": len(report.failed), "seconds": build_s, "entries_per_s": report.written / build_s,
             "cpu_ms_per_entry": 1000 * build_cpu / max(1, report.written), "peak_rss_mb_main": peak_rss_mb(),
             "peak_rss_mb_main_before": rss_before, "peak_rss_mb_worker": peak_rss_mb(resource.RUSAGE_CHILDREN),
             "workers": args.workers or os.cpu_count(), "index_bytes": index_bytes, "index_bytes_per_entry": index_bytes / report.written,
             "cache_gib": cache_bytes / 2**30}
    print(f"cache build: {report.written:,} entries ({len(report.failed)} failed) in {build_s:.0f} s = {build['entries_per_s']:.0f} entries/s, "
          f"{build['cpu_ms_per_entry']:.1f} CPU ms an entry, {build['workers']} workers; peak RAM main {build['peak_rss_mb_main']:.0f} MB "
          f"(before: {rss_before:.0f}), largest worker {build['peak_rss_mb_worker']:.0f} MB")
    print(f"corpus.json: {index_bytes / 2**20:.1f} MiB ({build['index_bytes_per_entry']:.0f} bytes an entry); cache {build['cache_gib']:.2f} GiB")

    corpus, index_s = timed(index_corpus, corpus_dir)
    steps = index_steps(corpus, working_dir, working_dir.parent / f"{working_dir.name}-parts", (0.1, 1.0))
    print(f"indexing the folder: {1000 * index_s / len(corpus.utterances):.2f} s per 1,000 files ({index_s:.1f} s in all)")
    print("per 1,000 entries, at a tenth and at all of the corpus (flat = linear):")
    for key in ("check_sources_s_per_1000", "write_index_s_per_1000", "merge_index_s_per_1000", "load_and_split_s_per_1000",
                "label_values_s_per_1000", "run_files_s_per_1000", "total_s_per_1000"):
        print(f"  {key:28s} " + "  ".join(f"{row[key]:8.3f} s ({row['entries']:,})" for row in steps))
    start = run_start(working_dir)
    print(f"start of a training run on {args.entries:,} entries ({start['speakers']} speakers): {start['total_s']:.1f} s "
          f"(index and split {start['load_and_split_s']:.1f} s, label tasks {start['label_values_s']:.1f} s, "
          f"speakers.json and split.json {start['run_files_s']:.1f} s, first batch {start['first_batch_s']:.2f} s)")

    reader = reader_rate(working_dir, args.batches, args.batch_size)
    print(f"streamed reader (SpeakerClassBatches, one thread, batch {args.batch_size}): {reader['windows_per_s']:.0f} windows/s, "
          f"{reader['windows_per_cpu_s']:.0f} windows per CPU second: {reader['cores_for_gpu_target']:.1f} such cores feed "
          f"{GPU_TARGET_WINDOWS_PER_S:,} windows/s")
    augmented = reader_rate(working_dir, max(2, args.batches // 10), args.batch_size, args.waveform_trim) if args.waveform_trim else None
    if augmented:
        print(f"augmented reader (AugmentedBatches, the VoxCeleb recipe's probabilities, no folders, one thread): {augmented['windows_per_s']:.0f} windows/s, "
              f"{augmented['windows_per_cpu_s']:.0f} windows per CPU second: {augmented['cores_for_gpu_target']:.1f} such cores feed "
              f"{GPU_TARGET_WINDOWS_PER_S:,} windows/s")
    if not args.keep:
        shutil.rmtree(working_dir)
        shutil.rmtree(working_dir.parent / f"{working_dir.name}-parts", ignore_errors=True)
    if args.output:
        rows = [{"path": "cache build", **build}, {"path": "index folder", "seconds": index_s, "s_per_1000": 1000 * index_s / len(corpus.utterances)},
                *({"path": f"index steps, {row['entries']} entries", **row} for row in steps),
                {"path": "start of a training run", "entries": args.entries, **start}, {"path": "streamed reader", **reader},
                *([{"path": "augmented reader", **augmented}] if augmented else [])]
        part = {"mode": "cache_scale", "waveforms": args.waveform_trim, "entries": args.entries, "per_speaker": args.per_speaker, "seconds": [args.min_seconds, args.max_seconds],
                "corpus_gib": corpus_bytes / 2**30, "rows": rows}
        write_results(args.output, results_record("bench_cache_scale", load_at_start, part))


if __name__ == "__main__":
    main()
