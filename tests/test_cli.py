"""cli.py: each verb end to end, run as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_help_lists_the_verbs():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "build-mfcc-cache" in result.stdout and "version" in result.stdout


def test_version_names_keras_backend():
    result = run_cli("version")
    assert result.returncode == 0
    assert result.stdout.startswith("hive-mtl ") and "backend" in result.stdout


def test_build_mfcc_cache_on_the_bundled_samples(tmp_path):
    result = run_cli("build-mfcc-cache", "--working_dir", str(tmp_path), "--audio_dir", "samples")
    assert result.returncode == 0, result.stderr
    assert "37 written, 0 already cached, 0 failed" in result.stdout
    assert (tmp_path / "audio-fbanks" / "PhilippeRemy_PhilippeRemy_001.npy").is_file()
    again = run_cli("build-mfcc-cache", "--working_dir", str(tmp_path), "--audio_dir", "samples")
    assert "0 written, 37 already cached" in again.stdout


def test_build_mfcc_cache_on_a_missing_folder_fails_with_one_line(tmp_path):
    result = run_cli("build-mfcc-cache", "--working_dir", str(tmp_path), "--audio_dir", str(tmp_path / "absent"))
    assert result.returncode != 0
    assert "absent" in result.stderr and "Traceback" not in result.stderr
