"""model_card.py: shipping a run's checkpoint with its card, and learning curves from snapshots."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import keras
import pytest

from corpus import CorpusError
from conv_models import DeepSpeakerModel
from inference import FrontEnd, verification_threshold
from model_card import learning_curve, render_model_card, ship_model

REPO = Path(__file__).resolve().parents[1]
TEST_OTHER = str(REPO / "samples" / "LibriSpeech" / "test-other")


def test_a_shipped_run_has_its_embedding_model_config_card_and_threshold(trained_mtl, tmp_path):
    shutil.copytree(REPO / "pretrained", tmp_path / "shipped")  # Shipped over an earlier shipment: replaced whole.
    output = ship_model(trained_mtl / "checkpoints-mtl" / "best.h5", [TEST_OTHER], tmp_path / "shipped", "python cli.py train ...", ["samples"],
                        train_seconds=12.0, embedding_pad="exact")
    assert sorted(p.name for p in output.iterdir()) == ["README.md", "config.json", "model.h5", "model_card.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shipped"]  # Neither the new folder's name nor the old folder is left.
    card = json.loads((output / "model_card.json").read_text())
    figures = card["evaluation"]["corpora"]["test-other"]
    assert figures["speakers"] == 2 and figures["num_trials"] == 28 and 0 <= figures["eer"] <= 1
    assert card["eer_threshold"] == figures["eer_threshold"]  # The mean over one corpus.
    assert verification_threshold(output / "model.h5") == card["eer_threshold"]
    assert card["frontend"] == {"trim": "reference", "pad": "exact", "training_pad": "zeros"}
    assert FrontEnd.of_checkpoint(output / "model.h5") == FrontEnd("reference", "exact")
    assert card["evaluation_with_training_pad"]["test-other"]["num_trials"] == 28
    assert card["training"]["train_seconds"] == 12.0 and card["training"]["train_windows"] > 0
    assert (output / "README.md").read_text() == render_model_card(card)
    embedding = keras.models.load_model(output / "model.h5", compile=False)
    assert embedding.output.shape == (None, 512) and getattr(embedding, "optimizer", None) is None


def test_a_shipment_whose_evaluation_fails_leaves_the_shipped_model_and_its_card_as_they_were(trained_mtl, tmp_path):
    shipped = shutil.copytree(REPO / "pretrained", tmp_path / "shipped")
    before = digests(shipped)
    (tmp_path / "no_audio").mkdir()  # An evaluation corpus without audio: the evaluation stops with an error.
    with pytest.raises(CorpusError, match="no_audio: no"):
        ship_model(trained_mtl / "checkpoints-mtl" / "best.h5", [TEST_OTHER, str(tmp_path / "no_audio")], shipped, "python cli.py train ...", ["samples"])
    assert digests(shipped) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no_audio", "shipped"]  # No half-shipped folder left beside it.


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_shipping_into_a_folder_with_other_files_is_refused_before_any_work(tmp_path):
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="shipped: holds notes.txt, not part of a shipped model"):
        ship_model(tmp_path / "missing" / "best.h5", [TEST_OTHER], tmp_path / "shipped", "python cli.py train ...", ["samples"])
    assert [p.name for p in (tmp_path / "shipped").iterdir()] == ["notes.txt"]


def test_a_learning_curve_has_one_row_per_snapshot_and_corpus(tmp_path):
    run = tmp_path / "checkpoints-softmax"
    (run / "snapshots").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"steps_per_epoch": 10, "batch_size": 12, "trim": "reference", "pad": "zeros"}))
    for epoch in (5, 10):
        DeepSpeakerModel(model_size="small").m.save(run / "snapshots" / f"epoch_{epoch:04d}.h5")
    written = learning_curve(run, [TEST_OTHER], tmp_path / "curve.csv")
    with open(written, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["epoch"], r["train_windows"], r["corpus"]) for r in rows] == [("5", "600", "test-other"), ("10", "1200", "test-other")]
    assert all(0 <= float(r["eer"]) <= 1 for r in rows)
