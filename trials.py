"""Verification trial lists: generate them from held-out speakers, store them as text, score them.

A trial is a pair of recordings and whether they share a speaker. Lists are built only from the
speakers they are given, so they are speaker-disjoint from training whenever the caller passes
held-out speakers. The text format is VoxCeleb's (`label path1 path2`, 1 = same speaker), so lists
made here and the official VoxCeleb lists are read by the same code.

Pairs are numbered (same-speaker pairs speaker by speaker, different-speaker pairs utterance by
utterance), and sampling draws pair numbers without replacement, so a few thousand trials from
LibriSpeech's ~3e10 possible pairs cost no more than from a tiny corpus, and no pair repeats.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from corpus import Corpus, Utterance, natural_key
from fileio import write_text_atomically
from inference import l2_normalize

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Trial:
    """One verification trial: `label` 1 when both files are of the same speaker, 0 otherwise."""

    label: int
    path1: Path
    path2: Path


# ----------------------------------------------------------------------------------------------
# Generation.


@dataclass(frozen=True)
class _Pool:
    """Utterance paths grouped contiguously by speaker: speaker k owns paths[starts[k]:ends[k]].

    Paths stay strings until a trial uses them: building a `Path` costs ~10 us, a lot for 250k files.
    """

    speakers: list[str]
    paths: list[str]
    starts: np.ndarray
    ends: np.ndarray


def _pool(source: Corpus | Mapping[str, Iterable[PathLike | Utterance]]) -> _Pool:
    """Group the paths by speaker (speakers in natural order), dropping repeats and empty speakers."""
    grouped = source.utterances_by_speaker() if isinstance(source, Corpus) else source
    owner: dict[str, str] = {}
    speakers, paths, sizes = [], [], []
    for speaker in sorted(grouped, key=lambda s: natural_key(str(s))):
        items = grouped[speaker]
        if isinstance(items, (str, os.PathLike)):
            raise ValueError(f"speaker {speaker!r}: expected a list of utterance paths, got the single path {os.fspath(items)!r}")
        mine = []
        for item in items:
            path = os.fspath(item.path if isinstance(item, Utterance) else item)
            if path in owner:
                if owner[path] != speaker:
                    raise ValueError(f"{path} is listed under two speakers, {owner[path]!r} and {speaker!r}")
                continue
            owner[path] = speaker
            mine.append(path)
        if mine:
            speakers.append(str(speaker))
            paths += mine
            sizes.append(len(mine))
    ends = np.cumsum(sizes, dtype=np.int64)
    return _Pool(speakers, paths, ends - np.asarray(sizes, dtype=np.int64), ends)


def _check_possible(pool: _Pool) -> None:
    """Both kinds of trials need: two speakers, and one speaker with two recordings."""
    if len(pool.speakers) < 2:
        found = f"only {pool.speakers[0]!r}" if pool.speakers else "none"
        raise ValueError(f"different-speaker trials need utterances of at least 2 speakers, found {found}")
    if np.max(pool.ends - pool.starts) < 2:
        raise ValueError(
            f"same-speaker trials need a speaker with at least 2 utterances, but each of the {len(pool.speakers)} speakers has 1"
        )


def _target_pairs(pool: _Pool, numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode same-speaker pair numbers into (first, second) path indices, first < second.

    Speaker k owns numbers [offset_k, offset_k + n_k (n_k - 1) / 2); inside it, number r is the
    pair (i, j) with j the largest integer such that j (j - 1) / 2 <= r, and i = r - j (j - 1) / 2.
    """
    sizes = pool.ends - pool.starts
    counts = sizes * (sizes - 1) // 2
    offsets = np.cumsum(counts) - counts
    speaker = np.searchsorted(np.cumsum(counts), numbers, side="right")
    local = numbers - offsets[speaker]
    j = np.floor((1 + np.sqrt(1 + 8 * local.astype(np.float64))) / 2).astype(np.int64)
    j -= j * (j - 1) // 2 > local  # Correct a float rounding up...
    j += (j + 1) * j // 2 <= local  # ...or down.
    i = local - j * (j - 1) // 2
    return pool.starts[speaker] + i, pool.starts[speaker] + j


