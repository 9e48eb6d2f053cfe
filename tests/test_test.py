"""test.py: cosine scoring, the reference protocol, and the evaluation of a trained checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eval_metrics import reference_metrics
from test import batch_cosine_similarity, evaluate_checkpoint, gender_probe_accuracy, nearest_profile_accuracy, reference_protocol_scores


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
    assert gender_probe_accuracy(train, labels, np.array([[1.0] * 8, [-1.0] * 8]), ["F", "M"]) == 1.0
    assert gender_probe_accuracy(train, labels, np.array([[1.0] * 8, [-1.0] * 8]), ["M", "F"]) == 0.0


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
    assert set(report.heads) == {"speaker_id_acc", "speaker_id_acc_head", "gender_acc_head", "gender_acc_probe"}
    assert all(0.0 <= value <= 1.0 for value in report.heads.values())
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["det_curve.png", "embedding_projection.png", "score_histograms.png"]
    written = json.loads(report.to_json(tmp_path / "report.json").read_text())
    assert written["trials"]["eer"] == report.trials["eer"]


def test_evaluation_on_unseen_corpora_says_when_trial_speakers_were_seen_in_training(mtl_run):
    working_dir, checkpoint = mtl_run
    report = evaluate_checkpoint(working_dir, checkpoint, eval_audio_dirs=(str(SAMPLES / "LibriSpeech" / "train-clean-100"),), num_trials=20)
    assert report.trials["num_trials"] == 20
    assert any("seen in training" in note and "19, 26, 27" in note for note in report.notes)
