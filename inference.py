"""Embeddings of audio files: one path shared by `embed`, `verify`, `enroll`, `identify` and evaluation.

    embedder = Embedder.from_checkpoint("ResCNN_triplet_training_checkpoint_265.h5")
    embeddings = embedder.embed_files(["a.wav", "b.flac"])  # (2, 512), unit vectors
    score = float(embeddings[0] @ embeddings[1])           # cosine similarity

`load_embedding_model` turns any checkpoint of this project or of the reference into the
embedding model (input (batch, frames, 64, 1) -> 512-d `ln`). `Embedder` runs it through one
compiled function on batches of exactly `batch_size` windows of 160 frames: the last batch is
zero-padded, so the function is traced once and every later call reuses it. Whole utterances
('mean' mode) are cut into overlapping windows; the windows of all utterances go through the
model together and are averaged per utterance. `embed_files` reads the files' features in a
background thread while the model embeds those read before.

`precision` ('float32', 'bfloat16', or 'auto': bfloat16 where the CPU computes it natively,
see `resolve_precision`) runs an inference copy of the model (`inference_model`): batch norms
folded into the convolutions, weights and arithmetic in that precision; the embeddings stay
float32 unit vectors.

Keras is imported only where a model is needed, so the command line can check files,
checkpoints and profiles (and fail with one clear line) before TensorFlow or JAX starts.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from audio import AudioError, pad_mfcc, read_mfcc
from corpus import natural_key
from feature_cache import entry_features
from constants import (
    AUDIO_EXTENSIONS,
    EMBEDDING_SIZE,
    INFERENCE_BATCH_SIZE,
    INFERENCE_FILES_PER_CHUNK,
    INFERENCE_WINDOW_HOP,
    L2_NORMALIZE_EPSILON,
    MODEL_FILTERS,
    NUM_FBANKS,
    NUM_FRAMES,
    PRETRAINED_CHECKPOINT_NAME,
    PRETRAINED_DIR_NAME,
)
from fileio import save_npz_atomically
from precision import resolve_precision

if TYPE_CHECKING:
    import keras

WINDOW_MODES = ("mean", "random")
H5_SUFFIXES = (".h5", ".hdf5")
KERAS_SUFFIX = ".keras"
KERAS3_WEIGHTS_SUFFIX = ".weights.h5"
_STAGE_CONV_NAME = re.compile(r"^conv(\d+)-s$")
_EMBEDDING_LAYER_NAME = "ln"  # conv_models.EMBEDDING_LAYER_NAME, without importing Keras here.
_AFFINE_LAYER_NAME = "affine"


# ----------------------------------------------------------------------------------------------
# Audio inputs.


def expand_audio_paths(files_or_dirs: Iterable[str | os.PathLike]) -> list[Path]:
    """Audio files named by `files_or_dirs` (folders searched recursively), sorted, without repeats.

    Raises FileNotFoundError for a path that does not exist, ValueError for a folder without
    audio files, AudioError for a file whose extension is not one of AUDIO_EXTENSIONS.
    """
    found: dict[Path, Path] = {}
    for item in files_or_dirs:
        path = Path(item)
        if path.is_dir():
            inside = [p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()]
            if not inside:
                raise ValueError(f"{path}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder")
        elif path.is_file():
            if path.suffix.lower() not in AUDIO_EXTENSIONS:
                raise AudioError(path, f"not an audio file (expected one of {', '.join(AUDIO_EXTENSIONS)})")
            inside = [path]
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
        for file in inside:
            found.setdefault(file.resolve(), file)
    return sorted(found.values(), key=lambda p: natural_key(str(p)))


def audio_file(path: str | os.PathLike) -> Path:
    """One existing audio file (not a folder), or FileNotFoundError / AudioError naming `path`."""
    path = Path(path)
    if path.is_dir():
        raise AudioError(path, "a folder; expected one audio file")
    return expand_audio_paths([path])[0]


@dataclass(frozen=True)
class FrontEnd:
    """How audio becomes model input: the silence trim and the padding of short clips.

    The reference (and any checkpoint without a run configuration) trims at the 95th percentile
    and pads with zeros; a run trained otherwise records its choice in `config.json`, and
    embedding must do the same. `pad` may also be `exact` (embed a clip shorter than a window
    from its own frames), which `config.json` names as `embedding_pad` where a model was trained
    with one padding and embeds best with another (measured per corpus: see pretrained/README.md).
    """

    trim: str = "reference"
    pad: str = "zeros"

    @classmethod
    def of_checkpoint(cls, checkpoint_file: str | os.PathLike) -> FrontEnd:
        """The front end in `config.json` beside a checkpoint (a run directory, `pretrained/`), else the reference's."""
        config_path = Path(checkpoint_file).parent / "config.json"
        if not config_path.is_file():
            return cls()
        try:
            config = json.loads(config_path.read_text())
        except ValueError:
            raise ValueError(f"{config_path}: not valid JSON; it should hold the run configuration of {checkpoint_file}") from None
        return cls(config.get("trim", "reference"), config.get("embedding_pad", config.get("pad", "zeros")))


