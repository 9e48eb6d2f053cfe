"""How much lossy codecs change the features (a measurement, not a test): the figures behind the
tolerances of tests/test_audio.py and the README's "Audio formats and corpus layouts".

Every file of a fixed, spread-out selection of ../shared/data (LibriSpeech test-other, VCTK, EmoDB,
FSDD, Common Voice, PhilippeRemy) is re-encoded with PyAV as the tests do (tests/encoded_audio.py)
and decoded by `audio.read_audio`. Per codec it prints the RMS difference of the features of the
same span (the source's reference-trim span; frames have unit variance, so 1 is the features' own
size), the same for `read_mfcc` as it is (each file trimmed on its own samples), and, as the scale
to compare with, the RMS difference between consecutive different utterances.

    python bench/codec_error.py --output results/codec_error.json
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

import audio  # noqa: E402
from encoded_audio import encode  # noqa: E402
from fileio import write_json_atomically  # noqa: E402
from render_tables import machine, versions  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data"
CODECS = {"aac-m4a-64k": ("aac", ".m4a", 64_000, None), "aac-m4a-32k": ("aac", ".m4a", 32_000, None),
          "opus-32k": ("libopus", ".opus", 32_000, 48_000), "opus-webm-16k": ("libopus", ".webm", 16_000, 48_000)}


def selected_files() -> list[Path]:
    files = [REPO / "samples" / "1255-90413-0001.flac", REPO / "samples" / "PhilippeRemy" / "PhilippeRemy_001.wav",
             SHARED_DATA / "FSDD" / "george" / "george-0-0040.wav"]
    for pattern, step in (("VCTK/*/*.wav", 10), ("LibriSpeech/test-other/*/*/*.flac", 10), ("EmoDB/*/*.wav", 60), ("CommonVoice-fa/*/*.mp3", 100)):
        files += sorted(SHARED_DATA.glob(pattern))[::step]
    return files


def rms(first: np.ndarray, second: np.ndarray) -> float:
    frames = min(len(first), len(second))
    return float(np.sqrt(np.mean(np.square(first[:frames] - second[:frames]))))


def measure(files: list[Path], scratch: Path) -> dict:
    same_span: dict[str, list[float]] = {name: [] for name in CODECS}
    as_read: dict[str, list[float]] = {name: [] for name in CODECS}
    other_utterance, previous = [], None
    for path in files:
        source = audio.read_audio(path)
        magnitude = np.abs(source)
        loud = np.flatnonzero(magnitude > audio.silence_threshold(magnitude))
        span = slice(loud[0], loud[-1])
        expected = audio.features_of_voiced(source[span])
        if previous is not None:
            other_utterance.append(rms(expected, previous))
        previous = expected
        for name, (codec, extension, bit_rate, rate) in CODECS.items():
            encoded = encode(path, scratch / f"{path.stem}-{name}{extension}", codec, bit_rate, rate)
            same_span[name].append(rms(audio.features_of_voiced(audio.read_audio(encoded)[span]), expected))
            as_read[name].append(rms(audio.read_mfcc(encoded), audio.read_mfcc(path)))

    def summary(values: list[float]) -> dict:
        return {"files": len(values), "median": float(np.median(values)), "max": float(np.max(values)), "min": float(np.min(values)),
                "above_0.3": int(np.sum(np.array(values) > 0.3))}

    return {"same_span": {name: summary(v) for name, v in same_span.items()}, "read_mfcc": {name: summary(v) for name, v in as_read.items()},
            "other_utterance": summary(other_utterance)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="Also write the figures as JSON, with the machine and the date.")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        figures = measure(selected_files(), Path(scratch))
    for kind in ("same_span", "read_mfcc"):
        for name, row in figures[kind].items():
            print(f"{kind:10} {name:14} files {row['files']}  median {row['median']:.3f}  max {row['max']:.3f}  above 0.3: {row['above_0.3']}")
    other = figures["other_utterance"]
    print(f"different utterances      pairs {other['files']}  median {other['median']:.3f}  min {other['min']:.3f}")
    if args.output:
        record = {**figures, "command": " ".join(["python", *sys.argv]), "machine": machine(load_at_start), "versions": versions(),
                  "date": datetime.date.today().isoformat()}
        write_json_atomically(args.output, record)


if __name__ == "__main__":
    main()
