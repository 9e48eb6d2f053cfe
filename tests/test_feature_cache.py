"""feature_cache.py: cache entries, their corpus.json, resuming, several corpora and other trims, on real recordings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from audio import AudioError, mfcc_from_samples, read_audio, read_mfcc, trim
from constants import SAMPLE_RATE
from corpus import CorpusError, natural_key
from encoded_audio import encode
from feature_cache import build_feature_cache, cache_dir, entry_features, read_corpus_index, waveform_cache_dir

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
SHARED_DATA = REPO.parent / "shared" / "data"
PHILIPPE_001 = SAMPLES / "PhilippeRemy" / "PhilippeRemy_001.wav"  # 48 kHz WAV
LIBRI_1255 = SAMPLES / "1255-90413-0001.flac"  # 16 kHz FLAC
CV_SAMPLES = SAMPLES / "CommonVoice-fa"
CV_CLIP = next((CV_SAMPLES / "fbc91278").glob("*.mp3"))  # 32 kHz MP3


def test_cache_build_writes_reference_named_entries_and_corpus_index(tmp_path):
    report = build_feature_cache(SAMPLES / "LibriSpeech", tmp_path, workers=2, progress=False)
    entries = sorted(p.name for p in (tmp_path / "audio-fbanks").iterdir())
    assert report.written == 32 and not report.failed
    assert len(entries) == 32 and "19_198-0000.npy" in entries
    np.testing.assert_array_equal(
        np.load(tmp_path / "audio-fbanks" / "19_198-0000.npy"),
        read_mfcc(SAMPLES / "LibriSpeech/train-clean-100/19/198/19-198-0000.flac"),
    )
    index = json.loads((tmp_path / "corpus.json").read_text())
    assert index["genders"]["19"] == "F"
    assert index["speakers"]["27"][0] == "124992-0016"


def test_cache_build_resumes_keeping_existing_entries(tmp_path):
    build_feature_cache(SAMPLES / "LibriSpeech", tmp_path, workers=1, progress=False)
    removed = tmp_path / "audio-fbanks" / "26_495-0007.npy"
    removed.unlink()
    kept = tmp_path / "audio-fbanks" / "19_198-0000.npy"
    kept_mtime = kept.stat().st_mtime_ns
    report = build_feature_cache(SAMPLES / "LibriSpeech", tmp_path, workers=1, progress=False)
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
    soundfile.write(corpus / "bob" / "silent.wav", np.zeros(8000, dtype=np.float32), SAMPLE_RATE)
    (corpus / "bob" / "corrupt.flac").write_bytes(b"fLaC" + bytes(500))
    report = build_feature_cache(corpus, tmp_path / "work", workers=2, progress=False)
    assert report.written == 2
    assert sorted(Path(path).name for path, _ in report.failed) == ["corrupt.flac", "empty.wav", "silent.wav"]
    assert "silent.wav: the audio is silent" in report.summary()
    assert sorted(p.name for p in (tmp_path / "work" / "audio-fbanks").iterdir()) == ["alice_good.npy", "alice_good2.npy"]
    assert json.loads((tmp_path / "work" / "corpus.json").read_text())["speakers"] == {"alice": ["good", "good2"]}


def test_caches_of_several_corpora_in_one_working_dir_add_up(tmp_path):
    build_feature_cache(SAMPLES / "LibriSpeech" / "test-other", tmp_path, workers=1, progress=False)
    build_feature_cache(SHARED_DATA / "VCTK", tmp_path, workers=2, progress=False)
    index = json.loads((tmp_path / "corpus.json").read_text())
    assert sorted(index["speakers"], key=natural_key) == ["1688", "1998", "p225", "p226", "p227", "p228"]
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
    build_feature_cache(tmp_path / "first", tmp_path / "work", workers=1, progress=False)
    assert json.loads((tmp_path / "work" / "corpus.json").read_text())["sources"] == {"alice_take.npy": str(first.resolve())}
    with pytest.raises(CorpusError, match="alice_take.npy") as refused:
        build_feature_cache(tmp_path / "second", tmp_path / "work", workers=1, progress=False)
    assert str(first.resolve()) in str(refused.value) and str(second.resolve()) in str(refused.value)
    assert "--working_dir" in str(refused.value)
    np.testing.assert_array_equal(np.load(tmp_path / "work" / "audio-fbanks" / "alice_take.npy"), read_mfcc(first))
    again = build_feature_cache(tmp_path / "first", tmp_path / "work", workers=1, progress=False)
    assert again.skipped_existing == 1  # The corpus the entry came from resumes as before.


def test_cache_entries_recorded_without_their_source_are_reused_as_before(tmp_path):
    _, second = two_corpora_with_one_name(tmp_path)
    build_feature_cache(tmp_path / "first", tmp_path / "work", workers=1, progress=False)
    index_file = tmp_path / "work" / "corpus.json"
    index_file.write_text(json.dumps({k: v for k, v in json.loads(index_file.read_text()).items() if k != "sources"}))  # As older code wrote it.
    report = build_feature_cache(tmp_path / "second", tmp_path / "work", workers=1, progress=False)
    assert (report.written, report.skipped_existing) == (0, 1)
    assert "alice_take.npy" not in json.loads(index_file.read_text())["sources"]  # Its source is not known, so none is guessed.


def test_reading_a_missing_corpus_index_says_which_command_to_run(tmp_path):
    with pytest.raises(CorpusError, match="build-mfcc-cache"):
        read_corpus_index(tmp_path)

def test_mp3_corpus_and_its_waveforms_go_through_the_cache(tmp_path):
    report = build_feature_cache(CV_SAMPLES, tmp_path, workers=1, progress=False, waveform_trim="energy")
    assert report.failed == [] and report.written == 12
    index = json.loads((tmp_path / "corpus.json").read_text())
    assert index["genders"] == {"00243bfe": "M", "fbc91278": "F"}
    waveform = np.load(waveform_cache_dir(tmp_path, "energy") / f"fbc91278_{CV_CLIP.stem}.npy")
    assert waveform.dtype == np.float16
    np.testing.assert_allclose(waveform, trim(read_audio(CV_CLIP), "energy"), atol=1e-3)
    again = build_feature_cache(CV_SAMPLES, tmp_path, workers=1, progress=False, waveform_trim="energy")
    assert again.written == 0 and again.skipped_existing == 12


def test_a_cache_entry_read_with_another_trim_has_the_features_its_audio_gets_with_that_trim(tmp_path):
    """The cache keeps the reference trim; the energy trim of an entry comes from its audio, else from the
    energy-trimmed waveform cache, else it is refused naming the entry."""
    speaker_dir = tmp_path / "corpus" / "fbc91278"
    shutil.copytree(CV_SAMPLES / "fbc91278", speaker_dir)
    work = tmp_path / "work"
    build_feature_cache(speaker_dir.parent, work, workers=1, progress=False, waveform_trim="energy")
    for clip in sorted(speaker_dir.glob("*.mp3")):
        entry = cache_dir(work) / f"fbc91278_{clip.stem}.npy"
        energy = read_mfcc(clip, trim_mode="energy")
        np.testing.assert_array_equal(entry_features(entry), np.load(entry))
        np.testing.assert_array_equal(entry_features(entry, "energy"), energy)
        assert len(energy) > len(np.load(entry))  # The energy trim keeps quiet edges the reference trim cuts.
    clip.unlink()  # The audio is gone: the energy-trimmed waveform the cache kept (float16) gives the features.
    np.testing.assert_allclose(entry_features(entry, "energy"), energy, atol=0.02)  # Measured: under 0.01 on every bundled clip.
    (waveform_cache_dir(work, "energy") / entry.name).unlink()
    with pytest.raises(AudioError, match=f"{entry.name}: cached with the reference trim; the energy trim needs its audio, but its audio .* is missing"):
        entry_features(entry, "energy")


# ---------------------------------------------------------------------------------------------- VoxCeleb2 M4A, Kaldi segments


def test_a_voxceleb2_m4a_corpus_is_cached_under_its_id_folders(tmp_path):
    """VoxCeleb2 `dev/aac/<id>/<video>/<n>.m4a` (AAC, 16 kHz), encoded here from LibriSpeech test-other."""
    for speaker, source in (("id00012", "1688"), ("id00015", "1998")):
        for index, path in enumerate(sorted((SAMPLES / "LibriSpeech" / "test-other" / source).rglob("*.flac"))[:2], start=1):
            target = tmp_path / "vox2" / "dev" / "aac" / speaker / "21Uxsk56VDQ" / f"{index:05d}.m4a"
            target.parent.mkdir(parents=True, exist_ok=True)
            encode(path, target, "aac", 64_000)
    (tmp_path / "vox2" / "vox2_meta.csv").write_text("VoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set \nid00012 ,n000012 ,m ,dev \nid00015 ,n000015 ,f ,dev \n")
    report = build_feature_cache(tmp_path / "vox2", tmp_path / "work", workers=1, progress=False)
    assert (report.written, report.failed) == (4, [])
    assert json.loads((tmp_path / "work" / "corpus.json").read_text())["genders"] == {"id00012": "M", "id00015": "F"}
    assert json.loads((tmp_path / "work" / "corpus.json").read_text())["speakers"] == {
        "id00012": ["21Uxsk56VDQ-00001", "21Uxsk56VDQ-00002"], "id00015": ["21Uxsk56VDQ-00001", "21Uxsk56VDQ-00002"]}
    m4a = tmp_path / "vox2" / "dev" / "aac" / "id00015" / "21Uxsk56VDQ" / "00002.m4a"
    np.testing.assert_array_equal(np.load(cache_dir(tmp_path / "work") / "id00015_21Uxsk56VDQ-00002.npy"), read_mfcc(m4a))


def test_kaldi_segments_are_cached_as_the_features_of_their_span(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text(f"rec1 {LIBRI_1255}\nrec2 {PHILIPPE_001}\n")
    (data / "segments").write_text("rec1-a rec1 0.5 2.25\nrec1-b rec1 3 -1\nrec1-c rec1 60 61\nrec2-a rec2 1 4\n")
    (data / "utt2spk").write_text("rec1-a 1255\nrec1-b 1255\nrec1-c 1255\nrec2-a philippe\n")
    report = build_feature_cache(data, tmp_path / "work", workers=1, progress=False, waveform_trim="energy")
    assert report.written == 3
    assert report.failed == [(f"{LIBRI_1255} (60-61 s)", "the segment 60-61 s starts after the end of the recording (6.49 s)")]
    index = json.loads((tmp_path / "work" / "corpus.json").read_text())
    assert index["speakers"] == {"1255": ["rec1-a", "rec1-b"], "philippe": ["rec2-a"]}  # The recording's other segments are kept.
    assert index["segments"] == {"1255_rec1-a.npy": [0.5, 2.25], "1255_rec1-b.npy": [3.0, None], "philippe_rec2-a.npy": [1.0, 4.0]}
    for entry, path, segment in (("1255_rec1-a", LIBRI_1255, (0.5, 2.25)), ("1255_rec1-b", LIBRI_1255, (3.0, None)), ("philippe_rec2-a", PHILIPPE_001, (1.0, 4.0))):
        span = read_audio(path, segment=segment)
        np.testing.assert_array_equal(np.load(cache_dir(tmp_path / "work") / f"{entry}.npy"), mfcc_from_samples(span))
        np.testing.assert_array_equal(entry_features(cache_dir(tmp_path / "work") / f"{entry}.npy", "energy"), mfcc_from_samples(span, trim_mode="energy"))
    assert len(read_audio(PHILIPPE_001, segment=(1.0, 4.0))) == 3 * SAMPLE_RATE