REFERENCE_FRONTEND = FrontEnd()


def read_features(paths: Sequence[str | os.PathLike], frontend: FrontEnd = REFERENCE_FRONTEND) -> list[np.ndarray]:
    """Features of each file with the front end's trim, whether it is audio (`audio.read_mfcc`) or a
    feature-cache entry (`.npy`, `feature_cache.entry_features`: as cached for the cache's own trim, else
    made again from its audio), so that a checkpoint is scored on the features it was trained on
    wherever evaluation reads the cache. The one reader of features for embedding and evaluation.

    A bad audio file, or an entry whose audio is gone, raises AudioError (or FileNotFoundError) naming it.
    """
    return [entry_features(path, frontend.trim) if str(path).endswith(".npy") else read_mfcc(path, trim_mode=frontend.trim) for path in paths]


# ----------------------------------------------------------------------------------------------
# Windows of an utterance and their mean.


def window_starts(num_frames: int, hop: int = INFERENCE_WINDOW_HOP, window: int = NUM_FRAMES) -> np.ndarray:
    """First frames of the sliding windows that cover an utterance of `num_frames` frames.

    Windows start every `hop` frames; when the last one stops short of the end, one more window
    ends exactly at the last frame, so every frame is seen. An utterance shorter than `window`
    gives one window at 0 (padded as `sample_from_mfcc` pads).
    """
    if hop < 1:
        raise ValueError(f"hop must be a positive number of frames; got {hop}")
    last = num_frames - window
    if last <= 0:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, last + 1, hop, dtype=np.int64)
    return starts if starts[-1] == last else np.append(starts, last)


def utterance_windows(mfcc: np.ndarray, hop: int = INFERENCE_WINDOW_HOP, pad: str = "zeros") -> np.ndarray:
    """All windows of `window_starts` of one utterance: (num_windows, 160, 64, 1) float32."""
    return np.stack([_window(mfcc, start, pad) for start in window_starts(len(mfcc), hop)])


def _window(mfcc: np.ndarray, start: int, pad: str = "zeros") -> np.ndarray:
    return pad_mfcc(np.asarray(mfcc[start : start + NUM_FRAMES], dtype=np.float32), NUM_FRAMES, pad)[..., np.newaxis]


