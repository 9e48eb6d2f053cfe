"""README.md: the Python example runs unchanged against a reference-format checkpoint and prints Keras 2's scores."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from constants import EMBEDDING_SIZE, NUM_FBANKS, NUM_FRAMES

REPO = Path(__file__).resolve().parents[1]
KERAS2_REFERENCE = REPO / "tests" / "keras2_reference.py"
CHECKPOINT_NAME = "ResCNN_triplet_training_checkpoint_265.h5"
TOLERANCE = 1e-5  # As in test_conv_models.py: Keras 3 against Keras 2 on the same inputs.

# Appended to the example: keep the windows it drew at random and the embeddings it computed.
KEEP_EXAMPLE_ARRAYS = """
np.savez('example.npz', windows=np.stack([mfcc_001, mfcc_002, mfcc_003]),
         predict_001=predict_001, predict_002=predict_002, predict_003=predict_003)
"""


def readme_python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    example = next(block for block in blocks if CHECKPOINT_NAME in block)
    return example


def run_keras2_reference(*args: str, cwd: Path) -> None:
    result = subprocess.run([sys.executable, str(KERAS2_REFERENCE), *args], cwd=cwd,
                            env={**os.environ, "TF_USE_LEGACY_KERAS": "1"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def printed_score(label: str, stdout: str) -> float:
    return float(re.search(rf"{label} \[([-\d.e]+)\]", stdout).group(1))


def test_readme_example_prints_the_keras2_models_scores_for_the_windows_it_draws(tmp_path, real_features):
    """The checkpoint is a full-model Keras 2 .h5 with the reference layer names, as the published file is.

    Its weights are random (the published ones are not bundled), so the README's 0.816 and 0.142
    cannot be checked; what is checked is that this code prints what Keras 2 computes from the
    same file and the same windows, which with the published file are the reference's numbers.
    """
    np.save(tmp_path / "features.npy", real_features[:1])
    run_keras2_reference("--input", "features.npy", "--output", "unused.npy", "--weights", "weights.h5", "--model", CHECKPOINT_NAME,
                         cwd=tmp_path)
    (tmp_path / "samples").symlink_to(REPO / "samples")
    example = readme_python_example() + KEEP_EXAMPLE_ARRAYS
    result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(tmp_path / "example.npz") as arrays:
        windows = arrays["windows"]
        predictions = [arrays[f"predict_00{k}"] for k in (1, 2, 3)]
    assert windows.shape == (3, NUM_FRAMES, NUM_FBANKS, 1)
    assert all(p.shape == (1, EMBEDDING_SIZE) for p in predictions)  # "# shape (1, 512)"

    np.save(tmp_path / "windows.npy", windows)
    run_keras2_reference("--checkpoint", CHECKPOINT_NAME, "--input", "windows.npy", "--output", "keras2.npy", cwd=tmp_path)
    keras2 = np.load(tmp_path / "keras2.npy")
    assert np.abs(np.concatenate(predictions) - keras2).max() < TOLERANCE
    assert abs(printed_score("SAME SPEAKER", result.stdout) - float(keras2[0] @ keras2[1])) < TOLERANCE
    assert abs(printed_score("DIFF SPEAKER", result.stdout) - float(keras2[0] @ keras2[2])) < TOLERANCE
