"""corpus.py: which files a corpus folder holds, their speakers and the speakers' genders, on real corpora."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from corpus import CorpusError, index_corpus, natural_key, read_gender_labels

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
    with pytest.raises(CorpusError, match="no FLAC/WAV/MP3/OGG/M4A/AAC/OPUS/WEBM files"):
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


# ---------------------------------------------------------------------------------------------- VoxCeleb, CN-Celeb


VCTK = SHARED_DATA / "VCTK"


def link(target: Path, source: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source)
    return target


def test_voxceleb_speakers_are_the_id_folders_and_utterances_name_the_video(tmp_path):
    """VoxCeleb1 `wav/<id>/<video>/<n>.wav`, indexed from its `wav/` folder or from above it."""
    for speaker, source in (("id10001", "p225"), ("id10002", "p226")):
        for video, path in zip(("1zcIwhmdeo4", "7gWzIy6yIIk"), sorted((VCTK / source).glob("*.wav"))):
            link(tmp_path / "vox1" / "wav" / speaker / video / "00001.wav", path)
    (tmp_path / "vox1" / "vox1_meta.csv").write_text("VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
                                                     "id10001\tA.J._Buckley\tm\tIreland\tdev\nid10002\tA.R._Rahman\tm\tIndia\tdev\n")
    for root in (tmp_path / "vox1" / "wav", tmp_path / "vox1"):
        corpus = index_corpus(root)
        assert corpus.speakers == ["id10001", "id10002"]
        assert corpus.genders == {"id10001": "M", "id10002": "M"}  # From VoxCeleb's own meta file, beside wav/.
        assert sorted(u.cache_name for u in corpus.utterances) == [
            "id10001_1zcIwhmdeo4-00001.npy", "id10001_7gWzIy6yIIk-00001.npy", "id10002_1zcIwhmdeo4-00001.npy", "id10002_7gWzIy6yIIk-00001.npy"]


def test_cn_celeb_data_and_eval_folders_name_the_speaker_of_every_file(tmp_path):
    """CN-Celeb: `data/<id>/<genre>-<session>-<n>.flac`; its `eval/enroll/<id>-enroll.flac` and `eval/test/<id>-<genre>-<session>-<n>.flac`."""
    flacs = sorted((SAMPLES / "LibriSpeech" / "test-other").rglob("*.flac"))
    link(tmp_path / "CN-Celeb" / "data" / "id00000" / "singing-01-001.flac", flacs[0])
    link(tmp_path / "CN-Celeb" / "data" / "id00000" / "interview-02-003.flac", flacs[1])
    link(tmp_path / "CN-Celeb" / "data" / "id00001" / "vlog-01-001.flac", flacs[4])
    link(tmp_path / "CN-Celeb" / "eval" / "enroll" / "id00800-enroll.flac", flacs[2])
    link(tmp_path / "CN-Celeb" / "eval" / "test" / "id00800-singing-01-001.flac", flacs[3])
    link(tmp_path / "CN-Celeb" / "eval" / "test" / "id00801-drama-01-002.flac", flacs[5])
    data = index_corpus(tmp_path / "CN-Celeb" / "data")
    assert {s: [u.utterance for u in us] for s, us in data.utterances_by_speaker().items()} == {
        "id00000": ["interview-02-003", "singing-01-001"], "id00001": ["vlog-01-001"]}
    evaluation = index_corpus(tmp_path / "CN-Celeb" / "eval")
    assert {s: [u.utterance for u in us] for s, us in evaluation.utterances_by_speaker().items()} == {
        "id00800": ["enroll", "singing-01-001"], "id00801": ["drama-01-002"]}


# ---------------------------------------------------------------------------------------------- Kaldi data directories


def kaldi_dir(root: Path, **tables: str) -> Path:
    """A Kaldi data directory with the given files (wav_scp= writes wav.scp)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, text in tables.items():
        (root / ("wav.scp" if name == "wav_scp" else name)).write_text(text)
    return root


P225, P226 = sorted((VCTK / "p225").glob("*.wav"))[:2], sorted((VCTK / "p226").glob("*.wav"))[:2]
KALDI_SCP = "".join(f"{path.stem} {path}\n" for path in (*P225, *P226))


@pytest.mark.parametrize("speakers_file", ["utt2spk", "spk2utt"])
def test_a_kaldi_dir_gives_speakers_from_utt2spk_or_spk2utt_and_genders_from_spk2gender(tmp_path, speakers_file):
    tables = {"utt2spk": "".join(f"{p.stem} {p.parent.name}\n" for p in (*P225, *P226)),
              "spk2utt": f"p225 {P225[0].stem} {P225[1].stem}\np226 {P226[0].stem} {P226[1].stem}\n"}
    root = kaldi_dir(tmp_path / "data" / "train", wav_scp=KALDI_SCP, spk2gender="p225 f\np226 m\n", **{speakers_file: tables[speakers_file]})
    corpus = index_corpus(root)
    assert corpus.speakers == ["p225", "p226"]
    assert corpus.genders == {"p225": "F", "p226": "M"}
    assert {u.cache_name: u.path for u in corpus.utterances} == {f"{p.parent.name}_{p.stem}.npy": p for p in (*P225, *P226)}
    assert all(u.segment is None for u in corpus.utterances)


