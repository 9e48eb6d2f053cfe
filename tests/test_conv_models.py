"""The ResCNN and Hive-MTL models: reference structure, Keras 2 checkpoints, saving, backends."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import keras
import numpy as np
import pytest

from audio import filterbank_energies, mel_filterbank, read_audio
from constants import EMBEDDING_SIZE, MODEL_FILTERS, NUM_FBANKS
from conv_models import (
    DEFAULT_INPUT_SHAPE,
    ClippedReLU,
    DeepSpeakerModel,
    FusedBatchNormalization,
    GradientReversal,
    PCMFilterbanks,
    htk_mel_matrix,
    L2Normalize,
    TimeAverage,
    build_mtl_model,
    embedding_model,
    load_weights_by_name,
)
from fileio import save_model_atomically
from triplet_loss import deep_speaker_loss

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
REFERENCE_WEIGHT_COUNT = 24_185_728
SOFTMAX_SPEAKERS = 7
TOLERANCE = 1e-5  # Max abs difference allowed between embeddings of two implementations.


def reference_weighted_layer_names(filters=MODEL_FILTERS["full"]) -> list[str]:
    """The weighted layers of the reference ResCNN, in graph order."""
    names = []
    for stage, f in enumerate(filters, start=1):
        names += [f"conv{f}-s", f"conv{f}-s_bn"]
        for block in range(3):
            for part in ("2a", "2b"):
                names += [f"res{stage}_{block}_branch_{part}", f"res{stage}_{block}_branch_{part}_bn"]
    return names + ["affine"]


def embed(model: keras.Model, features: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(features, training=False))


def h5_layer_weights(path: Path) -> dict[str, list[np.ndarray]]:
    """Weights per layer name read with h5py, from a weights file or a full-model file."""
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        weights = {}
        for name in group:
            names = [n.decode() if isinstance(n, bytes) else n for n in group[name].attrs["weight_names"]]
            if names:
                weights[name] = [np.asarray(group[name][n]) for n in names]
        return weights


def assert_layers_hold_file_weights(model: keras.Model, path: Path, layer_names: list[str]) -> None:
    in_file = h5_layer_weights(path)
    for name in layer_names:
        values = [keras.ops.convert_to_numpy(w) for w in model.get_layer(name).weights]
        assert len(values) == len(in_file[name]), name
        for value, expected in zip(values, in_file[name]):
            np.testing.assert_array_equal(value, expected, err_msg=name)


def run_python(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stderr[-4000:]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, real_features) -> SimpleNamespace:
    """Keras 2 checkpoints and embeddings from tests/keras2_reference.py (embedding and softmax)."""
    out = tmp_path_factory.mktemp("keras2")
    features = out / "features.npy"
    np.save(features, real_features)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    jobs = {
        "embedding": ["--seed", "0"],
        "softmax": ["--seed", "1", "--softmax", str(SOFTMAX_SPEAKERS)],
    }
    embedding, softmax = ([
        "--input", str(features), "--output", str(out / f"{kind}_embeddings.npy"), "--weights", str(out / f"{kind}_weights.h5"),
        "--model", str(out / f"{kind}_model.h5"), *extra] for kind, extra in jobs.items())
    run_python([str(TESTS_DIR / "keras2_reference.py"), *embedding, "+", *softmax], env)  # Both jobs in one process: TensorFlow starts once.
    return SimpleNamespace(
        features=features,
        weights=out / "embedding_weights.h5",
        model=out / "embedding_model.h5",
        embeddings=np.load(out / "embedding_embeddings.npy"),
        softmax_model=out / "softmax_model.h5",
        softmax_embeddings=np.load(out / "softmax_embeddings.npy"),
    )


@pytest.fixture(scope="module")
def fresh_model() -> DeepSpeakerModel:
    """A full-size embedding model with random weights, for structure tests (not mutated)."""
    return DeepSpeakerModel()


@pytest.fixture(scope="module")
def loaded_model(reference) -> DeepSpeakerModel:
    model = DeepSpeakerModel()
    load_weights_by_name(model.m, reference.weights)
    return model


# Structure.


def test_embedding_model_has_the_reference_weight_count(fresh_model):
    assert fresh_model.m.count_params() == REFERENCE_WEIGHT_COUNT


def test_weighted_layers_have_the_reference_names_in_order(fresh_model):
    weighted = [layer.name for layer in fresh_model.m.layers if layer.weights]
    assert weighted == reference_weighted_layer_names()
    assert isinstance(fresh_model.m.get_layer("ln"), L2Normalize)
    assert fresh_model.m.layers[-1].name == "ln"


def test_layers_use_the_reference_hyperparameters(fresh_model):
    stage_conv = fresh_model.m.get_layer("conv128-s")
    assert (stage_conv.kernel_size, stage_conv.strides, stage_conv.padding) == ((5, 5), (2, 2), "same")
    block_conv = fresh_model.m.get_layer("res3_2_branch_2b")
    assert (block_conv.kernel_size, block_conv.strides, block_conv.padding) == ((3, 3), (1, 1), "same")
    for conv in (stage_conv, block_conv):
        assert conv.use_bias
        assert isinstance(conv.kernel_regularizer, keras.regularizers.L2)
        assert conv.kernel_regularizer.l2 == pytest.approx(1e-4)
        assert isinstance(conv.kernel_initializer, keras.initializers.GlorotUniform)
    bn = fresh_model.m.get_layer("res3_2_branch_2b_bn")
    assert (bn.momentum, bn.epsilon) == (0.99, 1e-3)
    assert fresh_model.m.get_layer("affine").units == EMBEDDING_SIZE


def test_embeddings_are_512_dimensional_unit_vectors(fresh_model, real_features):
    embeddings = embed(fresh_model.m, real_features)
    assert embeddings.shape == (len(real_features), EMBEDDING_SIZE)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("num_frames", [100, 300, 17])
def test_any_number_of_frames_gives_one_embedding(fresh_model, real_features, num_frames):
    long_features = np.concatenate([real_features[:1], real_features[1:2]], axis=1)  # 320 frames.
    embeddings = embed(fresh_model.m, long_features[:, :num_frames])
    assert embeddings.shape == (1, EMBEDDING_SIZE)
    assert np.linalg.norm(embeddings) == pytest.approx(1.0, abs=1e-6)


def test_small_model_keeps_the_graph_with_fewer_filters(real_features):
    model = DeepSpeakerModel(model_size="small")
    weighted = [layer.name for layer in model.m.layers if layer.weights]
    assert weighted == reference_weighted_layer_names(MODEL_FILTERS["small"])
    assert model.m.count_params() < REFERENCE_WEIGHT_COUNT / 10
    assert embed(model.m, real_features).shape == (len(real_features), EMBEDDING_SIZE)


def test_softmax_model_puts_dropout_before_affine_and_a_softmax_on_top(real_features):
    model = DeepSpeakerModel(include_softmax=True, num_speakers_softmax=SOFTMAX_SPEAKERS)
    assert [layer.name for layer in model.m.layers[-3:]] == ["dropout", "affine", "softmax"]
    assert isinstance(model.m.layers[-3], keras.layers.Dropout) and model.m.layers[-3].rate == 0.5
    assert "ln" not in [layer.name for layer in model.m.layers]
    probabilities = embed(model.m, real_features)
    assert probabilities.shape == (len(real_features), SOFTMAX_SPEAKERS)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"include_softmax": True},
        {"include_softmax": True, "num_speakers_softmax": 1},
        {"include_softmax": True, "num_speakers_softmax": 2.5},
        {"num_speakers_softmax": 10},
        {"model_size": "huge"},
        {"batch_input_shape": (None, 160, NUM_FBANKS)},
        {"batch_input_shape": (None, None, None, 1)},
        {"pcm_input": True, "batch_input_shape": DEFAULT_INPUT_SHAPE},
        {"pcm_input": True, "batch_input_shape": (None, 400)},
    ],
)
def test_invalid_model_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        DeepSpeakerModel(**kwargs)


# Custom layers.


def test_clipped_relu_clips_to_zero_and_twenty():
    x = np.array([[-5.0, 0.0, 3.5, 20.0, 25.0]], dtype=np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(ClippedReLU()(x)), [[0.0, 0.0, 3.5, 20.0, 20.0]])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_clipped_relu_gradient_passes_only_between_zero_and_twenty(dtype):
    import tensorflow as tf

    x = tf.constant([-5.0, -1e-3, 1e-3, 0.5, 19.9, 20.5, 40.0], dtype=dtype)
    upstream = tf.constant([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], dtype=dtype)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        written_out = ClippedReLU()(x)
        autodiff = tf.minimum(tf.maximum(x, 0.0), 20.0)
    np.testing.assert_array_equal(np.asarray(tf.cast(written_out, tf.float32)), np.asarray(tf.cast(autodiff, tf.float32)))
    gradient = np.asarray(tf.cast(tape.gradient(written_out, x, output_gradients=upstream), tf.float32))
    np.testing.assert_array_equal(gradient, [0.0, 0.0, 3.0, 4.0, 5.0, 0.0, 0.0])
    np.testing.assert_array_equal(gradient, np.asarray(tf.cast(tape.gradient(autodiff, x, output_gradients=upstream), tf.float32)))


TINY = float(np.finfo(np.float32).tiny)  # The smallest normal number, in float32 and bfloat16 alike (CPUs flush subnormals to 0).
# Inputs at the two kinks and beside them, as each dtype holds them, and the gradient each gets (see `clipped_relu`).
# float32: the neighbours of 20 one ulp away. bfloat16: 19.875 and 20.125 are the neighbours of 20.0, and 19.95 and
# 20.05 round to 20.0 itself (bfloat16 keeps 8 significant bits): in bfloat16 they are the kink.
CLIPPED_RELU_BOUNDARIES = {
    "float32": ([-TINY, 0.0, TINY, float(np.nextafter(np.float32(20), np.float32(0))), 20.0, float(np.nextafter(np.float32(20), np.float32(21)))],
                [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]),
    "bfloat16": ([-TINY, 0.0, TINY, 19.875, 19.95, 20.0, 20.05, 20.125], [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]),
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_clipped_relu_gradient_at_zero_and_at_twenty_is_zero_and_one_just_inside(dtype):
    import tensorflow as tf

    inputs, expected = CLIPPED_RELU_BOUNDARIES[dtype]
    x = tf.constant(inputs, dtype=dtype)
    if dtype == "bfloat16":
        assert list(np.asarray(tf.cast(x, tf.float32))[4:7]) == [20.0, 20.0, 20.0]  # 19.95 and 20.05 are 20.0 here.
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = ClippedReLU()(x)
    np.testing.assert_array_equal(np.asarray(tf.cast(outputs, tf.float32)), np.asarray(tf.cast(tf.minimum(tf.maximum(x, 0.0), 20.0), tf.float32)))
    np.testing.assert_array_equal(np.asarray(tf.cast(tape.gradient(outputs, x), tf.float32)), expected)


JAX_CLIPPED_RELU_GRADIENT = """
import json
import sys
import jax
import jax.numpy as jnp
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
from conv_models import ClippedReLU
gradients = {}
for dtype, inputs in json.loads(sys.argv[1]).items():
    x = jnp.array(inputs, dtype=dtype)
    gradients[dtype] = jax.grad(lambda v: ClippedReLU()(v).astype("float32").sum())(x).astype("float32").tolist()
