"""test.py: cosine scoring of embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from test import batch_cosine_similarity


def test_cosine_of_unit_vectors_is_their_row_wise_dot_product():
    x1 = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    x2 = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, -1.0]])
    np.testing.assert_allclose(batch_cosine_similarity(x1, x2), [1.0, 0.96, -1.0])


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        batch_cosine_similarity(np.zeros((2, 512)), np.zeros((3, 512)))
