"""The Deep Speaker ResCNN and the Hive-MTL model built on the same trunk.

Layer names follow the reference implementation exactly: the published Keras 2 checkpoint
(`ResCNN_triplet_training_checkpoint_265.h5`) is loaded by layer name, so a renamed layer would
silently keep its random weights. Where the reference used `Lambda` layers (which break across
Keras versions and backends) this module uses small registered layers, so `.keras` files reload
with `keras.models.load_model` without `custom_objects`, as long as this module has been imported:
tested on TensorFlow and JAX; untested on torch (not installed here).

Only `keras.layers` and `keras.ops` are used, so the same code runs on every Keras 3 backend,
with two exceptions that add to them: `FusedBatchNormalization` calls TensorFlow's fused
batch-norm kernel when it trains on the TensorFlow backend (see its docstring for why), and
`PCMFilterbanks` adds a TensorFlow assertion on the clip length to graphs traced for any length,
where keras.ops has no way to raise.

`DeepSpeakerModel(pcm_input=True)` is the reference's raw-PCM model (its `example_pcm.py`): the
features are computed in the graph by `PCMFilterbanks`, the reference's in-graph recipe, which is
not `audio.read_mfcc`'s.
"""

from __future__ import annotations

import os
import re
from typing import Any

import h5py
import keras
import numpy as np
from keras import layers, ops

from constants import (
    CLIP_RELU_MAX,
    CONV_WEIGHT_DECAY,
    EMBEDDING_SIZE,
    FUSED_BATCH_NORM_MIN_EPSILON,
    HTK_MEL_BREAK_HZ,
    HTK_MEL_SCALE,
    L2_NORMALIZE_EPSILON,
    MODEL_FILTERS,
    MTL_SHARED_UNITS,
    MTL_SPEAKER_UNITS,
    NFFT,
    NORMALISATION_STD_FLOOR,
    NUM_FBANKS,
    NUM_RES_BLOCKS,
    PCM_FRAME_LENGTH,
    PCM_FRAME_STEP,
    PCM_MEL_LOWER_HZ,
    PCM_MEL_UPPER_HZ,
    PRE_EMPHASIS,
    RES_CONV_KERNEL,
    SAMPLE_RATE,
    SOFTMAX_DROPOUT,
    STAGE_CONV_KERNEL,
    STAGE_CONV_STRIDES,
)
from margin_softmax import CosineClassifier
from triplet_loss import l2_normalize

SERIALIZATION_PACKAGE = "hive_mtl"
EMBEDDING_LAYER_NAME = "ln"  # Reference name of the L2 normalisation: the embedding.
AFFINE_LAYER_NAME = "affine"
SOFTMAX_LAYER_NAME = "softmax"
AAM_LAYER_NAME = "speaker_cosine"  # The AAM head: cosines to each speaker's weight vector.
SPEAKER_HEADS = ("softmax", "aam")
SPEAKER_OUTPUT = "speaker_pred"
GENDER_OUTPUT = "gender_pred"
DEFAULT_INPUT_SHAPE = (None, None, NUM_FBANKS, 1)  # (batch, frames, filterbanks, channel).
DEFAULT_PCM_INPUT_SHAPE = (None, None)  # (batch, samples) of 16 kHz mono PCM.
PCM_INPUT_NAME = "raw_inputs"  # The reference's name of the raw-PCM input layer.
PCM_FEATURES_LAYER_NAME = "pcm_filterbanks"
PCM_MIN_SAMPLES = PCM_FRAME_LENGTH + 1  # Pre-emphasis drops one sample; one STFT frame needs the rest.

# Layers whose weights come from a reference checkpoint: stage convs, identity-block convs,
# their batch norms, and the affine projection.
_TRUNK_LAYER_PATTERN = re.compile(
    r"^(conv\d+-s|res\d+_\d+_branch_2[ab])(_bn)?$|^" + AFFINE_LAYER_NAME + "$"
)


