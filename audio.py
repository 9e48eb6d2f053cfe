"""Audio decoding, silence trims and the reference's filterbank features (the reference's audio.py).

Everything here is NumPy and plain Python (no TensorFlow), so features can be computed in worker
processes cheaply and reused by every Keras backend.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.fft
import soundfile
import soxr
from python_speech_features import get_filterbanks

from constants import (
    AUDIO_EXTENSIONS,
    FFMPEG_EXTENSIONS,
    ENERGY_TRIM_TOP_DB,
    FFT_CHUNK_FRAMES,
    MEL_BLOCKS,
    NFFT,
    NORMALISATION_STD_FLOOR,
    NUM_FBANKS,
    PAD_MODES,
    PRE_EMPHASIS,
    RESAMPLE_QUALITY,
    SAMPLE_RATE,
    SILENCE_PERCENTILE,
    TRIM_MODES,
    WINDOW_LENGTH_S,
    WINDOW_STEP_S,
)


class AudioError(ValueError):
    """A file that cannot give features: empty, silent, corrupt, unsupported or too short."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")



# ----------------------------------------------------------------------------------------------
# Decoding and trimming.


def read_audio(filename: str | os.PathLike, sample_rate: int = SAMPLE_RATE, segment: tuple[float, float | None] | None = None) -> np.ndarray:
    """Decode an audio file of AUDIO_EXTENSIONS to mono float32 at `sample_rate`, as `librosa.load` would.

    soundfile decodes FLAC, WAV, MP3 and OGG, FFmpeg (PyAV) decodes AAC/M4A, Opus and WebM;
    channels are averaged, and soxr 'HQ' resamples (librosa's default), so the samples of the
    formats librosa reads are identical to the reference's. `segment` (start, end) in seconds
    (end None: to the end) keeps that span of the recording, cut before resampling as if it were
    a file of its own (a Kaldi `segments` utterance).
    """
    path = Path(filename)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such audio file")
    suffix = path.suffix.lower()
    if suffix not in AUDIO_EXTENSIONS:
        raise AudioError(path, f"unsupported format {path.suffix!r} (expected one of {', '.join(AUDIO_EXTENSIONS)})")
    if path.stat().st_size == 0:
        raise AudioError(path, "the file is empty (0 bytes)")
    if suffix in FFMPEG_EXTENSIONS:
        samples, file_rate = decode_with_ffmpeg(path, segment)
    else:
        try:
            samples, file_rate = decode_with_soundfile(path, segment)
        except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
            if suffix != ".ogg":
                raise AudioError(path, f"corrupt or not audio ({error})") from None
            samples, file_rate = decode_with_ffmpeg(path, segment)  # An Ogg codec this libsndfile lacks (Opus before 1.0.29, FLAC in Ogg).
    if samples.size == 0:
        raise AudioError(path, "the file holds no audio samples")
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
    if file_rate != sample_rate:
        mono = soxr.resample(mono, file_rate, sample_rate, quality=RESAMPLE_QUALITY)
        expected_length = int(np.ceil(len(samples) * sample_rate / file_rate))
        mono = _fix_length(mono, expected_length)
    return np.ascontiguousarray(mono, dtype=np.float32)


def segment_frames(path: Path, segment: tuple[float, float | None], rate: int, length: int) -> slice:
    """The frames of `segment` (start, end) seconds in a recording of `length` frames; an end past the recording stops at its end."""
    start, end = segment
    first = int(round(start * rate))
    last = length if end is None else min(length, int(round(end * rate)))
    where = f"the segment {start:g}-{'end' if end is None else f'{end:g}'} s"
    if first >= length:
        raise AudioError(path, f"{where} starts after the end of the recording ({length / rate:g} s)")
    if last <= first:
        raise AudioError(path, f"{where} is empty")
    return slice(first, last)


def decode_with_soundfile(path: Path, segment: tuple[float, float | None] | None = None) -> tuple[np.ndarray, int]:
    """(samples, rate) as float32 (frames, channels); a segment is read by seeking, not by decoding the whole recording."""
    with soundfile.SoundFile(path) as sound:
        if segment is None or sound.frames == 0:
            return sound.read(dtype="float32", always_2d=True), sound.samplerate
        frames = segment_frames(path, segment, sound.samplerate, sound.frames)
        sound.seek(frames.start)
        return sound.read(frames.stop - frames.start, dtype="float32", always_2d=True), sound.samplerate


