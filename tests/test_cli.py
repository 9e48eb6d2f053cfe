"""cli.py: each verb end to end, run as a user would run it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli import _LIBRARY_NOISE

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_help_lists_the_verbs():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "build-mfcc-cache" in result.stdout and "version" in result.stdout


def test_version_names_keras_backend(invoke_cli):
    result = invoke_cli("version")
    assert result.exit_code == 0
    assert result.stdout.startswith("hive-mtl ") and "backend" in result.stdout


def test_a_command_that_starts_tensorflow_prints_no_cuda_or_onednn_noise():
    result = run_cli("verify", "samples/PhilippeRemy/PhilippeRemy_001.wav", "samples/PhilippeRemy/PhilippeRemy_002.wav")
    assert result.returncode == 0, result.stderr
    for noise in ("cuInit", "cuda", "oneDNN", "absl::InitializeLog"):
        assert noise not in result.stderr, result.stderr
    verbose = run_cli("--verbose", "version")  # --verbose keeps the libraries' own logs for debugging.
    # Which notices TensorFlow prints depends on the CPU (oneDNN's only on some); what counts is that they are kept.
    assert any(_LIBRARY_NOISE.match(line) for line in verbose.stderr.splitlines()), verbose.stderr


def test_build_mfcc_cache_on_the_bundled_samples(tmp_path, invoke_cli):
    result = invoke_cli("build-mfcc-cache", "--working_dir", tmp_path, "--audio_dir", "samples")
    assert result.exit_code == 0, result.stderr
    assert "49 written, 0 already cached, 0 failed" in result.stdout  # 37 FLAC and WAV files, 12 MP3.
    assert (tmp_path / "audio-fbanks" / "PhilippeRemy_PhilippeRemy_001.npy").is_file()
    again = invoke_cli("build-mfcc-cache", "--working_dir", tmp_path, "--audio_dir", "samples")
    assert "0 written, 49 already cached" in again.stdout


def test_build_mfcc_cache_on_a_missing_folder_fails_with_one_line(tmp_path, invoke_cli):
    result = invoke_cli("build-mfcc-cache", "--working_dir", tmp_path, "--audio_dir", tmp_path / "absent")
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert len(result.stderr.strip().splitlines()) == 1 and "absent" in result.stderr


def test_build_mfcc_cache_reads_a_kaldi_data_dir_given_as_data_dir(tmp_path, invoke_cli):
    data = tmp_path / "data"
    data.mkdir()
    flacs = sorted((REPO / "samples" / "LibriSpeech" / "test-other" / "1688").rglob("*.flac"))[:2]
    (data / "wav.scp").write_text("".join(f"{path.stem} {path}\n" for path in flacs))
    (data / "spk2utt").write_text(f"1688 {' '.join(path.stem for path in flacs)}\n")
    result = invoke_cli("build-mfcc-cache", "--working_dir", tmp_path / "work", "--data_dir", data, "--workers", 1)
    assert result.exit_code == 0, result.output
    assert "2 written, 0 already cached, 0 failed" in result.stdout
    assert (tmp_path / "work" / "audio-fbanks" / f"1688_{flacs[0].stem}.npy").is_file()
    refused = invoke_cli("build-mfcc-cache", "--working_dir", tmp_path / "work", "--data_dir", REPO / "samples")
    assert refused.exit_code != 0 and refused.stderr.strip() == f"Error: {REPO / 'samples'}: not a Kaldi data directory (no wav.scp)"


# ---------------------------------------------------------------------------------------------- the reference's command names


@pytest.mark.parametrize(
    "phase, options, mode, refusal",
    [
        # Each option is refused in one mode and accepted in the other, where the run stops only at the missing cache.
        (["--pre_training_phase"], ["--hard_negative"], "softmax", "hard_negative mining is a triplet-mode option"),
        (["--pre_training_phase"], ["--batch_size", "10"], "softmax", "build-mfcc-cache"),
        ([], ["--hard_negative"], "triplet", "build-mfcc-cache"),
        ([], ["--batch_size", "10"], "triplet", "multiple of 3"),
    ],
)
def test_train_model_runs_train_in_softmax_mode_with_pre_training_phase_and_triplet_mode_without(tmp_path, invoke_cli, phase, options, mode, refusal):
    result = invoke_cli("train-model", "--working_dir", tmp_path, *phase, *options)
    name = "train-model --pre_training_phase" if phase else "train-model"
    expected = f"{name} is the reference's name for: python cli.py train --working_dir {tmp_path} --mode {mode} {' '.join(options)}"
    assert result.stdout.splitlines()[0] == expected
    assert result.exit_code == 1 and refusal in result.stderr
    assert not list(tmp_path.glob("checkpoints-*"))


def test_train_model_leaves_the_mode_to_pre_training_phase(tmp_path, invoke_cli):
    result = invoke_cli("train-model", "--working_dir", tmp_path, "--mode", "mtl")
    assert result.exit_code == 2 and "--pre_training_phase" in result.stderr


def test_build_keras_inputs_says_it_is_not_needed_and_exits_0(tmp_path, invoke_cli):
    result = invoke_cli("build-keras-inputs", "--working_dir", tmp_path, "--counts_per_speaker", "600,100")
    assert result.exit_code == 0, result.output
    assert "not needed" in result.stdout and "build-mfcc-cache" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_clips_table_is_named_relative_to_the_tasks_file_or_recipe_that_declares_it(tmp_path, monkeypatch):
    from cli import read_recipe, read_tasks_option

    (tmp_path / "conf").mkdir()
    declared = {"emotion": {"clips": "../EmoDB/clips.tsv", "column": "emotion", "loss": "categorical"}}
    tasks_file = tmp_path / "conf" / "tasks.json"
    tasks_file.write_text(json.dumps(declared))
    recipe = tmp_path / "conf" / "recipe.json"
    recipe.write_text(json.dumps({"mode": "mtl", "tasks": declared}))
    table = str((tmp_path / "EmoDB" / "clips.tsv").resolve())
    assert read_tasks_option(str(tasks_file))["emotion"]["clips"] == table
    assert read_recipe(str(recipe))["tasks"]["emotion"]["clips"] == table
    monkeypatch.chdir(tmp_path / "conf")  # Given as JSON on the command line: relative to the current folder.
    assert read_tasks_option(json.dumps({"emotion": {**declared["emotion"], "clips": "clips.tsv"}}))["emotion"]["clips"] == str((tmp_path / "conf" / "clips.tsv").resolve())


# ---------------------------------------------------------------------------------------------- evaluation verbs


def test_test_model_prints_the_reference_line_and_trial_figures_and_writes_json_and_plots(trained_mtl, tmp_path, invoke_cli):
    checkpoint = trained_mtl / "checkpoints-mtl" / "best.h5"
    result = invoke_cli("test-model", "--working_dir", trained_mtl, "--checkpoint_file", checkpoint, "--plots", tmp_path / "plots",
                        "--output", tmp_path / "figures.json")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"f-measure = [\d.]+, true positive rate = [\d.]+, accuracy = [\d.]+, equal error rate = [\d.]+", lines[0])
    figure = r"speakers = 2, trials = 28 \(12 same speaker\), EER = [\d.]+%, threshold = -?[\d.]+, minDCF\(0.01\) = [\d.]+, minDCF\(0.05\) = [\d.]+"
    assert re.fullmatch(r"LibriSpeech\s+" + figure + r", minCllr = [\d.]+", lines[1])  # One line per held-out corpus (named by its folder), then the pooled figure.
    assert re.fullmatch(r"pooled \(all corpora\)\s+" + figure, lines[2])
    assert {"gender acc head", "gender acc probe", "speaker id acc", "speaker id acc head"} <= {line.split(" = ")[0] for line in lines[3:]}
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["trials"]["num_trials"] == 28 and figures["reference"]["speakers"] == 3
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["det_curve.png", "embedding_projection.png", "score_histograms.png"]


def test_test_model_with_a_missing_checkpoint_fails_with_one_line(trained_mtl, invoke_cli):
    result = invoke_cli("test-model", "--working_dir", trained_mtl, "--checkpoint_file", trained_mtl / "absent.h5")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert len(result.stderr.strip().splitlines()) == 1 and "absent.h5: no such checkpoint file" in result.stderr


def test_export_writes_a_saved_model_from_a_run_checkpoint(trained_mtl, tmp_path, invoke_cli):
    result = invoke_cli("export", "--checkpoint_file", trained_mtl / "checkpoints-mtl" / "best.h5", "--output_dir", tmp_path / "exported", "--no-tflite")
    assert result.exit_code == 0, result.stderr
    assert f"wrote {tmp_path / 'exported' / 'saved_model'}" in result.stdout
    assert (tmp_path / "exported" / "saved_model" / "saved_model.pb").is_file()


def test_experiment_refuses_a_bad_recipe_naming_the_key(tmp_path, invoke_cli):
    recipe = json.loads((REPO / "recipes" / "mtl_vs_single.json").read_text())
    recipe["configurations"]["mtl"]["gender_loss_weight"] = -1
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe).replace("../../shared", str(REPO.parent / "shared")))
    result = invoke_cli("experiment", "--config", path, "--working_dir", tmp_path / "work")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "'configurations.mtl.gender_loss_weight' must be a number >= 0" in result.stderr
    assert not (tmp_path / "work").exists()


def test_results_table_averages_seeds_of_a_csv(tmp_path, invoke_cli):
    csv_path = tmp_path / "results.csv"
    csv_path.write_text(
        "config,seed,model_size,backend,device,train_steps,eer,min_dcf,speaker_id_acc,gender_acc_head,gender_acc_probe\n"
        "mtl,0,small,tensorflow,cpu,100,0.2,0.9,0.5,0.8,0.7\n"
        "mtl,1,small,tensorflow,cpu,100,0.4,0.7,0.7,0.6,0.9\n"
    )
    result = invoke_cli("results-table", "--csv", csv_path)
    assert result.exit_code == 0, result.stderr
    assert "| mtl | 2 | 0.300 ± 0.141 | 0.800 ± 0.141 | 0.600 ± 0.141 | 0.700 ± 0.141 | 0.800 ± 0.141 |" in result.stdout
