"""Experiments: configurations trained on the same data and budget, compared over seeds.

The Hive-MTL comparison (`recipes/mtl_vs_single.json`: does one unified embedding serve every
task as well as specialised ones?) and ablations of the training recipe
(`recipes/ablation_small.json`: what each part of the shipped model's recipe is worth) run on the
same machinery. A recipe file (JSON) names the data splits, the model size, the step budget, the
seeds and the configurations to compare; its `train` object holds TrainConfig settings shared by
every configuration (head, sampling, augmentation, front end, ...); a configuration's own `train`
object overrides them, its `seeds` replace the recipe's, and its `tasks` change the recipe's label
tasks for it alone (e.g. `{"language": {"adversarial": true}}`). `run_experiment` trains every
configuration with each of its seeds, scores each model with the code paths `test-model` uses,
and writes one CSV row per run (EER and minDCF per held-out corpus and pooled; with the recipe's
`durations`, also per corpus on centred crops of every file, as `test-model --durations`) plus, if the
recipe asks for them, a plot and the answer (each configuration against its baseline, figure by
figure, with a verdict: Hive-MTL against single-task training, or a recipe with an addition against
the recipe without it; rewritten after every run, as the CSV is).

Each scored run leaves a record beside the results (its evaluation.json and trial scores), committed
with them: the CSV, the answer and its bootstraps are rebuilt from the records alone, and a run with
a record is skipped when the command runs again, on this machine or on a fresh clone. The working
directory is scratch: within it, an interrupted training resumes after its last finished epoch.

    <working_dir>/audio-fbanks/, corpus.json     the training speakers' feature cache
    <working_dir>/audio-waveforms-<trim>/        trimmed audio, for configurations that augment
    <working_dir>/runs/<configuration>/seed<k>/  run directories (checkpoints, states, logs)
    results/<name>_runs/<configuration>/seed<k>/ each scored run's evaluation.json and trial_scores.npz
    results/<name>.csv, results/<name>_answer.csv, results/<name>_gender_weight.png
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from constants import MAX_SEEDS_ESTIMATED, MIN_SEEDS_FOR_VERDICT
from corpus import gender_label, index_corpus
from fileio import write_atomically, write_json_atomically, write_text_atomically
from tasks import gender_task, parse_tasks, resolve_clip_tables

logger = logging.getLogger(__name__)

RECIPES = ("softmax", "softmax_triplet", "mtl", "mtl_triplet")
# Label-task accuracies on the unseen speakers (`probes.label_task_accuracies`): per file, then per speaker (each speaker
# once, its files' mean probability deciding), then `<task>_speakers`, the unseen speakers of each label ("7 F, 14 M").
TASK_COLUMN_SUFFIXES = ("_acc_head", "_acc_probe", "_acc_head_per_speaker", "_acc_probe_per_speaker", "_speakers")
# A per-clip task's (`probes.clip_task_accuracies`): balanced accuracies over the unseen speakers' labelled clips, then
# `<task>_clips`, those clips per label ("49 anger, 31 boredom, ..."), and `<task>_speakers`, how many speakers they are of.
CLIP_TASK_COLUMN_SUFFIXES = ("_acc_head", "_acc_probe", "_clips", "_speakers")
# Every CSV starts with these (`precision`: the Keras policy the run's `precision` setting means on the machine that
# finished it, mixed_bfloat16 or float32 on a CPU; empty for rows scored before it was recorded); one `eer_<corpus>`, `min_dcf_<corpus>` pair per held-out corpus follows, each followed by
# an `eer_<corpus>_<s>s`, `min_dcf_<corpus>_<s>s` pair per duration of the recipe's `durations` (`csv_columns`).
CSV_COLUMNS = (
    "config", "seed", "model_size", "backend", "device", "precision", "train_steps", "train_windows", "eer_pooled", "min_dcf_pooled",
    "speaker_id_acc", *(f"gender{suffix}" for suffix in TASK_COLUMN_SUFFIXES), "gender_loss_weight", "triplet_loss_weight", "train_seconds",
)
LEGACY_COLUMNS = {"eer": "eer_pooled", "min_dcf": "min_dcf_pooled"}  # CSVs written before per-corpus figures.
RECIPE_KEYS = ("name", "comment", "splits", "speaker_genders", "model_size", "seeds", "budget", "num_trials", "durations", "train", "tasks",
               "configurations", "gender_weight_plot", "output_dir", "answer")
BUDGET_KEYS = ("epochs", "steps_per_epoch", "batch_size", "validation_steps", "learning_rate")
CONFIGURATION_KEYS = ("recipe", "speaker_loss_weight", "gender_loss_weight", "triplet_loss_weight", "train", "seeds", "tasks")
# TrainConfig fields a `train` object may not set, because the runner sets them: where a recipe sets them instead.
RUNNER_KEYS = {
    "mode": "the configuration's 'recipe'", "seed": "'seeds'", "model_size": "'model_size'",
    "epochs": "'budget'", "steps_per_epoch": "'budget'", "batch_size": "'budget'", "validation_steps": "'budget'", "learning_rate": "'budget'",
    "held_out_speakers": "'splits.held_out_training_speakers'", "initial_checkpoint": "the 'softmax_triplet' recipe", "tasks": "the recipe's 'tasks'",
    "speaker_loss_weight": "the configuration", "gender_loss_weight": "the configuration", "triplet_loss_weight": "the configuration",
}
TABLE_METRICS = ("min_dcf_pooled", "speaker_id_acc")  # Shown after the EERs when they have values, then each task's accuracies.
ACCURACY_SUFFIXES = TASK_COLUMN_SUFFIXES[:4]


class ExperimentConfigError(ValueError):
    """A recipe file that cannot be run; the message names the key."""


@dataclass
class ExperimentConfig:
    """A recipe file, validated. Paths are relative to the recipe file's folder."""

    name: str
    train_audio_dirs: list[Path]
    held_out_audio_dirs: list[Path]
    held_out_speakers: list[str] | None
    speaker_genders: dict[str, str]
    model_size: str
    seeds: list[int]
    budget: dict
    num_trials: int | None
    configurations: dict[str, dict]
    gender_weight_plot: list[str] = field(default_factory=list)
    output_dir: Path = Path("results")
    train: dict = field(default_factory=dict)  # TrainConfig settings of every configuration; each may override them.
    tasks: dict = field(default_factory=dict)  # Label tasks besides gender: trained by Hive-MTL, scored (probe) for every configuration.
    held_out_training_speakers: list[str] = field(default_factory=list)  # Speakers of the training folders kept out of training and scored.
    answer: dict = field(default_factory=dict)  # What `answer_rows` compares: {"mtl": [...], "single": [...]} or {"baseline": name}.
    durations: list[float] = field(default_factory=list)  # Seconds of the centred crops each corpus is also scored on.


