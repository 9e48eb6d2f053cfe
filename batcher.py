"""Windows and batches of filterbank features for training and inference."""

from __future__ import annotations

import os

import numpy as np

from audio import pad_mfcc


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
