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
# Scoring.


def score_trials(trials: Sequence[Trial], embeddings: Mapping[PathLike, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(cosine scores, labels) of the trials: dot products of L2-normalised embeddings, vectorised.

    Each embedding is normalised once, as Keras 2 `l2_normalize` (x / sqrt(max(|x|^2, eps))), and
    gathered by index, so an utterance in many trials costs one row.
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
    matrix = l2_normalize(np.stack(vectors), dtype=np.float64)
    first = np.fromiter((rows[t.path1] for t in trials), dtype=np.int64, count=len(trials))
    second = np.fromiter((rows[t.path2] for t in trials), dtype=np.int64, count=len(trials))
    labels = np.fromiter((t.label for t in trials), dtype=np.int8, count=len(trials))
    return np.einsum("ij,ij->i", matrix[first], matrix[second]), labels
