"""README.md: the Python example runs unchanged against a reference-format checkpoint."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT_NAME = "ResCNN_triplet_training_checkpoint_265.h5"


def readme_python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    example = next(block for block in blocks if CHECKPOINT_NAME in block)
    return example


def test_readme_example_scores_the_bundled_samples_with_a_keras2_checkpoint(tmp_path, real_features):
    """The checkpoint is a full-model Keras 2 .h5 with the reference layer names, as the published file is."""
    np.save(tmp_path / "features.npy", real_features[:1])
    keras2 = subprocess.run(
        [sys.executable, str(REPO / "tests" / "keras2_reference.py"), "--input", str(tmp_path / "features.npy"),
         "--output", str(tmp_path / "embeddings.npy"), "--weights", str(tmp_path / "weights.h5"), "--model", str(tmp_path / CHECKPOINT_NAME)],
        env={**os.environ, "TF_USE_LEGACY_KERAS": "1"}, capture_output=True, text=True,
    )
    assert keras2.returncode == 0, keras2.stderr[-3000:]
    (tmp_path / "samples").symlink_to(REPO / "samples")
    example = readme_python_example() + "\nassert predict_001.shape == (1, 512)\nprint('NORM', float(np.linalg.norm(predict_001)))\n"
    result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    same = float(re.search(r"SAME SPEAKER \[([-\d.e]+)\]", result.stdout).group(1))
    different = float(re.search(r"DIFF SPEAKER \[([-\d.e]+)\]", result.stdout).group(1))
    assert -1.0 <= different <= 1.0 and -1.0 <= same <= 1.0
    assert abs(float(re.search(r"NORM ([\d.]+)", result.stdout).group(1)) - 1.0) < 1e-5
