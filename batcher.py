"""Windows and batches of filterbank features for training and inference."""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from audio import pad_mfcc
from corpus import CorpusError, natural_key
from feature_cache import cache_dir, cached_entries
from augment import AugmentConfig, FolderSources, augmented_window, augmented_windows_features, babble_speakers, random_segment
from tasks import gender_task
from constants import (
    EMBEDDING_SIZE,
    HARD_NEGATIVE_CANDIDATES,
    HARD_NEGATIVE_HISTORY_REFRESHES,
    HARD_NEGATIVE_HISTORY_SPEAKERS,
    HARD_NEGATIVE_HISTORY_UTTERANCES,
    HARD_NEGATIVE_REFRESH_EVERY,
    NUM_FBANKS,
    NPY_PREFIX_BYTES,
    NUM_FRAMES,
    TRAIN_TEST_RATIO,
    WINDOW_LENGTH_STREAM,
)


# numpy parses every .npy header with ast.literal_eval, and CPython 3.11's AST constructor is not
# safe across threads: reader threads loading at once can fail with "SystemError: AST constructor
# recursion depth mismatch" (python/cpython#106905), which ended a benchmark's training here.
_NPY_HEADER_LOCK = threading.Lock()
# The first NPY_PREFIX_BYTES of a 1-D array saved by np.save (format 1.0): magic, version, header length, header.
_NPY_1D_HEADER = re.compile(rb"\x93NUMPY\x01\x00v\x00\{'descr': '(?P<descr>[<>|][a-z]\d+)', 'fortran_order': False, "
                            rb"'shape': \((?P<length>\d+),\), \} *\n", re.DOTALL)


def load_cached_array(path: str | os.PathLike) -> np.ndarray:
    """A cache entry, memory-mapped (so the lock covers the header parse, not the read), one header at a time."""
    with _NPY_HEADER_LOCK:
        return np.load(path, mmap_mode="r")


