"""trials.py: trial lists from real corpora (LibriSpeech sample, VCTK sample), their text format, scoring."""

from __future__ import annotations

import os
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from corpus import Corpus, index_corpus
from trials import Trial, count_pairs, generate_trials, read_published_trials, read_trials, score_trials, write_trials

REPO = Path(__file__).resolve().parents[1]
LIBRI_TEST_OTHER = REPO / "samples" / "LibriSpeech" / "test-other"  # 2 speakers x 4 utterances.
VCTK = REPO.parent / "shared" / "data" / "VCTK"  # 4 speakers x 10 utterances.


@pytest.fixture(scope="module")
def libri() -> Corpus:
    return index_corpus(LIBRI_TEST_OTHER)


@pytest.fixture(scope="module")
def vctk() -> Corpus:
    return index_corpus(VCTK)


def speaker_of(corpus: Corpus) -> dict[Path, str]:
    return {u.path: u.speaker for u in corpus.utterances}


def pair_set(trials: list[Trial]) -> set[frozenset[Path]]:
    return {frozenset((t.path1, t.path2)) for t in trials}


# ----------------------------------------------------------------------------------------------
# Generation.


def test_all_pairs_of_librispeech_sample_counted_by_hand(libri):
    # 2 speakers x 4 utterances: same-speaker 2 * C(4, 2) = 12; different-speaker 4 * 4 = 16.
    trials = generate_trials(libri, None)
    assert count_pairs(libri) == (12, 16)
    assert len(trials) == 28
    assert sum(t.label for t in trials) == 12
    assert len(pair_set(trials)) == 28


def test_all_pairs_of_vctk_sample_counted_by_hand(vctk):
    # 4 speakers x 10 utterances: same-speaker 4 * C(10, 2) = 180; different-speaker C(4, 2) * 10 * 10 = 600.
    trials = generate_trials(vctk, None)
    assert len(trials) == 780
    assert sum(t.label for t in trials) == 180
    assert pair_set(trials) == {frozenset(pair) for pair in combinations([u.path for u in vctk.utterances], 2)}


@pytest.mark.parametrize("corpus_name", ["libri", "vctk"])
def test_label_is_one_exactly_when_both_files_are_of_one_speaker(corpus_name, request):
    corpus = request.getfixturevalue(corpus_name)
    speaker = speaker_of(corpus)
    for trial in generate_trials(corpus, None):
        assert trial.label == int(speaker[trial.path1] == speaker[trial.path2])
        assert trial.path1 != trial.path2


def test_sampled_trials_are_half_same_speaker_distinct_and_correctly_labelled(vctk):
    speaker = speaker_of(vctk)
    trials = generate_trials(vctk, 101, seed=7)
    assert len(trials) == 101
    assert sum(t.label for t in trials) == 50  # num_trials // 2 same-speaker, the odd one different.
    assert len(pair_set(trials)) == 101
    assert all(t.path1 != t.path2 for t in trials)
    assert all(t.label == int(speaker[t.path1] == speaker[t.path2]) for t in trials)


def test_sampling_is_seeded(vctk):
    assert generate_trials(vctk, 200, seed=3) == generate_trials(vctk, 200, seed=3)
    assert generate_trials(vctk, 200, seed=3) != generate_trials(vctk, 200, seed=4)


def test_asking_for_every_same_speaker_pair_gives_exactly_them(vctk):
    everything = generate_trials(vctk, None)
    sampled = generate_trials(vctk, 360, seed=0)  # 180 same-speaker: all of them.
    assert pair_set([t for t in sampled if t.label]) == pair_set([t for t in everything if t.label])


def test_trials_use_only_the_speakers_given(vctk):
    held_out = {s: u for s, u in vctk.utterances_by_speaker().items() if s in ("p226", "p228")}
    allowed = {u.path for utterances in held_out.values() for u in utterances}
    trials = generate_trials(held_out, None)
    assert {p for t in trials for p in (t.path1, t.path2)} == allowed
    assert len(trials) == 2 * 45 + 100


def test_a_mapping_of_plain_paths_works_like_the_corpus(libri):
    mapping = {s: [str(u.path) for u in utts] for s, utts in libri.utterances_by_speaker().items()}
    assert generate_trials(mapping, 10, seed=1) == generate_trials(libri, 10, seed=1)


