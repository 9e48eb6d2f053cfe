"""The Hive-MTL experiment: does one unified embedding serve every task as well as specialised ones?

A recipe file (JSON, e.g. `recipes/mtl_vs_single.json`) names the data splits, the model size,
the step budget, the seeds and the configurations to compare. `run_experiment` trains every
configuration with every seed on the same data and budget, scores each model with the code
paths `test-model` uses, and writes one CSV row per run plus a plot. Finished runs are skipped
when the command runs again, so an interrupted experiment resumes.

    <working_dir>/audio-fbanks/, corpus.json     the training speakers' feature cache
    <working_dir>/runs/<configuration>/seed<k>/  run directories and evaluation.json
    results/<name>.csv, results/<name>_gender_weight.png
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audio import index_corpus, write_json_atomically

logger = logging.getLogger(__name__)

RECIPES = ("softmax", "softmax_triplet", "mtl", "mtl_triplet")
CSV_COLUMNS = (
    "config", "seed", "model_size", "backend", "device", "train_steps", "eer", "min_dcf", "speaker_id_acc",
    "gender_acc_head", "gender_acc_probe", "gender_loss_weight", "triplet_loss_weight", "train_seconds",
)
BUDGET_KEYS = ("epochs", "steps_per_epoch", "batch_size", "validation_steps", "learning_rate")
CONFIGURATION_KEYS = ("recipe", "speaker_loss_weight", "gender_loss_weight", "triplet_loss_weight")
TABLE_METRICS = ("eer", "min_dcf", "speaker_id_acc", "gender_acc_head", "gender_acc_probe")


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


def load_experiment_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read and check a recipe file before any work starts; errors name the offending key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such experiment recipe")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ExperimentConfigError(f"{path}: not valid JSON ({error})") from None
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
    )
    check_splits(path, config)
    return config


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


def train_configuration(working_dir: Path, run_root: Path, settings: dict, config: ExperimentConfig, seed: int) -> Path:
    """Train one configuration with one seed; returns the run directory whose best.h5 is scored."""
    from train import BEST_CHECKPOINT, TrainConfig, train

    budget = {k: v for k, v in config.budget.items() if k != "learning_rate"}
    weights = {k: v for k, v in settings.items() if k.endswith("_loss_weight")}
    common = {"model_size": config.model_size, "seed": seed, "learning_rate": config.budget.get("learning_rate"), **budget}
    recipe = settings["recipe"]
    if recipe == "softmax":
        return train(working_dir, TrainConfig(mode="softmax", **common), run_root)
    if recipe == "softmax_triplet":  # The step budget is split between the two phases.
        softmax_epochs = max(1, common["epochs"] // 2)
        softmax = train(working_dir, TrainConfig(mode="softmax", **{**common, "epochs": softmax_epochs}), run_root)
        triplet = {**common, "epochs": max(1, common["epochs"] - softmax_epochs), "initial_checkpoint": str(softmax / BEST_CHECKPOINT)}
        return train(working_dir, TrainConfig(mode="triplet", **triplet), run_root)
    triplet_weight = weights.get("triplet_loss_weight", 1.0 if recipe == "mtl_triplet" else 0.0)
    return train(working_dir, TrainConfig(mode="mtl", **common, **{**weights, "triplet_loss_weight": triplet_weight}), run_root)


def run_experiment(config_path: str | os.PathLike, working_dir: str | os.PathLike) -> Path:
    """Train and score every configuration x seed not scored yet; (re)write the CSV and the plot."""
    import keras

    from audio import build_feature_cache
    from test import evaluate_checkpoint
    from train import BEST_CHECKPOINT

    config = load_experiment_config(config_path)
    working_dir = Path(working_dir)
    for audio_dir in config.train_audio_dirs:
        logger.info("%s", build_feature_cache(audio_dir, working_dir).summary())
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
            run = train_configuration(working_dir, run_root, settings, config, seed)
            timing = run_root / "training.json"  # Kept apart, so scoring a trained run again keeps its time.
            if not timing.is_file():
                write_json_atomically(timing, {"train_seconds": round(time.monotonic() - start, 1)})
            seconds = json.loads(timing.read_text())["train_seconds"]
            report = evaluate_checkpoint(working_dir, run / BEST_CHECKPOINT, eval_audio_dirs=held_out_dirs, num_trials=config.num_trials,
                                         seed=seed, extra_genders=config.speaker_genders, held_out_speakers=config.held_out_speakers)
            trials, heads = report.trials or {}, report.heads
            row = {
                "config": name, "seed": seed, "model_size": config.model_size, "backend": keras.backend.backend(), "device": device_name(),
                "train_steps": train_steps(run_root), "eer": trials.get("eer"), "min_dcf": trials.get("min_dcf_001"),
                "speaker_id_acc": heads.get("speaker_id_acc"), "gender_acc_head": heads.get("gender_acc_head"),
                "gender_acc_probe": heads.get("gender_acc_probe"), "gender_loss_weight": settings.get("gender_loss_weight", 1.0) if settings["recipe"].startswith("mtl") else 0.0,
                "triplet_loss_weight": settings.get("triplet_loss_weight", 1.0 if settings["recipe"] == "mtl_triplet" else 0.0), "train_seconds": seconds,
            }
            write_json_atomically(result_file, {"row": row, "report": report.__dict__})
    csv_path = write_results_csv(config, working_dir)
    if config.gender_weight_plot:
        plot_gender_weight(read_results(csv_path), config.gender_weight_plot, config.output_dir / f"{config.name}_gender_weight.png")
    return csv_path


def train_steps(run_root: Path) -> int:
    """Optimizer steps actually taken: epochs finished x steps per epoch, over the run's phases."""
    total = 0
    for state_file in run_root.glob("checkpoints-*/state.json"):
        config = json.loads((state_file.parent / "config.json").read_text())
        total += json.loads(state_file.read_text())["epoch"] * (config["steps_per_epoch"] or 0)
    return total


