"""Hive-MTL label tasks: heads a configuration declares, each trained from whatever data carries its labels.

Speaker identity is always a Hive-MTL task (its head follows `--head`). Every other task is a label
per speaker or per clip, declared by its name, its label source, its loss and its weight:

    gender     built in: labels from the corpora's speaker tables (SPEAKERS.TXT, speakers.tsv,
               --genders), weight `--gender_loss_weight`;
    <name>     declared in `TrainConfig.tasks` (a recipe's "tasks"), with one of two label sources:
               per speaker, `labels` maps a corpus folder name to the label of every speaker whose
               audio lies under a folder of that name, e.g.
               {"language": {"labels": {"train-clean-100": "en", "CommonVoice-fa": "fa"},
                             "loss": "binary", "weight": 1.0}};
               per clip, `clips` names a clips table (tab- or comma-separated, a header row with a
               `path` column: each clip's audio file, relative to the table's folder) and `column`
               the column holding each clip's label, e.g.
               {"emotion": {"clips": "EmoDB/clips.tsv", "column": "emotion", "loss": "categorical"}}.

`loss` is `binary` (one sigmoid unit, exactly two labels) or `categorical` (a softmax over the
labels). Rows (speakers, clips) without a label are masked out of that task's loss and accuracy, so
a task trains from the part of the data that carries its labels. `"adversarial": true` puts the
task's head behind a gradient-reversal layer (`conv_models.GradientReversal`, scale
`reversal_lambda`, default 1), so the embedding is trained to remove what the head predicts.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

TASK_LOSSES = ("binary", "categorical")
TASK_KEYS = ("labels", "clips", "column", "loss", "weight", "adversarial", "reversal_lambda")
CLIP_PATH_COLUMN = "path"  # The column of a clips table that names each clip's audio file.
GENDER_TASK = "gender"
GENDER_CLASSES = ("M", "F")  # Binary label 1.0 is female, as the gender head always had it.
RESERVED_NAMES = ("speaker", "ln")


@dataclass(frozen=True)
class LabelTask:
    """One declared task: `labels` is "gender" (speaker tables) or {corpus folder name: label}; a per-clip
    task has `labels` None and reads `column` of the clips table `clips` instead."""

    name: str
    labels: str | dict[str, str] | None
    loss: str = "binary"
    weight: float = 1.0
    clips: str | None = None
    column: str | None = None
    adversarial: bool = False
    reversal_lambda: float = 1.0

    @property
    def output(self) -> str:
        """The head's layer and output name."""
        return f"{self.name}_pred"

    @property
    def per_clip(self) -> bool:
        """Whether each clip has its own label (a clips table), not each speaker."""
        return self.clips is not None

    @property
    def classes(self) -> tuple[str, ...]:
        """The labels in class order (binary: the second one is 1.0)."""
        if self.labels == GENDER_TASK:
            return GENDER_CLASSES
        labels = read_clip_table(self.clips, self.column).values() if self.per_clip else self.labels.values()
        return tuple(sorted(set(labels)))

    @property
    def units(self) -> int:
        return 1 if self.loss == "binary" else len(self.classes)

    def speaker_labels(self, speaker_files: dict[str, str | os.PathLike], genders: dict[str, str]) -> dict[str, str]:
        """The label of each speaker that has one: from `genders`, or from the folders of one of its files."""
        assert not self.per_clip, f"task {self.name} labels clips, not speakers"
        if self.labels == GENDER_TASK:
            return {s: genders[s] for s in speaker_files if genders.get(s) in GENDER_CLASSES}
        labelled = {}
        for speaker, path in speaker_files.items():
            folders = Path(path).parts[:-1]
            label = next((self.labels[f] for f in reversed(folders) if f in self.labels), None)
            if label is not None:
                labelled[speaker] = label
        return labelled

    def clip_labels(self, audio_files: dict[str, str | os.PathLike]) -> dict[str, str]:
        """The label of each clip that has one: `audio_files` maps a key (a cache entry name, a path) to the clip's audio file."""
        assert self.per_clip, f"task {self.name} labels speakers, not clips"
        table = read_clip_table(self.clips, self.column)
        return {key: table[resolved] for key, path in audio_files.items() if (resolved := Path(path).resolve()) in table}

    def values(self, keys: list[str], labels: dict[str, str]) -> np.ndarray:
        """Per key (speaker or clip, in `keys` order) its class as a float (binary: 0.0 or 1.0), NaN where unknown."""
        index = {label: float(i) for i, label in enumerate(self.classes)}
        return np.array([index.get(labels.get(k), np.nan) for k in keys], dtype=np.float32)


