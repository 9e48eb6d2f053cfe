"""Keras 2 oracle: builds the reference ResCNN in tf.keras 2, writes checkpoints and embeddings.

Run in its own process with TF_USE_LEGACY_KERAS=1 (the test suite does). It imports neither
Keras 3 nor this project's model code: it rebuilds the reference graph independently, with
`Lambda` layers as the reference did, so the Keras 3 model is checked against it.

Weights are random but deterministic (--seed), and batch-norm statistics and biases are moved
away from their initial values, so loading every kind of weight is really exercised.

    python tests/keras2_reference.py --input x.npy --output emb.npy \
        --weights rescnn_weights.h5 --model rescnn_model.h5 [--softmax N] [--seed S]

`--output` receives the L2-normalised output of `affine` (for the embedding model that is the
model's own output, `ln`).

With `--checkpoint FILE` it writes no checkpoint: it loads FILE (an HDF5 file written by any Keras)
into the reference graph by layer name, as the reference loads its checkpoints, and embeds
`--input`. It fails unless the file holds every weighted layer of that graph (Keras 2 would
silently skip the others). `--probabilities` also saves the softmax output (with `--softmax`).

    python tests/keras2_reference.py --checkpoint best.h5 --input x.npy --output emb.npy \
        [--softmax N --probabilities p.npy]

With `--pcm` the graph is the reference's `DeepSpeakerModel(pcm_input=True)` (its example_pcm.py):
`--input` holds raw 16 kHz PCM, shape (N, samples), fed to an input layer `raw_inputs`, and the
features are computed in the graph as the reference does it there, with tf.signal in `Lambda`
layers (pre-emphasis, `tf.signal.stft`, `tf.signal.linear_to_mel_weight_matrix`, per-frame
normalisation). The weighted layers are the same, so any checkpoint loads into it by name.

    python tests/keras2_reference.py --pcm --checkpoint weights.h5 --input pcm.npy --output emb.npy

Several jobs separated by a lone `+` run one after the other in this process, each as a run of
its own would (a new Keras session, its own seed), without starting TensorFlow again:

    python tests/keras2_reference.py --input x.npy --output a.npy ... --seed 0 + --input x.npy --output b.npy ... --seed 1
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from tensorflow import keras  # noqa: E402  (tf_keras, Keras 2, because of TF_USE_LEGACY_KERAS)

K = keras.backend
L = keras.layers


def clipped_relu(x):
    return L.Lambda(lambda y: K.minimum(K.maximum(y, 0.0), 20.0))(x)


def conv(filters: int, kernel: int, strides: int, name: str) -> L.Conv2D:
    return L.Conv2D(
        filters,
        kernel_size=kernel,
        strides=strides,
        padding="same",
        kernel_initializer="glorot_uniform",
        kernel_regularizer=keras.regularizers.l2(1e-4),
        name=name,
    )


def pcm_filterbanks(samples: tf.Tensor) -> tf.Tensor:
    """Pre-emphasis, |STFT|^2 / 512 (400-sample frames, step 160, FFT 512, rectangular), TensorFlow's mel matrix."""
    emphasised = samples[:, 1:] - 0.97 * samples[:, :-1]
    magnitude = tf.abs(tf.signal.stft(emphasised, frame_length=400, frame_step=160, fft_length=512, window_fn=tf.ones))
    mel = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=64, num_spectrogram_bins=257, sample_rate=16000, lower_edge_hertz=0, upper_edge_hertz=8000
    )
    return tf.matmul(tf.square(magnitude) / 512, mel)


def normalise_frames(energies: tf.Tensor) -> tf.Tensor:
    """Each frame minus its mean, divided by max(its standard deviation, 1e-12)."""
    mean = tf.reduce_mean(energies, axis=-1, keepdims=True)
    std = tf.math.reduce_std(energies, axis=-1, keepdims=True)
    return (energies - mean) / tf.maximum(std, 1e-12)


