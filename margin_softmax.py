"""Additive angular margin (AAM, ArcFace) softmax: the speaker head WeSpeaker and SpeechBrain train with.

The head is a cosine classifier: its output for class j is cos(theta_j), the cosine between the
unit embedding and the unit weight vector of class j, so the embedding the head trains is the
one verification scores with cosines. The loss adds a margin m to the angle of the true class
before the scaled softmax cross-entropy, s * cos(theta_y + m), which pulls each speaker's
embeddings into a tighter cone than plain softmax does. The margin lives in the loss (it needs
the label), so the model itself outputs plain cosines and its argmax is the predicted class.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import layers, ops

from constants import AAM_MARGIN, AAM_SCALE
from triplet_loss import l2_normalize

SERIALIZATION_PACKAGE = "hive_mtl"


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class CosineClassifier(layers.Layer):
    """cos(embedding, class weight) for every class: (batch, dim) -> (batch, num_classes), float32."""

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")  # Cosines and their softmax stay float32 under mixed precision.
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)

    def build(self, input_shape) -> None:
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.num_classes), initializer="glorot_uniform")

    def call(self, inputs):
        return ops.matmul(l2_normalize(inputs, axis=-1), l2_normalize(self.kernel, axis=0))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class AdditiveAngularMarginLoss(keras.losses.Loss):
    """Cross-entropy of s * cos(theta + m) for the true class and s * cos(theta) for the others.

    Where theta + m would pass pi (cos(theta) < cos(pi - m)), the margin becomes the linear
    cos(theta) - m * sin(m), so the true-class logit keeps falling with the angle (ArcFace's
    fallback). `y_true` holds class indices, `y_pred` the cosines of `CosineClassifier`.
    """

    def __init__(self, margin: float = AAM_MARGIN, scale: float = AAM_SCALE, name: str = "aam_softmax", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.margin = float(margin)
        self.scale = float(scale)

    def call(self, y_true, y_pred):
        cosine = ops.clip(ops.cast(y_pred, "float32"), -1.0 + 1e-7, 1.0 - 1e-7)
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        one_hot = ops.one_hot(labels, ops.shape(cosine)[-1], dtype="float32")
        sine = ops.sqrt(1.0 - ops.square(cosine))
        with_margin = cosine * math.cos(self.margin) - sine * math.sin(self.margin)
        with_margin = ops.where(cosine > math.cos(math.pi - self.margin), with_margin, cosine - self.margin * math.sin(self.margin))
        logits = self.scale * (one_hot * with_margin + (1.0 - one_hot) * cosine)
        return keras.losses.categorical_crossentropy(one_hot, logits, from_logits=True)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin, "scale": self.scale}