def load_experiment_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read and check a recipe file before any work starts; errors name the offending key."""
    path = Path(path)
    raw = read_recipe(path)
    base = path.parent
    splits = required(path, raw, "splits")
    configurations = required(path, raw, "configurations")
    tasks = check_tasks(path, raw.get("tasks", {}), base)
    check_configurations(path, configurations, tasks)
    plot = check_names(path, "gender_weight_plot", raw.get("gender_weight_plot", []), configurations)
    config = ExperimentConfig(
        name=raw.get("name", path.stem),
        train_audio_dirs=split_folders(path, splits, "train_audio_dirs"),
        held_out_audio_dirs=split_folders(path, splits, "held_out_audio_dirs"),
        held_out_speakers=splits.get("held_out_speakers"),
        speaker_genders=check_speaker_genders(path, raw.get("speaker_genders", {})),
        model_size=check_model_size(path, raw.get("model_size", "small")),
        seeds=check_seeds(path, "seeds", required(path, raw, "seeds")),
        budget=check_budget(path, required(path, raw, "budget")),
        num_trials=raw.get("num_trials"),
        durations=check_durations(path, raw.get("durations", [])),
        configurations=configurations,
        gender_weight_plot=plot,
        output_dir=(base / raw.get("output_dir", "../results")).resolve(),
        train=check_train_settings(path, "train", raw.get("train", {})),
        tasks=tasks,
        held_out_training_speakers=check_kept_out_speakers(path, splits.get("held_out_training_speakers") or []),
        answer=check_answer(path, raw.get("answer", {}), configurations),
    )
    check_training_phases(path, config)
    check_columns(path, config)
    check_splits(path, config)
    return config


def read_recipe(path: Path) -> dict:
    """The recipe file's JSON object, with only known top-level keys."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such experiment recipe")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ExperimentConfigError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise ExperimentConfigError(f"{path}: a recipe must be a JSON object")
    for key in raw:
        if key not in RECIPE_KEYS:
            raise ExperimentConfigError(f"{path}: unknown key '{key}' (known: {', '.join(RECIPE_KEYS)})")
    return raw


def required(path: Path, raw: dict, key: str):
    """`raw[key]`, or an error naming the missing key."""
    if key not in raw:
        raise ExperimentConfigError(f"{path}: missing key '{key}'")
    return raw[key]


def split_folders(path: Path, splits: dict, key: str) -> list[Path]:
    """`splits[key]`: a non-empty list of existing folders, resolved against the recipe's folder."""
    value = splits.get(key)
    if not isinstance(value, list) or not value:
        raise ExperimentConfigError(f"{path}: 'splits.{key}' must be a non-empty list of folders")
    resolved = [(path.parent / v).resolve() for v in value]
    for folder in resolved:
        if not folder.is_dir():
            raise ExperimentConfigError(f"{path}: 'splits.{key}' names a missing folder: {folder}")
    return resolved


def check_tasks(path: Path, tasks: dict, base: Path) -> dict:
    """The recipe's label tasks, their clip tables resolved against `base`; they must parse."""
    tasks = resolve_clip_tables(tasks, base)
    try:
        parse_tasks(tasks)
    except ValueError as error:
        raise ExperimentConfigError(f"{path}: 'tasks': {error}") from None
    return tasks


def check_configurations(path: Path, configurations, tasks: dict) -> None:
    """Each configuration: a known recipe, known keys, loss weights >= 0, valid train settings, seeds and tasks.

    A configuration's own folders and clip tables are resolved against the recipe's folder in place.
    """
    if not isinstance(configurations, dict) or not configurations:
        raise ExperimentConfigError(f"{path}: 'configurations' must map names to settings")
    for name, settings in configurations.items():
        where = f"configurations.{name}"
        if settings.get("recipe") not in RECIPES:
            raise ExperimentConfigError(f"{path}: '{where}.recipe' must be one of {', '.join(RECIPES)}; got {settings.get('recipe')!r}")
        for key, value in settings.items():
            if key not in CONFIGURATION_KEYS:
                raise ExperimentConfigError(f"{path}: unknown key '{where}.{key}' (known: {', '.join(CONFIGURATION_KEYS)})")
            if key.endswith("_loss_weight") and not (isinstance(value, (int, float)) and value >= 0):
                raise ExperimentConfigError(f"{path}: '{where}.{key}' must be a number >= 0; got {value!r}")
        if "train" in settings:
            settings["train"] = check_train_settings(path, f"{where}.train", settings["train"])
        if "seeds" in settings:
            check_seeds(path, f"{where}.seeds", settings["seeds"])
        if isinstance(settings.get("tasks"), dict):
            settings["tasks"] = resolve_clip_tables(settings["tasks"], path.parent)
        check_configuration_tasks(path, name, settings, tasks)


def check_names(path: Path, key: str, names: list[str], configurations: dict) -> list[str]:
    """`names` (the recipe's `key`) must all be configurations."""
    for name in names:
        if name not in configurations:
            raise ExperimentConfigError(f"{path}: '{key}' names an unknown configuration '{name}' (known: {', '.join(configurations)})")
    return names


def check_budget(path: Path, budget: dict) -> dict:
    """The step budget every configuration shares: known keys only."""
    for key in budget:
        if key not in BUDGET_KEYS:
            raise ExperimentConfigError(f"{path}: unknown key 'budget.{key}' (known: {', '.join(BUDGET_KEYS)})")
    return budget


def check_kept_out_speakers(path: Path, kept_out) -> list[str]:
    """`splits.held_out_training_speakers`: a list of speaker names."""
    if not isinstance(kept_out, list) or not all(isinstance(s, str) for s in kept_out):
        raise ExperimentConfigError(f"{path}: 'splits.held_out_training_speakers' must be a list of speaker names")
    return kept_out


def check_answer(path: Path, answer: dict, configurations: dict) -> dict:
    """`answer`: empty; {"mtl": [...], "single": [...]} (each Hive-MTL configuration against the best single-task one,
    task by task); or {"baseline": name} (every other configuration against that one, on each verification figure:
    additions to a recipe, each measured against the recipe without it)."""
    usage = "'answer' must be {\"mtl\": [configurations], \"single\": [configurations]} or {\"baseline\": configuration}"
    if answer and set(answer) == {"baseline"}:
        names = [answer["baseline"]] if isinstance(answer["baseline"], str) else None
    elif answer and set(answer) == {"mtl", "single"}:
        names = [*answer["mtl"], *answer["single"]] if all(isinstance(answer[k], list) and answer[k] for k in answer) else None
    else:
        names = [] if not answer else None
    if names is None:
        raise ExperimentConfigError(f"{path}: {usage}")
    for name in names:
        if name not in configurations:
            raise ExperimentConfigError(f"{path}: 'answer' names an unknown configuration {name!r} (known: {', '.join(configurations)})")
    return answer


def check_speaker_genders(path: Path, speaker_genders: dict) -> dict[str, str]:
    """`speaker_genders` as M or F labels; speakers whose value names no gender are left out."""
    try:
        labels = {speaker: gender_label(value) for speaker, value in speaker_genders.items()}
    except (AttributeError, ValueError) as error:
        raise ExperimentConfigError(f"{path}: 'speaker_genders' must map speakers to M or F (male, female): {error}") from None
    return {speaker: gender for speaker, gender in labels.items() if gender}


