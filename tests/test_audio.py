"""audio.py: decoding, trimming, features, corpus index and feature cache, on real recordings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile
from python_speech_features import fbank

import audio
from audio import AudioError, CorpusError
from constants import NUM_FBANKS, SAMPLE_RATE

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
        ("voice.m4a", b"\x00\x00\x00\x20ftypM4A " + bytes(64), "unsupported format"),
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


# ---------------------------------------------------------------------------------------------- corpus index


def test_librispeech_index_names_speakers_utterances_and_genders():
    corpus = audio.index_corpus(SAMPLES / "LibriSpeech")
    assert corpus.speakers == ["19", "26", "27", "1688", "1998"]
    by_speaker = corpus.utterances_by_speaker()
    assert len(by_speaker["19"]) == 8
    first = by_speaker["19"][0]
    assert (first.speaker, first.utterance, first.cache_name) == ("19", "198-0000", "19_198-0000.npy")
    assert corpus.genders == {"19": "F", "26": "M", "27": "M", "1688": "M", "1998": "F"}


def test_librispeech_subset_folder_finds_speakers_txt_in_its_parent():
    corpus = audio.index_corpus(SHARED_DATA / "LibriSpeech" / "test-other")
    assert len(corpus.speakers) == 10
    assert set(corpus.genders) == set(corpus.speakers)


def test_plain_layout_uses_the_first_folder_as_speaker_and_reads_vctk_genders():
    corpus = audio.index_corpus(SHARED_DATA / "VCTK")
    assert corpus.speakers == ["p225", "p226", "p227", "p228"]
    assert corpus.genders == {"p225": "F", "p226": "M", "p227": "M", "p228": "F"}
    assert all(u.path.suffix == ".wav" for u in corpus.utterances)


def test_plain_layout_names_nested_utterances_uniquely(tmp_path):
    for relative in ["alice/day1/take.wav", "alice/day2/take.wav", "bob/take.flac"]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(LIBRI_1255, (tmp_path / relative).with_suffix(".flac") if relative.endswith("flac") else tmp_path / relative)
    corpus = audio.index_corpus(tmp_path)
    assert sorted(u.cache_name for u in corpus.utterances) == ["alice_day1-take.npy", "alice_day2-take.npy", "bob_take.npy"]
    assert corpus.genders == {}


def test_index_of_a_folder_without_audio_says_so(tmp_path):
    (tmp_path / "readme.txt").write_text("no audio here")
    with pytest.raises(CorpusError, match="no FLAC/WAV/MP3/OGG files"):
        audio.index_corpus(tmp_path)


def test_index_of_a_missing_folder_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such audio directory"):
        audio.index_corpus(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------- feature cache


def test_cache_build_writes_reference_named_entries_and_corpus_index(tmp_path):
    report = audio.build_feature_cache(SAMPLES / "LibriSpeech", tmp_path, workers=2, progress=False)
    entries = sorted(p.name for p in (tmp_path / "audio-fbanks").iterdir())
    assert report.written == 32 and not report.failed
    assert len(entries) == 32 and "19_198-0000.npy" in entries
    np.testing.assert_array_equal(
        np.load(tmp_path / "audio-fbanks" / "19_198-0000.npy"),
        audio.read_mfcc(SAMPLES / "LibriSpeech/train-clean-100/19/198/19-198-0000.flac"),
    )
    index = json.loads((tmp_path / "corpus.json").read_text())
    assert index["genders"]["19"] == "F"
    assert index["speakers"]["27"][0] == "124992-0016"


def test_cache_build_resumes_keeping_existing_entries(tmp_path):
    audio.build_feature_cache(SAMPLES / "LibriSpeech", tmp_path, workers=1, progress=False)
    removed = tmp_path / "audio-fbanks" / "26_495-0007.npy"
    removed.unlink()
    kept = tmp_path / "audio-fbanks" / "19_198-0000.npy"
    kept_mtime = kept.stat().st_mtime_ns
    report = audio.build_feature_cache(SAMPLES / "LibriSpeech", tmp_path, workers=1, progress=False)
    assert (report.written, report.skipped_existing) == (1, 31)
    assert removed.exists() and kept.stat().st_mtime_ns == kept_mtime


def test_cache_build_skips_bad_files_lists_them_and_keeps_good_entries(tmp_path):
    corpus = tmp_path / "corpus"
    good = corpus / "alice" / "good.flac"
    good.parent.mkdir(parents=True)
    shutil.copy(LIBRI_1255, good)
    shutil.copy(PHILIPPE_001, corpus / "alice" / "good2.wav")
    (corpus / "bob").mkdir()
    (corpus / "bob" / "empty.wav").write_bytes(b"")
    write_wav(corpus / "bob" / "silent.wav", np.zeros(8000, dtype=np.float32))
    (corpus / "bob" / "corrupt.flac").write_bytes(b"fLaC" + bytes(500))
    report = audio.build_feature_cache(corpus, tmp_path / "work", workers=2, progress=False)
    assert report.written == 2
    assert sorted(Path(path).name for path, _ in report.failed) == ["corrupt.flac", "empty.wav", "silent.wav"]
    assert "silent.wav: the audio is silent" in report.summary()
    assert sorted(p.name for p in (tmp_path / "work" / "audio-fbanks").iterdir()) == ["alice_good.npy", "alice_good2.npy"]
    assert json.loads((tmp_path / "work" / "corpus.json").read_text())["speakers"] == {"alice": ["good", "good2"]}


def test_caches_of_several_corpora_in_one_working_dir_add_up(tmp_path):
    audio.build_feature_cache(SAMPLES / "LibriSpeech" / "test-other", tmp_path, workers=1, progress=False)
    audio.build_feature_cache(SHARED_DATA / "VCTK", tmp_path, workers=2, progress=False)
    index = json.loads((tmp_path / "corpus.json").read_text())
    assert sorted(index["speakers"], key=audio.natural_key) == ["1688", "1998", "p225", "p226", "p227", "p228"]
    assert index["genders"]["1998"] == "F" and index["genders"]["p226"] == "M"
    assert len(index["audio_dirs"]) == 2


def two_corpora_with_one_name(tmp_path: Path) -> tuple[Path, Path]:
    """Two corpora, each with speaker `alice` and utterance `take`, recorded from different audio."""
    first, second = tmp_path / "first" / "alice" / "take.flac", tmp_path / "second" / "alice" / "take.wav"
    for path, source in ((first, LIBRI_1255), (second, PHILIPPE_001)):
        path.parent.mkdir(parents=True)
        shutil.copy(source, path)
    return first, second


def test_a_cache_entry_of_another_corpus_with_the_same_names_is_refused_naming_both_files(tmp_path):
    first, second = two_corpora_with_one_name(tmp_path)
    audio.build_feature_cache(tmp_path / "first", tmp_path / "work", workers=1, progress=False)
    assert json.loads((tmp_path / "work" / "corpus.json").read_text())["sources"] == {"alice_take.npy": str(first.resolve())}
    with pytest.raises(CorpusError, match="alice_take.npy") as refused:
        audio.build_feature_cache(tmp_path / "second", tmp_path / "work", workers=1, progress=False)
    assert str(first.resolve()) in str(refused.value) and str(second.resolve()) in str(refused.value)
    assert "--working_dir" in str(refused.value)
    np.testing.assert_array_equal(np.load(tmp_path / "work" / "audio-fbanks" / "alice_take.npy"), audio.read_mfcc(first))
    again = audio.build_feature_cache(tmp_path / "first", tmp_path / "work", workers=1, progress=False)
    assert again.skipped_existing == 1  # The corpus the entry came from resumes as before.


def test_cache_entries_recorded_without_their_source_are_reused_as_before(tmp_path):
    _, second = two_corpora_with_one_name(tmp_path)
    audio.build_feature_cache(tmp_path / "first", tmp_path / "work", workers=1, progress=False)
    index_file = tmp_path / "work" / "corpus.json"
    index_file.write_text(json.dumps({k: v for k, v in json.loads(index_file.read_text()).items() if k != "sources"}))  # As older code wrote it.
    report = audio.build_feature_cache(tmp_path / "second", tmp_path / "work", workers=1, progress=False)
    assert (report.written, report.skipped_existing) == (0, 1)
    assert "alice_take.npy" not in json.loads(index_file.read_text())["sources"]  # Its source is not known, so none is guessed.


def test_reading_a_missing_corpus_index_says_which_command_to_run(tmp_path):
    with pytest.raises(CorpusError, match="build-mfcc-cache"):
        audio.read_corpus_index(tmp_path)


# ---------------------------------------------------------------------------------------------- more formats, speaker tables, front ends

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


def test_a_corpus_speakers_tsv_gives_genders_of_a_speaker_folder_corpus():
    corpus = audio.index_corpus(CV_SAMPLES)
    assert corpus.speakers == ["00243bfe", "0874d76d", "fbc91278"]
    assert corpus.genders == {"00243bfe": "M", "fbc91278": "F"}  # 0874d76d has no label.
    assert all(u.path.suffix == ".mp3" for u in corpus.utterances)


def test_a_genders_file_adds_labels_and_wins_over_the_corpus_table(tmp_path):
    table = tmp_path / "genders.csv"
    table.write_text("speaker,gender\n0874d76d,female\nfbc91278,M\n")
    corpus = audio.index_corpus(CV_SAMPLES, genders_file=table)
    assert corpus.genders == {"00243bfe": "M", "0874d76d": "F", "fbc91278": "M"}


def test_gender_tables_whose_values_are_words_read_as_labels(tmp_path):
    table = tmp_path / "people.tsv"
    table.write_text("speaker\tgender\n0874d76d\tFemale\n00243bfe\tMALE\nfbc91278\t\n")  # Words in any case; an empty cell is no label.
    assert audio.read_gender_labels(table) == {"0874d76d": "F", "00243bfe": "M"}
    corpus = audio.index_corpus(CV_SAMPLES, genders_file=table)
    assert corpus.genders == {"0874d76d": "F", "00243bfe": "M", "fbc91278": "F"}  # The corpus's own F stays where the file gives none.
    vctk = tmp_path / "speaker-info.txt"
    vctk.write_text("ID  AGE  GENDER  ACCENTS  REGION\n225  23  female  English  Southern England\n226  22  Male  English  Surrey\n")
    assert audio.read_gender_labels(vctk) == {"p225": "F", "p226": "M"}
    emodb = audio.index_corpus(SHARED_DATA / "EmoDB")  # Its speakers.tsv: M and F, with ages.
    assert sorted(emodb.genders.items()) == [("03", "M"), ("08", "F"), ("09", "F"), ("10", "M"), ("11", "M"), ("12", "M"), ("13", "F"), ("14", "F"),
                                             ("15", "M"), ("16", "F")]


@pytest.mark.parametrize("kind", ["table", "vctk"])
def test_a_gender_that_is_no_label_is_refused_naming_the_file_line_and_speaker(tmp_path, kind):
    if kind == "table":
        path = tmp_path / "people.csv"
        path.write_text("speaker,gender\nx,M\ny,unknown\n")
        where = "people.csv, line 3 (speaker y)"
    else:
        path = tmp_path / "speaker-info.txt"
        path.write_text("ID  AGE  GENDER  ACCENTS  REGION\n225  23  F  English  Southern England\n226  22  unknown  English  Surrey\n")
        where = "speaker-info.txt, line 3 (speaker p226)"
    with pytest.raises(CorpusError, match=f"{where.replace('(', r'[(]').replace(')', r'[)]')}: gender 'unknown' is none of M, F, male, female"):
        audio.read_gender_labels(path)


def test_a_speaker_table_without_gender_column_is_refused_naming_it(tmp_path):
    table = tmp_path / "people.tsv"
    table.write_text("speaker\tage\nx\t30\n")
    with pytest.raises(CorpusError, match="people.tsv.*'speaker' and 'gender'"):
        audio.read_gender_labels(table)


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


def test_mp3_corpus_and_its_waveforms_go_through_the_cache(tmp_path):
    report = audio.build_feature_cache(CV_SAMPLES, tmp_path, workers=1, progress=False, waveform_trim="energy")
    assert report.failed == [] and report.written == 12
    index = json.loads((tmp_path / "corpus.json").read_text())
    assert index["genders"] == {"00243bfe": "M", "fbc91278": "F"}
    waveform = np.load(audio.waveform_cache_dir(tmp_path, "energy") / f"fbc91278_{CV_CLIP.stem}.npy")
    assert waveform.dtype == np.float16
    np.testing.assert_allclose(waveform, audio.trim(audio.read_audio(CV_CLIP), "energy"), atol=1e-3)
    again = audio.build_feature_cache(CV_SAMPLES, tmp_path, workers=1, progress=False, waveform_trim="energy")
    assert again.written == 0 and again.skipped_existing == 12


def test_a_cache_entry_read_with_another_trim_has_the_features_its_audio_gets_with_that_trim(tmp_path):
    """The cache keeps the reference trim; the energy trim of an entry comes from its audio, else from the
    energy-trimmed waveform cache, else it is refused naming the entry."""
    speaker_dir = tmp_path / "corpus" / "fbc91278"
    shutil.copytree(CV_SAMPLES / "fbc91278", speaker_dir)
    work = tmp_path / "work"
    audio.build_feature_cache(speaker_dir.parent, work, workers=1, progress=False, waveform_trim="energy")
    for clip in sorted(speaker_dir.glob("*.mp3")):
        entry = audio.cache_dir(work) / f"fbc91278_{clip.stem}.npy"
        energy = audio.read_mfcc(clip, trim_mode="energy")
        np.testing.assert_array_equal(audio.entry_features(entry), np.load(entry))
        np.testing.assert_array_equal(audio.entry_features(entry, "energy"), energy)
        assert len(energy) > len(np.load(entry))  # The energy trim keeps quiet edges the reference trim cuts.
    clip.unlink()  # The audio is gone: the energy-trimmed waveform the cache kept (float16) gives the features.
    np.testing.assert_allclose(audio.entry_features(entry, "energy"), energy, atol=0.02)  # Measured: under 0.01 on every bundled clip.
    (audio.waveform_cache_dir(work, "energy") / entry.name).unlink()
    with pytest.raises(AudioError, match=f"{entry.name}: cached with the reference trim; the energy trim needs its audio, but its audio .* is missing"):
        audio.entry_features(entry, "energy")
