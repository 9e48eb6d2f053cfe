"""Score normalisation against a cohort of training speakers: mean-centring and adaptive s-norm (AS-norm).

The cohort is one L2-normalised mean embedding per training speaker (`cohort.npy` beside the
checkpoint, float16: a few hundred kB). `mean` subtracts the cohort's mean embedding from both
sides before the cosine (the embedding space's offset, e.g. a channel, cancels); `asnorm`
standardises a score by the mean and spread of each side's top-k cohort scores (Matejka et al.
2017), averaging the two sides. Neither is a default: measure it on your corpora first
(`test-model --score_norm`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from constants import ASNORM_TOP_K, COHORT_FILE_NAME
from fileio import save_npy_atomically
from inference import l2_normalize

SCORE_NORMS = ("none", "mean", "asnorm")


def cohort_file(checkpoint_file: str | os.PathLike) -> Path:
    return Path(checkpoint_file).parent / COHORT_FILE_NAME


def read_cohort(checkpoint_file: str | os.PathLike) -> np.ndarray:
    """The cohort beside a checkpoint as (speakers, 512) float32 unit rows; a missing one is a FileNotFoundError naming it."""
    path = cohort_file(checkpoint_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no cohort beside the checkpoint; make one with `cli.py build-cohort`")
    return l2_normalize(np.load(path).astype(np.float32))


def normalised_scores(first: np.ndarray, second: np.ndarray, method: str, cohort: np.ndarray | None, top_k: int = ASNORM_TOP_K) -> np.ndarray:
    """Scores of trials (row i of `first` against row i of `second`, unit embeddings) after `method` (SCORE_NORMS)."""
    if method not in SCORE_NORMS:
        raise ValueError(f"score normalisation must be one of {', '.join(SCORE_NORMS)}; got {method!r}")
    first, second = l2_normalize(first, np.float64), l2_normalize(second, np.float64)
    if method == "none":
        return np.einsum("td,td->t", first, second)
    if cohort is None or not len(cohort):
        raise ValueError(f"--score_norm {method} needs a cohort of training speakers")
    if method == "mean":
        centre = cohort.mean(axis=0)
        return np.einsum("td,td->t", l2_normalize(first - centre, np.float64), l2_normalize(second - centre, np.float64))
    scores = np.einsum("td,td->t", first, second)
    k = min(top_k, len(cohort))
    standardised = []
    for side in (first, second):
        top = -np.partition(-(side @ cohort.T), k - 1, axis=1)[:, :k]  # The k highest cohort scores of each trial's side.
        standardised.append((scores - top.mean(axis=1)) / np.maximum(top.std(axis=1), 1e-6))
    return (standardised[0] + standardised[1]) / 2


def build_cohort(checkpoint_file: str | os.PathLike, speakers: dict[str, list], precision: str = "float32") -> Path:
    """Write `cohort.npy` beside the checkpoint: each speaker's mean whole-file embedding, L2-normalised, float16."""
    from inference import Embedder

    embedder = Embedder.from_checkpoint(checkpoint_file, precision=precision)
    means = np.stack([embedder.embed_files(paths).mean(axis=0) for paths in speakers.values() if paths])
    path = cohort_file(checkpoint_file)
    save_npy_atomically(path, l2_normalize(means).astype(np.float16))
    return path
