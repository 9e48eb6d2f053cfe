"""batcher.py: the reference's random 160-frame windows, triplet batches per replica, hard-negative mining."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest

import audio
import feature_cache
from batcher import (
    CachedWaveform,
    HardNegativeTripletBatches,
    SpeakerClassBatches,
    TrainingData,
    TripletBatches,
    load_cached_array,
    load_training_data,
    sample_from_mfcc,
    sample_from_mfcc_file,
)
from corpus import CorpusError
from constants import CACHE_DIR_NAME, EMBEDDING_SIZE, NUM_FBANKS, NUM_FRAMES

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
LIBRI_1255 = SAMPLES / "1255-90413-0001.flac"
MTL_OUTPUTS = ("speaker_pred", "gender_pred", "ln")


@pytest.fixture(scope="module")
def training_data(tmp_path_factory) -> TrainingData:
    """Cached features of the bundled train-clean-100 samples: speakers 19 (F), 26 (M), 27 (M), 8 utterances each."""
    working_dir = tmp_path_factory.mktemp("batcher_cache")
    feature_cache.build_feature_cache(SAMPLES / "LibriSpeech" / "train-clean-100", working_dir, workers=1, progress=False)
    return load_training_data(working_dir)


def test_training_data_is_read_with_the_garbage_collector_paused_and_refuses_a_missing_entry_by_name(tmp_path):
    """The index of a cache folder (empty entries: only their presence is read) splits 80/20 per speaker in natural
    order; a listed entry that is gone is named; the collector is as it was afterwards, on or off."""
    (tmp_path / CACHE_DIR_NAME).mkdir()
    speakers = {f"id{s}": [f"v0-{u}" for u in range(1, 11)] for s in (2, 10, 1)}
    for speaker, utterances in speakers.items():
        for utterance in utterances:
            (tmp_path / CACHE_DIR_NAME / f"{speaker}_{utterance}.npy").touch()
    (tmp_path / "corpus.json").write_text(json.dumps({"audio_dirs": [], "genders": {}, "speakers": speakers}))
    data = load_training_data(tmp_path)
    assert data.speakers == ["id1", "id2", "id10"] and gc.isenabled()
    assert [p.name for p in data.test["id2"]] == ["id2_v0-9.npy", "id2_v0-10.npy"]
    gc.disable()
    try:
        load_training_data(tmp_path)
        assert not gc.isenabled()
    finally:
        gc.enable()
    (tmp_path / CACHE_DIR_NAME / "id10_v0-3.npy").unlink()
    with pytest.raises(CorpusError, match="1 cache entries listed in corpus.json are missing .e.g. .*id10_v0-3.npy"):
        load_training_data(tmp_path)
    assert gc.isenabled()


def test_long_utterance_gives_a_contiguous_window_of_160_frames():
    mfcc = audio.read_mfcc(LIBRI_1255)
    window = sample_from_mfcc(mfcc, NUM_FRAMES, np.random.default_rng(0))
    assert window.shape == (NUM_FRAMES, NUM_FBANKS, 1)
    starts = [s for s in range(len(mfcc) - NUM_FRAMES + 1) if np.array_equal(mfcc[s : s + NUM_FRAMES], window[..., 0])]
    assert len(starts) == 1


def test_window_start_is_uniform_over_every_valid_offset():
    mfcc = np.arange(170, dtype=np.float32)[:, None].repeat(NUM_FBANKS, axis=1)
    rng = np.random.default_rng(1)
    starts = {int(sample_from_mfcc(mfcc, NUM_FRAMES, rng)[0, 0, 0]) for _ in range(400)}
    assert starts == set(range(11))


def test_short_utterance_is_zero_padded_at_the_end():
    mfcc = audio.read_mfcc(LIBRI_1255)[:50]
    window = sample_from_mfcc(mfcc, NUM_FRAMES)
    np.testing.assert_array_equal(window[:50, :, 0], mfcc)
    np.testing.assert_array_equal(window[50:], 0)


def test_sample_from_mfcc_file_reads_a_cached_entry(tmp_path):
    mfcc = audio.read_mfcc(LIBRI_1255)
    entry = tmp_path / "1255_90413-0001.npy"
    np.save(entry, mfcc)
    window = sample_from_mfcc_file(entry, NUM_FRAMES, np.random.default_rng(0))
    np.testing.assert_array_equal(window, sample_from_mfcc(mfcc, NUM_FRAMES, np.random.default_rng(0)))


# ----------------------------------------------------------------------------------------------
# Triplet batches for several replicas.


def mtl_batches(data: TrainingData, replicas: int) -> TripletBatches:
    return TripletBatches(data.train, 12, 1, seed=3, outputs=MTL_OUTPUTS, speakers=data.speakers, task_values={"gender_pred": (data.gender_labels(data.speakers), True)}, replicas=replicas)


def test_cache_entries_loaded_by_many_reader_threads_at_once_are_each_their_own_array(tmp_path):
    # Reader threads parse .npy headers at the same time (Python 3.11's AST race, cpython#106905).
    from concurrent.futures import ThreadPoolExecutor

    entries = []
    for i in range(16):
        entries.append(tmp_path / f"entry-{i}.npy")
        np.save(entries[-1], np.full((20 + i, NUM_FBANKS), i, np.float32))
    with ThreadPoolExecutor(8) as pool:
        loaded = list(pool.map(load_cached_array, entries * 200))
    for i, array in enumerate(loaded):
        assert array.shape == (20 + i % 16, NUM_FBANKS) and np.all(array == i % 16) and isinstance(array, np.memmap)


@pytest.mark.parametrize("dtype", ["<f2", ">f4", "<f8"])
def test_a_cached_waveform_reads_the_samples_np_load_gives_for_any_stretch(tmp_path, dtype):
    """np.save's 1-D header is read without numpy's parser, any other header with it (here a version 2.0 file)."""
    samples = audio.read_audio(LIBRI_1255)[:5000].astype(dtype)
    saved, version_2 = tmp_path / "saved.npy", tmp_path / "version_2.npy"
    np.save(saved, samples)
    with open(version_2, "wb") as file:
        np.lib.format.write_array(file, samples, version=(2, 0))
    for path in (saved, version_2):
        waveform = CachedWaveform(path)
        assert len(waveform) == 5000 and waveform.dtype == np.dtype(dtype)
        for stretch in (slice(0, 5000), slice(1234, 4321), slice(4990, 6000), slice(7000, 8000)):
            np.testing.assert_array_equal(waveform[stretch], samples[stretch])
        np.testing.assert_array_equal(np.asarray(waveform, dtype=np.float32), samples.astype(np.float32))


def test_a_cached_waveform_that_is_not_one_dimensional_or_is_truncated_is_refused_by_name(tmp_path):
    features = tmp_path / "features.npy"
    np.save(features, np.zeros((160, NUM_FBANKS), np.float32))
    with pytest.raises(CorpusError, match="features.npy: a cached waveform must be 1-D"):
        CachedWaveform(features)
    truncated = tmp_path / "truncated.npy"
    np.save(truncated, np.zeros(1000, np.float16))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(CorpusError, match="truncated.npy: the cached waveform is truncated"):
        CachedWaveform(truncated)[900:1000]


def test_each_replica_gets_its_own_stacked_triplets_with_their_targets_and_weights(training_data):
    x, y, w = mtl_batches(training_data, replicas=1)[0]
    x2, y2, w2 = mtl_batches(training_data, replicas=2)[0]
    # One device: [a0 a1 a2 a3 | p0 p1 p2 p3 | n0 n1 n2 n3]. Two replicas: [a0 a1 p0 p1 n0 n1] then [a2 a3 p2 p3 n2 n3].
    rows_of_replica = [[0, 1, 4, 5, 8, 9], [2, 3, 6, 7, 10, 11]]
    for replica, rows in enumerate(rows_of_replica):
        block = slice(6 * replica, 6 * replica + 6)
        np.testing.assert_array_equal(x2[block], x[rows])
        for output in MTL_OUTPUTS:
            np.testing.assert_array_equal(y2[output][block], y[output][rows])
            np.testing.assert_array_equal(w2[output][block], w[output][rows])
    assert not np.array_equal(x2, x), "the same triplets, in another order"


def test_triplet_model_batches_weigh_every_row_once(training_data):
    """Ones, so that Keras scales the scalar triplet loss per replica like every other loss."""
    windows, dummy, weights = TripletBatches(training_data.train, 12, 1, replicas=2)[0]
    assert windows.shape == (12, NUM_FRAMES, NUM_FBANKS, 1) and dummy.shape == (12, 1)
    np.testing.assert_array_equal(weights, np.ones(12, np.float32))


@pytest.mark.parametrize("batch_size, replicas, message", [(12, 3, "multiple of 3 x 3 = 9"), (3, 2, "multiple of 3 x 2 = 6"), (12, 0, "replicas must be a positive integer")])
def test_a_batch_that_does_not_split_into_whole_triplets_per_replica_is_refused(training_data, batch_size, replicas, message):
    with pytest.raises(ValueError, match=message):
        TripletBatches(training_data.train, batch_size, 1, replicas=replicas)


# ----------------------------------------------------------------------------------------------
# Hard-negative mining.
#
# A history designed so the answers are known: unit vectors in a plane at these angles (degrees),
# as (speaker position, utterance index, angle). Speaker 0's utterance 0 has two windows at 0 and
# 170 degrees; speaker 1 has a single utterance (two windows) in the history.
HISTORY = [(0, 0, 0), (0, 0, 170), (0, 1, 60), (0, 2, 30), (1, 0, 90), (1, 0, 100), (2, 0, 10), (2, 1, 200)]
# Anchor row -> least similar window of another utterance of its speaker (row 4: the other window of its only utterance).
HARDEST_POSITIVE = {0: 2, 1: 3, 2: 1, 3: 1, 4: 5, 5: 4, 6: 7, 7: 6}
# Anchor row -> most similar row of another speaker, among all rows.
HARDEST_NEGATIVE = {0: 6, 1: 7, 2: 4, 3: 6, 4: 2, 5: 2, 6: 0, 7: 1}


def angle_embed(windows: np.ndarray) -> np.ndarray:
    """Windows whose every value is a row of HISTORY -> that row's unit vector (a stand-in for the model)."""
    angles = np.radians([HISTORY[int(row)][2] for row in windows[:, 0, 0, 0]])
    vectors = np.zeros((len(windows), EMBEDDING_SIZE), np.float32)
    vectors[:, 0], vectors[:, 1] = np.cos(angles), np.sin(angles)
    return vectors


