"""Scoring embeddings: cosine similarity of L2-normalised vectors."""

from __future__ import annotations

import numpy as np


def batch_cosine_similarity(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays of L2-normalised embeddings: their dot product."""
    x1, x2 = np.asarray(x1), np.asarray(x2)
    if x1.shape != x2.shape:
        raise ValueError(f"embeddings must have the same shape, got {x1.shape} and {x2.shape}")
    return np.sum(x1 * x2, axis=-1)
