"""Waveform and feature augmentation for training windows: seeded, training only, NumPy.

A training window is cut from the cached, trimmed 16 kHz audio of an utterance, changed in
ways a speaker's voice survives, and only then turned into the 160 normalised filterbank
frames the model reads:

- speed perturbation (0.9 / 1.1): resampling changes tempo and pitch together, so each
  perturbed speaker is a new class (the Kaldi and WeSpeaker practice);
- additive noise at a random SNR: babble (a sum of utterances of other training speakers, never
  the target's own) or coloured noise (white, pink or brown);
- reverberation: convolution with a room impulse response, read from `--rir_dir` or simulated
  (augment_sources.py), aligned on the direct path and at the same power;
- noise from `--noise_dir` instead of babble and coloured noise: MUSAN's categories at their
  usual SNRs, or any folder of audio (augment_sources.py);
- band limiting: through 8 kHz and back, as telephone and FSDD audio are;
- time and frequency masking of the normalised filterbanks (SpecAugment), masked cells set to
  0, the mean of a normalised frame.

No random gain: each frame is normalised to zero mean and unit variance, so a gain applied to
the whole window leaves the features unchanged (up to the 1e-12 floor); it would cost time and
change nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
import soxr

from audio import features_of_voiced, frame_count, frame_length_and_step
from augment_sources import NoiseFolder, RoomImpulseResponses, audio_files, reverberate
from constants import (
    AUGMENT_BABBLE_SNR_DB,
    AUGMENT_BABBLE_SPEAKERS,
    AUGMENT_BAND_LIMIT_RATE,
    AUGMENT_NOISE_SNR_DB,
    AUGMENT_SPEEDS,
    NUM_FBANKS,
    NUM_FRAMES,
    SAMPLE_RATE,
    SPEC_MASK_MAX_BANDS,
    SPEC_MASK_MAX_FRAMES,
)


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations a run uses and how often; each is switchable for ablations."""

    speed_perturb: bool = False  # Speeds AUGMENT_SPEEDS, each a class of its own.
    noise_probability: float = 0.0  # Chance of additive noise (half babble, half coloured).
    band_limit_probability: float = 0.0  # Chance of passing the window through 8 kHz.
    spec_mask_probability: float = 0.0  # Chance of one time mask and one frequency mask.
    reverb_probability: float = 0.0  # Chance of reverberation (before the noise).
    rir_dir: str | None = None  # Impulse responses of reverberation; None: simulated rooms.
    noise_dir: str | None = None  # Noise files (MUSAN's layout or any folder); None: babble and coloured noise.

    @property
    def speeds(self) -> tuple[float, ...]:
        return AUGMENT_SPEEDS if self.speed_perturb else (1.0,)

    @property
    def changes_waveform(self) -> bool:
        return self.speed_perturb or self.noise_probability > 0 or self.band_limit_probability > 0 or self.reverb_probability > 0

    def validate(self) -> None:
        """Probabilities in [0, 1]; a folder only with the augmentation that reads it, and one that holds audio."""
        for name in ("noise_probability", "band_limit_probability", "spec_mask_probability", "reverb_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1; got {getattr(self, name)}")
        if self.rir_dir is not None:
            if self.reverb_probability == 0:
                raise ValueError("rir_dir is read by reverberation: give reverb_probability > 0 as well")
            audio_files(self.rir_dir, "--rir_dir")
        if self.noise_dir is not None:
            if self.noise_probability == 0:
                raise ValueError("noise_dir is read by the noise augmentation: give noise_probability > 0 as well")
            NoiseFolder(self.noise_dir)

    def to_dict(self) -> dict:
        return asdict(self)


NO_AUGMENTATION = AugmentConfig()


@dataclass(frozen=True)
class FolderSources:
    """The noise folder and the impulse responses a run's augmentation reads (None: not used), indexed once."""

    noise: NoiseFolder | None = None
    rooms: RoomImpulseResponses | None = None

    @classmethod
    def of(cls, config: AugmentConfig, seed: int) -> "FolderSources":
        """`seed` is the run's: simulated rooms are the same in a resumed run."""
        return cls(NoiseFolder(config.noise_dir) if config.noise_dir is not None and config.noise_probability > 0 else None,
                   RoomImpulseResponses(config.rir_dir, seed) if config.reverb_probability > 0 else None)


