"""The feature cache: every utterance's features (and trimmed audio) as `.npy` entries, and the `corpus.json` that lists them.

Built once per corpus in worker processes; training and evaluation then read entries, not audio.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from audio import AudioError, features_of_voiced, frame_length_and_step, mfcc_from_samples, read_audio, trim
from constants import CACHE_DIR_NAME, SAMPLE_RATE, TRIM_MODES, WAVEFORM_CACHE_DIR_NAME
from corpus import Corpus, CorpusError, index_corpus, natural_key
from fileio import save_npy_atomically, write_json_atomically

CORPUS_INDEX_FILE_NAME = "corpus.json"
CACHE_TRIM = "reference"  # The silence trim of every feature-cache entry (see `entry_features`).


def cache_dir(working_dir: str | os.PathLike) -> Path:
    return Path(working_dir) / CACHE_DIR_NAME


def waveform_cache_dir(working_dir: str | os.PathLike, trim_mode: str) -> Path:
    """Decoded, trimmed 16 kHz audio (float16 `.npy`, same names as the feature cache), one folder per trim."""
    return Path(working_dir) / f"{WAVEFORM_CACHE_DIR_NAME}-{trim_mode}"


@dataclass
class CacheReport:
    """What a cache build did: entries written, entries already there, and files that failed."""

    cache_dir: Path
    written: int = 0
    skipped_existing: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.cache_dir}: {self.written} written, {self.skipped_existing} already cached, {len(self.failed)} failed."]
        lines += [f"  skipped {path}: {problem}" for path, problem in self.failed]
        return "\n".join(lines)


def _cache_one(job: tuple[str, tuple[float, float | None] | None, str | None, str | None, str]) -> tuple[str, str | None]:
    """Worker: features (and trimmed audio) of one file, or one segment of it, into its cache entries.

    Returns (the audio, problem or None). The audio is decoded once for both entries.
    """
    audio_path, segment, feature_target, waveform_target, waveform_trim = job
    if segment is not None:
        audio_path = f"{audio_path} ({segment[0]:g}-{'end' if segment[1] is None else f'{segment[1]:g}'} s)"  # How a failure names it.
    try:
        samples = read_audio(job[0], SAMPLE_RATE, segment)
        if feature_target:
            save_npy_atomically(Path(feature_target), mfcc_from_samples(samples, SAMPLE_RATE, audio_path, CACHE_TRIM))
        if waveform_target:
            voiced = trim(samples, waveform_trim, audio_path)
            frame_length, _ = frame_length_and_step(SAMPLE_RATE)
            if len(voiced) < frame_length:
                raise AudioError(audio_path, f"too short: {len(voiced)} samples of speech after trimming, need at least {frame_length}")
            save_npy_atomically(Path(waveform_target), voiced.astype(np.float16))
    except (AudioError, FileNotFoundError) as error:
        return audio_path, getattr(error, "problem", str(error))
    return audio_path, None


def build_feature_cache(
    audio_dir: str | os.PathLike,
    working_dir: str | os.PathLike,
    workers: int | None = None,
    progress: bool = True,
    genders_file: str | os.PathLike | None = None,
    waveform_trim: str | None = None,
) -> CacheReport:
    """Compute features of every utterance into `<working_dir>/audio-fbanks/` in parallel.

    With `waveform_trim`, also keep the decoded audio trimmed that way in
    `<working_dir>/audio-waveforms-<trim>/`, for training with augmentation. Entries that exist
    are kept (so an interrupted build resumes); bad files are skipped and reported;
    `corpus.json` records speakers, genders and where the audio came from, down to each entry's
    file, so that an entry of another corpus with the same names is refused, not reused.
    """
    corpus = index_corpus(audio_dir, genders_file)
    check_entry_sources(working_dir, corpus)
    target_dir = cache_dir(working_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    waveform_dir = waveform_cache_dir(working_dir, waveform_trim) if waveform_trim else None
    if waveform_dir:
        if waveform_trim not in TRIM_MODES:
            raise ValueError(f"waveform trim must be one of {', '.join(TRIM_MODES)}; got {waveform_trim!r}")
        waveform_dir.mkdir(parents=True, exist_ok=True)
    report = CacheReport(target_dir)
    failed: set[str] = set()  # Entry names.
    jobs, job_entries = [], []
    for utterance in corpus.utterances:
        target = target_dir / utterance.cache_name
        waveform_target = waveform_dir / utterance.cache_name if waveform_dir else None
        feature_job = None if target.exists() else str(target)
        waveform_job = None if waveform_target is None or waveform_target.exists() else str(waveform_target)
        if feature_job is None and waveform_job is None:
            report.skipped_existing += 1
        else:
            jobs.append((str(utterance.path), utterance.segment, feature_job, waveform_job, waveform_trim or "none"))
            job_entries.append(utterance.cache_name)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    if jobs:
        bar = tqdm(total=len(jobs), desc="features", unit="file", disable=not progress)
        if workers == 1:
            results = map(_cache_one, jobs)
        else:
            executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            results = executor.map(_cache_one, jobs, chunksize=max(1, min(32, len(jobs) // (workers * 4))))
        for entry, (audio_path, problem) in zip(job_entries, results):
            bar.update()
            if problem is None:
                report.written += 1
            else:
                report.failed.append((audio_path, problem))
                failed.add(entry)
        bar.close()
        if workers > 1:
            executor.shutdown()
    cached = [u for u in corpus.utterances if u.cache_name not in failed]
    write_corpus_index(working_dir, Corpus(corpus.root, cached, corpus.genders))
    return report


def check_entry_sources(working_dir: str | os.PathLike, corpus: Corpus) -> None:
    """Refuse a corpus whose files map to cache entries recorded from other files.

    Two corpora with the same speaker and utterance names share entry names; without this the
    second would silently train on the first one's features. Entries that older code recorded
    without their source cannot be checked and are reused as before.
    """
    path = Path(working_dir) / CORPUS_INDEX_FILE_NAME
    sources = json.loads(path.read_text()).get("sources", {}) if path.is_file() else {}
    clashes = []
    for utterance in corpus.utterances:
        source = str(utterance.path.resolve())
        recorded = sources.get(utterance.cache_name, source)
        if recorded != source:
            clashes.append((utterance.cache_name, recorded, source))
    if clashes:
        entry, recorded, new = clashes[0]
        more = f" (and {len(clashes) - 1} more entries)" if len(clashes) > 1 else ""
        raise CorpusError(
            f"{cache_dir(working_dir) / entry}: cached from {recorded}, but {new} has the same speaker and utterance names{more}. "
            "Build each corpus into its own --working_dir, or rename the speaker folders of one of them."
        )


def write_corpus_index(working_dir: str | os.PathLike, corpus: Corpus) -> Path:
    """Record the cached corpus (speaker -> utterances, genders, entry -> source file and segment) so training needs no audio.

    Caches built from several corpora into one working dir add up: the index is merged.
    """
    path = Path(working_dir) / CORPUS_INDEX_FILE_NAME
    index = json.loads(path.read_text()) if path.is_file() else {"audio_dirs": [], "genders": {}, "speakers": {}}
    root = str(Path(corpus.root).resolve())
    index["audio_dirs"] = sorted(set(index["audio_dirs"]) | {root})
    index["genders"].update(corpus.genders)
    sources = index.setdefault("sources", {})
    unknown = {f"{s}_{u}.npy" for s, utterances in index["speakers"].items() for u in utterances} - set(sources)  # Listed by older code.
    sources.update({u.cache_name: str(u.path.resolve()) for u in corpus.utterances if u.cache_name not in unknown})
    segments = {u.cache_name: list(u.segment) for u in corpus.utterances if u.segment is not None}
    if segments:  # Entries of a Kaldi `segments` utterance: the span of their source, [start, end or null] seconds.
        index.setdefault("segments", {}).update(segments)
    for speaker, utterances in corpus.utterances_by_speaker().items():
        merged = set(index["speakers"].get(speaker, [])) | {u.utterance for u in utterances}
        index["speakers"][speaker] = sorted(merged, key=natural_key)
    write_json_atomically(path, index)
    return path


def cached_entries(working_dir: str | os.PathLike) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """Speaker -> cache entry files, and speaker -> gender, of the cache in `working_dir`."""
    index = read_corpus_index(working_dir)
    directory = cache_dir(working_dir)
    entries = {s: [directory / f"{s}_{u}.npy" for u in utterances] for s, utterances in index["speakers"].items() if utterances}
    return entries, index.get("genders", {})


def entry_features(entry: str | os.PathLike, trim_mode: str = CACHE_TRIM) -> np.ndarray:
    """The features of a feature-cache entry as `read_mfcc` with `trim_mode` gives them for its audio.

    The cache keeps one front end, the reference's trim (`CACHE_TRIM`): it is what the
    reference's batchers train on, and a checkpoint with that trim reads the entry as it is.
    For another trim the features are made again: from the audio file the entry was cached from
    (corpus.json's `sources`), so a cached speaker gets the very features its audio gets when
    given as a file (in `embed`, `verify` or an `--eval_audio_dir`); where that file is gone,
    from the trimmed audio the waveform cache keeps for that trim (float16: features within its
    rounding, as augmented training reads them). Why not a feature cache per front end: the
    waveform cache already keeps each trim's audio for training, and a second feature cache per
    trim would double every build for figures that re-reading a corpus gives in seconds, and
    be one more copy that can disagree with the audio.

    Raises AudioError naming the entry when neither the audio nor the trimmed audio is there.
    """
    entry = Path(entry)
    if trim_mode not in TRIM_MODES:
        raise ValueError(f"trim must be one of {', '.join(TRIM_MODES)}; got {trim_mode!r}")
    if trim_mode == CACHE_TRIM:
        return np.load(entry)
    if not entry.is_file():
        raise FileNotFoundError(f"{entry}: no such feature-cache entry")
    working_dir = entry.parent.parent
    source, segment = _recorded_sources(working_dir).get(entry.name, (None, None)) if entry.parent.name == CACHE_DIR_NAME else (None, None)
    if source is not None and source.is_file():
        return mfcc_from_samples(read_audio(source, SAMPLE_RATE, segment), SAMPLE_RATE, source, trim_mode)
    waveform = waveform_cache_dir(working_dir, trim_mode) / entry.name
    if waveform.is_file():
        return features_of_voiced(np.load(waveform).astype(np.float32), SAMPLE_RATE, entry)
    where = f"its audio {source} is missing" if source else "corpus.json records no audio file for it"
    raise AudioError(entry, f"cached with the {CACHE_TRIM} trim; the {trim_mode} trim needs its audio, but {where} and there is no {waveform} "
                            f"(build-mfcc-cache --waveforms {trim_mode} keeps it)")


def _recorded_sources(working_dir: Path) -> dict[str, tuple[Path, tuple[float, float | None] | None]]:
    """Entry name -> (audio file, segment or None), from the corpus.json of `working_dir` ({} without one); read once per version of the file."""
    path = working_dir / CORPUS_INDEX_FILE_NAME
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    return _sources_of_index(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _sources_of_index(path: str, mtime_ns: int, size: int) -> dict[str, tuple[Path, tuple[float, float | None] | None]]:
    index = json.loads(Path(path).read_text())
    segments = index.get("segments", {})
    return {name: (Path(source), tuple(segments[name]) if name in segments else None) for name, source in index.get("sources", {}).items()}


def read_corpus_index(working_dir: str | os.PathLike) -> dict:
    """The `corpus.json` written by `build_feature_cache`; says what to run when it is missing."""
    path = Path(working_dir) / CORPUS_INDEX_FILE_NAME
    if not path.is_file():
        raise CorpusError(
            f"{path}: no feature cache in {working_dir}. Run first: "
            f"python cli.py build-mfcc-cache --working_dir {working_dir} --audio_dir <your audio folder>"
        )
    return json.loads(path.read_text())
