"""The triplet loss: hand-computed values, the stacking convention, and real training steps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from constants import TRIPLET_ALPHA
from conv_models import DeepSpeakerModel
from triplet_loss import batch_cosine_similarity, deep_speaker_loss

REPO_ROOT = Path(__file__).resolve().parent.parent


def unit(degrees: float) -> list[float]:
    """2-d unit vector at an angle, so cosines between test vectors are known by hand."""
    radians = np.deg2rad(degrees)
    return [float(np.cos(radians)), float(np.sin(radians))]


def loss(anchors, positives, negatives, alpha: float = TRIPLET_ALPHA) -> float:
    y_pred = np.array([*anchors, *positives, *negatives], dtype=np.float32)
    return float(keras.ops.convert_to_numpy(deep_speaker_loss(None, y_pred, alpha=alpha)))


def test_cosine_similarity_of_unit_vectors_is_their_row_wise_dot_product():
    x1 = np.array([unit(0), unit(90), unit(30)], dtype=np.float32)
    x2 = np.array([unit(60), unit(90), unit(210)], dtype=np.float32)
    similarity = keras.ops.convert_to_numpy(batch_cosine_similarity(x1, x2))
    np.testing.assert_allclose(similarity, [0.5, 1.0, -1.0], atol=1e-6)


def test_loss_matches_hand_computed_triplets():
    # Triplet 1: cos(a, p) = 0, cos(a, n) = 0.8 -> 0.8 - 0 + 0.1 = 0.9.
    # Triplet 2: cos(a, p) = 0.8, cos(a, n) = 0 -> max(0 - 0.8 + 0.1, 0) = 0. Mean: 0.45.
    anchors = [[1.0, 0.0], [0.0, 1.0]]
    positives = [[0.0, 1.0], [0.6, 0.8]]
    negatives = [[0.8, 0.6], [1.0, 0.0]]
    assert loss(anchors, positives, negatives) == pytest.approx(0.45, abs=1e-6)


def test_loss_is_zero_when_positives_are_much_closer_than_negatives():
    assert loss([unit(0), unit(120)], [unit(5), unit(125)], [unit(90), unit(250)]) == 0.0


def test_loss_is_the_margin_when_positive_and_negative_are_equally_close():
    assert loss([unit(0)], [unit(40)], [unit(-40)], alpha=0.3) == pytest.approx(0.3, abs=1e-6)


def test_batch_is_anchors_then_positives_then_negatives_paired_by_row():
    anchors, close, far = [unit(0), unit(180)], [unit(5), unit(185)], [unit(90), unit(270)]
    assert loss(anchors, close, far) == 0.0
    # Swapping the positive and negative thirds makes every triplet violate the margin.
    assert loss(anchors, far, close) == pytest.approx(np.cos(np.deg2rad(5)) + TRIPLET_ALPHA, abs=1e-6)
    # Rows pair by index: shuffling the positives breaks the pairs.
    assert loss(anchors, close[::-1], far) > 1.0


def test_loss_ignores_y_true():
    y_pred = np.array([unit(0), unit(10), unit(100)], dtype=np.float32)
    values = [
        keras.ops.convert_to_numpy(deep_speaker_loss(y_true, y_pred)) for y_true in (None, np.ones((3, 1)), np.zeros(3))
    ]
    assert values[0] == values[1] == values[2]


@pytest.mark.parametrize("batch_size", [1, 4, 5])
def test_batch_size_not_divisible_by_three_raises(batch_size):
    with pytest.raises(ValueError, match="multiple of 3"):
        deep_speaker_loss(None, np.ones((batch_size, 2), dtype=np.float32))


def real_triplet_batch(real_features: np.ndarray) -> np.ndarray:
    """Two triplets from real windows: rows 0, 1 share a speaker; rows 2, 3 are other speakers."""
    return real_features[[0, 1, 1, 0, 2, 3]]


def test_one_sgd_step_on_real_triplets_gives_a_finite_loss_and_changes_weights(real_features):
    model = DeepSpeakerModel(model_size="small")
    model.m.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss=deep_speaker_loss)
    before = [keras.ops.convert_to_numpy(w) for w in model.m.trainable_weights]
    x = real_triplet_batch(real_features)
    history = model.m.fit(x, np.zeros((6, 1)), batch_size=6, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [keras.ops.convert_to_numpy(w) for w in model.m.trainable_weights]
    assert any(not np.array_equal(b, a) for b, a in zip(before, after))
    assert not np.array_equal(before[0], after[0])  # The first conv kernel: gradients reach the input.


JAX_TRAIN_STEP = """
import sys
import keras
import numpy as np
assert keras.backend.backend() == "jax", keras.backend.backend()
from conv_models import DeepSpeakerModel
from triplet_loss import deep_speaker_loss
model = DeepSpeakerModel(model_size="small")
model.m.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss=deep_speaker_loss)
x = np.load(sys.argv[1])
before = keras.ops.convert_to_numpy(model.m.trainable_weights[0])
loss = model.m.train_on_batch(x, np.zeros((len(x), 1)))
assert np.isfinite(loss), loss
assert not np.array_equal(before, keras.ops.convert_to_numpy(model.m.trainable_weights[0]))
"""


def test_loss_trains_the_model_on_the_jax_backend(real_features, jax_subprocess_env, tmp_path):
    features = tmp_path / "triplets.npy"
    np.save(features, real_triplet_batch(real_features))
    result = subprocess.run(
        [sys.executable, "-c", JAX_TRAIN_STEP, str(features)],
        cwd=REPO_ROOT, env=jax_subprocess_env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]