def read_clip_table(path: str | os.PathLike, column: str) -> dict[Path, str]:
    """Audio file (resolved) -> label, from `column` of a clips table; clips whose cell is empty have no label.

    The table is tab- or comma-separated with a header row; its `path` column names each clip's
    audio file relative to the table's folder. Raises FileNotFoundError or ValueError naming the
    file (and the line of a short row).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such clips table")
    stat = path.stat()
    return dict(_clip_table(str(path.resolve()), column, stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=8)
def _clip_table(path: str, column: str, mtime_ns: int, size: int) -> tuple[tuple[Path, str], ...]:
    text = Path(path).read_text(encoding="utf-8")
    first = text.split("\n", 1)[0]
    reader = csv.reader(io.StringIO(text), delimiter="\t" if "\t" in first else ",")
    header = [name.strip() for name in next(reader, [])]
    if CLIP_PATH_COLUMN not in header or column not in header:
        raise ValueError(f"{path}: a clips table needs a header with a {CLIP_PATH_COLUMN!r} column and the label column {column!r}; got {header}")
    where, label_at = header.index(CLIP_PATH_COLUMN), header.index(column)
    folder = Path(path).parent
    rows = []
    for line_number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(where, label_at):
            raise ValueError(f"{path}, line {line_number}: {len(row)} fields, fewer than the header's {len(header)}")
        if row[label_at].strip():
            rows.append(((folder / row[where].strip()).resolve(), row[label_at].strip()))
    return tuple(rows)


def gender_task(weight: float) -> LabelTask:
    return LabelTask(GENDER_TASK, GENDER_TASK, "binary", weight)


def parse_tasks(declared: dict[str, dict]) -> list[LabelTask]:
    """The tasks of a `tasks` object, checked (a clips table is read); errors name the task and the key."""
    if not isinstance(declared, dict):
        raise ValueError(f"tasks must map task names to {{labels or clips, loss, weight}}; got {declared!r}")
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
        labels, clips, column = spec.get("labels"), spec.get("clips"), spec.get("column")
        if (labels is None) == (clips is None):
            raise ValueError(f"task {name!r}: give its labels either per speaker ('labels') or per clip ('clips' and 'column'), one of the two")
        if clips is not None:
            if not isinstance(clips, str) or not isinstance(column, str) or not column:
                raise ValueError(f"task {name!r}: 'clips' must name a clips table and 'column' its label column, e.g. "
                                 "{\"clips\": \"EmoDB/clips.tsv\", \"column\": \"emotion\"}")
            try:
                read_clip_table(clips, column)
            except (OSError, ValueError) as error:
                raise ValueError(f"task {name!r}: {error}") from None
        elif not isinstance(labels, dict) or not labels or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise ValueError(f"task {name!r}: 'labels' must map corpus folder names to labels, e.g. {{\"CommonVoice-fa\": \"fa\"}}")
        elif column is not None:
            raise ValueError(f"task {name!r}: 'column' names the label column of a 'clips' table; a task with 'labels' has none")
        adversarial, reversal_lambda = spec.get("adversarial", False), spec.get("reversal_lambda", 1.0)
        if not isinstance(adversarial, bool):
            raise ValueError(f"task {name!r}: 'adversarial' must be true or false; got {adversarial!r}")
        if isinstance(reversal_lambda, bool) or not isinstance(reversal_lambda, (int, float)) or not reversal_lambda > 0:
            raise ValueError(f"task {name!r}: 'reversal_lambda' must be a number > 0; got {reversal_lambda!r}")
        if "reversal_lambda" in spec and not adversarial:
            raise ValueError(f"task {name!r}: 'reversal_lambda' scales a gradient reversal: it needs \"adversarial\": true")
        task = LabelTask(name, dict(labels) if clips is None else None, spec.get("loss", "binary"), spec.get("weight", 1.0),
                         clips, column if clips is not None else None, adversarial, float(reversal_lambda))
        if task.loss not in TASK_LOSSES:
            raise ValueError(f"task {name!r}: 'loss' must be one of {', '.join(TASK_LOSSES)}; got {task.loss!r}")
        if isinstance(task.weight, bool) or not isinstance(task.weight, (int, float)) or task.weight < 0:
            raise ValueError(f"task {name!r}: 'weight' must be a number >= 0; got {task.weight!r}")
        if len(task.classes) < 2 or (task.loss == "binary" and len(task.classes) != 2):
            raise ValueError(f"task {name!r}: a {task.loss} task needs {'exactly' if task.loss == 'binary' else 'at least'} 2 labels; got {list(task.classes)}")
        tasks.append(task)
    return tasks


def resolve_clip_tables(declared: dict, base: str | os.PathLike) -> dict:
    """`declared` with each task's relative `clips` table taken relative to `base` (a recipe's or a tasks file's folder), made absolute,
    so the run's config.json names the table wherever the run is scored from. Anything else is left as it is, for `parse_tasks` to check."""
    if not isinstance(declared, dict):
        return declared
    return {name: {**spec, "clips": str((Path(base) / spec["clips"]).resolve())} if isinstance(spec, dict) and isinstance(spec.get("clips"), str) else spec
            for name, spec in declared.items()}


def speaker_source_files(working_dir: str | os.PathLike) -> dict[str, Path]:
    """One source audio file per cached speaker (from corpus.json), to read folder-declared labels from."""
    from corpus import CorpusError
    from feature_cache import read_corpus_index

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



def entry_sources(working_dir: str | os.PathLike) -> dict[str, Path]:
    """Cache entry name -> the audio file it was made from (corpus.json), to read clip labels from."""
    from corpus import CorpusError
    from feature_cache import read_corpus_index

    index = read_corpus_index(working_dir)
    sources = index.get("sources", {})
    listed = [f"{speaker}_{u}.npy" for speaker, utterances in index["speakers"].items() for u in utterances]
    missing = [name for name in listed if name not in sources]
    if missing:
        raise CorpusError(f"{working_dir}: corpus.json records no source file for {len(missing)} entries (e.g. {missing[0]}; a cache built by older "
                          "code); rebuild the cache in a new --working_dir to train or score a task with clip labels")
    return {name: Path(source) for name, source in sources.items()}
