"""Feature extraction speed: the straightforward reference path vs `audio.read_mfcc` (a benchmark, not a test).

Figures in audio seconds per CPU second (one core) or per wall-clock second (all cores):
1. the reference path written the straightforward way, on one core: `librosa.load(path, sr=16000)`,
   the 95th-percentile silence trim, python_speech_features `fbank(nfilt=64)`, and the
   reference's per-frame Python loop `[(v - mean(v)) / max(std(v), 1e-12) for v in frames]`;
2. this project's `audio.read_mfcc`, on the same core and the same files;
3. both again on the work after decoding only: each file decoded once, then the reference's
   trim, fbank and frame loop against `audio.mfcc_from_samples` on the same samples (decoding
   is the same libsndfile and soxr in both paths, so this is the part the project can speed up);
4. `feature_cache.build_feature_cache` over the same files with every core (worker processes), into a
   temporary folder.
The one-core figures are CPU time of this process (its pools held to one thread), so other
jobs on a shared machine lengthen the wall clock but barely these figures; the cache build is
wall time. Both one-core paths run after a warm-up (imports, caches, the files in the OS page
cache), and every file's two results are compared: the largest difference is printed. Figures
are also given per top-level folder (corpus), since decoding and resampling costs differ by
format and rate. `--profile` adds where the time goes: decoding, trim, filterbanks, normalisation. `--output FILE.json`
also writes every printed figure, as numbers, for `bench/render_tables.py`.

    python bench/bench_features.py                        # ../shared/data, or samples/ when absent
    python bench/bench_features.py --data_dir samples --profile
    python bench/bench_features.py --limit 200 --skip_cache
    python bench/bench_features.py --data_dir ../shared/data --profile --output bench/results/features.json
"""

from __future__ import annotations

import os

# One core for the one-core figures: set before NumPy (and its BLAS) is imported. The cache's
# worker processes inherit it, which is what one process per core wants anyway.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import soundfile  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import audio  # noqa: E402
from corpus import index_corpus  # noqa: E402
import feature_cache  # noqa: E402
from constants import NORMALISATION_STD_FLOOR, NUM_FBANKS, SAMPLE_RATE, SILENCE_PERCENTILE  # noqa: E402
from render_tables import results_path, results_record, write_results  # noqa: E402

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # The environment variables above already hold the pools to one thread.
    threadpool_limits = None

DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
FALLBACK_DATA_DIR = REPO / "samples"
AGREEMENT_TOLERANCE = 1e-4  # The contract of issue #13 on the normalised features.
TARGET_RATIO = 5  # Issue #13: read_mfcc at least 5 x the reference, i.e. the work after decoding costs no more than decoding.
WARM_UP_FILES = 3
DECODED_BATCH_FILES = 200  # Decoded files held at once by the after-decoding figures (about 150 MB of LibriSpeech).


# ----------------------------------------------------------------------------------------------
# The reference path, stage by stage (so --profile can time each stage).


# librosa and python_speech_features are imported where used: the cache's worker processes
# (spawned) re-import this script, and librosa alone takes about a second to import.


def reference_decode(path: Path) -> np.ndarray:
    import librosa

    return librosa.load(path, sr=SAMPLE_RATE, mono=True)[0]


def reference_trim(samples: np.ndarray) -> np.ndarray:
    magnitude = np.abs(samples)
    loud = np.where(magnitude > np.percentile(magnitude, SILENCE_PERCENTILE))[0]
    return samples[loud[0] : loud[-1]]


def reference_filterbanks(voiced: np.ndarray) -> np.ndarray:
    from python_speech_features import fbank

    return fbank(voiced, samplerate=SAMPLE_RATE, nfilt=NUM_FBANKS)[0]


def reference_normalise(energies: np.ndarray) -> np.ndarray:
    return np.array([(v - np.mean(v)) / max(np.std(v), NORMALISATION_STD_FLOOR) for v in energies], dtype=np.float32)


REFERENCE_STAGES = {"decode (librosa.load)": reference_decode, "trim": reference_trim,
                    "filterbanks (psf fbank)": reference_filterbanks, "normalise (frame loop)": reference_normalise}
PROJECT_STAGES = {"decode (read_audio)": audio.read_audio, "trim": audio.trim_silence,
                  "filterbanks": audio.filterbank_energies, "normalise": audio.normalize_frames}


def reference_after_decoding(samples: np.ndarray) -> np.ndarray:
    return reference_normalise(reference_filterbanks(reference_trim(samples)))


def reference_features(path: Path) -> np.ndarray:
    return reference_after_decoding(reference_decode(path))


# ----------------------------------------------------------------------------------------------
# Measurements.


def corpus_files(data_dir: Path, limit: int | None) -> list[Path]:
    """The files `build_feature_cache` would read, in its order; the first `limit` of them."""
    return [u.path for u in index_corpus(data_dir).utterances][:limit]


def group_of(path: Path, data_dir: Path) -> str:
    parts = path.relative_to(data_dir).parts
    return parts[0] if len(parts) > 1 else "(top level)"


