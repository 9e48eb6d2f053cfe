"""What the embedding knows besides identity: logistic-regression probes for labels (gender,
language, emotion), the Hive-MTL heads' accuracies on unseen speakers, and closed-set speaker
identification, per file and per speaker."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from verification import EmbeddingsOnce


def fit_probe(train_embeddings: np.ndarray, train_labels: list[str]):
    """A logistic-regression probe for a label (gender, language) on frozen embeddings."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000).fit(train_embeddings, np.array(train_labels))


def probe_accuracy(train_embeddings: np.ndarray, train_labels: list[str], test_embeddings: np.ndarray, test_labels: list[str]) -> float:
    """Balanced accuracy of a logistic-regression probe for a label (gender, language) on frozen embeddings, per embedding."""
    from eval_metrics import balanced_accuracy

    return balanced_accuracy(fit_probe(train_embeddings, train_labels).predict(test_embeddings), np.array(test_labels))


def per_speaker_labels(probabilities: np.ndarray, classes: Sequence[str], owners: np.ndarray, num_speakers: int) -> np.ndarray:
    """Each speaker's label: the class of highest mean probability over its files.

    `probabilities` (files, classes) in the order of `classes`; `owners[i]` is the speaker (0 ..
    num_speakers - 1) of file i. A speaker of 50 short clips counts once, as one of 2 long files does.
    """
    sums = np.zeros((num_speakers, probabilities.shape[1]))
    np.add.at(sums, owners, probabilities)
    return np.asarray(classes)[np.argmax(sums / np.bincount(owners, minlength=num_speakers)[:, None], axis=1)]


def nearest_profile_accuracy(enrollment: dict[str, np.ndarray], test_embeddings: np.ndarray, test_speakers: list[str]) -> float:
    """Closed-set identification: each speaker's profile is the normalised mean of its enrollment
    embeddings; a test embedding gets the speaker of the most similar profile."""
    from inference import l2_normalize

    speakers = list(enrollment)
    profiles = l2_normalize(np.stack([enrollment[s].mean(axis=0) for s in speakers]))
    predicted = np.array(speakers)[np.argmax(test_embeddings @ profiles.T, axis=1)]
    return float(np.mean(predicted == np.array(test_speakers)))


def speaker_id_accuracy(embed: EmbeddingsOnce, splits: dict[str, tuple[list, list]]) -> float | None:
    """Speaker identification from the embedding alone, so every model is scored the same way:
    training utterances enroll each training speaker, test utterances are identified."""
    test_rows = [(p, s) for s, (train, test) in splits.items() if train for p in test]
    if not test_rows:
        return None
    enrollment = {s: embed(train) for s, (train, _) in splits.items() if train}
    return nearest_profile_accuracy(enrollment, embed([p for p, _ in test_rows]), [s for _, s in test_rows])


def speaker_head_accuracy(heads, embed: EmbeddingsOnce, splits, class_speakers: list[str]) -> dict:
    """Speaker-head accuracy on the test utterances of the training speakers (a speed-perturbed class counts as its speaker).

    `class_speakers` are the run's training speakers in class order (its speakers.json), also those
    the cache no longer holds: class s + k * len(class_speakers) is speaker s at the k-th speed.
    """
    from conv_models import SPEAKER_OUTPUT

    test_rows = [(p, class_speakers.index(s)) for s, (_, test) in splits.items() for p in test]
    if not test_rows:
        return {}
    predictions = heads.predict(embed([p for p, _ in test_rows]), verbose=0)[SPEAKER_OUTPUT]
    predicted = np.argmax(predictions, axis=1) % len(class_speakers)
    return {"speaker_id_acc_head": float(np.mean(predicted == np.array([c for _, c in test_rows])))}


def run_label_tasks(checkpoint_file: str | os.PathLike) -> list:
    """The label tasks the checkpoint's run declared (config.json beside it), besides gender."""
    from tasks import parse_tasks

    path = Path(checkpoint_file).parent / "config.json"
    return parse_tasks(json.loads(path.read_text()).get("tasks") or {}) if path.is_file() else []


def label_source_files(working_dir, trial_speakers: dict[str, list], training_speakers: list[str], tasks: Sequence) -> dict[str, Path]:
    """One source audio file per speaker to read folder labels from: cached speakers' from corpus.json, the others' own files."""
    from tasks import speaker_source_files

    if not any(isinstance(task.labels, dict) for task in tasks):  # Gender comes from the speaker tables, clip labels from clip tables.
        return {s: Path() for s in [*trial_speakers, *training_speakers]}
    cached = speaker_source_files(working_dir) if working_dir is not None else {}
    files = {s: Path(paths[0]) for s, paths in trial_speakers.items() if paths}
    return {**files, **{s: cached[s] for s in [*trial_speakers, *training_speakers] if s in cached}}


