"""Ship a trained model: the embedding checkpoint, its front end, calibration, cohort and a model card, in one folder.

    pretrained/model.h5          embedding model only (legacy HDF5, reference layer names)
    pretrained/config.json       the training configuration; inference reads its front end
    pretrained/calibration.json  scores to log-likelihood ratios, fitted on speakers set aside for it (calibration.py)
    pretrained/cohort.npy        one mean embedding per training speaker, for --score_norm (score_norm.py)
    pretrained/model_card.json   data, recipe, budget, machine, calibration split, per-corpus figures
    pretrained/README.md         the same card for people, rendered from model_card.json

Every verb uses `pretrained/model.h5` when no `--checkpoint_file` is given, and `verify` then
decides on the calibrated log-likelihood ratio at the Bayes threshold of its prior and costs.
Nothing in the folder is chosen on the corpora the card scores: the calibration is fitted on the
run's calibration speakers (`train --calibration_speakers`) or on a folder of speakers neither
trained on nor tested (`--calibration_audio_dir`), and without either shipping is refused; the
EER thresholds of the card are measurements, used by no verb. Shipping is one transaction: the
files are written and the model evaluated in a new folder beside `pretrained/`, which then takes
its place whole. The learning curve of a run (EER per held-out corpus against training windows,
from the run's snapshots) is made here too, since the card quotes it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fileio import replace_directory, save_model_atomically, write_atomically, write_json_atomically
from constants import (
    CALIBRATION_CROP_SECONDS, CALIBRATION_FILE_NAME, COHORT_FILE_NAME, DCF_COST_FALSE_ALARM, DCF_COST_MISS, EMBEDDING_PAD_MODES,
    MODEL_CARD_FILE_NAME, PRETRAINED_CHECKPOINT_NAME, VERIFY_PRIOR, VERIFY_THRESHOLD,
)

LEARNING_CURVE_COLUMNS = ("epoch", "train_windows", "corpus", "eer", "min_dcf_001", "eer_threshold", "num_trials")
# calibration.json and cohort.npy belong to the weights they were made with: every shipment makes them again for its model.
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
    """Per-corpus verification figures of an EvaluationReport, for a card: with a calibration, also those of its LLRs
    (Cllr, actual DCF at 0.01, the half total error of `verify`'s default decision). `eer_threshold` is a measurement."""
    keys = ("eer", "eer_threshold", "min_dcf_001", "min_dcf_005", "min_cllr", "cllr", "act_dcf_001", "half_total_error", "num_trials", "num_target_trials")
    return {name: {k: figures[k] for k in keys if k in figures} | {"speakers": len(figures.get("speakers") or [])} for name, figures in report.corpora.items()}


def ship_model(
    checkpoint_file: str | os.PathLike,
    eval_audio_dirs: list[str],
    output_dir: str | os.PathLike,
    command: str,
    training_corpora: list[str],
    train_seconds: float | None = None,
    embedding_pad: str | None = "auto",
    working_dir: str | os.PathLike | None = None,
    calibration_audio_dirs: Sequence[str | os.PathLike] = (),
    crop_seconds: Sequence[float] = CALIBRATION_CROP_SECONDS,
) -> Path:
    """Package `checkpoint_file` (a run's best.h5) as a shipped model in `output_dir` with its calibration, cohort and card.

    The embedding model is saved without its speaker head and optimizer, so the folder stays
    small. Its calibration (`calibration.json`) is fitted on the speakers `calibration_split`
    gives (the run's calibration speakers in the cache of `working_dir`, default the folder above
    the run's, or those of `calibration_audio_dirs`), at calibrate-model's crops; its cohort
    (`cohort.npy`) is the run's training speakers (`cohort_speakers`). The card's figures are
    measured on `eval_audio_dirs` with the shipped files themselves, whole and on centred crops of
    `crop_seconds` (none where empty). `embedding_pad` embeds clips shorter than a window otherwise
    than training padded them (e.g. `exact`); `auto` chooses the padding on the calibration split
    (`calibration.choose_embedding_pad`). Where it differs from the training padding, the card also gives
    the figures with the training padding.

    Everything that can be refused is refused before any work: a folder that is not a shipped
    model's, no calibration split, a calibration speaker that a figure scores or the model trained on.
    One transaction: the files are written, and the model evaluated, in a new folder beside
    `output_dir`, which then replaces `output_dir` whole (`replace_directory`). A failed or
    interrupted shipment leaves the model that was shipped there with its own card.
    `output_dir` may hold only the files of a shipped model (`SHIPPED_FILES`): the swap would drop others.
    """
    output = Path(output_dir)
    check_shipped_folder(output)
    checkpoint_file = Path(checkpoint_file)
    working_dir = run_working_dir(checkpoint_file, working_dir)
    split = calibration_split(checkpoint_file, working_dir, calibration_audio_dirs, eval_audio_dirs)
    cohort = cohort_speakers(checkpoint_file, working_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.shipping-{os.getpid()}"  # Same file system, ordinary folder permissions.
    shutil.rmtree(staging, ignore_errors=True)  # Left by an earlier, interrupted shipment.
    staging.mkdir()
    try:
        write_shipped_model(checkpoint_file, eval_audio_dirs, staging, command, training_corpora, train_seconds, embedding_pad, split, cohort,
                            tuple(crop_seconds))
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


def run_working_dir(checkpoint_file: Path, working_dir: str | os.PathLike | None) -> Path:
    """The feature cache a run trained from: `working_dir`, else the folder above the run's (`W/checkpoints-<mode>/best.h5`)."""
    from feature_cache import CORPUS_INDEX_FILE_NAME

    directory = Path(working_dir) if working_dir is not None else checkpoint_file.parent.parent
    if not (directory / CORPUS_INDEX_FILE_NAME).is_file():
        raise ValueError(f"{directory}: no feature cache ({CORPUS_INDEX_FILE_NAME}); shipping builds the cohort and the calibration from "
                         "the cache the run trained from: pass --working_dir")
    return directory


@dataclass(frozen=True)
class CalibrationSplit:
    """The speakers a shipped model's calibration is fitted on, the corpora they come from, and what they are."""

    speakers: dict[str, list[Path]]
    corpora: list[str]
    description: str


def calibration_split(checkpoint_file: Path, working_dir: Path, calibration_audio_dirs: Sequence[str | os.PathLike],
                      eval_audio_dirs: Sequence[str | os.PathLike]) -> CalibrationSplit:
    """The speakers to fit the shipped calibration on: those of `calibration_audio_dirs` where given, else the
    run's calibration speakers (`train --calibration_speakers`, its speakers.json) in the cache of `working_dir`.

    Never the speakers of a figure: a run without a calibration split and no folder given is refused (a
    ValueError naming --calibration_audio_dir), and so is a calibration speaker found in `eval_audio_dirs`
    or one the model trained on (`calibration.speakers_to_calibrate_on`).
    """
    from calibration import speakers_to_calibrate_on
    from corpus import index_corpus
    from verification import corpus_names, held_out_homes

    run_file = checkpoint_file.parent / "speakers.json"
    run = json.loads(run_file.read_text()) if run_file.is_file() else {}
    if not calibration_audio_dirs and not run.get("calibration_speakers"):
        raise ValueError(f"{run_file}: the run set no speakers aside for calibration, and shipping chooses nothing on the corpora it "
                         "scores: train with --calibration_speakers, or pass --calibration_audio_dir with speakers neither trained on nor tested")
    speakers = speakers_to_calibrate_on(checkpoint_file, working_dir, calibration_audio_dirs, None)
    if calibration_audio_dirs:
        corpora = sorted(set(corpus_names(calibration_audio_dirs)))
        description = (f"{len(speakers)} speakers of {', '.join(corpora)} (ship-model --calibration_audio_dir), "
                       "neither trained on nor scored by any figure of this card")
    else:
        corpora = sorted(set(held_out_homes(working_dir, list(speakers)).values())) or ["the training corpora"]
        description = (f"{len(speakers)} speakers of {', '.join(corpora)} the run set aside for calibration (train --calibration_speakers): "
                       "never trained on, in no figure")
    tested = sorted(set(speakers) & {s for d in eval_audio_dirs for s in index_corpus(d).utterances_by_speaker()})
    if tested:
        raise ValueError(f"calibration speakers {', '.join(tested[:10])} are also in an --eval_audio_dir: a calibration is never fitted on "
                         "the speakers of a figure")
    return CalibrationSplit(speakers, corpora, description)


def cohort_speakers(checkpoint_file: Path, working_dir: Path) -> dict[str, list[Path]]:
    """The run's training speakers (its speakers.json) and their cache entries in `working_dir`: one cohort row each."""
    from feature_cache import cached_entries

    run_file = checkpoint_file.parent / "speakers.json"
    if not run_file.is_file():
        raise ValueError(f"{run_file}: missing; ship-model packages a run's checkpoint, and the run's training speakers make its cohort")
    training = json.loads(run_file.read_text())["speakers"]
    entries = cached_entries(working_dir)[0]
    missing = [s for s in training if s not in entries]
    if missing:
        raise ValueError(f"{working_dir}: the feature cache lacks the training speakers {', '.join(missing[:10])} of {run_file}; "
                         "pass the --working_dir the run trained from")
    return {s: entries[s] for s in training}


def default_decision() -> dict:
    """What `verify` decides on without options, for the card: the Bayes threshold of VERIFY_PRIOR and unit costs on the LLR."""
    from eval_metrics import bayes_threshold

    return {"on": "llr", "prior": VERIFY_PRIOR, "cost_miss": DCF_COST_MISS, "cost_false_alarm": DCF_COST_FALSE_ALARM,
            "llr_threshold": bayes_threshold(VERIFY_PRIOR, DCF_COST_MISS, DCF_COST_FALSE_ALARM)}


CARD_RECIPE_KEYS = ("mode", "head", "aam_margin", "aam_scale", "balanced_sampling", "speed_perturb", "noise_probability", "band_limit_probability",
                    "spec_mask_probability", "window_seconds", "reverb_probability", "learning_rate", "precision", "precision_policy", "mixed_precision", "seed")
EER_THRESHOLD_NOTE = ("eer_threshold: the score at which a corpus's miss and false-alarm rates are equal, measured on its trials; "
                      "a measurement, used by no verb")


def write_shipped_model(checkpoint_file: Path, eval_audio_dirs: list[str], output: Path, command: str, training_corpora: list[str],
                        train_seconds: float | None, embedding_pad: str | None, split: CalibrationSplit, cohort: dict[str, list[Path]],
                        crop_seconds: tuple[float, ...] = ()) -> None:
    """The files of `ship_model` in `output`: model, config, calibration fitted on `split`, the cohort of `cohort`,
    and the card, its figures measured on the files written there."""
    from calibration import calibrate_checkpoint, choose_embedding_pad, write_calibration
    from inference import load_embedding_model
    from score_norm import build_cohort
    from test import evaluate_checkpoint

    run_directory = checkpoint_file.parent
    model = load_embedding_model(checkpoint_file)
    target = output / PRETRAINED_CHECKPOINT_NAME
    save_model_atomically(model, target)
    config = json.loads((run_directory / "config.json").read_text())
    write_json_atomically(output / "config.json", config)
    pad_choice = None
    if embedding_pad == "auto":  # Chosen, like the calibration, on the split set aside for it.
        pad_choice = choose_embedding_pad(target, split.speakers, [config["pad"], *EMBEDDING_PAD_MODES], CALIBRATION_CROP_SECONDS)
        embedding_pad = pad_choice.pad
    training_pad_figures = None
    if embedding_pad and embedding_pad != config["pad"]:  # Before the calibration, which is fitted for the shipped front end.
        training_pad_figures = corpus_figures(evaluate_checkpoint(None, target, tuple(eval_audio_dirs)))
        write_json_atomically(output / "config.json", {**config, "embedding_pad": embedding_pad})
    if pad_choice:  # The chosen padding's split trials are already scored, with the front end shipped.
        calibration = write_calibration(target, pad_choice.by_crop, list(split.speakers), split.description, CALIBRATION_CROP_SECONDS, seed=0,
                                        corpora=split.corpora)
    else:
        calibration = calibrate_checkpoint(target, split.speakers, split.description, CALIBRATION_CROP_SECONDS, corpora=split.corpora)
    build_cohort(target, cohort)
    report = evaluate_checkpoint(None, target, tuple(eval_audio_dirs), crop_seconds=crop_seconds)
    figures = corpus_figures(report)
    speakers = json.loads((run_directory / "speakers.json").read_text())
    budget = run_budget(run_directory)
    if train_seconds is not None:
        budget["train_seconds"] = train_seconds
    card = {
        "checkpoint": PRETRAINED_CHECKPOINT_NAME,
        "model_size": config["model_size"],
        "weights": int(model.count_params()),
        "frontend": {"trim": config["trim"], "pad": embedding_pad or config["pad"], "training_pad": config["pad"]}
                    | ({"pad_chosen_on": {"speakers": split.description, "crop_seconds": [*CALIBRATION_CROP_SECONDS, "whole"],
                                          "mean_eer": pad_choice.mean_eer}} if pad_choice else {}),
        "recipe": {k: config[k] for k in CARD_RECIPE_KEYS if k in config},
        "training": {
            "corpora": training_corpora,
            "speakers": len(speakers["speakers"]),
            "classes": len(speakers["speakers"]) * len(speakers.get("speeds", [1.0])),
            **budget,
            "machine": machine_description(),
            "command": command,
        },
        "decision": default_decision(),
        "calibration": {**calibration.fitted_on, "bias": calibration.bias, "weights": calibration.weights},
        "cohort": {"file": COHORT_FILE_NAME, "speakers": len(cohort), "of": "the run's training speakers, every cached file of each"},
        "evaluation": {"window": "mean", "corpora": figures, "eer_threshold_note": EER_THRESHOLD_NOTE,
                       "pooled": {k: report.trials[k] for k in ("eer", "eer_threshold", "min_dcf_001", "num_trials")} if report.trials else None},
        "evaluation_with_training_pad": training_pad_figures,
        "notes": report.notes,
    }
    if crop_seconds:
        card.update({"by_duration": duration_figures(report.__dict__), "by_duration_note": "Measured on the shipped files by ship-model."})
    write_json_atomically(output / MODEL_CARD_FILE_NAME, card)
    card = json.loads((output / MODEL_CARD_FILE_NAME).read_text())  # Render what the file holds (sorted keys), so both agree.
    write_atomically(output / "README.md", lambda handle: handle.write(render_model_card(card)), text=True)


def render_model_card(card: dict) -> str:
    """The model card as Markdown, from `model_card.json` (a card shipped before calibrations were part of shipping too)."""
    training, evaluation = card["training"], card["evaluation"]
    hours = f"{training['train_seconds'] / 3600:.2f} h" if training.get("train_seconds") else "not recorded"
    recipe = ", ".join(f"{k} = {v}" for k, v in sorted(card["recipe"].items()))  # Sorted: the JSON is written with sorted keys.
    return f"""# Shipped model: {card['model_size']} ResCNN, {card['weights']:,} weights

The model every verb of `cli.py` uses when no `--checkpoint_file` is given (`{card['checkpoint']}`,
embedding model only, reference layer names: it also loads by name like any Deep Speaker
checkpoint).

{textwrap.fill(decision_sentence(card), 100)}

This file is generated from `model_card.json` by `model_card.render_model_card`.

## Data
Trained on {', '.join(training['corpora'])}: {training['speakers']} speakers ({training['classes']} classes with speed
perturbation). Every evaluation speaker below is unseen in training.

## Recipe
{recipe}. Front end: trim = {card['frontend']['trim']}; clips shorter than the 160-frame window were
padded with pad = {card['frontend']['training_pad']} in training and are embedded with pad = {card['frontend']['pad']}.{pad_choice_note(card)}{training_pad_note(card)}

## Budget
The shipped checkpoint is the best on the validation set (the training speakers' held-out
utterances): epoch {training['epochs']} of {training['epochs_run']}{stopped_early_note(training)}, {training['epochs']} x {training['steps_per_epoch']} steps x {training['batch_size']} windows = {training['train_windows']:,}
training windows. The run took {hours} on {training['machine']}.

{calibration_section(card)}## Figures (whole-utterance embeddings, all pairs within each corpus)

{corpus_table(evaluation['corpora'])}

The EER thresholds are measurements (the score at which a corpus's miss and false-alarm rates are
equal), not settings: no verb uses them.

{duration_section(card)}## Retrain it

```bash
{training['command']}
```
"""


def decision_sentence(card: dict) -> str:
    """How `verify` decides with this model when no option says otherwise."""
    calibration = card.get("calibration")
    if not calibration:
        return (f"It has no calibration: `verify` decides on the cosine score at `--threshold`, default {VERIFY_THRESHOLD}, which is "
                "tuned to no model.")
    decision = card.get("decision") or default_decision()
    return (f"`verify` decides on the log-likelihood ratio of `calibration.json` at the Bayes threshold of `--prior` "
            f"(default {decision['prior']:g}) and the costs (default {decision['cost_miss']:g} for a miss, {decision['cost_false_alarm']:g} "
            f"for a false alarm): same speaker when the LLR is at least {decision['llr_threshold']:.3f}, unless `--threshold` is given. "
            "The calibration was fitted on speakers set aside for it: nothing `verify` does was chosen on the corpora below.")


def calibration_section(card: dict) -> str:
    """The calibration split and the fitted weights, for a card that records them (ship-model's)."""
    calibration = card.get("calibration")
    if not calibration or "weights" not in calibration:
        return ""
    weights = " ".join(f"{value:+.3f} {name}" for name, value in sorted(calibration["weights"].items()))
    corpora = ", ".join(calibration.get("corpora", [])) or "not recorded"
    cohort = card.get("cohort")
    cohort_line = f"\n`{cohort['file']}` holds {cohort['speakers']} rows: {cohort['of']} (for `--score_norm`).\n" if cohort else ""
    crops = ", ".join(f"{c:g} s" for c in calibration["crop_seconds"] if c != "whole")
    return f"""## Calibration
`calibration.json` maps a score and both sides' durations (log seconds) to a log-likelihood ratio (natural log):
LLR = {calibration['bias']:+.3f} {weights}.
It was fitted on {calibration['description']}.
Corpus: {corpora}. Speakers: {', '.join(calibration['speakers'])}. Trials: {calibration['num_trials']:,} ({calibration['num_target_trials']:,} same speaker),
all pairs of whole files and of their centred crops of {crops}.
{cohort_line}
"""


def corpus_table(corpora: dict[str, dict]) -> str:
    """One row per corpus: the card's figures, the calibrated ones where the card has them (a card of ship-model), and the
    measured EER threshold."""
    columns = [("EER", "eer", True), ("minDCF(0.01)", "min_dcf_001", False), ("minCllr", "min_cllr", False), ("Cllr", "cllr", False),
               ("actDCF(0.01)", "act_dcf_001", False), ("verify's HTER", "half_total_error", True), ("EER threshold (measured)", "eer_threshold", False)]
    columns = [c for c in columns if any(c[1] in f for f in corpora.values())]
    lines = ["| corpus | speakers | trials | " + " | ".join(c[0] for c in columns) + " |", "|---|---:|---:|" + "---:|" * len(columns)]
    for name, f in corpora.items():
        lines.append(f"| {name} | {f['speakers']} | {f['num_trials']:,} | " + " | ".join(figure(f, key, percent) for _, key, percent in columns) + " |")
    return "\n".join(lines)


def figure(figures: dict, key: str, percent: bool = False) -> str:
    """A figure of a table: a percentage or three decimals; '-' where the card has none."""
    return "-" if key not in figures else f"{100 * figures[key]:.2f} %" if percent else f"{figures[key]:.3f}"


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
    lines = ["| corpus | crop | trials | EER | minDCF(0.01) | minCllr | Cllr | actDCF(0.01) | verify's HTER |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for corpus, crops in by_duration.items():
        for crop, f in crops.items():
            lines.append(f"| {corpus} | {crop if crop == 'whole' else crop + ' s'} | {f['num_trials']:,} | {figure(f, 'eer', True)} | {figure(f, 'min_dcf_001')} | "
                         f"{figure(f, 'min_cllr')} | {figure(f, 'cllr')} | {figure(f, 'act_dcf_001')} | {figure(f, 'half_total_error', True)} |")
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
    and render its README again from the card. A card that records the same calibration with its weights keeps them."""
    directory = Path(pretrained_dir)
    report = json.loads(Path(results_file).read_text())
    card = json.loads((directory / MODEL_CARD_FILE_NAME).read_text())
    calibration, recorded = report.get("calibration"), card.get("calibration") or {}
    if calibration and {k: recorded.get(k) for k in calibration} == calibration:
        calibration = recorded  # The calibration ship-model recorded, with its weights.
    card.update({"by_duration": duration_figures(report), "calibration": calibration, "by_duration_note": note})
    write_json_atomically(directory / MODEL_CARD_FILE_NAME, card)
    card = json.loads((directory / MODEL_CARD_FILE_NAME).read_text())
    write_atomically(directory / "README.md", lambda handle: handle.write(render_model_card(card)), text=True)
    return card


def pad_choice_note(card: dict) -> str:
    """A sentence saying how the embedding padding was chosen on the calibration split, where ship-model chose it."""
    chosen = card["frontend"].get("pad_chosen_on")
    if not chosen:
        return ""
    crops = ", ".join(f"{c:g} s" if isinstance(c, (int, float)) else "whole files" for c in chosen["crop_seconds"])
    eers = ", ".join(f"{pad} {100 * eer:.2f} %" for pad, eer in chosen["mean_eer"].items())
    return f" It was chosen on the calibration split, by the mean EER over {crops}: {eers}."


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
                  f"within each corpus; `verify` {verify_summary(card)}. From `pretrained/model_card.json`."]
    return "\n".join(lines)


def verify_summary(card: dict) -> str:
    """What `verify` decides on, in a few words, for the README's table."""
    if not card.get("calibration"):
        return f"decides on the score at {VERIFY_THRESHOLD} (no calibration)"
    return f"decides on the LLR of `calibration.json` (Bayes threshold {(card.get('decision') or default_decision())['llr_threshold']:.3f})"


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
