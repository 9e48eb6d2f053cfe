"""The shipped model (pretrained/): it loads by default, scores as its card says, and its card is its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model_card import render_model_card

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "pretrained"
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLES = REPO / "samples"
PHILIPPE = SAMPLES / "PhilippeRemy"


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((PRETRAINED / "model_card.json").read_text())


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_the_shipped_model_fits_in_10_mb_and_is_an_embedding_checkpoint(card):
    assert sum(p.stat().st_size for p in PRETRAINED.rglob("*") if p.is_file()) <= 10 * 2**20
    from inference import inspect_checkpoint

    info = inspect_checkpoint(PRETRAINED / "model.h5")
    assert info.model_size == card["model_size"] and info.has_embedding_layer


def test_the_shipped_model_scores_within_its_cards_figures_on_test_other_and_vctk(card):
    from test import evaluate_checkpoint

    report = evaluate_checkpoint(None, PRETRAINED / "model.h5", (str(SHARED_DATA / "LibriSpeech" / "test-other"), str(SHARED_DATA / "VCTK")))
    for corpus in ("test-other", "VCTK"):
        promised = card["evaluation"]["corpora"][corpus]
        assert report.corpora[corpus]["num_trials"] == promised["num_trials"]
        assert report.corpora[corpus]["eer"] <= promised["eer"] + 0.005, corpus
    assert card["evaluation"]["corpora"]["test-other"]["eer"] <= 0.02  # The target for the shipped model.


def test_the_model_card_readme_is_rendered_from_its_json(card):
    assert (PRETRAINED / "README.md").read_text() == render_model_card(card)


def test_verify_without_a_checkpoint_uses_the_shipped_model_and_its_eer_threshold(card):
    same = run_cli("verify", str(PHILIPPE / "PhilippeRemy_001.wav"), str(PHILIPPE / "PhilippeRemy_002.wav"))
    assert same.returncode == 0, same.stderr
    assert "-> same speaker" in same.stdout and f"(threshold {card['eer_threshold']:.3f})" in same.stdout
    different = run_cli("verify", str(PHILIPPE / "PhilippeRemy_001.wav"), str(SAMPLES / "1255-90413-0001.flac"))
    assert different.returncode == 0, different.stderr
    assert "-> different speakers" in different.stdout


def test_embed_and_test_model_without_a_checkpoint_use_the_shipped_model(tmp_path):
    result = run_cli("embed", str(PHILIPPE), "--output", str(tmp_path / "e.npz"))
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "e.npz") as data:
        assert str(data["checkpoint"]).endswith("pretrained/model.h5") and data["embeddings"].shape == (4, 512)
    scored = run_cli("test-model", "--eval_audio_dir", str(SAMPLES / "LibriSpeech" / "test-other"), "--output", str(tmp_path / "t.json"))
    assert scored.returncode == 0, scored.stderr
    assert json.loads((tmp_path / "t.json").read_text())["checkpoint"].endswith("pretrained/model.h5")