def test_sampling_a_librispeech_sized_speaker_set_does_not_enumerate_pairs():
    # 1,000 speakers x 100 files: ~5e9 different-speaker pairs, far too many to list.
    mapping = {f"s{k}": [f"/audio/s{k}/{u}.flac" for u in range(100)] for k in range(1_000)}
    assert count_pairs(mapping) == (1_000 * 4_950, 100 * 100 * 1_000 * 999 // 2)
    trials = generate_trials(mapping, 10_000, seed=0)
    assert len(pair_set(trials)) == 10_000 and sum(t.label for t in trials) == 5_000
    assert all(t.label == int(t.path1.parent == t.path2.parent) for t in trials)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"p225": ["a.wav", "b.wav"]}, r"at least 2 speakers, found only 'p225'"),
        ({}, "at least 2 speakers, found none"),
        ({"a": ["a1.wav"], "b": ["b1.wav"], "c": []}, "a speaker with at least 2 utterances"),
        ({"a": ["x.wav", "y.wav"], "b": ["x.wav"]}, "listed under two speakers"),
        ({"a": "a1.wav", "b": ["b1.wav"]}, "expected a list of utterance paths"),
    ],
)
def test_impossible_requests_say_what_is_missing(source, message):
    with pytest.raises(ValueError, match=message):
        generate_trials(source, None)


def test_asking_for_more_trials_than_pairs_is_refused(libri):
    with pytest.raises(ValueError, match="need 14 same-speaker pairs.*only give 12"):
        generate_trials(libri, 28)
    with pytest.raises(ValueError, match="num_trials"):
        generate_trials(libri, 1)


# ----------------------------------------------------------------------------------------------
# Text format.


def test_round_trip_with_paths_relative_to_the_list(libri, tmp_path):
    trials = generate_trials(libri, None)
    list_path = write_trials(tmp_path / "lists" / "trials.txt", trials, base_dir=tmp_path / "lists")
    assert read_trials(list_path) == trials
    first = list_path.read_text().splitlines()[0].split()
    assert first[0] == "1" and not os.path.isabs(first[1]) and first[1].startswith("..")


def test_round_trip_relative_to_the_audio_root_makes_portable_lists(vctk, tmp_path):
    trials = generate_trials(vctk, 40, seed=2)
    list_path = write_trials(tmp_path / "vctk_trials.txt", trials, base_dir=VCTK)
    assert list_path.read_text().splitlines()[0].split()[1].startswith("p22")  # e.g. 'p225/p225_001.wav'
    assert read_trials(list_path, base_dir=VCTK) == trials
    moved = read_trials(list_path, base_dir="/elsewhere/VCTK")
    assert moved[0].path1 == Path("/elsewhere/VCTK") / trials[0].path1.relative_to(VCTK)


def test_absolute_paths_are_kept_without_a_base(libri, tmp_path):
    trials = generate_trials(libri, 4, seed=0)
    list_path = write_trials(tmp_path / "t.txt", trials)
    assert read_trials(list_path) == trials
    assert list_path.read_text().splitlines()[0].split()[1] == str(trials[0].path1)


def test_reads_a_voxceleb_style_list_with_blank_lines(tmp_path):
    list_path = tmp_path / "veri_test.txt"
    list_path.write_text(
        "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav\n"
        "\n"
        "0 id10270/x6uYqmx31kE/00001.wav id10300/ize_eiCFEg0/00003.wav\n"
    )
    trials = read_trials(list_path, base_dir="/data/voxceleb1/wav")
    assert trials == [
        Trial(1, Path("/data/voxceleb1/wav/id10270/x6uYqmx31kE/00001.wav"), Path("/data/voxceleb1/wav/id10270/8jEAjG6SegY/00008.wav")),
        Trial(0, Path("/data/voxceleb1/wav/id10270/x6uYqmx31kE/00001.wav"), Path("/data/voxceleb1/wav/id10300/ize_eiCFEg0/00003.wav")),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1 a.wav b.wav\n1 a.wav\n", r"line 2: expected 'label path1 path2', got 2 fields"),
        ("1 a.wav b.wav\n0 a.wav c.wav\n2 a.wav d.wav\n", r"line 3: the label must be 1 .* got '2'"),
        ("yes a.wav b.wav\n", r"line 1: the label must be"),
        ("1 a.wav b.wav extra\n", r"line 1: expected .* got 4 fields"),
        ("\n\n", "holds no trials"),
    ],
)
def test_bad_lines_name_the_file_and_line(tmp_path, content, message):
    list_path = tmp_path / "bad.txt"
    list_path.write_text(content)
    with pytest.raises(ValueError, match=message) as caught:
        read_trials(list_path)
    assert str(list_path) in str(caught.value)


def test_a_missing_list_is_a_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such trial list"):
        read_trials(tmp_path / "nothing.txt")


def test_paths_with_spaces_cannot_be_written(tmp_path):
    with pytest.raises(ValueError, match="whitespace"):
        write_trials(tmp_path / "t.txt", [Trial(1, Path("my file.wav"), Path("b.wav"))])


