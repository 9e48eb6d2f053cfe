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

from constants import ASNORM_STD_FLOOR, ASNORM_TOP_K, COHORT_FILE_NAME
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
    """Scores of trials (row i of `first` against row i of `second`) after `method` (SCORE_NORMS)."""
    count = len(first)
    return normalised_trial_scores(np.concatenate([first, second]), np.arange(count), np.arange(count, 2 * count), method, cohort, top_k)


def normalised_trial_scores(embeddings: np.ndarray, first: np.ndarray, second: np.ndarray, method: str, cohort: np.ndarray | None,
                            top_k: int = ASNORM_TOP_K) -> np.ndarray:
    """Scores of trials (row `first[i]` of `embeddings` against row `second[i]`) after `method` (SCORE_NORMS).

    One row per file: a file in many trials has its cohort scores computed once (a published list
    pairs each file with hundreds of others)."""
    if method not in SCORE_NORMS:
        raise ValueError(f"score normalisation must be one of {', '.join(SCORE_NORMS)}; got {method!r}")
    if method != "none" and (cohort is None or not len(cohort)):
        raise ValueError(f"--score_norm {method} needs a cohort of training speakers")
    unit = l2_normalize(embeddings, np.float64)
    if method == "mean":
        unit = l2_normalize(unit - cohort.mean(axis=0), np.float64)
    scores = np.einsum("td,td->t", unit[first], unit[second])
    if method != "asnorm":
        return scores
    mean, std = top_cohort_statistics(unit, cohort, top_k)
    return ((scores - mean[first]) / std[first] + (scores - mean[second]) / std[second]) / 2


def top_cohort_statistics(unit_embeddings: np.ndarray, cohort: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (floored at ASNORM_STD_FLOOR) of each row's `top_k` highest cohort scores."""
    k = min(top_k, len(cohort))
    top = -np.partition(-(unit_embeddings @ cohort.T), k - 1, axis=1)[:, :k]
    return top.mean(axis=1), np.maximum(top.std(axis=1), ASNORM_STD_FLOOR)


def build_cohort(checkpoint_file: str | os.PathLike, speakers: dict[str, list], precision: str = "float32") -> Path:
    """Write `cohort.npy` beside the checkpoint: each speaker's mean whole-file embedding, L2-normalised, float16."""
    from inference import Embedder

    embedder = Embedder.from_checkpoint(checkpoint_file, precision=precision)
    groups = [paths for paths in speakers.values() if paths]
    embeddings = embedder.embed_files([path for paths in groups for path in paths])  # One call: batches span speakers.
    ends = np.cumsum([len(paths) for paths in groups])
    means = np.stack([rows.mean(axis=0) for rows in np.split(embeddings, ends[:-1])])
    path = cohort_file(checkpoint_file)
    save_npy_atomically(path, l2_normalize(means).astype(np.float16))
    return path
