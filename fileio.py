"""Atomic, synced writes: the one door every output file of this project goes through.

A file is written to a temporary file in the same folder, flushed to disk, renamed over its
target and the folder flushed: neither a crash nor a power cut leaves half a file, or an old
file after the call returned. Caches, checkpoints, run state, results and model cards all rely
on it, so an interrupted run resumes from files that are whole.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


def fsync_directory(directory: str | os.PathLike) -> None:
    """Flush a folder's entries: a rename lives in the folder, so without this a power cut can undo it."""
    if os.name == "nt":  # Windows cannot open a folder as a file; NTFS journals renames itself.
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: str | os.PathLike, write: Callable[[IO], object], text: bool = False) -> None:
    """Write through `write(handle)` into a temporary file beside `path`, then flush, rename and flush the folder."""
    path = Path(path)
    with tempfile.NamedTemporaryFile("w" if text else "wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as handle:
        temporary = Path(handle.name)
        try:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    os.chmod(temporary, 0o644)  # NamedTemporaryFile makes owner-only files; these are ordinary outputs.
    os.replace(temporary, path)
    fsync_directory(path.parent)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    write_atomically(path, lambda handle: handle.write(text), text=True)


def write_json_atomically(path: str | os.PathLike, payload: object) -> None:
    write_atomically(path, lambda handle: json.dump(payload, handle, indent=2, sort_keys=True), text=True)


def save_npy_atomically(path: str | os.PathLike, array: np.ndarray) -> None:
    write_atomically(path, lambda handle: np.save(handle, array))


def save_npz_atomically(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    write_atomically(path, lambda handle: np.savez(handle, **arrays))


def save_model_atomically(model: Any, path: str | os.PathLike) -> None:
    """A Keras model (legacy HDF5, which loads by layer name like the reference's files) or its
    weights (`*.weights.h5`), saved through a temporary file beside `path` like every other write."""
    path = Path(path)
    suffix = ".weights.h5" if path.name.endswith(".weights.h5") else path.suffix
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=suffix)
    os.close(handle)
    os.unlink(temporary)  # HDF5 writers want to create the file themselves.
    try:
        if suffix == ".weights.h5":
            model.save_weights(temporary)
        else:
            with quiet_logger("absl"):  # Keras warns that HDF5 is legacy; here it is chosen on purpose.
                model.save(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
        fsync_directory(path.parent)
    finally:
        Path(temporary).unlink(missing_ok=True)


def replace_directory(new: Path, target: Path) -> None:
    """Put folder `new` in the place of folder `target` (absent or not), then flush the parent folder.

    On Linux the two are exchanged in one step (renameat2 with RENAME_EXCHANGE), so `target` always
    names a complete folder and `new` then holds the old one. Elsewhere `target` is moved to `new`'s
    name plus `.previous` first: a crash between the two renames leaves both hidden beside it.
    """
    if not target.exists():
        os.rename(new, target)
    elif not exchange_paths(new, target):
        previous = new.with_name(new.name + ".previous")
        os.rename(target, previous)
        os.rename(new, target)
        os.rename(previous, new)
    fsync_directory(target.parent)


def exchange_paths(first: Path, second: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2(RENAME_EXCHANGE); False where the system has no such call."""
    try:
        renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except (OSError, TypeError):  # No C library to open by None (Windows).
        return False
    if renameat2 is None:
        return False
    at_current_directory, rename_exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE (linux/fcntl.h, linux/fs.h)
    if renameat2(at_current_directory, os.fsencode(first), at_current_directory, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # A file system or kernel without the exchange.
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Silence one library logger for the duration of a block."""
    library_logger = logging.getLogger(name)
    level = library_logger.level
    library_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        library_logger.setLevel(level)
