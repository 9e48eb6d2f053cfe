"""Export the embedding model as one TensorFlow graph: raw 16 kHz PCM in, 512-d embedding out.

    exported = export_embedding_model("ResCNN_triplet_training_checkpoint_265.h5", "exported/")
    model = tf.saved_model.load(str(exported.saved_model))
    result = model.embed(audio.read_audio("a.wav"))   # 1-D float32 at 16 kHz, any length
    result["embedding"]                               # (512,) unit vector; zeros when no speech

The graph does what `Embedder.from_checkpoint(checkpoint).embed_files([path])` does after
decoding, with the checkpoint's front end (`inference.FrontEnd.of_checkpoint`: the `config.json`
beside it, else the reference's): its silence trim, then pre-emphasis 0.97, 25 ms / 10 ms
frames with the last one zero-padded as python_speech_features pads it, |rfft(512)|^2 / 512,
the 64 python_speech_features mel filters, per-frame normalisation, then the mean of the
model's embeddings of the sliding 160-frame windows of `inference.window_starts`, L2-normalised.
A clip under 160 frames is embedded as the front end's `pad` says: `zeros` or `repeat`, one
window padded with zeros or with its own frames repeated; `exact`, the model run once on its own
frames, unpadded (the ResCNN takes any number of frames), L2-normalised. The trims:
- `reference`: the 95th percentile of |x| with NumPy's linear interpolation, so the same samples
  are kept;
- `energy`: `librosa.effects.trim(top_db=30)`: RMS of centred 2048-sample frames every 512
  samples, summed in NumPy's float32 order (bit for bit), dB relative to the loudest frame;
  only a frame within about 1e-5 dB of the threshold could be judged otherwise, as float32
  logarithms may differ in the last bit;
- `none`: all samples.
Decoding and resampling stay outside the graph: feed it the samples of `audio.read_audio`
(16 kHz; the graph cannot check the rate).

Artefacts in the output folder:
- `saved_model/`, signatures (each takes `samples`, 1-D float32):
  `serving_default` (also `model.embed`): {'embedding': (512,), 'num_frames': ()}. Features in
  float64 as audio.py computes them: identical to `audio.mfcc_from_samples`.
  `features` (`model.features`): {'features': (frames, 64) float32, 'num_frames': ()}.
  `embed_float32` (`model.embed_float32`): `serving_default` with float32 features.
- `embedding.tflite`: `embed_float32` with TFLite builtin ops only (no Flex: the builtin FFT is
  float32), signature `serving_default`, input length free (resize the input tensor per call).
- `embedding_int8.tflite` (unless `int8=False`): the same with dynamic-range quantisation
  (`tf.lite.Optimize.DEFAULT`, no representative data): the convolution and dense weights are
  stored as int8, one scale per output channel (about a quarter of the size), and each of those
  layers quantises its input per call; everything else, the features included, stays float32.
  The mel filters are split in bands of fewer than 1,024 weights (`mel_bands`), the size from
  which the quantiser takes a constant: power spectra span too many decades for int8.
- `export.json`: the checkpoint, model size, front end and feature settings it was made with.

Audio without usable speech (empty, all zeros, non-finite samples, or under 400 samples (25 ms)
left after the trim, e.g. constant audio with the reference trim: the cases where
`audio.mfcc_from_samples` raises AudioError) gives `num_frames == 0`, an all-zero embedding and
(0, 64) features: never NaN and never an exception, so a server or an app checks `num_frames`
(or the norm: 0 instead of 1).
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

from audio import frame_length_and_step, mel_filterbank
from fileio import write_json_atomically
from constants import (
    EMBEDDING_PAD_MODES,
    EMBEDDING_SIZE,
    ENERGY_TRIM_TOP_DB,
    EXPORT_WINDOWS_PER_CALL,
    INFERENCE_WINDOW_HOP,
    NFFT,
    NORMALISATION_STD_FLOOR,
    NUM_FBANKS,
    NUM_FRAMES,
    PRE_EMPHASIS,
    SAMPLE_RATE,
    SILENCE_PERCENTILE,
    TRIM_MODES,
    VERSION,
)
from inference import REFERENCE_FRONTEND, CheckpointInfo, FrontEnd, inspect_checkpoint, load_embedding_model
from triplet_loss import l2_normalize

SAVED_MODEL_DIR_NAME = "saved_model"
TFLITE_FILE_NAME = "embedding.tflite"
INT8_TFLITE_FILE_NAME = "embedding_int8.tflite"
EXPORT_METADATA_FILE_NAME = "export.json"
EMBED_SIGNATURE = "serving_default"  # samples -> {embedding (512,), num_frames ()}
FEATURES_SIGNATURE = "features"  # samples -> {features (frames, 64), num_frames ()}; SavedModel only.
FLOAT32_SIGNATURE = "embed_float32"  # As serving_default with float32 features; the TFLite file's signature.
SAMPLES_SPEC = tf.TensorSpec([None], tf.float32, name="samples")

FRAME_LENGTH, FRAME_STEP = frame_length_and_step(SAMPLE_RATE)
# librosa.effects.trim's defaults, which audio.trim_energy keeps: frames of 4 hops, and
# amplitude_to_db's floor. NumPy sums float32 in blocks of 128 (8 running sums of 16 values).
ENERGY_HOP_LENGTH = 512
ENERGY_FRAME_LENGTH = 4 * ENERGY_HOP_LENGTH
ENERGY_AMPLITUDE_FLOOR = 1e-5
NUMPY_SUM_BLOCK, NUMPY_SUM_LANES = 128, 8
# The mel filters in bands of consecutive filters, each with only the FFT bins it covers; every
# band stays under the size from which TFLite's dynamic-range quantiser stores a constant as int8.
MEL_BANDS = 8
TFLITE_QUANTISED_MIN_WEIGHTS = 1024


@dataclass(frozen=True)
class ExportedModel:
    """What `export_embedding_model` wrote: SavedModel folder, `.tflite` files (None if not asked), `export.json`."""

    saved_model: Path
    tflite: Path | None
    metadata: Path
    tflite_int8: Path | None = None


# ----------------------------------------------------------------------------------------------
# The feature graph, step by step (each matches a function of audio.py).


def percentile(values: tf.Tensor, percent: int) -> tf.Tensor:
    """`np.percentile(values, percent)` of a non-empty 1-D float32 tensor, bit for bit.

    NumPy's 'linear' method interpolates at index (n - 1) * percent / 100 between the two order
    statistics around it, in float32, from the upper one when the weight is at least 0.5. The
    index is split here with integers (q = num / den in lowest terms), so it is exact for any
    length and needs no float64 (which TFLite lacks). Only the top n - index values are sorted.
    """
    fraction = Fraction(percent, 100)
    num, den = fraction.numerator, fraction.denominator
    last = tf.size(values) - 1
    lower_index = (last // den) * num + (last % den) * num // den
    weight_numerator = (last % den) * num % den
    upper_index = tf.minimum(lower_index + 1, last)
    largest = tf.math.top_k(values, k=last + 1 - lower_index, sorted=True).values  # Descending.
    lower = largest[last - lower_index]
    upper = largest[last - upper_index]
    # The weights as NumPy rounds them, looked up so no graph rewrite can reorder the arithmetic.
    weight = tf.gather(tf.constant([np.float32(r / den) for r in range(den)]), weight_numerator)
    complement = tf.gather(tf.constant([np.float32(1 - r / den) for r in range(den)]), weight_numerator)
    step = upper - lower
    return tf.where(2 * weight_numerator >= den, upper - step * complement, lower + step * weight)


def voiced_bounds(samples: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(first, last) of `audio.trim_silence`: samples[first:last] is kept. (0, 0) when nothing is loud."""
    magnitude = tf.abs(samples)
    magnitude = tf.pad(magnitude, [[0, tf.maximum(1 - tf.size(magnitude), 0)]])  # Empty: one silent sample.
    loud = tf.cast(magnitude > percentile(magnitude, SILENCE_PERCENTILE), tf.int32)
    any_loud = tf.reduce_any(loud > 0)
    first = tf.argmax(loud, output_type=tf.int32)
    last = tf.size(loud) - 1 - tf.argmax(tf.reverse(loud, [0]), output_type=tf.int32)
    return tf.where(any_loud, first, 0), tf.where(any_loud, last, 0)


