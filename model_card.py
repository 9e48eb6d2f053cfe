"""Ship a trained model: the embedding checkpoint, its front end and a model card, in one folder.

    pretrained/model.h5          embedding model only (legacy HDF5, reference layer names)
    pretrained/config.json       the training configuration; inference reads its front end
    pretrained/model_card.json   data, recipe, budget, machine, per-corpus EER and minDCF, threshold
    pretrained/README.md         the same card for people, rendered from model_card.json

Every verb uses `pretrained/model.h5` when no `--checkpoint_file` is given, and `verify` then
uses the card's EER threshold. Shipping is one transaction: the four files are written and the
model evaluated in a new folder beside `pretrained/`, which then takes its place whole. The
learning curve of a run (EER per held-out corpus against training windows, from the run's
snapshots) is made here too, since the card quotes it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
from pathlib import Path

import numpy as np

from fileio import replace_directory, save_model_atomically, write_atomically, write_json_atomically
from constants import CALIBRATION_FILE_NAME, COHORT_FILE_NAME, MODEL_CARD_FILE_NAME, PRETRAINED_CHECKPOINT_NAME

LEARNING_CURVE_COLUMNS = ("epoch", "train_windows", "corpus", "eer", "min_dcf_001", "eer_threshold", "num_trials")
# calibration.json and cohort.npy belong to the weights they were made with: a new shipment drops them until
# `calibrate-model` and `build-cohort` make them for the new model.
SHIPPED_FILES = (PRETRAINED_CHECKPOINT_NAME, "config.json", MODEL_CARD_FILE_NAME, "README.md", CALIBRATION_FILE_NAME, COHORT_FILE_NAME)
DURATION_COLUMNS = ("eer", "min_dcf_001", "min_cllr", "cllr", "act_dcf_001", "half_total_error", "num_trials")


def machine_description() -> str:
    """CPU model and core count, e.g. 'Intel(R) Xeon(R) Processor, 2 cores'."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} cores"


