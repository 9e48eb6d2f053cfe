"""Embeddings of audio files: one path shared by `embed`, `verify`, `enroll`, `identify` and evaluation.

    embedder = Embedder.from_checkpoint("ResCNN_triplet_training_checkpoint_265.h5")
    embeddings = embedder.embed_files(["a.wav", "b.flac"])  # (2, 512), unit vectors
    score = float(embeddings[0] @ embeddings[1])           # cosine similarity

`load_embedding_model` turns any checkpoint of this project or of the reference into the
embedding model (input (batch, frames, 64, 1) -> 512-d `ln`). `Embedder` runs it through one
compiled function on batches of exactly `batch_size` windows of 160 frames: the last batch is
zero-padded, so the function is traced once and every later call reuses it. Whole utterances
('mean' mode) are cut into overlapping windows; the windows of all utterances go through the
model together and are averaged per utterance.

Keras is imported only where a model is needed, so the command line can check files,
checkpoints and profiles (and fail with one clear line) before TensorFlow or JAX starts.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from audio import AudioError, natural_key, pad_mfcc, read_mfcc, save_npz_atomically
from constants import (
    AUDIO_EXTENSIONS,
    EMBEDDING_SIZE,
    INFERENCE_BATCH_SIZE,
    INFERENCE_FILES_PER_CHUNK,
    INFERENCE_WINDOW_HOP,
    L2_NORMALIZE_EPSILON,
    MODEL_CARD_FILE_NAME,
    MODEL_FILTERS,
    NUM_FBANKS,
    NUM_FRAMES,
    PRETRAINED_CHECKPOINT_NAME,
    PRETRAINED_DIR_NAME,
    VERIFY_THRESHOLD,
)

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
    audio files, AudioError for a file that is not FLAC, WAV, MP3 or OGG.
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
    """Features of each file: a feature-cache entry (`.npy`) as cached, audio by `audio.read_mfcc`
    with the front end's trim.

    A bad audio file raises AudioError (or FileNotFoundError) naming it.
    """
    return [np.load(path) if str(path).endswith(".npy") else read_mfcc(path, trim_mode=frontend.trim) for path in paths]


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
    """Rows divided by their norm, with the embedding layer's epsilon (an all-zero row stays zero)."""
    x = np.asarray(x, dtype=dtype)
    return x / np.sqrt(np.maximum(np.sum(np.square(x), axis=-1, keepdims=True), L2_NORMALIZE_EPSILON))