def clipped_relu(x, max_value: float):
    """min(max(x, 0), max_value), with its gradient written out: upstream where 0 < output < max_value.

    Forward it is min(relu(x), max_value), the same numbers; TensorFlow's oneDNN fuses the relu into
    the batch norm before it in training and into the convolution in inference. Left to autodiff,
    the gradient takes a relu gradient, a comparison and a select over the activations; written out it
    is one mask and one select on the output, which made a training step of the small model about
    9 % faster on a 2-core CPU (bfloat16).

    At the two kinks, an output of exactly 0 or exactly max_value, the gradient is 0, on every backend.
    Why 0 and not 1 at max_value, where TensorFlow's autodiff of min(relu(x), max_value) passes 1:
    - The gradient is a function of the output alone (what makes it one mask on a tensor training keeps
      anyway), and an output of max_value is what every input >= max_value gives: anything but 0 there
      would pass gradient through every clipped unit. The same holds for 0 and every input <= 0.
    - Autodiff has no one answer to keep: at x = max_value TensorFlow passes 1 (tf.minimum gives a tie
      to its first argument; the reference's min(max(x, 0), max_value) passed 1 at x = 0 too, as
      tf.maximum does the same), JAX passes 0.5 (it splits ties), and at x = 0 both pass 0 through relu.
    - In float32 an input of exactly max_value is vanishingly rare. In bfloat16 (8 significant bits)
      every input within 1/16 of 20 rounds to 20.0, and half of those are below 20: 0 drops their
      gradient, 1 would pass one to the other half, which is clipped; neither is exact. How much it can
      matter, one measurement (pretrained/model.h5, 96 windows of test-other, training and inference
      mode): 7 of 73.7 million clipped-ReLU inputs were 20 or more, and none rounded to 20.0 in bfloat16.
    """

    @ops.custom_gradient
    def forward(x):
        outputs = ops.minimum(ops.relu(x), max_value)

        def gradient(*args, upstream=None):  # Keras's signature for every backend.
            upstream = args[0] if upstream is None else upstream
            inside = ops.logical_and(ops.greater(outputs, 0.0), ops.less(outputs, max_value))
            return ops.where(inside, upstream, ops.zeros_like(upstream))

        return outputs, gradient

    return forward(x)


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class ClippedReLU(layers.Layer):
    """min(max(x, 0), max_value): the reference activation; the clip keeps deep residual sums bounded."""

    def __init__(self, max_value: float = CLIP_RELU_MAX, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_value = float(max_value)

    def call(self, inputs):
        return clipped_relu(inputs, self.max_value)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "max_value": self.max_value}


