"""Noise and room impulse responses for training augmentation, read from folders people have or simulated.

- `NoiseFolder` (`--noise_dir`): MUSAN's layout (`noise/`, `music/`, `speech/`, any depth below
  each), or any folder of audio (all of it `noise`). A noisy window draws a category uniformly,
  then a file, a random stretch of it, and an SNR in the category's range (`MUSAN_SNR_DB`, the
  WeSpeaker and SpeechBrain recipes' ranges); `speech/` gives babble, a sum of 3 to 7 files.
- `RoomImpulseResponses` (`--rir_dir`): RIRS_NOISES' `simulated_rirs/<size>room/<Room>/*.wav`,
  or any folder of audio; without a folder, `SIMULATED_ROOMS` shoebox rooms simulated with
  pyroomacoustics (random size, reverberation time, source and microphone), room k a pure
  function of (seed, k).

RAM stays bounded: folders are indexed (paths only) when a run starts; noise is read as the
stretch a window needs (soundfile seeks); impulse responses are read or simulated when first
drawn, then kept: a folder's in an LRU cache of `RIR_CACHE_FILES`, the simulated rooms all (a
few MB). Every draw takes the batch's generator, so a batch is the same whatever the cache holds
and however many threads read batches.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import oaconvolve

from audio import AudioError, read_audio
from constants import (
    AUDIO_EXTENSIONS,
    FOLDER_NOISE_CATEGORY,
    MUSAN_BABBLE_SPEAKERS,
    MUSAN_SNR_DB,
    RIR_CACHE_FILES,
    SAMPLE_RATE,
    SIMULATED_MAX_ORDER,
    SIMULATED_ROOM_DIMS_M,
    SIMULATED_ROOMS,
    SIMULATED_RT60_S,
    SIMULATED_WALL_MARGIN_M,
)


def audio_files(folder: str | os.PathLike, option: str) -> list[Path]:
    """Every audio file below `folder`, sorted (so a seed draws the same files on every machine); a clear error when there is none."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{option} {root}: no such folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"{option} {root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in it or below it")
    return files


class LruCache:
    """At most `capacity` values by key, the least recently used dropped first; safe across reader threads."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.values: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key, make: Callable[[], np.ndarray]) -> np.ndarray:
        with self.lock:
            if key in self.values:
                self.values.move_to_end(key)
                return self.values[key]
        value = make()  # Outside the lock: other threads keep reading meanwhile.
        with self.lock:
            self.values[key] = value
            while len(self.values) > self.capacity:
                self.values.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self.values)


def read_stretch(path: Path, length: int, rng: np.random.Generator) -> np.ndarray:
    """A random stretch of `length` samples at SAMPLE_RATE (mono), or all of a shorter file; `audio.read_audio`
    decodes only that stretch where libsndfile can seek (WAV, FLAC: MUSAN), the whole file otherwise."""
    try:
        duration = soundfile.info(path).duration
    except (soundfile.LibsndfileError, RuntimeError, TypeError):  # FFmpeg's formats; or not audio, which read_audio says.
        samples = read_audio(path)
        first = int(rng.integers(0, max(0, len(samples) - length) + 1))
        return samples[first : first + length]
    seconds = length / SAMPLE_RATE
    start = float(rng.uniform(0.0, max(0.0, duration - seconds)))
    return read_audio(path, segment=(start, start + seconds))[:length]


class NoiseFolder:
    """The noise files of `--noise_dir` by category, and noisy windows drawn from them."""

    def __init__(self, folder: str | os.PathLike):
        files = audio_files(folder, "--noise_dir")
        root = Path(folder)
        musan = [name for name in MUSAN_SNR_DB if (root / name).is_dir()]
        if musan:
            self.categories = {name: [p for p in files if p.relative_to(root).parts[0] == name] for name in musan}
            self.categories = {name: paths for name, paths in self.categories.items() if paths}
        else:
            self.categories = {FOLDER_NOISE_CATEGORY: files}
        if not self.categories:
            raise ValueError(f"--noise_dir {root}: its noise/, music/ and speech/ folders hold no audio files")
        self.names = sorted(self.categories)

    def draw(self, length: int, rng: np.random.Generator) -> tuple[str, np.ndarray, float]:
        """(category, `length` samples of noise, SNR in dB) for one window; speech is babble of several files."""
        category = self.names[int(rng.integers(0, len(self.names)))]
        paths = self.categories[category]
        count = int(rng.integers(MUSAN_BABBLE_SPEAKERS[0], MUSAN_BABBLE_SPEAKERS[1] + 1)) if category == "speech" else 1
        noise = np.zeros(length, dtype=np.float32)
        for i in rng.integers(0, len(paths), count):
            stretch = read_stretch(paths[i], length, rng)
            noise[: len(stretch)] += stretch
        return category, noise, float(rng.uniform(*MUSAN_SNR_DB[category]))


def simulated_rir(seed: int, room: int) -> np.ndarray:
    """The impulse response of simulated room `room` of a run seeded `seed`: a shoebox of random size and
    reverberation time (wall absorption by Sabine's formula), a random source and microphone inside it."""
    import pyroomacoustics  # Only runs that simulate rooms pay for its import.

    rng = np.random.default_rng([seed, room])
    dims = rng.uniform(*SIMULATED_ROOM_DIMS_M)
    absorption, max_order = pyroomacoustics.inverse_sabine(rng.uniform(*SIMULATED_RT60_S), dims)
    shoebox = pyroomacoustics.ShoeBox(dims, fs=SAMPLE_RATE, materials=pyroomacoustics.Material(absorption),
                                      max_order=min(max_order, SIMULATED_MAX_ORDER))
    margin = SIMULATED_WALL_MARGIN_M
    shoebox.add_source(rng.uniform(margin, dims - margin))
    shoebox.add_microphone(rng.uniform(margin, dims - margin))
    shoebox.compute_rir()
    return np.asarray(shoebox.rir[0][0], dtype=np.float32)


class RoomImpulseResponses:
    """The impulse responses of `--rir_dir`, or `SIMULATED_ROOMS` simulated rooms when `folder` is None."""

    def __init__(self, folder: str | os.PathLike | None, seed: int = 0, cache_files: int = RIR_CACHE_FILES):
        self.files = audio_files(folder, "--rir_dir") if folder is not None else None
        self.seed = seed
        # Simulated rooms are all kept (a few MB): simulating one costs a hundred times its convolution.
        self.cache = LruCache(cache_files if self.files is not None else SIMULATED_ROOMS)

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else SIMULATED_ROOMS

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        index = int(rng.integers(0, len(self)))
        return self.cache.get(index, lambda: self.read(index))

    def read(self, index: int) -> np.ndarray:
        if self.files is None:
            return simulated_rir(self.seed, index)
        rir = read_audio(self.files[index])
        if not np.any(rir):
            raise AudioError(self.files[index], "the impulse response is silent")
        return rir


def reverberate(samples: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """`samples` in the room of `rir`: convolved, aligned on the direct path (the RIR's peak), at the same power."""
    direct = int(np.argmax(np.abs(rir)))
    wet = oaconvolve(samples, rir, mode="full")[direct : direct + len(samples)]
    power, wet_power = float(np.mean(np.square(samples, dtype=np.float64))), float(np.mean(np.square(wet, dtype=np.float64)))
    if wet_power == 0:
        return samples
    return (wet * np.sqrt(power / wet_power)).astype(np.float32)