def l2_normalize(x: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Rows divided by their norm, with the embedding layer's epsilon (an all-zero row stays zero).

    The NumPy twin of `triplet_loss.l2_normalize`, the one used inside models; this one serves
    arrays outside a model without starting Keras."""
    x = np.asarray(x, dtype=dtype)
    return x / np.sqrt(np.maximum(np.sum(np.square(x), axis=-1, keepdims=True), L2_NORMALIZE_EPSILON))


# ----------------------------------------------------------------------------------------------
# Checkpoints.


def pretrained_checkpoint() -> Path:
    """The model shipped in this repository (`pretrained/model.h5`), used when no checkpoint is given."""
    path = Path(__file__).resolve().parent / PRETRAINED_DIR_NAME / PRETRAINED_CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the shipped model is missing from this checkout; pass --checkpoint_file")
    return path


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint file is, read from its layer names without building a model."""

    path: Path
    format: str  # 'h5' (Keras 2 or legacy HDF5, loads by name) or 'keras' (Keras 3 model file).
    model_size: str  # Key of MODEL_FILTERS.
    layer_names: frozenset[str]

    @property
    def has_embedding_layer(self) -> bool:
        return _EMBEDDING_LAYER_NAME in self.layer_names


def inspect_checkpoint(checkpoint_file: str | os.PathLike) -> CheckpointInfo:
    """Check that a file is a checkpoint this project can embed with, and find its model size.

    Reads only names (h5py, or the config inside a .keras zip), so it is fast and Keras-free.
    Raises FileNotFoundError or ValueError naming the file.
    """
    path = Path(checkpoint_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file" + (" (it is a folder)" if path.is_dir() else ""))
    if path.name.endswith(KERAS3_WEIGHTS_SUFFIX):
        raise ValueError(
            f"{path}: a Keras 3 weights file (*{KERAS3_WEIGHTS_SUFFIX}, e.g. a run's latest-<epoch>.weights.h5) holds no layer "
            "names and loads only into the exact model that wrote it; use the run's best.h5 or a .keras file"
        )
    suffix = path.suffix.lower()
    if suffix in H5_SUFFIXES:
        names, file_format = _h5_layer_names(path), "h5"
    elif suffix == KERAS_SUFFIX:
        names, file_format = _keras_file_layer_names(path), "keras"
    else:
        raise ValueError(f"{path}: not a checkpoint (expected a Keras 2 / legacy HDF5 {' or '.join(H5_SUFFIXES)} file or a {KERAS_SUFFIX} model)")
    if _AFFINE_LAYER_NAME not in names:
        raise ValueError(f"{path}: no layer named {_AFFINE_LAYER_NAME!r}; not a Deep Speaker checkpoint with the reference layer names")
    return CheckpointInfo(path, file_format, model_size_from_layer_names(names, path), frozenset(names))


def model_size_from_layer_names(names: Iterable[str], source: str | os.PathLike = "<model>") -> str:
    """'full' for stage convs conv64-s ... conv512-s, 'small' for conv16-s ... conv128-s (MODEL_FILTERS)."""
    stage_filters = {int(match[1]) for match in map(_STAGE_CONV_NAME.match, names) if match}
    if not stage_filters:
        raise ValueError(f"{source}: no stage convolutions named conv<filters>-s; not a Deep Speaker checkpoint with the reference layer names")
    for size, filters in MODEL_FILTERS.items():
        if stage_filters == set(filters):
            return size
    known = ", ".join(f"{size}: {filters}" for size, filters in MODEL_FILTERS.items())
    raise ValueError(f"{source}: stage convolutions with {sorted(stage_filters)} filters match no model size ({known})")


def _h5_layer_names(path: Path) -> set[str]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            # Keras 2 save_weights puts layers at the root; a full-model save under model_weights.
            group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
            return set(group.keys())
    except OSError:
        raise ValueError(f"{path}: not an HDF5 file (corrupt, truncated or another format); not a checkpoint") from None


def _keras_file_layer_names(path: Path) -> set[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        raise ValueError(f"{path}: not a Keras 3 model file (no zip with config.json inside); not a checkpoint") from None
    names: set[str] = set()
    _collect_layer_names(config, names)
    return names


def _collect_layer_names(config, names: set[str]) -> None:
    """Names of every layer in a serialised Keras model config, nested models included."""
    if isinstance(config, dict):
        if isinstance(config.get("config"), dict) and isinstance(config["config"].get("layers"), list):
            for layer in config["config"]["layers"]:
                if isinstance(layer, dict) and isinstance(layer.get("config"), dict) and "name" in layer["config"]:
                    names.add(layer["config"]["name"])
                _collect_layer_names(layer, names)
    elif isinstance(config, list):
        for item in config:
            _collect_layer_names(item, names)


def load_embedding_model(checkpoint_file: str | os.PathLike) -> keras.Model:
    """The embedding model held in any checkpoint: input (None, None, 64, 1) -> 512-d unit vector `ln`.

    - `.h5` / `.hdf5` (Keras 2 weights-only or full-model files such as the published
      `ResCNN_triplet_training_checkpoint_265.h5`, and this project's `best.h5` of a softmax,
      triplet or Hive-MTL run): loaded by layer name into `DeepSpeakerModel` of the size its
      layer names give; a softmax or task head in the file is skipped.
    - `.keras`: loaded whole; the embedding sub-model up to `ln` is taken, or for a softmax
      model (no `ln`) the trunk weights are copied by name into a fresh embedding model.

    Raises FileNotFoundError or ValueError naming the file.
    """
    info = inspect_checkpoint(checkpoint_file)
    from conv_models import DeepSpeakerModel, load_weights_by_name

    if info.format == "h5":
        model = DeepSpeakerModel(model_size=info.model_size).m
        try:
            load_weights_by_name(model, info.path)
        except ValueError as error:  # E.g. a layer whose weights have other shapes.
            raise ValueError(error if str(info.path) in str(error) else f"{info.path}: {error}") from None
        return model
    return _embedding_model_from_keras_file(info)


def _embedding_model_from_keras_file(info: CheckpointInfo) -> keras.Model:
    import keras

    from conv_models import DeepSpeakerModel, embedding_model  # Also registers the custom layers.

    try:
        loaded = keras.models.load_model(info.path, compile=False)
    except Exception as error:  # noqa: BLE001 - Keras raises many types for unreadable files.
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{info.path}: cannot be loaded as a Keras model ({first_line})") from None
    if info.has_embedding_layer:
        return embedding_model(loaded)
    model = DeepSpeakerModel(model_size=info.model_size).m
    for layer in model.layers:
        if layer.weights:
            try:
                layer.set_weights(loaded.get_layer(layer.name).get_weights())
            except ValueError as error:  # No such layer, or weights of other shapes.
                raise ValueError(f"{info.path}: layer {layer.name!r} cannot be loaded ({error})") from None
    return model


def inference_model(model: keras.Model, precision: str = "float32") -> keras.Model:
    """A copy of an embedding model for inference only, in `precision` ('float32' or 'bfloat16').

    Same embeddings (within float32 rounding, about 1e-7, in float32), fewer operations:
    - each batch norm is folded into the convolution before it: in inference it is the
      per-channel affine map x * g + (beta - mean * g), g = gamma / sqrt(variance + epsilon),
      so the convolution gets kernel * g and bias * g + beta - mean * g, and the batch norm goes;
    - with the batch norms gone, TensorFlow's oneDNN fuses each convolution with the relu of the
      clipped ReLU after it (`ClippedReLU` writes min(max(x, 0), 20) as min(relu(x), 20));
    - weights and arithmetic in `precision`; the L2 normalisation `ln` stays float32, so
      embeddings are float32 unit vectors whatever the precision.
    The weights are copied once: later changes to `model` (training) are not seen.
    """
    import keras

    from conv_models import L2Normalize

    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be float32 or bfloat16 (resolve 'auto' first); got {precision!r}")
    folded = _folded_convolutions(model)

    def clone(layer):
        config = layer.get_config()
        if "dtype" in config and not isinstance(layer, L2Normalize):  # `ln` computes in float32.
            config["dtype"] = precision
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        if isinstance(layer, keras.layers.BatchNormalization):
            return args[0]  # Folded into the convolution before it.
        return layer(*args, **kwargs)

    copy = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in copy.layers:
        if layer.name in folded:
            layer.set_weights(folded[layer.name])
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return copy


def _folded_convolutions(model: keras.Model) -> dict[str, list[np.ndarray]]:
    """Kernel and bias of each convolution with its batch norm folded in, by convolution name.

    Every batch norm must follow a convolution with a bias whose output feeds nothing else, as
    in every model `conv_models` builds; else ValueError.
    """
    import keras

    folded = {}
    for norm in (layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)):
        conv = next((layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and layer.output is norm.input), None)
        if conv is None or not conv.use_bias or norm.axis not in (-1, 3) or not (norm.scale and norm.center):
            raise ValueError(f"{model.name}: batch norm {norm.name!r} does not follow a convolution with a bias; cannot fold it")
        if sum(conv.output is other.input for other in model.layers) != 1:
            raise ValueError(f"{model.name}: the output of {conv.name!r} feeds more than its batch norm; cannot fold it")
        kernel, bias = (np.asarray(w, np.float64) for w in conv.get_weights())
        gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in norm.get_weights())
        scale = gamma / np.sqrt(variance + norm.epsilon)
        folded[conv.name] = [(kernel * scale).astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)]
    return folded