def clock() -> float:
    """CPU seconds of this process: what one core spends, whatever else runs on the machine."""
    return time.process_time()


def time_one_core(files: list[Path]) -> tuple[dict, dict, float, list]:
    """Per-file CPU times of each path (one whole pass each), the largest difference, and failures.

    Each path runs over all files in one pass, so neither evicts the other's working set from
    the CPU caches between files; only the calls are timed, not the comparison.
    """
    reference_times, expected = {}, {}
    failures = []
    for path in files:
        try:
            start = clock()
            expected[path] = reference_features(path)
            reference_times[path] = clock() - start
        except (IndexError, ValueError) as error:  # The reference crashes on silent audio (IndexError).
            failures.append((path, f"reference: {type(error).__name__}: {error}"))
    project_times, max_difference = {}, 0.0
    for path in list(expected):
        try:
            start = clock()
            features = audio.read_mfcc(path)
            project_times[path] = clock() - start
        except audio.AudioError as error:
            failures.append((path, f"read_mfcc: {error.problem}"))
            del reference_times[path]
            continue
        if features.shape != expected[path].shape:
            failures.append((path, f"shapes differ: {features.shape} vs {expected[path].shape}"))
        else:
            max_difference = max(max_difference, float(np.abs(features - expected[path]).max()))
        del expected[path]
    return reference_times, project_times, max_difference, failures


def time_after_decoding(files: list[Path]) -> tuple[dict, dict]:
    """Per-file CPU times of both paths' work after decoding, on the same decoded samples.

    `audio.read_audio` gives the samples `librosa.load` gives (tests/test_audio.py checks it
    bit for bit), so both paths start from the same input. Files are decoded once, a batch at
    a time, and each path passes over the whole batch in turn, as in `time_one_core`.
    """
    reference_times, project_times = {}, {}
    for first in range(0, len(files), DECODED_BATCH_FILES):
        decoded = {path: audio.read_audio(path) for path in files[first : first + DECODED_BATCH_FILES]}
        for path, samples in decoded.items():
            start = clock()
            reference_after_decoding(samples)
            reference_times[path] = clock() - start
        for path, samples in decoded.items():
            start = clock()
            audio.mfcc_from_samples(samples, SAMPLE_RATE, path)
            project_times[path] = clock() - start
    return reference_times, project_times


def time_stages(files: list[Path], stages: dict) -> dict[str, float]:
    """CPU seconds spent in each stage of a path, summed over the files (each stage feeds the next)."""
    totals = dict.fromkeys(stages, 0.0)
    for path in files:
        value = path
        for name, stage in stages.items():
            start = clock()
            value = stage(value)
            totals[name] += clock() - start
    return totals


def time_cache(data_dir: Path, files: list[Path], workers: int) -> tuple[float, int]:
    """Wall seconds of `build_feature_cache` over `files` (a tree of links when they are a subset), and the files that failed."""
    with tempfile.TemporaryDirectory(prefix="bench-features-") as scratch:
        source = data_dir
        if len(files) < len(corpus_files(data_dir, None)):
            source = Path(scratch) / "audio"
            for path in files:
                link = source / path.relative_to(data_dir)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(path.resolve())
        start = time.perf_counter()
        report = feature_cache.build_feature_cache(source, Path(scratch) / "work", workers=workers, progress=False)
        elapsed = time.perf_counter() - start
    if report.failed:
        print(f"  cache: {len(report.failed)} files failed, e.g. {report.failed[0]}")
    return elapsed, len(report.failed)


RATES_HEADER = (f"{'':<22} {'files':>5} {'audio s':>8} | {'whole path (with decoding)':^33} | {'after decoding':^33}\n"
                f"{'':<22} {'':>5} {'':>8} | {'reference':>10} {'read_mfcc':>10} {'ratio':>11} | {'reference':>10} {'project':>10} {'ratio':>11}")


def rates(paths: list[Path], times: dict, seconds: float) -> dict[str, float]:
    """Reference and project rates (audio seconds per CPU second) over `paths`, and their ratio."""
    reference_rate = seconds / sum(times["reference"][p] for p in paths)
    project_rate = seconds / sum(times["project"][p] for p in paths)
    return {"reference": reference_rate, "project": project_rate, "ratio": project_rate / reference_rate}


def group_figures(group: str, paths: list[Path], whole: dict, after_decoding: dict, durations: dict) -> dict:
    """One line of the rates table: the group's files and audio seconds, both paths' rates with and after decoding."""
    seconds = sum(durations[p] for p in paths)
    return {"group": group, "files": len(paths), "audio_seconds": seconds,
            "whole_path": rates(paths, whole, seconds), "after_decoding": rates(paths, after_decoding, seconds)}


def print_rates(title: str, figures: dict) -> None:
    def columns(r: dict) -> str:
        return f"{r['reference']:>9.0f}x {r['project']:>9.0f}x {r['ratio']:>10.2f}x"

    print(f"{title:<22} {figures['files']:>5} {figures['audio_seconds']:>8.0f} | {columns(figures['whole_path'])} | {columns(figures['after_decoding'])}")