with open(sys.argv[2], "w") as handle:
    json.dump(gradients, handle)
"""


def test_clipped_relu_gradient_at_the_kinks_is_the_same_on_jax(on_jax):
    import json

    assert json.loads(on_jax.output("clipped_relu.json").read_text()) == {dtype: expected for dtype, (_, expected) in CLIPPED_RELU_BOUNDARIES.items()}


def test_l2_normalize_matches_keras2_epsilon_semantics():
    x = np.array([[3.0, 4.0], [1e-7, 0.0], [0.0, 0.0]], dtype=np.float32)
    # x / sqrt(max(sum(x^2), 1e-12)): unit length, except tiny vectors, scaled by 1e6, and zeros.
    expected = np.array([[0.6, 0.8], [0.1, 0.0], [0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(L2Normalize()(x)), expected, rtol=1e-6)


def test_time_average_equals_reshape_then_mean_over_time():
    x = np.random.default_rng(0).normal(size=(2, 5, 4, 3)).astype(np.float32)
    expected = x.reshape(2, 5, 12).mean(axis=1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(TimeAverage()(x)), expected, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gradient_reversal_passes_values_and_sends_back_minus_lambda_times_the_gradient(dtype):
    import tensorflow as tf

    x = tf.constant([[-2.0, 0.0, 0.5, 3.0]], dtype=dtype)
    upstream = tf.constant([[1.0, -2.0, 4.0, 0.25]], dtype=dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        reversed_x = GradientReversal(scale=0.5)(x)
    np.testing.assert_array_equal(np.asarray(tf.cast(reversed_x, tf.float32)), [[-2.0, 0.0, 0.5, 3.0]])
    gradient = tape.gradient(reversed_x, x, output_gradients=tf.cast(upstream, reversed_x.dtype))
    np.testing.assert_array_equal(np.asarray(tf.cast(gradient, tf.float32)), [[-0.5, 1.0, -2.0, -0.125]])


def test_an_adversarial_head_learns_its_task_while_the_trunk_gets_minus_lambda_times_its_gradient(real_features):
    import tensorflow as tf

    model = build_mtl_model(4, label_heads={"gender_pred": 1, "language_pred": 3}, reversed_heads={"language_pred": 0.5},
                            speaker_head="aam", model_size="small")
    hidden, head = model.get_layer("language_pred_hidden"), model.get_layer("language_pred")
    plain = keras.Model(model.inputs[0], head(hidden(model.get_layer("ln").output)))  # The same head without the reversal.
    labels = tf.constant([0, 2, 1, 1])

    def language_gradients(network: keras.Model) -> list[np.ndarray]:
        with tf.GradientTape() as tape:
            outputs = network(real_features, training=False)
            predicted = outputs["language_pred"] if isinstance(outputs, dict) else outputs
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, predicted))
        return [np.asarray(g) for g in tape.gradient(loss, [model.get_layer("affine").kernel, hidden.kernel, head.kernel])]

    (trunk, *heads), (plain_trunk, *plain_heads) = language_gradients(model), language_gradients(plain)
    for gradient, plain_gradient in zip(heads, plain_heads):  # The adversary learns language as any head would,
        np.testing.assert_allclose(gradient, plain_gradient, rtol=1e-6)
    assert np.abs(plain_trunk).max() > 0
    np.testing.assert_allclose(trunk, -0.5 * plain_trunk, rtol=1e-4, atol=1e-9)  # while the trunk is pushed to remove it.
    with pytest.raises(ValueError, match="reversed head 'accent_pred' is not one of the label heads"):
        build_mtl_model(4, label_heads={"gender_pred": 1}, reversed_heads={"accent_pred": 1.0}, model_size="small")


@pytest.mark.parametrize(
    "layer",
    [ClippedReLU(max_value=6.0), L2Normalize(axis=1, epsilon=1e-6), TimeAverage(), FusedBatchNormalization(momentum=0.9), PCMFilterbanks(name="pcm"),
     GradientReversal(scale=0.25)],
)
def test_custom_layers_serialise_with_their_arguments(layer):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)
    assert restored.get_config() == layer.get_config()


def _batch_norm_step(layer: keras.layers.BatchNormalization, x: np.ndarray, training: bool):
    """Output of one call, gradients of a random weighted sum of it (input, gamma, beta), weights after."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    layer.build(x.shape)
    layer.set_weights([rng.normal(size=x.shape[-1]).astype(np.float32), rng.normal(size=x.shape[-1]).astype(np.float32),
                       rng.normal(size=x.shape[-1]).astype(np.float32), rng.uniform(0.5, 2, size=x.shape[-1]).astype(np.float32)])
    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = layer(inputs, training=training)
        loss = tf.reduce_sum(tf.cast(outputs, tf.float32) * rng.normal(size=x.shape).astype(np.float32))
    gradients = tape.gradient(loss, [inputs, layer.gamma, layer.beta])
    return np.asarray(tf.cast(outputs, tf.float32)), [np.asarray(g) for g in gradients], layer.get_weights()


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_fused_batch_norm_gives_keras_batch_norms_outputs_gradients_and_moving_statistics(training):
    x = (np.random.default_rng(0).normal(size=(6, 20, 16, 5)) * 3 + 1).astype(np.float32)
    fused = _batch_norm_step(FusedBatchNormalization(), x, training)
    plain = _batch_norm_step(keras.layers.BatchNormalization(), x, training)
    np.testing.assert_allclose(fused[0], plain[0], rtol=1e-4, atol=1e-4)
    for a, b in zip(fused[1], plain[1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
    for a, b in zip(fused[2], plain[2]):  # gamma, beta, moving mean, moving (biased) variance
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if training:
        assert not np.allclose(fused[2][2], _batch_norm_step(FusedBatchNormalization(), x, False)[2][2])  # The step moved them.


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the fused kernel is TensorFlow's")
def test_fused_batch_norm_trains_with_tensorflows_fused_kernel_and_infers_with_keras_code():
    import tensorflow as tf

    layer = FusedBatchNormalization()
    layer.build((None, None, 16, 5))
    spec = tf.TensorSpec((None, None, 16, 5), tf.float32)

    def operations(training: bool) -> set[str]:
        graph = tf.function(lambda x: layer(x, training=training)).get_concrete_function(spec).graph
        return {operation.type for operation in graph.get_operations()}

    assert "FusedBatchNormV3" in operations(True)
    assert "FusedBatchNormV3" not in operations(False)


def test_fused_batch_norm_in_mixed_bfloat16_stays_close_to_keras_batch_norm():
    x = np.random.default_rng(0).normal(size=(6, 20, 16, 5)).astype(np.float32)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        fused = _batch_norm_step(FusedBatchNormalization(), x, True)
        plain = _batch_norm_step(keras.layers.BatchNormalization(), x, True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    np.testing.assert_allclose(fused[0], plain[0], atol=0.05 * np.abs(plain[0]).max())  # bfloat16 keeps 8 bits
    for a, b in zip(fused[2], plain[2]):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3)


# Keras 2 checkpoints.


@pytest.mark.parametrize("file_kind", ["weights", "model"])
@pytest.mark.parametrize(
    "load",
    [lambda model, path: model.load_weights(path, by_name=True), load_weights_by_name],
    ids=["keras_load_weights_by_name", "load_weights_by_name"],
)
def test_keras2_checkpoint_gives_the_reference_embeddings(reference, real_features, file_kind, load):
    model = DeepSpeakerModel()
    path = getattr(reference, file_kind)
    load(model.m, path)
    assert_layers_hold_file_weights(model.m, path, reference_weighted_layer_names())
    assert np.abs(embed(model.m, real_features) - reference.embeddings).max() < TOLERANCE


def test_reference_embeddings_tell_inputs_apart(reference):
    # Guards the comparison above: random reference weights must not map every input to one vector.
    distances = np.linalg.norm(reference.embeddings[:, None] - reference.embeddings[None], axis=-1)
    assert distances[~np.eye(len(distances), dtype=bool)].min() > 1000 * TOLERANCE


def test_softmax_checkpoint_loads_into_the_embedding_model_skipping_its_head(reference, real_features):
    model = DeepSpeakerModel()
    skipped_model_layers = load_weights_by_name(model.m, reference.softmax_model)
    assert skipped_model_layers == []
    assert {"softmax", "dropout"} <= set(h5py.File(reference.softmax_model, "r")["model_weights"])
    assert_layers_hold_file_weights(model.m, reference.softmax_model, reference_weighted_layer_names())
    assert np.abs(embed(model.m, real_features) - reference.softmax_embeddings).max() < TOLERANCE


def test_softmax_checkpoint_restores_the_softmax_model_including_its_head(reference):
    model = DeepSpeakerModel(include_softmax=True, num_speakers_softmax=SOFTMAX_SPEAKERS)
    assert load_weights_by_name(model.m, reference.softmax_model) == []
    assert_layers_hold_file_weights(model.m, reference.softmax_model, ["softmax", "affine", "conv512-s_bn"])


def test_load_weights_by_name_refuses_a_file_without_the_reference_layers(tmp_path):
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="unrelated")])
    path = tmp_path / "unrelated.h5"
    other.save(path)  # Keras 3 writes the legacy HDF5 format for *.h5.
    model = DeepSpeakerModel(model_size="small")
    before = keras.ops.convert_to_numpy(model.m.get_layer("conv16-s").kernel)
    # Keras itself loads nothing here, silently; that is why load_weights_by_name checks names.
    model.m.load_weights(path, by_name=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.m.get_layer("conv16-s").kernel), before)
    with pytest.raises(ValueError, match="unrelated.h5.*trunk layers"):
        load_weights_by_name(model.m, path)