def designed_history(data: TrainingData, negative_candidates: int = 100, batch_size: int = 30) -> HardNegativeTripletBatches:
    """Mining over HISTORY, in a history of 12 rows of which 4 stay empty."""
    batches = HardNegativeTripletBatches(data.train, batch_size, 1, angle_embed, history_speakers=3, history_utterances=2, history_refreshes=2, negative_candidates=negative_candidates)
    windows = np.stack([np.full((NUM_FRAMES, NUM_FBANKS, 1), row, np.float32) for row in range(len(HISTORY))])
    speakers = np.array([speaker for speaker, _, _ in HISTORY])
    utterances = np.array([batches.utterance_id(speaker, index) for speaker, index, _ in HISTORY])
    batches.remember(windows, speakers, utterances)
    return batches


def test_the_positive_is_the_least_similar_window_of_another_utterance_of_the_anchor_speaker(training_data):
    batches = designed_history(training_data)
    anchors = np.array(list(HARDEST_POSITIVE))
    np.testing.assert_array_equal(batches.hardest_positives(anchors), list(HARDEST_POSITIVE.values()))
    # Row 1, the other window of row 0's utterance, is the least similar of all (170 degrees) and never row 0's positive.
    assert HARDEST_POSITIVE[0] != 1


def test_mined_triplets_pair_each_anchor_with_its_hardest_positive_and_negative(training_data):
    batches = designed_history(training_data)
    for seed in range(5):
        anchors, positives, negatives = np.split(batches.mine(np.random.default_rng(seed)), 3)
        assert set(anchors) <= set(range(len(HISTORY))), "empty history slots are never mined"
        assert list(positives) == [HARDEST_POSITIVE[a] for a in anchors]
        assert list(negatives) == [HARDEST_NEGATIVE[a] for a in anchors]


