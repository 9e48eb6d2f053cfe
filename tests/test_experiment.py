"""experiment.py: the Hive-MTL comparison and a recipe ablation, end to end with a tiny budget, and bad recipes."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import keras
import pytest

from audio import cache_dir, waveform_cache_dir
from experiment import (
    CSV_COLUMNS,
    RUNNER_KEYS,
    ExperimentConfigError,
    device_name,
    load_experiment_config,
    results_table,
    run_experiment,
    training_phases,
    update_readme_table,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "LibriSpeech"
COMMON_VOICE = REPO / "samples" / "CommonVoice-fa"
TEST_OTHER_COLUMNS = ("eer_test_other", "min_dcf_test_other")
LANGUAGE_COLUMNS = ("language_acc_head", "language_acc_probe", "language_acc_head_per_speaker", "language_acc_probe_per_speaker", "language_speakers")
TINY_COLUMNS = CSV_COLUMNS + LANGUAGE_COLUMNS + TEST_OTHER_COLUMNS + ("eer_commonvoice_fa", "min_dcf_commonvoice_fa")


def write_recipe(tmp_path: Path, **changes) -> Path:
    """A tiny recipe on the bundled samples: train-clean-100 and two Common Voice speakers train; test-other's
    speakers and a third Common Voice speaker are held out; language is a task besides speaker and gender."""
    recipe = {
        "name": "tiny",
        "splits": {"train_audio_dirs": [str(SAMPLES / "train-clean-100"), str(COMMON_VOICE)], "held_out_audio_dirs": [str(SAMPLES / "test-other")],
                   "held_out_training_speakers": ["0874d76d"], "held_out_speakers": None},
        "tasks": {"language": {"labels": {"train-clean-100": "en", "test-other": "en", "CommonVoice-fa": "fa"}, "loss": "binary", "weight": 1.0}},
        "answer": {"mtl": ["mtl_triplet"], "single": ["softmax_triplet"]},
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
    assert tuple(rows[0]) == TINY_COLUMNS  # The fixed columns, each task's, then each held-out corpus's (the held-out Common Voice speaker's last).
    backend, device = keras.backend.backend(), device_name()  # Recorded as found, whichever machine runs this.
    assert [(r["config"], r["seed"], r["model_size"], r["backend"], r["device"]) for r in rows] == [
        ("softmax_triplet", "0", "small", backend, device), ("mtl_triplet", "0", "small", backend, device)]
    assert [r["train_steps"] for r in rows] == ["2", "2"]  # Same budget: one softmax + one triplet epoch against two MTL epochs.
    assert [r["train_windows"] for r in rows] == ["24", "24"]
    for row in rows:
        for metric in ("eer_pooled", "min_dcf_pooled", *TEST_OTHER_COLUMNS, "speaker_id_acc", "gender_acc_probe", "language_acc_probe",
                       "gender_acc_probe_per_speaker", "language_acc_probe_per_speaker"):
            assert 0.0 <= float(row[metric]) <= 1.0, metric
        assert row["eer_commonvoice_fa"] == ""  # One held-out Common Voice speaker: no trials of its own, but in the pooled ones.
        assert (row["gender_speakers"], row["language_speakers"]) == ("1 F, 1 M", "2 en, 1 fa")  # Per-speaker figures: of these speakers (labels sorted).
    for head in ("gender_acc_head", "language_acc_head", "gender_acc_head_per_speaker", "language_acc_head_per_speaker"):  # Only Hive-MTL has the heads.
        assert rows[0][head] == "" and 0.0 <= float(rows[1][head]) <= 1.0
    report = json.loads((tmp_path / "work" / "runs" / "softmax_triplet" / "seed0" / "evaluation.json").read_text())["report"]
    assert report["unseen_labels"]["language"] == {"en": 2, "fa": 1}  # test-other's two speakers, the held-out Common Voice one.
    speakers = json.loads((tmp_path / "work" / "runs" / "mtl_triplet" / "seed0" / "checkpoints-mtl" / "speakers.json").read_text())
    assert "0874d76d" in speakers["held_out_speakers"] and "0874d76d" not in speakers["speakers"]
    assert speakers["tasks"]["language"] == {"output": "language_pred", "loss": "binary", "classes": ["en", "fa"]}
    with open(tmp_path / "results" / "tiny_answer.csv", newline="") as handle:
        answer = list(csv.DictReader(handle))
    assert {(r["task"], r["mtl_config"], r["single_config"], r["seeds"], r["reading"]) for r in answer} >= {
        ("speaker verification", "mtl_triplet", "softmax_triplet", "1", "undecided"), ("language", "mtl_triplet", "softmax_triplet", "1", "undecided")}
    eer = next(r for r in answer if r["figure"] == "EER test-other")
    assert float(eer["difference"]) == pytest.approx(float(rows[1]["eer_test_other"]) - float(rows[0]["eer_test_other"]))
    assert eer["seeds_low"] == "" and float(eer["trials_low"]) <= float(eer["difference"]) <= float(eer["trials_high"])  # One seed: only the bootstrap.
    assert eer["speakers_low"] == ""
    language = next(r for r in answer if r["figure"] == "probe balanced accuracy per unseen speaker" and r["task"] == "language")
    assert float(language["difference"]) == pytest.approx(float(rows[1]["language_acc_probe_per_speaker"]) - float(rows[0]["language_acc_probe_per_speaker"]))
    assert language["trials_low"] == "" and float(language["speakers_low"]) <= float(language["difference"]) <= float(language["speakers_high"])
    plot = tmp_path / "results" / "tiny_gender_weight.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evaluation = tmp_path / "work" / "runs" / "mtl_triplet" / "seed0" / "evaluation.json"
    before = evaluation.stat().st_mtime_ns
    run_experiment(recipe, tmp_path / "work")  # A rerun skips what is scored already.
    assert evaluation.stat().st_mtime_ns == before
    table = results_table(csv_path)
    assert "| mtl_triplet | 1 |" in table and "| eer_test_other | eer_commonvoice_fa | eer_pooled | min_dcf_pooled |" in table.splitlines()[0]
    assert "| gender_acc_probe | gender_acc_head_per_speaker | gender_acc_probe_per_speaker | language_acc_head |" in table.splitlines()[0]
    assert "gender on 2 unseen speakers (1 F, 1 M), language on 3 unseen speakers (2 en, 1 fa)" in table
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
        ({"trian": {"head": "aam"}}, "unknown key 'trian'"),
        ({"train": {"speed_perturbation": True}}, "unknown key 'train.speed_perturbation'"),
        ({"configurations.mtl_triplet.train": {"seed": 3}}, "'configurations.mtl_triplet.train.seed' is set by the experiment runner"),
        ({"train": {"batch_size": 96}}, "'train.batch_size' is set by the experiment runner, not in 'train' (it comes from 'budget')"),
        ({"train": {"noise_probability": "often"}}, "'train.noise_probability' must be a float"),
        ({"train": {"noise_probability": 1.5}}, "'configurations.softmax_triplet' cannot train its softmax phase: noise_probability must be between 0 and 1"),
        ({"configurations.softmax_triplet.train": {"hard_negative": True, "trim": "energy"}}, "'configurations.softmax_triplet' cannot train its softmax phase: hard_negative mining is a triplet-mode option"),
        ({"tasks": {"gender": {"labels": {"a": "M", "b": "F"}}}}, "'tasks': task 'gender' is built in"),
        ({"train": {"tasks": {}}}, "'train.tasks' is set by the experiment runner"),
        ({"splits.held_out_training_speakers": ["nobody"]}, "'splits.held_out_training_speakers' names speakers not found in the training folders: nobody"),
        ({"answer": {"mtl": ["mtl"], "single": ["softmax_triplet"]}}, "'answer' names an unknown configuration 'mtl'"),
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
    assert [d.name for d in config.held_out_audio_dirs] == ["test-other", "dev-other", "VCTK", "FSDD"]
    assert [d.name for d in config.train_audio_dirs] == ["train-clean-100", "CommonVoice-fa"]
    budget = config.budget
    assert budget["epochs"] * budget["steps_per_epoch"] * budget["batch_size"] >= 100_000
    assert len(config.held_out_training_speakers) >= 5 and "language" in config.tasks
    phases = {name: training_phases(config, name, 0) for name in config.configurations}
    shared = {"head", "balanced_sampling", "trim", "pad", "speed_perturb", "noise_probability", "validation_split", "held_out_speakers"}
    for name, configs in phases.items():  # One recipe, sampler, validation set and held-out split for every configuration.
        assert all({k: getattr(c, k) for k in shared} == {k: getattr(phases["softmax"][0], k) for k in shared} for c in configs), name
    assert sum(c.epochs for c in phases["softmax_triplet"]) == phases["mtl"][0].epochs


def write_ablation_recipe(tmp_path: Path) -> Path:
    """A tiny ablation on the bundled samples: LibriSpeech and Common Voice (MP3) speakers train, test-other is held out."""
    recipe = {
        "name": "tiny_ablation",
        "splits": {"train_audio_dirs": [str(SAMPLES / "train-clean-100"), str(REPO / "samples" / "CommonVoice-fa")],
                   "held_out_audio_dirs": [str(SAMPLES / "test-other")], "held_out_speakers": None},
        "model_size": "small",
        "seeds": [0],
        "budget": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 12, "validation_steps": 1},
        "train": {"balanced_sampling": True, "input_workers": 1},
        "configurations": {
            "augmented": {"recipe": "softmax", "train": {"head": "aam", "trim": "energy", "pad": "repeat", "speed_perturb": True,
                                                         "noise_probability": 0.5, "band_limit_probability": 0.5, "spec_mask_probability": 0.5}},
            "plain": {"recipe": "softmax"},
        },
        "output_dir": str(tmp_path / "results"),
    }
    path = tmp_path / "ablation.json"
    path.write_text(json.dumps(recipe))
    return path


def test_tiny_ablation_trains_each_configuration_with_its_train_settings_on_the_waveform_cache(tmp_path):
    work = tmp_path / "work"
    csv_path = run_experiment(write_ablation_recipe(tmp_path), work)
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS + TEST_OTHER_COLUMNS
    assert [(r["config"], r["train_steps"], r["train_windows"]) for r in rows] == [("augmented", "1", "12"), ("plain", "1", "12")]
    for row in rows:
        assert 0.0 <= float(row["eer_test_other"]) <= 1.0 and 0.0 <= float(row["eer_pooled"]) <= 1.0
    augmented, plain = (json.loads((work / "runs" / name / "seed0" / "checkpoints-softmax" / "config.json").read_text()) for name in ("augmented", "plain"))
    assert {k: augmented[k] for k in ("head", "trim", "pad", "speed_perturb", "noise_probability", "balanced_sampling", "input_workers")} == {
        "head": "aam", "trim": "energy", "pad": "repeat", "speed_perturb": True, "noise_probability": 0.5, "balanced_sampling": True, "input_workers": 1}
    assert {k: plain[k] for k in ("head", "trim", "pad", "speed_perturb", "noise_probability", "balanced_sampling")} == {
        "head": "softmax", "trim": "reference", "pad": "zeros", "speed_perturb": False, "noise_probability": 0.0, "balanced_sampling": True}
    features = {p.name for p in cache_dir(work).glob("*.npy")}
    assert len(features) == 36  # 24 LibriSpeech and 12 Common Voice utterances,
    assert {p.name for p in waveform_cache_dir(work, "energy").glob("*.npy")} == features  # each also as energy-trimmed audio;
    assert not waveform_cache_dir(work, "reference").exists()  # no configuration reads reference-trimmed audio.
    readme = tmp_path / "README.md"
    readme.write_text("<!-- mtl-results -->\nkept\n<!-- /mtl-results -->\n<!-- ablation-results -->\nold table\n<!-- /ablation-results -->\n")
    update_readme_table(csv_path, readme, marker="ablation-results")
    text = readme.read_text()
    assert "kept" in text and "old table" not in text and "| augmented | 1 |" in text
    assert results_table(csv_path).splitlines()[0].startswith("| configuration | seeds | eer_test_other | eer_pooled | min_dcf_pooled |")


def test_a_results_csv_without_some_columns_still_makes_a_table(tmp_path):
    old = tmp_path / "old.csv"
    old.write_text("config,seed,model_size,train_steps,eer,min_dcf,speaker_id_acc\nsoftmax,0,small,100,0.30,0.99,0.2\nsoftmax,1,small,100,0.32,0.99,\n")
    table = results_table(old)
    assert table.splitlines()[0] == "| configuration | seeds | eer_pooled | min_dcf_pooled | speaker_id_acc |"
    assert table.splitlines()[2] == "| softmax | 2 | 0.310 ± 0.014 | 0.990 ± 0.000 | 0.200 ± 0.000 |"


def test_the_ablation_recipe_turns_off_one_part_of_the_shipped_recipe_per_configuration():
    config = load_experiment_config(REPO / "recipes" / "ablation_small.json")
    shipped = json.loads((REPO / "recipes" / "pretrained_small.json").read_text())
    assert config.train == {k: v for k, v in shipped.items() if k in config.train}
    assert set(shipped) - set(config.train) - set(RUNNER_KEYS) == {"comment", "audio_dirs", "snapshot_every"}
    assert [d.name for d in config.held_out_audio_dirs] == ["test-other", "dev-other", "VCTK", "FSDD"]
    assert [d.name for d in config.train_audio_dirs] == ["train-clean-100", "CommonVoice-fa"]
    full = dataclasses.asdict(training_phases(config, "full_recipe", 0)[0])
    differences = {name: {k for k, v in dataclasses.asdict(phases[0]).items() if v != full[k]}
                   for name in config.configurations for phases in [training_phases(config, name, 0)] if len(phases) == 1}
    assert differences == {
        "full_recipe": set(),
        "no_balanced_sampling": {"balanced_sampling"},
        "no_augmentation": {"speed_perturb", "noise_probability", "band_limit_probability", "spec_mask_probability"},
        "no_speed_perturb": {"speed_perturb"},
        "no_noise_or_band_limit": {"noise_probability", "band_limit_probability"},
        "softmax_head": {"head"},
        "reference_front_end": {"trim", "pad"},
    }