def segment_means(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Means of consecutive row groups of `values`, group i holding `counts[i]` (>= 1) rows."""
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.add.reduceat(values.astype(np.float64), offsets, axis=0) / counts[:, np.newaxis]


# ----------------------------------------------------------------------------------------------
# Checkpoints.


def pretrained_checkpoint() -> Path:
    """The model shipped in this repository (`pretrained/model.h5`), used when no checkpoint is given."""
    path = Path(__file__).resolve().parent / PRETRAINED_DIR_NAME / PRETRAINED_CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the shipped model is missing from this checkout; pass --checkpoint_file")
    return path


def model_card(checkpoint_file: str | os.PathLike) -> dict | None:
    """The `model_card.json` beside a checkpoint (its figures and EER threshold), or None."""
    path = Path(checkpoint_file).parent / MODEL_CARD_FILE_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise ValueError(f"{path}: not valid JSON; it should be the model card of {checkpoint_file}") from None


def verification_threshold(checkpoint_file: str | os.PathLike) -> float:
    """The EER threshold of the checkpoint's model card, else the untuned VERIFY_THRESHOLD."""
    card = model_card(checkpoint_file)
    return float(card["eer_threshold"]) if card and "eer_threshold" in card else VERIFY_THRESHOLD


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


# ----------------------------------------------------------------------------------------------
# The compiled embedder.


class Embedder:
    """Embeds windows, features or files with one compiled function on fixed-shape batches.

    The function takes exactly `batch_size` windows of (160, 64, 1): `tf.function` on
    TensorFlow (XLA off by default: on CPU it was slower), `jax.jit` over the model's stateless
    call on JAX, `predict_on_batch` on other backends. The last batch of a call is zero-padded,
    so the function is traced once (`traces` counts it) and each call costs only the model.
    Variables are read at every call, so an Embedder follows a model that is still training.
    `jit_compile` applies to TensorFlow only (JAX always compiles with XLA). `frontend` says how
    files are trimmed and short clips padded; `from_checkpoint` reads it beside the checkpoint.
    """

    def __init__(self, model: keras.Model, batch_size: int = INFERENCE_BATCH_SIZE, jit_compile: bool = False, frontend: FrontEnd = REFERENCE_FRONTEND) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        self.frontend = frontend
        self.model = model
        self.batch_size = batch_size
        self.jit_compile = jit_compile
        self.traces = 0
        self._run = self._compile()
        self._run_exact: Callable[[np.ndarray], np.ndarray] | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint_file: str | os.PathLike, batch_size: int = INFERENCE_BATCH_SIZE, jit_compile: bool = False) -> Embedder:
        return cls(load_embedding_model(checkpoint_file), batch_size, jit_compile, FrontEnd.of_checkpoint(checkpoint_file))

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

    def _embed_batches(self, batches: Iterable[np.ndarray], total: int) -> np.ndarray:
        """Run batches of at most `batch_size` windows; returns (total, 512) float32."""
        out = np.empty((total, EMBEDDING_SIZE), dtype=np.float32)
        done = 0
        for batch in batches:
            rows = len(batch)
            padded = np.zeros((self.batch_size, NUM_FRAMES, NUM_FBANKS, 1), dtype=np.float32)
            padded[:rows] = batch
            out[done : done + rows] = self._run(padded)[:rows]
            done += rows
        assert done == total, (done, total)
        return out

    def embed_windows(self, windows: np.ndarray) -> np.ndarray:
        """(n, 160, 64, 1) windows -> (n, 512) float32 embeddings, as `model.predict` gives them."""
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim != 4 or windows.shape[1:] != (NUM_FRAMES, NUM_FBANKS, 1):
            raise ValueError(f"windows must have shape (n, {NUM_FRAMES}, {NUM_FBANKS}, 1); got {windows.shape}")
        chunks = (windows[i : i + self.batch_size] for i in range(0, len(windows), self.batch_size))
        return self._embed_batches(chunks, len(windows))

    def embed_mfccs(self, mfccs: Sequence[np.ndarray], mode: str = "mean", rng: np.random.Generator | None = None) -> np.ndarray:
        """One embedding per utterance of (frames, 64) features: (n, 512) float32 unit vectors.

        'mean': the whole utterance; the mean of its sliding windows (`window_starts`), L2-normalised.
        'random': the reference's single random 160-frame window (`sample_from_mfcc`).
        """
        if mode not in WINDOW_MODES:
            raise ValueError(f"mode must be one of {', '.join(WINDOW_MODES)}; got {mode!r}")
        for i, mfcc in enumerate(mfccs):
            if np.ndim(mfcc) != 2 or np.shape(mfcc)[1] != NUM_FBANKS or len(mfcc) == 0:
                raise ValueError(f"features {i} must have shape (frames >= 1, {NUM_FBANKS}); got {np.shape(mfcc)}")
        if not len(mfccs):
            return np.zeros((0, EMBEDDING_SIZE), dtype=np.float32)
        if self.frontend.pad == "exact" and any(len(m) < NUM_FRAMES for m in mfccs):
            return self._embed_short_clips_exactly(mfccs, mode, rng)
        if mode == "random":
            from batcher import sample_from_mfcc

            rng = rng or np.random.default_rng()
            return self.embed_windows(np.stack([sample_from_mfcc(np.asarray(m, np.float32), NUM_FRAMES, rng, self.frontend.pad) for m in mfccs]))
        starts = [window_starts(len(mfcc)) for mfcc in mfccs]
        counts = np.array([len(s) for s in starts])
        owners = np.repeat(np.arange(len(mfccs)), counts)
        flat_starts = np.concatenate(starts)
        window_embeddings = self._embed_batches(self._window_batches(mfccs, owners, flat_starts), len(owners))
        return l2_normalize(segment_means(window_embeddings, counts))

    def _embed_short_clips_exactly(self, mfccs: Sequence[np.ndarray], mode: str, rng: np.random.Generator | None) -> np.ndarray:
        """`pad='exact'`: clips shorter than a window go through the model on their own frames, one at a time."""
        short = [i for i, m in enumerate(mfccs) if len(m) < NUM_FRAMES]
        long = [i for i, m in enumerate(mfccs) if len(m) >= NUM_FRAMES]
        out = np.empty((len(mfccs), EMBEDDING_SIZE), dtype=np.float32)
        if long:
            out[long] = self.embed_mfccs([mfccs[i] for i in long], mode, rng)
        run = self._run_exact or self._compile_exact()
        for i in short:
            out[i] = l2_normalize(run(np.asarray(mfccs[i], dtype=np.float32)[np.newaxis, :, :, np.newaxis]))[0]
        return out

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

    def _window_batches(self, mfccs: Sequence[np.ndarray], owners: np.ndarray, starts: np.ndarray) -> Iterator[np.ndarray]:
        """Windows of all utterances, `batch_size` at a time: never all of them in memory."""
        for i in range(0, len(owners), self.batch_size):
            yield np.stack([_window(mfccs[o], s, self.frontend.pad) for o, s in zip(owners[i : i + self.batch_size], starts[i : i + self.batch_size])])

    def embed_files(
        self,
        paths: Sequence[str | os.PathLike],
        mode: str = "mean",
        rng: np.random.Generator | None = None,
        files_per_chunk: int = INFERENCE_FILES_PER_CHUNK,
    ) -> np.ndarray:
        """One embedding per audio file or feature-cache entry (`read_features`): (n, 512) float32.

        Files are read `files_per_chunk` at a time, so a long list needs little memory; a bad
        file raises AudioError (or FileNotFoundError) naming it.
        """
        if mode not in WINDOW_MODES:
            raise ValueError(f"mode must be one of {', '.join(WINDOW_MODES)}; got {mode!r}")
        paths = list(paths)
        rng = rng or np.random.default_rng()
        parts = [self.embed_mfccs(read_features(paths[i : i + files_per_chunk], self.frontend), mode, rng) for i in range(0, len(paths), files_per_chunk)]
        return np.concatenate(parts) if parts else np.zeros((0, EMBEDDING_SIZE), dtype=np.float32)


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
