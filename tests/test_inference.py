"""inference.py: checkpoints of every kind load into the embedding model; the compiled Embedder
gives `model.predict`'s embeddings, for windows, whole utterances and files, in float32 and
(within a measured cosine) in bfloat16, where the CPU has it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import h5py
import keras
import numpy as np
import pytest

from audio import AudioError, pad_mfcc, read_mfcc
from batcher import sample_from_mfcc
from conftest import cli_failure
from constants import EMBEDDING_SIZE, INFERENCE_WINDOW_HOP, NUM_FBANKS, NUM_FRAMES
from conv_models import DeepSpeakerModel, build_mtl_model, embedding_model
from inference import (
    Embedder,
    FrontEnd,
    expand_audio_paths,
    inference_model,
    inspect_checkpoint,
    l2_normalize,
    load_embedding_model,
    load_embeddings,
    save_embeddings,
    utterance_windows,
    window_starts,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
PHILIPPE = SAMPLES / "PhilippeRemy"
SPEAKER_19 = SAMPLES / "LibriSpeech" / "train-clean-100" / "19" / "198"
LONG_FILE = SPEAKER_19 / "19-198-0001.flac"  # 1080 frames: 13 windows.
SHORT_FILE = SPEAKER_19 / "19-198-0000.flac"  # 91 frames: shorter than one window.
SHIPPED_MODEL = REPO / "pretrained" / "model.h5"
TOLERANCE = 1e-5
# bfloat16 against float32, the shipped model: cosine measured 0.99997 at worst on the bundled
# samples, 0.99994 on the 440 files of test-other, VCTK and FSDD (bench/README.md).
BFLOAT16_MIN_COSINE = 0.9995


def randomize_batch_norms(model: keras.Model, seed: int) -> None:
    """Move every batch norm away from its initial identity, so loading them is really checked."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = (w.shape for w in layer.get_weights())
            layer.set_weights([rng.uniform(0.5, 1.5, gamma), rng.normal(0, 0.1, beta), rng.normal(0, 0.1, mean), rng.uniform(0.5, 1.5, variance)])


def to_keras2_weights_file(full_model_file: Path, weights_file: Path) -> None:
    """The Keras 2 `save_weights` layout (layers at the root), from a legacy full-model save.

    Keras 3 writes `*.h5` weights only through `model.save`; its `model_weights` group is exactly
    what Keras 2 `save_weights` writes at the root of the file, as the reference's files have it.
    """
    with h5py.File(full_model_file, "r") as source, h5py.File(weights_file, "w") as target:
        group = source["model_weights"]
        for name in group:
            source.copy(group[name], target, name=name)
        for key, value in group.attrs.items():
            target.attrs[key] = value


def predict(model: keras.Model, windows: np.ndarray) -> np.ndarray:
    """The plain way: `model.predict` one window at a time."""
    return np.concatenate([model.predict(window[np.newaxis], verbose=0) for window in windows])


def affine_embeddings(model: keras.Model, windows: np.ndarray) -> np.ndarray:
    """L2-normalised `affine` output of a model (the embedding a softmax model holds)."""
    trunk = keras.Model(model.inputs[0], model.get_layer("affine").output)
    return l2_normalize(keras.ops.convert_to_numpy(trunk(windows, training=False)))


@pytest.fixture(scope="module")
def features() -> dict[str, np.ndarray]:
    paths = sorted(PHILIPPE.glob("*.wav"))[:2] + sorted(SPEAKER_19.glob("*.flac"))
    return {path.name: read_mfcc(path) for path in paths}