def check_model_size(path: Path, model_size) -> str:
    """'small' or 'full'."""
    if model_size not in ("small", "full"):
        raise ExperimentConfigError(f"{path}: 'model_size' must be 'small' or 'full'; got {model_size!r}")
    return model_size


def check_seeds(path: Path, where: str, seeds) -> list[int]:
    """A non-empty list of distinct integers."""
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) < len(seeds):
        raise ExperimentConfigError(f"{path}: '{where}' must be a non-empty list of distinct integers; got {seeds!r}")
    return seeds


def check_configuration_tasks(path: Path, name: str, settings: dict, tasks: dict) -> None:
    """A configuration's `tasks`: changes to the recipe's tasks (e.g. {"language": {"adversarial": true}}), for a Hive-MTL recipe."""
    changes = settings.get("tasks")
    if changes is None:
        return
    where = f"configurations.{name}.tasks"
    if not settings["recipe"].startswith("mtl"):
        raise ExperimentConfigError(f"{path}: '{where}': tasks are Hive-MTL heads; the {settings['recipe']!r} recipe has none")
    if not isinstance(changes, dict) or not all(isinstance(change, dict) for change in changes.values()):
        raise ExperimentConfigError(f"{path}: '{where}' must map task names to the keys it changes, e.g. {{\"language\": {{\"adversarial\": true}}}}")
    unknown = sorted(set(changes) - set(tasks))
    if unknown:
        raise ExperimentConfigError(f"{path}: '{where}' names a task the recipe does not declare: {unknown[0]!r} (declared: {', '.join(tasks) or 'none'})")
    try:
        parse_tasks(configuration_task_specs(tasks, changes))
    except ValueError as error:
        raise ExperimentConfigError(f"{path}: '{where}': {error}") from None


def configuration_task_specs(tasks: dict, changes: dict) -> dict:
    """The recipe's tasks with a configuration's changes over them, key by key."""
    return {name: {**spec, **changes.get(name, {})} for name, spec in tasks.items()}


def configuration_tasks(config: "ExperimentConfig", name: str) -> dict:
    """The tasks a configuration trains: the recipe's, with the configuration's own `tasks` changes."""
    return configuration_task_specs(config.tasks, config.configurations[name].get("tasks", {}))


def configuration_seeds(config: "ExperimentConfig", name: str) -> list[int]:
    """The seeds a configuration runs: its own `seeds`, else the recipe's."""
    return config.configurations[name].get("seeds", config.seeds)


def experiment_seeds(config: "ExperimentConfig") -> list[int]:
    """Every seed some configuration runs: the recipe's in order, then the others as configurations name them."""
    return list(dict.fromkeys([*config.seeds, *(seed for name in config.configurations for seed in configuration_seeds(config, name))]))


def check_train_settings(path: Path, where: str, settings) -> dict:
    """A `train` object: TrainConfig fields the runner does not own, each with a value of the field's type;
    returned with its folders (rir_dir, noise_dir) resolved against the recipe's folder, as `train --recipe` does."""
    from train_config import TrainConfig, resolve_recipe_folders

    if not isinstance(settings, dict):
        raise ExperimentConfigError(f"{path}: '{where}' must map TrainConfig fields to values")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for key, value in settings.items():
        if key in RUNNER_KEYS:
            raise ExperimentConfigError(f"{path}: '{where}.{key}' is set by the experiment runner, not in 'train' (it comes from {RUNNER_KEYS[key]})")
        if key not in defaults:
            known = ", ".join(k for k in defaults if k not in RUNNER_KEYS)
            raise ExperimentConfigError(f"{path}: unknown key '{where}.{key}' (known: {known})")
        expected = type(defaults[key])
        if defaults[key] is None:  # Optional settings (window_seconds, rir_dir, ...): TrainConfig.validate checks their values.
            continue
        if isinstance(value, bool) != (expected is bool) or not isinstance(value, (int, float) if expected is float else expected):
            raise ExperimentConfigError(f"{path}: '{where}.{key}' must be a {expected.__name__}; got {value!r}")
    return resolve_recipe_folders(settings, path.parent)


def check_durations(path: Path, durations) -> list[float]:
    """`durations`: distinct positive numbers of seconds (none: whole files only, as before the key existed)."""
    from verification import crop_name

    numbers = isinstance(durations, list) and all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0
                                                  for s in durations)
    if not numbers or len({crop_name(s) for s in durations}) < len(durations):
        raise ExperimentConfigError(f"{path}: 'durations' must be a list of distinct positive numbers of seconds, e.g. [1, 2, 4]; got {durations!r}")
    return [float(s) for s in durations]


def check_training_phases(path: Path, config: ExperimentConfig) -> None:
    """Every TrainConfig a configuration trains must pass TrainConfig.validate before any work starts."""
    for name in config.configurations:
        for phase in training_phases(config, name, config.seeds[0]):
            try:
                phase.validate()
            except (TypeError, ValueError, FileNotFoundError) as error:  # FileNotFoundError: a missing rir_dir or noise_dir.
                raise ExperimentConfigError(f"{path}: 'configurations.{name}' cannot train its {phase.mode} phase: {error}") from None


def check_columns(path: Path, config: ExperimentConfig) -> None:
    """Two held-out folders whose names differ only in punctuation would share a CSV column."""
    columns = csv_columns(config)
    clashing = sorted({c for c in columns if columns.count(c) > 1})
    if clashing:
        raise ExperimentConfigError(f"{path}: 'splits.held_out_audio_dirs' gives several corpora the same CSV column: {', '.join(clashing)}")


def held_out_corpora(config: ExperimentConfig) -> list[str]:
    """Names of the held-out corpora, in the recipe's order, as `EvaluationReport.corpora` keys them; last,
    each training folder that held-out training speakers come from (`test.evaluation_corpora` scores
    each folder's on their own, e.g. CommonVoice-fa and EmoDB)."""
    from verification import corpus_names

    names = list(dict.fromkeys(corpus_names(config.held_out_audio_dirs)))
    kept_out = set(config.held_out_training_speakers)
    for directory in config.train_audio_dirs:
        if kept_out & set(index_corpus(directory).speakers):
            names.append(directory.name if directory.name not in names else f"{directory.name} (held out)")
    return names


def corpus_column(corpus: str) -> str:
    """The CSV spelling of a corpus name: lower case, anything but letters and digits as `_` (test-other: test_other)."""
    return re.sub(r"[^a-z0-9]", "_", corpus.lower())


def duration_column(corpus: str, seconds: float) -> str:
    """The CSV spelling of a corpus's figures on crops of `seconds` (test-other, 1: test_other_1s; 0.5: test_other_0_5s)."""
    from verification import crop_name

    return corpus_column(f"{corpus}_{crop_name(seconds)}s")


