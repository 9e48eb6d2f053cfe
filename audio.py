"""Audio decoding, the reference's filterbank features, the corpus index and the feature cache.

Everything here is NumPy and plain Python (no TensorFlow), so the cache can be built in worker
processes cheaply and the features can be reused by every Keras backend.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.fft
import soundfile
import soxr
from python_speech_features import get_filterbanks
from tqdm import tqdm

from fileio import save_npy_atomically, write_json_atomically
from constants import (
    AUDIO_EXTENSIONS,
    CACHE_DIR_NAME,
    ENERGY_TRIM_TOP_DB,
    FFT_CHUNK_FRAMES,
    GENDER_TABLE_NAMES,
    MEL_BLOCKS,
    NFFT,
    NORMALISATION_STD_FLOOR,
    NUM_FBANKS,
    PRE_EMPHASIS,
    RESAMPLE_QUALITY,
    SAMPLE_RATE,
    SILENCE_PERCENTILE,
    SPEAKERS_FILE_NAME,
    TRIM_MODES,
    PAD_MODES,
    WAVEFORM_CACHE_DIR_NAME,
    WINDOW_LENGTH_S,
    WINDOW_STEP_S,
)

logger = logging.getLogger(__name__)

LIBRISPEECH_NAME = re.compile(r"^(?P<speaker>\d+)-(?P<chapter>\d+)-(?P<index>\d+)$")
VCTK_SPEAKERS_FILE_NAME = "speaker-info.txt"
CORPUS_INDEX_FILE_NAME = "corpus.json"
CACHE_TRIM = "reference"  # The silence trim of every feature-cache entry (see `entry_features`).


class AudioError(ValueError):
    """A file that cannot give features: empty, silent, corrupt, unsupported or too short."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CorpusError(ValueError):
    """A corpus or feature cache that cannot be used: no audio, unreadable layout, no cache."""


# ----------------------------------------------------------------------------------------------
# Decoding and trimming.


