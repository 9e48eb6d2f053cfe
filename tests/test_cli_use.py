"""cli.py embed, verify, enroll, identify: end to end as a user runs them, on the bundled samples.

The commands run in the test's process (`run_cli_in_process`: the same click command, without a
fresh Python importing TensorFlow); a fresh process where that is the point (bad input, JAX).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile

from conftest import run_cli_in_process
from conv_models import DeepSpeakerModel

REPO = Path(__file__).resolve().parents[1]
PHILIPPE = REPO / "samples" / "PhilippeRemy"
SPEAKER_19 = REPO / "samples" / "LibriSpeech" / "train-clean-100" / "19" / "198"
SCORE_PRINT_TOLERANCE = 6e-4  # Scores are printed with 3 decimals.
RANK_LINE = re.compile(r"^\s*(\d+)\. (.+?)\s+(-?\d+\.\d{3})$")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    """Two small checkpoints (legacy HDF5 full-model saves, like a run's best.h5) and bad inputs."""
    out = tmp_path_factory.mktemp("cli_use")
    DeepSpeakerModel(model_size="small").m.save(out / "best.h5")
    DeepSpeakerModel(model_size="small").m.save(out / "other.h5")
    (out / "corrupt.wav").write_bytes(b"RIFF, but not really a wave file")
    soundfile.write(out / "silent.wav", np.zeros(16_000, np.float32), 16_000)
    (out / "notes.h5").write_text("not a checkpoint")
    return SimpleNamespace(dir=out, checkpoint=out / "best.h5", other=out / "other.h5", profiles=out / "people.npz")


@pytest.fixture(scope="module")
def embedded(files) -> dict[str, np.ndarray]:
    """`embed` of Philippe's files and speaker 19's chapter 198: file name -> embedding."""
    output = files.dir / "embeddings.npz"
    result = run_cli_in_process("embed", rel(PHILIPPE), rel(SPEAKER_19), "--checkpoint_file", files.checkpoint, "--output", output)
    assert result.exit_code == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"embedded 9 files (mean window, {files.checkpoint}) -> {output}"
    with np.load(output) as data:
        embeddings, paths = data["embeddings"], [str(p) for p in data["paths"]]
    assert embeddings.shape == (9, 512) and embeddings.dtype == np.float32
    assert np.abs(np.linalg.norm(embeddings, axis=1) - 1).max() < 1e-5
    expected = sorted(rel(p) for p in [*PHILIPPE.glob("*.wav"), *SPEAKER_19.glob("*.flac")])
    assert paths == expected
    return {Path(p).name: e for p, e in zip(paths, embeddings)}


@pytest.fixture(scope="module")
def enrolled(files) -> SimpleNamespace:
    """A profiles store: PhilippeRemy from files 001 and 002, then speaker 19 from a folder."""
    philippe = run_cli_in_process("enroll", "PhilippeRemy", PHILIPPE / "PhilippeRemy_001.wav", PHILIPPE / "PhilippeRemy_002.wav",
                       "--checkpoint_file", files.checkpoint, "--profiles", files.profiles)
    nineteen = run_cli_in_process("enroll", "19", SPEAKER_19, "--checkpoint_file", files.checkpoint, "--profiles", files.profiles)
    return SimpleNamespace(philippe=philippe, nineteen=nineteen)


def test_embed_writes_unit_embeddings_and_their_paths(embedded):
    assert len(embedded) == 9


def test_embed_random_window_mode(files):
    output = files.dir / "random.npz"
    result = run_cli_in_process("embed", PHILIPPE / "PhilippeRemy_001.wav", SPEAKER_19 / "19-198-0000.flac", "--checkpoint_file", files.checkpoint,
                     "--output", output, "--window", "random", "--batch_size", "3")
    assert result.exit_code == 0, result.stderr[-3000:]
    with np.load(output) as data:
        assert data["embeddings"].shape == (2, 512) and str(data["window"]) == "random"


def test_verify_prints_the_cosine_score_of_the_embeddings_and_the_decision(files, embedded):
    result = run_cli_in_process("verify", PHILIPPE / "PhilippeRemy_001.wav", PHILIPPE / "PhilippeRemy_002.wav", "--checkpoint_file", files.checkpoint)
    assert result.exit_code == 0, result.stderr[-3000:]
    match = re.fullmatch(r"score = (-?\d\.\d{3}) -> (same speaker|different speakers) \(threshold 0\.500\)", result.stdout.strip())
    assert match, result.stdout
    expected = float(embedded["PhilippeRemy_001.wav"] @ embedded["PhilippeRemy_002.wav"])
    assert abs(float(match[1]) - expected) < SCORE_PRINT_TOLERANCE
    assert match[2] == ("same speaker" if expected >= 0.5 else "different speakers")


def test_verify_help_points_to_the_calibration_and_the_bayes_decision_that_threshold_overrides():
    result = run_cli_in_process("verify", "--help")
    text = " ".join(result.stdout.split())  # Click wraps lines at the terminal's width.
    assert result.exit_code == 0
    assert "calibration.json" in text and "calibrate-" in text and "Bayes threshold" in text and "--threshold FLOAT" in text


def test_enroll_builds_profiles_from_the_embeddings_of_the_files(files, embedded, enrolled):
    assert enrolled.philippe.exit_code == 0, enrolled.philippe.stderr[-3000:]
    assert enrolled.philippe.stdout.strip() == f"PhilippeRemy: profile of 2 files (2 added) in {files.profiles} (1 speaker enrolled)"
    assert enrolled.nineteen.stdout.strip() == f"19: profile of 5 files (5 added) in {files.profiles} (2 speakers enrolled)"
    with np.load(files.profiles) as data:
        names, profiles = data["names"].tolist(), data["profiles"]
    mean = embedded["PhilippeRemy_001.wav"] + embedded["PhilippeRemy_002.wav"]
    assert names == ["PhilippeRemy", "19"]
    assert np.abs(profiles[0] - mean / np.linalg.norm(mean)).max() < 1e-5
    assert (files.dir / "people.json").is_file()


def test_identify_ranks_the_profiles_by_their_cosine_with_the_file(files, embedded, enrolled):
    result = run_cli_in_process("identify", PHILIPPE / "PhilippeRemy_003.wav", "--checkpoint_file", files.checkpoint, "--profiles", files.profiles, "--top", "5")
    assert result.exit_code == 0, result.stderr[-3000:]
    header, *lines = result.stdout.strip().splitlines()
    assert header.endswith("2 of 2 enrolled speakers, best first")
    ranking = [(m[2], float(m[3])) for m in map(RANK_LINE.match, lines)]
    with np.load(files.profiles) as data:
        scores = dict(zip(data["names"].tolist(), data["profiles"] @ embedded["PhilippeRemy_003.wav"]))
    # A random model need not put PhilippeRemy first; the ranking must follow the cosine scores.
    assert [name for name, _ in ranking] == sorted(scores, key=lambda name: -scores[name])
    assert all(abs(score - scores[name]) < SCORE_PRINT_TOLERANCE for name, score in ranking)


def test_embed_on_jax_equals_embed_on_tensorflow(files, embedded, jax_subprocess_env):
    output = files.dir / "jax.npz"
    result = run_cli("embed", rel(PHILIPPE), "--checkpoint_file", files.checkpoint, "--output", output, env=jax_subprocess_env)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(output) as data:
        jax_embeddings = dict(zip((Path(str(p)).name for p in data["paths"]), data["embeddings"]))
    assert len(jax_embeddings) == 4
    for name, embedding in jax_embeddings.items():
        assert np.abs(embedding - embedded[name]).max() < 1e-4, name


# Bad input: exit status 1 and one line naming the file. Cases marked fast fail before Keras starts.

BAD_INPUTS = {
    "embed-missing-audio": (lambda f: ["embed", f.dir / "absent.wav", "--checkpoint_file", f.checkpoint, "--output", f.dir / "x.npz"], "absent.wav", True),
    "embed-missing-checkpoint": (lambda f: ["embed", PHILIPPE, "--checkpoint_file", f.dir / "absent.h5", "--output", f.dir / "x.npz"], "absent.h5", True),
    "embed-corrupt-audio": (lambda f: ["embed", f.dir / "corrupt.wav", "--checkpoint_file", f.checkpoint, "--output", f.dir / "x.npz"], "corrupt.wav", False),
    "embed-silent-audio": (lambda f: ["embed", f.dir / "silent.wav", "--checkpoint_file", f.checkpoint, "--output", f.dir / "x.npz"], "silent.wav", False),
    "verify-missing-audio": (lambda f: ["verify", PHILIPPE / "PhilippeRemy_001.wav", f.dir / "absent.wav", "--checkpoint_file", f.checkpoint], "absent.wav", True),
    "verify-not-a-checkpoint": (lambda f: ["verify", PHILIPPE / "PhilippeRemy_001.wav", PHILIPPE / "PhilippeRemy_002.wav", "--checkpoint_file", f.dir / "notes.h5"], "notes.h5", True),
    "verify-corrupt-audio": (lambda f: ["verify", f.dir / "corrupt.wav", PHILIPPE / "PhilippeRemy_002.wav", "--checkpoint_file", f.checkpoint], "corrupt.wav", True),
    "verify-silent-audio": (lambda f: ["verify", PHILIPPE / "PhilippeRemy_001.wav", f.dir / "silent.wav", "--checkpoint_file", f.checkpoint], "silent.wav", True),
    "enroll-missing-audio": (lambda f: ["enroll", "x", f.dir / "absent.wav", "--checkpoint_file", f.checkpoint, "--profiles", f.dir / "x.npz"], "absent.wav", True),
    "enroll-audio-as-checkpoint": (lambda f: ["enroll", "x", PHILIPPE, "--checkpoint_file", PHILIPPE / "PhilippeRemy_001.wav", "--profiles", f.dir / "x.npz"], "PhilippeRemy_001.wav", True),
    "enroll-corrupt-audio": (lambda f: ["enroll", "x", f.dir / "corrupt.wav", "--checkpoint_file", f.checkpoint, "--profiles", f.dir / "x.npz"], "corrupt.wav", True),
    "enroll-silent-audio": (lambda f: ["enroll", "x", f.dir / "silent.wav", "--checkpoint_file", f.checkpoint, "--profiles", f.dir / "x.npz"], "silent.wav", True),
    "identify-missing-audio": (lambda f: ["identify", f.dir / "absent.wav", "--checkpoint_file", f.checkpoint, "--profiles", f.profiles], "absent.wav", True),
    "identify-missing-checkpoint": (lambda f: ["identify", PHILIPPE / "PhilippeRemy_001.wav", "--checkpoint_file", f.dir / "absent.h5", "--profiles", f.profiles], "absent.h5", True),
    "identify-missing-profiles": (lambda f: ["identify", PHILIPPE / "PhilippeRemy_001.wav", "--checkpoint_file", f.checkpoint, "--profiles", f.dir / "absent.npz"], "absent.npz", True),
    "identify-profiles-of-another-checkpoint": (lambda f: ["identify", PHILIPPE / "PhilippeRemy_001.wav", "--checkpoint_file", f.other, "--profiles", f.profiles], "other.h5", True),
    "identify-corrupt-audio": (lambda f: ["identify", f.dir / "corrupt.wav", "--checkpoint_file", f.checkpoint, "--profiles", f.profiles], "corrupt.wav", True),
    "identify-silent-audio": (lambda f: ["identify", f.dir / "silent.wav", "--checkpoint_file", f.checkpoint, "--profiles", f.profiles], "silent.wav", True),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_with_one_line_naming_the_file(files, enrolled, invoke_cli, case):
    make_args, named, fast = BAD_INPUTS[case]
    result = invoke_cli(*make_args(files))
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), repr(result.exception)  # A crash leaves its own exception.
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and named in lines[-1], result.stderr
    if fast:  # Checked before Keras starts: nothing else on stderr.
        assert len(lines) == 1, result.stderr


def test_bad_input_in_a_fresh_process_exits_1_with_one_line_and_no_traceback(files):
    result = run_cli(*BAD_INPUTS["verify-corrupt-audio"][0](files))
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("Error: ") and "corrupt.wav" in result.stderr, result.stderr