def decode_with_ffmpeg(path: Path, segment: tuple[float, float | None] | None = None) -> tuple[np.ndarray, int]:
    """(samples, rate) of the first audio stream, float32 shaped (frames, channels) as soundfile gives them.

    The decoder's samples are only converted to float, never resampled here, so every format
    goes through the same soxr resampling in `read_audio`.
    """
    import av  # Imported here: only these formats need FFmpeg, and machines that never read them can lack it.

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(path, "no audio stream in the file")
            stream = container.streams.audio[0]
            to_float = av.AudioResampler(format="fltp")  # Planar float at the stream's own rate and layout.
            blocks = [converted.to_ndarray() for frame in container.decode(stream) for converted in to_float.resample(frame)]
            blocks += [converted.to_ndarray() for converted in to_float.resample(None)]  # What the converter still holds.
            rate = stream.codec_context.sample_rate
    except av.FFmpegError as error:
        raise AudioError(path, f"corrupt or not audio ({error.strerror or type(error).__name__})") from None
    if not blocks:
        return np.zeros((0, 1), dtype=np.float32), rate
    samples = np.concatenate(blocks, axis=1).T
    if segment is not None:
        samples = samples[segment_frames(path, segment, rate, len(samples))]
    return np.ascontiguousarray(samples, dtype=np.float32), rate