def reference_rescnn(num_speakers_softmax: int | None, pcm: bool = False) -> keras.Model:
    if pcm:
        inputs = L.Input(batch_shape=(None, None), name="raw_inputs")
        x = L.Lambda(pcm_filterbanks)(inputs)
        x = L.Lambda(normalise_frames)(x)
        x = L.Lambda(lambda y: tf.expand_dims(y, axis=-1))(x)
    else:
        inputs = L.Input(batch_shape=(None, None, 64, 1), name="input")
        x = inputs
    for stage, filters in enumerate((64, 128, 256, 512), start=1):
        name = f"conv{filters}-s"
        x = clipped_relu(L.BatchNormalization(name=name + "_bn")(conv(filters, 5, 2, name)(x)))
        for block in range(3):
            shortcut = x
            for part in ("2a", "2b"):
                name = f"res{stage}_{block}_branch_{part}"
                x = clipped_relu(L.BatchNormalization(name=name + "_bn")(conv(filters, 3, 1, name)(x)))
            x = clipped_relu(L.add([x, shortcut]))
    x = L.Lambda(lambda y: K.reshape(y, (K.shape(y)[0], -1, 2048)), name="reshape")(x)
    x = L.Lambda(lambda y: K.mean(y, axis=1), name="average")(x)
    if num_speakers_softmax:
        x = L.Dropout(0.5)(x)
    x = L.Dense(512, name="affine")(x)
    if num_speakers_softmax:
        x = L.Dense(num_speakers_softmax, activation="softmax", name="softmax")(x)
    else:
        x = L.Lambda(lambda y: K.l2_normalize(y, axis=1), name="ln")(x)
    return keras.Model(inputs, x, name="ResCNN")


def randomise(model: keras.Model, seed: int) -> None:
    """Deterministic weights: glorot-uniform kernels, small random biases, non-default BN state."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, variance = (w.shape for w in layer.get_weights())
            layer.set_weights([
                rng.uniform(0.7, 1.3, gamma).astype(np.float32),
                rng.normal(0.0, 0.1, beta).astype(np.float32),
                rng.normal(0.0, 0.1, mean).astype(np.float32),
                rng.uniform(0.5, 1.5, variance).astype(np.float32),
            ])
        elif isinstance(layer, (L.Conv2D, L.Dense)):
            kernel, bias = layer.get_weights()
            fan_in = int(np.prod(kernel.shape[:-1]))
            fan_out = kernel.shape[-1] * int(np.prod(kernel.shape[:-2]))
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            layer.set_weights([
                rng.uniform(-limit, limit, kernel.shape).astype(np.float32),
                rng.normal(0.0, 0.05, bias.shape).astype(np.float32),
            ])


def load_by_name(model: keras.Model, path: str) -> None:
    """`model.load_weights(path, by_name=True)`, after checking the file has every weighted layer."""
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        in_file = set(group.keys())
    missing = [layer.name for layer in model.layers if layer.weights and layer.name not in in_file]
    if missing:
        raise SystemExit(f"{path}: no weights for {len(missing)} layers of the reference graph: {missing[:5]}")
    model.load_weights(path, by_name=True)


def main() -> None:
    """Each job of the command line, in turn (see the module docstring)."""
    jobs: list[list[str]] = [[]]
    for argument in sys.argv[1:]:
        if argument == "+":
            jobs.append([])
        else:
            jobs[-1].append(argument)
    for job in jobs:
        K.clear_session()  # Layer names and seeds as in a process of its own.
        run_job(job)


def run_job(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help=".npy of shape (N, frames, 64, 1); with --pcm (N, samples)")
    parser.add_argument("--output", required=True, help=".npy for the (N, 512) embeddings")
    parser.add_argument("--weights", help="model.save_weights target (*.h5)")
    parser.add_argument("--model", help="model.save target (*.h5, full model)")
    parser.add_argument("--checkpoint", help="HDF5 file to load by layer name instead of random weights")
    parser.add_argument("--probabilities", help=".npy for the softmax output (with --softmax)")
    parser.add_argument("--softmax", type=int, default=None, help="number of softmax speakers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pcm", action="store_true", help="the reference's pcm_input=True graph: --input is raw 16 kHz PCM")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.weights is None or args.model is None):
        parser.error("give either --weights and --model, or --checkpoint")
    if args.probabilities and not args.softmax:
        parser.error("--probabilities needs --softmax")

    assert tf_keras.__version__.startswith("2.") and keras.Model.__module__.startswith("tf_keras"), (
        "tensorflow.keras is not Keras 2 (tf_keras): is TF_USE_LEGACY_KERAS=1 set before TF loads?"
    )
    tf.random.set_seed(args.seed)
    model = reference_rescnn(args.softmax, pcm=args.pcm)
    if args.checkpoint:
        load_by_name(model, args.checkpoint)
    else:
        randomise(model, args.seed)
        model.save_weights(args.weights)  # *.h5 -> Keras 2 HDF5 weights file.
        model.save(args.model)  # *.h5 -> Keras 2 HDF5 full-model file (weights under model_weights).

    features = np.load(args.input).astype(np.float32)
    if args.probabilities:
        np.save(args.probabilities, model(features, training=False).numpy())
    affine = keras.Model(model.inputs, model.get_layer("affine").output)
    embeddings = K.l2_normalize(affine(features, training=False), axis=1).numpy()
    if not args.softmax:
        np.testing.assert_array_equal(embeddings, model(features, training=False).numpy())
    np.save(args.output, embeddings)


if __name__ == "__main__":
    main()
