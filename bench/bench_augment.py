"""What each waveform augmentation costs per training window: CPU milliseconds on one thread (a benchmark, not a test).

Cuts 160-frame windows from a real utterance as `batcher.AugmentedBatches` does and times
`augment.augmented_window_features` with each augmentation always on: none, noise from a folder
in MUSAN's layout (made from ../shared/data files: FSDD as noise/, VCTK as music/, LibriSpeech as
speech/), reverberation with simulated rooms (after every room has been simulated once: the
steady state of a run), and the one-off cost of simulating a room.

    python bench/bench_augment.py
    python bench/bench_augment.py --windows 500 --output /tmp/augment.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import audio  # noqa: E402
from augment import AugmentConfig, FolderSources, augmented_window_features  # noqa: E402
from augment_sources import simulated_rir  # noqa: E402
from constants import SIMULATED_ROOMS  # noqa: E402
from render_tables import results_path, results_record, write_results  # noqa: E402

DATA = REPO.parent / "shared" / "data"
SPEECH = DATA / "LibriSpeech" / "test-other" / "3005" / "163389" / "3005-163389-0005.flac"


def musan_like(root: Path) -> Path:
    """MUSAN's layout from real files of ../shared/data."""
    picks = {"noise": sorted((DATA / "FSDD" / "george").glob("*.wav"))[:20], "music": sorted((DATA / "VCTK" / "p225").glob("*.wav"))[:5],
             "speech": sorted((DATA / "LibriSpeech" / "test-other").rglob("*.flac"))[:20]}
    for category, files in picks.items():
        (root / category / "part").mkdir(parents=True)
        for path in files:
            shutil.copy(path, root / category / "part" / path.name)
    return root


def cpu_ms_per_window(speech: np.ndarray, config: AugmentConfig, windows: int, warm_windows: int) -> float:
    sources = FolderSources.of(config, seed=0)
    rng = np.random.default_rng(1)
    for _ in range(warm_windows):  # Rooms simulated, files opened: the run's steady state.
        augmented_window_features(speech, 1.0, config, rng, lambda length, r: [], sources=sources)
    started = time.process_time()
    for _ in range(windows):
        augmented_window_features(speech, 1.0, config, rng, lambda length, r: [], sources=sources)
    return 1000 * (time.process_time() - started) / windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=200, help="Windows timed per augmentation (default 200).")
    parser.add_argument("--output", type=results_path, metavar="FILE.json", help="Also write the figures as JSON.")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    speech = audio.read_audio(SPEECH)
    with tempfile.TemporaryDirectory() as scratch:
        musan = str(musan_like(Path(scratch)))
        settings = {
            "none": (AugmentConfig(), 10),
            "noise_dir (MUSAN layout)": (AugmentConfig(noise_probability=1.0, noise_dir=musan), 10),
            "reverb, simulated rooms": (AugmentConfig(reverb_probability=1.0), 8 * SIMULATED_ROOMS),
        }
        rows = []
        for name, (config, warm) in settings.items():
            rows.append({"path": name, "cpu_ms_per_window": round(cpu_ms_per_window(speech, config, args.windows, warm), 2)})
            print(f"{name:28s} {rows[-1]['cpu_ms_per_window']:8.2f} CPU ms per window")
    started = time.process_time()
    for room in range(20):
        simulated_rir(0, room)
    rows.append({"path": "simulate one room (once per room and run)", "cpu_ms": round(1000 * (time.process_time() - started) / 20, 1)})
    print(f"{rows[-1]['path']}: {rows[-1]['cpu_ms']} CPU ms")
    if args.output:
        write_results(args.output, results_record("bench_augment", load_at_start, {"mode": "augment", "windows": args.windows, "rows": rows}))


if __name__ == "__main__":
    main()
