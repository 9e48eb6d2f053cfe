"""Folder noise (MUSAN's layout or any folder) and reverberation (RIRS_NOISES' layout, any folder, or
simulated rooms), on real speech from ../shared/data: what each draws, seeded, with bounded memory."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

import audio
import augment_sources
import feature_cache
from augment import AugmentConfig, FolderSources, augmented_window_features, window_samples
from augment_sources import LruCache, NoiseFolder, RoomImpulseResponses, reverberate, simulated_rir
from batcher import AugmentedBatches
from constants import MUSAN_BABBLE_SPEAKERS, MUSAN_SNR_DB, NUM_FBANKS, SAMPLE_RATE
from train_config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
SPEECH = SHARED_DATA / "LibriSpeech" / "test-other" / "3005" / "163389" / "3005-163389-0005.flac"
pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return audio.read_audio(SPEECH)[: 2 * SAMPLE_RATE]


@pytest.fixture(scope="module")
def musan(tmp_path_factory) -> Path:
    """MUSAN's layout from real files: noise/ (8 kHz FSDD WAV), music/ (VCTK WAV), speech/ (LibriSpeech FLAC)."""
    root = tmp_path_factory.mktemp("musan")
    picks = {
        "noise/free-sound": sorted((SHARED_DATA / "FSDD" / "george").glob("*.wav"))[:3],
        "music/fma": sorted((SHARED_DATA / "VCTK" / "p225").glob("*.wav"))[:2],
        "speech/librivox": sorted((SHARED_DATA / "LibriSpeech" / "test-other").rglob("*.flac"))[:8],
    }
    for folder, files in picks.items():
        (root / folder).mkdir(parents=True)
        for path in files:
            shutil.copy(path, root / folder / path.name)
    return root


@pytest.fixture(scope="module")
def rirs_noises(tmp_path_factory) -> Path:
    """RIRS_NOISES' layout, simulated_rirs/<size>room/<Room>/*.wav, holding pyroomacoustics rooms written to WAV."""
    root = tmp_path_factory.mktemp("RIRS_NOISES")
    for k, (size, room) in enumerate([("smallroom", "Room001"), ("smallroom", "Room001"), ("mediumroom", "Room002")]):
        folder = root / "simulated_rirs" / size / room
        folder.mkdir(parents=True, exist_ok=True)
        soundfile.write(folder / f"{room}-{k:05d}.wav", simulated_rir(seed=11, room=k), SAMPLE_RATE)
    return root


def test_a_unit_impulse_leaves_the_audio_unchanged(speech):
    impulse = np.zeros(800, np.float32)
    impulse[0] = 1.0
    np.testing.assert_allclose(reverberate(speech, impulse), speech, atol=1e-6)
    delayed = np.roll(impulse, 300)  # A delayed impulse is aligned on its direct path: still unchanged.
    np.testing.assert_allclose(reverberate(speech, delayed), speech, atol=1e-6)


