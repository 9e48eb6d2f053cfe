"""experiment.py: the Hive-MTL comparison and a recipe ablation, end to end with a tiny budget, and bad recipes."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import keras
import pytest

from feature_cache import cache_dir, waveform_cache_dir
from constants import MAX_SEEDS_ESTIMATED
from experiment import (
    ANSWER_COLUMNS,
    CSV_COLUMNS,
    RUNNER_KEYS,
    ExperimentConfigError,
    answer_table,
    baseline_answer,
    configuration_seeds,
    csv_columns,
    device_name,
    experiment_seeds,
    held_out_corpora,
    load_experiment_config,
    mtl_answer,
    results_table,
    run_experiment,
    training_phases,
    update_readme_table,
    write_results_csv,
)
from tasks import parse_tasks

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "LibriSpeech"
COMMON_VOICE = REPO / "samples" / "CommonVoice-fa"
TEST_OTHER_COLUMNS = ("eer_test_other", "min_dcf_test_other")
LANGUAGE_COLUMNS = ("language_acc_head", "language_acc_probe", "language_acc_head_per_speaker", "language_acc_probe_per_speaker", "language_speakers")
EMOTION_COLUMNS = ("emotion_acc_head", "emotion_acc_probe", "emotion_clips", "emotion_speakers")
TINY_COLUMNS = CSV_COLUMNS + LANGUAGE_COLUMNS + EMOTION_COLUMNS + TEST_OTHER_COLUMNS + ("eer_commonvoice_fa", "min_dcf_commonvoice_fa", "eer_emodb", "min_dcf_emodb")


def write_recipe(tmp_path: Path, emodb: Path, **changes) -> Path:
    """A tiny recipe on the bundled samples and four EmoDB actors: train-clean-100, two Common Voice speakers and
    EmoDB actors 10 (M) and 14 (F) train; test-other's speakers, a third Common Voice speaker and EmoDB actors 11 (M)
    and 13 (F) are held out. Language (three-way) and emotion (per clip, from the clips table, named relative to the
    recipe) are tasks besides speaker and gender; a third configuration trains language adversarially."""
    recipe = {
        "name": "tiny",
        "splits": {"train_audio_dirs": [str(SAMPLES / "train-clean-100"), str(COMMON_VOICE), str(emodb)], "held_out_audio_dirs": [str(SAMPLES / "test-other")],
                   "held_out_training_speakers": ["0874d76d", "11", "13"], "held_out_speakers": None},
        "tasks": {"language": {"labels": {"train-clean-100": "en", "test-other": "en", "CommonVoice-fa": "fa", "EmoDB": "de"}, "loss": "categorical", "weight": 1.0},
                  "emotion": {"clips": os.path.relpath(emodb / "clips.tsv", tmp_path), "column": "emotion", "loss": "categorical", "weight": 1.0}},
        "answer": {"mtl": ["mtl_triplet", "mtl_language_adversarial"], "single": ["softmax_triplet"]},
        "model_size": "small",
        "seeds": [0],
        "budget": {"epochs": 2, "steps_per_epoch": 1, "batch_size": 12, "validation_steps": 1},
        "num_trials": None,
        "configurations": {
            "softmax_triplet": {"recipe": "softmax_triplet"},
            "mtl_triplet": {"recipe": "mtl_triplet", "gender_loss_weight": 0.5, "triplet_loss_weight": 1.0},
            "mtl_language_adversarial": {"recipe": "mtl", "tasks": {"language": {"adversarial": True, "reversal_lambda": 0.5}}},
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


def test_tiny_experiment_writes_one_csv_row_per_run_and_the_plot_and_resumes(tmp_path, emodb_sample):
    from inference import inspect_checkpoint

    recipe = write_recipe(tmp_path, emodb_sample)
    csv_path = run_experiment(recipe, tmp_path / "work")
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == TINY_COLUMNS  # The fixed columns, each task's, then each held-out corpus's (the held-out training speakers' homes last).
    backend, device = keras.backend.backend(), device_name()  # Recorded as found, whichever machine runs this.
    precision = "float32"  # The tiny recipe sets no `precision`: TrainConfig's float32, on every machine.
    assert [(r["config"], r["seed"], r["model_size"], r["backend"], r["device"], r["precision"]) for r in rows] == [
        (name, "0", "small", backend, device, precision) for name in ("softmax_triplet", "mtl_triplet", "mtl_language_adversarial")]
    assert [r["train_steps"] for r in rows] == ["2", "2", "2"]  # Same budget: one softmax + one triplet epoch against two MTL epochs.
    assert [r["train_windows"] for r in rows] == ["24", "24", "24"]
    for row in rows:  # Training time: the epochs of every phase, as the states add them up across resumed sittings.
        states = [json.loads(s.read_text()) for s in (tmp_path / "work" / "runs" / row["config"] / "seed0").glob("checkpoints-*/state.json")]
        assert len(states) == (2 if row["config"] == "softmax_triplet" else 1)
        assert float(row["train_seconds"]) == pytest.approx(sum(s["train_seconds"] for s in states), abs=0.05) and float(row["train_seconds"]) > 0
    for row in rows:
        for metric in ("eer_pooled", "min_dcf_pooled", *TEST_OTHER_COLUMNS, "eer_emodb", "speaker_id_acc", "gender_acc_probe", "language_acc_probe",
                       "gender_acc_probe_per_speaker", "language_acc_probe_per_speaker", "emotion_acc_probe"):
            assert 0.0 <= float(row[metric]) <= 1.0, metric
        assert row["eer_commonvoice_fa"] == ""  # One held-out Common Voice speaker: no trials of its own, but in the pooled ones.
        assert (row["gender_speakers"], row["language_speakers"]) == ("2 F, 2 M", "2 de, 2 en, 1 fa")  # Per-speaker figures: of these speakers (labels sorted).
        # Emotion per clip: the seven clips of each held-out actor (11 M, 13 F), one per emotion.
        assert (row["emotion_clips"], row["emotion_speakers"]) == ("2 anger, 2 boredom, 2 disgust, 2 fear, 2 happiness, 2 neutral, 2 sadness", "2")
    for head in ("gender_acc_head", "language_acc_head", "gender_acc_head_per_speaker", "language_acc_head_per_speaker", "emotion_acc_head"):  # Only Hive-MTL has the heads.
        assert rows[0][head] == "" and 0.0 <= float(rows[1][head]) <= 1.0 and 0.0 <= float(rows[2][head]) <= 1.0
    records = tmp_path / "results" / "tiny_runs"  # Each scored run's record, beside the results.
    report = json.loads((records / "softmax_triplet" / "seed0" / "evaluation.json").read_text())["report"]
    assert report["unseen_labels"]["language"] == {"de": 2, "en": 2, "fa": 1}  # test-other's two speakers, two EmoDB actors, the held-out Common Voice one.
    assert sorted(report["corpora"]) == ["EmoDB", "test-other"]  # The held-out EmoDB actors are a corpus of their own.
    assert sorted(Path(clip).stem for clip in report["clip_predictions"]["emotion"]["clips"]) == sorted(  # Cache entries of both actors' clips.
        f"{actor}_{clip.stem}" for actor in ("11", "13") for clip in (emodb_sample / actor).iterdir())
    runs = tmp_path / "work" / "runs"
    speakers = json.loads((runs / "mtl_triplet" / "seed0" / "checkpoints-mtl" / "speakers.json").read_text())
    assert {"0874d76d", "11", "13"} <= set(speakers["held_out_speakers"]) and not {"0874d76d", "11", "13"} & set(speakers["speakers"])
    assert speakers["tasks"]["language"] == {"output": "language_pred", "loss": "categorical", "classes": ["de", "en", "fa"]}
    assert speakers["tasks"]["emotion"] == {"output": "emotion_pred", "loss": "categorical",
                                            "classes": ["anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness"]}
    adversarial = runs / "mtl_language_adversarial" / "seed0" / "checkpoints-mtl"
    assert json.loads((adversarial / "config.json").read_text())["tasks"]["language"]["adversarial"] is True
    assert json.loads((adversarial / "config.json").read_text())["tasks"]["emotion"]["clips"] == str((emodb_sample / "clips.tsv").resolve())
    assert "language_pred_reversal" in inspect_checkpoint(adversarial / "best.h5").layer_names  # Its language head sits behind a gradient reversal,
    assert "language_pred_reversal" not in inspect_checkpoint(runs / "mtl_triplet" / "seed0" / "checkpoints-mtl" / "best.h5").layer_names  # Hive-MTL's not.
    with open(tmp_path / "results" / "tiny_answer.csv", newline="") as handle:
        answer = list(csv.DictReader(handle))
    assert {(r["task"], r["config"], r["baseline"], r["seeds"], r["verdict"], r["seeds_needed"]) for r in answer} >= {
        ("speaker verification", "mtl_triplet", "softmax_triplet", "1", "undecided", ""), ("language", "mtl_triplet", "softmax_triplet", "1", "undecided", ""),
        ("emotion", "mtl_triplet", "softmax_triplet", "1", "undecided", ""), ("emotion", "mtl_language_adversarial", "softmax_triplet", "1", "undecided", "")}
    eer = next(r for r in answer if r["figure"] == "EER test-other")
    assert float(eer["difference"]) == pytest.approx(float(rows[1]["eer_test_other"]) - float(rows[0]["eer_test_other"]))
    assert eer["seeds_low"] == "" and float(eer["trials_low"]) <= float(eer["difference"]) <= float(eer["trials_high"])  # One seed: only the bootstrap.
    assert eer["speakers_low"] == ""
    quick = next(r for r in mtl_answer(load_experiment_config(recipe), bootstrap_trials=False) if r["figure"] == "EER test-other")
    assert quick["trials_low"] is None and quick["difference"] == pytest.approx(float(eer["difference"]))  # As written after each run: no bootstrap over trials.
    assert any(r["figure"] == "EER EmoDB" for r in answer)
    language = next(r for r in answer if r["figure"] == "probe balanced accuracy per unseen speaker" and r["task"] == "language")
    assert float(language["difference"]) == pytest.approx(float(rows[1]["language_acc_probe_per_speaker"]) - float(rows[0]["language_acc_probe_per_speaker"]))
    assert language["trials_low"] == "" and float(language["speakers_low"]) <= float(language["difference"]) <= float(language["speakers_high"])
    emotion = next(r for r in answer if r["figure"] == "Hive-MTL head vs single-task probe, per clip" and r["config"] == "mtl_language_adversarial")
    assert float(emotion["difference"]) == pytest.approx(float(rows[2]["emotion_acc_head"]) - float(rows[0]["emotion_acc_probe"]))
    plot = tmp_path / "results" / "tiny_gender_weight.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evaluation = records / "mtl_triplet" / "seed0" / "evaluation.json"
    before = evaluation.stat().st_mtime_ns
    run_experiment(recipe, tmp_path / "work")  # A rerun skips what is scored already.
    assert evaluation.stat().st_mtime_ns == before
    assert json.loads(evaluation.read_text())["checkpoint"] == "final.h5"  # The model after its whole budget, whichever epoch validated best.
    # A run an earlier version scored at its best validation epoch, before runs kept final.h5: scored again at the end of its
    # budget, from its last weights, and not trained again (the model the first scoring read, so the same figures).
    final = runs / "mtl_triplet" / "seed0" / "checkpoints-mtl" / "final.h5"
    metrics = (final.parent / "metrics.csv").read_text()
    final.unlink()
    earlier = json.loads(evaluation.read_text())
    del earlier["checkpoint"]
    evaluation.write_text(json.dumps(earlier))
    run_experiment(recipe, tmp_path / "work")
    assert final.is_file() and (final.parent / "metrics.csv").read_text() == metrics
    assert json.loads(evaluation.read_text())["checkpoint"] == "final.h5" and evaluation.stat().st_mtime_ns != before
    with open(csv_path, newline="") as handle:
        assert list(csv.DictReader(handle)) == rows
    before = evaluation.stat().st_mtime_ns
    # A fresh clone has the committed records and no working directory: nothing is trained again, and the CSV and the
    # answer (with its bootstraps over trials and speakers) are rebuilt from the records alone.
    shutil.rmtree(tmp_path / "work")
    answer_csv = tmp_path / "results" / "tiny_answer.csv"
    written = csv_path.read_text(), answer_csv.read_text()
    csv_path.unlink(), answer_csv.unlink()
    run_experiment(recipe, tmp_path / "work")
    assert not (tmp_path / "work" / "runs").exists() and evaluation.stat().st_mtime_ns == before
    assert (csv_path.read_text(), answer_csv.read_text()) == written
    table = results_table(csv_path)
    assert "| mtl_triplet | 1 |" in table and "| eer_test_other | eer_commonvoice_fa | eer_emodb | eer_pooled | min_dcf_pooled |" in table.splitlines()[0]
    assert "| gender_acc_probe | gender_acc_head_per_speaker | gender_acc_probe_per_speaker | language_acc_head |" in table.splitlines()[0]
    assert "| emotion_acc_head | emotion_acc_probe |" in table.splitlines()[0]
    assert "gender on 4 unseen speakers (2 F, 2 M), language on 5 unseen speakers (2 de, 2 en, 1 fa)" in table
    assert "emotion on 14 clips of 2 unseen speakers (2 anger, 2 boredom, 2 disgust, 2 fear, 2 happiness, 2 neutral, 2 sadness), balanced over its 7 labels" in table
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
        ({"seeds": []}, "'seeds' must be a non-empty list of distinct integers"),
        ({"configurations.softmax_triplet.seeds": [0, 0]}, "'configurations.softmax_triplet.seeds' must be a non-empty list of distinct integers"),
        ({"configurations.mtl_language_adversarial.tasks": {"accent": {"adversarial": True}}},
         "'configurations.mtl_language_adversarial.tasks' names a task the recipe does not declare: 'accent'"),
        ({"configurations.softmax_triplet.tasks": {"language": {"adversarial": True}}}, "'configurations.softmax_triplet.tasks': tasks are Hive-MTL heads"),
        ({"configurations.mtl_language_adversarial.tasks": {"language": {"adversarial": False, "reversal_lambda": 0.5}}},
         "'configurations.mtl_language_adversarial.tasks': task 'language': 'reversal_lambda' scales a gradient reversal"),
        ({"tasks.emotion.column": "mood"}, "'tasks': task 'emotion': .*clips.tsv: a clips table needs a header with a 'path' column and the label column 'mood'"),
        ({"tasks.emotion.clips": "nowhere.tsv"}, "'tasks': task 'emotion': .*nowhere.tsv: no such clips table"),
        ({"speaker_genders": {"george": "boy"}}, "'speaker_genders' must map speakers to M or F (male, female): gender 'boy'"),
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
        ({"answer": {"baseline": "shipped"}}, "'answer' names an unknown configuration 'shipped'"),
        ({"answer": {"baseline": ["softmax_triplet"]}}, "'answer' must be .* or {\"baseline\": configuration}"),
        ({"answer": {"baseline": "softmax_triplet", "mtl": ["mtl_triplet"]}}, "'answer' must be"),
        ({"durations": [1, -2]}, "'durations' must be a list of distinct positive numbers of seconds"),
        ({"durations": [1, 1.0]}, "'durations' must be a list of distinct positive numbers of seconds"),
        ({"durations": "1,2"}, "'durations' must be a list of distinct positive numbers of seconds"),
    ],
)
def test_bad_recipes_are_refused_naming_the_key(tmp_path, emodb_sample, change, message):
    with pytest.raises(ExperimentConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_experiment_config(write_recipe(tmp_path, emodb_sample, **change))
    assert not (tmp_path / "results").exists()


def test_the_shipped_recipe_is_valid_and_names_every_split():
    from corpus import index_corpus

    config = load_experiment_config(REPO / "recipes" / "mtl_vs_single.json")
    assert {"softmax", "softmax_triplet", "mtl", "mtl_triplet", "mtl_language_adversarial"} <= set(config.configurations)
    assert {name: len(configuration_seeds(config, name)) for name in config.configurations} == {
        "softmax": 6, "softmax_triplet": 6, "mtl": 6, "mtl_triplet": 6, "mtl_language_adversarial": 6}
    assert [d.name for d in config.held_out_audio_dirs] == ["test-other", "dev-other", "VCTK", "FSDD"]
    assert [d.name for d in config.train_audio_dirs] == ["train-clean-100", "CommonVoice-fa", "EmoDB"]
    budget = config.budget
    assert budget["epochs"] * budget["steps_per_epoch"] * budget["batch_size"] >= 100_000
    emodb = index_corpus(config.train_audio_dirs[2])
    held_out = {s for s in config.held_out_training_speakers if s in emodb.speakers}
    assert len(held_out) == 4 and len(set(emodb.speakers) - held_out) == 6  # EmoDB's actors: 4 unseen, 6 train, both genders each side.
    assert {emodb.genders[s] for s in held_out} == {emodb.genders[s] for s in set(emodb.speakers) - held_out} == {"F", "M"}
    assert len(config.held_out_training_speakers) - len(held_out) >= 5  # Common Voice speakers, for the language task.
    assert held_out_corpora(config)[-2:] == ["CommonVoice-fa", "EmoDB"]  # Each scored on its own.
    language, emotion = parse_tasks(config.tasks)
    assert (language.name, language.loss, language.classes, language.labels["EmoDB"]) == ("language", "categorical", ("de", "en", "fa"), "de")
    assert (emotion.name, emotion.per_clip, emotion.loss, len(emotion.classes)) == ("emotion", True, "categorical", 7)
    phases = {name: training_phases(config, name, 0) for name in config.configurations}
    shared = {"head", "balanced_sampling", "trim", "pad", "speed_perturb", "noise_probability", "validation_split", "held_out_speakers"}
    for name, configs in phases.items():  # One recipe, sampler, validation set and held-out split for every configuration.
        assert all({k: getattr(c, k) for k in shared} == {k: getattr(phases["softmax"][0], k) for k in shared} for c in configs), name
    assert sum(c.epochs for c in phases["softmax_triplet"]) == phases["mtl"][0].epochs
    (mtl,), (adversarial,) = phases["mtl"], phases["mtl_language_adversarial"]
    changed = {k for k, v in dataclasses.asdict(adversarial).items() if v != getattr(mtl, k)}
    assert changed == {"tasks"} and adversarial.tasks == {**mtl.tasks, "language": {**mtl.tasks["language"], "adversarial": True, "reversal_lambda": 1.0}}
    assert set(config.answer["mtl"]) == {"mtl", "mtl_triplet", "mtl_language_adversarial"}
    assert config.durations == []  # Whole files only: its CSV keeps the columns of the runs scored so far.


def test_each_configuration_runs_its_own_seeds_and_the_csv_keeps_only_those(tmp_path, emodb_sample):
    config = load_experiment_config(write_recipe(tmp_path, emodb_sample, seeds=[0, 1], **{"configurations.softmax_triplet.seeds": [2, 0]}))
    assert configuration_seeds(config, "softmax_triplet") == [2, 0] and configuration_seeds(config, "mtl_triplet") == [0, 1]
    assert experiment_seeds(config) == [0, 1, 2]
    for name, seed in (("softmax_triplet", 0), ("softmax_triplet", 1), ("softmax_triplet", 2), ("mtl_triplet", 2)):  # Scored runs, as run_experiment leaves them.
        result = tmp_path / "results" / "tiny_runs" / name / f"seed{seed}" / "evaluation.json"
        result.parent.mkdir(parents=True)
        result.write_text(json.dumps({"row": {"config": name, "seed": seed, "train_windows": 24, "eer_pooled": 0.25}, "report": {}}))
    with open(write_results_csv(config), newline="") as handle:
        rows = [(r["config"], r["seed"]) for r in csv.DictReader(handle)]
    assert rows == [("softmax_triplet", "2"), ("softmax_triplet", "0")]  # Seed 1 is not softmax_triplet's, seed 2 not mtl_triplet's.


def test_the_answer_says_how_many_seeds_would_decide_an_undecided_figure(tmp_path, emodb_sample):
    config = load_experiment_config(write_recipe(tmp_path, emodb_sample, seeds=[0, 1, 2]))
    eers = {"softmax_triplet": [0.030, 0.020, 0.040], "mtl_triplet": [0.020, 0.021, 0.031], "mtl_language_adversarial": [0.010, 0.000, 0.020]}
    (tmp_path / "results").mkdir()
    with open(tmp_path / "results" / "tiny.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["config", "seed", "eer_test_other"])
        writer.writeheader()
        writer.writerows({"config": name, "seed": seed, "eer_test_other": eer} for name, values in eers.items() for seed, eer in enumerate(values))
    answer = {row["config"]: row for row in mtl_answer(config)}
    # Differences -0.010, +0.001, -0.009: mean -0.006, SD 0.006; the t interval over 3 seeds spans zero, and would exclude it at 7 seeds.
    assert (answer["mtl_triplet"]["verdict"], answer["mtl_triplet"]["seeds_needed"]) == ("undecided", 7)
    assert answer["mtl_triplet"]["seeds_low"] < 0 < answer["mtl_triplet"]["seeds_high"]
    assert (answer["mtl_language_adversarial"]["verdict"], answer["mtl_language_adversarial"]["seeds_needed"]) == ("supported", None)  # -0.020 on every seed.


def test_an_answer_table_says_no_difference_where_deciding_would_take_more_seeds_than_are_worth_estimating(tmp_path):
    answer_csv = tmp_path / "answer.csv"
    rows = [("EER VCTK", "0.012", "12"), ("emotion head", "0.001", str(MAX_SEEDS_ESTIMATED + 1))]
    with open(answer_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ANSWER_COLUMNS)
        writer.writeheader()
        writer.writerows({**dict.fromkeys(ANSWER_COLUMNS, ""), "task": "t", "figure": figure, "config": "mtl", "baseline": "softmax", "seeds": "6",
                          "mean": "0.5", "baseline_mean": "0.5", "difference": difference, "seeds_low": "-0.1", "seeds_high": "0.1",
                          "verdict": "undecided", "seeds_needed": needed} for figure, difference, needed in rows)
    table = answer_table(answer_csv)
    assert "| undecided (about 12 seeds in all) |" in table
    assert f"| undecided (no difference at this spread: over {MAX_SEEDS_ESTIMATED} seeds) |" in table
    assert f"about {MAX_SEEDS_ESTIMATED + 1} seeds" not in table


def test_two_seeds_that_agree_decide_nothing(tmp_path, emodb_sample):
    config = load_experiment_config(write_recipe(tmp_path, emodb_sample, seeds=[0, 1]))
    eers = {"softmax_triplet": [0.030, 0.020], "mtl_triplet": [0.041, 0.030]}  # Differences +0.011 and +0.010: worse on both seeds.
    (tmp_path / "results").mkdir()
    with open(tmp_path / "results" / "tiny.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["config", "seed", "eer_test_other"])
        writer.writeheader()
        writer.writerows({"config": name, "seed": seed, "eer_test_other": eer} for name, values in eers.items() for seed, eer in enumerate(values))
    (row,) = mtl_answer(config)
    assert row["seeds_high"] > row["seeds_low"] > 0  # The one-degree-of-freedom interval excludes zero,
    assert (row["verdict"], row["seeds_needed"]) == ("undecided", 3)  # yet two seeds decide nothing: a third is the fewest that may.


def test_a_baseline_answer_compares_each_other_configuration_with_the_baseline_corpus_by_corpus_and_crop_by_crop(tmp_path, emodb_sample):
    config = load_experiment_config(write_recipe(tmp_path, emodb_sample, seeds=[0, 1, 2], durations=[1, 2], answer={"baseline": "softmax_triplet"}))
    eers = {  # (whole files, 1 s crops, 2 s crops) for seeds 0, 1, 2.
        "softmax_triplet": [(0.020, 0.100, 0.060), (0.030, 0.120, 0.070), (0.020, 0.110, 0.050)],
        "mtl_triplet": [(0.030, 0.080, 0.050), (0.040, 0.100, 0.060), (0.030, 0.090, 0.040)],  # Whole +0.010, 1 s -0.020, 2 s -0.010 on every seed.
        "mtl_language_adversarial": [(0.030, 0.100, 0.060), (0.020, 0.120, 0.070), (0.020, 0.110, 0.050)],  # Whole +0.010, -0.010, 0: undecided.
    }
    (tmp_path / "results").mkdir()
    with open(tmp_path / "results" / "tiny.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["config", "seed", "eer_test_other", "eer_test_other_1s", "eer_test_other_2s"])
        writer.writeheader()
        writer.writerows({"config": name, "seed": seed, "eer_test_other": whole, "eer_test_other_1s": one, "eer_test_other_2s": two}
                         for name, values in eers.items() for seed, (whole, one, two) in enumerate(values))
    answer = {(row["config"], row["figure"]): row for row in baseline_answer(config)}
    assert set(answer) == {(name, figure) for name in ("mtl_triplet", "mtl_language_adversarial")
                           for figure in ("EER test-other", "EER test-other, 1 s crops", "EER test-other, 2 s crops")}  # Corpora without figures: no row.
    assert {row["baseline"] for row in answer.values()} == {"softmax_triplet"}
    verdicts = {key: row["verdict"] for key, row in answer.items() if key[0] == "mtl_triplet"}
    assert verdicts == {("mtl_triplet", "EER test-other"): "refuted", ("mtl_triplet", "EER test-other, 1 s crops"): "supported",
                        ("mtl_triplet", "EER test-other, 2 s crops"): "supported"}
    short = answer[("mtl_triplet", "EER test-other, 1 s crops")]
    assert (short["mean"], short["baseline_mean"], short["difference"]) == pytest.approx((0.090, 0.110, -0.020))
    assert answer[("mtl_language_adversarial", "EER test-other")]["verdict"] == "undecided"
    with open(tmp_path / "results" / "tiny_answer.csv", "w", newline="") as handle:  # As write_answer_csv writes it.
        writer = csv.DictWriter(handle, list(short))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in answer.values())
    assert "| speaker verification | EER test-other, 1 s crops | mtl_triplet 0.090 | softmax_triplet 0.110 | 3 | -0.020 |" in answer_table(tmp_path / "results" / "tiny_answer.csv")


def write_ablation_recipe(tmp_path: Path, **extra) -> Path:
    """A tiny ablation on the bundled samples: LibriSpeech and Common Voice (MP3) speakers train, test-other is held out;
    `extra` adds top-level keys (e.g. durations)."""
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
        **extra,
    }
    path = tmp_path / "ablation.json"
    path.write_text(json.dumps(recipe))
    return path


def test_tiny_ablation_trains_each_configuration_with_its_train_settings_on_the_waveform_cache_then_scores_added_durations(tmp_path):
    work = tmp_path / "work"
    csv_path = run_experiment(write_ablation_recipe(tmp_path), work)
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS + TEST_OTHER_COLUMNS  # Without 'durations', whole files only.
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
    assert "eer_<corpus>_<s>s" not in results_table(csv_path)

    # The same recipe given durations later: each run is scored again on centred crops, with the code of test-model --durations,
    # and not trained again.
    checkpoint = work / "runs" / "plain" / "seed0" / "checkpoints-softmax" / "best.h5"
    trained = checkpoint.stat().st_mtime_ns
    csv_path = run_experiment(write_ablation_recipe(tmp_path, durations=[1, 0.5]), work)
    with open(csv_path, newline="") as handle:
        scored = list(csv.DictReader(handle))
    assert tuple(scored[0]) == CSV_COLUMNS + TEST_OTHER_COLUMNS + ("eer_test_other_1s", "min_dcf_test_other_1s", "eer_test_other_0_5s", "min_dcf_test_other_0_5s")
    assert checkpoint.stat().st_mtime_ns == trained and [r["train_seconds"] for r in scored] == [r["train_seconds"] for r in rows]
    for before, after in zip(rows, scored):
        assert (after["config"], after["eer_test_other"], after["eer_pooled"]) == (before["config"], before["eer_test_other"], before["eer_pooled"])
        report = json.loads((tmp_path / "results" / "tiny_ablation_runs" / after["config"] / "seed0" / "evaluation.json").read_text())["report"]
        assert sorted(report["durations"]["test-other"]) == ["0.5", "1"]
        for seconds, column in (("1", "test_other_1s"), ("0.5", "test_other_0_5s")):
            figures = report["durations"]["test-other"][seconds]
            assert (float(after[f"eer_{column}"]), float(after[f"min_dcf_{column}"])) == (figures["eer"], figures["min_dcf_001"])
            assert 0.0 <= figures["eer"] <= 1.0 and figures["num_trials"] == report["corpora"]["test-other"]["num_trials"]  # The same trials, cropped.
    table = results_table(csv_path)
    assert table.splitlines()[0].startswith("| configuration | seeds | eer_test_other | eer_test_other_1s | eer_test_other_0_5s | eer_pooled |")
    assert "eer_<corpus>_<s>s: the same corpus's trials on centred crops of s seconds of every file" in table
    evaluation = tmp_path / "results" / "tiny_ablation_runs" / "plain" / "seed0" / "evaluation.json"
    scored_at = evaluation.stat().st_mtime_ns
    run_experiment(write_ablation_recipe(tmp_path, durations=[1]), work)  # Every duration asked for is scored already: skipped.
    assert evaluation.stat().st_mtime_ns == scored_at


def test_a_results_csv_without_some_columns_still_makes_a_table(tmp_path):
    old = tmp_path / "old.csv"
    old.write_text("config,seed,model_size,train_steps,eer,min_dcf,speaker_id_acc\nsoftmax,0,small,100,0.30,0.99,0.2\nsoftmax,1,small,100,0.32,0.99,\n")
    table = results_table(old)
    assert table.splitlines()[0] == "| configuration | seeds | eer_pooled | min_dcf_pooled | speaker_id_acc |"
    assert table.splitlines()[2] == "| softmax | 2 | 0.310 ± 0.014 | 0.990 ± 0.000 | 0.200 ± 0.000 |"


def test_durations_follow_each_held_out_corpus_as_a_column_pair_per_crop_length(tmp_path, emodb_sample):
    config = load_experiment_config(write_recipe(tmp_path, emodb_sample, durations=[2, 0.5]))
    corpora = ("test_other", "commonvoice_fa", "emodb")
    crops = tuple(f"{metric}_{corpus}{crop}" for corpus in corpora for crop in ("", "_2s", "_0_5s") for metric in ("eer", "min_dcf"))
    assert csv_columns(config) == TINY_COLUMNS[: -2 * len(corpora)] + crops


def test_an_experiment_recipes_noise_and_room_folders_are_relative_to_the_recipe_file(tmp_path, emodb_sample):
    for folder in ("rooms", "noise"):
        (tmp_path / folder).mkdir()
        shutil.copy(REPO / "samples" / "PhilippeRemy" / "PhilippeRemy_001.wav", tmp_path / folder)
    recipe = write_recipe(tmp_path, emodb_sample, train={"reverb_probability": 0.3, "rir_dir": "rooms"},
                          **{"configurations.mtl_triplet.train": {"noise_probability": 0.5, "noise_dir": "noise"}})
    config = load_experiment_config(recipe)  # Run from the repository, not beside the recipe: a folder read as given would be missing.
    rooms, noise, nowhere = (str((tmp_path / name).resolve()) for name in ("rooms", "noise", "nowhere"))
    assert {(p.rir_dir, p.noise_dir) for p in training_phases(config, "softmax_triplet", 0)} == {(rooms, None)}
    assert [(p.rir_dir, p.noise_dir) for p in training_phases(config, "mtl_triplet", 0)] == [(rooms, noise)]
    with pytest.raises(ExperimentConfigError, match=re.escape(f"{recipe}: 'configurations.softmax_triplet' cannot train its softmax phase: "
                                                              f"--rir_dir {nowhere}: no such folder")):
        load_experiment_config(write_recipe(tmp_path, emodb_sample, train={"reverb_probability": 0.3, "rir_dir": "nowhere"}))


def test_the_windows_and_reverb_recipe_adds_variable_windows_reverberation_or_both_to_the_shipped_recipe():
    config = load_experiment_config(REPO / "recipes" / "windows_and_reverb.json")
    assert config.durations == [1.0, 2.0]  # Short clips are what the comparison is about: every corpus also on 1 and 2 s crops.
    shipped = json.loads((REPO / "recipes" / "pretrained_small.json").read_text())
    assert config.train == {k: v for k, v in shipped.items() if k in config.train}
    assert [d.name for d in config.held_out_audio_dirs] == ["test-other", "dev-other", "VCTK", "FSDD"]
    # What is kept is chosen on training-corpus speakers held out of training (their own column and crops), not on the test corpora.
    # Six Common Voice speakers and twelve English ones (two with many utterances for same-speaker trials), both genders.
    assert {"eer_commonvoice_fa_1s", "eer_train_clean_100_1s"} <= set(csv_columns(config)) and len(config.held_out_training_speakers) == 18
    assert {"19", "27"} <= set(config.held_out_training_speakers)
    assert len(config.seeds) >= 3  # Differences come with their spread over seeds,
    assert config.answer == {"baseline": "shipped_recipe"}  # each addition against the recipe without it.
    phases = {name: training_phases(config, name, 0) for name in config.configurations}
    assert all(len(p) == 1 for p in phases.values())  # One softmax phase each: the same number of training windows.
    base = dataclasses.asdict(phases["shipped_recipe"][0])
    assert base["window_seconds"] is None and base["reverb_probability"] == 0
    differences = {name: {k: v for k, v in dataclasses.asdict(p[0]).items() if v != base[k]} for name, p in phases.items()}
    assert differences == {
        "shipped_recipe": {},
        "variable_windows": {"window_seconds": [0.5, 2.0]},
        "reverberation": {"reverb_probability": 0.3},
        "variable_windows_and_reverberation": {"window_seconds": [0.5, 2.0], "reverb_probability": 0.3},
    }


def test_the_ablation_recipe_turns_off_one_part_of_the_shipped_recipe_per_configuration():
    config = load_experiment_config(REPO / "recipes" / "ablation_small.json")
    shipped = json.loads((REPO / "recipes" / "pretrained_small.json").read_text())
    assert config.train == {k: v for k, v in shipped.items() if k in config.train}
    # Besides what a recipe file holds, the shipped recipe took two settings after the ablation was run (issue #21): variable
    # windows, measured by recipes/windows_and_reverb.json, and a calibration split, which changes no training window.
    assert set(shipped) - set(config.train) - set(RUNNER_KEYS) == {"comment", "audio_dirs", "snapshot_every", "window_seconds", "calibration_speakers"}
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
