"""batcher.py: the reference's random 160-frame windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import audio
from batcher import sample_from_mfcc, sample_from_mfcc_file
from constants import NUM_FBANKS, NUM_FRAMES

LIBRI_1255 = Path(__file__).resolve().parents[1] / "samples" / "1255-90413-0001.flac"


def test_long_utterance_gives_a_contiguous_window_of_160_frames():
    mfcc = audio.read_mfcc(LIBRI_1255)
    window = sample_from_mfcc(mfcc, NUM_FRAMES, np.random.default_rng(0))
    assert window.shape == (NUM_FRAMES, NUM_FBANKS, 1)
    starts = [s for s in range(len(mfcc) - NUM_FRAMES + 1) if np.array_equal(mfcc[s : s + NUM_FRAMES], window[..., 0])]
    assert len(starts) == 1


def test_window_start_is_uniform_over_every_valid_offset():
    mfcc = np.arange(170, dtype=np.float32)[:, None].repeat(NUM_FBANKS, axis=1)
    rng = np.random.default_rng(1)
    starts = {int(sample_from_mfcc(mfcc, NUM_FRAMES, rng)[0, 0, 0]) for _ in range(400)}
    assert starts == set(range(11))


def test_short_utterance_is_zero_padded_at_the_end():
    mfcc = audio.read_mfcc(LIBRI_1255)[:50]
    window = sample_from_mfcc(mfcc, NUM_FRAMES)
    np.testing.assert_array_equal(window[:50, :, 0], mfcc)
    np.testing.assert_array_equal(window[50:], 0)


def test_sample_from_mfcc_file_reads_a_cached_entry(tmp_path):
    mfcc = audio.read_mfcc(LIBRI_1255)
    entry = tmp_path / "1255_90413-0001.npy"
    np.save(entry, mfcc)
    window = sample_from_mfcc_file(entry, NUM_FRAMES, np.random.default_rng(0))
    np.testing.assert_array_equal(window, sample_from_mfcc(mfcc, NUM_FRAMES, np.random.default_rng(0)))
