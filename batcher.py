"""Windows and batches of filterbank features for training and inference."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from audio import CorpusError, cache_dir, cached_entries, natural_key, pad_mfcc
from constants import (
    EMBEDDING_SIZE,
    HARD_NEGATIVE_CANDIDATES,
    HARD_NEGATIVE_HISTORY_REFRESHES,
    HARD_NEGATIVE_HISTORY_SPEAKERS,
    HARD_NEGATIVE_HISTORY_UTTERANCES,
    HARD_NEGATIVE_REFRESH_EVERY,
    NUM_FBANKS,
    NUM_FRAMES,
    TRAIN_TEST_RATIO,
)


def sample_from_mfcc(mfcc: np.ndarray, max_length: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """A random window of `max_length` frames (uniform start), zero-padded when too short: (max_length, 64, 1)."""
    rng = rng or np.random.default_rng()
    if len(mfcc) >= max_length:
        start = int(rng.integers(0, len(mfcc) - max_length + 1))
        window = mfcc[start : start + max_length]
    else:
        window = pad_mfcc(mfcc, max_length)
    return np.expand_dims(window, axis=-1)


def sample_from_mfcc_file(utterance_file: str | os.PathLike, max_length: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """`sample_from_mfcc` on a cached `.npy` feature file."""
    return sample_from_mfcc(np.load(utterance_file), max_length, rng)


# ----------------------------------------------------------------------------------------------
# Training data: the cached corpus, split, and streamed as batches (never all windows in RAM).


@dataclass
class TrainingData:
    """Cache entries of the training speakers, split per speaker, plus held-out speakers.

    `train`/`test` follow the reference (per speaker, sorted, first 80 % train); `held_out`
    holds whole speakers kept out of training for speaker-disjoint verification.
    """

    cache_dir: Path
    train: dict[str, list[Path]]
    test: dict[str, list[Path]]
    held_out: dict[str, list[Path]]
    genders: dict[str, str]

    @property
    def speakers(self) -> list[str]:
        """Training speakers in class-index order."""
        return list(self.train)

    def gender_labels(self, speakers: list[str]) -> np.ndarray:
        """1.0 female, 0.0 male, NaN unknown, for each speaker."""
        return np.array([GENDER_TO_LABEL.get(self.genders.get(s), np.nan) for s in speakers], dtype=np.float32)


GENDER_TO_LABEL = {"F": 1.0, "M": 0.0}


def split_utterances(entries: list[Path], train_test_ratio: float = TRAIN_TEST_RATIO) -> tuple[list[Path], list[Path]]:
    """The reference split of one speaker: sorted, first 80 % train, rest test (a single utterance trains)."""
    ordered = sorted(entries, key=lambda p: natural_key(p.name))
    num_train = max(1, int(len(ordered) * train_test_ratio))
    return ordered[:num_train], ordered[num_train:]


def load_training_data(
    working_dir: str | os.PathLike,
    held_out_speakers: list[str] | tuple[str, ...] = (),
    train_test_ratio: float = TRAIN_TEST_RATIO,
) -> TrainingData:
    """Read `corpus.json` of a built cache and split it; raises CorpusError saying what is missing."""
    all_speakers, genders = cached_entries(working_dir)
    unknown = sorted(set(held_out_speakers) - set(all_speakers), key=natural_key)
    if unknown:
        raise CorpusError(f"held-out speakers not in the cache of {working_dir}: {', '.join(unknown)}")
    missing = [str(p) for entries in all_speakers.values() for p in entries if not p.is_file()]
    if missing:
        raise CorpusError(f"{len(missing)} cache entries listed in corpus.json are missing (e.g. {missing[0]}); run build-mfcc-cache again")
    train, test = {}, {}
    for speaker in sorted(set(all_speakers) - set(held_out_speakers), key=natural_key):
        train[speaker], test[speaker] = split_utterances(all_speakers[speaker], train_test_ratio)
    if len(train) < 2:
        raise CorpusError(f"{working_dir}: training needs at least 2 speakers, the cache has {len(train)} besides the held-out ones")
    held_out = {s: all_speakers[s] for s in held_out_speakers}
    return TrainingData(cache_dir(working_dir), train, test, held_out, genders)


def read_window(entry: Path, rng: np.random.Generator, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """A random window of one cached utterance, reading only those frames from disk (memory map)."""
    return sample_from_mfcc(np.load(entry, mmap_mode="r"), num_frames, rng).astype(np.float32)


def read_windows(entries: list[Path], rng: np.random.Generator, num_frames: int = NUM_FRAMES) -> np.ndarray:
    return np.stack([read_window(entry, rng, num_frames) for entry in entries])


class _EpochSeededBatches(keras.utils.PyDataset):
    """Random batches that are a pure function of (seed, epoch, index): a resumed run sees the same data."""

    def __init__(self, steps_per_epoch: int, seed: int, first_epoch: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed
        self.epoch = first_epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])


class SoftmaxBatches(_EpochSeededBatches):
    """(windows, speaker index) batches: each row a random utterance of a random speaker."""

    def __init__(self, utterances: dict[str, list[Path]], speakers: list[str], batch_size: int, steps_per_epoch: int, seed: int = 0, first_epoch: int = 0, **kwargs):
        super().__init__(steps_per_epoch, seed, first_epoch, **kwargs)
        class_of = {speaker: i for i, speaker in enumerate(speakers)}
        self.entries = [entry for speaker in utterances for entry in utterances[speaker]]
        self.labels = np.array([class_of[speaker] for speaker in utterances for _ in utterances[speaker]], dtype=np.int32)
        if not self.entries:
            raise CorpusError("no utterances to draw softmax batches from")
        self.batch_size = batch_size

    def __getitem__(self, index: int):
        rng = self.rng(index)
        rows = rng.integers(0, len(self.entries), self.batch_size)
        return read_windows([self.entries[i] for i in rows], rng), self.labels[rows]


def triplet_speakers(utterances: dict[str, list[Path]]) -> list[str]:
    """Speakers that can be anchors: at least two utterances."""
    return [speaker for speaker, entries in utterances.items() if len(entries) >= 2]


def check_triplet_batch_size(batch_size: int) -> None:
    if batch_size < 3 or batch_size % 3:
        raise ValueError(f"triplet batches stack anchors, positives and negatives: batch size must be a positive multiple of 3, got {batch_size}")


class TripletBatches(_EpochSeededBatches):
    """Random triplets in the reference's stacked order: anchors, then positives, then negatives.

    Anchor and positive are two different utterances of one speaker, the negative an utterance
    of another speaker. For the Hive-MTL model, `outputs` names the model outputs to give targets
    for (`speaker_pred`, `gender_pred`, `ln`), and batches come with per-output sample weights
    that mask the gender loss of speakers without a gender label.
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
        gender_labels: np.ndarray | None = None,
        **kwargs,
    ):
        super().__init__(steps_per_epoch, seed, first_epoch, **kwargs)
        check_triplet_batch_size(batch_size)
        self.utterances = utterances
        self.speaker_names = list(utterances)
        self.anchor_speakers = np.array([self.speaker_names.index(s) for s in triplet_speakers(utterances)], dtype=np.int64)
        if len(self.speaker_names) < 2:
            raise CorpusError("triplet batches need at least 2 speakers")
        if not len(self.anchor_speakers):
            raise CorpusError("triplet batches need speakers with at least 2 training utterances; every speaker has only 1")
        self.batch_size = batch_size
        self.outputs = tuple(outputs)
        if self.outputs:
            class_of = {speaker: i for i, speaker in enumerate(speakers or self.speaker_names)}
            self.class_of_name = np.array([class_of[s] for s in self.speaker_names], dtype=np.int32)
            genders = gender_labels if gender_labels is not None else np.full(len(class_of), np.nan, np.float32)
            self.gender_of_name = genders[self.class_of_name]

    def sample_speakers(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Anchor and negative speakers (positions in `speaker_names`) of one batch's triplets."""
        num_triplets = self.batch_size // 3
        anchor_ids = self.anchor_speakers[rng.integers(0, len(self.anchor_speakers), num_triplets)]
        offsets = rng.integers(1, len(self.speaker_names), num_triplets)  # Never the anchor's speaker.
        return anchor_ids, (anchor_ids + offsets) % len(self.speaker_names)

    def sample(self, rng: np.random.Generator) -> tuple[list[Path], np.ndarray]:
        """Entries of one stacked batch and the speaker (position in `speaker_names`) of each row."""
        anchor_ids, negative_ids = self.sample_speakers(rng)
        anchors, positives, negatives = [], [], []
        for anchor_id, negative_id in zip(anchor_ids, negative_ids):
            own = self.utterances[self.speaker_names[anchor_id]]
            first, second = rng.choice(len(own), 2, replace=False)
            other = self.utterances[self.speaker_names[negative_id]]
            anchors.append(own[first])
            positives.append(own[second])
            negatives.append(other[rng.integers(len(other))])
        return anchors + positives + negatives, np.concatenate([anchor_ids, anchor_ids, negative_ids])

    def targets(self, speaker_ids: np.ndarray) -> tuple:
        """(y,) for the triplet model, (y, sample_weight) dicts for the Hive-MTL model."""
        rows = len(speaker_ids)
        dummy = np.zeros((rows, 1), dtype=np.float32)  # The triplet loss reads only y_pred.
        if not self.outputs:
            return (dummy,)
        gender = self.gender_of_name[speaker_ids]
        known = ~np.isnan(gender)
        labels = {
            "speaker_pred": self.class_of_name[speaker_ids],
            "gender_pred": np.where(known, gender, 0.0).astype(np.float32)[:, None],
            "ln": dummy,
        }
        weights = {"speaker_pred": np.ones(rows, np.float32), "gender_pred": known.astype(np.float32), "ln": np.ones(rows, np.float32)}
        return {k: labels[k] for k in self.outputs}, {k: weights[k] for k in self.outputs}

    def windows_and_speakers(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng(index)
        entries, speaker_ids = self.sample(rng)
        return read_windows(entries, rng), speaker_ids

    def __getitem__(self, index: int):
        windows, speaker_ids = self.windows_and_speakers(index)
        return (windows, *self.targets(speaker_ids))


class HardNegativeTripletBatches(TripletBatches):
    """The reference's hard-negative batcher: triplets mined from a history of recent embeddings.

    Every `refresh_every` batches, `history_speakers` speakers x `history_utterances` windows are
    embedded with the current model into a ring buffer that keeps `history_refreshes` refreshes.
    Each anchor (a history row) gets the least similar window of its own speaker as positive and
    the most similar window of another speaker, among a random sample, as negative. Mining is
    vectorised: one matrix product per batch. `embed` maps windows (n, 160, 64, 1) to (n, 512).
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
        **kwargs,
    ):
        super().__init__(utterances, batch_size, steps_per_epoch, seed, first_epoch, **kwargs)
        if len(self.anchor_speakers) < 2:
            raise CorpusError("hard-negative mining needs at least 2 speakers with 2 or more training utterances")
        self.embed = embed
        self.speakers_per_refresh = min(history_speakers, len(self.anchor_speakers))
        self.history_utterances = history_utterances
        self.refresh_every = refresh_every
        self.negative_candidates = negative_candidates
        size = self.speakers_per_refresh * history_utterances * history_refreshes
        self.history_windows = np.zeros((size, NUM_FRAMES, NUM_FBANKS, 1), dtype=np.float32)
        self.history_embeddings = np.zeros((size, EMBEDDING_SIZE), dtype=np.float32)
        self.history_speakers = np.full(size, -1, dtype=np.int64)
        self.next_slot = 0
        self.batches_since_refresh = 0
        self.history_refreshes = history_refreshes
        self.lock = threading.Lock()

    def refresh(self, rng: np.random.Generator) -> None:
        """Embed fresh windows of random speakers with the current model into the ring buffer."""
        speakers = rng.choice(self.anchor_speakers, self.speakers_per_refresh, replace=False)
        entries, speaker_ids = [], []
        for speaker_id in speakers:
            own = self.utterances[self.speaker_names[speaker_id]]
            picks = rng.choice(len(own), min(self.history_utterances, len(own)), replace=False)
            entries += [own[p] for p in picks]
            speaker_ids += [speaker_id] * len(picks)
        windows = read_windows(entries, rng)
        slots = (self.next_slot + np.arange(len(entries))) % len(self.history_speakers)
        self.history_windows[slots] = windows
        self.history_embeddings[slots] = np.asarray(self.embed(windows), dtype=np.float32)
        self.history_speakers[slots] = speaker_ids
        self.next_slot = int(slots[-1] + 1) % len(self.history_speakers)

    def mine(self, rng: np.random.Generator) -> np.ndarray:
        """History rows of one stacked batch: anchors, hardest positives, hardest negatives."""
        speakers = self.history_speakers
        counts = np.bincount(speakers[speakers >= 0], minlength=len(self.speaker_names))
        usable = np.flatnonzero((speakers >= 0) & (counts[np.maximum(speakers, 0)] >= 2))
        anchors = rng.choice(usable, self.batch_size // 3)
        similarity = self.history_embeddings[anchors] @ self.history_embeddings.T
        same = speakers[anchors][:, None] == speakers[None, :]
        is_self = np.arange(len(speakers))[None, :] == anchors[:, None]
        positives = np.argmin(np.where(same & ~is_self, similarity, np.inf), axis=1)
        filled = np.flatnonzero(speakers >= 0)
        candidates = rng.choice(filled, min(self.negative_candidates, len(filled)), replace=False)
        negative_scores = np.where(same[:, candidates], -np.inf, similarity[:, candidates])
        negatives = candidates[np.argmax(negative_scores, axis=1)]
        return np.concatenate([anchors, positives, negatives])

    def windows_and_speakers(self, index: int) -> tuple[np.ndarray, np.ndarray]:
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
            return self.history_windows[rows], self.history_speakers[rows]
