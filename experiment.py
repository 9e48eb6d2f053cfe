"""Experiments: configurations trained on the same data and budget, compared over seeds.

The Hive-MTL comparison (`recipes/mtl_vs_single.json`: does one unified embedding serve every
task as well as specialised ones?) and ablations of the training recipe
(`recipes/ablation_small.json`: what each part of the shipped model's recipe is worth) run on the
same machinery. A recipe file (JSON) names the data splits, the model size, the step budget, the
seeds and the configurations to compare; its `train` object holds TrainConfig settings shared by
every configuration (head, sampling, augmentation, front end, ...), and a configuration's own
`train` object overrides them. `run_experiment` trains every configuration with every seed,
scores each model with the code paths `test-model` uses, and writes one CSV row per run (EER and
minDCF per held-out corpus and pooled) plus, if the recipe asks for it, a plot. Finished runs are
skipped when the command runs again, so an interrupted experiment resumes.

    <working_dir>/audio-fbanks/, corpus.json     the training speakers' feature cache
    <working_dir>/audio-waveforms-<trim>/        trimmed audio, for configurations that augment
    <working_dir>/runs/<configuration>/seed<k>/  run directories and evaluation.json
    results/<name>.csv, results/<name>_gender_weight.png
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audio import index_corpus, write_atomically, write_json_atomically

logger = logging.getLogger(__name__)

RECIPES = ("softmax", "softmax_triplet", "mtl", "mtl_triplet")
# Every CSV starts with these; one `eer_<corpus>`, `min_dcf_<corpus>` pair per held-out corpus follows (`csv_columns`).
CSV_COLUMNS = (
    "config", "seed", "model_size", "backend", "device", "train_steps", "train_windows", "eer_pooled", "min_dcf_pooled",
    "speaker_id_acc", "gender_acc_head", "gender_acc_probe", "gender_loss_weight", "triplet_loss_weight", "train_seconds",
)
LEGACY_COLUMNS = {"eer": "eer_pooled", "min_dcf": "min_dcf_pooled"}  # CSVs written before per-corpus figures.
RECIPE_KEYS = ("name", "comment", "splits", "speaker_genders", "model_size", "seeds", "budget", "num_trials", "train",
               "configurations", "gender_weight_plot", "output_dir")
BUDGET_KEYS = ("epochs", "steps_per_epoch", "batch_size", "validation_steps", "learning_rate")
CONFIGURATION_KEYS = ("recipe", "speaker_loss_weight", "gender_loss_weight", "triplet_loss_weight", "train")
# TrainConfig fields a `train` object may not set, because the runner sets them: where a recipe sets them instead.
RUNNER_KEYS = {
    "mode": "the configuration's 'recipe'", "seed": "'seeds'", "model_size": "'model_size'",
    "epochs": "'budget'", "steps_per_epoch": "'budget'", "batch_size": "'budget'", "validation_steps": "'budget'", "learning_rate": "'budget'",
    "held_out_speakers": "'splits.held_out_speakers'", "initial_checkpoint": "the 'softmax_triplet' recipe",
    "speaker_loss_weight": "the configuration", "gender_loss_weight": "the configuration", "triplet_loss_weight": "the configuration",
}
TABLE_METRICS = ("min_dcf_pooled", "speaker_id_acc", "gender_acc_head", "gender_acc_probe")  # Shown after the EERs when they have values.


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


def load_experiment_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read and check a recipe file before any work starts; errors name the offending key."""
    path = Path(path)
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
    base = path.parent

    def require(key: str):
        if key not in raw:
            raise ExperimentConfigError(f"{path}: missing key '{key}'")
        return raw[key]

    splits = require("splits")

    def folders(key: str) -> list[Path]:
        value = splits.get(key)
        if not isinstance(value, list) or not value:
            raise ExperimentConfigError(f"{path}: 'splits.{key}' must be a non-empty list of folders")
        resolved = [(base / v).resolve() for v in value]
        for folder in resolved:
            if not folder.is_dir():
                raise ExperimentConfigError(f"{path}: 'splits.{key}' names a missing folder: {folder}")
        return resolved

    train_dirs, held_out_dirs = folders("train_audio_dirs"), folders("held_out_audio_dirs")
    configurations = require("configurations")
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
        check_train_settings(path, f"{where}.train", settings.get("train", {}))
    plot = raw.get("gender_weight_plot", [])
    for name in plot:
        if name not in configurations:
            raise ExperimentConfigError(f"{path}: 'gender_weight_plot' names an unknown configuration '{name}' (known: {', '.join(configurations)})")
    budget = require("budget")
    for key in budget:
        if key not in BUDGET_KEYS:
            raise ExperimentConfigError(f"{path}: unknown key 'budget.{key}' (known: {', '.join(BUDGET_KEYS)})")
    seeds = require("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ExperimentConfigError(f"{path}: 'seeds' must be a non-empty list of integers")
    model_size = raw.get("model_size", "small")
    if model_size not in ("small", "full"):
        raise ExperimentConfigError(f"{path}: 'model_size' must be 'small' or 'full'; got {model_size!r}")
    config = ExperimentConfig(
        name=raw.get("name", path.stem),
        train_audio_dirs=train_dirs,
        held_out_audio_dirs=held_out_dirs,
        held_out_speakers=splits.get("held_out_speakers"),
        speaker_genders=raw.get("speaker_genders", {}),
        model_size=model_size,
        seeds=seeds,
        budget=budget,
        num_trials=raw.get("num_trials"),
        configurations=configurations,
        gender_weight_plot=plot,
        output_dir=(base / raw.get("output_dir", "../results")).resolve(),
        train=check_train_settings(path, "train", raw.get("train", {})),
    )
    check_training_phases(path, config)
    check_columns(path, config)
    check_splits(path, config)
    return config


def check_train_settings(path: Path, where: str, settings) -> dict:
    """A `train` object: TrainConfig fields the runner does not own, each with a value of the field's type."""
    from train import TrainConfig

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
        if isinstance(value, bool) != (expected is bool) or not isinstance(value, (int, float) if expected is float else expected):
            raise ExperimentConfigError(f"{path}: '{where}.{key}' must be a {expected.__name__}; got {value!r}")
    return settings


def check_training_phases(path: Path, config: ExperimentConfig) -> None:
    """Every TrainConfig a configuration trains must pass TrainConfig.validate before any work starts."""
    for name in config.configurations:
        for phase in training_phases(config, name, config.seeds[0]):
            try:
                phase.validate()
            except (TypeError, ValueError) as error:
                raise ExperimentConfigError(f"{path}: 'configurations.{name}' cannot train its {phase.mode} phase: {error}") from None


def check_columns(path: Path, config: ExperimentConfig) -> None:
    """Two held-out folders whose names differ only in punctuation would share a CSV column."""
    columns = csv_columns(config)
    clashing = sorted({c for c in columns if columns.count(c) > 1})
    if clashing:
        raise ExperimentConfigError(f"{path}: 'splits.held_out_audio_dirs' gives several corpora the same CSV column: {', '.join(clashing)}")


def held_out_corpora(config: ExperimentConfig) -> list[str]:
    """Names of the held-out corpora, in the recipe's order, as `EvaluationReport.corpora` keys them."""
    from test import corpus_names

    return list(dict.fromkeys(corpus_names(config.held_out_audio_dirs)))


def corpus_column(corpus: str) -> str:
    """The CSV spelling of a corpus name: lower case, anything but letters and digits as `_` (test-other: test_other)."""
    return re.sub(r"[^a-z0-9]", "_", corpus.lower())


def csv_columns(config: ExperimentConfig) -> tuple[str, ...]:
    return CSV_COLUMNS + tuple(f"{metric}_{corpus_column(corpus)}" for corpus in held_out_corpora(config) for metric in ("eer", "min_dcf"))


def train_settings(config: ExperimentConfig, name: str) -> dict:
    """The recipe's `train` settings with the configuration's own `train` settings over them."""
    return {**config.train, **config.configurations[name].get("train", {})}


def training_phases(config: ExperimentConfig, name: str, seed: int) -> list:
    """The TrainConfig of each phase a configuration trains, in order; softmax_triplet's triplet phase
    starts from the softmax phase's best checkpoint (`train_configuration` fills in the path)."""
    from train import TrainConfig

    settings = config.configurations[name]
    budget = {k: v for k, v in config.budget.items() if k != "learning_rate"}
    common = {**train_settings(config, name), "model_size": config.model_size, "seed": seed, "learning_rate": config.budget.get("learning_rate"), **budget}
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
    return [TrainConfig(mode="mtl", **common, **{**weights, "triplet_loss_weight": triplet_weight})]


def waveform_trims(config: ExperimentConfig) -> list[str]:
    """The trims of the cached audio that some configuration's augmented (or trimmed) training reads."""
    phases = [phase for name in config.configurations for phase in training_phases(config, name, config.seeds[0])]
    return sorted({phase.trim for phase in phases if phase.uses_waveforms})


def check_splits(path: Path, config: ExperimentConfig) -> None:
    """Named held-out speakers must exist, and no held-out speaker may be a training speaker."""
    training = {s for d in config.train_audio_dirs for s in index_corpus(d).speakers}
    held_out = {s for d in config.held_out_audio_dirs for s in index_corpus(d).speakers}
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
    """Train one configuration with one seed, phase after phase; returns the run directory whose best.h5 is scored."""
    from train import BEST_CHECKPOINT, train

    run = None
    for phase in training_phases(config, name, seed):
        if run is not None:  # A later phase starts from the previous phase's best model.
            phase = dataclasses.replace(phase, initial_checkpoint=str(run / BEST_CHECKPOINT))
        run = train(working_dir, phase, run_root)
    return run


def run_experiment(config_path: str | os.PathLike, working_dir: str | os.PathLike) -> Path:
    """Train and score every configuration x seed not scored yet; (re)write the CSV and the plot."""
    import keras

    from audio import build_feature_cache
    from test import evaluate_checkpoint
    from train import BEST_CHECKPOINT

    config = load_experiment_config(config_path)
    working_dir = Path(working_dir)
    trims = waveform_trims(config) or [None]
    for audio_dir in config.train_audio_dirs:
        for trim in trims:  # Each call adds what is missing: the features once, then each trim's audio.
            logger.info("%s", build_feature_cache(audio_dir, working_dir, waveform_trim=trim).summary())
    corpora = held_out_corpora(config)
    held_out_dirs = tuple(str(d) for d in config.held_out_audio_dirs)
    for name, settings in config.configurations.items():
        for seed in config.seeds:
            run_root = working_dir / "runs" / name / f"seed{seed}"
            result_file = run_root / "evaluation.json"
            if result_file.is_file():
                logger.info("%s seed %d: scored already, skipped", name, seed)
                continue
            logger.info("%s seed %d: training", name, seed)
            run_root.mkdir(parents=True, exist_ok=True)
            start = time.monotonic()
            run = train_configuration(working_dir, run_root, config, name, seed)
            timing = run_root / "training.json"  # Kept apart, so scoring a trained run again keeps its time.
            if not timing.is_file():
                write_json_atomically(timing, {"train_seconds": round(time.monotonic() - start, 1)})
            seconds = json.loads(timing.read_text())["train_seconds"]
            report = evaluate_checkpoint(working_dir, run / BEST_CHECKPOINT, eval_audio_dirs=held_out_dirs, num_trials=config.num_trials,
                                         seed=seed, extra_genders=config.speaker_genders, held_out_speakers=config.held_out_speakers)
            heads = report.heads
            steps, windows = train_progress(run_root)
            row = {
                "config": name, "seed": seed, "model_size": config.model_size, "backend": keras.backend.backend(), "device": device_name(),
                "train_steps": steps, "train_windows": windows, **verification_columns(report.__dict__, corpora),
                "speaker_id_acc": heads.get("speaker_id_acc"), "gender_acc_head": heads.get("gender_acc_head"),
                "gender_acc_probe": heads.get("gender_acc_probe"), "gender_loss_weight": settings.get("gender_loss_weight", 1.0) if settings["recipe"].startswith("mtl") else 0.0,
                "triplet_loss_weight": settings.get("triplet_loss_weight", 1.0 if settings["recipe"] == "mtl_triplet" else 0.0), "train_seconds": seconds,
            }
            write_json_atomically(result_file, {"row": row, "report": report.__dict__})
    csv_path = write_results_csv(config, working_dir)
    if config.gender_weight_plot:
        plot_gender_weight(read_results(csv_path), config.gender_weight_plot, config.output_dir / f"{config.name}_gender_weight.png")
    return csv_path


def train_progress(run_root: Path) -> tuple[int, int]:
    """Optimizer steps and training windows actually taken: epochs finished x steps per epoch (x batch size), over the run's phases."""
    steps = windows = 0
    for state_file in run_root.glob("checkpoints-*/state.json"):
        config = json.loads((state_file.parent / "config.json").read_text())
        phase_steps = json.loads(state_file.read_text())["epoch"] * (config["steps_per_epoch"] or 0)
        steps += phase_steps
        windows += phase_steps * config["batch_size"]
    return steps, windows


def verification_columns(report: dict, corpora: list[str]) -> dict:
    """EER and minDCF (p_target 0.01) pooled and per held-out corpus; None where a corpus had no trials."""
    pooled = report.get("trials") or {}
    columns = {"eer_pooled": pooled.get("eer"), "min_dcf_pooled": pooled.get("min_dcf_001")}
    for corpus in corpora:
        figures = (report.get("corpora") or {}).get(corpus) or {}
        columns[f"eer_{corpus_column(corpus)}"] = figures.get("eer")
        columns[f"min_dcf_{corpus_column(corpus)}"] = figures.get("min_dcf_001")
    return columns


def write_results_csv(config: ExperimentConfig, working_dir: Path) -> Path:
    """One row per scored run, in the recipe's order, written atomically.

    The verification columns come from each run's stored report, so runs scored before a column
    existed still fill it.
    """
    corpora, columns = held_out_corpora(config), csv_columns(config)
    rows = []
    for name in config.configurations:
        for seed in config.seeds:
            run_root = working_dir / "runs" / name / f"seed{seed}"
            result_file = run_root / "evaluation.json"
            if result_file.is_file():
                result = json.loads(result_file.read_text())
                row = {**result["row"], **verification_columns(result["report"], corpora)}
                if row.get("train_windows") is None:
                    row["train_windows"] = train_progress(run_root)[1]
                rows.append(row)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    path = config.output_dir / f"{config.name}.csv"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if row.get(k) is None else row.get(k)) for k in columns} for row in rows)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(buffer.getvalue())
    os.replace(temporary, path)
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
    """The EER of each held-out corpus (in the CSV's order), the pooled EER, then the other metrics that have values."""
    columns = list(rows[0]) if rows else []
    corpus_eers = [c for c in columns if c.startswith("eer_") and c != "eer_pooled"]
    return corpus_eers + ["eer_pooled"] + [m for m in TABLE_METRICS if len(_values(rows, m))]


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
                 "eer_pooled among all held-out speakers together; accuracies: higher is better. "
                 "n/a: no value (a corpus without trials of its own, a head the configuration lacks, or a column the CSV predates).")
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
    figure.savefig(path, dpi=PLOT_DPI)
    return path


