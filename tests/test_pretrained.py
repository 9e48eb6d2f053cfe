"""The shipped model (pretrained/): it loads by default, scores as its card says, and its card, its results file and
the README's table say the same."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli_in_process
from model_card import duration_figures, render_model_card

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "pretrained"
SAMPLES = REPO / "samples"
PHILIPPE = SAMPLES / "PhilippeRemy"


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((PRETRAINED / "model_card.json").read_text())


def test_the_shipped_model_fits_in_10_mb_and_is_an_embedding_checkpoint(card):
    assert sum(p.stat().st_size for p in PRETRAINED.rglob("*") if p.is_file()) <= 10 * 2**20
    from inference import inspect_checkpoint

    info = inspect_checkpoint(PRETRAINED / "model.h5")
    assert info.model_size == card["model_size"] and info.has_embedding_layer


# What a card keeps of each corpus's figures (model_card.corpus_figures), and how far a new evaluation may
# move them: counts not at all, EER and minDCF by about one trial's worth, thresholds by float32 round-off of
# the embeddings (measured on the development machine: equal to the last digit, thresholds within 2e-7).
CARD_FIGURES = {"num_trials": 0, "num_target_trials": 0, "eer": 2.5e-3, "min_dcf_001": 0.01, "min_dcf_005": 0.01, "eer_threshold": 1e-4}


def card_figures(figures: dict) -> dict:
    """A corpus's figures as a card keeps them: the speakers counted, the other figures as they are."""
    return {**{k: figures[k] for k in CARD_FIGURES}, "speakers": figures["speakers"] if isinstance(figures["speakers"], int) else len(figures["speakers"])}


@pytest.fixture(scope="module")
def results_file() -> dict:
    """What `test-model` wrote for the shipped model: results/pretrained_test_model.json."""
    return json.loads((REPO / "results" / "pretrained_test_model.json").read_text())


def test_the_cards_figures_are_those_of_the_results_file_and_the_file_has_none_the_card_lacks(card, results_file):
    assert results_file["checkpoint"].endswith("pretrained/model.h5")
    shipped, measured = card["evaluation"]["corpora"], results_file["corpora"]
    assert set(shipped) == set(measured) == {"test-other", "VCTK", "FSDD"}
    for corpus in shipped:
        assert card_figures(shipped[corpus]) == card_figures(measured[corpus]), corpus
    # No threshold of the test corpora is shipped (issue #21): verify decides on the LLR of a calibration fitted on speakers set aside.
    assert "eer_threshold" not in card and card["decision"]["on"] == "llr"


def test_the_shipped_model_scores_what_its_card_says_on_every_corpus_of_its_results_file(card, results_file):
    """A new evaluation of the shipped file on the folders the results file names (test-other, VCTK, FSDD):
    every figure of the card is reproduced, and the evaluation gives no corpus the card lacks."""
    from test import evaluate_checkpoint

    directories = tuple(str(REPO / figures["directory"]) for figures in results_file["corpora"].values())
    report = evaluate_checkpoint(None, PRETRAINED / "model.h5", directories)
    shipped = card["evaluation"]["corpora"]
    assert set(report.corpora) == set(shipped)
    for corpus, figures in shipped.items():
        evaluated = card_figures(report.corpora[corpus])
        assert evaluated["speakers"] == figures["speakers"], corpus
        for key, tolerance in CARD_FIGURES.items():
            assert abs(evaluated[key] - figures[key]) <= tolerance, (corpus, key, evaluated[key], figures[key])
    assert shipped["test-other"]["eer"] <= 0.02  # The target for the shipped model.


def test_the_model_card_readme_is_rendered_from_its_json(card):
    assert (PRETRAINED / "README.md").read_text() == render_model_card(card)


def test_the_readmes_table_of_the_shipped_model_is_rendered_from_its_card(card):
    from model_card import figures_table

    readme = (REPO / "README.md").read_text()
    assert f"<!-- pretrained-model -->\n{figures_table(card)}\n<!-- /pretrained-model -->" in readme


def test_the_cards_figures_by_duration_and_its_calibration_are_those_of_the_results_file_and_of_calibration_json(card):
    """results/pretrained_durations.json is what `test-model --durations 1,2,4` wrote for the shipped model."""
    results = json.loads((REPO / "results" / "pretrained_durations.json").read_text())
    assert card["by_duration"] == duration_figures(results)
    assert set(card["by_duration"]) == {"test-other", "VCTK", "FSDD"}  # Speaker-disjoint corpora only.
    assert all(set(crops) == {"1", "2", "4", "whole"} for crops in card["by_duration"].values())
    test_other = card["by_duration"]["test-other"]
    assert test_other["whole"]["eer"] == card["evaluation"]["corpora"]["test-other"]["eer"]  # The whole files, as the card's own figure.
    assert test_other["1"]["eer"] > test_other["2"]["eer"] > test_other["4"]["eer"] > test_other["whole"]["eer"]
    calibration = json.loads((PRETRAINED / "calibration.json").read_text())
    assert card["calibration"] == {**calibration["fitted_on"], "bias": calibration["bias"], "weights": calibration["weights"]}


def test_the_shipped_cohort_is_one_unit_float16_row_per_training_speaker(card):
    cohort = np.load(PRETRAINED / "cohort.npy")
    assert cohort.dtype == np.float16 and cohort.shape == (card["training"]["speakers"], 512) and card["cohort"]["speakers"] == card["training"]["speakers"]
    np.testing.assert_allclose(np.linalg.norm(cohort.astype(np.float32), axis=1), 1.0, atol=2e-3)


def test_verify_without_a_checkpoint_uses_the_shipped_model_and_its_calibration():
    from calibration import read_calibration
    from inference import pretrained_checkpoint

    assert read_calibration(pretrained_checkpoint()) is not None
    same = run_cli_in_process("verify", str(PHILIPPE / "PhilippeRemy_001.wav"), str(PHILIPPE / "PhilippeRemy_002.wav"))
    assert same.exit_code == 0, same.stderr
    assert "LLR = " in same.stdout and "-> same speaker (Bayes threshold 0.000 on the LLR: prior 0.5," in same.stdout
    different = run_cli_in_process("verify", str(PHILIPPE / "PhilippeRemy_001.wav"), str(SAMPLES / "1255-90413-0001.flac"))
    assert different.exit_code == 0, different.stderr
    assert "-> different speakers" in different.stdout


def test_embed_and_test_model_without_a_checkpoint_use_the_shipped_model(tmp_path):
    result = run_cli_in_process("embed", str(PHILIPPE), "--output", str(tmp_path / "e.npz"))
    assert result.exit_code == 0, result.stderr
    with np.load(tmp_path / "e.npz") as data:
        assert str(data["checkpoint"]).endswith("pretrained/model.h5") and data["embeddings"].shape == (4, 512)
    scored = run_cli_in_process("test-model", "--eval_audio_dir", str(SAMPLES / "LibriSpeech" / "test-other"), "--output", str(tmp_path / "t.json"))
    assert scored.exit_code == 0, scored.stderr
    assert json.loads((tmp_path / "t.json").read_text())["checkpoint"].endswith("pretrained/model.h5")