def stage_figures(totals: dict[str, float], audio_seconds: float) -> dict:
    """CPU seconds per stage and in all, x real time, and the work after decoding over decoding (the first stage)."""
    total = sum(totals.values())
    decoding = next(iter(totals.values()))
    return {"stages_cpu_s": totals, "total_cpu_s": total, "x_real_time": audio_seconds / total,
            "after_decoding_over_decoding": (total - decoding) / decoding}


def print_stages(title: str, figures: dict, audio_seconds: float) -> None:
    total = figures["total_cpu_s"]
    print(f"{title}: {total:.2f} CPU s for {audio_seconds:.0f} s of audio ({figures['x_real_time']:.0f} x real time)")
    for name, seconds in figures["stages_cpu_s"].items():
        print(f"  {name:<26} {seconds:7.3f} s  {100 * seconds / total:5.1f} %")
    print(f"  work after decoding / decoding: {figures['after_decoding_over_decoding']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", type=Path, default=None, help=f"Audio corpus (default {DEFAULT_DATA_DIR}, else {FALLBACK_DATA_DIR}).")
    parser.add_argument("--limit", type=int, default=None, help="Only the first N files (default: all).")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="Processes of the cache build (default: every core).")
    parser.add_argument("--profile", action="store_true", help="Also time each stage of both paths.")
    parser.add_argument("--skip_cache", action="store_true", help="Skip the all-cores cache build.")
    parser.add_argument("--output", type=results_path, metavar="FILE.json",
                        help="Also write every printed figure to this JSON file (for bench/render_tables.py).")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    data_dir = args.data_dir or (DEFAULT_DATA_DIR if DEFAULT_DATA_DIR.is_dir() else FALLBACK_DATA_DIR)
    files = corpus_files(data_dir, args.limit)
    durations = {path: soundfile.info(path).duration for path in files}
    print(f"{len(files)} files, {sum(durations.values()) / 60:.1f} min of audio, in {data_dir}; {os.cpu_count()} cores")
    part = {"mode": "features", "data_dir": str(data_dir), "files": len(files), "audio_minutes": sum(durations.values()) / 60,
            "target_ratio": TARGET_RATIO}

    for path in files:  # Every file in the page cache, so neither path pays the disk.
        path.read_bytes()
    limits = threadpool_limits(limits=1) if threadpool_limits else nullcontext()
    with limits:
        for path in files[:WARM_UP_FILES]:
            reference_features(path), audio.read_mfcc(path)
        reference_times, project_times, max_difference, failures = time_one_core(files)
        timed = list(reference_times)
        whole = {"reference": reference_times, "project": project_times}
        reference_after, project_after = time_after_decoding(timed)
        after_decoding = {"reference": reference_after, "project": project_after}
        print(f"\nOne core, audio seconds per CPU second (ratio = project / reference; target >= {TARGET_RATIO} with decoding):")
        print(RATES_HEADER)
        part["rows"] = [group_figures("all", timed, whole, after_decoding, durations)]
        print_rates("all", part["rows"][0])
        by_group = defaultdict(list)
        for path in timed:
            by_group[group_of(path, data_dir)].append(path)
        for group, paths in sorted(by_group.items()):
            part["rows"].append(group_figures(group, paths, whole, after_decoding, durations))
            print_rates(f"  {group}", part["rows"][-1])
        agreed = "within" if max_difference <= AGREEMENT_TOLERANCE else "NOT within"
        print(f"Largest |read_mfcc - reference| over {len(reference_times)} files: {max_difference:.3g} ({agreed} {AGREEMENT_TOLERANCE:g})")
        part["agreement"] = {"max_difference": max_difference, "files": len(reference_times), "tolerance": AGREEMENT_TOLERANCE,
                             "within": max_difference <= AGREEMENT_TOLERANCE}
        for path, problem in failures:
            print(f"  not compared: {path}: {problem}")
        part["not_compared"] = [{"file": str(path), "problem": problem} for path, problem in failures]
        if args.profile:
            seconds = sum(durations[p] for p in timed)
            part["profile"] = {"audio_seconds": seconds, "reference": stage_figures(time_stages(timed, REFERENCE_STAGES), seconds),
                               "read_mfcc": stage_figures(time_stages(timed, PROJECT_STAGES), seconds)}
            print()
            print_stages("Reference path, by stage", part["profile"]["reference"], seconds)
            print_stages("read_mfcc, by stage", part["profile"]["read_mfcc"], seconds)

    if not args.skip_cache:
        elapsed, failed = time_cache(data_dir, files, args.workers)
        seconds = sum(durations.values())
        print(f"\nAll cores: build_feature_cache, {args.workers} workers: {elapsed:.1f} s wall, "
              f"{seconds / elapsed:.0f} audio seconds per wall second (worker start-up included)")
        part["cache"] = {"workers": args.workers, "wall_s": elapsed, "audio_seconds": seconds, "x_real_time": seconds / elapsed, "failed": failed}
    if args.output:
        write_results(args.output, results_record("bench_features", load_at_start, part))


if __name__ == "__main__":
    main()