def test_the_negative_is_the_most_similar_other_speaker_row_among_the_anchor_candidates(training_data):
    batches = designed_history(training_data)
    anchors = np.array([0, 0, 4])
    # Row 3 (speaker 0, 30 degrees) is more similar to row 0 than any candidate, but of its own speaker.
    candidates = np.array([[4, 7, 3], [5, 7, -1], [0, 6, 7]])
    np.testing.assert_array_equal(batches.hardest_negatives(anchors, candidates), [4, 5, 6])


def test_each_anchor_draws_its_own_negative_candidates_from_other_speakers(training_data):
    batches = designed_history(training_data, negative_candidates=3)
    anchors = np.zeros(20, dtype=np.int64)
    candidates = batches.draw_negative_candidates(anchors, np.random.default_rng(0))
    assert candidates.shape == (20, 3)
    assert all(len(set(row)) == 3 and set(row) <= {4, 5, 6, 7} for row in candidates)
    assert len({tuple(sorted(row)) for row in candidates}) > 1
    # With one candidate each, anchors of one batch get negatives from different rows.
    _, _, negatives = np.split(designed_history(training_data, negative_candidates=1).mine(np.random.default_rng(0)), 3)
    assert len(set(negatives)) > 1


def test_history_rows_remember_the_utterance_their_window_was_cut_from(training_data):
    """Real cached features: every history window is a crop of the utterance its row names."""

    def mean_spectrum_embed(windows: np.ndarray) -> np.ndarray:
        vectors = np.tile(windows.mean(axis=(1, 3)), (1, EMBEDDING_SIZE // NUM_FBANKS))
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    batches = HardNegativeTripletBatches(training_data.train, 12, 1, mean_spectrum_embed, history_speakers=3, history_utterances=2, history_refreshes=2)
    windows, dummy, _ = batches[0]
    assert windows.shape == (12, NUM_FRAMES, NUM_FBANKS, 1)
    entries = [entry for speaker in batches.speaker_names for entry in training_data.train[speaker]]
    for row in range(len(batches.history_speakers)):
        mfcc = np.load(entries[batches.history_utterance_ids[row]]).astype(np.float32)
        window = batches.history_windows[row, :, :, 0]
        if len(mfcc) < NUM_FRAMES:  # Short utterances are padded after their frames.
            assert np.array_equal(window[: len(mfcc)], mfcc), row
        else:
            assert any(np.array_equal(mfcc[start : start + NUM_FRAMES], window) for start in range(len(mfcc) - NUM_FRAMES + 1)), row


def test_a_hard_negative_refresh_draws_its_speakers_as_the_run_samples(training_data):
    """Balanced: each of 3 speakers is in a 2-speaker refresh 2/3 of the time; else in proportion to its
    utterances (19: 6 of 10, so in 0.6 + 0.4 x 0.6 / 0.8 = 0.9 of the refreshes)."""
    utterances = {"19": training_data.train["19"], "26": training_data.train["26"][:2], "27": training_data.train["27"][:2]}
    for balanced, share_of_19 in ((True, 2 / 3), (False, 0.9)):
        batches = HardNegativeTripletBatches(utterances, 12, 1, lambda w: np.ones((len(w), EMBEDDING_SIZE), np.float32), history_speakers=2,
                                             history_utterances=1, history_refreshes=1, balanced=balanced)
        rng = np.random.default_rng(0)
        refreshed = []
        for _ in range(600):
            batches.refresh(rng)
            refreshed.append(set(batches.history_speakers))  # The 2 slots of the history: one window of each speaker drawn.
        assert np.mean([0 in speakers for speakers in refreshed]) == pytest.approx(share_of_19, abs=0.05), balanced


def test_validation_takes_the_last_training_utterances_of_speakers_that_keep_two_to_train_on():
    from batcher import split_validation

    entries = [Path(f"u{i}.npy") for i in range(8)]
    assert split_validation(entries, 0.1) == (entries[:7], entries[7:])
    assert split_validation(entries, 0.25) == (entries[:6], entries[6:])
    assert split_validation(entries[:2], 0.1) == (entries[:2], [])  # Too few to spare one.
    assert split_validation(entries, 0.0) == (entries, [])


@pytest.mark.parametrize("kind", ["speaker_class", "triplet"])
def test_variable_windows_give_each_batch_one_length_in_the_range_seeded_varying_and_the_same_rows(training_data, kind):
    """All windows of a batch share a length drawn in (50, 200) frames; batches differ; the same seed draws the
    same batches; and the rows are those a fixed-length run draws (the length has a generator of its own)."""

    def batches(window_frames):
        if kind == "speaker_class":
            return SpeakerClassBatches(training_data.train, training_data.speakers, 6, 8, seed=3, window_frames=window_frames)
        return TripletBatches(training_data.train, 6, 8, seed=3, window_frames=window_frames)

    variable, again, fixed = batches((50, 200)), batches((50, 200)), batches(None)
    lengths = [variable[i][0].shape[1] for i in range(8)]
    assert all(50 <= n <= 200 for n in lengths) and lengths[0] != lengths[1] and len(set(lengths)) >= 4
    for i in (0, 5):
        for drawn, redrawn in zip(variable[i], again[i]):
            np.testing.assert_array_equal(drawn, redrawn)
        np.testing.assert_array_equal(variable[i][1], fixed[i][1])
        assert fixed[i][0].shape[1] == NUM_FRAMES
    variable.on_epoch_end()
    assert [variable[i][0].shape[1] for i in range(8)] != lengths  # Another epoch, other lengths.