def write_results_csv(config: ExperimentConfig, working_dir: Path) -> Path:
    """One row per scored run, in the recipe's order, written atomically."""
    rows = []
    for name in config.configurations:
        for seed in config.seeds:
            result_file = working_dir / "runs" / name / f"seed{seed}" / "evaluation.json"
            if result_file.is_file():
                rows.append(json.loads(result_file.read_text())["row"])
    config.output_dir.mkdir(parents=True, exist_ok=True)
    path = config.output_dir / f"{config.name}.csv"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS} for row in rows)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(buffer.getvalue())
    os.replace(temporary, path)
    return path


def read_results(csv_path: str | os.PathLike) -> list[dict]:
    with open(csv_path, newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------------------------
# Table and plot.


def _values(rows: list[dict], metric: str) -> np.ndarray:
    return np.array([float(r[metric]) for r in rows if r.get(metric) not in ("", None)])


def results_table(csv_path: str | os.PathLike) -> str:
    """Markdown table: per configuration, mean ± standard deviation over seeds of every metric."""
    rows = read_results(csv_path)
    names = list(dict.fromkeys(r["config"] for r in rows))
    header = "| configuration | seeds | " + " | ".join(TABLE_METRICS) + " |"
    lines = [header, "|" + "---|" * (len(TABLE_METRICS) + 2)]
    for name in names:
        group = [r for r in rows if r["config"] == name]
        cells = []
        for metric in TABLE_METRICS:
            values = _values(group, metric)
            cells.append("n/a" if not len(values) else f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.3f}")
        lines.append(f"| {name} | {len(group)} | " + " | ".join(cells) + " |")
    first = rows[0] if rows else {}
    lines.append("")
    lines.append(f"Model size {first.get('model_size', '?')}, backend {first.get('backend', '?')}, device {first.get('device', '?')}, "
                 f"{first.get('train_steps', '?')} training steps per run; mean ± standard deviation over seeds. "
                 "eer and min_dcf (p_target 0.01): speaker-disjoint trials, lower is better; accuracies: higher is better.")
    return "\n".join(lines)


def update_readme_table(csv_path: str | os.PathLike, readme: str | os.PathLike, marker: str = "mtl-results") -> None:
    """Replace the text between `<!-- marker -->` and `<!-- /marker -->` in the README with the table."""
    readme = Path(readme)
    text = readme.read_text()
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if start not in text or end not in text:
        raise ValueError(f"{readme}: no {start} ... {end} markers to put the table between")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    readme.write_text(f"{before}{start}\n{results_table(csv_path)}\n{end}{after}")


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
    for axis, metrics, title in ((figure.add_subplot(1, 2, 1), ("eer",), "verification EER (lower is better)"),
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


