"""export.py: one TensorFlow graph from raw 16 kHz PCM to the whole-utterance embedding, as a
SavedModel and a TFLite file, giving the Python pipeline's features and embeddings on real audio."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import keras
import librosa
import numpy as np
import pytest
import tensorflow as tf

import audio
import export
from audio import AudioError, read_audio, read_mfcc
from constants import EMBEDDING_SIZE, ENERGY_TRIM_TOP_DB, NUM_FBANKS, NUM_FRAMES, SAMPLE_RATE, SILENCE_PERCENTILE
from conv_models import DeepSpeakerModel
from inference import Embedder, FrontEnd, load_embedding_model, window_starts

pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
PHILIPPE = sorted((SAMPLES / "PhilippeRemy").glob("*.wav"))  # 48 kHz WAV, resampled outside the graph.
LIBRI_1255 = SAMPLES / "1255-90413-0001.flac"  # 16 kHz FLAC.
SPEAKER_19 = SAMPLES / "LibriSpeech" / "train-clean-100" / "19" / "198"
LONG_FILE = SPEAKER_19 / "19-198-0001.flac"  # 1080 frames: 13 windows.
SHORT_FILE = SPEAKER_19 / "19-198-0000.flac"  # 91 frames: one zero-padded window.
REAL_FILES = [*PHILIPPE, LIBRI_1255, LONG_FILE, SHORT_FILE]
FSDD_GEORGE = REPO.parent / "shared" / "data" / "FSDD" / "george" / "george-0-0040.wav"  # 8 kHz WAV, one spoken digit.
ENERGY_FILES = [FSDD_GEORGE, LIBRI_1255, LONG_FILE, SHORT_FILE]
FEATURE_TOLERANCE = 1e-5
EMBEDDING_TOLERANCE = 1e-4
# int8 weights against the float model, cosine: measured 0.99997 at worst for this random small
# model on the files here; the shipped model: 0.9996 on the bundled samples, 0.99896 on the 440
# files of test-other, VCTK and FSDD (bench/README.md, with its EER per corpus).
INT8_MIN_COSINE = 0.999


def file_id(path: Path) -> str:
    return path.stem


def randomize_batch_norms(model: keras.Model, seed: int) -> None:
    """Batch norms away from identity, so the exported graph must carry all four of their weights."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shapes = [w.shape for w in layer.get_weights()]
            layer.set_weights([rng.uniform(0.5, 1.5, shapes[0]), rng.normal(0, 0.1, shapes[1]),
                               rng.normal(0, 0.1, shapes[2]), rng.uniform(0.5, 1.5, shapes[3])])


def write_checkpoint(path: Path, model_size: str, seed: int) -> Path:
    model = DeepSpeakerModel(model_size=model_size).m
    randomize_batch_norms(model, seed)
    model.save(path)  # Legacy HDF5, like a run's best.h5.
    return path


