"""audio.py: decoding, trimming and filterbank features, on real recordings."""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile
from python_speech_features import fbank

import audio
from audio import AudioError
from constants import NUM_FBANKS, SAMPLE_RATE
from encoded_audio import encode

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
SHARED_DATA = REPO.parent / "shared" / "data"
PHILIPPE_001 = SAMPLES / "PhilippeRemy" / "PhilippeRemy_001.wav"  # 48 kHz WAV
LIBRI_1255 = SAMPLES / "1255-90413-0001.flac"  # 16 kHz FLAC
FSDD_GEORGE = SHARED_DATA / "FSDD" / "george" / "george-0-0040.wav"  # 8 kHz WAV


def reference_features(path: Path) -> np.ndarray:
    """The reference pipeline, written the straightforward way: librosa, 95th percentile trim, psf fbank, frame loop."""
    samples, _ = librosa.load(path, sr=SAMPLE_RATE, mono=True)
    magnitude = np.abs(samples)
    loud = np.where(magnitude > np.percentile(magnitude, 95))[0]
    energies = fbank(samples[loud[0] : loud[-1]], samplerate=SAMPLE_RATE, nfilt=NUM_FBANKS)[0]
    return np.array([(row - np.mean(row)) / max(np.std(row), 1e-12) for row in energies], dtype=np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    soundfile.write(path, samples, rate)
    return path


@pytest.mark.parametrize("path", [PHILIPPE_001, LIBRI_1255, FSDD_GEORGE], ids=["48k-wav", "16k-flac", "8k-wav"])
def test_read_audio_gives_librosa_load_samples_exactly(path):
    expected, _ = librosa.load(path, sr=SAMPLE_RATE, mono=True)
    decoded = audio.read_audio(path)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, expected)


def test_read_audio_downmixes_stereo_and_resamples_any_rate(tmp_path):
    mono, _ = librosa.load(LIBRI_1255, sr=22_050)
    stereo = np.stack([mono, 0.5 * mono[::-1]], axis=1)
    path = write_wav(tmp_path / "stereo_22k.wav", stereo, 22_050)
    expected, _ = librosa.load(path, sr=SAMPLE_RATE, mono=True)
    np.testing.assert_allclose(audio.read_audio(path), expected, atol=1e-7)


@pytest.mark.parametrize("path", [PHILIPPE_001, LIBRI_1255, FSDD_GEORGE], ids=["48k-wav", "16k-flac", "8k-wav"])
def test_read_mfcc_matches_reference_pipeline_within_1e5(path):
    features = audio.read_mfcc(path, SAMPLE_RATE)
    expected = reference_features(path)
    assert features.shape == expected.shape and features.shape[1] == NUM_FBANKS
    assert features.dtype == np.float32
    assert np.abs(features - expected).max() < 1e-5