# ----------------------------------------------------------------------------------------------
# Scoring.


def test_scores_are_cosines_of_hand_made_embeddings(libri):
    paths = [u.path for u in libri.utterances]
    embeddings = {path: np.array([1.0, 0.0]) for path in paths[:4]}  # Speaker 1688 all along x...
    embeddings |= {path: np.array([3.0, 4.0]) for path in paths[4:]}  # ...1998 at 53 degrees, unnormalised.
    embeddings[str(paths[0])] = embeddings.pop(paths[0]) * 10  # String keys and any norm work.
    scores, labels = score_trials(generate_trials(libri, None), embeddings)
    np.testing.assert_allclose(scores[labels == 1], 1.0)
    np.testing.assert_allclose(scores[labels == 0], 0.6)  # (1, 0) . (3, 4) / 5
    assert len(scores) == 28 and labels.sum() == 12


def test_scores_equal_a_per_trial_cosine(vctk):
    rng = np.random.default_rng(0)
    embeddings = {u.path: rng.normal(size=16) for u in vctk.utterances}
    trials = generate_trials(vctk, 50, seed=1)
    scores, labels = score_trials(trials, embeddings)
    for trial, score, label in zip(trials, scores, labels):
        a, b = embeddings[trial.path1], embeddings[trial.path2]
        assert score == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert label == trial.label


def test_scoring_needs_every_embedding_and_one_size(libri):
    trials = generate_trials(libri, None)
    embeddings = {u.path: np.ones(8) for u in libri.utterances}
    missing = dict(embeddings)
    del missing[libri.utterances[-1].path]
    with pytest.raises(ValueError, match=f"no embedding for {libri.utterances[-1].path}"):
        score_trials(trials, missing)
    embeddings[libri.utterances[0].path] = np.ones(4)
    with pytest.raises(ValueError, match="same size"):
        score_trials(trials, embeddings)


# ----------------------------------------------------------------------------------------------
# Published lists: VoxCeleb's and CN-Celeb's layouts, made of VCTK recordings.

VCTK_SPEAKERS = ("p225", "p226", "p227", "p228")


def voxceleb_test_root(folder: Path, per_speaker: int = 3) -> dict[str, list[str]]:
    """`folder/wav/idNNNNN/<video>/NNNNN.wav` links to VCTK files, as VoxCeleb1's test archive unpacks; speaker -> relative paths."""
    relative = {}
    for number, speaker in enumerate(VCTK_SPEAKERS):
        names = []
        for index, source in enumerate(sorted((VCTK / speaker).glob("*.wav"))[:per_speaker]):
            name = f"id1{number + 270:04d}/video{index % 2}/{index + 1:05d}.wav"
            (folder / "wav" / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / "wav" / name).symlink_to(source)
            names.append(name)
        relative[f"id1{number + 270:04d}"] = names
    return relative


def write_voxceleb_list(path: Path, speakers: dict[str, list[str]]) -> int:
    """Every pair of the files, `label path1 path2`, as veri_test2.txt; returns the number of same-speaker lines."""
    files = [(s, name) for s, names in speakers.items() for name in names]
    lines = [f"{int(a[0] == b[0])} {a[1]} {b[1]}" for i, a in enumerate(files) for b in files[i + 1 :]]
    path.write_text("\n".join(lines) + "\n")
    return sum(line.startswith("1") for line in lines)


def test_a_voxceleb_list_beside_its_wav_folder_is_read_relative_to_it_every_pair(tmp_path):
    speakers = voxceleb_test_root(tmp_path)
    num_target = write_voxceleb_list(tmp_path / "veri_test2.txt", speakers)
    trials = read_published_trials(tmp_path / "veri_test2.txt")
    assert len(trials) == 66 and sum(t.label for t in trials) == num_target == 12  # 12 files: 4 speakers x 3 pairs each.
    assert trials[0] == Trial(1, tmp_path / "wav" / "id10270/video0/00001.wav", tmp_path / "wav" / "id10270/video1/00002.wav")
    assert read_published_trials(tmp_path / "veri_test2.txt", root=tmp_path / "wav") == trials