def _fix_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Pad with zeros or cut to `length`, as librosa does after resampling."""
    if len(samples) >= length:
        return samples[:length]
    return np.pad(samples, (0, length - len(samples)))


def trim_silence(samples: np.ndarray, source: str | os.PathLike = "<audio>") -> np.ndarray:
    """Keep the samples between the first and the last one louder than the 95th percentile.

    This is the reference's crude trim (the last loud sample itself is left out, as there); it
    raises instead of crashing on silent audio.
    """
    if samples.size == 0:
        raise AudioError(source, "the audio is empty")
    magnitude = np.abs(samples)
    loud = magnitude > silence_threshold(magnitude)
    first, last = int(np.argmax(loud)), len(loud) - 1 - int(np.argmax(loud[::-1]))
    if not loud[first]:
        raise AudioError(source, "the audio is silent (no sample louder than the rest)")
    return samples[first:last]


def silence_threshold(magnitude: np.ndarray) -> np.floating:
    """`np.percentile(magnitude, SILENCE_PERCENTILE)` of a non-empty 1-D array, bit for bit, in one partition.

    NumPy's 'linear' method reads the two order statistics around index (n - 1) * q and
    interpolates, from the upper one when the weight is at least 0.5; NaN if any value is NaN.
    One partition at the upper index gives both: the lower one is the largest value before it.
    """
    index = (len(magnitude) - 1) * (SILENCE_PERCENTILE / 100)
    below = int(index)
    above = min(below + 1, len(magnitude) - 1)
    ordered = np.partition(magnitude, above)
    upper = ordered[above]
    if np.isnan(ordered[above:]).any():  # NaN sorts last: it is in the upper part if anywhere.
        return magnitude.dtype.type(np.nan)
    lower = ordered[:above].max() if above > below else upper
    weight, step = index - below, upper - lower
    if weight >= 0.5:
        return upper - step * magnitude.dtype.type(1 - weight)
    return lower + step * magnitude.dtype.type(weight)


def trim_energy(samples: np.ndarray, source: str | os.PathLike = "<audio>") -> np.ndarray:
    """Drop leading and trailing audio more than 30 dB below the loudest frame (librosa's trim).

    Unlike the reference's trim it keeps quiet speech at the edges of a clip, which matters on
    clips that are already cut to one word.
    """
    import librosa  # Imported here: it is slow to import and only this trim needs it.

    if samples.size == 0:
        raise AudioError(source, "the audio is empty")
    if not np.any(samples):
        raise AudioError(source, "the audio is silent (all samples are zero)")
    voiced, _ = librosa.effects.trim(samples, top_db=ENERGY_TRIM_TOP_DB)
    return voiced


def trim(samples: np.ndarray, mode: str = "reference", source: str | os.PathLike = "<audio>") -> np.ndarray:
    """Silence trim of one of TRIM_MODES: `reference` (95th percentile), `energy`, or `none`."""
    if mode == "reference":
        return trim_silence(samples, source)
    if mode == "energy":
        return trim_energy(samples, source)
    if mode == "none":
        if samples.size == 0 or not np.any(samples):
            raise AudioError(source, "the audio is empty or silent")
        return samples
    raise ValueError(f"trim must be one of {', '.join(TRIM_MODES)}; got {mode!r}")


# ----------------------------------------------------------------------------------------------
# Filterbank features.


@lru_cache(maxsize=4)
def mel_filterbank(sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The (NFFT//2+1, NUM_FBANKS) mel matrix of python_speech_features, built once per rate."""
    return get_filterbanks(NUM_FBANKS, NFFT, sample_rate, 0, sample_rate / 2).T.copy()


@lru_cache(maxsize=4)
def mel_blocks(sample_rate: int = SAMPLE_RATE) -> tuple[tuple[slice, slice, np.ndarray], ...]:
    """The mel matrix divided by NFFT, for squared spectra laid out (re, im) per bin, in MEL_BLOCKS bands.

    Each band of consecutive filters keeps only the rows of the bins it covers: the filters are
    narrow triangles (438 of 16,448 weights are non-zero), so 8 bands hold 4,384 weights
    where the whole matrix has 32,768. Entries: (rows, filters, float32 weights).
    """
    weights = np.repeat(mel_filterbank(sample_rate) / NFFT, 2, axis=0).astype(np.float32)  # Dividing by 2**9 is exact.
    blocks = []
    for filters in np.array_split(np.arange(NUM_FBANKS), MEL_BLOCKS):
        used = np.flatnonzero(weights[:, filters].any(axis=1))
        rows, columns = slice(used[0], used[-1] + 1), slice(filters[0], filters[-1] + 1)
        blocks.append((rows, columns, np.ascontiguousarray(weights[rows, columns])))
    return tuple(blocks)


@lru_cache(maxsize=8)  # Called a few times per training window; NumPy scalar arithmetic costs microseconds.
def frame_length_and_step(sample_rate: int = SAMPLE_RATE) -> tuple[int, int]:
    """Window and hop in samples, rounded half up as python_speech_features does."""
    return int(np.floor(WINDOW_LENGTH_S * sample_rate + 0.5)), int(np.floor(WINDOW_STEP_S * sample_rate + 0.5))


def frame_count(length: int, sample_rate: int = SAMPLE_RATE) -> int:
    """Frames python_speech_features makes of `length` samples: the last one zero padded, at least one."""
    frame_length, frame_step = frame_length_and_step(sample_rate)
    return 1 if length <= frame_length else 1 + int(np.ceil((length - frame_length) / frame_step))


def filterbank_energies(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mel filterbank energies of python_speech_features `fbank(nfilt=64)[0]`, in float32.

    The same pre-emphasis, framing and zero padding; the FFT and the filters in float32, so the
    energies differ from the reference's float64 ones by float32 rounding (under 2e-6 after
    normalisation on every file of ../shared/data). Shape (frames, NUM_FBANKS) of one signal
    (length,); of windows of one length (count, length), (count, frames, NUM_FBANKS), each
    window's frames those it would have alone, computed batch-wide: every window's pre-emphasised
    samples lie in one buffer, `gap` frames apart, so that all frames are one strided view and one
    FFT and one filter product a chunk serve many windows (the frames that straddle two windows
    are computed and dropped: 2 in 162 for training windows).
    """
    windows = samples[np.newaxis] if samples.ndim == 1 else samples
    count, length = windows.shape
    frame_length, frame_step = frame_length_and_step(sample_rate)
    num_frames = frame_count(length, sample_rate)
    gap = 0 if count == 1 else -(-(frame_length - frame_step) // frame_step)
    pitch = (num_frames + gap) * frame_step  # Samples from one window's start to the next one's.
    emphasised = np.zeros(count * pitch + frame_length, dtype=np.float32)  # Zero padded to whole frames.
    starts = np.lib.stride_tricks.as_strided(emphasised, (count, length), (pitch * emphasised.itemsize, emphasised.itemsize))
    starts[:, 0] = windows[:, 0]
    np.subtract(windows[:, 1:], PRE_EMPHASIS * windows[:, :-1], out=starts[:, 1:])
    used_frames = count * (num_frames + gap) - gap
    frames = np.lib.stride_tricks.sliding_window_view(emphasised, frame_length)[::frame_step][:used_frames]
    energies = np.empty((count * (num_frames + gap), NUM_FBANKS), dtype=np.float32)
    # A chunk's spectra (0.5 MB) stay in the CPU cache until filtered, and each filter product (at most 256 x 162 x 8
    # for 16 kHz) stays below OpenBLAS's size for a second thread: chunks of 512 frames sent the top bands' products to
    # two threads, which on a busy machine spin for 10 to 20 times a product's CPU time (bench/README.md).
    for start in range(0, used_frames, FFT_CHUNK_FRAMES):
        chunk = slice(start, min(start + FFT_CHUNK_FRAMES, used_frames))
        squares = scipy.fft.rfft(frames[chunk], NFFT).view(np.float32)  # re, im of each bin side by side.
        np.square(squares, out=squares)
        for rows, filters, weights in mel_blocks(sample_rate):
            np.matmul(squares[:, rows], weights, out=energies[chunk, filters])
    energies = energies.reshape(count, num_frames + gap, NUM_FBANKS)[:, :num_frames]
    energies[energies == 0] = np.finfo(np.float64).eps  # As the reference: no zero energies.
    return energies[0] if samples.ndim == 1 else energies


def normalize_frames(features: np.ndarray) -> np.ndarray:
    """Per frame (the last axis): subtract the mean, divide by max(std, 1e-12), in the features' dtype. Returns float32."""
    centred = features - features.mean(axis=-1, keepdims=True)
    std = np.sqrt(np.mean(np.square(centred), axis=-1, keepdims=True))  # np.std, without centring twice.
    centred /= np.maximum(std, NORMALISATION_STD_FLOOR)
    return centred.astype(np.float32, copy=False)


def mfcc_from_samples(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, source: str | os.PathLike = "<audio>", trim_mode: str = "reference") -> np.ndarray:
    """Trim silence, compute 64 filterbanks and normalise each frame: shape (frames, 64)."""
    voiced = trim(samples, trim_mode, source)
    return features_of_voiced(voiced, sample_rate, source)


def features_of_voiced(voiced: np.ndarray, sample_rate: int = SAMPLE_RATE, source: str | os.PathLike = "<audio>") -> np.ndarray:
    """Filterbanks of audio already trimmed, each frame normalised: shape (frames, 64), or (count, frames, 64) of
    windows of one length (count, length), computed batch-wide (`filterbank_energies`)."""
    frame_length, _ = frame_length_and_step(sample_rate)
    if voiced.shape[-1] < frame_length:
        raise AudioError(source, f"too short: {voiced.shape[-1]} samples of speech after trimming, need at least {frame_length}")
    return normalize_frames(filterbank_energies(voiced, sample_rate))


def read_mfcc(input_filename: str | os.PathLike, sample_rate: int = SAMPLE_RATE, trim_mode: str = "reference") -> np.ndarray:
    """The reference's features of one file: (frames, 64) normalised filterbanks, float32.

    The name is the reference's; the values are filterbank energies, not cepstra. `trim_mode`
    other than `reference` is this project's choice for trained models (see TRIM_MODES).
    """
    return mfcc_from_samples(read_audio(input_filename, sample_rate), sample_rate, input_filename, trim_mode)


def pad_mfcc(mfcc: np.ndarray, max_length: int, mode: str = "zeros") -> np.ndarray:
    """Fill up to `max_length` frames: zero frames at the end (the reference), or the clip's own
    frames repeated (`repeat`), so a short clip's window holds speech, not zeros. Longer inputs
    are returned as they are."""
    missing = max_length - len(mfcc)
    if missing <= 0:
        return mfcc
    if mode == "repeat" and len(mfcc):
        return np.resize(mfcc, (max_length, mfcc.shape[1])).astype(mfcc.dtype, copy=False)
    if mode not in PAD_MODES:
        raise ValueError(f"pad must be one of {', '.join(PAD_MODES)}; got {mode!r}")
    return np.concatenate([mfcc, np.zeros((missing, mfcc.shape[1]), dtype=mfcc.dtype)])