def test_every_feature_frame_is_normalised():
    features = audio.read_mfcc(LIBRI_1255)
    np.testing.assert_allclose(features.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(features.std(axis=1), 1, atol=1e-4)


def test_trim_silence_keeps_from_first_loud_sample_up_to_the_last_one_excluded():
    samples = np.zeros(100, dtype=np.float32)
    samples[[10, 50, 90]] = [1.0, 0.5, -1.0]
    np.testing.assert_array_equal(audio.trim_silence(samples), samples[10:90])


def test_silence_threshold_is_numpy_percentile_bit_for_bit():
    rng = np.random.default_rng(0)
    for n in [*range(1, 300), 999, 16_000, 100_003]:
        values = np.abs(rng.standard_normal(n)).astype(np.float32)
        tied = np.round(values * 3).astype(np.float32)  # Many equal values, as quantised silence has.
        neighbours = np.float32(0.5) + rng.integers(0, 4, n).astype(np.float32) * np.float32(2**-24)  # Order statistics one ulp apart.
        for x in (values, tied, neighbours):
            assert audio.silence_threshold(x) == np.percentile(x, 95), n
    with_nan = np.abs(rng.standard_normal(1000)).astype(np.float32)
    with_nan[7] = np.nan
    assert np.isnan(audio.silence_threshold(with_nan)) and np.isnan(np.percentile(with_nan, 95))


@pytest.mark.parametrize("path", [PHILIPPE_001, LIBRI_1255, FSDD_GEORGE], ids=["48k-wav", "16k-flac", "8k-wav"])
def test_trim_silence_keeps_the_span_of_the_reference_trim(path):
    samples = audio.read_audio(path)
    magnitude = np.abs(samples)
    loud = np.where(magnitude > np.percentile(magnitude, 95))[0]
    np.testing.assert_array_equal(audio.trim_silence(samples), samples[loud[0] : loud[-1]])


def test_audio_with_nan_is_refused_as_silent_like_its_nan_percentile():
    samples = audio.read_audio(LIBRI_1255).copy()
    samples[1000] = np.nan
    with pytest.raises(AudioError, match="silent"):
        audio.trim_silence(samples, "nan.wav")


@pytest.mark.parametrize("path", [PHILIPPE_001, LIBRI_1255, FSDD_GEORGE], ids=["48k-wav", "16k-flac", "8k-wav"])
def test_filterbank_energies_are_psf_fbank_to_float32_rounding(path):
    voiced = audio.trim_silence(audio.read_audio(path))
    energies = audio.filterbank_energies(voiced)
    expected = fbank(voiced, samplerate=SAMPLE_RATE, nfilt=NUM_FBANKS)[0]
    assert energies.dtype == np.float32 and energies.shape == expected.shape
    assert np.all(np.abs(energies - expected).max(axis=1) <= 1e-6 * expected.max(axis=1))  # Within 1e-6 of each frame's largest energy.


def test_filterbanks_of_a_stack_of_windows_are_each_windows_own_and_psf_fbank_to_float32_rounding():
    """Batch-wide (count, length) input, as the augmented reader computes a batch: each window's energies are those it
    has alone and psf fbank's, within 1e-6 of each frame's largest energy; normalised, within 1e-5 of its own."""
    samples = audio.read_audio(LIBRI_1255)
    for length in (25_840, 25_839, 400, 1_000):
        starts = np.random.default_rng(length).integers(0, len(samples) - length, 7)
        windows = np.stack([samples[s : s + length] for s in starts])
        energies = audio.filterbank_energies(windows)
        alone = np.stack([audio.filterbank_energies(w) for w in windows])
        expected = np.stack([fbank(w, samplerate=SAMPLE_RATE, nfilt=NUM_FBANKS)[0] for w in windows])
        assert energies.dtype == np.float32 and energies.shape == expected.shape == (7, audio.frame_count(length), NUM_FBANKS)
        for ours in (energies, alone):
            assert np.all(np.abs(ours - expected).max(axis=2) <= 1e-6 * expected.max(axis=2))
        np.testing.assert_allclose(audio.features_of_voiced(windows), np.stack([audio.features_of_voiced(w) for w in windows]), rtol=0, atol=1e-5)


def test_pad_mfcc_appends_zero_frames_only_when_short():
    mfcc = np.ones((3, NUM_FBANKS), dtype=np.float32)
    padded = audio.pad_mfcc(mfcc, 5)
    assert padded.shape == (5, NUM_FBANKS)
    np.testing.assert_array_equal(padded[3:], 0)
    assert audio.pad_mfcc(mfcc, 2) is mfcc


# ---------------------------------------------------------------------------------------------- bad input


def test_missing_file_raises_file_not_found_naming_it(tmp_path):
    missing = tmp_path / "nowhere.wav"
    with pytest.raises(FileNotFoundError, match="nowhere.wav"):
        audio.read_mfcc(missing)


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("empty.wav", b"", "empty"),
        ("corrupt.flac", b"fLaC" + bytes(range(256)) * 8, "corrupt"),
        ("notes.wav", b"these are meeting notes, not a recording\n" * 20, "corrupt or not audio"),
        ("voice.mp3", b"ID3" + bytes(64), "corrupt or not audio|holds no audio samples"),
        ("voice.wma", b"0&\xb2u\x8ef\xcf\x11" + bytes(64), "unsupported format"),
    ],
)
def test_unreadable_files_raise_audio_error_naming_file_and_problem(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AudioError, match=problem) as caught:
        audio.read_mfcc(path)
    assert name in str(caught.value)


def test_silent_file_raises_audio_error(tmp_path):
    path = write_wav(tmp_path / "silence.wav", np.zeros(SAMPLE_RATE, dtype=np.float32))
    with pytest.raises(AudioError, match="silence.wav: the audio is silent"):
        audio.read_mfcc(path)


