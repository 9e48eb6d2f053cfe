"""Enrolled speakers: one profile per name, for `enroll` and `identify`.

A profiles store is two files side by side, both written atomically (NPZ first, then JSON):

    P.npz   names (k,) str; profiles (k, 512) float32, each the L2-normalised mean of that
            name's enrollment embeddings; counts (k,) files per name; and every enrollment
            embedding, embeddings (N, 512) float32 with owners (N,) (index into names), so
            enrolling a name again recomputes its profile exactly from all its files.
    P.json  the index: per name the files enrolled and the date; the checkpoint the embeddings
            came from (path and SHA-256 of its bytes); when the store was created and updated.

Decision on checkpoints: embeddings of two models live in different spaces, so a score across
them means nothing. A store is tied to the checkpoint that filled it, by content (SHA-256, so
moving or renaming the file is fine): enrolling into it or identifying against it with another
checkpoint raises ProfilesError. Enroll again with the new checkpoint into a new store.

Only NumPy and the standard library: the command line reads a store before Keras starts.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fileio import save_npz_atomically, write_json_atomically
from inference import l2_normalize
from constants import EMBEDDING_SIZE, IDENTIFY_TOP

PROFILES_FORMAT_VERSION = 1
_HASH_CHUNK_BYTES = 1 << 20


class ProfilesError(ValueError):
    """A profiles store that cannot be used: empty, inconsistent, or made with another checkpoint."""


def profiles_files(profiles_path: str | os.PathLike) -> tuple[Path, Path]:
    """(P.npz, P.json) for P, P.npz or P.json."""
    path = Path(profiles_path)
    base = path.with_suffix("") if path.suffix.lower() in (".npz", ".json") else path
    return base.with_name(base.name + ".npz"), base.with_name(base.name + ".json")


def checkpoint_fingerprint(checkpoint_file: str | os.PathLike) -> str:
    """SHA-256 of a checkpoint's bytes: which model made a store, wherever the file now lives."""
    digest = hashlib.sha256()
    with open(checkpoint_file, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")




@dataclass
class Profiles:
    """Every enrollment embedding of every name, and what they were made with."""

    names: list[str]
    embeddings: np.ndarray  # (N, 512) float32: one row per enrolled file.
    owners: np.ndarray  # (N,) int: index into `names` of each row.
    files: list[str]  # (N,) the file of each row.
    checkpoint: str
    checkpoint_sha256: str
    created: str
    enrolled: dict[str, str]  # name -> date of its last enrollment.

    @property
    def counts(self) -> np.ndarray:
        return np.bincount(self.owners, minlength=len(self.names))

    @property
    def profiles(self) -> np.ndarray:
        """(k, 512) float32: per name, the L2-normalised mean of its enrollment embeddings."""
        sums = np.zeros((len(self.names), self.embeddings.shape[1]), dtype=np.float64)
        np.add.at(sums, self.owners, self.embeddings)
        return l2_normalize(sums / np.maximum(self.counts, 1)[:, np.newaxis], dtype=np.float64).astype(np.float32)

    def files_of(self, name: str) -> list[str]:
        index = self.names.index(name)
        return [file for file, owner in zip(self.files, self.owners) if owner == index]

    def check_checkpoint(self, checkpoint_file: str | os.PathLike, store: str | os.PathLike) -> None:
        """Refuse a checkpoint other than the one whose embeddings fill this store."""
        if checkpoint_fingerprint(checkpoint_file) != self.checkpoint_sha256:
            raise ProfilesError(
                f"{store}: enrolled with checkpoint {self.checkpoint} (sha256 {self.checkpoint_sha256[:12]}), not {checkpoint_file}; "
                "scores across two models mean nothing: enroll again with this checkpoint into another profiles file"
            )


def load_profiles(profiles_path: str | os.PathLike, checkpoint: str | os.PathLike | None = None, allow_empty: bool = False) -> Profiles:
    """Read a store; with `checkpoint`, also check that it was made with that checkpoint.

    Raises FileNotFoundError naming the missing file, ProfilesError for an inconsistent store,
    another checkpoint, or (unless `allow_empty`) a store without speakers.
    """
    npz_path, json_path = profiles_files(profiles_path)
    for path in (npz_path, json_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such profiles file (create it with: python cli.py enroll NAME FILES... --profiles {npz_path})")
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            names = [str(n) for n in data["names"]]
            embeddings = np.asarray(data["embeddings"], dtype=np.float32)
            owners = np.asarray(data["owners"], dtype=np.int64)
        index = json.loads(json_path.read_text())
        speakers = index["speakers"]
        checkpoint_path, checkpoint_sha256, created = index["checkpoint"], index["checkpoint_sha256"], index["created"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ProfilesError(f"{npz_path}: not a readable profiles store ({type(error).__name__}: {error})") from None
    if embeddings.ndim != 2 or embeddings.shape[1] != EMBEDDING_SIZE or owners.shape != (len(embeddings),) or (len(owners) and owners.min() < 0):
        raise ProfilesError(f"{npz_path}: not a readable profiles store (embeddings {embeddings.shape}, owners {owners.shape})")
    counts = np.bincount(owners, minlength=len(names))
    if sorted(speakers) != sorted(names) or len(counts) != len(names) or [len(speakers[n]["files"]) for n in names] != list(counts):
        raise ProfilesError(f"{npz_path} and {json_path} disagree (an interrupted enroll?); enroll again into a new profiles file")
    # Rows are stored grouped by owner in name order, so they line up with the JSON file lists.
    order = np.argsort(owners, kind="stable")
    files = [file for name in names for file in speakers[name]["files"]]
    enrolled = {name: speakers[name]["enrolled"] for name in names}
    profiles = Profiles(names, embeddings[order], owners[order], files, checkpoint_path, checkpoint_sha256, created, enrolled)
    if not names and not allow_empty:
        raise ProfilesError(f"{npz_path}: no speakers enrolled")
    if checkpoint is not None:
        profiles.check_checkpoint(checkpoint, npz_path)
    return profiles


def save_profiles(profiles_path: str | os.PathLike, profiles: Profiles) -> tuple[Path, Path]:
    """Write P.npz, then P.json, each atomically; rows grouped by name so the JSON lists line up."""
    npz_path, json_path = profiles_files(profiles_path)
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    order = np.argsort(profiles.owners, kind="stable")
    save_npz_atomically(
        npz_path,
        names=np.array(profiles.names, dtype=str),
        profiles=profiles.profiles,
        counts=profiles.counts,
        embeddings=profiles.embeddings[order].astype(np.float32),
        owners=profiles.owners[order],
    )
    speakers = {name: {"files": profiles.files_of(name), "enrolled": profiles.enrolled[name]} for name in profiles.names}
    write_json_atomically(
        json_path,
        {
            "format": PROFILES_FORMAT_VERSION,
            "checkpoint": profiles.checkpoint,
            "checkpoint_sha256": profiles.checkpoint_sha256,
            "embedding_size": int(profiles.embeddings.shape[1]),
            "created": profiles.created,
            "updated": _now(),
            "speakers": speakers,
        },
    )
    return npz_path, json_path


@dataclass
class Enrollment:
    """What one `enroll` did."""

    name: str
    added: list[str]  # Files whose embeddings joined the profile.
    already_enrolled: list[str]  # Files of this name enrolled before: skipped, not counted twice.
    profile_files: int  # Files in the profile now.
    speakers: int  # Names in the store now.
    npz_path: Path


def enroll(
    profiles_path: str | os.PathLike,
    name: str,
    embeddings: np.ndarray,
    files: list[str | os.PathLike],
    checkpoint: str | os.PathLike,
) -> Enrollment:
    """Add the embeddings of `files` to the profile `name`, creating the store or the name if needed.

    The profile becomes the L2-normalised mean of all of the name's enrollment embeddings; a file
    already enrolled under this name is skipped. Raises ProfilesError when the store was made
    with another checkpoint, ValueError for a bad name or embeddings.
    """
    name = name.strip() if isinstance(name, str) else name
    if not isinstance(name, str) or not name or "\n" in name:
        raise ValueError(f"speaker name must be a non-empty single line; got {name!r}")
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape != (len(files), EMBEDDING_SIZE) or not len(files):
        raise ValueError(f"need one {EMBEDDING_SIZE}-d embedding per file for {len(files)} files; got shape {embeddings.shape}")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError("embeddings hold NaN or infinite values")
    npz_path, json_path = profiles_files(profiles_path)
    if npz_path.is_file() or json_path.is_file():
        profiles = load_profiles(profiles_path, checkpoint, allow_empty=True)
    else:
        profiles = Profiles([], np.zeros((0, EMBEDDING_SIZE), np.float32), np.zeros(0, np.int64), [],
                            str(Path(checkpoint).resolve()), checkpoint_fingerprint(checkpoint), _now(), {})
    if name not in profiles.names:
        profiles.names.append(name)
    owner = profiles.names.index(name)
    known = set(profiles.files_of(name))
    keys = [str(Path(f).resolve()) for f in files]
    new_rows = [i for i, key in enumerate(keys) if key not in known and key not in keys[:i]]
    already = [str(files[i]) for i in range(len(files)) if i not in new_rows]
    if new_rows:
        profiles.embeddings = np.concatenate([profiles.embeddings, embeddings[new_rows]])
        profiles.owners = np.concatenate([profiles.owners, np.full(len(new_rows), owner, np.int64)])
        profiles.files = profiles.files + [keys[i] for i in new_rows]
        profiles.enrolled[name] = _now()
        save_profiles(profiles_path, profiles)
    return Enrollment(name, [str(files[i]) for i in new_rows], already, int(profiles.counts[owner]), len(profiles.names), npz_path)


def identify(
    profiles_path: str | os.PathLike,
    embedding: np.ndarray,
    top: int = IDENTIFY_TOP,
    checkpoint: str | os.PathLike | None = None,
) -> list[tuple[str, float]]:
    """The `top` enrolled names closest to `embedding`, as (name, cosine score), best first.

    With `checkpoint`, refuses a store made with another checkpoint (ProfilesError).
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive integer; got {top!r}")
    profiles = load_profiles(profiles_path, checkpoint)
    return rank(profiles, embedding, top)


def rank(profiles: Profiles, embedding: np.ndarray, top: int = IDENTIFY_TOP) -> list[tuple[str, float]]:
    """Names ranked by cosine score of their profile with `embedding` (ties: enrollment order)."""
    embedding = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if embedding.shape != (profiles.embeddings.shape[1],):
        raise ValueError(f"embedding must have {profiles.embeddings.shape[1]} values; got {embedding.size}")
    scores = profiles.profiles @ l2_normalize(embedding)
    order = np.argsort(-scores, kind="stable")[:top]
    return [(profiles.names[i], float(scores[i])) for i in order]
