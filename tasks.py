"""Hive-MTL label tasks: heads a configuration declares, each trained from whatever data carries its labels.

Speaker identity is always a Hive-MTL task (its head follows `--head`). Every other task is a label
per speaker, declared by its name, its label source, its loss and its weight:

    gender     built in: labels from the corpora's speaker tables (SPEAKERS.TXT, speakers.tsv,
               --genders), weight `--gender_loss_weight`;
    <name>     declared in `TrainConfig.tasks` (a recipe's "tasks"), e.g.
               {"language": {"labels": {"train-clean-100": "en", "CommonVoice-fa": "fa"},
                             "loss": "binary", "weight": 1.0}}
               where `labels` maps a corpus folder name to the label of every speaker whose audio
               lies under a folder of that name.

`loss` is `binary` (one sigmoid unit, exactly two labels) or `categorical` (a softmax over the
labels). Rows whose speaker has no label are masked out of that task's loss and accuracy, so a
task trains from the part of the data that carries its labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TASK_LOSSES = ("binary", "categorical")
TASK_KEYS = ("labels", "loss", "weight")
GENDER_TASK = "gender"
GENDER_CLASSES = ("M", "F")  # Binary label 1.0 is female, as the gender head always had it.
RESERVED_NAMES = ("speaker", "ln")


@dataclass(frozen=True)
class LabelTask:
    """One declared task: `labels` is "gender" (speaker tables) or {corpus folder name: label}."""

    name: str
    labels: str | dict[str, str]
    loss: str = "binary"
    weight: float = 1.0

    @property
    def output(self) -> str:
        """The head's layer and output name."""
        return f"{self.name}_pred"

    @property
    def classes(self) -> tuple[str, ...]:
        """The labels in class order (binary: the second one is 1.0)."""
        return GENDER_CLASSES if self.labels == GENDER_TASK else tuple(sorted(set(self.labels.values())))

    @property
    def units(self) -> int:
        return 1 if self.loss == "binary" else len(self.classes)

    def speaker_labels(self, speaker_files: dict[str, str | os.PathLike], genders: dict[str, str]) -> dict[str, str]:
        """The label of each speaker that has one: from `genders`, or from the folders of one of its files."""
        if self.labels == GENDER_TASK:
            return {s: genders[s] for s in speaker_files if genders.get(s) in GENDER_CLASSES}
        labelled = {}
        for speaker, path in speaker_files.items():
            folders = Path(path).parts[:-1]
            label = next((self.labels[f] for f in reversed(folders) if f in self.labels), None)
            if label is not None:
                labelled[speaker] = label
        return labelled

    def values(self, speakers: list[str], labels: dict[str, str]) -> np.ndarray:
        """Per speaker (in `speakers` order) its class as a float (binary: 0.0 or 1.0), NaN where unknown."""
        index = {label: float(i) for i, label in enumerate(self.classes)}
        return np.array([index.get(labels.get(s), np.nan) for s in speakers], dtype=np.float32)


def gender_task(weight: float) -> LabelTask:
    return LabelTask(GENDER_TASK, GENDER_TASK, "binary", weight)


def parse_tasks(declared: dict[str, dict]) -> list[LabelTask]:
    """The tasks of a `tasks` object, checked; errors name the task and the key."""
    if not isinstance(declared, dict):
        raise ValueError(f"tasks must map task names to {{labels, loss, weight}}; got {declared!r}")
    tasks = []
    for name, spec in declared.items():
        if not name.isidentifier() or name in RESERVED_NAMES:
            raise ValueError(f"task name {name!r}: use a Python identifier other than {', '.join(RESERVED_NAMES)}")
        if name == GENDER_TASK:
            raise ValueError("task 'gender' is built in (labels from the speaker tables); set its weight with gender_loss_weight")
        if not isinstance(spec, dict):
            raise ValueError(f"task {name!r} must be an object with {', '.join(TASK_KEYS)}; got {spec!r}")
        unknown = sorted(set(spec) - set(TASK_KEYS))
        if unknown:
            raise ValueError(f"task {name!r}: unknown key {unknown[0]!r} (known: {', '.join(TASK_KEYS)})")
        labels = spec.get("labels")
        if not isinstance(labels, dict) or not labels or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise ValueError(f"task {name!r}: 'labels' must map corpus folder names to labels, e.g. {{\"CommonVoice-fa\": \"fa\"}}")
        task = LabelTask(name, dict(labels), spec.get("loss", "binary"), spec.get("weight", 1.0))
        if task.loss not in TASK_LOSSES:
            raise ValueError(f"task {name!r}: 'loss' must be one of {', '.join(TASK_LOSSES)}; got {task.loss!r}")
        if isinstance(task.weight, bool) or not isinstance(task.weight, (int, float)) or task.weight < 0:
            raise ValueError(f"task {name!r}: 'weight' must be a number >= 0; got {task.weight!r}")
        if len(task.classes) < 2 or (task.loss == "binary" and len(task.classes) != 2):
            raise ValueError(f"task {name!r}: a {task.loss} task needs {'exactly' if task.loss == 'binary' else 'at least'} 2 labels; got {list(task.classes)}")
        tasks.append(task)
    return tasks


def speaker_source_files(working_dir: str | os.PathLike) -> dict[str, Path]:
    """One source audio file per cached speaker (from corpus.json), to read folder-declared labels from."""
    from audio import CorpusError, read_corpus_index

    index = read_corpus_index(working_dir)
    sources = index.get("sources", {})
    files = {}
    for speaker, utterances in index["speakers"].items():
        source = next((sources[f"{speaker}_{u}.npy"] for u in utterances if f"{speaker}_{u}.npy" in sources), None)
        if source is None:
            raise CorpusError(f"{working_dir}: corpus.json records no source file for speaker {speaker} (a cache built by older code); "
                              "rebuild the cache in a new --working_dir to train or score a task with folder labels")
        files[speaker] = Path(source)
    return files

