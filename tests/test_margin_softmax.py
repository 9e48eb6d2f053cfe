"""The AAM (ArcFace) head: cosines out, the margin in the loss, checkpoints that load as the embedding model."""

import math

import keras
import numpy as np
import pytest

from conv_models import AAM_LAYER_NAME, DeepSpeakerModel, load_weights_by_name
from margin_softmax import AdditiveAngularMarginLoss, CosineClassifier


def unit(x: np.ndarray, axis: int) -> np.ndarray:
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def test_cosine_classifier_outputs_the_cosine_to_each_class_weight():
    rng = np.random.default_rng(0)
    layer = CosineClassifier(5)
    inputs = rng.standard_normal((4, 8)).astype(np.float32) * 30  # Norm does not matter.
    cosines = keras.ops.convert_to_numpy(layer(inputs))
    expected = unit(inputs, 1) @ unit(keras.ops.convert_to_numpy(layer.kernel), 0)
    np.testing.assert_allclose(cosines, expected, atol=1e-5)
    assert cosines.dtype == np.float32


def numpy_aam_loss(labels: np.ndarray, cosines: np.ndarray, margin: float, scale: float) -> np.ndarray:
    angles = np.arccos(np.clip(cosines, -1, 1))
    logits = scale * cosines.copy()
    rows = np.arange(len(labels))
    target = angles[rows, labels] + margin
    logits[rows, labels] = scale * np.where(target < math.pi, np.cos(target), cosines[rows, labels] - margin * math.sin(margin))
    logits -= logits.max(axis=1, keepdims=True)
    return -(logits[rows, labels] - np.log(np.exp(logits).sum(axis=1)))


def test_aam_loss_is_cross_entropy_of_scaled_cosines_with_the_margin_added_to_the_true_angle():
    rng = np.random.default_rng(1)
    cosines = np.tanh(rng.standard_normal((6, 7))).astype(np.float32)
    cosines[0, 2] = -0.99  # theta + m past pi: the linear fallback.
    labels = np.array([2, 0, 1, 6, 3, 3])
    loss = AdditiveAngularMarginLoss(margin=0.2, scale=30.0, reduction=None)
    got = keras.ops.convert_to_numpy(loss(labels, cosines))
    np.testing.assert_allclose(got, numpy_aam_loss(labels, cosines, 0.2, 30.0), rtol=1e-4, atol=1e-4)


def test_the_margin_makes_the_loss_larger_than_without_it():
    cosines = np.array([[0.3, 0.25, -0.2]], dtype=np.float32)
    with_margin = float(AdditiveAngularMarginLoss(0.2, 30.0)(np.array([0]), cosines))
    without = float(AdditiveAngularMarginLoss(0.0, 30.0)(np.array([0]), cosines))
    assert with_margin > without


def test_an_aam_checkpoint_loads_by_name_into_the_embedding_model_and_gives_its_embedding(tmp_path, real_features):
    trained = DeepSpeakerModel(include_softmax=True, num_speakers_softmax=7, model_size="small", head="aam").m
    assert trained.get_layer(AAM_LAYER_NAME).output.shape == (None, 7)
    trained.save(tmp_path / "best.h5")
    embedding_model = DeepSpeakerModel(model_size="small").m
    skipped = load_weights_by_name(embedding_model, tmp_path / "best.h5")
    assert skipped == []
    inner = keras.Model(trained.inputs, trained.get_layer("ln").output)
    np.testing.assert_allclose(embedding_model.predict(real_features, verbose=0), inner.predict(real_features, verbose=0), atol=1e-6)


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="head must be one of"):
        DeepSpeakerModel(include_softmax=True, num_speakers_softmax=3, model_size="small", head="cosface")