@pytest.fixture(scope="module")
def windows(features) -> np.ndarray:
    """40 real windows (more than one batch) from the sliding windows of the samples."""
    return np.concatenate([utterance_windows(m) for m in features.values()])[:40]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> SimpleNamespace:
    """One file of each kind a user may hold, with the model that wrote it."""
    out = tmp_path_factory.mktemp("checkpoints")
    small = DeepSpeakerModel(model_size="small").m
    randomize_batch_norms(small, 0)
    small.save(out / "small.h5")  # Legacy HDF5 full model, like train.py's best.h5.
    small.save(out / "small.keras")
    full = DeepSpeakerModel().m
    randomize_batch_norms(full, 1)
    full.save(out / "full_model.h5")
    to_keras2_weights_file(out / "full_model.h5", out / "full_weights.h5")
    softmax = DeepSpeakerModel(include_softmax=True, num_speakers_softmax=4, model_size="small").m
    randomize_batch_norms(softmax, 2)
    softmax.save(out / "softmax.h5")
    softmax.save(out / "softmax.keras")
    mtl = build_mtl_model(4, model_size="small")
    randomize_batch_norms(mtl, 3)
    mtl.save(out / "mtl.h5")
    mtl.save(out / "mtl.keras")
    return SimpleNamespace(dir=out, small=small, full=full, softmax=softmax, mtl=mtl)


@pytest.fixture(scope="module")
def embedder(checkpoints) -> Embedder:
    return Embedder.from_checkpoint(checkpoints.dir / "small.h5", batch_size=16)


# The compiled embedder.


def test_embedder_equals_predict_window_by_window_and_traces_once(embedder, windows):
    windows = windows[:20]  # A batch of 16, then 4 padded to 16.
    expected = predict(embedder.model, windows)
    embeddings = embedder.embed_windows(windows)
    assert embeddings.shape == (20, EMBEDDING_SIZE) and embeddings.dtype == np.float32
    assert np.abs(embeddings - expected).max() <= TOLERANCE
    embedder.embed_windows(windows[:3])
    assert embedder.traces == 1
    assert np.abs(np.linalg.norm(embeddings, axis=1) - 1).max() < 1e-5


def test_embeddings_tell_windows_apart(embedder, windows):
    # Guards the comparisons: the random model must not map every window to one vector.
    embeddings = embedder.embed_windows(windows[:8])
    distances = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=-1)
    assert distances[~np.eye(8, dtype=bool)].min() > 100 * TOLERANCE


def test_mean_mode_is_the_normalised_mean_of_the_sliding_windows(embedder, features):
    mfcc = features[LONG_FILE.name]
    starts = list(range(0, len(mfcc) - NUM_FRAMES + 1, INFERENCE_WINDOW_HOP))
    starts.append(len(mfcc) - NUM_FRAMES)  # The last window ends at the last frame.
    by_hand = np.stack([mfcc[s : s + NUM_FRAMES, :, np.newaxis] for s in starts])
    mean = predict(embedder.model, by_hand).mean(axis=0)
    expected = mean / np.linalg.norm(mean)
    assert np.abs(embedder.embed_mfccs([mfcc])[0] - expected).max() <= TOLERANCE


def test_an_utterance_shorter_than_a_window_is_zero_padded(embedder, features):
    mfcc = features[SHORT_FILE.name]
    assert len(mfcc) < NUM_FRAMES
    expected = predict(embedder.model, pad_mfcc(mfcc, NUM_FRAMES)[np.newaxis, ..., np.newaxis])[0]
    for mode in ("mean", "random"):
        assert np.abs(embedder.embed_mfccs([mfcc], mode)[0] - expected).max() <= TOLERANCE


@pytest.mark.parametrize("pad", ["repeat", "exact"])
def test_a_short_utterance_is_repeat_padded_or_embedded_from_its_own_frames_as_the_front_end_says(checkpoints, features, pad):
    mfcc, long = features[SHORT_FILE.name], features[LONG_FILE.name]
    embedder = Embedder(checkpoints.small, batch_size=16, frontend=FrontEnd("reference", pad))
    window = pad_mfcc(mfcc, NUM_FRAMES, "repeat") if pad == "repeat" else mfcc
    expected = predict(embedder.model, window[np.newaxis, ..., np.newaxis])[0]
    got = embedder.embed_mfccs([long, mfcc, long])
    assert np.abs(got[1] - expected).max() <= TOLERANCE
    np.testing.assert_allclose(got[[0, 2]], Embedder(checkpoints.small, batch_size=16).embed_mfccs([long, long]), atol=TOLERANCE)