def test_wav_with_no_samples_raises_audio_error(tmp_path):
    path = write_wav(tmp_path / "no_samples.wav", np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError, match="no_samples.wav"):
        audio.read_mfcc(path)


def test_too_short_file_raises_audio_error(tmp_path):
    speech = audio.read_audio(LIBRI_1255)[20_000:20_200]  # 12.5 ms of real speech
    path = write_wav(tmp_path / "blip.wav", speech)
    with pytest.raises(AudioError, match="blip.wav: too short"):
        audio.read_mfcc(path)


# ---------------------------------------------------------------------------------------------- more formats, front ends

CV_SAMPLES = SAMPLES / "CommonVoice-fa"
CV_CLIP = next((CV_SAMPLES / "fbc91278").glob("*.mp3"))  # 32 kHz MP3


def test_mp3_decodes_to_16_khz_mono_with_the_files_duration():
    samples = audio.read_audio(CV_CLIP)
    info = soundfile.info(CV_CLIP)
    assert info.format == "MP3" and info.samplerate == 32_000
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) == pytest.approx(info.duration * SAMPLE_RATE, abs=SAMPLE_RATE // 50)  # MP3 decoders differ by an encoder delay.
    assert audio.read_mfcc(CV_CLIP).shape[1] == NUM_FBANKS


def test_ogg_is_accepted_like_wav(tmp_path):
    speech = audio.read_audio(LIBRI_1255)
    path = tmp_path / "speech.ogg"
    soundfile.write(path, speech, SAMPLE_RATE, format="OGG", subtype="VORBIS")
    decoded = audio.read_audio(path)
    assert abs(len(decoded) - len(speech)) < SAMPLE_RATE // 100
    assert audio.read_mfcc(path).shape[1] == NUM_FBANKS

def test_energy_trim_keeps_quiet_speech_at_the_edges_of_a_short_clip():
    samples = audio.read_audio(FSDD_GEORGE)
    reference, energy = audio.trim(samples, "reference"), audio.trim(samples, "energy")
    assert len(energy) > 2 * len(reference)  # The 95th-percentile trim keeps only the loudest stretch of a digit.
    assert len(audio.trim(samples, "none")) == len(samples)
    np.testing.assert_array_equal(audio.read_mfcc(FSDD_GEORGE, trim_mode="energy"), audio.features_of_voiced(energy))


def test_every_trim_refuses_all_zero_audio():
    for mode in ("reference", "energy", "none"):
        with pytest.raises(AudioError, match="silent"):
            audio.trim(np.zeros(SAMPLE_RATE, dtype=np.float32), mode, "zeros.wav")


def test_repeat_padding_tiles_the_frames_of_a_short_clip():
    mfcc = np.arange(3 * NUM_FBANKS, dtype=np.float32).reshape(3, NUM_FBANKS)
    padded = audio.pad_mfcc(mfcc, 8, "repeat")
    assert padded.shape == (8, NUM_FBANKS)
    np.testing.assert_array_equal(padded[[0, 3, 6]], mfcc[[0, 0, 0]])
    np.testing.assert_array_equal(padded[[2, 5]], mfcc[[2, 2]])


# ---------------------------------------------------------------------------------------------- AAC/M4A, Opus (FFmpeg)


@pytest.mark.parametrize("source", ["16k-flac", "48k-wav", "22k-stereo-wav"])
def test_an_alac_m4a_decodes_to_exactly_the_samples_of_its_source(tmp_path, source):
    """Lossless in M4A: the same samples, so FFmpeg's path downmixes and resamples exactly as soundfile's does."""
    if source == "22k-stereo-wav":
        mono, _ = librosa.load(LIBRI_1255, sr=22_050)
        path = write_wav(tmp_path / "stereo_22k.wav", np.stack([mono, 0.5 * mono[::-1]], axis=1), 22_050)
    else:
        path = {"16k-flac": LIBRI_1255, "48k-wav": PHILIPPE_001}[source]
    m4a = encode(path, tmp_path / "speech.m4a", "alac")
    np.testing.assert_array_equal(audio.read_audio(m4a), audio.read_audio(path))


def test_an_ogg_that_libsndfile_cannot_read_is_decoded_by_ffmpeg(tmp_path):
    ogg = encode(LIBRI_1255, tmp_path / "speech.ogg", "flac")  # FLAC in Ogg: libsndfile 1.2 refuses it.
    with pytest.raises(soundfile.LibsndfileError):
        soundfile.read(ogg)
    np.testing.assert_array_equal(audio.read_audio(ogg), audio.read_audio(LIBRI_1255))


# bench/codec_error.py (results/codec_error.json), on 33 files of ../shared/data re-encoded as here: the RMS
# difference of the features of the same span (unit-variance frames, so 1 is the size of the features
# themselves) was at most 0.36 for AAC at 64 kb/s, 0.62 for Opus at 32 kb/s and 0.63 at 16 kb/s in WebM,
# against at least 1.25 between two different utterances.
LOSSY = [(LIBRI_1255, "aac", ".m4a", 64_000, None, 0.45), (PHILIPPE_001, "libopus", ".opus", 32_000, 48_000, 0.75),
         (LIBRI_1255, "libopus", ".webm", 16_000, 48_000, 0.75)]


@pytest.mark.parametrize("path, codec, extension, bit_rate, rate, tolerance", LOSSY, ids=["16k-flac-as-aac-m4a", "48k-wav-as-opus", "16k-flac-as-opus-webm"])
def test_aac_and_opus_give_the_features_of_their_source_within_the_codecs_error(tmp_path, path, codec, extension, bit_rate, rate, tolerance):
    source = audio.read_audio(path)
    decoded = audio.read_audio(encode(path, tmp_path / f"speech{extension}", codec, bit_rate, rate))
    head = slice(0, 2 * SAMPLE_RATE)
    lags = scipy.signal.correlation_lags(len(decoded[head]), len(source[head]))
    assert lags[np.argmax(scipy.signal.correlate(decoded[head], source[head]))] == 0  # The encoder's priming samples are dropped.
    assert 0 <= len(decoded) - len(source) < 1024  # At most the padding of the last codec frame.
    magnitude = np.abs(source)
    loud = np.flatnonzero(magnitude > audio.silence_threshold(magnitude))
    span = slice(loud[0], loud[-1])  # The source's reference trim: the codec's noise moves the trim's own edges.
    expected = audio.features_of_voiced(source[span])
    error = np.sqrt(np.mean(np.square(audio.features_of_voiced(decoded[span]) - expected)))
    assert error < tolerance
    assert audio.read_mfcc(tmp_path / f"speech{extension}").shape[1] == NUM_FBANKS


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_m4a_raises_a_one_line_audio_error_naming_the_file(tmp_path, damage):
    path = tmp_path / "voice.m4a"
    if damage == "truncated":  # Cut in half: the index of an M4A that ffmpeg writes comes last.
        whole = encode(LIBRI_1255, tmp_path / "whole.m4a", "aac", 64_000).read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    else:
        path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(range(256)) * 4)
    with pytest.raises(AudioError, match="corrupt or not audio") as caught:
        audio.read_mfcc(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


# ---------------------------------------------------------------------------------------------- segments (Kaldi)


def test_a_segment_is_read_as_if_its_span_of_the_recording_were_a_file_of_its_own(tmp_path):
    np.testing.assert_array_equal(audio.read_audio(LIBRI_1255, segment=(0.5, 2.25)), audio.read_audio(LIBRI_1255)[8_000:36_000])
    samples, rate = soundfile.read(PHILIPPE_001, dtype="int16")  # 48 kHz: the span is cut before resampling.
    span = write_wav(tmp_path / "span.wav", samples[rate : 4 * rate], rate)
    np.testing.assert_array_equal(audio.read_audio(PHILIPPE_001, segment=(1.0, 4.0)), audio.read_audio(span))
    m4a = encode(LIBRI_1255, tmp_path / "speech.m4a", "alac")  # FFmpeg's formats too.
    np.testing.assert_array_equal(audio.read_audio(m4a, segment=(3.0, None)), audio.read_audio(LIBRI_1255)[48_000:])


def test_a_segment_past_the_end_of_its_recording_raises_audio_error_naming_the_file():
    with pytest.raises(AudioError, match=r"1255-90413-0001\.flac: the segment 60-61 s starts after the end of the recording \(6\.49 s\)"):
        audio.read_audio(LIBRI_1255, segment=(60.0, 61.0))