def _nontarget_pairs(pool: _Pool, numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode different-speaker pair numbers into (first, second) path indices, first < second.

    Path g pairs with every path of the later speakers, `len(paths) - end(speaker of g)` of them,
    in order; numbers run through g = 0, 1, ... in turn.
    """
    later = _later_paths(pool)
    offsets = np.cumsum(later) - later
    first = np.searchsorted(np.cumsum(later), numbers, side="right")
    owner_end = np.repeat(pool.ends, pool.ends - pool.starts)
    return first, owner_end[first] + (numbers - offsets[first])


def _later_paths(pool: _Pool) -> np.ndarray:
    """For each path, how many paths belong to speakers after its own."""
    return np.repeat(len(pool.paths) - pool.ends, pool.ends - pool.starts)


def _pair_counts(pool: _Pool) -> tuple[int, int]:
    sizes = pool.ends - pool.starts
    return int(np.sum(sizes * (sizes - 1) // 2)), int(np.sum(_later_paths(pool)))


def count_pairs(source: Corpus | Mapping[str, Iterable[PathLike | Utterance]]) -> tuple[int, int]:
    """(same-speaker pairs, different-speaker pairs) that `generate_trials(source, None)` lists."""
    return _pair_counts(_pool(source))


def generate_trials(
    source: Corpus | Mapping[str, Iterable[PathLike | Utterance]], num_trials: int | None = None, seed: int = 0
) -> list[Trial]:
    """Trials among the speakers of `source` (a Corpus, or speaker -> paths or Utterances).

    `num_trials=None`: every same-speaker pair and every different-speaker pair (quadratic in the
    number of files: for small held-out sets; see `count_pairs`). Otherwise that many,
    `num_trials // 2` same-speaker and the rest different-speaker, drawn uniformly without
    replacement with `seed`. Never a file against itself, never a pair twice. Trials come ordered by
    their first file, then their second (files in speaker order), like the VoxCeleb lists.
    """
    pool = _pool(source)
    _check_possible(pool)
    num_target, num_nontarget = _pair_counts(pool)
    if num_trials is None:
        target_numbers, nontarget_numbers = np.arange(num_target), np.arange(num_nontarget)
    else:
        if isinstance(num_trials, bool) or not isinstance(num_trials, (int, np.integer)) or num_trials < 2:
            raise ValueError(
                f"num_trials must be an integer of at least 2 (one trial of each kind), or None for all pairs; got {num_trials!r}"
            )
        wanted_target, wanted_nontarget = num_trials // 2, num_trials - num_trials // 2
        for kind, wanted, available in (
            ("same-speaker", wanted_target, num_target),
            ("different-speaker", wanted_nontarget, num_nontarget),
        ):
            if wanted > available:
                raise ValueError(
                    f"{num_trials} trials need {wanted} {kind} pairs, but the {len(pool.speakers)} speakers "
                    f"({len(pool.paths)} utterances) only give {available}"
                )
        rng = np.random.default_rng(seed)
        target_numbers = rng.choice(num_target, wanted_target, replace=False)
        nontarget_numbers = rng.choice(num_nontarget, wanted_nontarget, replace=False)
    target_first, target_second = _target_pairs(pool, np.asarray(target_numbers, dtype=np.int64))
    other_first, other_second = _nontarget_pairs(pool, np.asarray(nontarget_numbers, dtype=np.int64))
    first = np.concatenate([target_first, other_first])
    second = np.concatenate([target_second, other_second])
    labels = np.concatenate([np.ones(len(target_first), dtype=int), np.zeros(len(other_first), dtype=int)])
    order = np.lexsort((second, first))
    used = {int(index): Path(pool.paths[index]) for index in np.unique(np.concatenate([first, second]))}
    return [Trial(int(labels[k]), used[int(first[k])], used[int(second[k])]) for k in order]


# ----------------------------------------------------------------------------------------------
# The VoxCeleb text format.


def _written_path(path: Path, base_dir: Path | None, list_path: Path) -> str:
    text = Path(os.path.relpath(path, base_dir)).as_posix() if base_dir is not None else Path(path).as_posix()
    if not text or any(character.isspace() for character in text):
        raise ValueError(f"{list_path}: cannot write {str(path)!r}: the trial list format separates fields by whitespace")
    return text


def write_trials(path: PathLike, trials: Sequence[Trial], base_dir: PathLike | None = None) -> Path:
    """Write `label path1 path2` lines; with `base_dir`, paths relative to it so the list is portable.

    Pass `base_dir=<the list's folder>` (or the audio root, and the same at reading) to move lists
    and audio together.
    """
    path = Path(path)
    base = Path(base_dir) if base_dir is not None else None
    lines = []
    for trial in trials:
        if trial.label not in (0, 1):
            raise ValueError(f"{path}: trial label must be 0 or 1, got {trial.label!r} for {trial.path1} {trial.path2}")
        lines.append(f"{int(trial.label)} {_written_path(trial.path1, base, path)} {_written_path(trial.path2, base, path)}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, "".join(lines))
    return path


def read_trials(path: PathLike, base_dir: PathLike | None = None) -> list[Trial]:
    """Read a VoxCeleb-style list. Relative paths are resolved against `base_dir`, else the list's folder.

    Paths are joined and normalised ('..' removed) but symlinks are not resolved, so they match the
    paths an index of the same folder gives. Blank lines are skipped; anything else that is not
    `0|1 path path` raises a ValueError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such trial list")
    base = Path(base_dir) if base_dir is not None else path.parent
    trials = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3:
            raise ValueError(f"{path}, line {number}: expected 'label path1 path2', got {len(fields)} fields: {line.strip()!r}")
        if fields[0] not in ("0", "1"):
            raise ValueError(f"{path}, line {number}: the label must be 1 (same speaker) or 0 (different), got {fields[0]!r}")
        first, second = (Path(os.path.normpath(base / name)) for name in fields[1:])
        trials.append(Trial(int(fields[0]), first, second))
    if not trials:
        raise ValueError(f"{path}: the trial list holds no trials")
    return trials


# ----------------------------------------------------------------------------------------------
# Published lists: VoxCeleb's and CN-Celeb's, read as their corpora ship them.

CNCELEB_ENROLL_LIST = "enroll.lst"  # Beside CN-Celeb's trials.lst: `enroll_id path`, paths relative to eval/.
VOXCELEB_AUDIO_FOLDER = "wav"  # VoxCeleb1's test archive unpacks to wav/<id>/<video>/<utt>.wav.


def _first_fields(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as handle:
        return next((line.split() for line in handle if line.strip()), [])


def _read_cnceleb_trials(path: Path, root: Path | None) -> list[Trial]:
    """CN-Celeb's `enroll_id test_path label` lines: the enrolment side is the file enroll.lst names for the id."""
    enroll_list = path.parent / CNCELEB_ENROLL_LIST
    if not enroll_list.is_file():
        raise FileNotFoundError(f"{path}: a CN-Celeb trial list (enroll_id test_path label) needs {CNCELEB_ENROLL_LIST} beside it; {enroll_list} is missing")
    base = root if root is not None else path.parent.parent  # eval/lists/trials.lst: paths are relative to eval/.
    enrolment = {}
    for number, line in enumerate(enroll_list.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if fields and len(fields) != 2:
            raise ValueError(f"{enroll_list}, line {number}: expected 'enroll_id path', got {len(fields)} fields: {line.strip()!r}")
        if fields:
            enrolment[fields[0]] = Path(os.path.normpath(base / fields[1]))
    trials = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[2] not in ("0", "1"):
            raise ValueError(f"{path}, line {number}: expected 'enroll_id test_path 0|1' (CN-Celeb), got {line.strip()!r}")
        if fields[0] not in enrolment:
            raise ValueError(f"{path}, line {number}: enrolment {fields[0]!r} is not in {enroll_list}")
        trials.append(Trial(int(fields[2]), enrolment[fields[0]], Path(os.path.normpath(base / fields[1]))))
    return trials


def _voxceleb_root(path: Path, root: Path | None) -> Path:
    """The given root, else the list's folder or its wav/ subfolder: whichever holds the first trial's first file, else wav/ if there is one."""
    if root is not None:
        return root
    first = _first_fields(path)[1:2]
    audio_folder = path.parent / VOXCELEB_AUDIO_FOLDER
    for candidate in (path.parent, audio_folder):
        if first and (candidate / first[0]).is_file():
            return candidate
    return audio_folder if audio_folder.is_dir() else path.parent


def check_trial_files(path: PathLike, trials: Sequence[Trial]) -> None:
    """Raise FileNotFoundError naming the first missing audio file of a list (and how many are missing), before any embedding work."""
    missing: dict[Path, int] = {}
    checked: dict[Path, bool] = {}
    for number, trial in enumerate(trials, start=1):
        for side in (trial.path1, trial.path2):
            if side not in checked:
                checked[side] = side.is_file()
            if not checked[side]:
                missing.setdefault(side, number)
    if missing:
        first, number = next(iter(missing.items()))
        raise FileNotFoundError(f"{path}: {first} is missing (trial {number}; {len(missing)} of the list's {len(checked)} files are missing). "
                                "Give the folder the list's paths are relative to with --trials_root")


def read_published_trials(path: PathLike, root: PathLike | None = None) -> list[Trial]:
    """A published trial list, every file checked to exist: VoxCeleb's `label path1 path2` or CN-Celeb's `enroll_id test_path label`.

    Paths are relative to `root`; without it, VoxCeleb paths to the list's folder or its `wav/`
    (where the first file is found), and CN-Celeb's to `eval/`, the folder above `eval/lists/`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such trial list")
    root = Path(root) if root is not None else None
    fields = _first_fields(path)
    if len(fields) == 3 and fields[0] not in ("0", "1") and fields[2] in ("0", "1"):
        trials = _read_cnceleb_trials(path, root)
    else:
        trials = read_trials(path, _voxceleb_root(path, root))
    check_trial_files(path, trials)
    return trials


def read_trial_lists(paths: Sequence[PathLike], root: PathLike | None = None) -> dict[str, tuple[Path, list[Trial]]]:
    """Name -> (list file, its trials) of each published list, all read and checked before any is scored.

    A list is named by its file name (`veri_test2.txt`), or by its path where two share a name.
    """
    names = [Path(p).name for p in paths]
    return {(Path(p).name if names.count(Path(p).name) == 1 else str(p)): (Path(p), read_published_trials(p, root)) for p in paths}


# ----------------------------------------------------------------------------------------------
# Scoring.


def trial_rows(trials: Sequence[Trial], embeddings: Mapping[PathLike, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(one L2-normalised float64 row per file of the trials, each trial's first-side row, its second-side row).

    Each embedding is normalised once, as Keras 2 `l2_normalize` (x / sqrt(max(|x|^2, eps))), so an
    utterance in many trials costs one row (and one set of cohort statistics in `score_norm`).
    """
    if not trials:
        raise ValueError("no trials to score")
    lookup = {Path(key): value for key, value in embeddings.items()}
    rows: dict[Path, int] = {}
    for trial in trials:
        for side in (trial.path1, trial.path2):
            if side not in rows:
                if side not in lookup:
                    raise ValueError(f"no embedding for {side} (in the trial {trial.label} {trial.path1} {trial.path2})")
                rows[side] = len(rows)
    vectors = [np.asarray(lookup[side], dtype=np.float64).ravel() for side in rows]
    sizes = {len(vector) for vector in vectors}
    if len(sizes) != 1:
        raise ValueError(f"embeddings must all have the same size, got sizes {sorted(sizes)}")
    first = np.fromiter((rows[t.path1] for t in trials), dtype=np.int64, count=len(trials))
    second = np.fromiter((rows[t.path2] for t in trials), dtype=np.int64, count=len(trials))
    return l2_normalize(np.stack(vectors), dtype=np.float64), first, second


def trial_labels(trials: Sequence[Trial]) -> np.ndarray:
    return np.fromiter((t.label for t in trials), dtype=np.int8, count=len(trials))


def score_trials(trials: Sequence[Trial], embeddings: Mapping[PathLike, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(cosine scores, labels) of the trials: dot products of L2-normalised embeddings, vectorised (`trial_rows`)."""
    matrix, first, second = trial_rows(trials, embeddings)
    return np.einsum("ij,ij->i", matrix[first], matrix[second]), trial_labels(trials)
