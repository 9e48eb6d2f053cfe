"""corpus.py: which files a corpus folder holds, their speakers and the speakers' genders, on real corpora."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from corpus import CorpusError, index_corpus, read_gender_labels

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
SHARED_DATA = REPO.parent / "shared" / "data"
LIBRI_1255 = SAMPLES / "1255-90413-0001.flac"  # 16 kHz FLAC
CV_SAMPLES = SAMPLES / "CommonVoice-fa"


def test_librispeech_index_names_speakers_utterances_and_genders():
    corpus = index_corpus(SAMPLES / "LibriSpeech")
    assert corpus.speakers == ["19", "26", "27", "1688", "1998"]
    by_speaker = corpus.utterances_by_speaker()
    assert len(by_speaker["19"]) == 8
    first = by_speaker["19"][0]
    assert (first.speaker, first.utterance, first.cache_name) == ("19", "198-0000", "19_198-0000.npy")
    assert corpus.genders == {"19": "F", "26": "M", "27": "M", "1688": "M", "1998": "F"}


def test_librispeech_subset_folder_finds_speakers_txt_in_its_parent():
    corpus = index_corpus(SHARED_DATA / "LibriSpeech" / "test-other")
    assert len(corpus.speakers) == 10
    assert set(corpus.genders) == set(corpus.speakers)


def test_plain_layout_uses_the_first_folder_as_speaker_and_reads_vctk_genders():
    corpus = index_corpus(SHARED_DATA / "VCTK")
    assert corpus.speakers == ["p225", "p226", "p227", "p228"]
    assert corpus.genders == {"p225": "F", "p226": "M", "p227": "M", "p228": "F"}
    assert all(u.path.suffix == ".wav" for u in corpus.utterances)


def test_plain_layout_names_nested_utterances_uniquely(tmp_path):
    for relative in ["alice/day1/take.wav", "alice/day2/take.wav", "bob/take.flac"]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(LIBRI_1255, (tmp_path / relative).with_suffix(".flac") if relative.endswith("flac") else tmp_path / relative)
    corpus = index_corpus(tmp_path)
    assert sorted(u.cache_name for u in corpus.utterances) == ["alice_day1-take.npy", "alice_day2-take.npy", "bob_take.npy"]
    assert corpus.genders == {}


def test_index_of_a_folder_without_audio_says_so(tmp_path):
    (tmp_path / "readme.txt").write_text("no audio here")
    with pytest.raises(CorpusError, match="no FLAC/WAV/MP3/OGG files"):
        index_corpus(tmp_path)


def test_index_of_a_missing_folder_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such audio directory"):
        index_corpus(tmp_path / "absent")

def test_a_corpus_speakers_tsv_gives_genders_of_a_speaker_folder_corpus():
    corpus = index_corpus(CV_SAMPLES)
    assert corpus.speakers == ["00243bfe", "0874d76d", "fbc91278"]
    assert corpus.genders == {"00243bfe": "M", "fbc91278": "F"}  # 0874d76d has no label.
    assert all(u.path.suffix == ".mp3" for u in corpus.utterances)


def test_a_genders_file_adds_labels_and_wins_over_the_corpus_table(tmp_path):
    table = tmp_path / "genders.csv"
    table.write_text("speaker,gender\n0874d76d,female\nfbc91278,M\n")
    corpus = index_corpus(CV_SAMPLES, genders_file=table)
    assert corpus.genders == {"00243bfe": "M", "0874d76d": "F", "fbc91278": "M"}


def test_gender_tables_whose_values_are_words_read_as_labels(tmp_path):
    table = tmp_path / "people.tsv"
    table.write_text("speaker\tgender\n0874d76d\tFemale\n00243bfe\tMALE\nfbc91278\t\n")  # Words in any case; an empty cell is no label.
    assert read_gender_labels(table) == {"0874d76d": "F", "00243bfe": "M"}
    corpus = index_corpus(CV_SAMPLES, genders_file=table)
    assert corpus.genders == {"0874d76d": "F", "00243bfe": "M", "fbc91278": "F"}  # The corpus's own F stays where the file gives none.
    vctk = tmp_path / "speaker-info.txt"
    vctk.write_text("ID  AGE  GENDER  ACCENTS  REGION\n225  23  female  English  Southern England\n226  22  Male  English  Surrey\n")
    assert read_gender_labels(vctk) == {"p225": "F", "p226": "M"}
    emodb = index_corpus(SHARED_DATA / "EmoDB")  # Its speakers.tsv: M and F, with ages.
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
        read_gender_labels(path)


def test_a_speaker_table_without_gender_column_is_refused_naming_it(tmp_path):
    table = tmp_path / "people.tsv"
    table.write_text("speaker\tage\nx\t30\n")
    with pytest.raises(CorpusError, match="people.tsv.*'speaker' and 'gender'"):
        read_gender_labels(table)