def test_the_front_end_comes_from_the_config_beside_the_checkpoint(tmp_path):
    assert FrontEnd.of_checkpoint(tmp_path / "model.h5") == FrontEnd("reference", "zeros")
    (tmp_path / "config.json").write_text('{"trim": "energy", "pad": "repeat"}')
    assert FrontEnd.of_checkpoint(tmp_path / "model.h5") == FrontEnd("energy", "repeat")
    (tmp_path / "config.json").write_text('{"trim": "energy", "pad": "repeat", "embedding_pad": "exact"}')
    assert FrontEnd.of_checkpoint(tmp_path / "model.h5") == FrontEnd("energy", "exact")


def test_batching_across_files_equals_embedding_each_file_alone(embedder, features):
    mfccs = list(features.values())
    together = embedder.embed_mfccs(mfccs)
    alone = np.stack([embedder.embed_mfccs([m])[0] for m in mfccs])
    assert together.shape == (len(mfccs), EMBEDDING_SIZE)
    assert np.abs(together - alone).max() <= TOLERANCE


def test_random_mode_embeds_the_reference_random_window(embedder, features):
    mfccs = list(features.values())
    expected_windows = np.stack([sample_from_mfcc(m, NUM_FRAMES, np.random.default_rng(7)) for m in mfccs[:1]])
    expected = predict(embedder.model, expected_windows)
    assert np.abs(embedder.embed_mfccs(mfccs[:1], "random", np.random.default_rng(7)) - expected).max() <= TOLERANCE
    first = embedder.embed_mfccs(mfccs, "random", np.random.default_rng(3))
    assert np.array_equal(first, embedder.embed_mfccs(mfccs, "random", np.random.default_rng(3)))


def test_embed_files_reading_two_files_ahead_equals_embedding_the_features(embedder, features):
    paths = sorted(SPEAKER_19.glob("*.flac"))
    expected = embedder.embed_mfccs([features[p.name] for p in paths])
    assert np.abs(embedder.embed_files(paths, files_per_chunk=2) - expected).max() <= TOLERANCE