class CachedWaveform:
    """A cached waveform (a 1-D `.npy` entry) whose stretches are read when sliced, with one `pread` each.

    An augmented window reads a stretch of its utterance and of each babble utterance; memory
    mapping the whole file for that cost a quarter of the reader's CPU time. Slices are copies in
    the file's dtype; `np.asarray` reads the whole waveform.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = path
        descriptor = os.open(path, os.O_RDONLY)
        try:
            simple = _NPY_1D_HEADER.fullmatch(os.pread(descriptor, NPY_PREFIX_BYTES, 0))  # What np.save writes for a 1-D array.
        finally:
            os.close(descriptor)
        if simple:  # Read without numpy's parser, its lock and its file object.
            shape, self.dtype, self.offset = (int(simple["length"]),), np.dtype(simple["descr"].decode()), NPY_PREFIX_BYTES
        else:
            with open(path, "rb") as file, _NPY_HEADER_LOCK:
                version = np.lib.format.read_magic(file)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, self.dtype = read_header(file)
                self.offset = file.tell()
        if len(shape) != 1:
            raise CorpusError(f"{self.path}: a cached waveform must be 1-D; this entry has shape {shape}")
        self.length = shape[0]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, step = key.indices(self.length)
        if step != 1:
            raise ValueError("a cached waveform is read by contiguous stretches")
        stretch = np.empty(max(0, stop - start), dtype=self.dtype)
        descriptor = os.open(self.path, os.O_RDONLY)
        try:
            read = os.preadv(descriptor, [stretch], self.offset + start * self.dtype.itemsize) if stretch.size else 0
        finally:
            os.close(descriptor)
        if read != stretch.nbytes:
            raise CorpusError(f"{self.path}: the cached waveform is truncated ({read} of {stretch.nbytes} bytes at sample {start})")
        return stretch

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype, copy=False)


def sample_from_mfcc(mfcc: np.ndarray, max_length: int, rng: np.random.Generator | None = None, pad: str = "zeros") -> np.ndarray:
    """A random window of `max_length` frames (uniform start), padded when too short: (max_length, 64, 1).

    `pad='zeros'` is the reference; `pad='repeat'` repeats a short clip's frames instead.
    """
    rng = rng or np.random.default_rng()
    if len(mfcc) >= max_length:
        start = int(rng.integers(0, len(mfcc) - max_length + 1))
        window = mfcc[start : start + max_length]
    else:
        window = pad_mfcc(np.asarray(mfcc), max_length, pad)
    return np.expand_dims(window, axis=-1)


def sample_from_mfcc_file(utterance_file: str | os.PathLike, max_length: int, rng: np.random.Generator | None = None, pad: str = "zeros") -> np.ndarray:
    """`sample_from_mfcc` on a cached `.npy` feature file."""
    return sample_from_mfcc(load_cached_array(utterance_file), max_length, rng, pad)


# ----------------------------------------------------------------------------------------------
# Training data: the cached corpus, split, and streamed as batches (never all windows in RAM).


@dataclass
class TrainingData:
    """Cache entries of the training speakers, split per speaker, plus held-out speakers.

    `train`/`test` follow the reference (per speaker, sorted, first 80 % train); `held_out`
    holds whole speakers kept out of training for speaker-disjoint verification. `validation`,
    when a run asks for one, is taken from the end of `train`, so that model selection never sees
    the test utterances that speaker-identification figures are measured on.
    """

    cache_dir: Path
    train: dict[str, list[Path]]
    test: dict[str, list[Path]]
    held_out: dict[str, list[Path]]
    genders: dict[str, str]
    validation: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def speakers(self) -> list[str]:
        """Training speakers in class-index order."""
        return list(self.train)

    def gender_labels(self, speakers: list[str]) -> np.ndarray:
        """1.0 female, 0.0 male, NaN unknown, for each speaker."""
        return gender_task(1.0).values(speakers, self.genders)


def split_utterances(entries: list[Path], train_test_ratio: float = TRAIN_TEST_RATIO) -> tuple[list[Path], list[Path]]:
    """The reference split of one speaker: sorted, first 80 % train, rest test (a single utterance trains)."""
    ordered = sorted(entries, key=lambda p: natural_key(p.name))
    num_train = max(1, int(len(ordered) * train_test_ratio))
    return ordered[:num_train], ordered[num_train:]


def split_validation(train: list[Path], fraction: float) -> tuple[list[Path], list[Path]]:
    """(train, validation): the last ceil(fraction x n) training utterances of a speaker that keeps at least 2 to train on."""
    num_validation = math.ceil(fraction * len(train)) if fraction > 0 else 0
    if len(train) - num_validation < 2:
        return train, []
    return train[: len(train) - num_validation], train[len(train) - num_validation :]


def load_training_data(
    working_dir: str | os.PathLike,
    held_out_speakers: list[str] | tuple[str, ...] = (),
    train_test_ratio: float = TRAIN_TEST_RATIO,
    validation_split: float = 0.0,
) -> TrainingData:
    """Read `corpus.json` of a built cache and split it; raises CorpusError saying what is missing.

    Python's cyclic garbage collector is paused meanwhile: the index makes a few objects per entry, all
    kept, and collections that walk them all grew faster than the corpus (a fifth of the time at 100,000
    entries). Whether each entry is there is read from one listing of the cache folder (a stat only for a name
    it lacks), not a stat each.
    """
    with _garbage_collection_paused():
        return _load_training_data(working_dir, held_out_speakers, train_test_ratio, validation_split)


@contextlib.contextmanager
def _garbage_collection_paused():
    """No cyclic garbage collection inside (reference counting still frees what it can); as it was after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load_training_data(working_dir: str | os.PathLike, held_out_speakers, train_test_ratio: float, validation_split: float) -> TrainingData:
    all_speakers, genders = cached_entries(working_dir)
    unknown = sorted(set(held_out_speakers) - set(all_speakers), key=natural_key)
    if unknown:
        raise CorpusError(f"held-out speakers not in the cache of {working_dir}: {', '.join(unknown)}")
    present = _files_in(cache_dir(working_dir))
    missing = [str(p) for entries in all_speakers.values() for p in entries if p.name not in present and not p.is_file()]
    if missing:
        raise CorpusError(f"{len(missing)} cache entries listed in corpus.json are missing (e.g. {missing[0]}); run build-mfcc-cache again")
    train, test, validation = {}, {}, {}
    for speaker in sorted(set(all_speakers) - set(held_out_speakers), key=natural_key):
        train[speaker], test[speaker] = split_utterances(all_speakers[speaker], train_test_ratio)
        train[speaker], validation[speaker] = split_validation(train[speaker], validation_split)
    if len(train) < 2:
        raise CorpusError(f"{working_dir}: training needs at least 2 speakers, the cache has {len(train)} besides the held-out ones")
    held_out = {s: all_speakers[s] for s in held_out_speakers}
    return TrainingData(cache_dir(working_dir), train, test, held_out, genders, {s: v for s, v in validation.items() if v})


def _files_in(directory: Path) -> set[str]:
    """Names of the regular files in `directory` (symbolic links followed), from one listing; empty when it is missing."""
    try:
        with os.scandir(directory) as found:
            return {entry.name for entry in found if entry.is_file()}
    except FileNotFoundError:
        return set()


def read_window(entry: Path, rng: np.random.Generator, num_frames: int = NUM_FRAMES, pad: str = "zeros") -> np.ndarray:
    """A random window of one cached utterance, reading only those frames from disk (memory map)."""
    return sample_from_mfcc(load_cached_array(entry), num_frames, rng, pad).astype(np.float32)


def read_windows(entries: list[Path], rng: np.random.Generator, num_frames: int = NUM_FRAMES, pad: str = "zeros") -> np.ndarray:
    return np.stack([read_window(entry, rng, num_frames, pad) for entry in entries])