def test_load_weights_by_name_refuses_keras3_weight_file_names_and_missing_files(tmp_path):
    model = DeepSpeakerModel(model_size="small")
    with pytest.raises(ValueError, match=r"\*\.weights\.h5"):
        load_weights_by_name(model.m, tmp_path / "checkpoint.weights.h5")
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        load_weights_by_name(model.m, tmp_path / "missing.h5")


def test_full_size_checkpoint_does_not_load_into_the_small_model(reference):
    # The small model's stage convs are named conv16-s ... conv128-s: the full file lacks them.
    with pytest.raises(ValueError, match="conv16-s"):
        load_weights_by_name(DeepSpeakerModel(model_size="small").m, reference.weights)


# This project's checkpoints.


def test_weights_file_round_trip_reproduces_embeddings(loaded_model, real_features, tmp_path):
    path = tmp_path / "rescnn.weights.h5"
    loaded_model.m.save_weights(path)
    restored = DeepSpeakerModel()
    restored.m.load_weights(path)
    np.testing.assert_array_equal(embed(restored.m, real_features), embed(loaded_model.m, real_features))


def test_keras_file_reloads_without_custom_objects(loaded_model, real_features, tmp_path):
    path = tmp_path / "rescnn.keras"
    loaded_model.m.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.get_layer("ln"), L2Normalize)
    np.testing.assert_array_equal(embed(restored, real_features), embed(loaded_model.m, real_features))


