"""The Deep Speaker triplet loss on cosine similarity, in `keras.ops` so it runs on every backend.

A triplet batch is three stacked thirds along the batch axis: anchors, then positives (same
speaker as the anchor in the same row), then negatives (another speaker). Keras must not reorder
such a batch: pass `shuffle=False` to `fit`, or feed batches from a generator that builds them.
"""

from __future__ import annotations

import numpy as np
from keras import ops

from constants import L2_NORMALIZE_EPSILON, TRIPLET_ALPHA


def l2_normalize(x, axis: int = -1, epsilon: float = L2_NORMALIZE_EPSILON):
    """x / sqrt(max(sum(x^2), epsilon)) along `axis`, in float32: exactly Keras 2's `K.l2_normalize`.

    The one L2 normalisation of every graph (the embedding layer `ln`, the AAM head's cosines, the
    exported model); `inference.l2_normalize` is its NumPy twin for arrays outside a model. The
    epsilon only guards an all-zero vector. Float32 because in float16 the sum of squares
    overflows past a norm of 256.
    """
    x = ops.cast(x, "float32")
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), epsilon))


def batch_cosine_similarity(x1, x2):
    """Row-wise cosine similarity of L2-normalised vectors, which is their dot product: (batch,).

    NumPy arrays in, a NumPy array out (how the reference's examples score embeddings, importing
    it from `test`); tensors in, a tensor out (the triplet loss). One side may be a single row
    (1, d), scored against every row of the other, as the reference's example_pcm.py calls it:
    `batch_cosine_similarity(predict[0:1], predict[1:])`.
    """
    shape1, shape2 = tuple(x1.shape), tuple(x2.shape)
    one_row = len(shape1) == len(shape2) == 2 and shape1[1] == shape2[1] and 1 in (shape1[0], shape2[0])
    if shape1 != shape2 and not one_row:
        raise ValueError(f"embeddings must have the same shape, or one of them a single row (1, d); got {shape1} and {shape2}")
    similarity = ops.sum(ops.multiply(x1, x2), axis=-1)
    return ops.convert_to_numpy(similarity) if isinstance(x1, np.ndarray) and isinstance(x2, np.ndarray) else similarity


def deep_speaker_loss(y_true, y_pred, alpha: float = TRIPLET_ALPHA):
    """mean(max(cos(a, n) - cos(a, p) + alpha, 0)) over the triplets of a stacked batch.

    `y_pred` holds the embeddings [anchors; positives; negatives]; its batch size must be a
    multiple of 3. `y_true` is ignored (Keras requires targets; any array with the batch size works).
    """
    del y_true
    batch_size = y_pred.shape[0]
    if batch_size is not None and batch_size % 3:
        raise ValueError(
            f"Triplet batch size must be a multiple of 3 (anchors, positives, negatives); got {batch_size}."
        )
    # Split raises on an uneven batch on every backend, also when the batch size is only known at run time.
    anchors, positives, negatives = ops.split(y_pred, 3, axis=0)
    anchor_positive = batch_cosine_similarity(anchors, positives)
    anchor_negative = batch_cosine_similarity(anchors, negatives)
    return ops.mean(ops.maximum(anchor_negative - anchor_positive + alpha, 0.0))