def reverse_gradient(x, scale: float):
    """x forward; backward, the upstream gradient times -scale (Ganin and Lempitsky's gradient reversal)."""

    @ops.custom_gradient
    def forward(x):
        def gradient(*args, upstream=None):  # Keras's signature for every backend.
            upstream = args[0] if upstream is None else upstream
            return ops.multiply(upstream, -scale)

        return ops.copy(x), gradient

    return forward(x)


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class GradientReversal(layers.Layer):
    """Identity forward; backward, the gradient multiplied by -`scale` (lambda).

    A head behind it learns its task as usual, while the layers before it receive the reversed
    gradient: they are trained to make the task *harder* for the head, i.e. to remove what it
    predicts (domain-adversarial training, Ganin and Lempitsky 2015).
    """

    def __init__(self, scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs):
        return reverse_gradient(inputs, self.scale)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras's batch normalisation, trained with TensorFlow's fused kernel on the TensorFlow backend.

    Keras 3 trains a batch norm from separate operations (a float32 copy of the input, two passes
    for the moments, the normalisation, and about twice as many for the gradient), each a pass
    over the activations; on a CPU that is memory-bound, and it took about a third of a training
    step of the small ResCNN. TensorFlow's fused kernel (oneDNN on CPU, cuDNN on GPU, bfloat16 in
    and out) does one pass each way: `bench/bench_training.py --compare_precision` measures the
    difference. Same weights and names, same outputs and moving statistics as Keras's layer (within
    float rounding; the kernel's unbiased batch variance is turned back into Keras's biased one).
    Inference, frozen layers, other backends and options the kernel lacks run Keras's own code.

    Under tf.distribute each replica normalises with its own slice's batch statistics, and the
    moving mean and variance are created with 'mean' aggregation: every replica's update is
    averaged into one value that all replicas keep. Keras creates them with none, and then each
    replica kept a moving average of its own slices, which checkpoints saved from replica 0.
    """

    def add_weight(self, *args, **kwargs):
        if kwargs.get("trainable") is False:  # The moving statistics.
            kwargs.setdefault("aggregation", "mean")
        return super().add_weight(*args, **kwargs)

    def call(self, inputs, training=None, mask=None):
        fused = (
            training and self.trainable and mask is None and keras.backend.backend() == "tensorflow"
            and len(inputs.shape) == 4 and self.axis in (-1, 3) and self.scale and self.center
            and not self.renorm and not self.synchronized and self.epsilon >= FUSED_BATCH_NORM_MIN_EPSILON
        )
        if not fused:
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        outputs, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, ops.cast(self.gamma, "float32"), ops.cast(self.beta, "float32"),
            epsilon=self.epsilon, data_format="NHWC", is_training=True,
        )
        count = ops.cast(ops.size(inputs) // inputs.shape[-1], "float32")
        variance = unbiased_variance * ops.maximum(count - 1.0, 1.0) / count
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return ops.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class TimeAverage(layers.Layer):
    """(batch, frames, freq, channels) -> (batch, freq * channels), averaged over frames.

    The reference reshapes to (batch, frames, freq * channels) and then averages over time.
    Averaging first and flattening second gives the same numbers, and leaves only the batch
    dimension dynamic, so any number of frames works on every backend.
    """

    def call(self, inputs):
        freq, channels = inputs.shape[2], inputs.shape[3]
        return ops.reshape(ops.mean(inputs, axis=1), (-1, freq * channels))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2] * input_shape[3])


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class L2Normalize(layers.Layer):
    """x / sqrt(max(sum(x^2), epsilon)) along `axis`: exactly Keras 2's `K.l2_normalize`.

    Embeddings are unit vectors, so cosine similarity is a dot product; the epsilon only guards
    an all-zero vector.
    """

    def __init__(self, axis: int = -1, epsilon: float = L2_NORMALIZE_EPSILON, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")  # In float16 the sum of squares overflows past a norm of 256.
        super().__init__(**kwargs)
        self.axis = int(axis)
        self.epsilon = float(epsilon)

    def call(self, inputs):
        return l2_normalize(inputs, self.axis, self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon}


def htk_mel_matrix(
    num_bins: int = NUM_FBANKS,
    fft_length: int = NFFT,
    sample_rate: int = SAMPLE_RATE,
    lower_hz: float = PCM_MEL_LOWER_HZ,
    upper_hz: float = PCM_MEL_UPPER_HZ,
) -> np.ndarray:
    """(fft_length // 2 + 1, num_bins) float32: `tf.signal.linear_to_mel_weight_matrix`'s triangles.

    The reference's PCM model multiplies its power spectra by TensorFlow's mel matrix, not by
    python_speech_features' filters: triangles evenly spaced on the HTK mel scale
    (1127 ln(1 + f / 700)), each rising from its lower edge to its centre and falling to its upper
    edge, evaluated at every FFT bin's frequency; the DC bin gets no weight. Computed here in
    NumPy (float64, then float32), so the layer that uses it needs no TensorFlow.
    """

    def mel(hertz):
        return HTK_MEL_SCALE * np.log(1.0 + np.asarray(hertz, np.float64) / HTK_MEL_BREAK_HZ)

    bin_mels = mel(np.linspace(0.0, sample_rate / 2, fft_length // 2 + 1))[1:, np.newaxis]
    edges = np.linspace(mel(lower_hz), mel(upper_hz), num_bins + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mels - lower) / (centre - lower)
    falling = (upper - bin_mels) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return np.concatenate([np.zeros((1, num_bins)), weights]).astype(np.float32)


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class PCMFilterbanks(layers.Layer):
    """(batch, samples) 16 kHz mono PCM -> (batch, frames, 64, 1): the reference's in-graph features.

    What the reference's `DeepSpeakerModel(pcm_input=True)` computes with tf.signal, so that its
    checkpoints give its embeddings on raw audio: pre-emphasis `x[1:] - 0.97 x[:-1]`; frames of
    400 samples every 160, rectangular window, no padding (tf.signal.stft's framing: one frame
    fewer than python_speech_features'); power |rfft(512)|^2 / 512; TensorFlow's mel matrix
    (`htk_mel_matrix`); no log; each frame minus its mean, divided by max(its std, 1e-12); a
    channel axis. This is not `audio.read_mfcc`'s front end (no silence trim, other mel filters),
    so a model trained on cached features sees slightly different inputs here.

    Written with keras.ops only, so it runs on every backend; computed in float32 under any
    mixed-precision policy. It has no arguments: the base `get_config` is its whole configuration.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")  # Power spectra span too many decades for (b)float16.
        super().__init__(**kwargs)
        self.mel_matrix = htk_mel_matrix()

    def call(self, inputs):
        shape = tuple(inputs.shape)
        if len(shape) != 2:
            raise ValueError(f"{self.name}: raw PCM input must be 2-D (batch, samples) of 16 kHz mono audio; got shape {shape}.")
        if shape[1] is not None and shape[1] < PCM_MIN_SAMPLES:
            raise ValueError(
                f"{self.name}: raw PCM input needs at least {PCM_MIN_SAMPLES} samples per row (one 25 ms frame after "
                f"pre-emphasis); got shape {shape}. One clip is a batch of one: samples[np.newaxis]."
            )
        if shape[1] is None and keras.backend.backend() == "tensorflow":  # A graph for any length: check each call.
            import tensorflow as tf

            tf.debugging.assert_greater_equal(
                tf.shape(inputs)[1], PCM_MIN_SAMPLES,
                message=f"{self.name}: raw PCM input needs at least {PCM_MIN_SAMPLES} samples per row (one 25 ms frame after pre-emphasis)",
            )
        x = ops.cast(inputs, "float32")
        emphasised = x[:, 1:] - PRE_EMPHASIS * x[:, :-1]
        num_frames = 1 + (ops.shape(emphasised)[1] - PCM_FRAME_LENGTH) // PCM_FRAME_STEP
        starts = ops.arange(num_frames, dtype="int32") * PCM_FRAME_STEP
        frames = ops.take(emphasised, starts[:, None] + ops.arange(PCM_FRAME_LENGTH, dtype="int32")[None, :], axis=1)
        real, imaginary = ops.rfft(frames, fft_length=NFFT)
        energies = ops.matmul((ops.square(real) + ops.square(imaginary)) / NFFT, self.mel_matrix)
        mean = ops.mean(energies, axis=-1, keepdims=True)
        std = ops.std(energies, axis=-1, keepdims=True)
        return ops.expand_dims((energies - mean) / ops.maximum(std, NORMALISATION_STD_FLOOR), axis=-1)

    def compute_output_shape(self, input_shape):
        samples = input_shape[-1]
        frames = None if samples is None else max(0, 1 + (samples - 1 - PCM_FRAME_LENGTH) // PCM_FRAME_STEP)
        return (input_shape[0], frames, NUM_FBANKS, 1)


def _conv(filters: int, kernel_size: int, strides: int, name: str) -> layers.Conv2D:
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=keras.regularizers.L2(CONV_WEIGHT_DECAY),
        name=name,
    )


def _identity_block(x, filters: int, stage: int, block: int):
    """Two 3x3 conv + BN + clipped ReLU, plus the block input: names `res{stage}_{block}_branch_2a|2b`."""
    shortcut = x
    for part in ("2a", "2b"):
        name = f"res{stage}_{block}_branch_{part}"
        x = _conv(filters, RES_CONV_KERNEL, 1, name)(x)
        x = FusedBatchNormalization(name=f"{name}_bn")(x)
        x = ClippedReLU(name=f"{name}_relu")(x)
    x = layers.Add(name=f"res{stage}_{block}_add")([x, shortcut])
    return ClippedReLU(name=f"res{stage}_{block}_relu")(x)


def _stage(x, filters: int, stage: int):
    """Strided 5x5 conv `conv{filters}-s` (halves time and frequency), then the identity blocks."""
    name = f"conv{filters}-s"
    x = _conv(filters, STAGE_CONV_KERNEL, STAGE_CONV_STRIDES, name)(x)
    x = FusedBatchNormalization(name=f"{name}_bn")(x)
    x = ClippedReLU(name=f"{name}_relu")(x)
    for block in range(NUM_RES_BLOCKS):
        x = _identity_block(x, filters, stage, block)
    return x


def _res_cnn(inputs, filters: tuple[int, ...], dropout_rate: float = 0.0):
    """The shared trunk: conv stages, average over time, optional dropout, `affine` (512-d)."""
    x = inputs
    for stage, stage_filters in enumerate(filters, start=1):
        x = _stage(x, stage_filters, stage)
    x = TimeAverage(name="time_average")(x)
    if dropout_rate:
        x = layers.Dropout(dropout_rate, name="dropout")(x)
    return layers.Dense(EMBEDDING_SIZE, name=AFFINE_LAYER_NAME)(x)


def _unified_embedding(inputs, filters: tuple[int, ...]):
    """Trunk plus L2 normalisation `ln`: the embedding every task reads."""
    return L2Normalize(name=EMBEDDING_LAYER_NAME)(_res_cnn(inputs, filters))


def _filters(model_size: str) -> tuple[int, ...]:
    if model_size not in MODEL_FILTERS:
        raise ValueError(f"Unknown model_size {model_size!r}; expected one of {sorted(MODEL_FILTERS)}.")
    return MODEL_FILTERS[model_size]


def _input(batch_input_shape: tuple) -> keras.KerasTensor:
    """Validates (batch, frames, freq, channels); frequency and channels must be known to flatten."""
    shape = tuple(batch_input_shape)
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
        raise ValueError(
            f"batch_input_shape must be (batch, frames, freq, channels) with known freq and "
            f"channels, e.g. {DEFAULT_INPUT_SHAPE}; got {batch_input_shape!r}."
        )
    return keras.Input(batch_shape=shape, name="input")


def _pcm_input(batch_input_shape: tuple) -> keras.KerasTensor:
    """Validates (batch, samples) for raw PCM; a fixed number of samples must hold one frame."""
    shape = tuple(batch_input_shape)
    if len(shape) != 2 or not (shape[1] is None or (isinstance(shape[1], int) and shape[1] >= PCM_MIN_SAMPLES)):
        raise ValueError(
            f"with pcm_input=True, batch_input_shape must be (batch, samples), samples None (any length) or at least "
            f"{PCM_MIN_SAMPLES}, e.g. {DEFAULT_PCM_INPUT_SHAPE}; got {batch_input_shape!r}."
        )
    return keras.Input(batch_shape=shape, name=PCM_INPUT_NAME)


def _check_class_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    return value


class DeepSpeakerModel:
    """The reference ResCNN, held as `.m` like the reference so its callers read the same.

    Embedding model (default): features -> 512-d unit vector, layer `ln`; 24,185,728 weights at
    `model_size='full'`. Softmax model (`include_softmax=True`, for pre-training): dropout before
    `affine` and a softmax Dense `softmax` on top of `affine` instead of `ln`. Its checkpoints are
    used for embeddings by loading them into a fresh `DeepSpeakerModel()` by layer name (see
    `load_weights_by_name`): the dropout and softmax layers are skipped.

    `pcm_input=True` (the reference's, for its `example_pcm.py`): the input layer `raw_inputs`
    takes raw 16 kHz mono PCM, (batch, samples), and `PCMFilterbanks` computes the reference's
    in-graph features before the same layers, so every checkpoint loads into it by name alike.
    `batch_input_shape` defaults to any number of frames, or of samples with `pcm_input`.

    `head='aam'` (this project's recipe, not the reference's) trains the embedding `ln` itself
    through a cosine classifier `speaker_cosine` with an additive angular margin loss
    (margin_softmax.py); no dropout. Its checkpoints load into `DeepSpeakerModel()` the same way.
    """

    def __init__(
        self,
        batch_input_shape: tuple | None = None,
        include_softmax: bool = False,
        num_speakers_softmax: int | None = None,
        pcm_input: bool = False,
        model_size: str = "full",
        head: str = "softmax",
    ) -> None:
        filters = _filters(model_size)
        if head not in SPEAKER_HEADS:
            raise ValueError(f"head must be one of {', '.join(SPEAKER_HEADS)}; got {head!r}.")
        if include_softmax:
            _check_class_count("num_speakers_softmax", num_speakers_softmax, 2)
        elif num_speakers_softmax is not None:
            raise ValueError("num_speakers_softmax is only used with include_softmax=True.")
        if not isinstance(pcm_input, bool):
            raise ValueError(f"pcm_input must be True or False; got {pcm_input!r}.")
        if batch_input_shape is None:
            batch_input_shape = DEFAULT_PCM_INPUT_SHAPE if pcm_input else DEFAULT_INPUT_SHAPE
        if pcm_input:
            inputs = _pcm_input(batch_input_shape)
            features = PCMFilterbanks(name=PCM_FEATURES_LAYER_NAME)(inputs)
        else:
            inputs = features = _input(batch_input_shape)
        if include_softmax and head == "aam":
            outputs = CosineClassifier(num_speakers_softmax, name=AAM_LAYER_NAME)(_unified_embedding(features, filters))
        elif include_softmax:
            x = _res_cnn(features, filters, dropout_rate=SOFTMAX_DROPOUT)
            outputs = layers.Dense(num_speakers_softmax, activation="softmax", name=SOFTMAX_LAYER_NAME, dtype="float32")(x)
        else:
            outputs = _unified_embedding(features, filters)
        self.batch_input_shape = tuple(batch_input_shape)
        self.pcm_input = pcm_input
        self.include_softmax = include_softmax
        self.num_speakers_softmax = num_speakers_softmax
        self.model_size = model_size
        self.head = head
        self.m = keras.Model(inputs, outputs, name="ResCNN")


def build_mtl_model(
    num_speakers: int,
    *,
    label_heads: dict[str, int] | None = None,
    reversed_heads: dict[str, float] | None = None,
    speaker_head: str = "softmax",
    model_size: str = "full",
    shared_units: int = MTL_SHARED_UNITS,
    speaker_units: int = MTL_SPEAKER_UNITS,
    embedding_output: bool = False,
    batch_input_shape: tuple = DEFAULT_INPUT_SHAPE,
) -> keras.Model:
    """Hive-MTL: the ResCNN trunk up to the unified embedding `ln`, with task heads on top.

    Speaker head `softmax`: `ln` -> Dense `shared` (relu) -> Dense `speaker_task` (relu) -> softmax
    `speaker_pred`. Speaker head `aam`: `speaker_pred` is a cosine classifier on `ln` itself, so
    the speaker loss shapes the embedding directly, as in single-task AAM training.
    `label_heads` maps each label task's output name to its units (1: sigmoid, more: softmax),
    each on `shared`; default: the gender head `gender_pred` (1 unit). Outputs are a dict keyed
    by those names, so losses and metrics are given per task by name. A head named in
    `reversed_heads` (output name -> lambda) is an adversary instead: `ln` -> `GradientReversal`
    `<name>_reversal` -> Dense `<name>_hidden` (relu, `shared_units`) -> `<name>`, so it learns its
    task while the embedding receives -lambda times its gradient (it is trained to remove the label).

    The embedding is always reachable with `embedding_model(model)`. It is an output (key `ln`)
    only with `embedding_output=True`, for a loss on the embedding such as the triplet loss:
    Keras 3 (3.15) builds metrics for every output and then needs a `y` for each, so an output
    without a loss would force callers to feed dummy targets for it.
    Trunk layers keep the reference names, so a reference checkpoint loads by name.
    """
    _check_class_count("num_speakers", num_speakers, 2)
    _check_class_count("shared_units", shared_units, 1)
    _check_class_count("speaker_units", speaker_units, 1)
    if speaker_head not in SPEAKER_HEADS:
        raise ValueError(f"speaker_head must be one of {', '.join(SPEAKER_HEADS)}; got {speaker_head!r}.")
    label_heads = {GENDER_OUTPUT: 1} if label_heads is None else dict(label_heads)
    reversed_heads = dict(reversed_heads or {})
    for name, units in label_heads.items():
        _check_class_count(f"units of {name}", units, 1)
        if name in (SPEAKER_OUTPUT, EMBEDDING_LAYER_NAME, "shared", "speaker_task"):
            raise ValueError(f"label head name {name!r} is taken by another layer of the model.")
    for name, scale in reversed_heads.items():
        if name not in label_heads:
            raise ValueError(f"reversed head {name!r} is not one of the label heads ({', '.join(label_heads) or 'none'}).")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"the gradient reversal of {name!r} must scale by a number > 0; got {scale!r}.")
    inputs = _input(batch_input_shape)
    embedding = _unified_embedding(inputs, _filters(model_size))
    on_shared = [name for name in label_heads if name not in reversed_heads]
    shared = layers.Dense(shared_units, activation="relu", name="shared")(embedding) if on_shared or speaker_head == "softmax" else None
    if speaker_head == "aam":
        outputs = {SPEAKER_OUTPUT: CosineClassifier(num_speakers, name=SPEAKER_OUTPUT)(embedding)}
    else:
        speaker = layers.Dense(speaker_units, activation="relu", name="speaker_task")(shared)
        outputs = {SPEAKER_OUTPUT: layers.Dense(num_speakers, activation="softmax", name=SPEAKER_OUTPUT, dtype="float32")(speaker)}
    for name, units in label_heads.items():
        activation = "sigmoid" if units == 1 else "softmax"
        if name in reversed_heads:
            reversed_embedding = GradientReversal(reversed_heads[name], name=f"{name}_reversal")(embedding)
            head_input = layers.Dense(shared_units, activation="relu", name=f"{name}_hidden")(reversed_embedding)
        else:
            head_input = shared
        outputs[name] = layers.Dense(units, activation=activation, name=name, dtype="float32")(head_input)
    if embedding_output:
        outputs[EMBEDDING_LAYER_NAME] = embedding
    return keras.Model(inputs, outputs, name="HiveMTL")


def embedding_model(model: keras.Model) -> keras.Model:
    """The sub-model from the input to the embedding layer `ln`; it shares weights with `model`.

    Works for the embedding model and the Hive-MTL model. A softmax-phase model has no `ln`:
    load its checkpoint into `DeepSpeakerModel()` by name instead, as the reference does.
    """
    try:
        embedding = model.get_layer(EMBEDDING_LAYER_NAME)
    except ValueError:
        raise ValueError(
            f"Model {model.name!r} has no embedding layer {EMBEDDING_LAYER_NAME!r} (a softmax-phase "
            "model?). Load its checkpoint into DeepSpeakerModel() with load_weights_by_name()."
        ) from None
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs  # Keep the input structure.
    return keras.Model(inputs, embedding.output, name=f"{model.name}_embedding")


def load_weights_by_name(model: keras.Model, path: str | os.PathLike) -> list[str]:
    """Loads a Keras 2 / legacy HDF5 checkpoint into `model` by layer name; returns what it skipped.

    Plain `model.load_weights(path, by_name=True)` loads nothing, silently, when names do not
    match. This checks first that the file holds every trunk layer the model has (convs, batch
    norms, `affine`), and raises otherwise. Weights-only files (`save_weights`) and full-model
    files (`save`, weights under `model_weights`) both work; shape mismatches raise. Returns the
    names of the model's weighted layers the file does not have (task heads, a softmax head).
    """
    path = os.fspath(path)
    if path.endswith(".weights.h5") or not path.endswith((".h5", ".hdf5")):
        raise ValueError(
            f"{path}: loading by name needs a legacy HDF5 checkpoint named *.h5 or *.hdf5 (Keras 3 "
            "reads *.weights.h5 as its own format, by structure); rename the file."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint not found.")
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        names_in_file = set(group.keys())
    weighted = [layer.name for layer in model.layers if layer.weights]
    missing_trunk = [n for n in weighted if _TRUNK_LAYER_PATTERN.match(n) and n not in names_in_file]
    if missing_trunk:
        raise ValueError(
            f"{path}: no weights for {len(missing_trunk)} trunk layers of model {model.name!r} "
            f"(first: {missing_trunk[:3]}); not a checkpoint with the reference layer names. "
            "Nothing was loaded."
        )
    model.load_weights(path, by_name=True)
    return [n for n in weighted if n not in names_in_file]