def test_a_simulated_room_spreads_a_click_over_time_from_its_direct_path_and_keeps_the_power(speech):
    rir = simulated_rir(seed=0, room=3)
    click = np.zeros(SAMPLE_RATE, np.float32)
    click[1000] = 1.0
    wet = reverberate(click, rir)
    late = np.sum(wet[1000 + SAMPLE_RATE // 20 :] ** 2) / np.sum(wet**2)  # Energy 50 ms or more after the direct sound.
    assert late > 0.01 and np.argmax(np.abs(wet)) == 1000
    room = reverberate(speech, rir)
    assert len(room) == len(speech)
    assert np.mean(room.astype(np.float64) ** 2) == pytest.approx(np.mean(speech.astype(np.float64) ** 2), rel=1e-4)
    assert not np.allclose(room, speech, atol=1e-3)


def test_simulated_rooms_are_a_pure_function_of_seed_and_room():
    np.testing.assert_array_equal(simulated_rir(5, 7), simulated_rir(5, 7))
    assert not np.array_equal(simulated_rir(5, 7)[:500], simulated_rir(6, 7)[:500])
    rooms, again = RoomImpulseResponses(None, seed=5), RoomImpulseResponses(None, seed=5)
    for _ in range(3):
        np.testing.assert_array_equal(rooms.draw(np.random.default_rng(1)), again.draw(np.random.default_rng(1)))


def test_impulse_responses_of_a_rirs_noises_folder_are_its_files_drawn_seeded_through_a_bounded_cache(rirs_noises):
    rooms = RoomImpulseResponses(rirs_noises, cache_files=2)
    assert len(rooms) == 3
    files = [soundfile.read(path, dtype="float32")[0] for path in sorted(rirs_noises.rglob("*.wav"))]
    rng, again = np.random.default_rng(4), np.random.default_rng(4)
    drawn = [rooms.draw(rng) for _ in range(30)]
    assert all(any(np.array_equal(rir, file) for file in files) for rir in drawn)
    assert len({rir.tobytes() for rir in drawn}) == 3
    assert len(rooms.cache) == 2  # Never more than asked, however many files were drawn.
    fresh = RoomImpulseResponses(rirs_noises, cache_files=1)
    assert all(np.array_equal(fresh.draw(again), rir) for rir in drawn)  # The cache does not change what is drawn.


def test_the_lru_cache_drops_the_least_recently_used():
    cache = LruCache(2)
    cache.get("a", lambda: np.zeros(1))
    cache.get("b", lambda: np.zeros(1))
    cache.get("a", lambda: pytest.fail("'a' is cached"))
    cache.get("c", lambda: np.zeros(1))
    assert list(cache.values) == ["a", "c"]


def test_musan_noise_draws_every_category_at_its_snr_range_and_babble_from_several_files(musan, monkeypatch):
    noises = NoiseFolder(musan)
    assert noises.names == ["music", "noise", "speech"]
    rng = np.random.default_rng(0)
    drawn = [noises.draw(window_samples(), rng) for _ in range(60)]
    assert {category for category, _, _ in drawn} == {"noise", "music", "speech"}
    for category, noise, snr_db in drawn:
        low, high = MUSAN_SNR_DB[category]
        assert low <= snr_db <= high and len(noise) == window_samples() and np.any(noise)
    reads = []  # The files a draw reads (the real reader, watched).
    read = augment_sources.read_stretch
    monkeypatch.setattr(augment_sources, "read_stretch", lambda path, length, rng: reads.append(path) or read(path, length, rng))
    while not reads or reads[0].parts[-3] != "speech":
        reads.clear()
        noises.draw(window_samples(), rng)
    assert MUSAN_BABBLE_SPEAKERS[0] <= len(reads) <= MUSAN_BABBLE_SPEAKERS[1]
    assert all(path.parts[-3] == "speech" for path in reads)


def test_noise_draws_are_seeded_and_an_8_khz_file_comes_back_at_16_khz(musan):
    noises = NoiseFolder(musan)
    for seed in range(3):
        first, again = noises.draw(4000, np.random.default_rng(seed)), noises.draw(4000, np.random.default_rng(seed))
        assert first[0] == again[0] and first[2] == again[2]
        np.testing.assert_array_equal(first[1], again[1])
    fsdd = NoiseFolder(musan / "noise")  # Any folder of audio: all of it 'noise'. FSDD is 8 kHz.
    category, noise, snr_db = fsdd.draw(SAMPLE_RATE // 4, np.random.default_rng(0))
    assert category == "noise" and 0 <= snr_db <= 15 and len(noise) == SAMPLE_RATE // 4


def test_an_empty_missing_or_unreadable_folder_is_refused_naming_it(tmp_path, musan):
    empty = tmp_path / "empty"
    (empty / "noise").mkdir(parents=True)
    (empty / "readme.txt").write_text("no audio here")
    with pytest.raises(ValueError, match=f"--noise_dir {empty}: no audio files"):
        NoiseFolder(empty)
    with pytest.raises(FileNotFoundError, match=f"--rir_dir {tmp_path / 'nowhere'}: no such folder"):
        RoomImpulseResponses(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=f"--rir_dir {empty}: no audio files"):
        TrainConfig(reverb_probability=0.5, rir_dir=str(empty)).validate()
    with pytest.raises(ValueError, match="give noise_probability > 0"):
        TrainConfig(noise_dir=str(musan)).validate()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "noise.wav").write_bytes(b"RIFF not really a wave file" * 10)
    with pytest.raises(audio.AudioError, match=f"{broken / 'noise.wav'}: corrupt or not audio"):
        NoiseFolder(broken).draw(1000, np.random.default_rng(0))


def test_augmented_windows_with_folder_noise_and_reverberation_are_seeded_and_change_the_features(speech, musan):
    config = AugmentConfig(noise_probability=1.0, reverb_probability=1.0, noise_dir=str(musan))
    sources = FolderSources.of(config, seed=0)
    window = [augmented_window_features(speech, 1.0, config, np.random.default_rng(seed), lambda n, r: [], sources=sources) for seed in (3, 3, 4)]
    plain = augmented_window_features(speech, 1.0, AugmentConfig(), np.random.default_rng(3), lambda n, r: [])
    assert window[0].shape == plain.shape == (160, NUM_FBANKS)
    np.testing.assert_array_equal(window[0], window[1])
    assert not np.allclose(window[0], window[2]) and not np.allclose(window[0], plain)


def test_streamed_augmented_batches_read_the_folders_and_draw_the_same_batch_again(musan, rirs_noises, tmp_path):
    working_dir = tmp_path / "work"
    feature_cache.build_feature_cache(REPO / "samples" / "LibriSpeech" / "train-clean-100", working_dir, workers=1, progress=False, waveform_trim="energy")
    entries, _ = feature_cache.cached_entries(working_dir)
    waveforms = feature_cache.waveform_cache_dir(working_dir, "energy")
    utterances = {s: [waveforms / e.name for e in entries[s]] for s in sorted(entries)}
    config = AugmentConfig(noise_probability=1.0, reverb_probability=1.0, noise_dir=str(musan), rir_dir=str(rirs_noises))
    first = AugmentedBatches(utterances, sorted(entries), 6, 2, config, seed=1)
    windows, labels = first[1]
    again, again_labels = AugmentedBatches(utterances, sorted(entries), 6, 2, config, seed=1)[1]
    np.testing.assert_array_equal(windows, again)
    np.testing.assert_array_equal(labels, again_labels)
    assert len(first.sources.rooms.cache) <= 3