class _EpochSeededBatches(keras.utils.PyDataset):
    """Batches whose random draws are a pure function of (seed, epoch, index): a resumed run sees the same data.

    A subclass may add state that also decides a batch: `HardNegativeTripletBatches` picks its
    negatives and positives from a history of embeddings of the model being trained, so its
    batches depend on the weights as well (a resumed run draws the same candidates, and mines
    them with the weights it resumed with).

    `window_frames` (lowest, highest) gives each batch its own window length, shared by all its
    windows; None: the fixed NUM_FRAMES of the reference.
    """

    def __init__(self, steps_per_epoch: int, seed: int, first_epoch: int = 0, window_frames: tuple[int, int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed
        self.epoch = first_epoch
        self.window_frames = tuple(window_frames) if window_frames is not None else None

    def __len__(self) -> int:
        return self.steps_per_epoch

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def window_length(self, index: int) -> int:
        """Frames of every window of batch `index`: NUM_FRAMES, or uniform in `window_frames`.

        The length has a generator of its own, so the rest of a batch is drawn as a fixed-length
        run draws it. Batch 1 of an epoch draws among the lengths other than batch 0's: Keras types
        its TensorFlow input pipeline from the first two batches, and leaves the frame axis open
        only where their shapes differ (under JAX each new length compiles the step once).
        """
        if self.window_frames is None:
            return NUM_FRAMES
        low, high = self.window_frames
        rng = np.random.default_rng([self.seed, self.epoch, index, WINDOW_LENGTH_STREAM])
        if index != 1 or low == high:
            return int(rng.integers(low, high + 1))
        length = int(rng.integers(low, high))
        return length + (length >= self.window_length(0))


class SpeakerClassBatches(_EpochSeededBatches):
    """(windows, speaker class) batches from the feature cache, for a speaker head: the reference's
    softmax or the additive angular margin head (`--mode softmax --head aam`).

    Each row is a random utterance of the whole pool (the reference: speakers with many
    utterances fill most batches) or, with `balanced`, a uniformly drawn speaker and then one
    of its utterances.
    """

    def __init__(
        self,
        utterances: dict[str, list[Path]],
        speakers: list[str],
        batch_size: int,
        steps_per_epoch: int,
        seed: int = 0,
        first_epoch: int = 0,
        balanced: bool = False,
        pad: str = "zeros",
        **kwargs,
    ):
        super().__init__(steps_per_epoch, seed, first_epoch, **kwargs)
        self.entries, self.labels = flat_entries_and_labels(utterances, speakers)
        self.sampler = UtteranceSampler(utterances, balanced)
        self.batch_size = batch_size
        self.pad = pad

    def __getitem__(self, index: int):
        rng = self.rng(index)
        rows = self.sampler.draw(self.batch_size, rng)
        return read_windows([self.entries[i] for i in rows], rng, self.window_length(index), self.pad), self.labels[rows]


def flat_entries_and_labels(utterances: dict[str, list[Path]], speakers: list[str]) -> tuple[list[Path], np.ndarray]:
    """Every utterance in one list, with its speaker's class index (position in `speakers`): the rows batches draw from."""
    class_of = {speaker: i for i, speaker in enumerate(speakers)}
    entries = [entry for speaker in utterances for entry in utterances[speaker]]
    labels = np.array([class_of[speaker] for speaker in utterances for _ in utterances[speaker]], dtype=np.int32)
    if not entries:
        raise CorpusError("no utterances to draw training batches from")
    return entries, labels


class UtteranceSampler:
    """Rows of a flat utterance list: uniform over utterances, or speaker-balanced.

    Speaker-balanced: each row draws a speaker uniformly, then one of its utterances uniformly,
    so a speaker with 120 utterances is seen as often as one with a single utterance.
    """

    def __init__(self, utterances: dict[str, list[Path]], balanced: bool):
        counts = np.array([len(entries) for entries in utterances.values()], dtype=np.int64)
        self.first_row = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.counts = counts[counts > 0]
        self.first_row = self.first_row[counts > 0]
        self.total = int(counts.sum())
        self.balanced = balanced

    def draw(self, size: int, rng: np.random.Generator) -> np.ndarray:
        if not self.balanced:
            return rng.integers(0, self.total, size)
        speakers = rng.integers(0, len(self.counts), size)
        return self.first_row[speakers] + (rng.random(size) * self.counts[speakers]).astype(np.int64)

    def check_triplets(self) -> None:
        """Refuse utterances that cannot give triplets: fewer than 2 speakers with utterances."""
        if len(self.counts) < 2:
            raise CorpusError("triplet batches need at least 2 speakers with utterances")

    def draw_triplets(self, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows of `size` (anchor, positive, negative) triplets: the one sampler of every random triplet batch.

        Anchors are drawn as `draw` draws rows. The positive is another utterance of the anchor's
        speaker where it has one, else the anchor's own utterance (its caller cuts another window).
        The negative is a row of another speaker: a uniform other speaker, then one of its
        utterances (balanced), or a uniform row among the other speakers' rows.
        """
        self.check_triplets()
        anchors = self.draw(size, rng)
        speakers = np.searchsorted(self.first_row, anchors, side="right") - 1
        first, counts = self.first_row[speakers], self.counts[speakers]
        offsets = 1 + (rng.random(size) * np.maximum(counts - 1, 1)).astype(np.int64)
        positives = np.where(counts > 1, first + (anchors - first + offsets) % counts, anchors)
        if self.balanced:
            others = (speakers + rng.integers(1, len(self.counts), size)) % len(self.counts)
            negatives = self.first_row[others] + (rng.random(size) * self.counts[others]).astype(np.int64)
        else:
            negatives = (rng.random(size) * (self.total - counts)).astype(np.int64)
            negatives = np.where(negatives >= first, negatives + counts, negatives)
        return anchors, positives, negatives


class AugmentedBatches(_EpochSeededBatches):
    """(windows, class) batches cut from cached audio and augmented, for softmax and AAM training.

    Features are computed after augmentation (augment.py), batch-wide. With speed perturbation,
    speaker s at speed index k is class `s + k * len(speakers)`. Memory stays bounded: only the
    windows of one batch (and the babble it mixes in) are read, by `CachedWaveform` (one read of each stretch).
    """

    def __init__(
        self,
        waveforms: dict[str, list[Path]],
        speakers: list[str],
        batch_size: int,
        steps_per_epoch: int,
        augment: AugmentConfig,
        seed: int = 0,
        first_epoch: int = 0,
        balanced: bool = True,
        pad: str = "repeat",
        **kwargs,
    ):
        super().__init__(steps_per_epoch, seed, first_epoch, **kwargs)
        self.entries, self.labels = flat_entries_and_labels(waveforms, speakers)
        missing = [str(p) for p in self.entries if not p.is_file()]
        if missing:
            raise CorpusError(f"{len(missing)} cached waveforms are missing (e.g. {missing[0]}); build the cache with waveforms (train --audio_dir, or build-mfcc-cache --waveforms)")
        self.sampler = UtteranceSampler(waveforms, balanced)
        classes, first_rows, counts = np.unique(self.labels, return_index=True, return_counts=True)
        self.speaker_rows = {int(c): (int(f), int(n)) for c, f, n in zip(classes, first_rows, counts)}  # Each speaker's rows: one block.
        if augment.noise_probability > 0 and len(self.speaker_rows) < 2:
            raise CorpusError("babble noise mixes utterances of other speakers: it needs at least 2 speakers with utterances")
        self.num_speakers = len(speakers)
        self.batch_size = batch_size
        self.augment = augment
        self.sources = FolderSources.of(augment, seed)
        self.pad = pad

    def babble(self, length: int, rng: np.random.Generator, speaker: int) -> list[np.ndarray]:
        """`length` samples of each of a few utterances of speakers other than `speaker` (a class in `speakers`),
        uniform over those utterances: the target's own voice is never its noise."""
        first, count = self.speaker_rows[speaker]
        rows = rng.integers(0, len(self.entries) - count, babble_speakers(rng))
        rows = np.where(rows >= first, rows + count, rows)  # Skip the speaker's own block.
        return [random_segment(CachedWaveform(self.entries[r]), length, rng) for r in rows]

    def windows(self, rows: np.ndarray, speed_index: np.ndarray, rng: np.random.Generator, num_frames: int = NUM_FRAMES) -> np.ndarray:
        """One augmented window of `num_frames` frames of each row's utterance, at speed `speeds[speed_index]`."""
        augmented = [augmented_window(CachedWaveform(self.entries[row]), self.augment.speeds[k], self.augment, rng,
                                      functools.partial(self.babble, speaker=int(self.labels[row])), num_frames, self.sources)
                     for row, k in zip(rows, speed_index)]
        windows = np.empty((len(rows), num_frames, NUM_FBANKS, 1), dtype=np.float32)
        for i, features in enumerate(augmented_windows_features(augmented)):  # Batch-wide.
            windows[i, :, :, 0] = pad_mfcc(features[:num_frames], num_frames, self.pad)
        return windows

    def classes(self, rows: np.ndarray, speed_index: np.ndarray) -> np.ndarray:
        """Speaker s at speed index k is class s + k * len(speakers)."""
        return self.labels[rows] + speed_index.astype(np.int32) * self.num_speakers

    def __getitem__(self, index: int):
        rng = self.rng(index)
        rows = self.sampler.draw(self.batch_size, rng)
        speed_index = rng.integers(0, len(self.augment.speeds), self.batch_size)
        return self.windows(rows, speed_index, rng, self.window_length(index)), self.classes(rows, speed_index)


class AugmentedTripletBatches(AugmentedBatches):
    """Stacked [anchors; positives; negatives] batches cut from cached audio and augmented: the triplet
    and Hive-MTL counterpart of `AugmentedBatches`, drawn by the same `UtteranceSampler`.

    Triplets follow `UtteranceSampler.draw_triplets` (a speaker with one utterance gives its
    positive as another window of it). The positive keeps the anchor's speed, so it is the same
    class; the negative draws its own. `outputs` names the targets to give: `speaker_pred` (the
    class), `ln` (a dummy for the triplet loss, which reads only the embeddings), and one per
    label task in `task_values` (output name -> (labels, whether the task is binary), the labels
    per speaker or per clip as `task_values_by_row` reads them; see `masked_task_targets`).
    Without `outputs`, a triplet-mode batch: (x, dummy, ones).
    Rows are ordered in `replicas` stacked blocks as `TripletBatches` orders them. With `triplets`
    False (Hive-MTL without a triplet loss) each row and its speed are drawn on their own, with the
    same draws as `AugmentedBatches`: the same seed gives single-task training's batches, so the
    two differ only in their heads.
    """

    def __init__(
        self,
        waveforms: dict[str, list[Path]],
        speakers: list[str],
        batch_size: int,
        steps_per_epoch: int,
        augment: AugmentConfig,
        seed: int = 0,
        first_epoch: int = 0,
        balanced: bool = True,
        pad: str = "repeat",
        outputs: tuple[str, ...] = (),
        task_values: dict[str, tuple[np.ndarray | dict[str, float], bool]] | None = None,
        replicas: int = 1,
        triplets: bool = True,
        **kwargs,
    ):
        super().__init__(waveforms, speakers, batch_size, steps_per_epoch, augment, seed, first_epoch, balanced, pad, **kwargs)
        self.triplets = triplets
        if triplets:
            check_triplet_batch_size(batch_size, replicas)
            self.sampler.check_triplets()
        self.row_order = replica_order(batch_size // 3, replicas) if triplets else np.arange(batch_size)
        self.outputs = tuple(outputs)
        self.task_rows = task_values_by_row(task_values or {}, self.entries, self.labels)

    def stacked_rows(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Rows (positions in `entries`) of one batch in the replicas' order, and each row's speed index."""
        if not self.triplets:  # As AugmentedBatches draws them.
            return self.sampler.draw(self.batch_size, rng), rng.integers(0, len(self.augment.speeds), self.batch_size)
        num_triplets = self.batch_size // 3
        rows = np.concatenate(self.sampler.draw_triplets(num_triplets, rng))
        speeds = rng.integers(0, len(self.augment.speeds), (2, num_triplets))
        speed_index = np.concatenate([speeds[0], speeds[0], speeds[1]])  # The positive at the anchor's speed.
        return rows[self.row_order], speed_index[self.row_order]

    def __getitem__(self, index: int):
        rng = self.rng(index)
        rows, speed_index = self.stacked_rows(rng)
        windows = self.windows(rows, speed_index, rng, self.window_length(index))
        return (windows, *stacked_targets(self.outputs, self.classes(rows, speed_index), rows_of(self.task_rows, rows)))


def task_values_by_row(task_values: dict[str, tuple[np.ndarray | dict[str, float], bool]], entries: list[Path],
                       row_classes: np.ndarray) -> dict[str, tuple[np.ndarray, bool]]:
    """Each label task's class for every row of a flat utterance list (NaN where the row has no label), and whether it is binary.

    A per-speaker task's labels are an array in training-speaker order: a row gets its speaker's
    (`row_classes`: each row's speaker, a position in that order). A per-clip task's are a dict by
    cache entry name: a row gets its own clip's, so the feature cache and the waveform cache (the
    same names) read the same labels.
    """
    by_row = {}
    for name, (values, binary) in task_values.items():
        if isinstance(values, dict):
            by_row[name] = (np.array([values.get(entry.name, np.nan) for entry in entries], dtype=np.float32), binary)
        else:
            by_row[name] = (np.asarray(values, dtype=np.float32)[row_classes], binary)
    return by_row


def rows_of(task_rows: dict[str, tuple[np.ndarray, bool]], rows: np.ndarray) -> dict[str, tuple[np.ndarray, bool]]:
    """The labels of a batch's `rows` from `task_values_by_row`'s table."""
    return {name: (values[rows], binary) for name, (values, binary) in task_rows.items()}


def stacked_targets(outputs: tuple[str, ...], classes: np.ndarray, task_values: dict[str, tuple[np.ndarray, bool]]) -> tuple:
    """(y, sample_weight) of a stacked triplet batch: arrays for the triplet model (no `outputs`),
    dicts by output for the Hive-MTL model.

    `classes` are the rows' speaker classes (speed classes included), `task_values` each label
    task's class of the same rows (NaN where unknown; `rows_of`). The triplet loss's
    weights are all ones, and needed: Keras 3 divides a loss by the number of tf.distribute
    replicas (whose gradients are then summed) only when it has a value per row, and
    `deep_speaker_loss` returns one scalar; a weight per row broadcasts it to rows, so each
    replica's share is scaled like every other loss. One device: no change.
    """
    dummy = np.zeros((len(classes), 1), dtype=np.float32)  # The triplet loss reads only y_pred.
    ones = np.ones(len(classes), np.float32)
    if not outputs:
        return dummy, ones
    targets = {"speaker_pred": (classes, ones), "ln": (dummy, ones)}
    targets.update({name: masked_task_targets(values, binary) for name, (values, binary) in task_values.items()})
    return {k: targets[k][0] for k in outputs}, {k: targets[k][1] for k in outputs}


def masked_task_targets(values: np.ndarray, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """(labels, sample weights) of one label task for a batch's rows; `values` is NaN where a row has no label.

    Keras averages a weighted loss over all rows; scaling the labelled rows by rows / labelled
    makes the task's loss the mean over labelled rows only, however many are unlabelled.
    Replicas average their own means, which is the same: their slices have equal sizes.
    """
    known = ~np.isnan(values)
    labels = np.where(known, values, 0.0)
    weights = known.astype(np.float32) * (len(values) / max(int(known.sum()), 1))
    return (labels.astype(np.float32)[:, None] if binary else labels.astype(np.int32)), weights


class FixedBatches(keras.utils.PyDataset):
    """Batches drawn once and kept: a validation set that does not change between epochs.

    Best checkpoint, early stopping and learning-rate halving then follow the model, not
    sampling noise.
    """

    def __init__(self, batches: list[tuple], **kwargs):
        super().__init__(**kwargs)
        self.batches = batches

    @classmethod
    def draw(cls, source: keras.utils.PyDataset, steps: int) -> "FixedBatches":
        return cls([source[i] for i in range(steps)])

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        return self.batches[index]


def triplet_speakers(utterances: dict[str, list[Path]]) -> list[str]:
    """Speakers that can be anchors: at least two utterances."""
    return [speaker for speaker, entries in utterances.items() if len(entries) >= 2]


def check_triplet_training(train: dict[str, list[Path]]) -> None:
    """Triplet training needs a speaker with 2 training utterances: else every positive is another window of its anchor's utterance.

    Validation may have one utterance a speaker (`UtteranceSampler.draw_triplets` cuts another window).
    """
    if not triplet_speakers(train):
        raise CorpusError("triplet batches need speakers with at least 2 training utterances; every speaker has only 1")


def check_triplet_batch_size(batch_size: int, replicas: int = 1) -> None:
    """Every replica must get whole triplets: its slice of the batch is a stacked [anchors; positives; negatives]."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas must be a positive integer; got {replicas!r}")
    if batch_size < 3 * replicas or batch_size % (3 * replicas):
        if replicas == 1:
            raise ValueError(f"triplet batches stack anchors, positives and negatives: batch size must be a positive multiple of 3, got {batch_size}")
        raise ValueError(
            f"triplet batches stack anchors, positives and negatives on each of {replicas} replicas: batch size must be a "
            f"positive multiple of 3 x {replicas} = {3 * replicas}, got {batch_size}"
        )


def replica_order(num_triplets: int, replicas: int) -> np.ndarray:
    """Row order that turns one stacked batch [a; p; n] into `replicas` consecutive stacked blocks.

    tf.distribute gives each replica a contiguous slice of the batch, and the triplet loss splits
    what it sees in thirds; so each slice must be the [a; p; n] of its own triplets, or every
    replica pairs anchors with the wrong rows. With 2 triplets per replica and 2 replicas, rows
    [a0 a1 a2 a3 p0 p1 p2 p3 n0 n1 n2 n3] become [a0 a1 p0 p1 n0 n1 | a2 a3 p2 p3 n2 n3].
    """
    triplets = np.arange(num_triplets).reshape(replicas, num_triplets // replicas)
    thirds = num_triplets * np.arange(3)
    return (triplets[:, None, :] + thirds[None, :, None]).reshape(-1)


class TripletBatches(_EpochSeededBatches):
    """Random triplets of cached features in the reference's stacked order: anchors, then positives, then negatives.

    Drawn by `UtteranceSampler.draw_triplets`, as `AugmentedTripletBatches` draws its triplets
    from cached audio: one sampler, one set of options. Rows are uniform over utterances, or
    with `balanced` a uniform speaker then one of its utterances (the reference's triplet
    batcher drew speakers uniformly); the positive is another utterance of the anchor's speaker
    where it has one (else another window of the same utterance), the negative an utterance of
    another speaker. Windows of clips shorter than 160 frames are filled as `pad` says. For the
    Hive-MTL model, `outputs` names the model outputs to give targets for (`speaker_pred`,
    `ln`, and each label task's output in `task_values`: output name -> (labels, whether the task
    is binary), the labels per speaker in `speakers` order or per clip by cache entry name, see
    `task_values_by_row`), and batches come with per-output sample weights that mask rows
    without a label.

    With `replicas` > 1 (tf.distribute), the rows of a batch (windows, targets and weights alike)
    are `replicas` consecutive stacked blocks of batch_size / replicas / 3 triplets each, so the
    loss is the same as on one device; see `replica_order`. With `triplets` False (Hive-MTL
    without a triplet loss) each row is drawn on its own, with the same draws as
    `SpeakerClassBatches`: the same seed gives single-task training's windows.
    """

    def __init__(
        self,
        utterances: dict[str, list[Path]],
        batch_size: int,
        steps_per_epoch: int,
        seed: int = 0,
        first_epoch: int = 0,
        outputs: tuple[str, ...] = (),
        speakers: list[str] | None = None,
        task_values: dict[str, tuple[np.ndarray | dict[str, float], bool]] | None = None,
        replicas: int = 1,
        balanced: bool = False,
        pad: str = "zeros",
        triplets: bool = True,
        **kwargs,
    ):
        super().__init__(steps_per_epoch, seed, first_epoch, **kwargs)
        if triplets:
            check_triplet_batch_size(batch_size, replicas)
        self.utterances = utterances
        self.speaker_names = list(utterances)
        self.entries, self.row_speakers = flat_entries_and_labels(utterances, self.speaker_names)
        self.sampler = UtteranceSampler(utterances, balanced)
        self.triplets = triplets
        if triplets:
            self.sampler.check_triplets()
        self.pad = pad
        self.batch_size = batch_size
        self.replicas = replicas
        self.row_order = replica_order(batch_size // 3, replicas) if triplets else np.arange(batch_size)
        self.outputs = tuple(outputs)
        if self.outputs:
            class_of = {speaker: i for i, speaker in enumerate(speakers or self.speaker_names)}
            self.class_of_name = np.array([class_of[s] for s in self.speaker_names], dtype=np.int32)
            self.task_rows = task_values_by_row(task_values or {}, self.entries, self.class_of_name[self.row_speakers])

    def targets(self, rows: np.ndarray) -> tuple:
        """(y, sample_weight) of the utterances `rows` (positions in `entries`); see `stacked_targets`."""
        speaker_ids = self.row_speakers[rows]
        if not self.outputs:
            return stacked_targets((), speaker_ids, {})
        return stacked_targets(self.outputs, self.class_of_name[speaker_ids], rows_of(self.task_rows, rows))

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Rows (positions in `entries`) of one stacked batch and the speaker (position in `speaker_names`) of each."""
        if not self.triplets:
            rows = self.sampler.draw(self.batch_size, rng)
            return rows, self.row_speakers[rows]
        rows = np.concatenate(self.sampler.draw_triplets(self.batch_size // 3, rng))
        return rows, self.row_speakers[rows]

    def windows_and_rows(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Windows of batch `index` and the utterance (position in `entries`) of each, in the single stacked order [a; p; n]."""
        rng = self.rng(index)
        rows, _ = self.sample(rng)
        return read_windows([self.entries[row] for row in rows], rng, self.window_length(index), self.pad), rows

    def __getitem__(self, index: int):
        windows, rows = self.windows_and_rows(index)
        return (windows[self.row_order], *self.targets(rows[self.row_order]))


class HardNegativeTripletBatches(TripletBatches):
    """The reference's hard-negative batcher: triplets mined from a history of recent embeddings.

    Every `refresh_every` batches, `history_speakers` speakers x `history_utterances` windows are
    embedded with the current model into a ring buffer that keeps `history_refreshes` refreshes.
    Each anchor (a history row) gets as positive the least similar window of another utterance
    of its speaker, and as negative the most similar window of another speaker among
    `negative_candidates` history rows drawn for that anchor. Mining is vectorised: one matrix
    product per batch. `embed` maps windows (n, 160, 64, 1) to (n, 512). The options are those
    of `TripletBatches`: a refresh draws its speakers (among those with 2 utterances) uniformly
    with `balanced`, as the reference's did, else in proportion to their utterances, as
    unbalanced rows come; windows of short clips are filled as `pad` says.
    """

    def __init__(
        self,
        utterances: dict[str, list[Path]],
        batch_size: int,
        steps_per_epoch: int,
        embed: Callable[[np.ndarray], np.ndarray],
        seed: int = 0,
        first_epoch: int = 0,
        history_speakers: int = HARD_NEGATIVE_HISTORY_SPEAKERS,
        history_utterances: int = HARD_NEGATIVE_HISTORY_UTTERANCES,
        history_refreshes: int = HARD_NEGATIVE_HISTORY_REFRESHES,
        refresh_every: int = HARD_NEGATIVE_REFRESH_EVERY,
        negative_candidates: int = HARD_NEGATIVE_CANDIDATES,
        replicas: int = 1,
        **kwargs,
    ):
        super().__init__(utterances, batch_size, steps_per_epoch, seed, first_epoch, replicas=replicas, **kwargs)
        if self.window_frames is not None:
            raise ValueError("hard-negative mining keeps a history of fixed-length windows: it cannot draw variable window lengths")
        class_of = {speaker: index for index, speaker in enumerate(self.speaker_names)}
        self.anchor_speakers = np.array([class_of[s] for s in triplet_speakers(utterances)], dtype=np.int64)
        if len(self.anchor_speakers) < 2:
            raise CorpusError("hard-negative mining needs at least 2 speakers with 2 or more training utterances")
        if history_speakers < 2 or history_utterances < 1 or history_refreshes < 1 or negative_candidates < 1:
            raise ValueError("hard-negative mining needs history_speakers >= 2 (negatives come from other speakers in the history) "
                             "and history_utterances, history_refreshes and negative_candidates >= 1")
        self.embed = embed
        self.speakers_per_refresh = min(history_speakers, len(self.anchor_speakers))
        self.history_utterances = history_utterances
        self.refresh_every = refresh_every
        self.negative_candidates = negative_candidates
        size = self.speakers_per_refresh * history_utterances * history_refreshes
        self.history_windows = np.zeros((size, NUM_FRAMES, NUM_FBANKS, 1), dtype=np.float32)
        self.history_embeddings = np.zeros((size, EMBEDDING_SIZE), dtype=np.float32)
        self.history_speakers = np.full(size, -1, dtype=np.int64)  # Position in `speaker_names`; -1: empty slot.
        self.history_utterance_ids = np.full(size, -1, dtype=np.int64)  # Utterance of each row: see `utterance_id`.
        self.first_utterance_id = np.concatenate([[0], np.cumsum([len(utterances[s]) for s in self.speaker_names])[:-1]]).astype(np.int64)
        self.next_slot = 0
        self.batches_since_refresh = 0
        self.history_refreshes = history_refreshes
        self.lock = threading.Lock()

    def utterance_id(self, speaker_id: int, index: int) -> int:
        """A number for utterance `index` of speaker `speaker_id`, unique across speakers."""
        return int(self.first_utterance_id[speaker_id] + index)

    def refresh(self, rng: np.random.Generator) -> None:
        """Embed fresh windows of random speakers with the current model into the ring buffer."""
        counts = np.array([len(self.utterances[self.speaker_names[s]]) for s in self.anchor_speakers], dtype=np.float64)
        weights = None if self.sampler.balanced else counts / counts.sum()
        speakers = rng.choice(self.anchor_speakers, self.speakers_per_refresh, replace=False, p=weights)
        entries, speaker_ids, utterance_ids = [], [], []
        for speaker_id in speakers:
            own = self.utterances[self.speaker_names[speaker_id]]
            picks = rng.choice(len(own), min(self.history_utterances, len(own)), replace=False)
            entries += [own[p] for p in picks]
            speaker_ids += [speaker_id] * len(picks)
            utterance_ids += [self.utterance_id(speaker_id, p) for p in picks]
        self.remember(read_windows(entries, rng, pad=self.pad), np.array(speaker_ids), np.array(utterance_ids))

    def remember(self, windows: np.ndarray, speaker_ids: np.ndarray, utterance_ids: np.ndarray) -> None:
        """Embed windows and store them in the ring buffer with the speaker and utterance they came from."""
        slots = (self.next_slot + np.arange(len(windows))) % len(self.history_speakers)
        self.history_windows[slots] = windows
        self.history_embeddings[slots] = np.asarray(self.embed(windows), dtype=np.float32)
        self.history_speakers[slots] = speaker_ids
        self.history_utterance_ids[slots] = utterance_ids
        self.next_slot = int(slots[-1] + 1) % len(self.history_speakers)

    def mine(self, rng: np.random.Generator) -> np.ndarray:
        """History rows of one stacked batch: anchors, their hardest positives, their hardest negatives."""
        anchors = self.sample_anchors(rng)
        positives = self.hardest_positives(anchors)
        negatives = self.hardest_negatives(anchors, self.draw_negative_candidates(anchors, rng))
        return np.concatenate([anchors, positives, negatives])

    def sample_anchors(self, rng: np.random.Generator) -> np.ndarray:
        """Random history rows whose speaker has another row in the history."""
        speakers = self.history_speakers
        counts = np.bincount(speakers[speakers >= 0], minlength=len(self.speaker_names))
        usable = np.flatnonzero((speakers >= 0) & (counts[np.maximum(speakers, 0)] >= 2))
        return rng.choice(usable, self.batch_size // 3)

    def similarity(self, anchors: np.ndarray) -> np.ndarray:
        """Cosine similarity of each anchor to every history row: (anchors, history)."""
        return self.history_embeddings[anchors] @ self.history_embeddings.T

    def hardest_positives(self, anchors: np.ndarray) -> np.ndarray:
        """For each anchor, the least similar window of another utterance of its speaker.

        Another window of the anchor's own utterance shares its channel and session, so it
        teaches little about the speaker: it is taken only when the history holds no other
        utterance of that speaker.
        """
        speakers, utterances = self.history_speakers, self.history_utterance_ids
        same_speaker = speakers[anchors][:, None] == speakers[None, :]
        other_utterance = same_speaker & (utterances[anchors][:, None] != utterances[None, :])
        other_window = same_speaker & (anchors[:, None] != np.arange(len(speakers))[None, :])
        allowed = np.where(other_utterance.any(axis=1, keepdims=True), other_utterance, other_window)
        return np.argmin(np.where(allowed, self.similarity(anchors), np.inf), axis=1)

    def draw_negative_candidates(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(anchors, k) history rows of other speakers, drawn afresh for each anchor, k = `negative_candidates`.

        One shared sample would give every anchor of a batch its negative from the same few
        rows. Rows are drawn without replacement; -1 pads when fewer than k rows qualify.
        """
        speakers = self.history_speakers
        eligible = (speakers[None, :] >= 0) & (speakers[None, :] != speakers[anchors][:, None])
        k = min(self.negative_candidates, len(speakers))
        keys = np.where(eligible, rng.random(eligible.shape), np.inf)  # The k smallest keys: a uniform sample.
        candidates = np.argpartition(keys, k - 1, axis=1)[:, :k]
        return np.where(np.isfinite(np.take_along_axis(keys, candidates, axis=1)), candidates, -1)

    def hardest_negatives(self, anchors: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """For each anchor, the most similar of its candidate rows that belongs to another speaker."""
        speakers = self.history_speakers
        scores = np.take_along_axis(self.similarity(anchors), np.maximum(candidates, 0), axis=1)
        valid = (candidates >= 0) & (speakers[np.maximum(candidates, 0)] != speakers[anchors][:, None])
        best = np.argmax(np.where(valid, scores, -np.inf), axis=1)
        assert valid[np.arange(len(anchors)), best].all(), "each refresh embeds at least 2 speakers, so every anchor has negatives"
        return candidates[np.arange(len(anchors)), best]

    def windows_and_rows(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Mined windows and the utterance of each: a history row's utterance id is its position in `entries`."""
        with self.lock:
            rng = self.rng(index)
            if self.history_speakers.max() < 0:
                for _ in range(self.history_refreshes):
                    self.refresh(rng)
            elif self.batches_since_refresh >= self.refresh_every:
                self.refresh(rng)
                self.batches_since_refresh = 0
            self.batches_since_refresh += 1
            rows = self.mine(rng)
            return self.history_windows[rows], self.history_utterance_ids[rows]