def read_audio(filename: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a FLAC, WAV, MP3 or OGG file to mono float32 at `sample_rate`, as `librosa.load` would.

    soundfile decodes, channels are averaged, and soxr 'HQ' resamples (librosa's default), so the
    samples are identical to the reference's.
    """
    path = Path(filename)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such audio file")
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        raise AudioError(path, f"unsupported format {path.suffix!r} (expected one of {', '.join(AUDIO_EXTENSIONS)})")
    if path.stat().st_size == 0:
        raise AudioError(path, "the file is empty (0 bytes)")
    try:
        samples, file_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(path, f"corrupt or not audio ({error})") from None
    if samples.size == 0:
        raise AudioError(path, "the file holds no audio samples")
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
    if file_rate != sample_rate:
        mono = soxr.resample(mono, file_rate, sample_rate, quality=RESAMPLE_QUALITY)
        expected_length = int(np.ceil(len(samples) * sample_rate / file_rate))
        mono = _fix_length(mono, expected_length)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _fix_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Pad with zeros or cut to `length`, as librosa does after resampling."""
    if len(samples) >= length:
        return samples[:length]
    return np.pad(samples, (0, length - len(samples)))


def trim_silence(samples: np.ndarray, source: str | os.PathLike = "<audio>") -> np.ndarray:
    """Keep the samples between the first and the last one louder than the 95th percentile.

    This is the reference's crude trim (the last loud sample itself is left out, as there); it
    raises instead of crashing on silent audio.
    """
    if samples.size == 0:
        raise AudioError(source, "the audio is empty")
    magnitude = np.abs(samples)
    loud = magnitude > silence_threshold(magnitude)
    first, last = int(np.argmax(loud)), len(loud) - 1 - int(np.argmax(loud[::-1]))
    if not loud[first]:
        raise AudioError(source, "the audio is silent (no sample louder than the rest)")
    return samples[first:last]


def silence_threshold(magnitude: np.ndarray) -> np.floating:
    """`np.percentile(magnitude, SILENCE_PERCENTILE)` of a non-empty 1-D array, bit for bit, in one partition.

    NumPy's 'linear' method reads the two order statistics around index (n - 1) * q and
    interpolates, from the upper one when the weight is at least 0.5; NaN if any value is NaN.
    One partition at the upper index gives both: the lower one is the largest value before it.
    """
    index = (len(magnitude) - 1) * (SILENCE_PERCENTILE / 100)
    below = int(index)
    above = min(below + 1, len(magnitude) - 1)
    ordered = np.partition(magnitude, above)
    upper = ordered[above]
    if np.isnan(ordered[above:]).any():  # NaN sorts last: it is in the upper part if anywhere.
        return magnitude.dtype.type(np.nan)
    lower = ordered[:above].max() if above > below else upper
    weight, step = index - below, upper - lower
    if weight >= 0.5:
        return upper - step * magnitude.dtype.type(1 - weight)
    return lower + step * magnitude.dtype.type(weight)


def trim_energy(samples: np.ndarray, source: str | os.PathLike = "<audio>") -> np.ndarray:
    """Drop leading and trailing audio more than 30 dB below the loudest frame (librosa's trim).

    Unlike the reference's trim it keeps quiet speech at the edges of a clip, which matters on
    clips that are already cut to one word.
    """
    import librosa  # Imported here: it is slow to import and only this trim needs it.

    if samples.size == 0:
        raise AudioError(source, "the audio is empty")
    if not np.any(samples):
        raise AudioError(source, "the audio is silent (all samples are zero)")
    voiced, _ = librosa.effects.trim(samples, top_db=ENERGY_TRIM_TOP_DB)
    return voiced


def trim(samples: np.ndarray, mode: str = "reference", source: str | os.PathLike = "<audio>") -> np.ndarray:
    """Silence trim of one of TRIM_MODES: `reference` (95th percentile), `energy`, or `none`."""
    if mode == "reference":
        return trim_silence(samples, source)
    if mode == "energy":
        return trim_energy(samples, source)
    if mode == "none":
        if samples.size == 0 or not np.any(samples):
            raise AudioError(source, "the audio is empty or silent")
        return samples
    raise ValueError(f"trim must be one of {', '.join(TRIM_MODES)}; got {mode!r}")


# ----------------------------------------------------------------------------------------------
# Filterbank features.


@lru_cache(maxsize=4)
def mel_filterbank(sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The (NFFT//2+1, NUM_FBANKS) mel matrix of python_speech_features, built once per rate."""
    return get_filterbanks(NUM_FBANKS, NFFT, sample_rate, 0, sample_rate / 2).T.copy()


@lru_cache(maxsize=4)
def mel_blocks(sample_rate: int = SAMPLE_RATE) -> tuple[tuple[slice, slice, np.ndarray], ...]:
    """The mel matrix divided by NFFT, for squared spectra laid out (re, im) per bin, in MEL_BLOCKS bands.

    Each band of consecutive filters keeps only the rows of the bins it covers: the filters are
    narrow triangles (438 of 16,448 weights are non-zero), so 8 bands hold 4,384 weights
    where the whole matrix has 32,768. Entries: (rows, filters, float32 weights).
    """
    weights = np.repeat(mel_filterbank(sample_rate) / NFFT, 2, axis=0).astype(np.float32)  # Dividing by 2**9 is exact.
    blocks = []
    for filters in np.array_split(np.arange(NUM_FBANKS), MEL_BLOCKS):
        used = np.flatnonzero(weights[:, filters].any(axis=1))
        rows, columns = slice(used[0], used[-1] + 1), slice(filters[0], filters[-1] + 1)
        blocks.append((rows, columns, np.ascontiguousarray(weights[rows, columns])))
    return tuple(blocks)


def frame_length_and_step(sample_rate: int = SAMPLE_RATE) -> tuple[int, int]:
    """Window and hop in samples, rounded half up as python_speech_features does."""
    return int(np.floor(WINDOW_LENGTH_S * sample_rate + 0.5)), int(np.floor(WINDOW_STEP_S * sample_rate + 0.5))


def filterbank_energies(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mel filterbank energies of python_speech_features `fbank(nfilt=64)[0]`, in float32.

    The same pre-emphasis, framing and zero padding; the FFT and the filters in float32, so the
    energies differ from the reference's float64 ones by float32 rounding (under 2e-6 after
    normalisation on every file of ../shared/data). Shape (frames, NUM_FBANKS).
    """
    frame_length, frame_step = frame_length_and_step(sample_rate)
    num_frames = 1 if len(samples) <= frame_length else 1 + int(np.ceil((len(samples) - frame_length) / frame_step))
    emphasised = np.zeros((num_frames - 1) * frame_step + frame_length, dtype=np.float32)  # Zero padded to whole frames.
    emphasised[0] = samples[0]
    np.subtract(samples[1:], PRE_EMPHASIS * samples[:-1], out=emphasised[1 : len(samples)])
    frames = np.lib.stride_tricks.sliding_window_view(emphasised, frame_length)[::frame_step]
    energies = np.empty((num_frames, NUM_FBANKS), dtype=np.float32)
    for start in range(0, num_frames, FFT_CHUNK_FRAMES):  # A chunk's spectra stay in the CPU cache until filtered.
        chunk = slice(start, start + FFT_CHUNK_FRAMES)
        squares = scipy.fft.rfft(frames[chunk], NFFT).view(np.float32)  # re, im of each bin side by side.
        np.square(squares, out=squares)
        for rows, filters, weights in mel_blocks(sample_rate):
            np.matmul(squares[:, rows], weights, out=energies[chunk, filters])
    energies[energies == 0] = np.finfo(np.float64).eps  # As the reference: no zero energies.
    return energies


def normalize_frames(features: np.ndarray) -> np.ndarray:
    """Per frame: subtract the mean, divide by max(std, 1e-12), in the features' dtype. Returns float32."""
    centred = features - features.mean(axis=1, keepdims=True)
    std = np.sqrt(np.mean(np.square(centred), axis=1, keepdims=True))  # np.std, without centring twice.
    centred /= np.maximum(std, NORMALISATION_STD_FLOOR)
    return centred.astype(np.float32, copy=False)


def mfcc_from_samples(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, source: str | os.PathLike = "<audio>", trim_mode: str = "reference") -> np.ndarray:
    """Trim silence, compute 64 filterbanks and normalise each frame: shape (frames, 64)."""
    voiced = trim(samples, trim_mode, source)
    return features_of_voiced(voiced, sample_rate, source)


def features_of_voiced(voiced: np.ndarray, sample_rate: int = SAMPLE_RATE, source: str | os.PathLike = "<audio>") -> np.ndarray:
    """Filterbanks of audio already trimmed, each frame normalised: shape (frames, 64)."""
    frame_length, _ = frame_length_and_step(sample_rate)
    if len(voiced) < frame_length:
        raise AudioError(source, f"too short: {len(voiced)} samples of speech after trimming, need at least {frame_length}")
    return normalize_frames(filterbank_energies(voiced, sample_rate))


def read_mfcc(input_filename: str | os.PathLike, sample_rate: int = SAMPLE_RATE, trim_mode: str = "reference") -> np.ndarray:
    """The reference's features of one file: (frames, 64) normalised filterbanks, float32.

    The name is the reference's; the values are filterbank energies, not cepstra. `trim_mode`
    other than `reference` is this project's choice for trained models (see TRIM_MODES).
    """
    return mfcc_from_samples(read_audio(input_filename, sample_rate), sample_rate, input_filename, trim_mode)


def pad_mfcc(mfcc: np.ndarray, max_length: int, mode: str = "zeros") -> np.ndarray:
    """Fill up to `max_length` frames: zero frames at the end (the reference), or the clip's own
    frames repeated (`repeat`), so a short clip's window holds speech, not zeros. Longer inputs
    are returned as they are."""
    missing = max_length - len(mfcc)
    if missing <= 0:
        return mfcc
    if mode == "repeat" and len(mfcc):
        return np.resize(mfcc, (max_length, mfcc.shape[1])).astype(mfcc.dtype, copy=False)
    if mode not in PAD_MODES:
        raise ValueError(f"pad must be one of {', '.join(PAD_MODES)}; got {mode!r}")
    return np.concatenate([mfcc, np.zeros((missing, mfcc.shape[1]), dtype=mfcc.dtype)])


# ----------------------------------------------------------------------------------------------
# Corpus index.


@dataclass(frozen=True)
class Utterance:
    """One recording: `speaker` and `utterance` name its cache entry `<speaker>_<utterance>.npy`."""

    speaker: str
    utterance: str
    path: Path

    @property
    def cache_name(self) -> str:
        return f"{self.speaker}_{self.utterance}.npy"


@dataclass
class Corpus:
    """The utterances of a corpus, grouped by speaker, with the gender labels that exist."""

    root: Path
    utterances: list[Utterance]
    genders: dict[str, str] = field(default_factory=dict)

    @property
    def speakers(self) -> list[str]:
        return sorted({u.speaker for u in self.utterances}, key=natural_key)

    def utterances_by_speaker(self) -> dict[str, list[Utterance]]:
        grouped: dict[str, list[Utterance]] = defaultdict(list)
        for utterance in self.utterances:
            grouped[utterance.speaker].append(utterance)
        return {speaker: sorted(grouped[speaker], key=lambda u: natural_key(u.utterance)) for speaker in self.speakers}


def natural_key(text: str) -> list:
    """Sort key that orders 'a2' before 'a10'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def utterance_from_path(path: Path, root: Path) -> Utterance | None:
    """Name a file: LibriSpeech `<spk>-<chapter>-<n>` anywhere, else `<root>/<speaker>/**/<file>`."""
    match = LIBRISPEECH_NAME.match(path.stem)
    if match:
        return Utterance(match["speaker"], f"{match['chapter']}-{match['index']}", path)
    relative = path.relative_to(root)
    if len(relative.parts) < 2:
        return None  # A file directly under the root belongs to no speaker folder.
    speaker = relative.parts[0]
    utterance = "-".join(relative.with_suffix("").parts[1:])
    return Utterance(speaker, utterance, path)


GENDER_WORDS = {"m": "M", "male": "M", "f": "F", "female": "F", "male_masculine": "M", "female_feminine": "F"}  # Any case.


def gender_label(value: str) -> str | None:
    """'M' or 'F' of a gender cell: M, F, male or female in any case (and Common Voice's male_masculine,
    female_feminine); None for an empty cell (no label). Anything else raises ValueError."""
    value = value.strip()
    if not value:
        return None
    if value.lower() not in GENDER_WORDS:
        raise ValueError(f"gender {value!r} is none of M, F, male, female (any case); leave the cell empty for a speaker without a label")
    return GENDER_WORDS[value.lower()]


def _gender_of_row(path: Path, line_number: int, speaker: str, value: str) -> str | None:
    """`gender_label` of one row of a label file, its error naming the file, the line and the speaker."""
    try:
        return gender_label(value)
    except ValueError as error:
        raise CorpusError(f"{path}, line {line_number} (speaker {speaker}): {error}") from None


def read_gender_table(path: Path, text: str) -> dict[str, str]:
    """A plain speaker table: a header row naming `speaker` and `gender` columns (tab or comma); see `gender_label`."""
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    header_line = lines[0][1]
    delimiter = "\t" if "\t" in header_line else ","
    header = [name.strip().lower() for name in header_line.split(delimiter)]
    if "speaker" not in header or not ({"gender", "sex"} & set(header)):
        raise CorpusError(f"{path}: a speaker table needs a header with 'speaker' and 'gender' columns; got {header_line!r}")
    speaker_column = header.index("speaker")
    gender_column = header.index("gender" if "gender" in header else "sex")
    genders = {}
    for number, line in lines[1:]:
        fields = [part.strip() for part in line.split(delimiter)]
        speaker = fields[speaker_column]
        sex = _gender_of_row(path, number, speaker, fields[gender_column] if len(fields) > gender_column else "")
        if sex is not None:
            genders[speaker] = sex
    return genders


def read_gender_labels(path: str | os.PathLike) -> dict[str, str]:
    """Speaker -> 'F'/'M' from LibriSpeech `SPEAKERS.TXT`, VCTK `speaker-info.txt`, or a speaker
    table with `speaker` and `gender` columns (Common Voice style `speakers.tsv`, or CSV). A gender
    may be written M, F, male or female in any case (`gender_label`); an empty one is no label, and
    any other value raises CorpusError naming the file, the line and the speaker."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such gender label file")
    text = path.read_text(encoding="utf-8", errors="replace")
    first = next((line for line in text.splitlines() if line.strip() and not line.startswith(";")), "")
    if "speaker" in first.lower() and ("\t" in first or "," in first):
        return read_gender_table(path, text)
    genders: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith((";", "#")):  # Comments: LibriSpeech's ';', a '#' line under a copied VCTK table.
            continue
        if "|" in line:  # LibriSpeech: ID | SEX | SUBSET | MINUTES | NAME
            fields = [part.strip() for part in line.split("|")]
            speaker, sex = fields[0], fields[1] if len(fields) > 1 else ""
        else:  # VCTK: ID AGE GENDER ACCENTS REGION, ids with or without the 'p'.
            fields = line.split()
            if len(fields) < 3 or fields[0] == "ID":
                continue
            speaker, sex = (fields[0] if fields[0].startswith("p") else f"p{fields[0]}"), fields[2]
        label = _gender_of_row(path, number, speaker, sex)
        if label is not None:
            genders[speaker] = label
    return genders


def find_gender_files(root: Path) -> list[Path]:
    """Gender label files inside `root` and in its ancestors (LibriSpeech keeps SPEAKERS.TXT at its top)."""
    names = (SPEAKERS_FILE_NAME, VCTK_SPEAKERS_FILE_NAME, *GENDER_TABLE_NAMES)
    found = [p for name in names for p in sorted(root.rglob(name))]
    for ancestor in root.resolve().parents:
        found += [ancestor / name for name in names if (ancestor / name).is_file()]
    return found


def index_corpus(audio_dir: str | os.PathLike, genders_file: str | os.PathLike | None = None) -> Corpus:
    """Find every audio file under `audio_dir` and name its speaker and utterance; read genders.

    Genders come from the label files found in and above the corpus (SPEAKERS.TXT,
    speaker-info.txt, speakers.tsv), then from `genders_file`, which wins.
    """
    root = Path(audio_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such audio directory")
    utterances: list[Utterance] = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()):
        utterance = utterance_from_path(path, root)
        if utterance is None:
            logger.warning("%s: skipped, not inside a speaker folder and not LibriSpeech-named", path)
            continue
        utterances.append(utterance)
    if not utterances:
        raise CorpusError(f"{root}: no {'/'.join(e[1:].upper() for e in AUDIO_EXTENSIONS)} files found (expected <root>/<speaker>/**/<audio> or LibriSpeech layout)")
    duplicates = _duplicate_cache_names(utterances)
    if duplicates:
        raise CorpusError(f"{root}: several files map to the same cache entry, e.g. {duplicates[0]}")
    genders: dict[str, str] = {}
    for gender_file in reversed(find_gender_files(root)):  # Nearest files win.
        genders.update(read_gender_labels(gender_file))
    if genders_file is not None:
        genders.update(read_gender_labels(genders_file))
    speakers = {u.speaker for u in utterances}
    return Corpus(root, utterances, {s: g for s, g in genders.items() if s in speakers})


def _duplicate_cache_names(utterances: list[Utterance]) -> list[str]:
    seen: dict[str, Path] = {}
    duplicates = []
    for utterance in utterances:
        if utterance.cache_name in seen:
            duplicates.append(f"{seen[utterance.cache_name]} and {utterance.path}")
        seen[utterance.cache_name] = utterance.path
    return duplicates


# ----------------------------------------------------------------------------------------------
# Feature cache.


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


def _cache_one(job: tuple[str, str | None, str | None, str]) -> tuple[str, str | None]:
    """Worker: features (and trimmed audio) of one file into its cache entries.

    Returns (audio path, problem or None). The audio is decoded once for both entries.
    """
    audio_path, feature_target, waveform_target, waveform_trim = job
    try:
        samples = read_audio(audio_path, SAMPLE_RATE)
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
    jobs = []
    for utterance in corpus.utterances:
        target = target_dir / utterance.cache_name
        waveform_target = waveform_dir / utterance.cache_name if waveform_dir else None
        feature_job = None if target.exists() else str(target)
        waveform_job = None if waveform_target is None or waveform_target.exists() else str(waveform_target)
        if feature_job is None and waveform_job is None:
            report.skipped_existing += 1
        else:
            jobs.append((str(utterance.path), feature_job, waveform_job, waveform_trim or "none"))
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    if jobs:
        bar = tqdm(total=len(jobs), desc="features", unit="file", disable=not progress)
        if workers == 1:
            results = map(_cache_one, jobs)
        else:
            executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            results = executor.map(_cache_one, jobs, chunksize=max(1, min(32, len(jobs) // (workers * 4))))
        for audio_path, problem in results:
            bar.update()
            if problem is None:
                report.written += 1
            else:
                report.failed.append((audio_path, problem))
        bar.close()
        if workers > 1:
            executor.shutdown()
    failed = {path for path, _ in report.failed}
    cached = [u for u in corpus.utterances if str(u.path) not in failed]
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
    """Record the cached corpus (speaker -> utterances, genders, entry -> source file) so training needs no audio.

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
    source = _recorded_sources(working_dir).get(entry.name) if entry.parent.name == CACHE_DIR_NAME else None
    if source is not None and source.is_file():
        return read_mfcc(source, SAMPLE_RATE, trim_mode)
    waveform = waveform_cache_dir(working_dir, trim_mode) / entry.name
    if waveform.is_file():
        return features_of_voiced(np.load(waveform).astype(np.float32), SAMPLE_RATE, entry)
    where = f"its audio {source} is missing" if source else "corpus.json records no audio file for it"
    raise AudioError(entry, f"cached with the {CACHE_TRIM} trim; the {trim_mode} trim needs its audio, but {where} and there is no {waveform} "
                            f"(build-mfcc-cache --waveforms {trim_mode} keeps it)")


def _recorded_sources(working_dir: Path) -> dict[str, Path]:
    """Entry name -> audio file, from the corpus.json of `working_dir` ({} without one); read once per version of the file."""
    path = working_dir / CORPUS_INDEX_FILE_NAME
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    return _sources_of_index(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _sources_of_index(path: str, mtime_ns: int, size: int) -> dict[str, Path]:
    return {name: Path(source) for name, source in json.loads(Path(path).read_text()).get("sources", {}).items()}


def read_corpus_index(working_dir: str | os.PathLike) -> dict:
    """The `corpus.json` written by `build_feature_cache`; says what to run when it is missing."""
    path = Path(working_dir) / CORPUS_INDEX_FILE_NAME
    if not path.is_file():
        raise CorpusError(
            f"{path}: no feature cache in {working_dir}. Run first: "
            f"python cli.py build-mfcc-cache --working_dir {working_dir} --audio_dir <your audio folder>"
        )
    return json.loads(path.read_text())
