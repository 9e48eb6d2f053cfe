"""experiment.py: the Hive-MTL comparison recipe, end to end with a tiny budget, and bad recipes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from experiment import CSV_COLUMNS, ExperimentConfigError, load_experiment_config, results_table, run_experiment, update_readme_table

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "LibriSpeech"


def write_recipe(tmp_path: Path, **changes) -> Path:
    """A tiny recipe on the bundled samples: train-clean-100 speakers train, test-other speakers are held out."""
    recipe = {
        "name": "tiny",
        "splits": {"train_audio_dirs": [str(SAMPLES / "train-clean-100")], "held_out_audio_dirs": [str(SAMPLES / "test-other")], "held_out_speakers": None},
        "model_size": "small",
        "seeds": [0],
        "budget": {"epochs": 2, "steps_per_epoch": 1, "batch_size": 12, "validation_steps": 1},
        "num_trials": None,
        "configurations": {
            "softmax_triplet": {"recipe": "softmax_triplet"},
            "mtl_triplet": {"recipe": "mtl_triplet", "gender_loss_weight": 0.5, "triplet_loss_weight": 1.0},
        },
        "gender_weight_plot": ["mtl_triplet"],
        "output_dir": str(tmp_path / "results"),
    }
    for key, value in changes.items():
        target = recipe
        *parents, last = key.split(".")
        for parent in parents:
            target = target[parent]
        target[last] = value
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    return path


def test_tiny_experiment_writes_one_csv_row_per_run_and_the_plot_and_resumes(tmp_path):
    recipe = write_recipe(tmp_path)
    csv_path = run_experiment(recipe, tmp_path / "work")
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["config"], r["seed"], r["model_size"], r["backend"], r["device"]) for r in rows] == [
        ("softmax_triplet", "0", "small", "tensorflow", "cpu"), ("mtl_triplet", "0", "small", "tensorflow", "cpu")]
    assert [r["train_steps"] for r in rows] == ["2", "2"]  # Same budget: one softmax + one triplet epoch against two MTL epochs.
    for row in rows:
        for metric in ("eer", "min_dcf", "speaker_id_acc", "gender_acc_probe"):
            assert 0.0 <= float(row[metric]) <= 1.0, metric
    assert rows[0]["gender_acc_head"] == "" and 0.0 <= float(rows[1]["gender_acc_head"]) <= 1.0
    plot = tmp_path / "results" / "tiny_gender_weight.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evaluation = tmp_path / "work" / "runs" / "mtl_triplet" / "seed0" / "evaluation.json"
    before = evaluation.stat().st_mtime_ns
    run_experiment(recipe, tmp_path / "work")  # A rerun skips what is scored already.
    assert evaluation.stat().st_mtime_ns == before
    table = results_table(csv_path)
    assert "| mtl_triplet | 1 |" in table and "eer" in table.splitlines()[0]
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- mtl-results -->\nold table\n<!-- /mtl-results -->\noutro\n")
    update_readme_table(csv_path, readme)
    assert "old table" not in readme.read_text() and "| softmax_triplet | 1 |" in readme.read_text()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"configurations.mtl_triplet.recipe": "siamese"}, "'configurations.mtl_triplet.recipe' must be one of"),
        ({"gender_weight_plot": ["nonexistent"]}, "'gender_weight_plot' names an unknown configuration 'nonexistent'"),
        ({"configurations.mtl_triplet.gender_loss_weight": -0.5}, "'configurations.mtl_triplet.gender_loss_weight' must be a number >= 0"),
        ({"splits.held_out_speakers": ["1688", "9999"]}, "'splits.held_out_speakers' names speakers not found in the held-out folders: 9999"),
        ({"splits.held_out_audio_dirs": [str(SAMPLES / "train-clean-100")]}, "in both training and held-out data: 19, 26, 27"),
        ({"splits.train_audio_dirs": ["/nowhere/at/all"]}, "'splits.train_audio_dirs' names a missing folder"),
        ({"budget.epoch": 3}, "unknown key 'budget.epoch'"),
        ({"seeds": []}, "'seeds' must be a non-empty list of integers"),
    ],
)
def test_bad_recipes_are_refused_naming_the_key(tmp_path, change, message):
    with pytest.raises(ExperimentConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_experiment_config(write_recipe(tmp_path, **change))
    assert not (tmp_path / "results").exists()


def test_the_shipped_recipe_is_valid_and_names_every_split():
    config = load_experiment_config(REPO / "recipes" / "mtl_vs_single.json")
    assert len(config.seeds) >= 3
    assert {"softmax", "softmax_triplet", "mtl", "mtl_triplet"} <= set(config.configurations)
    weights = {config.configurations[name].get("gender_loss_weight") for name in config.gender_weight_plot}
    assert len(weights) >= 3 and 0.0 in weights
    assert [d.name for d in config.held_out_audio_dirs] == ["test-other", "dev-other", "VCTK", "FSDD"]