def set_random_weights(model: keras.Model, seed: int) -> None:
    """Moves biases and batch-norm state off their initial values, so loading each kind of weight shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = (w.shape for w in layer.get_weights())
            layer.set_weights([rng.uniform(0.7, 1.3, gamma), rng.normal(0, 0.1, beta), rng.normal(0, 0.1, mean), rng.uniform(0.5, 1.5, variance)])
        elif layer.weights:  # Kernels keep their random initial values; biases start at zero.
            layer.set_weights([w + rng.normal(0, 0.05, w.shape) if w.ndim == 1 else w for w in layer.get_weights()])


@pytest.mark.parametrize("softmax", [False, True], ids=["embedding_model", "softmax_model"])
def test_a_runs_best_h5_loads_by_name_into_the_keras2_reference_and_embeds_alike(real_features, tmp_path, softmax):
    speakers = SOFTMAX_SPEAKERS if softmax else None
    model = DeepSpeakerModel(include_softmax=softmax, num_speakers_softmax=speakers).m
    set_random_weights(model, seed=3)
    save_model_atomically(model, tmp_path / "best.h5")  # How training writes best.h5: Keras 3, legacy HDF5.
    np.save(tmp_path / "features.npy", real_features)
    extra = ["--softmax", str(speakers), "--probabilities", str(tmp_path / "keras2_probabilities.npy")] if softmax else []
    run_python([str(TESTS_DIR / "keras2_reference.py"), "--checkpoint", str(tmp_path / "best.h5"), "--input", str(tmp_path / "features.npy"),
                "--output", str(tmp_path / "keras2_embeddings.npy"), *extra],
               {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"})
    affine = keras.Model(model.input, model.get_layer("affine").output)
    embeddings = keras.ops.convert_to_numpy(L2Normalize()(embed(affine, real_features)))
    assert np.abs(np.load(tmp_path / "keras2_embeddings.npy") - embeddings).max() < TOLERANCE
    if softmax:
        assert np.abs(np.load(tmp_path / "keras2_probabilities.npy") - embed(model, real_features)).max() < TOLERANCE


# Hive-MTL.


@pytest.fixture(scope="module")
def mtl_model(reference) -> tuple[keras.Model, list[str]]:
    model = build_mtl_model(num_speakers=5)
    skipped = load_weights_by_name(model, reference.weights)
    return model, skipped


def test_mtl_model_outputs_speaker_and_gender_probabilities(mtl_model, real_features):
    model, _ = mtl_model
    outputs = model.predict(real_features, verbose=0)
    assert set(outputs) == {"speaker_pred", "gender_pred"}
    assert outputs["speaker_pred"].shape == (len(real_features), 5)
    np.testing.assert_allclose(outputs["speaker_pred"].sum(axis=1), 1.0, atol=1e-5)
    assert outputs["gender_pred"].shape == (len(real_features), 1)
    assert ((outputs["gender_pred"] > 0) & (outputs["gender_pred"] < 1)).all()


def test_mtl_trunk_loads_a_reference_checkpoint_and_embeds_like_the_reference(
    mtl_model, reference, real_features
):
    model, skipped = mtl_model
    assert sorted(skipped) == ["gender_pred", "shared", "speaker_pred", "speaker_task"]
    assert model.count_params() > REFERENCE_WEIGHT_COUNT
    assert np.abs(embed(embedding_model(model), real_features) - reference.embeddings).max() < TOLERANCE


def test_mtl_embedding_output_equals_the_extracted_embedding_model(real_features):
    model = build_mtl_model(num_speakers=3, model_size="small", embedding_output=True)
    outputs = model(real_features, training=False)
    assert set(outputs) == {"speaker_pred", "gender_pred", "ln"}
    extracted = embed(embedding_model(model), real_features)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(outputs["ln"]), extracted)


def test_mtl_head_sizes_and_gender_head_are_configurable():
    model = build_mtl_model(
        num_speakers=3, model_size="small", shared_units=32, speaker_units=16, label_heads={}
    )
    assert model.get_layer("shared").kernel.shape == (EMBEDDING_SIZE, 32)
    assert model.get_layer("speaker_task").kernel.shape == (32, 16)
    assert model.get_layer("speaker_pred").kernel.shape == (16, 3)
    assert "gender_pred" not in [layer.name for layer in model.layers]


def test_mtl_aam_speaker_head_reads_the_embedding_and_label_heads_sit_on_shared():
    model = build_mtl_model(num_speakers=3, model_size="small", speaker_head="aam", label_heads={"gender_pred": 1, "accent_pred": 4})
    names = [layer.name for layer in model.layers]
    assert "speaker_task" not in names
    assert model.get_layer("speaker_pred").input is model.get_layer("ln").output
    assert model.get_layer("accent_pred").input is model.get_layer("shared").output
    outputs = model(np.zeros((2, 40, NUM_FBANKS, 1), np.float32))
    assert outputs["speaker_pred"].shape == (2, 3) and outputs["gender_pred"].shape == (2, 1)
    np.testing.assert_allclose(np.sum(keras.ops.convert_to_numpy(outputs["accent_pred"]), axis=1), 1.0, rtol=1e-5)  # A softmax over 4 labels.


@pytest.mark.parametrize(
    "kwargs",
    [{"num_speakers": 1}, {"num_speakers": 3, "shared_units": 0}, {"num_speakers": 3, "model_size": "tiny"}],
)
def test_invalid_mtl_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        build_mtl_model(**kwargs)


def test_mtl_model_round_trips_through_a_keras_file(real_features, tmp_path):
    model = build_mtl_model(num_speakers=3, model_size="small")
    path = tmp_path / "mtl.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    expected, actual = model.predict(real_features, verbose=0), restored.predict(real_features, verbose=0)
    for name in ("speaker_pred", "gender_pred"):
        np.testing.assert_array_equal(actual[name], expected[name])


def test_mtl_model_trains_on_its_heads_with_speaker_accuracy(real_features):
    model = build_mtl_model(num_speakers=3, model_size="small")
    model.compile(
        optimizer="sgd",  # Adam triples TensorFlow's tracing time; the wiring is what is tested.
        loss={"speaker_pred": "sparse_categorical_crossentropy", "gender_pred": "binary_crossentropy"},
        metrics={"speaker_pred": ["accuracy"]},
    )
    targets = {"speaker_pred": np.array([0, 0, 1, 2]), "gender_pred": np.array([1.0, 1.0, 0.0, 1.0])}
    history = model.fit(real_features, targets, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert "speaker_pred_accuracy" in history.history


def test_mtl_embedding_output_takes_a_triplet_loss_next_to_the_heads(real_features):
    model = build_mtl_model(num_speakers=3, model_size="small", embedding_output=True)
    model.compile(
        optimizer="sgd",
        loss={
            "speaker_pred": "sparse_categorical_crossentropy",
            "gender_pred": "binary_crossentropy",
            "ln": deep_speaker_loss,
        },
        metrics={"speaker_pred": ["accuracy"]},
    )
    x = real_features[[0, 1, 1, 0, 2, 3]]  # Anchors, positives (same speaker), negatives.
    targets = {"speaker_pred": np.array([0, 0, 0, 0, 1, 2]), "gender_pred": np.ones(6), "ln": np.zeros((6, 1))}
    history = model.fit(x, targets, epochs=1, batch_size=6, shuffle=False, verbose=0)
    assert np.isfinite(history.history["ln_loss"][0]) and history.history["ln_loss"][0] >= 0


def test_embedding_model_refuses_a_softmax_model():
    with pytest.raises(ValueError, match="no embedding layer"):
        embedding_model(DeepSpeakerModel(model_size="small", include_softmax=True, num_speakers_softmax=3).m)


# Second backend.

JAX_EMBED = """
import sys
import keras
import numpy as np
assert keras.backend.backend() == "jax", keras.backend.backend()
from conv_models import DeepSpeakerModel, load_weights_by_name
model = DeepSpeakerModel()
load_weights_by_name(model.m, sys.argv[1])
np.save(sys.argv[3], keras.ops.convert_to_numpy(model.m.predict(np.load(sys.argv[2]), verbose=0)))
"""


def test_jax_backend_reproduces_the_reference_embeddings(reference, on_jax):
    assert np.abs(np.load(on_jax.output("reference.npy")) - reference.embeddings).max() < TOLERANCE


JAX_RELOAD_KERAS_FILE = """
import sys
import keras
import numpy as np
assert keras.backend.backend() == "jax", keras.backend.backend()
import conv_models  # noqa: F401  (registers ClippedReLU, TimeAverage, L2Normalize)
model = keras.models.load_model(sys.argv[1])
np.save(sys.argv[3], keras.ops.convert_to_numpy(model.predict(np.load(sys.argv[2]), verbose=0)))
"""


def test_a_keras_file_saved_on_tensorflow_reloads_on_jax_without_custom_objects(on_jax):
    assert np.abs(np.load(on_jax.output("reloaded.npy")) - on_jax.reloaded_expected).max() < TOLERANCE


# ---------------------------------------------------------------------------------------------- raw PCM input

# The reference's example_pcm.py, as it reads there: its imports name modules this project has too.
EXAMPLE_PCM = """
import librosa
import numpy as np
import tensorflow as tf