def csv_columns(config: ExperimentConfig) -> tuple[str, ...]:
    """CSV_COLUMNS, then the accuracies and speaker (or clip) counts of each declared task, then EER and minDCF per held-out
    corpus, each followed by its EER and minDCF per duration of `durations`."""
    tasks = tuple(f"{task.name}{suffix}" for task in parse_tasks(config.tasks)
                  for suffix in (CLIP_TASK_COLUMN_SUFFIXES if task.per_clip else TASK_COLUMN_SUFFIXES))
    figures = [name for corpus in held_out_corpora(config)
               for name in (corpus_column(corpus), *(duration_column(corpus, seconds) for seconds in config.durations))]
    return CSV_COLUMNS + tasks + tuple(f"{metric}_{name}" for name in figures for metric in ("eer", "min_dcf"))


def train_settings(config: ExperimentConfig, name: str) -> dict:
    """The recipe's `train` settings with the configuration's own `train` settings over them."""
    return {**config.train, **config.configurations[name].get("train", {})}


def training_phases(config: ExperimentConfig, name: str, seed: int) -> list:
    """The TrainConfig of each phase a configuration trains, in order; softmax_triplet's triplet phase
    starts from the softmax phase's final model (`train_configuration` fills in the path)."""
    from train_config import TrainConfig

    settings = config.configurations[name]
    budget = {k: v for k, v in config.budget.items() if k != "learning_rate"}
    common = {**train_settings(config, name), "model_size": config.model_size, "seed": seed, "learning_rate": config.budget.get("learning_rate"),
              "held_out_speakers": list(config.held_out_training_speakers), **budget}
    recipe = settings["recipe"]
    if recipe == "softmax":
        return [TrainConfig(mode="softmax", **common)]
    if recipe == "softmax_triplet":  # The step budget is split between the two phases.
        epochs = common.get("epochs", TrainConfig.epochs)
        softmax_epochs = max(1, epochs // 2)
        return [TrainConfig(mode="softmax", **{**common, "epochs": softmax_epochs}),
                TrainConfig(mode="triplet", **{**common, "epochs": max(1, epochs - softmax_epochs)})]
    weights = {k: v for k, v in settings.items() if k.endswith("_loss_weight")}
    triplet_weight = weights.get("triplet_loss_weight", 1.0 if recipe == "mtl_triplet" else 0.0)
    return [TrainConfig(mode="mtl", **common, **{**weights, "triplet_loss_weight": triplet_weight}, tasks=configuration_tasks(config, name))]


def waveform_trims(config: ExperimentConfig) -> list[str]:
    """The trims of the cached audio that some configuration's augmented (or trimmed) training reads."""
    phases = [phase for name in config.configurations for phase in training_phases(config, name, config.seeds[0])]
    return sorted({phase.trim for phase in phases if phase.uses_waveforms})


def check_splits(path: Path, config: ExperimentConfig) -> None:
    """Named held-out speakers must exist, and no held-out speaker may be a training speaker."""
    training = {s for d in config.train_audio_dirs for s in index_corpus(d).speakers}
    held_out = {s for d in config.held_out_audio_dirs for s in index_corpus(d).speakers}
    missing = sorted(set(config.held_out_training_speakers) - training)
    if missing:
        raise ExperimentConfigError(f"{path}: 'splits.held_out_training_speakers' names speakers not found in the training folders: {', '.join(missing)}")
    training -= set(config.held_out_training_speakers)
    if config.held_out_speakers is not None:
        missing = sorted(set(config.held_out_speakers) - held_out)
        if missing:
            raise ExperimentConfigError(f"{path}: 'splits.held_out_speakers' names speakers not found in the held-out folders: {', '.join(missing)}")
        held_out = set(config.held_out_speakers)
    overlap = sorted(training & held_out)
    if overlap:
        raise ExperimentConfigError(f"{path}: 'splits' puts speakers in both training and held-out data: {', '.join(overlap)}")


# ----------------------------------------------------------------------------------------------
# Running.


def device_name() -> str:
    """'cpu', or the accelerator's name, for the CSV."""
    import keras

    devices = [d for d in keras.distribution.list_devices() if not d.lower().startswith("cpu")]
    return devices[0] if devices else "cpu"


def train_configuration(working_dir: Path, run_root: Path, config: ExperimentConfig, name: str, seed: int) -> Path:
    """Train one configuration with one seed, phase after phase; returns the run directory whose final.h5 is scored."""
    from run_directory import FINAL_CHECKPOINT
    from train import train

    run = None
    for phase in training_phases(config, name, seed):
        if run is not None:  # A later phase starts from the previous phase's final model: the budget, all of it.
            phase = dataclasses.replace(phase, initial_checkpoint=str(run / FINAL_CHECKPOINT))
        run = train(working_dir, phase, run_root)
    return run


def run_experiment(config_path: str | os.PathLike, working_dir: str | os.PathLike) -> Path:
    """Train and score every configuration x seed not scored yet; (re)write the CSV and the plot."""
    import keras

    from feature_cache import build_feature_cache
    from precision import training_policy
    from test import evaluate_checkpoint
    from run_directory import FINAL_CHECKPOINT
    from train_config import TrainConfig

    config = load_experiment_config(config_path)
    working_dir = Path(working_dir)
    trims = waveform_trims(config) or [None]
    for audio_dir in config.train_audio_dirs:
        for trim in trims:  # Each call adds what is missing: the features once, then each trim's audio.
            logger.info("%s", build_feature_cache(audio_dir, working_dir, waveform_trim=trim).summary())
    corpora = held_out_corpora(config)
    held_out_dirs = tuple(str(d) for d in config.held_out_audio_dirs)
    for seed in experiment_seeds(config):  # Seed by seed: an experiment stopped part-way has whole seeds of every configuration.
        for name, settings in config.configurations.items():
            if seed not in configuration_seeds(config, name):
                continue
            run_root = working_dir / "runs" / name / f"seed{seed}"
            record = run_record_dir(config, name, seed)
            result_file = record / EVALUATION_FILE
            if scored_already(result_file, config.durations):
                logger.info("%s seed %d: scored already, skipped", name, seed)
                continue
            logger.info("%s seed %d: training (a finished run is only scored again)", name, seed)
            run_root.mkdir(parents=True, exist_ok=True)
            run = train_configuration(working_dir, run_root, config, name, seed)
            trial_scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            report = evaluate_checkpoint(working_dir, run / FINAL_CHECKPOINT, eval_audio_dirs=held_out_dirs, num_trials=config.num_trials,
                                         seed=seed, extra_genders=config.speaker_genders, held_out_speakers=config.held_out_speakers,
                                         label_tasks=parse_tasks(config.tasks), trial_scores=trial_scores, crop_seconds=config.durations)
            record.mkdir(parents=True, exist_ok=True)
            save_trial_scores(record / TRIAL_SCORES_FILE, trial_scores)
            steps, windows, seconds = train_progress(run_root)
            row = {
                "config": name, "seed": seed, "model_size": config.model_size, "backend": keras.backend.backend(), "device": device_name(),
                "precision": training_policy(train_settings(config, name).get("precision", TrainConfig.precision)),
                "train_steps": steps, "train_windows": windows, **verification_columns(report.__dict__, corpora, config.durations),
                **{key: value for key, value in report.heads.items() if key == "speaker_id_acc" or key.endswith(ACCURACY_SUFFIXES)},
                "gender_loss_weight": settings.get("gender_loss_weight", 1.0) if settings["recipe"].startswith("mtl") else 0.0,
                "triplet_loss_weight": settings.get("triplet_loss_weight", 1.0 if settings["recipe"] == "mtl_triplet" else 0.0), "train_seconds": seconds,
            }
            write_json_atomically(result_file, {"row": row, "report": report.__dict__, "durations": config.durations, "checkpoint": FINAL_CHECKPOINT})
            write_results_csv(config, working_dir)  # After every run: an experiment stopped part-way has its rows so far,
            if config.answer:  # and the answer says which figures the seeds so far decide (the bootstrap over trials comes at the end).
                write_answer_csv(config, bootstrap_trials=False)
    csv_path = write_results_csv(config, working_dir)
    if config.answer:
        write_answer_csv(config)
    if config.gender_weight_plot:
        plot_gender_weight(read_results(csv_path), config.gender_weight_plot, config.output_dir / f"{config.name}_gender_weight.png")
    return csv_path


EVALUATION_FILE = "evaluation.json"
TRIAL_SCORES_FILE = "trial_scores.npz"


def run_record_dir(config: ExperimentConfig, name: str, seed: int) -> Path:
    """Where one scored run's evaluation.json and trial scores are kept: beside the results and committed with them, so
    the tables and their bootstraps can be rebuilt, and the experiment continued, from a fresh clone."""
    return config.output_dir / f"{config.name}_runs" / name / f"seed{seed}"


def scored_already(result_file: Path, durations: list[float]) -> bool:
    """Whether a run's evaluation.json scored its final model with every duration the recipe asks for. Otherwise the
    finished training is kept and scored again: a recipe given `durations` after its runs were scored leaves no duration
    column empty, and a run scored at its best validation epoch (before final.h5) is scored at the end of its budget, as
    every other run is: a validation set too small to rank epochs must not shorten one configuration's training."""
    from run_directory import FINAL_CHECKPOINT

    if not result_file.is_file():
        return False
    record = json.loads(result_file.read_text())
    return record.get("checkpoint") == FINAL_CHECKPOINT and set(durations) <= set(record.get("durations", []))


def save_trial_scores(path: Path, trial_scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Each corpus's trial scores and labels, in trial order, for paired bootstraps over trials (`compared`); float32
    scores and boolean labels, compressed: a record is committed, so it is kept small (about 0.3 MB a run)."""
    arrays = {}
    for corpus, (scores, labels) in trial_scores.items():
        arrays[f"scores_{corpus_column(corpus)}"] = np.asarray(scores, dtype=np.float32)
        arrays[f"labels_{corpus_column(corpus)}"] = np.asarray(labels).astype(bool)
    write_atomically(path, lambda handle: np.savez_compressed(handle, **arrays))


def train_progress(run_root: Path) -> tuple[int, int, float]:
    """Optimizer steps, training windows and training wall seconds actually taken, over the run's phases: epochs
    finished x steps per epoch (x batch size), and the wall time of those epochs that each phase's state.json
    adds up across resumes (a run trained over several sittings counts every one)."""
    steps = windows = 0
    seconds = 0.0
    for state_file in run_root.glob("checkpoints-*/state.json"):
        config = json.loads((state_file.parent / "config.json").read_text())
        state = json.loads(state_file.read_text())
        phase_steps = state["epoch"] * (config["steps_per_epoch"] or 0)
        steps += phase_steps
        windows += phase_steps * config["batch_size"]
        seconds += float(state.get("train_seconds") or 0.0)
    return steps, windows, round(seconds, 1)


def verification_columns(report: dict, corpora: list[str], durations: list[float]) -> dict:
    """EER and minDCF (p_target 0.01) pooled and per held-out corpus, whole files and on crops of each of `durations`
    (`report["durations"]`, as test-model writes it); None where a corpus had no trials."""
    from verification import crop_name

    pooled = report.get("trials") or {}
    columns = {"eer_pooled": pooled.get("eer"), "min_dcf_pooled": pooled.get("min_dcf_001")}
    for corpus in corpora:
        crops = (report.get("durations") or {}).get(corpus) or {}
        figures = [(corpus_column(corpus), (report.get("corpora") or {}).get(corpus) or {}),
                   *((duration_column(corpus, seconds), crops.get(crop_name(seconds)) or {}) for seconds in durations)]
        for name, found in figures:
            columns[f"eer_{name}"] = found.get("eer")
            columns[f"min_dcf_{name}"] = found.get("min_dcf_001")
    return columns


def speaker_count_columns(report: dict) -> dict:
    """`<task>_speakers`: the unseen speakers of each label its accuracies were measured on, e.g. "7 F, 14 M" (labels sorted);
    for a per-clip task, `<task>_clips`, its labelled unseen clips per label ("49 anger, 31 boredom, ..."), and
    `<task>_speakers`, how many unseen speakers those clips are of."""
    columns = {f"{task}_speakers": ", ".join(f"{counts[label]} {label}" for label in sorted(counts))
               for task, counts in (report.get("unseen_labels") or {}).items()}
    for task, clips in (report.get("clip_predictions") or {}).items():
        labels = clips["labels"]
        columns[f"{task}_clips"] = ", ".join(f"{labels.count(label)} {label}" for label in sorted(set(labels)))
        columns[f"{task}_speakers"] = str(len(set(clips["speakers"])))
    return columns


def write_results_csv(config: ExperimentConfig, working_dir: Path | None = None) -> Path:
    """One row per scored run, in the recipe's order, written atomically, from the runs' records (`run_record_dir`).

    The verification columns come from each run's stored report, so runs scored before a column
    existed still fill it; where `working_dir` still holds a run's training states, its training
    steps and time are counted from them.
    """
    corpora, columns = held_out_corpora(config), csv_columns(config)
    rows = []
    for name in config.configurations:
        for seed in configuration_seeds(config, name):  # The CSV groups rows by configuration, whatever order they were trained in.
            result_file = run_record_dir(config, name, seed) / EVALUATION_FILE
            if result_file.is_file():
                result = json.loads(result_file.read_text())
                row = {**result["row"], **verification_columns(result["report"], corpora, config.durations), **speaker_count_columns(result["report"])}
                steps, windows, seconds = train_progress(working_dir / "runs" / name / f"seed{seed}") if working_dir else (0, 0, 0.0)
                if steps:  # The run's own states, not the row of an older experiment code (which timed only the last sitting).
                    row.update(train_steps=steps, train_windows=windows, train_seconds=seconds)
                rows.append(row)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    path = config.output_dir / f"{config.name}.csv"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if row.get(k) is None else row.get(k)) for k in columns} for row in rows)
    write_text_atomically(path, buffer.getvalue())
    return path


def read_results(csv_path: str | os.PathLike) -> list[dict]:
    """The rows of a results CSV, in its column order; an older CSV's `eer` and `min_dcf` read as the pooled columns."""
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for old, new in LEGACY_COLUMNS.items():
            if old in row and new not in row:
                row[new] = row.pop(old)
    return rows


# ----------------------------------------------------------------------------------------------
# Table and plot.


def _values(rows: list[dict], metric: str) -> np.ndarray:
    return np.array([float(r[metric]) for r in rows if r.get(metric) not in ("", None)])


def table_metrics(rows: list[dict]) -> list[str]:
    """The EER of each held-out corpus (in the CSV's order), the pooled EER, then the other metrics that have values
    (minDCF, identification, then the head and probe accuracies of gender and of every other task, per file and per speaker)."""
    columns = list(rows[0]) if rows else []
    corpus_eers = [c for c in columns if c.startswith("eer_") and c != "eer_pooled"]
    task_accuracies = [c for c in columns if c.endswith(ACCURACY_SUFFIXES)]
    return corpus_eers + ["eer_pooled"] + [m for m in (*TABLE_METRICS, *task_accuracies) if len(_values(rows, m))]


def speaker_counts_note(rows: list[dict], metrics: list[str]) -> str:
    """' Per-speaker accuracies: gender on 21 unseen speakers (7 F, 14 M), ...' for the tasks the table shows per speaker."""
    counts = []
    for column in (c for c in (list(rows[0]) if rows else []) if c.endswith("_speakers")):
        task = column.removesuffix("_speakers")
        values = sorted({r[column] for r in rows if r.get(column)})
        if values and any(m.startswith(f"{task}_acc_") and m.endswith("_per_speaker") for m in metrics):
            total = " or ".join(str(sum(int(part.split()[0]) for part in value.split(", "))) for value in values)
            counts.append(f"{task} on {total} unseen speakers ({'; '.join(values)})")
    return f" Per-speaker accuracies (`_per_speaker`, each speaker once): {', '.join(counts)}; the others are per file." if counts else ""


def clip_counts_note(rows: list[dict], metrics: list[str]) -> str:
    """' Per-clip tasks: emotion on 215 clips of 4 unseen speakers (49 anger, ...), balanced over its 7 labels.' for the tasks the table shows."""
    notes = []
    for column in (c for c in (list(rows[0]) if rows else []) if c.endswith("_clips")):
        task = column.removesuffix("_clips")
        values = sorted({(r[column], r.get(f"{task}_speakers", "")) for r in rows if r.get(column)})
        if values and any(m.startswith(f"{task}_acc_") for m in metrics):
            described = "; ".join(f"{sum(int(part.split()[0]) for part in clips.split(', '))} clips of {speakers} unseen speakers ({clips})"
                                  for clips, speakers in values)
            notes.append(f"{task} on {described}, balanced over its {len(values[0][0].split(', '))} labels")
    return f" Per-clip tasks, each clip once: {', '.join(notes)}." if notes else ""


def crop_note(metrics: list[str]) -> str:
    """The sentence on `eer_<corpus>_<s>s` columns, for a table that shows some (a recipe with `durations`); else nothing."""
    if not any(re.search(r"_\d+(_\d+)?s$", metric) for metric in metrics):
        return ""
    return ("eer_<corpus>_<s>s: the same corpus's trials on centred crops of s seconds of every file (`test-model --durations`; "
            "a file no longer is scored whole). ")


def results_table(csv_path: str | os.PathLike) -> str:
    """Markdown table: per configuration, mean ± standard deviation over seeds of every metric (n/a: no value)."""
    rows = read_results(csv_path)
    metrics = table_metrics(rows)
    names = list(dict.fromkeys(r["config"] for r in rows))
    header = "| configuration | seeds | " + " | ".join(metrics) + " |"
    lines = [header, "|" + "---|" * (len(metrics) + 2)]
    for name in names:
        group = [r for r in rows if r["config"] == name]
        cells = []
        for metric in metrics:
            values = _values(group, metric)
            cells.append("n/a" if not len(values) else f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.3f}")
        lines.append(f"| {name} | {len(group)} | " + " | ".join(cells) + " |")
    first = rows[0] if rows else {}
    windows = f" ({first['train_windows']} windows)" if first.get("train_windows") else ""
    lines.append("")
    lines.append(f"Model size {first.get('model_size', '?')}, backend {first.get('backend', '?')}, device {first.get('device', '?')}, "
                 f"{first.get('train_steps', '?')} training steps{windows} per run; mean ± standard deviation over seeds. "
                 "EER and minDCF (p_target 0.01) on speaker-disjoint trials, lower is better: eer_<corpus> among that corpus's own speakers, "
                 "eer_pooled among all held-out speakers together; accuracies: higher is better. " + crop_note(metrics) +
                 "n/a: no value (a corpus without trials of its own, a head the configuration lacks, or a column the CSV predates)."
                 + speaker_counts_note(rows, metrics) + clip_counts_note(rows, metrics))
    return "\n".join(lines)


def update_readme_table(csv_path: str | os.PathLike, readme: str | os.PathLike, marker: str = "mtl-results") -> None:
    """Replace the text between `<!-- marker -->` and `<!-- /marker -->` in the README with the table."""
    replace_marked_section(readme, marker, results_table(csv_path))


def replace_marked_section(path: str | os.PathLike, marker: str, text: str) -> None:
    """Replace what lies between `<!-- marker -->` and `<!-- /marker -->` in a Markdown file (atomically)."""
    path = Path(path)
    content = path.read_text()
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if start not in content or end not in content:
        raise ValueError(f"{path}: no {start} ... {end} markers to put the table between")
    before, rest = content.split(start, 1)
    _, after = rest.split(end, 1)
    write_atomically(path, lambda handle: handle.write(f"{before}{start}\n{text}\n{end}{after}"), text=True)


def plot_gender_weight(rows: list[dict], configurations: list[str], path: Path) -> Path:
    """EER and gender accuracy (head, probe) against the gender-loss weight, mean ± std over seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from constants import PLOT_DPI

    points = []
    for name in configurations:
        group = [r for r in rows if r["config"] == name]
        if group:
            points.append((float(group[0]["gender_loss_weight"]), group))
    points.sort(key=lambda p: p[0])
    figure = Figure(figsize=(10, 4))
    FigureCanvasAgg(figure)
    weights = [w for w, _ in points]
    for axis, metrics, title in ((figure.add_subplot(1, 2, 1), ("eer_pooled",), "verification EER, pooled (lower is better)"),
                                 (figure.add_subplot(1, 2, 2), ("gender_acc_head", "gender_acc_probe"), "gender accuracy, unseen speakers")):
        for metric in metrics:
            means = [(_values(g, metric).mean() if len(_values(g, metric)) else np.nan) for _, g in points]
            spreads = [(_values(g, metric).std(ddof=1) if len(_values(g, metric)) > 1 else 0.0) for _, g in points]  # As the table.
            axis.errorbar(weights, means, yerr=spreads, marker="o", capsize=4, label=metric)
        axis.set_xlabel("gender loss weight")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda handle: figure.savefig(handle, format="png", dpi=PLOT_DPI))
    return path




# ----------------------------------------------------------------------------------------------
# The answer: each configuration against its baseline, figure by figure, with intervals. For Hive-MTL
# the baseline is the best single-task configuration of each figure; for additions to a recipe, the
# recipe without them.

ANSWER_COLUMNS = ("task", "figure", "config", "baseline", "seeds", "mean", "baseline_mean", "difference",
                  "seeds_low", "seeds_high", "trials_low", "trials_high", "speakers_low", "speakers_high", "verdict", "seeds_needed")


def answer_figures(config: ExperimentConfig) -> list[tuple[str, str, str, str, bool]]:
    """(task, figure, Hive-MTL column, single-task column, lower is better) for every Hive-MTL comparison.

    Per-speaker label tasks are compared per speaker (each unseen speaker once), not per file;
    per-clip tasks (emotion) per clip. A label task's head exists only in Hive-MTL, so its head is
    compared with the single-task embedding's probe: what a user of either model could get for
    that task.
    """
    figures = [("speaker verification", f"EER {corpus}", f"eer_{corpus_column(corpus)}", f"eer_{corpus_column(corpus)}", True)
               for corpus in held_out_corpora(config)]
    figures.append(("speaker identification", "accuracy, training speakers' test utterances", "speaker_id_acc", "speaker_id_acc", False))
    for task in [gender_task(1.0), *parse_tasks(config.tasks)]:
        if task.per_clip:
            figures.append((task.name, "probe balanced accuracy per clip, unseen speakers", f"{task.name}_acc_probe", f"{task.name}_acc_probe", False))
            figures.append((task.name, "Hive-MTL head vs single-task probe, per clip", f"{task.name}_acc_head", f"{task.name}_acc_probe", False))
            continue
        name = task.name
        figures.append((name, "probe balanced accuracy per unseen speaker", f"{name}_acc_probe_per_speaker", f"{name}_acc_probe_per_speaker", False))
        figures.append((name, "Hive-MTL head vs single-task probe, per unseen speaker", f"{name}_acc_head_per_speaker", f"{name}_acc_probe_per_speaker", False))
    return figures


def verification_figures(config: ExperimentConfig) -> list[tuple[str, str, str, str, bool]]:
    """(task, figure, column, column, lower is better) of every EER of the CSV: each held-out corpus on whole files,
    then on the crops of each of the recipe's `durations` (what additions for short speech are meant to move)."""
    figures = []
    for corpus in held_out_corpora(config):
        columns = [(f"EER {corpus}", corpus_column(corpus))]
        columns += [(f"EER {corpus}, {seconds:g} s crops", duration_column(corpus, seconds)) for seconds in config.durations]
        figures += [("speaker verification", figure, f"eer_{column}", f"eer_{column}", True) for figure, column in columns]
    return figures


def answer_rows(config: ExperimentConfig, seed: int = 0, bootstrap_trials: bool = True) -> list[dict]:
    """The rows of the recipe's answer: `mtl_answer` for {"mtl", "single"}, `baseline_answer` for {"baseline"}."""
    if "baseline" in config.answer:
        return baseline_answer(config, seed, bootstrap_trials)
    return mtl_answer(config, seed, bootstrap_trials)


def mtl_answer(config: ExperimentConfig, seed: int = 0, bootstrap_trials: bool = True) -> list[dict]:
    """One row per (Hive-MTL configuration, figure of `answer_figures`): its difference from the best single-task
    configuration, the one with the best mean over seeds for that figure (`compared` says how it is read)."""
    rows = read_results(config.output_dir / f"{config.name}.csv")
    rng = np.random.default_rng(seed)
    answers = []
    for mtl_name in config.answer.get("mtl", []):
        for task, figure, mtl_column, single_column, lower_is_better in answer_figures(config):
            mtl_values = values_by_seed(rows, mtl_name, mtl_column)
            candidates = {name: values_by_seed(rows, name, single_column) for name in config.answer["single"]}
            candidates = {name: values for name, values in candidates.items() if set(values) & set(mtl_values)}
            if not mtl_values or not candidates:
                continue
            sign = 1.0 if lower_is_better else -1.0
            single_name = min(candidates, key=lambda name: sign * np.mean(list(candidates[name].values())))
            answers.append(compared(config, rng, bootstrap_trials, task, figure, (mtl_name, mtl_column, mtl_values),
                                    (single_name, single_column, candidates[single_name]), lower_is_better))
    return answers


def baseline_answer(config: ExperimentConfig, seed: int = 0, bootstrap_trials: bool = True) -> list[dict]:
    """One row per (configuration other than the baseline, figure of `verification_figures`): its difference from the
    baseline configuration (`compared` says how it is read): does an addition to a recipe help, corpus by corpus and
    duration by duration?"""
    rows = read_results(config.output_dir / f"{config.name}.csv")
    rng = np.random.default_rng(seed)
    baseline = config.answer["baseline"]
    answers = []
    for name in config.configurations:
        if name == baseline:
            continue
        for task, figure, column, _, lower_is_better in verification_figures(config):
            values, baseline_values = values_by_seed(rows, name, column), values_by_seed(rows, baseline, column)
            if set(values) & set(baseline_values):
                answers.append(compared(config, rng, bootstrap_trials, task, figure, (name, column, values),
                                        (baseline, column, baseline_values), lower_is_better))
    return answers


def values_by_seed(rows: list[dict], name: str, column: str) -> dict[int, float]:
    """{seed: value} of one configuration's column, over the rows that have it."""
    return {int(r["seed"]): float(r[column]) for r in rows if r["config"] == name and r.get(column) not in ("", None)}


def compared(config: ExperimentConfig, rng: np.random.Generator, bootstrap_trials: bool, task: str, figure: str,
             candidate: tuple[str, str, dict[int, float]], baseline: tuple[str, str, dict[int, float]], lower_is_better: bool) -> dict:
    """One answer row: candidate minus baseline, each given as (configuration, column, {seed: value}), over the seeds both have.

    Differences are paired by seed, with Student's t interval over seeds; EERs also get a paired
    bootstrap over trials (`paired_bootstrap_eer_difference`; whole files, where both runs kept their
    trial scores), label tasks one over the unseen speakers (`paired_bootstrap_accuracy_difference`).
    The verdict comes from the interval over seeds: `supported` where it excludes zero in the
    candidate's favour, `refuted` where it excludes zero against it, else `undecided`, and always
    `undecided` below MIN_SEEDS_FOR_VERDICT seeds, with `seeds_needed`: how many seeds would decide
    it if the mean and spread of the differences stayed as seen (`eval_metrics.seeds_to_exclude_zero`,
    at least MIN_SEEDS_FOR_VERDICT; none with one seed). `bootstrap_trials=False` leaves out the
    bootstrap over trials (slow for FSDD's 44,850 trials at five seeds), as the answer written after
    every run does; the verdicts do not depend on it.
    """
    from eval_metrics import paired_bootstrap_accuracy_difference, paired_bootstrap_eer_difference, paired_t_interval

    (name, column, values), (baseline_name, baseline_column, baseline_values) = candidate, baseline
    seeds = sorted(set(values) & set(baseline_values))
    differences = np.array([values[s] - baseline_values[s] for s in seeds])
    over_seeds = paired_t_interval(differences)
    over_trials = over_speakers = None
    if bootstrap_trials and column.startswith("eer_") and column == baseline_column:
        pairs = [trial_pair(config, baseline_name, name, s, column.removeprefix("eer_")) for s in seeds]
        if all(p is not None for p in pairs):
            over_trials = paired_bootstrap_eer_difference(pairs, rng)
    if column.endswith("_per_speaker"):
        pairs = [speaker_pair(config, (baseline_name, baseline_column), (name, column), s) for s in seeds]
        if all(p is not None for p in pairs):
            over_speakers = paired_bootstrap_accuracy_difference(pairs, rng)
    decided = over_seeds.excludes_zero() and len(seeds) >= MIN_SEEDS_FOR_VERDICT
    favours_candidate = decided and (over_seeds.high < 0 if lower_is_better else over_seeds.low > 0)
    return {
        "task": task, "figure": figure, "config": name, "baseline": baseline_name, "seeds": len(seeds),
        "mean": float(np.mean([values[s] for s in seeds])), "baseline_mean": float(np.mean([baseline_values[s] for s in seeds])),
        "difference": over_seeds.difference, "seeds_low": over_seeds.low, "seeds_high": over_seeds.high,
        "trials_low": over_trials.low if over_trials else None, "trials_high": over_trials.high if over_trials else None,
        "speakers_low": over_speakers.low if over_speakers else None, "speakers_high": over_speakers.high if over_speakers else None,
        "verdict": "supported" if favours_candidate else "refuted" if decided else "undecided",
        "seeds_needed": None if decided else seeds_needed(differences),
    }


def seeds_needed(differences: np.ndarray) -> int | None:
    """Seeds that would decide a figure at the spread seen: `seeds_to_exclude_zero`, never fewer than MIN_SEEDS_FOR_VERDICT."""
    from eval_metrics import seeds_to_exclude_zero

    needed = seeds_to_exclude_zero(differences)
    return None if needed is None else max(needed, MIN_SEEDS_FOR_VERDICT)


def trial_pair(config: ExperimentConfig, baseline_name: str, name: str, seed: int, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(labels, baseline's scores, candidate's scores) of one corpus's trials for one seed; None where either run lacks them."""
    arrays = []
    for run_name in (baseline_name, name):
        path = run_record_dir(config, run_name, seed) / TRIAL_SCORES_FILE
        if not path.is_file():
            return None
        with np.load(path) as stored:
            if f"scores_{column}" not in stored:
                return None
            arrays.append((stored[f"labels_{column}"], stored[f"scores_{column}"]))
    (labels, baseline_scores), (candidate_labels, candidate_scores) = arrays
    return (labels, baseline_scores, candidate_scores) if np.array_equal(labels, candidate_labels) else None


def speaker_pair(config: ExperimentConfig, baseline: tuple[str, str], candidate: tuple[str, str], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(labels, baseline's predictions, candidate's predictions) of one label task's unseen speakers for one seed, from
    each run's evaluation.json; `baseline` and `candidate` are (configuration, `<task>_acc_<probe|head>_per_speaker`
    column). None where either run lacks them or the two runs scored other speakers."""
    found = []
    for name, column in (baseline, candidate):
        path = run_record_dir(config, name, seed) / EVALUATION_FILE
        task, kind = re.fullmatch(r"(.+)_acc_(probe|head)_per_speaker", column).groups()
        predictions = (json.loads(path.read_text())["report"].get("speaker_predictions") or {}).get(task) if path.is_file() else None
        if not predictions or kind not in predictions:
            return None
        found.append((predictions["speakers"], predictions["labels"], predictions[kind]))
    (speakers, labels, baseline_predicted), (candidate_speakers, candidate_labels, candidate_predicted) = found
    if (speakers, labels) != (candidate_speakers, candidate_labels):
        return None
    return np.array(labels), np.array(baseline_predicted), np.array(candidate_predicted)


def write_answer_csv(config: ExperimentConfig, bootstrap_trials: bool = True) -> Path:
    """`<output_dir>/<name>_answer.csv`: the rows of `answer_rows`, written atomically."""
    path = config.output_dir / f"{config.name}_answer.csv"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, ANSWER_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if row[k] is None else row[k]) for k in ANSWER_COLUMNS} for row in answer_rows(config, bootstrap_trials=bootstrap_trials))
    write_atomically(path, lambda handle: handle.write(buffer.getvalue()), text=True)
    return path


def answer_table(answer_csv: str | os.PathLike) -> str:
    """Markdown of an answer CSV: per task and figure, each configuration minus its baseline."""
    with open(answer_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))

    def interval(row: dict, kind: str) -> str:
        return "n/a" if row[f"{kind}_low"] == "" else f"[{float(row[f'{kind}_low']):+.3f}, {float(row[f'{kind}_high']):+.3f}]"

    def verdict(row: dict) -> str:
        said, needed = row["verdict"], row["seeds_needed"]
        if said != "undecided" or not needed:
            return said
        if int(needed) > MAX_SEEDS_ESTIMATED:
            return f"undecided (no difference at this spread: over {MAX_SEEDS_ESTIMATED} seeds)"
        return f"undecided (about {needed} seeds in all)"

    lines = ["| task | figure | configuration | baseline | seeds | configuration − baseline | 95 % CI over seeds | 95 % CI over trials "
             "| 95 % CI over speakers | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['task']} | {row['figure']} | {row['config']} {float(row['mean']):.3f} | {row['baseline']} {float(row['baseline_mean']):.3f} | "
            f"{row['seeds']} | {float(row['difference']):+.3f} | {interval(row, 'seeds')} | {interval(row, 'trials')} | {interval(row, 'speakers')} | {verdict(row)} |"
        )
    lines.append("")
    lines.append("Differences are each configuration minus its baseline, paired by seed: for a Hive-MTL configuration, the single-task "
                 "configuration with the best mean for that figure; for an addition to a recipe, the recipe without it. "
                 "EER: lower is better; accuracies: higher is better. The verdict comes from the interval over seeds (Student's t): "
                 "supported where it excludes zero in the configuration's favour, refuted where it excludes zero against it, undecided otherwise "
                 f"(always below {MIN_SEEDS_FOR_VERDICT} seeds: two seeds that agree give a narrow interval whatever the spread); for an undecided figure, "
                 "about how many seeds would decide it if the mean and the spread of its differences stayed as seen (an estimate; "
                 f"beyond {MAX_SEEDS_ESTIMATED}, no difference at this spread). "
                 "The interval over trials (paired bootstrap, 1,000 resamples; whole files) covers the choice of trials only; "
                 "the interval over speakers (paired bootstrap, 1,000 resamples of the unseen speakers within each label) the choice of speakers only. "
                 "Per-clip tasks (emotion) have neither: their clips come from a few speakers each.")
    return "\n".join(lines)