def run_budget(run_directory: Path) -> dict:
    """Epochs, training windows and wall seconds of a run's best checkpoint, from its config, state and metrics.

    The best checkpoint is the epoch with the best monitored value in metrics.csv; the windows
    are those it had seen, not those of the whole run.
    """
    config = json.loads((run_directory / "config.json").read_text())
    state = json.loads((run_directory / "state.json").read_text())
    epochs_run = int(state["epoch"])
    with open(run_directory / "metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get(state["monitor"]) not in (None, "", "NA")]
    best_epoch = epochs_run
    if rows:
        sign = -1.0 if state["monitor"].endswith("loss") else 1.0
        best_epoch = int(max(rows, key=lambda row: sign * float(row[state["monitor"]]))["epoch"]) + 1  # Keras counts epochs from 0.
    windows_per_epoch = config["steps_per_epoch"] * config["batch_size"]
    return {
        "epochs": best_epoch,
        "epochs_run": epochs_run,
        "epochs_asked": config["epochs"],
        "steps_per_epoch": config["steps_per_epoch"],
        "batch_size": config["batch_size"],
        "train_windows": best_epoch * windows_per_epoch,
        "train_seconds": state.get("train_seconds"),
    }


def corpus_figures(report) -> dict[str, dict]:
    """Per-corpus verification figures of an EvaluationReport, rounded for a card."""
    keys = ("eer", "eer_threshold", "min_dcf_001", "min_dcf_005", "num_trials", "num_target_trials")
    return {name: {k: figures[k] for k in keys if k in figures} | {"speakers": len(figures.get("speakers") or [])} for name, figures in report.corpora.items()}


def ship_model(
    checkpoint_file: str | os.PathLike,
    eval_audio_dirs: list[str],
    output_dir: str | os.PathLike,
    command: str,
    training_corpora: list[str],
    train_seconds: float | None = None,
    embedding_pad: str | None = None,
) -> Path:
    """Package `checkpoint_file` (a run's best.h5) as a shipped model in `output_dir` with its card.

    The embedding model is saved without its speaker head and optimizer, so the folder stays
    small; the card's figures are measured on `eval_audio_dirs` with the shipped file itself.
    The EER threshold of the card is the mean of the per-corpus EER thresholds, so no single
    corpus sets it. `embedding_pad` embeds clips shorter than a window otherwise than training
    padded them (e.g. `exact`); the card then also gives the figures with the training padding.

    One transaction: model, config, card and README are written, and the model evaluated, in a
    new folder beside `output_dir`, which then replaces `output_dir` whole (`replace_directory`).
    A failed or interrupted evaluation leaves the model that was shipped there with its own card.
    `output_dir` may hold only the files of a shipped model (`SHIPPED_FILES`): the swap would drop others.
    """
    output = Path(output_dir)
    check_shipped_folder(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.shipping-{os.getpid()}"  # Same file system, ordinary folder permissions.
    shutil.rmtree(staging, ignore_errors=True)  # Left by an earlier, interrupted shipment.
    staging.mkdir()
    try:
        write_shipped_model(Path(checkpoint_file), eval_audio_dirs, staging, command, training_corpora, train_seconds, embedding_pad)
        replace_directory(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # After the swap: the folder that was shipped before.
    return output


def check_shipped_folder(output: Path) -> None:
    """Refuse an `output_dir` that is not a folder of a shipped model, before any work."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: not a folder")
    others = sorted(p.name for p in output.iterdir() if p.name not in SHIPPED_FILES) if output.is_dir() else []
    if others:
        raise ValueError(f"{output}: holds {', '.join(others)}, not part of a shipped model; shipping replaces the whole folder, "
                         "so move them or choose another --output_dir")


def write_shipped_model(checkpoint_file: Path, eval_audio_dirs: list[str], output: Path, command: str, training_corpora: list[str],
                        train_seconds: float | None, embedding_pad: str | None) -> None:
    """The files of `ship_model` in `output`, the card's figures measured on the model written there."""
    from inference import load_embedding_model
    from test import evaluate_checkpoint

    run_directory = checkpoint_file.parent
    model = load_embedding_model(checkpoint_file)
    target = output / PRETRAINED_CHECKPOINT_NAME
    save_model_atomically(model, target)
    config = json.loads((run_directory / "config.json").read_text())
    write_json_atomically(output / "config.json", config)
    training_pad_figures = None
    if embedding_pad and embedding_pad != config["pad"]:
        training_pad_figures = corpus_figures(evaluate_checkpoint(None, target, tuple(eval_audio_dirs)))
        write_json_atomically(output / "config.json", {**config, "embedding_pad": embedding_pad})
    report = evaluate_checkpoint(None, target, tuple(eval_audio_dirs))
    figures = corpus_figures(report)
    speakers = json.loads((run_directory / "speakers.json").read_text())
    budget = run_budget(run_directory)
    if train_seconds is not None:
        budget["train_seconds"] = train_seconds
    card = {
        "checkpoint": PRETRAINED_CHECKPOINT_NAME,
        "model_size": config["model_size"],
        "weights": int(model.count_params()),
        "frontend": {"trim": config["trim"], "pad": embedding_pad or config["pad"], "training_pad": config["pad"]},
        "recipe": {k: config[k] for k in ("mode", "head", "aam_margin", "aam_scale", "balanced_sampling", "speed_perturb", "noise_probability",
                                          "band_limit_probability", "spec_mask_probability", "learning_rate", "precision", "precision_policy", "mixed_precision", "seed") if k in config},
        "training": {
            "corpora": training_corpora,
            "speakers": len(speakers["speakers"]),
            "classes": len(speakers["speakers"]) * len(speakers.get("speeds", [1.0])),
            **budget,
            "machine": machine_description(),
            "command": command,
        },
        "evaluation": {"window": "mean", "corpora": figures, "pooled": {k: report.trials[k] for k in ("eer", "eer_threshold", "min_dcf_001", "num_trials")} if report.trials else None},
        "eer_threshold": float(np.mean([f["eer_threshold"] for f in figures.values()])),
        "evaluation_with_training_pad": training_pad_figures,
        "notes": report.notes,
    }
    write_json_atomically(output / MODEL_CARD_FILE_NAME, card)
    card = json.loads((output / MODEL_CARD_FILE_NAME).read_text())  # Render what the file holds (sorted keys), so both agree.
    write_atomically(output / "README.md", lambda handle: handle.write(render_model_card(card)), text=True)


def render_model_card(card: dict) -> str:
    """The model card as Markdown, from `model_card.json`."""
    training, evaluation = card["training"], card["evaluation"]
    hours = f"{training['train_seconds'] / 3600:.2f} h" if training.get("train_seconds") else "not recorded"
    rows = "\n".join(
        f"| {name} | {f['speakers']} | {f['num_trials']:,} | {100 * f['eer']:.2f} % | {f['min_dcf_001']:.3f} | {f['eer_threshold']:.3f} |"
        for name, f in evaluation["corpora"].items()
    )
    recipe = ", ".join(f"{k} = {v}" for k, v in sorted(card["recipe"].items()))  # Sorted: the JSON is written with sorted keys.
    return f"""# Shipped model: {card['model_size']} ResCNN, {card['weights']:,} weights

The model every verb of `cli.py` uses when no `--checkpoint_file` is given (`{card['checkpoint']}`,
embedding model only, reference layer names: it also loads by name like any Deep Speaker
checkpoint). `verify` uses its EER threshold, **{card['eer_threshold']:.3f}** (the mean of the
per-corpus EER thresholds below), unless `--threshold` is given.

This file is generated from `model_card.json` by `model_card.render_model_card`.

## Data
Trained on {', '.join(training['corpora'])}: {training['speakers']} speakers ({training['classes']} classes with speed
perturbation). Every evaluation speaker below is unseen in training.

## Recipe
{recipe}. Front end: trim = {card['frontend']['trim']}; clips shorter than the 160-frame window were
padded with pad = {card['frontend']['training_pad']} in training and are embedded with pad = {card['frontend']['pad']}.{training_pad_note(card)}

## Budget
The shipped checkpoint is the best on the validation set (the training speakers' held-out
utterances): epoch {training['epochs']} of {training['epochs_run']}{stopped_early_note(training)}, {training['epochs']} x {training['steps_per_epoch']} steps x {training['batch_size']} windows = {training['train_windows']:,}
training windows. The run took {hours} on {training['machine']}.

## Figures (whole-utterance embeddings, all pairs within each corpus)

| corpus | speakers | trials | EER | minDCF(0.01) | EER threshold |
|---|---|---|---|---|---|
{rows}

{duration_section(card)}## Retrain it

```bash
{training['command']}
```
"""


def duration_figures(report: dict) -> dict[str, dict[str, dict]]:
    """Corpus -> crop ("1", "2", "4", "whole") -> the figures of `DURATION_COLUMNS`, from a test-model report (JSON)
    written with --durations: what the card and the README tables are rendered from."""
    figures: dict[str, dict[str, dict]] = {}
    for corpus, whole in report["corpora"].items():
        crops = {**report.get("durations", {}).get(corpus, {}), "whole": whole}
        figures[corpus] = {crop: {k: f[k] for k in DURATION_COLUMNS if k in f} for crop, f in crops.items()}
    return figures


def duration_table(by_duration: dict[str, dict[str, dict]]) -> str:
    """One row per corpus and crop: EER, minDCF(0.01), minCllr and, where calibrated, Cllr, actDCF(0.01) and the half total error of `verify`'s decision."""
    def value(f: dict, key: str, percent: bool = False) -> str:
        return "-" if key not in f else f"{100 * f[key]:.2f} %" if percent else f"{f[key]:.3f}"

    lines = ["| corpus | crop | trials | EER | minDCF(0.01) | minCllr | Cllr | actDCF(0.01) | verify's HTER |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for corpus, crops in by_duration.items():
        for crop, f in crops.items():
            lines.append(f"| {corpus} | {crop if crop == 'whole' else crop + ' s'} | {f['num_trials']:,} | {value(f, 'eer', True)} | {value(f, 'min_dcf_001')} | "
                         f"{value(f, 'min_cllr')} | {value(f, 'cllr')} | {value(f, 'act_dcf_001')} | {value(f, 'half_total_error', True)} |")
    return "\n".join(lines)


def duration_section(card: dict) -> str:
    """The card's figures by duration and its calibration, where it has them."""
    if "by_duration" not in card:
        return ""
    calibration = card.get("calibration")
    fitted = (f"Scores are calibrated to log-likelihood ratios (`calibration.json`, fitted on {calibration['description']}; "
              f"{calibration['num_trials']:,} trials at crops of {', '.join(map(str, calibration['crop_seconds']))}).") if calibration else "No calibration."
    return f"""## Figures by duration (centred crops of every file; all pairs within each corpus)

{duration_table(card['by_duration'])}

{fitted} {card.get('by_duration_note', '')}

"""


def record_duration_figures(pretrained_dir: str | os.PathLike, results_file: str | os.PathLike, note: str) -> dict:
    """Put a test-model report's figures by duration (and the calibration it used) into the card of `pretrained_dir`,
    and render its README again from the card."""
    directory = Path(pretrained_dir)
    report = json.loads(Path(results_file).read_text())
    card = json.loads((directory / MODEL_CARD_FILE_NAME).read_text())
    card.update({"by_duration": duration_figures(report), "calibration": report.get("calibration"), "by_duration_note": note})
    write_json_atomically(directory / MODEL_CARD_FILE_NAME, card)
    card = json.loads((directory / MODEL_CARD_FILE_NAME).read_text())
    write_atomically(directory / "README.md", lambda handle: handle.write(render_model_card(card)), text=True)
    return card


def training_pad_note(card: dict) -> str:
    """A sentence comparing the embedding padding with the training padding, when they differ."""
    other = card.get("evaluation_with_training_pad")
    if not other:
        return ""
    pairs = ", ".join(
        f"{name} {100 * other[name]['eer']:.2f} % -> {100 * f['eer']:.2f} %" for name, f in card["evaluation"]["corpora"].items() if name in other
    )
    return f" EER with pad = {card['frontend']['training_pad']} -> with pad = {card['frontend']['pad']}: {pairs}."


def learning_curve(run_directory: str | os.PathLike, eval_audio_dirs: list[str], output_csv: str | os.PathLike) -> Path:
    """EER and minDCF per held-out corpus of every snapshot of a run (and its best.h5 is not used).

    Writes one row per (snapshot, corpus) to `output_csv`; snapshots come from `--snapshot_every`.
    """
    from test import evaluate_checkpoint

    run_directory = Path(run_directory)
    config = json.loads((run_directory / "config.json").read_text())
    snapshots = sorted((run_directory / "snapshots").glob("epoch_*.h5"))
    if not snapshots:
        raise FileNotFoundError(f"{run_directory / 'snapshots'}: no snapshots; train with --snapshot_every N")
    if not (run_directory / "snapshots" / "config.json").is_file():  # The front end the snapshots embed with.
        shutil.copyfile(run_directory / "config.json", run_directory / "snapshots" / "config.json")
    rows = []
    for snapshot in snapshots:
        epoch = int(snapshot.stem.split("_")[1])
        report = evaluate_checkpoint(None, snapshot, tuple(eval_audio_dirs))
        for corpus, figures in report.corpora.items():
            rows.append({
                "epoch": epoch,
                "train_windows": epoch * config["steps_per_epoch"] * config["batch_size"],
                "corpus": corpus,
                **{k: figures[k] for k in ("eer", "min_dcf_001", "eer_threshold", "num_trials")},
            })
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LEARNING_CURVE_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    output = Path(output_csv)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(output, lambda handle: handle.write(buffer.getvalue()), text=True)
    return output


def stopped_early_note(training: dict) -> str:
    """Why config.json's `epochs` may differ from the epochs run: the budget asked for, and where the run stopped."""
    asked = training.get("epochs_asked")
    if asked is None or asked == training["epochs_run"]:
        return ""
    return f" (`config.json` records the {asked} epochs the run asked for; it stopped after {training['epochs_run']})"


def figures_table(card: dict) -> str:
    """The card's per-corpus figures as the Markdown table the README shows."""
    evaluation = card["evaluation"]
    lines = ["| held-out corpus | speakers | trials | EER | minDCF(0.01) |", "|---|---:|---:|---:|---:|"]
    for name, f in evaluation["corpora"].items():
        lines.append(f"| {name} | {f['speakers']} | {f['num_trials']:,} | {100 * f['eer']:.2f} % | {f['min_dcf_001']:.3f} |")
    training = card["training"]
    lines += ["", f"Small ResCNN ({card['weights']:,} weights), {training['train_windows']:,} training windows, "
                  f"{training['train_seconds'] / 3600:.1f} h on {training['machine']}; whole-utterance embeddings, all pairs "
                  f"within each corpus; `verify` threshold {card['eer_threshold']:.3f}. From `pretrained/model_card.json`."]
    return "\n".join(lines)



SCORE_NORM_RESULTS = {"none": "pretrained_durations.json", "mean": "pretrained_score_norm_mean.json", "asnorm": "pretrained_score_norm_asnorm.json"}


def score_norm_table(results_dir: str | os.PathLike) -> str:
    """EER and minDCF(0.01) of the shipped model per corpus (whole files) with each score normalisation, from
    the test-model reports in `results_dir` (`SCORE_NORM_RESULTS`)."""
    reports = {norm: json.loads((Path(results_dir) / name).read_text())["corpora"] for norm, name in SCORE_NORM_RESULTS.items()}
    lines = ["| corpus | " + " | ".join(f"EER {norm}" for norm in reports) + " | " + " | ".join(f"minDCF(0.01) {norm}" for norm in reports) + " |",
             "|---|" + "---:|" * (2 * len(reports))]
    for corpus in reports["none"]:
        eers = " | ".join(f"{100 * reports[norm][corpus]['eer']:.2f} %" for norm in reports)
        dcfs = " | ".join(f"{reports[norm][corpus]['min_dcf_001']:.3f}" for norm in reports)
        lines.append(f"| {corpus} | {eers} | {dcfs} |")
    return "\n".join(lines)