def numpy_float32_sums(values: tf.Tensor) -> tf.Tensor:
    """Sums over the last axis (a length of 128 * 2**k) rounded as NumPy's float32 `np.sum` rounds them.

    NumPy's pairwise summation: blocks of 128 values go into 8 running sums (value i into sum
    i % 8, in order), which are added as ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7)); blocks are added
    in pairs, halves first. Each step is a separate float32 add, so the result is the same bit
    for bit (`librosa.feature.rms` sums 2048 squares so). The running sums are a loop, not a
    chain of adds: Grappler's arithmetic optimizer turns a chain of adds of known shapes into
    one AddN, which adds in another order.
    """
    length = values.shape[-1]
    assert length % NUMPY_SUM_BLOCK == 0 and (length // NUMPY_SUM_BLOCK).bit_count() == 1, length
    steps = NUMPY_SUM_BLOCK // NUMPY_SUM_LANES
    lanes = tf.reshape(values, [-1, length // NUMPY_SUM_BLOCK, steps, NUMPY_SUM_LANES])

    def add_step(step, sums):
        return step + 1, sums + tf.gather(lanes, step, axis=2)

    _, sums = tf.while_loop(lambda step, _: step < steps, add_step, (tf.constant(1), lanes[:, :, 0]), parallel_iterations=1)
    while sums.shape[-1] > 1:  # The 8 running sums of each block, then the blocks: neighbours in pairs.
        sums = sums[..., 0::2] + sums[..., 1::2]
    while sums.shape[-2] > 1:
        sums = sums[..., 0::2, :] + sums[..., 1::2, :]
    return tf.reshape(sums, tf.shape(values)[:-1])


def energy_bounds(samples: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(start, end) of `audio.trim_energy` (`librosa.effects.trim(top_db=30)`): samples[start:end] is kept.

    librosa's arithmetic in float32: the signal padded with 1024 zeros at each end, the RMS of
    2048-sample frames every 512 samples, 10 log10(max(1e-10, rms^2)) relative to the loudest
    frame, frames above -30 dB kept from the first to the last, as samples. A 2048-sample frame
    is four 512-sample hops, so each hop is summed once and each frame adds four hop sums in
    NumPy's order. (0, 0) when no frame is loud enough (non-finite samples).
    """
    length = tf.size(samples)
    num_frames = 1 + length // ENERGY_HOP_LENGTH
    num_hops = num_frames + ENERGY_FRAME_LENGTH // ENERGY_HOP_LENGTH - 1
    padded = tf.pad(samples, [[ENERGY_FRAME_LENGTH // 2, ENERGY_FRAME_LENGTH // 2]])[: num_hops * ENERGY_HOP_LENGTH]
    hop_sums = numpy_float32_sums(tf.reshape(tf.square(padded), [num_hops, ENERGY_HOP_LENGTH]))
    pair_sums = hop_sums[:-1] + hop_sums[1:]
    frame_sums = pair_sums[:-2] + pair_sums[2:]  # (h0 + h1) + (h2 + h3).
    power = tf.square(tf.sqrt(frame_sums / ENERGY_FRAME_LENGTH))  # rms, then amplitude_to_db squares it.
    floor = tf.constant(ENERGY_AMPLITUDE_FLOOR**2, tf.float32)

    def decibels(x):
        return 10.0 * (tf.math.log(tf.maximum(floor, x)) / tf.math.log(tf.constant(10.0)))

    loud = tf.cast(decibels(power) - decibels(tf.reduce_max(power)) > -ENERGY_TRIM_TOP_DB, tf.int32)
    any_loud = tf.reduce_any(loud > 0)
    first = tf.argmax(loud, output_type=tf.int32)
    last = num_frames - 1 - tf.argmax(tf.reverse(loud, [0]), output_type=tf.int32)
    start = first * ENERGY_HOP_LENGTH
    end = tf.minimum(length, (last + 1) * ENERGY_HOP_LENGTH)
    return tf.where(any_loud, start, 0), tf.where(any_loud, end, 0)


def mel_bands(sample_rate: int = SAMPLE_RATE) -> list[tuple[int, np.ndarray]]:
    """The mel matrix (257 bins, 64 filters) in MEL_BANDS bands of consecutive filters: (first bin, weights).

    Each band keeps only the bins its filters cover: the filters are narrow triangles (438 of
    16,448 weights are non-zero), so the 8 bands hold 2,192 weights, the largest 648, each under
    TFLITE_QUANTISED_MIN_WEIGHTS (the int8 file keeps them float).
    """
    mel = mel_filterbank(sample_rate)
    bands = []
    for filters in np.array_split(np.arange(mel.shape[1]), MEL_BANDS):
        bins = np.flatnonzero(mel[:, filters].any(axis=1))
        weights = mel[bins[0] : bins[-1] + 1, filters[0] : filters[-1] + 1]
        assert weights.size < TFLITE_QUANTISED_MIN_WEIGHTS, weights.shape
        bands.append((int(bins[0]), weights))
    return bands


def filterbank_energies(voiced: tf.Tensor, bands: list[tuple[int, tf.Tensor]]) -> tf.Tensor:
    """`audio.filterbank_energies` of >= FRAME_LENGTH float32 samples: (frames, 64) in the dtype of the `mel_bands` weights.

    Pre-emphasis in float32 as NumPy does it; framing, FFT and filters in float64 (as NumPy) or
    float32 (the TFLite variant). The bands' products, side by side, are the whole mel product:
    the bins a band leaves out have zero weight in it.
    """
    dtype = bands[0][1].dtype
    emphasised = tf.concat([voiced[:1], voiced[1:] - tf.constant(PRE_EMPHASIS, tf.float32) * voiced[:-1]], axis=0)
    length = tf.size(emphasised)
    num_frames = 1 + (length - FRAME_LENGTH + FRAME_STEP - 1) // FRAME_STEP  # Ceil, as framesig.
    padded = tf.pad(tf.cast(emphasised, dtype), [[0, (num_frames - 1) * FRAME_STEP + FRAME_LENGTH - length]])
    frames = tf.signal.frame(padded, FRAME_LENGTH, FRAME_STEP)
    spectrum = tf.signal.rfft(frames, fft_length=[NFFT])
    power = (tf.square(tf.math.real(spectrum)) + tf.square(tf.math.imag(spectrum))) / NFFT
    energies = tf.concat([tf.matmul(power[:, first : first + weights.shape[0]], weights) for first, weights in bands], axis=1)
    return tf.where(energies == 0.0, tf.constant(np.finfo(np.float64).eps, dtype), energies)


def normalize_frames(energies: tf.Tensor) -> tf.Tensor:
    """`audio.normalize_frames`: per frame, (x - mean) / max(std, 1e-12), as float32."""
    mean = tf.reduce_mean(energies, axis=1, keepdims=True)
    std = tf.sqrt(tf.reduce_mean(tf.square(energies - mean), axis=1, keepdims=True))
    return tf.cast((energies - mean) / tf.maximum(std, NORMALISATION_STD_FLOOR), tf.float32)


def window_starts(num_frames: tf.Tensor, hop: int = INFERENCE_WINDOW_HOP) -> tf.Tensor:
    """`inference.window_starts`: every `hop` frames, plus one window ending at the last frame."""
    last = tf.maximum(num_frames - NUM_FRAMES, 0)
    starts = tf.range(0, last + 1, hop)
    closing = tf.repeat(tf.reshape(last, [1]), tf.cast(last % hop != 0, tf.int32))
    return tf.concat([starts, closing], axis=0)


def check_frontend(frontend: FrontEnd) -> FrontEnd:
    """`frontend` if the graph can do its trim and padding, else ValueError."""
    if frontend.trim not in TRIM_MODES:
        raise ValueError(f"trim must be one of {', '.join(TRIM_MODES)}; got {frontend.trim!r}")
    if frontend.pad not in EMBEDDING_PAD_MODES:
        raise ValueError(f"pad must be one of {', '.join(EMBEDDING_PAD_MODES)}; got {frontend.pad!r}")
    return frontend


# ----------------------------------------------------------------------------------------------
# The exported module.


class EmbeddingGraph(tf.Module):
    """A Keras embedding model wrapped with the feature graph, as tf.functions of 1-D float32 samples.

    - `embed`: {'embedding': (512,), 'num_frames': ()}, features in float64 like audio.py;
    - `features`: {'features': (frames, 64), 'num_frames': ()}, `audio.mfcc_from_samples` in the graph;
    - `embed_float32`: `embed` with float32 features, for TFLite (its builtin FFT is float32 only).

    `frontend` is the trim and the padding of short clips (`inference.FrontEnd`). `windows_per_call`
    bounds memory on long audio: windows go through the model that many at a time in a loop, and
    their embeddings are summed.
    """

    def __init__(self, model, window_hop: int = INFERENCE_WINDOW_HOP, windows_per_call: int = EXPORT_WINDOWS_PER_CALL,
                 frontend: FrontEnd = REFERENCE_FRONTEND):
        super().__init__(name="deep_speaker_embedding")
        self.model = model
        self.frontend = check_frontend(frontend)
        self.window_hop = int(window_hop)
        self.windows_per_call = int(windows_per_call)
        self._mel_bands = mel_bands(SAMPLE_RATE)
        self.embed = tf.function(functools.partial(self._embed, dtype=tf.float64), input_signature=[SAMPLES_SPEC], autograph=False)
        self.embed_float32 = tf.function(functools.partial(self._embed, dtype=tf.float32), input_signature=[SAMPLES_SPEC], autograph=False)
        self.features = tf.function(self._features, input_signature=[SAMPLES_SPEC], autograph=False)

    def _usable_speech(self, samples):
        """The trimmed samples, and whether they give features (where audio.py raises AudioError)."""
        if self.frontend.trim == "reference":
            first, last = voiced_bounds(samples)  # All zeros: (0, 0).
            usable = tf.logical_and(last - first >= FRAME_LENGTH, tf.reduce_all(tf.math.is_finite(samples)))
            return samples[first:last], usable
        first, last = energy_bounds(samples) if self.frontend.trim == "energy" else (0, tf.size(samples))
        speech = tf.logical_and(last - first >= FRAME_LENGTH, tf.reduce_any(samples != 0.0))
        usable = tf.logical_and(speech, tf.reduce_all(tf.math.is_finite(samples)))
        return samples[first:last], usable

    def _mfcc(self, voiced, dtype):
        return normalize_frames(filterbank_energies(voiced, [(first, tf.constant(weights, dtype)) for first, weights in self._mel_bands]))

    def _features(self, samples):
        voiced, usable = self._usable_speech(samples)
        features = tf.cond(usable, lambda: self._mfcc(voiced, tf.float64), lambda: tf.zeros([0, NUM_FBANKS], tf.float32))
        return {"features": features, "num_frames": tf.shape(features)[0]}

    def _embed(self, samples, dtype):
        voiced, usable = self._usable_speech(samples)

        def from_speech():
            features = self._mfcc(voiced, dtype)
            return self._utterance_embedding(features, dtype), tf.shape(features)[0]

        def no_speech():
            return tf.zeros([EMBEDDING_SIZE], tf.float32), tf.constant(0, tf.int32)

        embedding, num_frames = tf.cond(usable, from_speech, no_speech)
        return {"embedding": embedding, "num_frames": num_frames}

    def _utterance_embedding(self, features, dtype):
        """`Embedder.embed_mfccs([features], 'mean')[0]`: with pad `exact`, a clip under 160 frames on its own frames."""
        if self.frontend.pad != "exact":
            return self._mean_embedding(features, dtype)
        short = tf.shape(features)[0] < NUM_FRAMES
        return tf.cond(short, lambda: self._exact_embedding(features), lambda: self._mean_embedding(features, dtype))

    def _exact_embedding(self, features):
        """`Embedder._embed_short_clips_exactly`: the model once on (1, frames, 64, 1), L2-normalised.

        A real call with a free time axis (convolutions, then the mean over time), not a padded
        window: 'same' padding makes a padded window's output differ.
        """
        return l2_normalize(self.model(features[tf.newaxis, :, :, tf.newaxis], training=False)[0])

    def _mean_embedding(self, features, dtype):
        """The mean of the embeddings of the sliding windows, L2-normalised (zeros or repeat: one padded window when short)."""
        num_frames = tf.shape(features)[0]
        starts = window_starts(num_frames, self.window_hop)
        num_windows = tf.size(starts)
        offsets = tf.range(NUM_FRAMES)[tf.newaxis, :]
        if self.frontend.pad == "zeros":
            features = tf.pad(features, [[0, tf.maximum(NUM_FRAMES - num_frames, 0)], [0, 0]])  # One zero-padded window.

        def frame_indices(chunk):
            indices = chunk[:, tf.newaxis] + offsets
            # repeat: a short clip's one window cycles through its frames (np.resize); longer ones never wrap
            # (nor do exact's, which are never short here).
            return indices if self.frontend.pad == "zeros" else indices % num_frames

        def add_chunk(i, total):
            chunk = starts[i : i + self.windows_per_call]
            windows = tf.expand_dims(tf.gather(features, frame_indices(chunk)), axis=-1)
            embeddings = tf.cast(self.model(windows, training=False), dtype)
            return i + self.windows_per_call, total + tf.reduce_sum(embeddings, axis=0)

        _, total = tf.while_loop(
            lambda i, _: i < num_windows, add_chunk, (tf.constant(0), tf.zeros([EMBEDDING_SIZE], dtype)), parallel_iterations=1
        )
        return l2_normalize(tf.cast(total / tf.cast(num_windows, dtype), tf.float32))


# ----------------------------------------------------------------------------------------------
# Writing and running the artefacts.


def export_embedding_model(checkpoint_file: str | os.PathLike, output_dir: str | os.PathLike, tflite: bool = True, int8: bool = True) -> ExportedModel:
    """Write `saved_model/`, `embedding.tflite` and `embedding_int8.tflite` (unless `tflite=False`
    or `int8=False`) and `export.json` into `output_dir`.

    Any checkpoint `inference.load_embedding_model` reads works (the reference `.h5`, a run's
    `best.h5`, a `.keras` file); it raises FileNotFoundError or ValueError naming the file. The
    graph trims and pads as the checkpoint's front end says (`FrontEnd.of_checkpoint`); a
    `config.json` naming a trim or padding it does not know raises ValueError naming that file.
    Existing artefacts are never overwritten (FileExistsError). Everything is written in a
    temporary folder inside `output_dir` and renamed at the end: an interrupted export leaves
    no half-written model behind.
    """
    output = Path(output_dir)
    saved_model_dir = output / SAVED_MODEL_DIR_NAME
    tflite_file = output / TFLITE_FILE_NAME if tflite else None
    int8_file = output / INT8_TFLITE_FILE_NAME if tflite and int8 else None
    metadata_file = output / EXPORT_METADATA_FILE_NAME
    for target in (saved_model_dir, tflite_file, int8_file, metadata_file):
        if target is not None and target.exists():
            raise FileExistsError(f"{target}: already exists; remove it or choose another output folder")
    info = inspect_checkpoint(checkpoint_file)
    frontend = FrontEnd.of_checkpoint(checkpoint_file)
    try:
        check_frontend(frontend)
    except ValueError as error:
        raise ValueError(f"{Path(checkpoint_file).parent / 'config.json'}: {error}") from None
    graph = EmbeddingGraph(load_embedding_model(checkpoint_file), frontend=frontend)
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output, prefix=".export-") as scratch:
        staged = Path(scratch) / SAVED_MODEL_DIR_NAME
        signatures = {EMBED_SIGNATURE: graph.embed, FEATURES_SIGNATURE: graph.features, FLOAT32_SIGNATURE: graph.embed_float32}
        tf.saved_model.save(graph, str(staged), signatures=signatures)
        conversions = [(target, int8_weights) for target, int8_weights in ((tflite_file, False), (int8_file, True)) if target is not None]
        loaded = tf.saved_model.load(str(staged)) if conversions else None  # Loaded once for both files.
        for target, int8_weights in conversions:  # Both converted before either is moved into place.
            (Path(scratch) / target.name).write_bytes(_tflite_from_loaded(loaded, int8_weights))
        for target, _ in conversions:
            os.replace(Path(scratch) / target.name, target)
        os.replace(staged, saved_model_dir)
    write_json_atomically(metadata_file, _export_metadata(info, graph, tflite_file, int8_file))
    return ExportedModel(saved_model_dir, tflite_file, metadata_file, int8_file)


def _export_metadata(info: CheckpointInfo, graph: EmbeddingGraph, tflite_file: Path | None, int8_file: Path | None = None) -> dict:
    return {
        "checkpoint": str(Path(info.path).resolve()),
        "model_size": info.model_size,
        "saved_model": SAVED_MODEL_DIR_NAME,
        "tflite": tflite_file.name if tflite_file else None,
        "tflite_int8": int8_file.name if int8_file else None,
        "input": {"samples": "1-D float32 PCM, mono", "sample_rate": SAMPLE_RATE},
        "outputs": {"embedding": [EMBEDDING_SIZE], "num_frames": "0 when the audio has no usable speech"},
        "signatures": {EMBED_SIGNATURE: "float64 features", FLOAT32_SIGNATURE: "float32 features (the .tflite files)",
                       FEATURES_SIGNATURE: "(frames, 64) features"},
        "frontend": _frontend_metadata(graph.frontend),
        "features": {"num_fbanks": NUM_FBANKS, "nfft": NFFT, "frame_length": FRAME_LENGTH, "frame_step": FRAME_STEP,
                     "pre_emphasis": PRE_EMPHASIS},
        "windows": {"frames": NUM_FRAMES, "hop": graph.window_hop, "per_model_call": graph.windows_per_call},
        "version": VERSION,
    }


def _frontend_metadata(frontend: FrontEnd) -> dict:
    """The trim and padding, with the settings of the trim."""
    settings = {
        "reference": {"silence_percentile": SILENCE_PERCENTILE},
        "energy": {"top_db": ENERGY_TRIM_TOP_DB, "frame_length": ENERGY_FRAME_LENGTH, "hop_length": ENERGY_HOP_LENGTH},
        "none": {},
    }
    return {**asdict(frontend), **settings[frontend.trim]}


def convert_to_tflite(saved_model_dir: str | os.PathLike, int8: bool = False) -> bytes:
    """The `embed_float32` signature of an exported SavedModel as a TFLite flatbuffer, builtin ops only.

    `int8`: with dynamic-range quantisation (`tf.lite.Optimize.DEFAULT` without representative
    data): int8 weights for the convolutions and dense layers, float32 elsewhere.

    Converted from the signature's concrete function rather than `from_saved_model`: that path
    freezes the variables read inside the graph's cond and loop into constants, which
    `from_saved_model` leaves as resource variables the interpreter cannot read. The file's
    signature is `serving_default`: samples -> embedding, num_frames.
    """
    return _tflite_from_loaded(tf.saved_model.load(os.fspath(saved_model_dir)), int8)


def _tflite_from_loaded(loaded, int8: bool) -> bytes:
    """`convert_to_tflite` of a SavedModel already loaded (`tf.saved_model.load`)."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions([loaded.signatures[FLOAT32_SIGNATURE]], loaded)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def tflite_embedder(tflite_file: str | os.PathLike, num_threads: int | None = None) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """samples (1-D float32, 16 kHz) -> {'embedding': (512,), 'num_frames': ()} with the TFLite interpreter.

    The input length may change from call to call: the input tensor is resized each time.
    `num_threads`: the interpreter's threads (default: TFLite's).
    """
    interpreter = tf.lite.Interpreter(model_path=os.fspath(tflite_file), num_threads=num_threads)
    runner = interpreter.get_signature_runner(EMBED_SIGNATURE)

    def embed(samples: np.ndarray) -> dict[str, np.ndarray]:
        return runner(samples=np.ascontiguousarray(samples, dtype=np.float32))

    return embed