def test_a_bad_file_read_ahead_among_good_ones_raises_naming_it(embedder, tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF, but not really a wave file")
    paths = sorted(SPEAKER_19.glob("*.flac"))
    with pytest.raises(AudioError, match="corrupt.wav"):
        embedder.embed_files([*paths[:3], corrupt, *paths[3:]], files_per_chunk=2)


# Precision: the folded inference model, bfloat16, and when 'auto' picks it.


def test_the_folded_float32_model_has_no_batch_norms_and_gives_the_keras_models_embeddings(checkpoints, windows):
    folded = inference_model(checkpoints.small, "float32")
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    expected = predict(checkpoints.small, windows[:8])
    assert np.abs(keras.ops.convert_to_numpy(folded(windows[:8], training=False)) - expected).max() <= TOLERANCE
    assert np.abs(Embedder(checkpoints.small, 4, precision="float32").embed_windows(windows[:8]) - expected).max() <= TOLERANCE


def test_a_bfloat16_embedder_computes_in_bfloat16_and_returns_float32_unit_vectors(checkpoints, windows):
    embedder = Embedder(checkpoints.small, 16, precision="bfloat16")
    assert embedder.precision == "bfloat16"
    assert {layer.compute_dtype for layer in embedder.model.layers if isinstance(layer, keras.layers.Conv2D)} == {"bfloat16"}
    assert embedder.model.get_layer("ln").compute_dtype == "float32"
    embeddings = embedder.embed_windows(windows)
    assert embeddings.dtype == np.float32 and np.abs(np.linalg.norm(embeddings, axis=1) - 1).max() < 1e-5
    assert np.sum(embeddings * predict(checkpoints.small, windows), axis=1).min() > BFLOAT16_MIN_COSINE


@pytest.fixture(scope="module")
def shipped_embeddings() -> dict[str, np.ndarray]:
    """The bundled samples embedded by the shipped model in float32 and in bfloat16."""
    files = expand_audio_paths([SAMPLES])
    return {precision: Embedder.from_checkpoint(SHIPPED_MODEL, precision=precision).embed_files(files) for precision in ("float32", "bfloat16")}


def test_bfloat16_embeddings_of_the_shipped_model_are_within_cosine_0_9995_of_float32(shipped_embeddings):
    float32, bfloat16 = shipped_embeddings["float32"], shipped_embeddings["bfloat16"]
    assert bfloat16.dtype == np.float32 and np.abs(np.linalg.norm(bfloat16, axis=1) - 1).max() < 1e-5
    assert np.sum(float32 * bfloat16, axis=1).min() > BFLOAT16_MIN_COSINE


def test_from_checkpoint_is_float32_unless_told_otherwise(checkpoints):
    assert Embedder.from_checkpoint(checkpoints.dir / "small.h5").precision == "float32"
    assert Embedder.from_checkpoint(checkpoints.dir / "small.h5", precision="bfloat16").precision == "bfloat16"


def test_embed_with_precision_bfloat16_writes_it_beside_embeddings_close_to_float32s(shipped_embeddings, tmp_path, invoke_cli):
    files = expand_audio_paths([SAMPLES])
    result = invoke_cli("embed", SAMPLES, "--precision", "bfloat16", "--output", tmp_path / "e.npz")
    assert result.exit_code == 0, cli_failure(result)
    with np.load(tmp_path / "e.npz") as data:
        assert str(data["precision"]) == "bfloat16" and [str(p) for p in data["paths"]] == [str(p) for p in files]
        assert np.sum(data["embeddings"] * shipped_embeddings["float32"], axis=1).min() > BFLOAT16_MIN_COSINE


def test_window_starts_cover_every_frame():
    assert window_starts(100).tolist() == [0]
    assert window_starts(NUM_FRAMES).tolist() == [0]
    assert window_starts(NUM_FRAMES + 80, hop=80).tolist() == [0, 80]
    assert window_starts(NUM_FRAMES + 90, hop=80).tolist() == [0, 80, 90]
    starts = window_starts(1080, hop=80)
    assert starts[-1] + NUM_FRAMES == 1080 and np.all(np.diff(starts) <= 80)


def test_bad_input_is_refused_with_the_problem(embedder, tmp_path):
    with pytest.raises(ValueError, match=r"shape \(n, 160, 64, 1\)"):
        embedder.embed_windows(np.zeros((2, NUM_FRAMES, NUM_FBANKS)))
    with pytest.raises(ValueError, match="mode"):
        embedder.embed_mfccs([np.zeros((200, NUM_FBANKS), np.float32)], mode="median")
    silent = tmp_path / "silent.wav"
    import soundfile

    soundfile.write(silent, np.zeros(16_000, np.float32), 16_000)
    with pytest.raises(AudioError, match="silent.wav.*silent"):
        embedder.embed_files([silent])
    assert embedder.embed_windows(np.zeros((0, NUM_FRAMES, NUM_FBANKS, 1))).shape == (0, EMBEDDING_SIZE)


# Checkpoints of every kind.


@pytest.mark.parametrize("file_name", ["full_weights.h5", "full_model.h5"])
def test_reference_layout_full_size_checkpoint_is_detected_and_loaded(checkpoints, windows, file_name):
    path = checkpoints.dir / file_name
    if file_name == "full_weights.h5":
        with h5py.File(path, "r") as f:
            assert "layer_names" in f.attrs and "conv64-s" in f  # Keras 2 save_weights layout.
    assert inspect_checkpoint(path).model_size == "full"
    model = load_embedding_model(path)
    assert model.get_layer("conv512-s").kernel.shape[-1] == 512
    expected = keras.ops.convert_to_numpy(checkpoints.full(windows[:2], training=False))
    assert np.abs(keras.ops.convert_to_numpy(model(windows[:2], training=False)) - expected).max() <= TOLERANCE


@pytest.mark.parametrize("file_name", ["small.h5", "small.keras"])
def test_small_checkpoint_is_detected_and_gives_its_model_embeddings(checkpoints, windows, file_name):
    path = checkpoints.dir / file_name
    assert inspect_checkpoint(path).model_size == "small"
    model = load_embedding_model(path)
    expected = keras.ops.convert_to_numpy(checkpoints.small(windows[:4], training=False))
    assert np.abs(Embedder(model, 4).embed_windows(windows[:4]) - expected).max() <= TOLERANCE


@pytest.mark.parametrize("file_name", ["softmax.h5", "softmax.keras"])
def test_softmax_run_checkpoint_gives_its_normalised_affine_output(checkpoints, windows, file_name):
    model = load_embedding_model(checkpoints.dir / file_name)
    assert "softmax" not in [layer.name for layer in model.layers]
    expected = affine_embeddings(checkpoints.softmax, windows[:4])
    assert np.abs(Embedder(model, 4).embed_windows(windows[:4]) - expected).max() <= TOLERANCE


@pytest.mark.parametrize("file_name", ["mtl.h5", "mtl.keras"])
def test_hive_mtl_checkpoint_gives_its_unified_embedding(checkpoints, windows, file_name):
    model = load_embedding_model(checkpoints.dir / file_name)
    assert not {"shared", "speaker_pred", "gender_pred"} & {layer.name for layer in model.layers}
    expected = keras.ops.convert_to_numpy(embedding_model(checkpoints.mtl)(windows[:4], training=False))
    assert np.abs(Embedder(model, 4).embed_windows(windows[:4]) - expected).max() <= TOLERANCE


def test_files_that_are_not_checkpoints_are_refused_naming_the_file(tmp_path, checkpoints):
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        load_embedding_model(tmp_path / "missing.h5")
    text = tmp_path / "notes.h5"
    text.write_text("not a model")
    with pytest.raises(ValueError, match="notes.h5: not an HDF5 file"):
        load_embedding_model(text)
    broken = tmp_path / "broken.keras"
    broken.write_text("not a zip")
    with pytest.raises(ValueError, match="broken.keras: not a Keras 3 model file"):
        load_embedding_model(broken)
    unrelated = tmp_path / "unrelated.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="dense")]).save(unrelated)
    with pytest.raises(ValueError, match="unrelated.h5: no layer named 'affine'"):
        load_embedding_model(unrelated)
    with pytest.raises(ValueError, match=r"latest.weights.h5: a Keras 3 weights file"):
        (tmp_path / "latest.weights.h5").write_bytes(b"")
        load_embedding_model(tmp_path / "latest.weights.h5")
    with pytest.raises(ValueError, match=r"PhilippeRemy_001.wav: not a checkpoint"):
        load_embedding_model(PHILIPPE / "PhilippeRemy_001.wav")


# Audio paths and embedding files.


def test_expand_audio_paths_searches_folders_sorts_and_drops_repeats():
    paths = expand_audio_paths([SPEAKER_19, PHILIPPE / "PhilippeRemy_002.wav", PHILIPPE, SPEAKER_19 / "19-198-0002.flac"])
    assert len(paths) == len(set(paths)) == 5 + 4
    assert paths == sorted(paths, key=lambda p: str(p))
    assert all(p.suffix in (".wav", ".flac") for p in paths)


def test_expand_audio_paths_names_what_is_missing_or_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.wav: no such file"):
        expand_audio_paths([PHILIPPE, tmp_path / "absent.wav"])
    with pytest.raises(ValueError, match=f"{tmp_path.name}: no audio files \\(.flac, .wav, .mp3, .ogg, .m4a, .aac, .opus, .webm\\)"):
        expand_audio_paths([tmp_path])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(AudioError, match="notes.txt: not an audio file"):
        expand_audio_paths([tmp_path / "notes.txt"])


def test_embeddings_file_round_trips(tmp_path):
    embeddings = l2_normalize(np.random.default_rng(0).standard_normal((3, EMBEDDING_SIZE)))
    path = save_embeddings(tmp_path / "out" / "e.npz", embeddings, ["a.wav", "b.wav", "c.flac"], window="mean")
    loaded, paths = load_embeddings(path)
    assert np.array_equal(loaded, embeddings) and paths == ["a.wav", "b.wav", "c.flac"]
    assert [p.name for p in path.parent.iterdir()] == ["e.npz"]  # No temporary file left behind.