def window_samples(num_frames: int = NUM_FRAMES, sample_rate: int = SAMPLE_RATE) -> int:
    """Samples that give exactly `num_frames` frames."""
    frame_length, frame_step = frame_length_and_step(sample_rate)
    return (num_frames - 1) * frame_step + frame_length


def change_speed(samples: np.ndarray, speed: float) -> np.ndarray:
    """Play `samples` `speed` times faster (tempo and pitch), as sox's `speed` effect does."""
    if speed == 1.0:
        return samples
    return soxr.resample(samples, SAMPLE_RATE * speed, SAMPLE_RATE, quality="MQ")


def band_limit(samples: np.ndarray) -> np.ndarray:
    """Remove everything above 4 kHz by resampling through 8 kHz, as a telephone channel does."""
    narrow = soxr.resample(samples, SAMPLE_RATE, AUGMENT_BAND_LIMIT_RATE, quality="MQ")
    wide = soxr.resample(narrow, AUGMENT_BAND_LIMIT_RATE, SAMPLE_RATE, quality="MQ")
    return _fit(wide, len(samples))


def coloured_noise(length: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise whose power falls as 1/f^exponent: 0 white, 1 pink, 2 brown.

    The draws are float64 (the generator's stream), shaped in float32: numpy's float64 formula,
    irfft(rfft(x) / f^(exponent / 2)), to float32 rounding (tests/test_augment.py). White noise
    is the draws themselves, whose round trip through the FFT changed only their rounding; the
    spectral slope is computed once per length and colour.
    """
    draws = rng.standard_normal(length).astype(np.float32)
    if exponent == 0:
        return draws
    spectrum = scipy.fft.rfft(draws)
    spectrum /= _noise_slope(length, exponent)
    return scipy.fft.irfft(spectrum, length)


@lru_cache(maxsize=16)
def _noise_slope(length: int, exponent: float) -> np.ndarray:
    """f^(exponent / 2) at the rfft bins of `length` samples (the DC bin as the first), float32, read-only: it is shared."""
    frequencies = np.fft.rfftfreq(length)
    frequencies[0] = frequencies[1] if length > 1 else 1.0
    slope = (frequencies ** (exponent / 2)).astype(np.float32)
    slope.flags.writeable = False
    return slope


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled so that the speech-to-noise power ratio is `snr_db`, float32.

    The powers are float32 dot products (a relative error of about 1e-7 against float64 sums,
    against 8 times the time)."""
    speech_power = float(np.dot(speech, speech)) / len(speech)
    noise_power = float(np.dot(noise, noise)) / len(noise)
    if speech_power == 0 or noise_power == 0:
        return speech
    scale = np.sqrt(speech_power / (noise_power * 10 ** (snr_db / 10)))
    return (speech + np.float32(scale) * noise).astype(np.float32, copy=False)


def spec_mask(features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random block of frames and one of filterbank bands set to 0 (a copy)."""
    return apply_spec_mask(features.copy(), draw_spec_mask(len(features), rng))


def draw_spec_mask(num_frames: int, rng: np.random.Generator) -> tuple[slice, slice]:
    """The (frames, bands) of one random time mask and one frequency mask of `num_frames` frames of NUM_FBANKS bands."""
    width = int(rng.integers(1, SPEC_MASK_MAX_FRAMES + 1))
    start = int(rng.integers(0, max(1, num_frames - width + 1)))
    bands = int(rng.integers(1, SPEC_MASK_MAX_BANDS + 1))
    first = int(rng.integers(0, NUM_FBANKS - bands + 1))
    return slice(start, start + width), slice(first, first + bands)


def apply_spec_mask(features: np.ndarray, mask: tuple[slice, slice]) -> np.ndarray:
    """`features` with the mask's frames and bands set to 0, in place."""
    frames, bands = mask
    features[frames] = 0.0
    features[:, bands] = 0.0
    return features


def _fit(samples: np.ndarray, length: int) -> np.ndarray:
    if len(samples) >= length:
        return samples[:length]
    return np.pad(samples, (0, length - len(samples)))


def random_segment(samples: np.ndarray, length: int, rng: np.random.Generator, align: int = 1) -> np.ndarray:
    """A random stretch of `length` samples starting at a multiple of `align`, or all of a shorter clip."""
    if len(samples) <= length:
        return np.asarray(samples, dtype=np.float32)
    start = align * int(rng.integers(0, (len(samples) - length) // align + 1))
    return np.asarray(samples[start : start + length], dtype=np.float32)


def augmented_window_features(
    samples: np.ndarray,
    speed: float,
    config: AugmentConfig,
    rng: np.random.Generator,
    babble_source: Callable[[int, np.random.Generator], list[np.ndarray]],
    num_frames: int = NUM_FRAMES,
    sources: FolderSources = FolderSources(),
) -> np.ndarray:
    """Normalised filterbanks (at most `num_frames` frames) of one augmented random window: `augmented_window`,
    then `augmented_windows_features` of that one window."""
    return augmented_windows_features([augmented_window(samples, speed, config, rng, babble_source, num_frames, sources)])[0]


def augmented_window(
    samples: np.ndarray,
    speed: float,
    config: AugmentConfig,
    rng: np.random.Generator,
    babble_source: Callable[[int, np.random.Generator], list[np.ndarray]],
    num_frames: int = NUM_FRAMES,
    sources: FolderSources = FolderSources(),
) -> tuple[np.ndarray, tuple[slice, slice] | None]:
    """The augmented samples of one random window (at most `num_frames` frames' worth), and the SpecAugment mask
    drawn for its features (None: no mask); `augmented_windows_features` turns them into features.

    Every random draw of a window is made here, in the order of the steps, so a batch's windows
    draw the same numbers whether their features are computed one by one or batch-wide.
    `samples` is the whole trimmed utterance (a memory map or a `batcher.CachedWaveform`: only the window is read);
    `babble_source(length, rng)` returns that many samples of each of a few utterances of other
    speakers than the window's (`batcher.AugmentedBatches.babble`); `sources` the folders of
    `config.noise_dir` and `config.rir_dir` (`FolderSources.of`).
    """
    needed = window_samples(num_frames)
    _, frame_step = frame_length_and_step(SAMPLE_RATE)
    # Windows start on a frame boundary: unaugmented, they are frames of the whole utterance's features.
    segment = change_speed(random_segment(samples, int(np.ceil(needed * speed)) + 1, rng, frame_step), speed)[:needed]
    if config.reverb_probability > 0 and rng.random() < config.reverb_probability:  # No draw without it: older runs draw as before.
        segment = reverberate(segment, sources.rooms.draw(rng))
    if rng.random() < config.noise_probability:
        if sources.noise is not None:
            _, noise, snr_db = sources.noise.draw(len(segment), rng)
            segment = mix_at_snr(segment, noise, snr_db)
        elif rng.random() < 0.5:
            segment = mix_at_snr(segment, babble_noise(babble_source(len(segment), rng), len(segment)), rng.uniform(*AUGMENT_BABBLE_SNR_DB))
        else:
            noise = coloured_noise(len(segment), float(rng.integers(0, 3)), rng)
            segment = mix_at_snr(segment, noise, rng.uniform(*AUGMENT_NOISE_SNR_DB))
    if rng.random() < config.band_limit_probability:
        segment = band_limit(segment)
    mask = draw_spec_mask(frame_count(len(segment)), rng) if rng.random() < config.spec_mask_probability else None
    return segment, mask


def augmented_windows_features(windows: list[tuple[np.ndarray, tuple[slice, slice] | None]]) -> list[np.ndarray]:
    """Normalised filterbanks of augmented windows (`augmented_window`), each masked as drawn.

    The windows of one length (all but those cut from clips shorter than a window) are computed
    batch-wide (`audio.features_of_voiced` of a stack): each window's features are those it has
    alone, to float32 rounding.
    """
    features: list[np.ndarray] = [np.empty(0)] * len(windows)
    by_length: dict[int, list[int]] = {}
    for i, (segment, _) in enumerate(windows):
        by_length.setdefault(len(segment), []).append(i)
    for members in by_length.values():
        batch = features_of_voiced(np.stack([windows[i][0] for i in members]))
        for i, window_features in zip(members, batch):
            mask = windows[i][1]
            features[i] = window_features if mask is None else apply_spec_mask(window_features, mask)
    return features


def babble_noise(segments: list[np.ndarray], length: int) -> np.ndarray:
    """The sum of `segments`, each cut or zero padded to `length` samples, float32, added in their order."""
    total = np.zeros(length, dtype=np.float32)
    for segment in segments:
        part = total[: min(length, len(segment))]
        np.add(part, segment[: len(part)], out=part)
    return total


def babble_speakers(rng: np.random.Generator) -> int:
    """How many utterances of other speakers make one babble noise."""
    low, high = AUGMENT_BABBLE_SPEAKERS
    return int(rng.integers(low, high + 1))