def test_a_cnceleb_list_takes_each_enrolment_file_from_enroll_lst_and_paths_from_eval(tmp_path):
    evaluation = tmp_path / "CN-Celeb" / "eval"
    for folder in ("enroll", "test", "lists"):
        (evaluation / folder).mkdir(parents=True)
    for speaker in ("id00800", "id00801"):
        (evaluation / "enroll" / f"{speaker}-enroll.wav").symlink_to(VCTK / ("p225/p225_003.wav" if speaker == "id00800" else "p226/p226_003.wav"))
    (evaluation / "test" / "id00800-singing-01-001.wav").symlink_to(VCTK / "p225/p225_008.wav")
    (evaluation / "lists" / "enroll.lst").write_text("id00800-enroll enroll/id00800-enroll.wav\nid00801-enroll enroll/id00801-enroll.wav\n")
    (evaluation / "lists" / "trials.lst").write_text("id00800-enroll test/id00800-singing-01-001.wav 1\nid00801-enroll test/id00800-singing-01-001.wav 0\n")
    trials = read_published_trials(evaluation / "lists" / "trials.lst")
    test_file = evaluation / "test" / "id00800-singing-01-001.wav"
    assert trials == [Trial(1, evaluation / "enroll" / "id00800-enroll.wav", test_file), Trial(0, evaluation / "enroll" / "id00801-enroll.wav", test_file)]


def test_a_missing_file_is_named_with_its_trial_and_the_count_of_missing_files(tmp_path):
    speakers = voxceleb_test_root(tmp_path)
    write_voxceleb_list(tmp_path / "veri_test2.txt", speakers)
    (tmp_path / "wav" / "id10271/video1/00002.wav").unlink()
    (tmp_path / "wav" / "id10273/video0/00003.wav").unlink()
    missing = tmp_path / "wav" / "id10271/video1/00002.wav"
    with pytest.raises(FileNotFoundError, match=rf"veri_test2.txt: {missing} is missing \(trial 4; 2 of the list's 12 files are missing\)"):
        read_published_trials(tmp_path / "veri_test2.txt")


def test_published_lists_are_scored_each_on_its_own_every_file_embedded_once_calibrated_and_normalised_as_corpora_are(tmp_path, monkeypatch):
    import inference
    from inference import pretrained_checkpoint
    from test import evaluate_checkpoint

    speakers = voxceleb_test_root(tmp_path, per_speaker=2)
    write_voxceleb_list(tmp_path / "veri_test2.txt", speakers)
    write_voxceleb_list(tmp_path / "list_test_hard2.txt", {s: speakers[s] for s in ("id10270", "id10273")})  # Same-gender pairs: p225, p228 are F.
    embedded = []
    read_features = inference.read_features  # Every file's features are read once, by the real reader.
    monkeypatch.setattr(inference, "read_features", lambda paths, *args, **kwargs: embedded.extend(map(str, paths)) or read_features(paths, *args, **kwargs))
    report = evaluate_checkpoint(None, pretrained_checkpoint(), trials_file=[tmp_path / "veri_test2.txt", tmp_path / "list_test_hard2.txt"])
    figures = report.trial_lists
    assert list(figures) == ["veri_test2.txt", "list_test_hard2.txt"]
    assert [(f["num_trials"], f["num_target"]) for f in figures.values()] == [(28, 4), (6, 2)]
    assert all(f["eer"] < 0.25 for f in figures.values())  # Chance is 50 %: labels read the other way round would give over 50 %.
    assert sorted(embedded) == sorted({str(tmp_path / "wav" / n) for names in speakers.values() for n in names})
    assert report.trials is None and [line.split("  ")[0] for line in report.verification_lines()] == ["trial list veri_test2.txt", "trial list list_test_hard2.txt"]
    # Scored as a corpus's own trials are: the shipped calibration gives LLR figures; AS-norm against its cohort changes the scores.
    assert all({"min_cllr", "cllr", "act_dcf_001", "half_total_error"} <= set(f) for f in figures.values())
    normalised = evaluate_checkpoint(None, pretrained_checkpoint(), trials_file=[tmp_path / "veri_test2.txt"], score_norm="asnorm").trial_lists["veri_test2.txt"]
    assert "cllr" not in normalised and figures["veri_test2.txt"]["eer_threshold"] < 1 < normalised["eer_threshold"]  # No cosine exceeds 1.


def test_test_model_names_the_first_missing_file_before_loading_the_model(tmp_path, invoke_cli):
    speakers = voxceleb_test_root(tmp_path)
    write_voxceleb_list(tmp_path / "veri_test2.txt", speakers)
    (tmp_path / "wav" / "id10270/video0/00001.wav").unlink()
    result = invoke_cli("test-model", "--checkpoint_file", tmp_path / "no_such_model.h5", "--trials", tmp_path / "veri_test2.txt")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"Error: {tmp_path / 'veri_test2.txt'}: {tmp_path / 'wav' / 'id10270/video0/00001.wav'} is missing "
                                                  "(trial 1; 1 of the list's 12 files are missing). Give the folder the list's paths are relative to with --trials_root"]