from constants import SAMPLE_RATE
from conv_models import DeepSpeakerModel
from test import batch_cosine_similarity

model = DeepSpeakerModel(pcm_input=True)
model.m.load_weights('ResCNN_triplet_training_checkpoint_265.h5', by_name=True)

samples = [
    'samples/PhilippeRemy/PhilippeRemy_001.wav',
    'samples/PhilippeRemy/PhilippeRemy_002.wav',
    'samples/1255-90413-0001.flac',
]
pcm = [librosa.load(x, sr=SAMPLE_RATE, mono=True)[0] for x in samples]

# The shortest length, each file cropped around its centre.
num_samples = min([len(x) for x in pcm])
pcm = tf.convert_to_tensor(np.stack([x[(len(x) - num_samples) // 2:][:num_samples] for x in pcm]))
predict = model.m.predict(pcm)
speaker_similarity = batch_cosine_similarity(predict[0:1], predict[1:])

same_speaker_similarity = speaker_similarity[0]
diff_speaker_similarity = speaker_similarity[1]
print('SAME SPEAKER', same_speaker_similarity)
print('DIFF SPEAKER', diff_speaker_similarity)

assert same_speaker_similarity > diff_speaker_similarity
"""
EXAMPLE_PCM_FILES = ("PhilippeRemy/PhilippeRemy_001.wav", "PhilippeRemy/PhilippeRemy_002.wav", "1255-90413-0001.flac")
REFERENCE_CHECKPOINT_NAME = "ResCNN_triplet_training_checkpoint_265.h5"


@pytest.fixture(scope="module")
def example_pcm() -> np.ndarray:
    """(3, samples) float32: the example's files at 16 kHz, cropped around their centres to the shortest."""
    pcm = [read_audio(REPO_ROOT / "samples" / name) for name in EXAMPLE_PCM_FILES]  # librosa.load's samples.
    length = min(len(x) for x in pcm)
    return np.stack([x[(len(x) - length) // 2 :][:length] for x in pcm])


@pytest.fixture(scope="module")
def pcm_reference(reference, example_pcm, tmp_path_factory) -> SimpleNamespace:
    """The Keras 2 rebuild of the reference's pcm_input=True model, loaded by name from the stand-in
    checkpoint (a full-model Keras 2 .h5, as the published one is), on `example_pcm`."""
    out = tmp_path_factory.mktemp("keras2_pcm")
    np.save(out / "pcm.npy", example_pcm)
    run_python([str(TESTS_DIR / "keras2_reference.py"), "--pcm", "--checkpoint", str(reference.model), "--input", str(out / "pcm.npy"),
                "--output", str(out / "embeddings.npy")],
               {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"})
    return SimpleNamespace(checkpoint=reference.model, pcm=out / "pcm.npy", embeddings=np.load(out / "embeddings.npy"))


@pytest.fixture(scope="module")
def pcm_model(reference) -> DeepSpeakerModel:
    model = DeepSpeakerModel(pcm_input=True)
    assert load_weights_by_name(model.m, reference.model) == []
    return model


def test_htk_mel_matrix_is_tensorflows_mel_matrix_not_python_speech_features():
    import tensorflow as tf

    matrix = htk_mel_matrix()
    assert matrix.shape == (257, NUM_FBANKS) and matrix.dtype == np.float32
    expected = tf.signal.linear_to_mel_weight_matrix(NUM_FBANKS, 257, 16000, 0, 8000).numpy()
    np.testing.assert_allclose(matrix, expected, atol=2e-5)  # TensorFlow computes it in float32, this in float64.
    assert not matrix[0].any()  # No weight on the DC bin.
    assert np.abs(matrix - mel_filterbank()).max() > 0.1  # Other filters than read_mfcc's.


def test_pcm_filterbanks_frame_like_tf_signal_one_frame_fewer_than_read_mfcc_and_normalise_each_frame(example_pcm):
    layer = PCMFilterbanks()
    features = keras.ops.convert_to_numpy(layer(example_pcm[:1]))
    frames = len(filterbank_energies(example_pcm[0])) - 1
    assert features.shape == (1, frames, NUM_FBANKS, 1) == layer.compute_output_shape(example_pcm[:1].shape)
    np.testing.assert_allclose(features.mean(axis=2), 0.0, atol=1e-5)
    np.testing.assert_allclose(features.std(axis=2), 1.0, atol=1e-4)


def test_pcm_model_takes_raw_inputs_and_keeps_the_reference_layers(pcm_model):
    model = pcm_model.m
    assert model.input.name == "raw_inputs" and tuple(model.input.shape) == (None, None)
    assert isinstance(model.layers[1], PCMFilterbanks)
    assert [layer.name for layer in model.layers if layer.weights] == reference_weighted_layer_names()
    assert model.count_params() == REFERENCE_WEIGHT_COUNT


def test_a_keras2_checkpoint_gives_the_reference_pcm_models_embeddings_of_raw_audio(pcm_model, pcm_reference, example_pcm):
    assert np.abs(embed(pcm_model.m, example_pcm) - pcm_reference.embeddings).max() < TOLERANCE
    distances = np.linalg.norm(pcm_reference.embeddings[:, None] - pcm_reference.embeddings[None], axis=-1)
    assert distances[~np.eye(len(distances), dtype=bool)].min() > 1000 * TOLERANCE  # Not one vector for every input.


def printed_score(label: str, stdout: str) -> float:
    return float(re.search(rf"^{label} \[?([-\d.e]+)", stdout, flags=re.M).group(1))


def test_the_reference_example_pcm_runs_unchanged_and_prints_the_reference_models_scores(pcm_reference, tmp_path, monkeypatch, capsys):
    """The stand-in checkpoint has random weights, so its scores are not the README's 0.816 and 0.142
    (nearly 1 for every pair) and the example's own `assert same > diff` holds by a small margin; what
    is checked is that the example prints what the reference's graph computes from the same file."""
    (tmp_path / "samples").symlink_to(REPO_ROOT / "samples")
    (tmp_path / REFERENCE_CHECKPOINT_NAME).symlink_to(pcm_reference.checkpoint)
    (tmp_path / "example_pcm.py").write_text(EXAMPLE_PCM)
    monkeypatch.chdir(tmp_path)
    runpy.run_path("example_pcm.py", run_name="__main__")
    stdout = capsys.readouterr().out
    reference = pcm_reference.embeddings
    same, different = printed_score("SAME SPEAKER", stdout), printed_score("DIFF SPEAKER", stdout)
    assert abs(same - float(reference[0] @ reference[1])) < TOLERANCE
    assert abs(different - float(reference[0] @ reference[2])) < TOLERANCE
    assert same > different


def test_the_shipped_model_on_raw_pcm_scores_the_same_speaker_far_above_another(example_pcm):
    from inference import inspect_checkpoint

    checkpoint = REPO_ROOT / "pretrained" / "model.h5"
    model = DeepSpeakerModel(pcm_input=True, model_size=inspect_checkpoint(checkpoint).model_size)
    load_weights_by_name(model.m, checkpoint)
    embeddings = embed(model.m, example_pcm)
    same, different = float(embeddings[0] @ embeddings[1]), float(embeddings[0] @ embeddings[2])
    assert same - different > 0.3, (same, different)  # Trained on read_mfcc's features; these differ a little.


def test_pcm_input_must_be_batch_by_samples_holding_one_frame():
    layer = PCMFilterbanks()
    with pytest.raises(ValueError, match="must be 2-D"):
        layer(np.zeros(16000, np.float32))
    with pytest.raises(ValueError, match="must be 2-D"):
        layer(np.zeros((1, 16000, 2), np.float32))
    with pytest.raises(ValueError, match="at least 401 samples"):
        layer(np.zeros((2, 400), np.float32))
    model = DeepSpeakerModel(pcm_input=True, model_size="small")
    with pytest.raises(ValueError, match=r"raw_inputs.*Expected shape \(None, None\)"):
        model.m.predict(np.zeros(16000, np.float32), verbose=0)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="graphs traced for any length are TensorFlow's")
def test_a_graph_traced_for_any_length_refuses_a_clip_shorter_than_one_frame_when_it_runs():
    import tensorflow as tf

    features = tf.function(PCMFilterbanks(), input_signature=[tf.TensorSpec((None, None), tf.float32)])
    assert features(np.zeros((2, 401), np.float32)).shape == (2, 1, NUM_FBANKS, 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 401 samples"):
        features(np.zeros((2, 400), np.float32))


def test_a_pcm_model_round_trips_through_a_keras_file_and_keeps_float32_features_under_mixed_precision(example_pcm, tmp_path):
    model = DeepSpeakerModel(pcm_input=True, model_size="small").m
    set_random_weights(model, seed=5)
    model.save(tmp_path / "pcm.keras")
    restored = keras.models.load_model(tmp_path / "pcm.keras")
    clips = example_pcm[:, :16000]
    np.testing.assert_array_equal(embed(restored, clips), embed(model, clips))
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        assert PCMFilterbanks().compute_dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy(previous)


JAX_PCM_EMBED = """
import sys
import keras
import numpy as np
assert keras.backend.backend() == "jax", keras.backend.backend()
from conv_models import DeepSpeakerModel
model = DeepSpeakerModel(pcm_input=True)
model.m.load_weights(sys.argv[1], by_name=True)
np.save(sys.argv[3], keras.ops.convert_to_numpy(model.m.predict(np.load(sys.argv[2]), verbose=0)))
"""


def test_jax_backend_gives_the_reference_pcm_models_embeddings(pcm_reference, on_jax):
    assert np.abs(np.load(on_jax.output("pcm.npy")) - pcm_reference.embeddings).max() < TOLERANCE


JAX_GRADIENT_REVERSAL = """
import sys
import jax
import jax.numpy as jnp
import keras
import numpy as np
assert keras.backend.backend() == "jax", keras.backend.backend()
from conv_models import GradientReversal
layer = GradientReversal(scale=0.5)
x = jnp.array([[-2.0, 0.0, 0.5, 3.0]])
upstream = jnp.array([[1.0, -2.0, 4.0, 0.25]])
gradient = jax.grad(lambda x: jnp.sum(layer(x) * upstream))(x)
np.save(sys.argv[1], np.stack([np.asarray(layer(x)), np.asarray(gradient)]))
"""


def test_gradient_reversal_on_jax_negates_the_scaled_gradient(on_jax):
    values, gradient = np.load(on_jax.output("reversal.npy"))
    np.testing.assert_array_equal(values, [[-2.0, 0.0, 0.5, 3.0]])
    np.testing.assert_array_equal(gradient, [[-0.5, 1.0, -2.0, -0.125]])


# ---------------------------------------------------------------------------------------------- mixed precision


def test_l2_normalize_of_a_large_norm_float16_input_is_a_unit_vector():
    # In float16 the sum of squares of this vector (norm 4,000) would overflow to inf and give zeros.
    big = np.full((2, EMBEDDING_SIZE), 4_000 / np.sqrt(EMBEDDING_SIZE), dtype=np.float16)
    normalised = keras.ops.convert_to_numpy(L2Normalize()(big))
    assert normalised.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), 1.0, atol=1e-3)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_a_mixed_precision_model_gives_the_float32_models_embeddings(policy, real_features):
    keras.utils.set_random_seed(0)
    reference = DeepSpeakerModel(model_size="small").m
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        mixed = DeepSpeakerModel(model_size="small").m
        softmax = DeepSpeakerModel(include_softmax=True, num_speakers_softmax=5, model_size="small").m
    finally:
        keras.mixed_precision.set_global_policy(previous)
    mixed.set_weights(reference.get_weights())
    expected = reference.predict(real_features, verbose=0)
    got = mixed.predict(real_features, verbose=0)
    assert got.dtype == np.float32 and softmax.output.dtype == "float32"
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(got * expected, axis=1)
    assert cosines.min() > (0.999 if policy == "mixed_float16" else 0.99)


# ---------------------------------------------------------------------------------------------- the JAX backend, in one child

# Each job as `python -c SNIPPET ARGS...` runs it, one after another in one process (the backend is chosen when
# Keras is imported, so JAX needs a process of its own; one for all spares importing JAX and Keras five times).
# A job that fails is reported on stderr and the next one runs, so each test fails on its own.
JAX_JOBS = """
import json
import sys
import traceback
for name, snippet, argv in json.loads(sys.argv[1]):
    sys.argv = ["-c", *argv]
    try:
        exec(compile(snippet, name, "exec"), {"__name__": "__main__"})
    except Exception:
        print(f"job {name} failed:", traceback.format_exc(), file=sys.stderr)
"""


@pytest.fixture(scope="module")
def on_jax(reference, pcm_reference, real_features, jax_subprocess_env, tmp_path_factory) -> SimpleNamespace:
    """The module's checks on the JAX backend, run in one child: `output(name)` is the file a job wrote (a missing
    one fails the test with the child's stderr); `reloaded_expected` the TensorFlow embeddings of the saved .keras model."""
    import json

    out = tmp_path_factory.mktemp("on_jax")
    model = DeepSpeakerModel(model_size="small").m
    set_random_weights(model, seed=4)
    model.save(out / "rescnn.keras")
    np.save(out / "features.npy", real_features)
    gradient_inputs = {dtype: values for dtype, (values, _) in CLIPPED_RELU_BOUNDARIES.items()}
    jobs = [
        ("clipped_relu", JAX_CLIPPED_RELU_GRADIENT, [json.dumps(gradient_inputs), str(out / "clipped_relu.json")]),
        ("reference", JAX_EMBED, [str(reference.model), str(reference.features), str(out / "reference.npy")]),
        ("reload", JAX_RELOAD_KERAS_FILE, [str(out / "rescnn.keras"), str(out / "features.npy"), str(out / "reloaded.npy")]),
        ("pcm", JAX_PCM_EMBED, [str(pcm_reference.checkpoint), str(pcm_reference.pcm), str(out / "pcm.npy")]),
        ("reversal", JAX_GRADIENT_REVERSAL, [str(out / "reversal.npy")]),
    ]
    result = subprocess.run([sys.executable, "-c", JAX_JOBS, json.dumps(jobs)], cwd=REPO_ROOT, env=jax_subprocess_env, capture_output=True, text=True)

    def output(name: str) -> Path:
        assert result.returncode == 0 and (out / name).is_file(), f"the JAX job writing {name} failed:\n{result.stderr[-4000:]}"
        return out / name

    return SimpleNamespace(output=output, reloaded_expected=embed(model, real_features))
