"""The Deep Speaker triplet loss on cosine similarity, in `keras.ops` so it runs on every backend.

A triplet batch is three stacked thirds along the batch axis: anchors, then positives (same
speaker as the anchor in the same row), then negatives (another speaker). Keras must not reorder
such a batch: pass `shuffle=False` to `fit`, or feed batches from a generator that builds them.
"""

from __future__ import annotations

from keras import ops

from constants import TRIPLET_ALPHA


def batch_cosine_similarity(x1, x2):
    """Row-wise cosine similarity of L2-normalised vectors, which is their dot product: (batch,)."""
    return ops.sum(ops.multiply(x1, x2), axis=-1)


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
