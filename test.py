"""Evaluation of a checkpoint: the reference protocol, speaker-disjoint trials and the Hive-MTL heads.

`evaluate_checkpoint` is what `python cli.py test-model` runs. Every embedding goes through
`inference.Embedder`, the same path `embed`, `verify` and `identify` use. Verification figures come
per held-out corpus (trials among its own speakers), with the pooled figure beside them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from calibration import read_calibration
from score_norm import read_cohort
from plots import write_projection_plot, write_score_plots
from probes import (
    clip_task_accuracies, label_source_files, label_task_accuracies, run_label_tasks, speaker_head_accuracy, speaker_id_accuracy,
)
from task_heads import task_heads
from tasks import entry_sources, gender_task
from triplet_loss import batch_cosine_similarity  # noqa: F401  (the reference's example imports it from test)
from verification import (
    EmbeddingsOnce, HeldOutCorpus, corpus_verification, crop_name, evaluation_corpora, held_out_homes, pooled_speakers, reference_protocol_scores,
    trial_scores_and_seconds, trial_set_figures, verification_line,
)

logger = logging.getLogger(__name__)


@dataclass
class EvaluationReport:
    """Every figure of one evaluation; `to_json` is what test-model writes."""

    checkpoint: str
    reference: dict | None = None
    trials: dict | None = None  # Pooled over every corpus, or the one given trial list.
    trial_lists: dict[str, dict] = field(default_factory=dict)  # Given trial list name -> its figures.
    corpora: dict[str, dict] = field(default_factory=dict)  # Corpus name -> its own verification figures.
    durations: dict[str, dict[str, dict]] = field(default_factory=dict)  # Corpus name -> crop seconds ("1", "2") -> figures.
    calibration: dict | None = None  # What the calibration that gave the LLR figures was fitted on.
    heads: dict = field(default_factory=dict)  # Accuracies of the embedding (probes, identification) and of task heads.
    unseen_labels: dict[str, dict[str, int]] = field(default_factory=dict)  # Task -> label -> unseen speakers carrying it.
    # Task -> {"speakers", "labels", "probe", "head"}: each unseen speaker's label and predictions (bootstraps over speakers).
    speaker_predictions: dict[str, dict[str, list]] = field(default_factory=dict)
    # Per-clip task -> {"clips", "speakers", "labels", "probe", "head"}: each labelled unseen clip, its speaker, label and predictions.
    clip_predictions: dict[str, dict[str, list]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self, path: str | os.PathLike) -> Path:
        from fileio import write_json_atomically

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(path, self.__dict__)
        return path

    def verification_lines(self) -> list[str]:
        """One line per held-out corpus, then the pooled (or trial-list) line: what test-model prints."""
        rows = list(self.corpora.items()) + [(f"trial list {name}", figures) for name, figures in self.trial_lists.items()]
        if self.trials and not self.trial_lists:
            rows.append(("pooled (all corpora)", self.trials))
        rows[len(self.corpora):len(self.corpora)] = [(f"{name}, {seconds} s crops", figures)
                                                     for name, crops in self.durations.items() for seconds, figures in crops.items()]
        width = max((len(name) for name, _ in rows), default=0)
        return [f"{name:<{width}}  {verification_line(figures)}" for name, figures in rows]


# ----------------------------------------------------------------------------------------------
# Evaluating a checkpoint.


def read_run_info(checkpoint_file: str | os.PathLike) -> dict | None:
    """`speakers.json` of the run a checkpoint belongs to (training speakers, genders, held-out speakers)."""
    path = Path(checkpoint_file).parent / "speakers.json"
    return json.loads(path.read_text()) if path.is_file() else None


def read_run_split(checkpoint_file: str | os.PathLike) -> dict[str, dict[str, list[str]]] | None:
    """`split.json` of the run a checkpoint belongs to: speaker -> {"train": [cache entry names], "test": [...]}."""
    path = Path(checkpoint_file).parent / "split.json"
    return json.loads(path.read_text()) if path.is_file() else None


def training_split(entries: list[Path], recorded: dict[str, list[str]] | None) -> tuple[list[Path], list[Path]]:
    """A training speaker's (train, test) entries: as the run recorded them, else the reference split.

    Recomputed on a cache that grew after training, the 80 % boundary would move and score
    training utterances as test ones; entries added since are in neither list.
    """
    from batcher import split_utterances

    if recorded is None:
        return split_utterances(entries)
    by_name = {entry.name: entry for entry in entries}
    return [by_name[n] for n in recorded["train"] if n in by_name], [by_name[n] for n in recorded["test"] if n in by_name]


def evaluate_checkpoint(
    working_dir: str | os.PathLike | None,
    checkpoint_file: str | os.PathLike,
    eval_audio_dirs: tuple[str, ...] = (),
    trials_file: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    num_trials: int | None = None,
    window: str = "mean",
    seed: int = 0,
    plots_dir: str | os.PathLike | None = None,
    extra_genders: dict[str, str] | None = None,
    held_out_speakers: list[str] | None = None,
    label_tasks: Sequence | None = None,
    trial_scores: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    precision: str = "float32",
    trials_root: str | os.PathLike | None = None,
    crop_seconds: Sequence[float] = (),
    score_norm: str = "none",
) -> EvaluationReport:
    """Every figure of a checkpoint on the cache of `working_dir` (and on unseen corpora if given).

    - reference protocol on the test utterances of the training speakers (one random window per
      utterance, 1 positive and 99 negatives per speaker), as the reference reports it;
    - verification trials between speakers never seen in training (`trials_file`, else all or
      `num_trials` pairs among `eval_audio_dirs`, else among the run's held-out speakers):
      EER, minDCF, with whole-utterance embeddings (`window`); without `trials_file`, for each
      corpus on its own (`report.corpora`, see `corpus_verification`) and pooled (`report.trials`);
    - for gender and each label task (`label_tasks`, default: the tasks the run declared), the
      balanced accuracy (mean recall per label, so the majority label earns nothing) of a
      logistic-regression probe on the frozen embeddings (trained on the training speakers'
      training utterances, tested on the unseen speakers), `<task>_acc_probe`; for a Hive-MTL
      checkpoint with that head, the head's balanced accuracy on the unseen speakers,
      `<task>_acc_head`; and how many unseen speakers carry each label (`report.unseen_labels`);
      a per-clip task (emotion) the same two over the unseen speakers' labelled clips, each clip
      once (`clip_task_accuracies`; each clip's label and predictions in `report.clip_predictions`);
    - closed-set speaker identification from the embedding (nearest training-speaker profile) on
      the test utterances (never the validation ones), and a Hive-MTL speaker head's accuracy.

    `held_out_speakers` restricts the unseen speakers to those named; `extra_genders` adds
    gender labels that no label file gives; `trial_scores` receives each corpus's trial scores;
    `precision` is the Embedder's (`precision.resolve_precision`). `trials_file` may be several
    published lists (VoxCeleb's, CN-Celeb's; `trials.read_published_trials`, paths relative to
    `trials_root` or inferred), each scored on its own in `report.trial_lists`, every file
    embedded once; a missing file stops the evaluation before any embedding work.
    `crop_seconds` scores each corpus's trials again on centred crops of every file of that many seconds
    (`report.durations`). With a calibration beside the checkpoint (`calibration.json`), each corpus's figures
    add those of its LLRs (`calibrated_figures`). `score_norm` ('mean', 'asnorm': `score_norm.py`, with the
    cohort beside the checkpoint) normalises each corpus's scores; the calibration, fitted on raw scores, is
    then left out.
    """
    from feature_cache import cached_entries
    from inference import Embedder
    from trials import read_trial_lists

    lists = [trials_file] if isinstance(trials_file, (str, os.PathLike)) else list(trials_file or ())
    trial_lists = read_trial_lists(lists, trials_root)
    embedder = Embedder.from_checkpoint(checkpoint_file, precision=precision)
    report = EvaluationReport(str(checkpoint_file))
    rng = np.random.default_rng(seed)
    features: dict | None = {} if crop_seconds else None  # Decoded once for the whole file and every crop.
    embed = EmbeddingsOnce(embedder, window, rng, features=features)
    calibration = read_calibration(checkpoint_file) if score_norm == "none" else None
    cohort = read_cohort(checkpoint_file) if score_norm != "none" else None
    report.calibration = calibration.fitted_on if calibration else None
    entries, genders = cached_entries(working_dir) if working_dir is not None else ({}, {})
    run = read_run_info(checkpoint_file)
    if run is None and working_dir is not None:
        report.notes.append("no speakers.json beside the checkpoint: every cached speaker counts as a training speaker")
    training_speakers = [s for s in (run["speakers"] if run else entries) if s in entries]
    held_out = {s: entries[s] for s in (run["held_out_speakers"] if run else []) if s in entries}
    recorded = read_run_split(checkpoint_file) or {}
    splits = {s: training_split(entries[s], recorded.get(s)) for s in training_speakers}
    score_reference_protocol(report, embedder, splits, rng)

    corpora = evaluation_corpora(eval_audio_dirs, held_out, held_out_homes(working_dir, list(held_out)) if held_out else None)
    trial_speakers, trial_genders = pooled_speakers(corpora)
    if held_out_speakers is not None:
        trial_speakers = {s: trial_speakers[s] for s in held_out_speakers if s in trial_speakers}
        corpora = [replace(c, speakers={s: p for s, p in c.speakers.items() if s in trial_speakers}) for c in corpora]
    genders = {**genders, **trial_genders, **(extra_genders or {})}
    report.notes.extend(speaker_notes(corpora, trial_speakers, training_speakers))
    if trial_lists:
        score_trial_lists(report, trial_lists, embed, window, plots_dir, calibration, score_norm, cohort)
    else:
        score_trials_of_unseen_speakers(report, corpora, trial_speakers, embed, num_trials, window, seed, plots_dir, trial_scores, calibration,
                                        score_norm, cohort)
        for seconds in crop_seconds:
            crops = EmbeddingsOnce(embedder, window, rng, crop_seconds=seconds, features=features)
            for name, figures in corpus_verification(corpora, crops, num_trials, seed, calibration=calibration, score_norm=score_norm, cohort=cohort)[0].items():
                report.durations.setdefault(name, {})[crop_name(seconds)] = figures

    speaker_id = speaker_id_accuracy(embed, splits)
    if speaker_id is not None:
        report.heads["speaker_id_acc"] = speaker_id
    heads = task_heads(checkpoint_file)
    if heads is not None:
        report.heads.update(speaker_head_accuracy(heads, embed, splits, run["speakers"] if run else training_speakers))
    tasks = [gender_task(1.0), *(run_label_tasks(checkpoint_file) if label_tasks is None else label_tasks)]
    score_label_tasks(report, tasks, heads, embed, splits, trial_speakers, training_speakers, genders, run, working_dir)
    if plots_dir and trial_speakers:
        rows = [(p, s) for s, paths in trial_speakers.items() for p in paths]
        write_projection_plot(plots_dir, embed([p for p, _ in rows]), [s for _, s in rows], [genders.get(s) for _, s in rows])
    return report


def score_reference_protocol(report: EvaluationReport, embedder, splits: dict[str, tuple[list, list]], rng: np.random.Generator) -> None:
    """The reference's figures on the training speakers' test utterances, one random window each, as the reference reports them."""
    from eval_metrics import reference_metrics

    test_embeddings = {s: embedder.embed_files(test, "random", rng) for s, (_, test) in splits.items() if test}
    if len(test_embeddings) >= 2 and any(len(e) >= 2 for e in test_embeddings.values()):
        metrics = reference_metrics(reference_protocol_scores(test_embeddings, rng))
        report.reference = {**metrics.__dict__, "speakers": sum(len(e) >= 2 for e in test_embeddings.values()), "line": metrics.format()}
    else:
        report.notes.append("reference protocol skipped: it needs 2 speakers with test utterances, one with at least 2")


def speaker_notes(corpora: Sequence[HeldOutCorpus], trial_speakers: dict[str, list], training_speakers: list[str]) -> list[str]:
    """What a reader must know about the trial speakers: those seen in training, those in two corpora."""
    notes = []
    seen = sorted(set(trial_speakers) & set(training_speakers))
    if seen:
        notes.append(f"trial speakers seen in training (the figures are not speaker-disjoint): {', '.join(seen)}")
    shared = sorted(s for s in trial_speakers if sum(s in c.speakers for c in corpora) > 1)
    if shared:
        notes.append(f"speakers in more than one corpus, one speaker each in the pooled trials: {', '.join(shared)}")
    return notes


def score_trial_lists(report: EvaluationReport, trial_lists: dict[str, tuple[Path, list]], embed: EmbeddingsOnce, window: str, plots_dir,
                      calibration=None, score_norm: str = "none", cohort: np.ndarray | None = None) -> None:
    """Each given list's figures in `report.trial_lists` (and `report.trials` when there is one list), every file
    embedded once, normalised and calibrated as a corpus's own trials are (`trial_set_figures`)."""
    embed([str(p) for p in sorted({p for _, trials in trial_lists.values() for trial in trials for p in (trial.path1, trial.path2)})])
    for name, (list_file, trials) in trial_lists.items():
        figures, scores, labels = trial_set_figures(trials, embed, calibration, score_norm, cohort)
        report.trial_lists[name] = {**figures, "speakers": None, "window": window, "trials_file": str(list_file)}
    if len(trial_lists) == 1:
        report.trials = report.trial_lists[name]
        if plots_dir:
            write_score_plots(plots_dir, scores, labels, report.trials["eer_threshold"])


def score_trials_of_unseen_speakers(
    report: EvaluationReport, corpora: Sequence[HeldOutCorpus], trial_speakers: dict[str, list], embed: EmbeddingsOnce,
    num_trials: int | None, window: str, seed: int, plots_dir, trial_scores: dict | None, calibration=None,
    score_norm: str = "none", cohort: np.ndarray | None = None,
) -> None:
    """The pooled figure in `report.trials` and each corpus's own in `report.corpora`."""
    from eval_metrics import verification_metrics
    from trials import generate_trials

    if len(trial_speakers) < 2:
        report.notes.append("no speaker-disjoint trials: train with --held_out_speakers, or pass --eval_audio_dir or --trials")
        return
    trials = generate_trials({s: [str(p) for p in paths] for s, paths in trial_speakers.items()}, num_trials, seed)
    scores, labels, _, _ = trial_scores_and_seconds(trials, embed, False, score_norm, cohort)
    metrics = verification_metrics(scores, labels)
    report.trials = {**metrics.__dict__, "num_trials": len(trials), "speakers": sorted(trial_speakers), "window": window, "trials_file": None}
    if plots_dir:
        write_score_plots(plots_dir, scores, labels, metrics.eer_threshold)
    report.corpora, notes = corpus_verification(corpora, embed, num_trials, seed, trial_scores, calibration, score_norm, cohort)
    report.notes.extend(notes)


def score_label_tasks(report: EvaluationReport, tasks: Sequence, heads, embed: EmbeddingsOnce, splits, trial_speakers: dict[str, list],
                      training_speakers: list[str], genders: dict[str, str], run: dict | None, working_dir) -> None:
    """Probe and head accuracies of gender and each label task on the unseen speakers (per clip for a per-clip task)."""
    files = label_source_files(working_dir, trial_speakers, training_speakers, tasks)
    sources = entry_sources(working_dir) if working_dir is not None and any(task.per_clip for task in tasks) else {}
    for task in tasks:
        if task.per_clip:
            figures, predictions = clip_task_accuracies(task, heads, embed, splits, trial_speakers, sources, run)
            report.heads.update(figures)
            if predictions:
                report.clip_predictions[task.name] = predictions
            continue
        figures, counts, predictions = label_task_accuracies(task, heads, embed, splits, trial_speakers, files, genders, run)
        report.heads.update(figures)
        if counts:
            report.unseen_labels[task.name] = counts
            report.speaker_predictions[task.name] = predictions