# ----------------------------------------------------------------------------------------------
# The compiled embedder.


class Embedder:
    """Embeds windows, features or files with one compiled function on fixed-shape batches.

    The function takes exactly `batch_size` windows of (160, 64, 1): `tf.function` on
    TensorFlow (XLA off by default: on CPU it was slower), `jax.jit` over the model's stateless
    call on JAX, `predict_on_batch` on other backends. The last batch of a call is zero-padded,
    so the function is traced once (`traces` counts it) and each call costs only the model.
    `jit_compile` applies to TensorFlow only (JAX always compiles with XLA). `frontend` says how
    files are trimmed and short clips padded; `from_checkpoint` reads it beside the checkpoint.

    `precision` None (the default) runs `model` itself, reading its variables at every call, so
    an Embedder follows a model that is still training. 'float32', 'bfloat16' or 'auto'
    (`resolve_precision`: bfloat16 on CPUs with AVX512-BF16 or AMX, else float32) run
    `inference_model(model, precision)`, a copy with the batch norms folded in; `precision` is
    then the one resolved. On the 2-core AMX CPU of bench/README.md, bfloat16 embeds the full
    model's windows about 3x as fast as float32 (the small model's 1.7x), at a cosine of 0.9999
    or more to the float32 embeddings.
    """

    def __init__(self, model: keras.Model, batch_size: int = INFERENCE_BATCH_SIZE, jit_compile: bool = False, frontend: FrontEnd = REFERENCE_FRONTEND,
                 precision: str | None = None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        self.frontend = frontend
        self.precision = None if precision is None else resolve_precision(precision)
        self.model = model if self.precision is None else inference_model(model, self.precision)
        self.batch_size = batch_size
        self.jit_compile = jit_compile
        self.traces = 0
        self._run = self._compile()
        self._run_exact: Callable[[np.ndarray], np.ndarray] | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint_file: str | os.PathLike, batch_size: int = INFERENCE_BATCH_SIZE, jit_compile: bool = False,
                        precision: str = "float32") -> Embedder:
        """The checkpoint's model with its front end, in `precision` (see `resolve_precision`)."""
        return cls(load_embedding_model(checkpoint_file), batch_size, jit_compile, FrontEnd.of_checkpoint(checkpoint_file), precision)

    def _compile(self) -> Callable[[np.ndarray], np.ndarray]:
        import keras

        model = self.model
        backend = keras.backend.backend()

        def infer(*args):
            self.traces += 1  # Runs only while tracing.
            if backend == "jax":
                trainable, non_trainable, windows = args
                return model.stateless_call(trainable, non_trainable, windows, training=False)[0]
            return model(args[0], training=False)

        if backend == "tensorflow":
            import tensorflow as tf

            spec = tf.TensorSpec((self.batch_size, NUM_FRAMES, NUM_FBANKS, 1), tf.float32)
            compiled = tf.function(infer, input_signature=[spec], jit_compile=self.jit_compile, autograph=False)
            return lambda batch: compiled(batch).numpy()
        if backend == "jax":
            import jax

            compiled = jax.jit(infer)
            return lambda batch: np.asarray(
                compiled([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables], batch)
            )
        return lambda batch: keras.ops.convert_to_numpy(model.predict_on_batch(batch))

    def _run_batch(self, windows: np.ndarray) -> np.ndarray:
        """At most `batch_size` windows through the compiled function (zero-padded to `batch_size`): (rows, 512) float32."""
        rows = len(windows)
        padded = np.zeros((self.batch_size, NUM_FRAMES, NUM_FBANKS, 1), dtype=np.float32)
        padded[:rows] = windows
        return self._run(padded)[:rows]

    def embed_windows(self, windows: np.ndarray) -> np.ndarray:
        """(n, 160, 64, 1) windows -> (n, 512) float32 embeddings, as `model.predict` gives them."""
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim != 4 or windows.shape[1:] != (NUM_FRAMES, NUM_FBANKS, 1):
            raise ValueError(f"windows must have shape (n, {NUM_FRAMES}, {NUM_FBANKS}, 1); got {windows.shape}")
        out = np.empty((len(windows), EMBEDDING_SIZE), dtype=np.float32)
        for i in range(0, len(windows), self.batch_size):
            out[i : i + self.batch_size] = self._run_batch(windows[i : i + self.batch_size])
        return out

    def embed_mfccs(self, mfccs: Sequence[np.ndarray], mode: str = "mean", rng: np.random.Generator | None = None) -> np.ndarray:
        """One embedding per utterance of (frames, 64) features: (n, 512) float32 unit vectors.

        'mean': the whole utterance; the mean of its sliding windows (`window_starts`), L2-normalised.
        'random': the reference's single random 160-frame window (`sample_from_mfcc`).
        With the front end's pad 'exact', a clip shorter than a window goes through the model
        alone, on its own frames, L2-normalised.
        """
        if mode not in WINDOW_MODES:
            raise ValueError(f"mode must be one of {', '.join(WINDOW_MODES)}; got {mode!r}")
        for i, mfcc in enumerate(mfccs):
            if np.ndim(mfcc) != 2 or np.shape(mfcc)[1] != NUM_FBANKS or len(mfcc) == 0:
                raise ValueError(f"features {i} must have shape (frames >= 1, {NUM_FBANKS}); got {np.shape(mfcc)}")
        return self._embed_utterances(mfccs, len(mfccs), mode, rng)

    def _embed_utterances(self, mfccs: Iterable[np.ndarray], count: int, mode: str, rng: np.random.Generator | None) -> np.ndarray:
        """`embed_mfccs` of `count` utterances taken one at a time from `mfccs` (which may still be being read).

        The windows of consecutive utterances share batches, so only the last batch of a call is
        padded, and each utterance's window embeddings are summed as they come back.
        """
        from batcher import sample_from_mfcc

        rng = rng or np.random.default_rng()
        out = np.zeros((count, EMBEDDING_SIZE), dtype=np.float32)
        sums = np.zeros((count, EMBEDDING_SIZE), dtype=np.float64)
        windows_per_utterance = np.zeros(count, dtype=np.int64)

        def windows() -> Iterator[tuple[int, np.ndarray]]:
            for i, mfcc in enumerate(mfccs):
                mfcc = np.asarray(mfcc, dtype=np.float32)
                if self.frontend.pad == "exact" and len(mfcc) < NUM_FRAMES:
                    out[i] = self._embed_exactly(mfcc)
                elif mode == "random":
                    yield i, sample_from_mfcc(mfcc, NUM_FRAMES, rng, self.frontend.pad)
                else:
                    yield from ((i, _window(mfcc, start, self.frontend.pad)) for start in window_starts(len(mfcc)))

        for owners, batch in _batches(windows(), self.batch_size):
            np.add.at(sums, owners, self._run_batch(batch))
            np.add.at(windows_per_utterance, owners, 1)
        windowed = windows_per_utterance > 0
        out[windowed] = l2_normalize(sums[windowed] / windows_per_utterance[windowed, np.newaxis])
        return out

    def _embed_exactly(self, mfcc: np.ndarray) -> np.ndarray:
        """One clip through the model on its own frames (any length), L2-normalised: (512,) float32."""
        run = self._run_exact or self._compile_exact()
        return l2_normalize(run(mfcc[np.newaxis, :, :, np.newaxis]))[0]

    def _compile_exact(self) -> Callable[[np.ndarray], np.ndarray]:
        """The model on one window of any length: one trace on TensorFlow (free time axis), one per length elsewhere."""
        import keras

        model = self.model
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            spec = tf.TensorSpec((1, None, NUM_FBANKS, 1), tf.float32)
            compiled = tf.function(lambda window: model(window, training=False), input_signature=[spec], autograph=False)
            self._run_exact = lambda window: compiled(window).numpy()
        else:
            self._run_exact = lambda window: keras.ops.convert_to_numpy(model.predict_on_batch(window))
        return self._run_exact

    def embed_files(
        self,
        paths: Sequence[str | os.PathLike],
        mode: str = "mean",
        rng: np.random.Generator | None = None,
        files_per_chunk: int = INFERENCE_FILES_PER_CHUNK,
    ) -> np.ndarray:
        """One embedding per audio file or feature-cache entry (`read_features`): (n, 512) float32.

        A background thread reads the files' features while the model embeds those read before
        (decoding and features overlap the model), at most `files_per_chunk` files ahead, so a
        long list needs little memory. A bad file raises AudioError (or FileNotFoundError) naming it.
        """
        if mode not in WINDOW_MODES:
            raise ValueError(f"mode must be one of {', '.join(WINDOW_MODES)}; got {mode!r}")
        if isinstance(files_per_chunk, bool) or not isinstance(files_per_chunk, int) or files_per_chunk < 1:
            raise ValueError(f"files_per_chunk must be a positive integer; got {files_per_chunk!r}")
        paths = list(paths)
        with _features_read_ahead(paths, self.frontend, files_per_chunk) as features:
            return self._embed_utterances(features, len(paths), mode, rng)