def run_tflite_resized(interpreter: tf.lite.Interpreter, samples: np.ndarray) -> dict[str, np.ndarray]:
    """The plain interpreter API an app uses: resize the input to this utterance, allocate, invoke."""
    (input_detail,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(input_detail["index"], [len(samples)], strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_detail["index"], samples.astype(np.float32))
    interpreter.invoke()
    outputs = interpreter.get_signature_runner(export.EMBED_SIGNATURE).get_output_details()
    return {name: interpreter.get_tensor(detail["index"]) for name, detail in outputs.items()}


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    """A small model with random weights, saved once."""
    return write_checkpoint(tmp_path_factory.mktemp("checkpoint") / "small.h5", "small", seed=0)


@pytest.fixture(scope="module")
def exported(small_checkpoint, tmp_path_factory) -> SimpleNamespace:
    """The small model exported once, with the int8 TFLite file: its checkpoint, artefacts and both runtimes."""
    return exported_artefacts(small_checkpoint, tmp_path_factory.mktemp("export") / "exported", int8=True)


def exported_artefacts(checkpoint: Path, output_dir: Path, int8: bool = False) -> SimpleNamespace:
    """`checkpoint` exported to `output_dir`: the checkpoint, artefacts, both runtimes and its Embedder."""
    paths = export.export_embedding_model(checkpoint, output_dir, int8=int8)
    return SimpleNamespace(
        checkpoint=checkpoint,
        paths=paths,
        saved_model=tf.saved_model.load(str(paths.saved_model)),
        tflite=tf.lite.Interpreter(model_path=str(paths.tflite)),
        embedder=Embedder.from_checkpoint(checkpoint),
    )


@pytest.fixture(scope="module")
def python_embeddings(exported) -> dict[Path, np.ndarray]:
    """The Python path: `audio.read_mfcc`, then `Embedder.embed_mfccs(..., 'mean')`."""
    return dict(zip(REAL_FILES, exported.embedder.embed_mfccs([read_mfcc(path) for path in REAL_FILES], "mean")))


# The graph's building blocks.


def test_percentile_is_numpy_linear_percentile_bit_for_bit():
    percentile = tf.function(lambda x: export.percentile(x, 95), input_signature=[export.SAMPLES_SPEC], autograph=False)
    rng = np.random.default_rng(0)
    for n in [*range(1, 130), 999, 100_003]:
        values = rng.standard_normal(n).astype(np.float32) ** 2
        tied = np.round(values * 3).astype(np.float32)  # Many equal values, as quantised silence has.
        for x in (values, tied):
            assert percentile(x).numpy() == np.percentile(x, 95), n


def test_window_starts_are_the_python_window_starts():
    starts = tf.function(export.window_starts, input_signature=[tf.TensorSpec([], tf.int32)], autograph=False)
    for num_frames in [1, 159, 160, 161, 239, 240, 241, 320, 1080, 1234]:
        np.testing.assert_array_equal(starts(num_frames).numpy(), window_starts(num_frames), err_msg=str(num_frames))


# The SavedModel against the Python pipeline, on real recordings.


@pytest.mark.parametrize("path", REAL_FILES, ids=file_id)
def test_features_signature_gives_mfcc_from_samples(exported, path):
    samples = read_audio(path)
    result = exported.saved_model.features(samples)
    expected = audio.mfcc_from_samples(samples)
    assert result["features"].shape == expected.shape and int(result["num_frames"]) == len(expected)
    np.testing.assert_allclose(result["features"].numpy(), expected, rtol=0, atol=FEATURE_TOLERANCE)


@pytest.mark.parametrize("path", REAL_FILES, ids=file_id)
def test_saved_model_embedding_is_the_embedders_whole_utterance_embedding(exported, python_embeddings, path):
    result = exported.saved_model.embed(read_audio(path))
    embedding = result["embedding"].numpy()
    assert embedding.shape == (EMBEDDING_SIZE,) and int(result["num_frames"]) == len(read_mfcc(path))
    np.testing.assert_allclose(np.linalg.norm(embedding), 1.0, atol=1e-6)
    np.testing.assert_allclose(embedding, python_embeddings[path], rtol=0, atol=EMBEDDING_TOLERANCE)


def test_serving_signature_and_float32_variant_agree(exported, python_embeddings):
    samples = read_audio(LIBRI_1255)
    serving = exported.saved_model.signatures[export.EMBED_SIGNATURE](samples=tf.constant(samples))
    float32 = exported.saved_model.embed_float32(samples)
    np.testing.assert_allclose(serving["embedding"].numpy(), python_embeddings[LIBRI_1255], rtol=0, atol=EMBEDDING_TOLERANCE)
    np.testing.assert_allclose(float32["embedding"].numpy(), python_embeddings[LIBRI_1255], rtol=0, atol=EMBEDDING_TOLERANCE)


def test_windows_go_through_the_model_in_chunks_without_changing_the_mean(exported, python_embeddings):
    graph = export.EmbeddingGraph(load_embedding_model(exported.checkpoint), windows_per_call=4)  # 13 windows: 4+4+4+1.
    embedding = graph.embed(read_audio(LONG_FILE))["embedding"].numpy()
    np.testing.assert_allclose(embedding, python_embeddings[LONG_FILE], rtol=0, atol=EMBEDDING_TOLERANCE)


def test_numpy_float32_sums_round_as_numpy_sums():
    sums = tf.function(export.numpy_float32_sums, autograph=False)
    rng = np.random.default_rng(0)
    for shape in [(37, 128), (5, 512), (3, 2048)]:
        values = (rng.standard_normal(shape) * rng.uniform(0, 10, shape)).astype(np.float32) ** 2
        np.testing.assert_array_equal(sums(values).numpy(), np.sum(values, axis=-1), err_msg=str(shape))


def test_energy_bounds_are_librosas_trim_interval():
    """Noise under a bump, sometimes after digital silence: the interval `librosa.effects.trim` keeps."""
    bounds = tf.function(export.energy_bounds, input_signature=[export.SAMPLES_SPEC], autograph=False)
    rng = np.random.default_rng(0)
    for length in [1, 2, 300, 511, 512, 513, 2047, 2048, 2049, 5000, 16_000, 100_003]:
        for silent_start in (False, True):
            bump = np.exp(-(((np.arange(length) - rng.uniform(0, length)) / (rng.uniform(0.05, 0.5) * length + 1)) ** 2))
            samples = (rng.standard_normal(length) * bump * rng.uniform(0.01, 1)).astype(np.float32)
            samples[: length // 3 if silent_start else 0] = 0
            expected = librosa.effects.trim(samples, top_db=ENERGY_TRIM_TOP_DB)[1]
            assert [int(b) for b in bounds(samples)] == list(expected), (length, silent_start)


# The TFLite file.


def test_tflite_file_runs_any_input_length_and_matches(exported, python_embeddings):
    """One interpreter, resized for each utterance (6.5 s, 8.1 s at 48 kHz, a 1 s one, 13 windows)."""
    for path in [LIBRI_1255, PHILIPPE[0], SHORT_FILE, LONG_FILE]:
        result = run_tflite_resized(exported.tflite, read_audio(path))
        assert int(result["num_frames"]) == len(read_mfcc(path)), path
        np.testing.assert_allclose(result["embedding"], python_embeddings[path], rtol=0, atol=EMBEDDING_TOLERANCE, err_msg=str(path))


def test_tflite_file_needs_only_builtin_ops(exported):
    """No Flex (select TF) ops: the file runs on a plain LiteRT / TFLite runtime."""
    content = exported.paths.tflite.read_bytes()
    assert b"Flex" not in content
    embed = export.tflite_embedder(exported.paths.tflite)
    assert embed(read_audio(SHORT_FILE))["embedding"].shape == (EMBEDDING_SIZE,)


# The int8 TFLite file.


def test_int8_tflite_file_is_written_beside_the_float_one_at_under_a_third_of_its_size(exported):
    assert exported.paths.tflite_int8 == exported.paths.tflite.parent / "embedding_int8.tflite"
    assert exported.paths.tflite_int8.stat().st_size < exported.paths.tflite.stat().st_size / 3
    assert json.loads(exported.paths.metadata.read_text())["tflite_int8"] == "embedding_int8.tflite"
    assert b"Flex" not in exported.paths.tflite_int8.read_bytes()


def test_int8_tflite_embeddings_are_within_cosine_0_999_of_the_float_models(exported, python_embeddings):
    """Loaded with the interpreter, resized per utterance: unit vectors close to the Python path's, on every real file."""
    embed = export.tflite_embedder(exported.paths.tflite_int8, num_threads=2)
    for path in REAL_FILES:
        result = embed(read_audio(path))
        assert int(result["num_frames"]) == len(read_mfcc(path)), path
        np.testing.assert_allclose(np.linalg.norm(result["embedding"]), 1.0, atol=1e-5)
        assert float(result["embedding"] @ python_embeddings[path]) > INT8_MIN_COSINE, path


def test_int8_tflite_file_quantises_the_models_weights_and_not_the_features(exported, capsys):
    """Only the ResCNN's constants are int8: the mel filters (in bands under the quantiser's size) stay float."""
    tf.lite.experimental.Analyzer.analyze(model_path=str(exported.paths.tflite_int8))
    int8_tensors = [line for line in capsys.readouterr().out.splitlines() if "type:INT8" in line]
    assert int8_tensors and all("ResCNN" in line for line in int8_tensors), [line for line in int8_tensors if "ResCNN" not in line]


def test_mel_bands_hold_the_whole_mel_matrix_each_under_the_quantisers_size():
    mel = audio.mel_filterbank(SAMPLE_RATE)
    rebuilt, first_filter = np.zeros_like(mel), 0
    for first_bin, weights in export.mel_bands(SAMPLE_RATE):
        assert weights.size < export.TFLITE_QUANTISED_MIN_WEIGHTS
        bins, filters = weights.shape
        rebuilt[first_bin : first_bin + bins, first_filter : first_filter + filters] = weights
        first_filter += filters
    assert first_filter == NUM_FBANKS
    np.testing.assert_array_equal(rebuilt, mel)


# Audio without usable speech.


def speech_with_a_nan() -> np.ndarray:
    samples = read_audio(SHORT_FILE).copy()
    samples[100] = np.nan
    return samples


NO_SPEECH = {
    "empty": lambda: np.zeros(0, np.float32),
    "digital-silence": lambda: np.zeros(SAMPLE_RATE, np.float32),
    "constant": lambda: np.full(SAMPLE_RATE, 0.25, np.float32),
    "too-short": lambda: read_audio(SHORT_FILE)[5000:5300],  # 300 samples: under one 400-sample frame.
    "nan-sample": speech_with_a_nan,
}


@pytest.mark.parametrize("case", NO_SPEECH)
def test_audio_without_usable_speech_gives_zeros_and_no_frames_never_nan(exported, case):
    samples = NO_SPEECH[case]()
    with pytest.raises(AudioError):
        audio.mfcc_from_samples(samples)  # The Python pipeline refuses exactly these inputs.
    for name, result in [("saved_model", exported.saved_model.embed(samples)),
                         ("float32", exported.saved_model.embed_float32(samples)),
                         ("tflite", run_tflite_resized(exported.tflite, samples))]:
        embedding = np.asarray(result["embedding"])
        assert int(result["num_frames"]) == 0, name
        assert embedding.shape == (EMBEDDING_SIZE,) and not np.any(embedding), name
    features = exported.saved_model.features(samples)
    assert features["features"].shape == (0, NUM_FBANKS) and int(features["num_frames"]) == 0


# A model trained with another front end: energy trim, short clips padded with their own frames.


def export_run(checkpoint: Path, run_dir: Path, config: dict) -> SimpleNamespace:
    """`checkpoint` copied into a run folder with this config.json, exported: artefacts, both runtimes, its Embedder."""
    checkpoint = Path(shutil.copy(checkpoint, run_dir / "best.h5"))
    (run_dir / "config.json").write_text(json.dumps(config))
    return exported_artefacts(checkpoint, run_dir / "exported")


def assert_embeds_as_the_embedder(run: SimpleNamespace, path: Path) -> int:
    """All three runtimes of an exported run give `run.embedder.embed_files([path])`; returns the frame count."""
    samples = read_audio(path)
    expected = run.embedder.embed_files([path])[0]
    num_frames = len(audio.mfcc_from_samples(samples, trim_mode="energy"))
    result = run.saved_model.embed(samples)
    assert int(result["num_frames"]) == num_frames
    np.testing.assert_allclose(result["embedding"].numpy(), expected, rtol=0, atol=FEATURE_TOLERANCE)
    for name, other in [("float32", run.saved_model.embed_float32(samples)), ("tflite", run_tflite_resized(run.tflite, samples))]:
        assert int(other["num_frames"]) == num_frames, name
        np.testing.assert_allclose(np.asarray(other["embedding"]), expected, rtol=0, atol=EMBEDDING_TOLERANCE, err_msg=name)
    return num_frames


@pytest.fixture(scope="module")
def energy_exported(small_checkpoint, tmp_path_factory) -> SimpleNamespace:
    """The small model in a run folder whose config.json says trim 'energy' and pad 'repeat', exported."""
    return export_run(small_checkpoint, tmp_path_factory.mktemp("energy_run"), {"trim": "energy", "pad": "repeat"})


@pytest.mark.parametrize("path", ENERGY_FILES, ids=file_id)
def test_energy_front_end_features_are_mfcc_from_samples_with_energy_trim(energy_exported, path):
    samples = read_audio(path)
    result = energy_exported.saved_model.features(samples)
    expected = audio.mfcc_from_samples(samples, trim_mode="energy")
    assert result["features"].shape == expected.shape and int(result["num_frames"]) == len(expected)
    np.testing.assert_allclose(result["features"].numpy(), expected, rtol=0, atol=FEATURE_TOLERANCE)


@pytest.mark.parametrize("path", [FSDD_GEORGE, LONG_FILE], ids=["short-repeat-padded", "long"])
def test_energy_front_end_embedding_is_the_embedders(energy_exported, path):
    """A spoken digit under 160 frames (one window of its frames repeated) and a 13-window utterance."""
    num_frames = assert_embeds_as_the_embedder(energy_exported, path)
    assert (num_frames < NUM_FRAMES) == (path == FSDD_GEORGE)


@pytest.mark.parametrize("case", [case for case in NO_SPEECH if case != "constant"])  # Constant audio passes the energy trim.
def test_energy_front_end_without_usable_speech_gives_no_frames(energy_exported, case):
    samples = NO_SPEECH[case]()
    with pytest.raises(AudioError):
        audio.mfcc_from_samples(samples, trim_mode="energy")
    for name, result in [("saved_model", energy_exported.saved_model.embed(samples)),
                         ("tflite", run_tflite_resized(energy_exported.tflite, samples))]:
        assert int(result["num_frames"]) == 0 and not np.any(np.asarray(result["embedding"])), name


def test_energy_front_end_export_records_it_and_needs_only_builtin_ops(exported, energy_exported):
    metadata = json.loads(energy_exported.paths.metadata.read_text())
    assert metadata["frontend"] == {"trim": "energy", "pad": "repeat", "top_db": ENERGY_TRIM_TOP_DB,
                                    "frame_length": 2048, "hop_length": 512}
    assert json.loads(exported.paths.metadata.read_text())["frontend"] == {"trim": "reference", "pad": "zeros",
                                                                        "silence_percentile": SILENCE_PERCENTILE}
    assert b"Flex" not in energy_exported.paths.tflite.read_bytes()


# A model trained with repeat padding that embeds short clips from their own frames (`embedding_pad`).


@pytest.fixture(scope="module")
def exact_exported(small_checkpoint, tmp_path_factory) -> SimpleNamespace:
    """The small model in a run folder whose config.json trains with pad 'repeat' and embeds with 'exact', exported."""
    config = {"trim": "energy", "pad": "repeat", "embedding_pad": "exact"}
    return export_run(small_checkpoint, tmp_path_factory.mktemp("exact_run"), config)


@pytest.mark.parametrize("path", [FSDD_GEORGE, SHORT_FILE, LONG_FILE], ids=["short-51-frames", "short-127-frames", "long"])
def test_exact_padding_embeds_short_clips_unpadded_as_the_embedder_does(exact_exported, path):
    """Clips under 160 frames: the model once on their own frames, in one interpreter resized for each
    length; a 13-window utterance: the mean of its windows, as before."""
    num_frames = assert_embeds_as_the_embedder(exact_exported, path)
    assert (num_frames < NUM_FRAMES) == (path != LONG_FILE)


def test_exact_padding_export_records_it_and_needs_only_builtin_ops(exact_exported):
    assert json.loads(exact_exported.paths.metadata.read_text())["frontend"]["pad"] == "exact"
    assert b"Flex" not in exact_exported.paths.tflite.read_bytes()


def test_no_trim_front_end_features_are_mfcc_from_samples_untrimmed(exported):
    graph = export.EmbeddingGraph(load_embedding_model(exported.checkpoint), frontend=FrontEnd("none", "zeros"))
    samples = read_audio(FSDD_GEORGE)
    expected = audio.mfcc_from_samples(samples, trim_mode="none")
    assert len(expected) == 1 + (len(samples) - 400 + 159) // 160  # Every sample kept.
    np.testing.assert_allclose(graph.features(samples)["features"].numpy(), expected, rtol=0, atol=FEATURE_TOLERANCE)


def test_export_refuses_a_front_end_it_does_not_know_naming_the_config(exported, tmp_path):
    checkpoint = Path(shutil.copy(exported.checkpoint, tmp_path / "best.h5"))
    (tmp_path / "config.json").write_text(json.dumps({"trim": "vad", "pad": "zeros"}))
    with pytest.raises(ValueError, match="config.json: trim must be one of"):
        export.export_embedding_model(checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# The export itself.


def test_export_writes_saved_model_tflite_and_what_made_them(exported):
    folder = exported.paths.saved_model.parent
    assert sorted(p.name for p in folder.iterdir()) == ["embedding.tflite", "embedding_int8.tflite", "export.json", "saved_model"]  # No scratch left.
    assert set(exported.saved_model.signatures) == {"serving_default", "features", "embed_float32"}
    metadata = json.loads(exported.paths.metadata.read_text())
    assert metadata["model_size"] == "small" and metadata["checkpoint"] == str(exported.checkpoint.resolve())
    assert metadata["tflite"] == "embedding.tflite" and metadata["input"]["sample_rate"] == SAMPLE_RATE


def test_export_never_overwrites(exported):
    before = exported.paths.tflite.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="saved_model"):
        export.export_embedding_model(exported.checkpoint, exported.paths.saved_model.parent)
    assert exported.paths.tflite.stat().st_mtime_ns == before


def test_export_of_a_missing_checkpoint_names_it_and_writes_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        export.export_embedding_model(tmp_path / "missing.h5", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_without_tflite_writes_only_the_saved_model(exported, tmp_path):
    paths = export.export_embedding_model(exported.checkpoint, tmp_path / "exported", tflite=False)
    assert paths.tflite is None and sorted(p.name for p in paths.saved_model.parent.iterdir()) == ["export.json", "saved_model"]
    assert json.loads(paths.metadata.read_text())["tflite"] is None


def test_full_size_model_exports_and_both_artefacts_match(tmp_path):
    """The reference's 24 M-weight ResCNN: SavedModel and TFLite give the Python path's embedding."""
    checkpoint = write_checkpoint(tmp_path / "full.h5", "full", seed=1)
    paths = export.export_embedding_model(checkpoint, tmp_path / "exported", int8=False)
    samples = read_audio(PHILIPPE[0])
    expected = Embedder.from_checkpoint(checkpoint).embed_mfccs([read_mfcc(PHILIPPE[0])], "mean")[0]
    loaded = tf.saved_model.load(str(paths.saved_model))  # Held: its functions need it alive.
    np.testing.assert_allclose(loaded.embed(samples)["embedding"].numpy(), expected, rtol=0, atol=EMBEDDING_TOLERANCE)
    tflite = run_tflite_resized(tf.lite.Interpreter(model_path=str(paths.tflite)), samples)
    np.testing.assert_allclose(tflite["embedding"], expected, rtol=0, atol=EMBEDDING_TOLERANCE)
