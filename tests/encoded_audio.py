"""Real recordings re-encoded at test time with PyAV (FFmpeg): AAC in M4A as VoxCeleb2 ships it, Opus, ALAC."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile


def encode(source: Path, target: Path, codec: str, bit_rate: int | None = None, rate: int | None = None) -> Path:
    """Encode `source` (16-bit FLAC or WAV) with `codec` into `target`, the container chosen by its extension.

    The frame carries a start time of 0 so the encoder's priming samples (1,024 for AAC) are
    recorded in the file (an MP4 edit list, Ogg's pre-skip) and a decoder drops them, as in
    files ffmpeg writes. `rate` defaults to the source's (Opus needs 48,000).
    """
    samples, source_rate = soundfile.read(source, dtype="int16", always_2d=True)
    layout = "mono" if samples.shape[1] == 1 else "stereo"
    with av.open(str(target), "w") as container:
        stream = container.add_stream(codec, rate=rate or source_rate, layout=layout)
        if bit_rate:
            stream.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T), format="s16p", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = source_rate, 0, Fraction(1, source_rate)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return target
