"""test.py: cosine scoring, the reference protocol, and the evaluation of a trained checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from eval_metrics import reference_metrics
from test import (
    EvaluationReport,
    HeldOutCorpus,
    batch_cosine_similarity,
    corpus_verification,
    corpus_names,
    evaluate_checkpoint,
    probe_accuracy,
    nearest_profile_accuracy,
    reference_protocol_scores,
)
from trials import generate_trials, write_trials


def test_cosine_of_unit_vectors_is_their_row_wise_dot_product():
    x1 = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    x2 = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, -1.0]])
    np.testing.assert_allclose(batch_cosine_similarity(x1, x2), [1.0, 0.96, -1.0])


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        batch_cosine_similarity(np.zeros((2, 512)), np.zeros((3, 512)))


# ---------------------------------------------------------------------------------------------- reference protocol

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"


def one_hot_speakers(num_speakers: int, per_speaker: int) -> dict[str, np.ndarray]:
    """Every speaker's utterances share one unit vector, orthogonal to the other speakers'."""
    return {f"s{i}": np.tile(np.eye(num_speakers)[i], (per_speaker, 1)) for i in range(num_speakers)}


def test_reference_protocol_puts_the_positive_first_then_99_negatives():
    scores = reference_protocol_scores(one_hot_speakers(120, 3), np.random.default_rng(0))
    assert scores.shape == (120, 100)
    np.testing.assert_array_equal(scores[:, 0], 1.0)
    np.testing.assert_array_equal(scores[:, 1:], 0.0)
    metrics = reference_metrics(scores)
    assert (metrics.f_measure, metrics.true_positive_rate, metrics.accuracy, metrics.equal_error_rate) == (1.0, 1.0, 1.0, 0.0)


def test_reference_protocol_draws_negatives_from_other_speakers_only():
    embeddings = one_hot_speakers(5, 2)  # Fewer other speakers than negatives: they repeat.
    scores = reference_protocol_scores(embeddings, np.random.default_rng(1), num_negatives=99)
    assert scores.shape == (5, 100) and np.all(scores[:, 1:] == 0.0)


def test_reference_protocol_skips_speakers_with_a_single_utterance():
    embeddings = {"a": np.eye(3)[[0, 0]], "b": np.eye(3)[[1]], "c": np.eye(3)[[2]]}
    assert reference_protocol_scores(embeddings, np.random.default_rng(0)).shape == (1, 100)


def test_nearest_profile_accuracy_counts_test_utterances_closest_to_their_own_speaker():
    enrollment = {"a": np.array([[1.0, 0.0], [0.8, 0.6]]), "b": np.array([[0.0, 1.0]])}
    test = np.array([[0.9, 0.1], [0.1, 0.9], [0.7, 0.71]])
    assert nearest_profile_accuracy(enrollment, test, ["a", "b", "b"]) == 2 / 3


def test_gender_probe_separates_linearly_separable_embeddings():
    rng = np.random.default_rng(0)
    female, male = rng.normal(1.0, 0.3, (20, 8)), rng.normal(-1.0, 0.3, (20, 8))
    train = np.concatenate([female, male])
    labels = ["F"] * 20 + ["M"] * 20
    assert probe_accuracy(train, labels, np.array([[1.0] * 8, [-1.0] * 8]), ["F", "M"]) == 1.0
    assert probe_accuracy(train, labels, np.array([[1.0] * 8, [-1.0] * 8]), ["M", "F"]) == 0.0


# ---------------------------------------------------------------------------------------------- a trained checkpoint


@pytest.fixture(scope="module")
def mtl_run(trained_mtl) -> tuple[Path, Path]:
    """(working dir, best.h5) of the shared Hive-MTL run: test-other speakers held out."""
    return trained_mtl, trained_mtl / "checkpoints-mtl" / "best.h5"


def test_evaluation_of_an_mtl_checkpoint_reports_every_figure(mtl_run, tmp_path):
    working_dir, checkpoint = mtl_run
    report = evaluate_checkpoint(working_dir, checkpoint, plots_dir=tmp_path / "plots")
    assert report.reference["speakers"] == 3 and report.reference["line"].startswith("f-measure = ")
    assert report.trials["speakers"] == ["1688", "1998"]
    assert report.trials["num_trials"] == 28  # 8 utterances: 12 same-speaker and 16 different-speaker pairs.
    assert list(report.corpora) == ["LibriSpeech"]  # The run's held-out speakers are one corpus, named by the folder they were cached from.
    assert {k: report.corpora["LibriSpeech"][k] for k in ("speakers", "num_trials", "eer")} == {k: report.trials[k] for k in ("speakers", "num_trials", "eer")}
    assert set(report.heads) == {"speaker_id_acc", "speaker_id_acc_head", "gender_acc_head", "gender_acc_probe"}
    assert report.unseen_labels == {"gender": {"M": 1, "F": 1}}  # 1688 and 1998.
    assert all(0.0 <= value <= 1.0 for value in report.heads.values())
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["det_curve.png", "embedding_projection.png", "score_histograms.png"]
    written = json.loads(report.to_json(tmp_path / "report.json").read_text())
    assert written["trials"]["eer"] == report.trials["eer"]


def test_evaluation_on_unseen_corpora_says_when_trial_speakers_were_seen_in_training(mtl_run):
    working_dir, checkpoint = mtl_run
    report = evaluate_checkpoint(working_dir, checkpoint, eval_audio_dirs=(str(SAMPLES / "LibriSpeech" / "train-clean-100"),), num_trials=20)
    assert report.trials["num_trials"] == 20
    assert report.corpora["train-clean-100"]["num_trials"] == 20  # --num_trials applies to each corpus.
    assert any("seen in training" in note and "19, 26, 27" in note for note in report.notes)


def test_evaluation_scores_the_test_utterances_the_run_recorded_when_the_cache_grew_since(mtl_run, tmp_path, monkeypatch):
    import audio
    import test as evaluation

    working_dir = tmp_path / "work"
    shutil.copytree(mtl_run[0], working_dir)
    more = tmp_path / "more" / "19"
    more.mkdir(parents=True)
    for index, path in enumerate(sorted((SAMPLES / "LibriSpeech" / "test-other").rglob("*.flac"))[:4]):
        shutil.copy(path, more / f"0-{index}.flac")  # Sorted before 19's own utterances: recomputed, the 80 % boundary would move.
    audio.build_feature_cache(more.parent, working_dir, workers=1, progress=False)
    scored = {}
    protocol = evaluation.reference_protocol_scores

    def spy(embeddings, rng, *args):
        scored.update({speaker: len(rows) for speaker, rows in embeddings.items()})
        return protocol(embeddings, rng, *args)

    monkeypatch.setattr(evaluation, "reference_protocol_scores", spy)
    evaluate_checkpoint(working_dir, working_dir / "checkpoints-mtl" / "best.h5")
    assert scored == {"19": 2, "26": 2, "27": 2}  # Recomputed on the grown cache, 19 would have 3, one of them trained on.
    recorded = json.loads((working_dir / "checkpoints-mtl" / "split.json").read_text())
    assert {speaker: len(split["test"]) for speaker, split in recorded.items()} == scored


def test_the_speaker_head_is_scored_by_the_class_order_of_the_runs_speakers_json_when_a_run_speaker_left_the_cache(mtl_run, tmp_path):
    """The run trained speakers 19, 26 and 27 (classes 0, 1, 2); the cache evaluated here no longer holds 19.
    A head that names class 0, speaker 19, for every utterance is right on none of the test utterances
    left (26's and 27's). Counted by position among the cached speakers, class 0 would be 26: 0.5."""
    import keras

    import audio
    from train import save_atomically

    corpus = tmp_path / "LibriSpeech"
    shutil.copytree(SAMPLES / "LibriSpeech", corpus, ignore=shutil.ignore_patterns("19"))
    working_dir = tmp_path / "work"
    audio.build_feature_cache(corpus, working_dir, workers=1, progress=False)
    run = shutil.copytree(mtl_run[0] / "checkpoints-mtl", tmp_path / "run", ignore=shutil.ignore_patterns("tensorboard"))
    assert json.loads((run / "speakers.json").read_text())["speakers"] == ["19", "26", "27"]
    model = keras.models.load_model(run / "best.h5", compile=False)
    head = model.get_layer("speaker_pred")
    kernel, bias = head.get_weights()
    head.set_weights([np.zeros_like(kernel), np.where(np.arange(len(bias)) == 0, 10.0, -10.0).astype(bias.dtype)])
    save_atomically(model, run / "best.h5")
    report = evaluate_checkpoint(working_dir, run / "best.h5", held_out_speakers=[])  # No trials: only the heads are read here.
    assert report.heads["speaker_id_acc_head"] == 0.0


# ---------------------------------------------------------------------------------------------- figures per held-out corpus

TEST_OTHER = SAMPLES / "LibriSpeech" / "test-other"  # 1688 and 1998, 4 utterances each.
TRAIN_CLEAN = SAMPLES / "LibriSpeech" / "train-clean-100"  # 19, 26 and 27, 8 utterances each.


def test_each_eval_corpus_is_scored_on_trials_among_its_own_speakers_beside_the_pooled_figure(mtl_run, tmp_path):
    working_dir, checkpoint = mtl_run
    report = evaluate_checkpoint(working_dir, checkpoint, eval_audio_dirs=(str(TEST_OTHER), str(TRAIN_CLEAN)))
    assert list(report.corpora) == ["test-other", "train-clean-100"]
    assert report.corpora["test-other"]["speakers"] == ["1688", "1998"]
    assert report.corpora["train-clean-100"]["speakers"] == ["19", "26", "27"]
    assert [c["num_trials"] for c in report.corpora.values()] == [28, 276]  # All pairs of 8 and of 24 utterances.
    assert [c["num_target_trials"] for c in report.corpora.values()] == [12, 84]
    # Pooled: the pairs within each corpus and the 8 x 24 pairs across them.
    assert report.trials["num_trials"] == 28 + 276 + 8 * 24 >= sum(c["num_trials"] for c in report.corpora.values())
    for figures in report.corpora.values():
        assert 0.0 <= figures["eer"] <= 1.0 and 0.0 <= figures["min_dcf_001"] <= 1.0 and 0.0 <= figures["min_dcf_005"] <= 1.0
        assert figures["num_target"] + figures["num_nontarget"] == figures["num_trials"]
    assert report.corpora["test-other"]["directory"] == str(TEST_OTHER)
    written = json.loads(report.to_json(tmp_path / "report.json").read_text())
    assert written["corpora"] == report.corpora and written["trials"]["eer"] == report.trials["eer"]


def test_a_trial_list_is_scored_as_it_is_without_a_split_by_corpus(mtl_run, tmp_path):
    working_dir, checkpoint = mtl_run
    trials_file = write_trials(tmp_path / "trials.txt", generate_trials({"1688": sorted(TEST_OTHER.glob("1688/*/*.flac")),
                                                                         "1998": sorted(TEST_OTHER.glob("1998/*/*.flac"))}, 6, seed=0))
    report = evaluate_checkpoint(working_dir, checkpoint, eval_audio_dirs=(str(TEST_OTHER),), trials_file=trials_file)
    assert report.corpora == {}
    assert report.trials["num_trials"] == 6 and report.trials["trials_file"] == str(trials_file)
    assert report.verification_lines()[0].startswith("trial list trials.txt  trials = 6 (3 same speaker), EER = ")


def test_a_small_corpus_gets_all_the_balanced_trials_it_has_and_a_note():
    corpus = HeldOutCorpus("tiny", None, {"a": ["a1", "a2", "a3"], "b": ["b1"]})  # 3 same-speaker, 3 different-speaker pairs.
    embed = {"a1": [1.0, 0.0], "a2": [0.9, 0.1], "a3": [0.8, 0.3], "b1": [0.0, 1.0]}
    figures, notes = corpus_verification([corpus], lambda paths: np.array([embed[p] for p in paths]), 100, seed=0)
    assert (figures["tiny"]["num_trials"], figures["tiny"]["num_target_trials"], figures["tiny"]["eer"]) == (6, 3, 0.0)
    assert notes == ["tiny: 6 trials instead of 100: it has 3 same-speaker and 3 different-speaker pairs"]


def test_a_corpus_without_a_same_speaker_pair_is_skipped_with_a_note():
    figures, notes = corpus_verification([HeldOutCorpus("singles", None, {"a": ["a1"], "b": ["b1"]})], None, None, seed=0)
    assert figures == {} and notes == ["singles: no trials of its own: it needs 2 speakers, one with 2 utterances"]


def test_corpora_are_named_by_their_folder_and_by_parents_only_where_names_clash(tmp_path):
    folders = [tmp_path / "a" / "test-other", tmp_path / "VCTK", tmp_path / "b" / "test-other", tmp_path / "a" / "test-other" / ".." / "test-other"]
    assert corpus_names(folders) == ["a/test-other", "VCTK", "b/test-other", "a/test-other"]


def test_verification_lines_show_each_corpus_then_the_pooled_figure_labelled_pooled():
    def figures(speakers: int, trials: int, target: int, eer: float) -> dict:
        return {"speakers": [str(s) for s in range(speakers)], "num_trials": trials, "num_target": target, "eer": eer,
                "eer_threshold": 0.4123, "min_dcf_001": 1.0, "min_dcf_005": 0.8}

    report = EvaluationReport("best.h5", trials=figures(5, 496, 96, 0.1), corpora={"test-other": figures(2, 28, 12, 0.25), "VCTK": figures(3, 276, 84, 0.05)})
    assert report.verification_lines() == [
        "test-other            speakers = 2, trials = 28 (12 same speaker), EER = 25.00%, threshold = 0.412, minDCF(0.01) = 1.000, minDCF(0.05) = 0.800",
        "VCTK                  speakers = 3, trials = 276 (84 same speaker), EER = 5.00%, threshold = 0.412, minDCF(0.01) = 1.000, minDCF(0.05) = 0.800",
        "pooled (all corpora)  speakers = 5, trials = 496 (96 same speaker), EER = 10.00%, threshold = 0.412, minDCF(0.01) = 1.000, minDCF(0.05) = 0.800",
    ]