def _batches(items: Iterator[tuple[int, np.ndarray]], size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(owners, windows) of `size` (owner, window) pairs at a time; the last may be shorter."""
    while chunk := list(itertools.islice(items, size)):
        yield np.array([owner for owner, _ in chunk]), np.stack([window for _, window in chunk])


@contextmanager
def _features_read_ahead(paths: Sequence[str | os.PathLike], frontend: FrontEnd, ahead: int) -> Iterator[Iterator[np.ndarray]]:
    """The features of `paths`, in order, read by one background thread at most `ahead` files before they are taken.

    A file that cannot be read raises its error where its features are taken. Leaving the block
    cancels the reads not started.
    """
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-features")

    def features() -> Iterator[np.ndarray]:
        pending: deque[Future] = deque()
        for path in paths:
            pending.append(reader.submit(read_features, [path], frontend))
            if len(pending) > ahead:
                yield pending.popleft().result()[0]
        while pending:
            yield pending.popleft().result()[0]

    try:
        yield features()
    finally:
        reader.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------
# Embedding files on disk.


def save_embeddings(output_file: str | os.PathLike, embeddings: np.ndarray, paths: Sequence[str | os.PathLike], **metadata: str) -> Path:
    """Write an NPZ with `embeddings` (n, 512) float32 and `paths` (n,) str, plus string metadata; atomic."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.shape != (len(paths), EMBEDDING_SIZE):
        raise ValueError(f"embeddings must have shape ({len(paths)}, {EMBEDDING_SIZE}); got {embeddings.shape}")
    output = Path(output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"embeddings": embeddings, "paths": np.array([str(p) for p in paths], dtype=str)}
    arrays.update({key: np.array(str(value)) for key, value in metadata.items()})
    save_npz_atomically(output, **arrays)
    return output


def load_embeddings(embeddings_file: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """(embeddings, paths) of a file written by `save_embeddings`."""
    with np.load(embeddings_file, allow_pickle=False) as data:
        return data["embeddings"], [str(p) for p in data["paths"]]