def label_task_accuracies(task, heads, embed: EmbeddingsOnce, splits, trial_speakers: dict[str, list], files: dict[str, Path],
                          genders: dict[str, str], run: dict | None) -> tuple[dict, dict[str, int], dict[str, list]]:
    """Probe and head balanced accuracies of one label task on the unseen speakers that carry its label; how many
    of those speakers carry each label; and each speaker's label and predictions.

    Per speaker (`<task>_acc_probe_per_speaker`, `<task>_acc_head_per_speaker`): the mean
    probability of a speaker's files decides its label, and each speaker counts once, so FSDD's
    six speakers of 50 digits each weigh as six speakers, not as most of the files. Per file
    (`<task>_acc_probe`, `<task>_acc_head`), as figures before these were reported. The probe is
    trained on the training speakers' training utterances.
    """
    from eval_metrics import balanced_accuracy

    unseen_labels = task.speaker_labels({s: files[s] for s in trial_speakers if s in files}, genders)
    training_labels = task.speaker_labels({s: files[s] for s in splits if s in files}, genders)
    speakers = [s for s, paths in trial_speakers.items() if s in unseen_labels and paths]
    if not speakers:
        return {}, {}, {}
    rows = [(p, i) for i, s in enumerate(speakers) for p in trial_speakers[s]]
    owners = np.array([i for _, i in rows])
    speaker_labels = np.array([unseen_labels[s] for s in speakers])
    file_labels = speaker_labels[owners]
    counts = {c: sum(v == c for v in unseen_labels.values()) for c in task.classes if c in unseen_labels.values()}
    figures, predictions = {}, {"speakers": speakers, "labels": speaker_labels.tolist()}
    scored = []  # (kind, class probabilities of each file, their classes)
    train_rows = [(p, training_labels[s]) for s, (train, _) in splits.items() if s in training_labels for p in train]
    if len({label for _, label in train_rows}) >= 2:
        probe = fit_probe(embed([p for p, _ in train_rows]), [label for _, label in train_rows])
        scored.append(("probe", probe.predict_proba(embed([p for p, _ in rows])), probe.classes_))
    if heads is not None and task.output in heads.output:
        classes = ((run or {}).get("tasks") or {}).get(task.name, {}).get("classes") or list(task.classes)
        outputs = heads.predict(embed([p for p, _ in rows]), verbose=0)[task.output]
        scored.append(("head", np.concatenate([1 - outputs, outputs], axis=1) if outputs.shape[1] == 1 else outputs, np.array(classes)))
    for kind, probabilities, classes in scored:
        figures[f"{task.name}_acc_{kind}"] = balanced_accuracy(classes[np.argmax(probabilities, axis=1)], file_labels)
        by_speaker = per_speaker_labels(probabilities, classes, owners, len(speakers))
        figures[f"{task.name}_acc_{kind}_per_speaker"] = balanced_accuracy(by_speaker, speaker_labels)
        predictions[kind] = by_speaker.tolist()
    return figures, counts, predictions


def clip_task_accuracies(task, heads, embed: EmbeddingsOnce, splits, trial_speakers: dict[str, list], sources: dict[str, Path],
                         run: dict | None) -> tuple[dict, dict[str, list]]:
    """Probe and head balanced accuracies of a per-clip task (emotion) over the labelled clips of the unseen speakers,
    and each such clip's speaker, label and predictions.

    Balanced over the task's classes (the mean of their recalls: 1/7 is chance for seven emotions,
    whatever their mix). The probe (`<task>_acc_probe`, logistic regression on the frozen embedding)
    is trained on the labelled training utterances of the training speakers; the head
    (`<task>_acc_head`) is the Hive-MTL checkpoint's own. A cache entry's label is its audio file's
    (`sources`: entry name -> audio file), an audio file's its own.
    """
    from eval_metrics import balanced_accuracy

    def audio_file(path) -> Path:
        path = Path(path)
        return sources.get(path.name, path) if path.suffix == ".npy" else path

    unseen = task.clip_labels({str(p): audio_file(p) for paths in trial_speakers.values() for p in paths})
    rows = [(p, s, unseen[str(p)]) for s, paths in trial_speakers.items() for p in paths if str(p) in unseen]
    if not rows:
        return {}, {}
    training = task.clip_labels({str(p): audio_file(p) for train, _ in splits.values() for p in train})
    labels = np.array([label for _, _, label in rows])
    predictions = {"clips": [str(p) for p, _, _ in rows], "speakers": [s for _, s, _ in rows], "labels": labels.tolist()}
    figures = {}
    if len(set(training.values())) >= 2:
        probe = fit_probe(embed(list(training)), list(training.values()))
        predicted = probe.predict(embed([p for p, _, _ in rows]))
        figures[f"{task.name}_acc_probe"], predictions["probe"] = balanced_accuracy(predicted, labels), predicted.tolist()
    if heads is not None and task.output in heads.output:
        classes = np.array(((run or {}).get("tasks") or {}).get(task.name, {}).get("classes") or list(task.classes))
        outputs = heads.predict(embed([p for p, _, _ in rows]), verbose=0)[task.output]
        predicted = classes[(outputs[:, 0] > 0.5).astype(int)] if outputs.shape[1] == 1 else classes[np.argmax(outputs, axis=1)]
        figures[f"{task.name}_acc_head"], predictions["head"] = balanced_accuracy(predicted, labels), predicted.tolist()
    return figures, predictions