def test_kaldi_segments_make_utterances_that_are_spans_of_a_recording(tmp_path):
    root = kaldi_dir(tmp_path / "data", wav_scp=f"rec1 {LIBRI_1255}\n",
                     segments="rec1-a rec1 0.50 2.25\nrec1-b rec1 3 -1\n", utt2spk="rec1-a 1255\nrec1-b 1255\n")
    corpus = index_corpus(root)
    assert [(u.utterance, u.path, u.segment) for u in corpus.utterances] == [("rec1-a", LIBRI_1255, (0.5, 2.25)), ("rec1-b", LIBRI_1255, (3.0, None))]


def test_relative_wav_scp_paths_are_read_from_the_data_dir_when_not_from_the_current_folder(tmp_path):
    link(tmp_path / "data" / "audio" / "one.flac", LIBRI_1255)
    root = kaldi_dir(tmp_path / "data", wav_scp="one audio/one.flac\n", utt2spk="one spk\n")
    assert index_corpus(root).utterances[0].path == root / "audio" / "one.flac"


@pytest.mark.parametrize(
    "tables, problem",
    [
        ({"wav_scp": f"a {P225[0]}\nb sox {P225[1]} -t wav - |\n", "utt2spk": "a p225\nb p225\n"},
         r"wav\.scp, line 2: 'b' is read through a command .*only plain audio paths"),
        ({"wav_scp": f"a {P225[0]}\n"}, "needs utt2spk or spk2utt"),
        ({"wav_scp": f"a {P225[0]}\nb {P225[1]}\n", "utt2spk": "a p225\n"}, "1 utterances have no speaker in utt2spk/spk2utt, e.g. 'b'"),
        ({"wav_scp": f"a {P225[0]}\n", "utt2spk": "a-1 p225\n", "segments": "a-1 x 0 1\n"}, r"segments, line 1: recording 'x' of 'a-1' is not in wav\.scp"),
        ({"wav_scp": f"a {P225[0]}\n", "utt2spk": "a-1 p225\n", "segments": "a-1 a 2 1\n"}, r"segments, line 1: 'a-1' spans 2 to 1 s"),
        ({"wav_scp": f"a {P225[0]}\n", "utt2spk": "a p225\n", "spk2gender": "p225 x\n"}, r"spk2gender, line 1 \(speaker p225\): gender 'x'"),
        ({"wav_scp": f"a {P225[0]}\n", "utt2spk": "a p225\nb p225\n"}, r"utt2spk, line 2: utterance 'b' is not in wav\.scp \(1 of its 2 utterances are not\)"),
        ({"wav_scp": f"a {P225[0]}\n", "spk2utt": "p225 a-1 a-2\n", "segments": "a-1 a 0 1\n"}, r"spk2utt, line 1: utterance 'a-2' is not in segments"),
        ({"wav_scp": f"a {P225[0]}\nb /absent/b.wav\n", "utt2spk": "a p225\nb p225\n"},
         r"wav\.scp, line 2: the audio file of 'b' does not exist: /absent/b\.wav \(1 of the 2 recordings are missing\)$"),
        ({"wav_scp": "a audio/a.flac\n", "utt2spk": "a p225\n"},
         r"wav\.scp, line 1: the audio file of 'a' does not exist: audio/a\.flac \(a relative path is read from the current folder .*, else from .*data\)"),
    ],
    ids=["piped-command", "no-speakers", "utterance-without-speaker", "unknown-recording", "end-before-start", "bad-gender",
         "speaker-table-utterance-not-in-wav-scp", "speaker-table-utterance-not-in-segments", "missing-audio", "missing-relative-audio"],
)
def test_a_broken_kaldi_dir_is_refused_naming_the_file_and_the_problem(tmp_path, tables, problem):
    with pytest.raises(CorpusError, match=problem) as refused:
        index_corpus(kaldi_dir(tmp_path / "data", **tables))
    assert str(tmp_path / "data") in str(refused.value) and "\n" not in str(refused.value)


def test_natural_key_is_the_written_out_formula_and_orders_numbers_by_value():
    """Digit runs as numbers at the odd places of the split: the same key as converting every part that is digits."""
    names = ["a10", "a2", "a02", "id10001_v00-00005.npy", "19-198-0001", "", "7", "x", "v1.2.10", "٣٤b", "a1-2", "a1", "b²"]
    for name in names:
        written_out = [int(part) if part.isdecimal() else part for part in re.split(r"(\d+)", name)]
        assert natural_key(name) == written_out
    assert sorted(["a10", "a9", "a1", "b"], key=natural_key) == ["a1", "a9", "a10", "b"]
