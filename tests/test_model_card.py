"""model_card.py: shipping a run's checkpoint with its card, and learning curves from snapshots."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from audio import AudioError
from calibration import calibrate_checkpoint, choose_embedding_pad, read_calibration, write_calibration
from conv_models import DeepSpeakerModel
from corpus import index_corpus
from inference import FrontEnd
from model_card import SHIPPED_FILES, learning_curve, record_duration_figures, render_model_card, ship_model

REPO = Path(__file__).resolve().parents[1]
TEST_OTHER = str(REPO / "samples" / "LibriSpeech" / "test-other")
COMMON_VOICE = str(REPO / "samples" / "CommonVoice-fa")  # Three speakers no sample run trains on.
PHILIPPE = REPO / "samples" / "PhilippeRemy"


def test_a_shipped_run_has_its_embedding_model_config_calibration_cohort_and_card(trained_mtl, tmp_path):
    shutil.copytree(REPO / "pretrained", tmp_path / "shipped")  # Shipped over an earlier shipment: replaced whole.
    output = ship_model(trained_mtl / "checkpoints-mtl" / "best.h5", [TEST_OTHER], tmp_path / "shipped", "python cli.py train ...", ["samples"],
                        train_seconds=12.0, embedding_pad="exact", calibration_audio_dirs=[COMMON_VOICE], crop_seconds=())
    assert sorted(p.name for p in output.iterdir()) == sorted(SHIPPED_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shipped"]  # Neither the new folder's name nor the old folder is left.
    card = json.loads((output / "model_card.json").read_text())
    figures = card["evaluation"]["corpora"]["test-other"]
    assert figures["speakers"] == 2 and figures["num_trials"] == 28 and 0 <= figures["eer"] <= 1
    assert {"cllr", "act_dcf_001", "half_total_error", "min_cllr"} <= set(figures) and "by_duration" not in card
    assert "eer_threshold" not in card and card["decision"]["on"] == "llr"  # The EER threshold is a measurement of each corpus.
    calibration = read_calibration(output / "model.h5")
    assert calibration.fitted_on["speakers"] == ["00243bfe", "0874d76d", "fbc91278"] and calibration.fitted_on["corpora"] == ["CommonVoice-fa"]
    assert card["calibration"] == {**calibration.fitted_on, "bias": calibration.bias, "weights": calibration.weights}
    assert np.load(output / "cohort.npy").shape == (3, 512) and card["cohort"]["speakers"] == 3  # Speakers 19, 26 and 27.
    assert card["frontend"] == {"trim": "reference", "pad": "exact", "training_pad": "zeros"}
    assert FrontEnd.of_checkpoint(output / "model.h5") == FrontEnd("reference", "exact")
    assert card["evaluation_with_training_pad"]["test-other"]["num_trials"] == 28
    assert card["training"]["train_seconds"] == 12.0 and card["training"]["train_windows"] > 0
    assert (output / "README.md").read_text() == render_model_card(card)
    embedding = keras.models.load_model(output / "model.h5", compile=False)
    assert embedding.output.shape == (None, 512) and getattr(embedding, "optimizer", None) is None


def test_a_shipment_that_fails_half_way_leaves_the_shipped_model_and_its_card_as_they_were(trained_mtl, tmp_path):
    shipped = shutil.copytree(REPO / "pretrained", tmp_path / "shipped")
    before = digests(shipped)
    calibration_dir = shutil.copytree(COMMON_VOICE, tmp_path / "calibration")
    (calibration_dir / "fbc91278" / "broken.mp3").write_bytes(b"ID3, but no audio")  # The calibration stops with an error, after model.h5 is written.
    with pytest.raises(AudioError, match="broken.mp3"):
        ship_model(trained_mtl / "checkpoints-mtl" / "best.h5", [TEST_OTHER], shipped, "python cli.py train ...", ["samples"],
                   calibration_audio_dirs=[str(calibration_dir)])
    assert digests(shipped) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration", "shipped"]  # No half-shipped folder left beside it.


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_shipping_into_a_folder_with_other_files_is_refused_before_any_work(tmp_path):
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="shipped: holds notes.txt, not part of a shipped model"):
        ship_model(tmp_path / "missing" / "best.h5", [TEST_OTHER], tmp_path / "shipped", "python cli.py train ...", ["samples"])
    assert [p.name for p in (tmp_path / "shipped").iterdir()] == ["notes.txt"]


def test_a_learning_curve_has_one_row_per_snapshot_and_corpus(tmp_path):
    run = tmp_path / "checkpoints-softmax"
    (run / "snapshots").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"steps_per_epoch": 10, "batch_size": 12, "trim": "reference", "pad": "zeros"}))
    for epoch in (5, 10):
        DeepSpeakerModel(model_size="small").m.save(run / "snapshots" / f"epoch_{epoch:04d}.h5")
    written = learning_curve(run, [TEST_OTHER], tmp_path / "curve.csv")
    with open(written, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["epoch"], r["train_windows"], r["corpus"]) for r in rows] == [("5", "600", "test-other"), ("10", "1200", "test-other")]
    assert all(0 <= float(r["eer"]) <= 1 for r in rows)


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory) -> Path:
    """A working dir holding a softmax run of the small model, trained with `cli.py train` (in this process, as
    test_voxceleb_recipe's: a child Python would spend a third of the fixture importing TensorFlow) on the bundled
    LibriSpeech samples (speakers 19, 26 and 27) with the test-other speakers 1688 and 1998 set aside for calibration."""
    from click.testing import CliRunner

    import cli

    working_dir = tmp_path_factory.mktemp("calibrated_run")
    result = CliRunner().invoke(cli.cli, [
        "train", "--audio_dir", str(REPO / "samples" / "LibriSpeech"), "--working_dir", str(working_dir), "--mode", "softmax", "--model_size", "small",
        "--epochs", "1", "--steps_per_epoch", "1", "--batch_size", "12", "--validation_steps", "1", "--input_workers", "1",
        "--calibration_speakers", "1688,1998"])
    assert result.exit_code == 0, result.output
    return working_dir


def test_ship_model_fits_the_calibration_on_the_runs_calibration_speakers_and_verify_decides_on_its_llr(calibrated_run, tmp_path, invoke_cli):
    shipped = tmp_path / "shipped"
    result = invoke_cli("ship-model", "--checkpoint_file", calibrated_run / "checkpoints-softmax" / "best.h5", "--eval_audio_dir", COMMON_VOICE,
                        "--output_dir", shipped, "--training_corpus", "LibriSpeech samples", "--command", "python cli.py train ...")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in shipped.iterdir()) == sorted(SHIPPED_FILES)
    calibration = read_calibration(shipped / "model.h5")
    fitted_on = calibration.fitted_on
    assert fitted_on["speakers"] == ["1688", "1998"] and fitted_on["corpora"] == ["LibriSpeech"]
    assert fitted_on["crop_seconds"] == [1.0, 2.0, 4.0, "whole"] and fitted_on["num_trials"] == 4 * 28  # All pairs of 8 files, 4 ways.
    card = json.loads((shipped / "model_card.json").read_text())
    assert card["calibration"] == {**fitted_on, "bias": calibration.bias, "weights": calibration.weights}
    assert card["decision"] == {"on": "llr", "prior": 0.5, "cost_miss": 1.0, "cost_false_alarm": 1.0, "llr_threshold": 0.0}
    assert "eer_threshold" not in card and "eer_threshold" in card["evaluation"]["corpora"]["CommonVoice-fa"]  # A measurement only.
    assert {"cllr", "act_dcf_001", "half_total_error"} <= set(card["evaluation"]["corpora"]["CommonVoice-fa"])
    assert set(card["by_duration"]["CommonVoice-fa"]) == {"1", "2", "4", "whole"}
    assert card["by_duration"]["CommonVoice-fa"]["whole"]["cllr"] == card["evaluation"]["corpora"]["CommonVoice-fa"]["cllr"]
    cohort = np.load(shipped / "cohort.npy")
    assert cohort.dtype == np.float16 and cohort.shape == (3, 512) and card["cohort"]["speakers"] == 3  # One row per training speaker.
    np.testing.assert_allclose(np.linalg.norm(cohort.astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert (shipped / "README.md").read_text() == render_model_card(card) and "Speakers: 1688, 1998." in result.stdout
    frontend = card["frontend"]  # --embedding_pad auto: chosen on the calibration split, every padding tried.
    assert set(frontend["pad_chosen_on"]["mean_eer"]) == {"zeros", "repeat", "exact"} and frontend["training_pad"] == "zeros"
    assert frontend["pad_chosen_on"]["mean_eer"][frontend["pad"]] == min(frontend["pad_chosen_on"]["mean_eer"].values())
    assert FrontEnd.of_checkpoint(shipped / "model.h5").pad == frontend["pad"] and "chosen on the calibration split" in render_model_card(card)

    verified = invoke_cli("verify", PHILIPPE / "PhilippeRemy_001.wav", PHILIPPE / "PhilippeRemy_002.wav", "--checkpoint_file", shipped / "model.h5")
    assert verified.exit_code == 0, verified.output
    match = re.fullmatch(r"score = \S+, LLR = (\S+), P\(same speaker\) = \S+ -> (same speaker|different speakers) \(Bayes threshold 0\.000 on the LLR: .*\)",
                         verified.stdout.strip())
    assert match, verified.stdout
    assert match[2] == ("same speaker" if float(match[1]) >= 0 else "different speakers")


def test_the_embedding_padding_is_chosen_by_the_calibration_splits_mean_eer_and_a_tie_keeps_the_first_candidate(calibrated_run):
    checkpoint = calibrated_run / "checkpoints-softmax" / "best.h5"
    speakers = {s: [u.path for u in us] for s, us in index_corpus(TEST_OTHER).utterances_by_speaker().items()}
    # The whole test-other samples are all longer than a window after the trim: no padding changes an embedding.
    whole = choose_embedding_pad(checkpoint, speakers, ["repeat", "zeros", "exact"], crop_seconds=())
    assert len(set(whole.mean_eer.values())) == 1 and whole.pad == "repeat"
    assert choose_embedding_pad(checkpoint, speakers, ["exact", "repeat"], crop_seconds=()).pad == "exact"
    short = choose_embedding_pad(checkpoint, speakers, ["repeat", "zeros", "exact"], crop_seconds=(0.5,))  # Every crop padded.
    assert list(short.mean_eer) == ["repeat", "zeros", "exact"] and all(0 <= eer <= 1 for eer in short.mean_eer.values())
    assert short.pad == next(pad for pad, eer in short.mean_eer.items() if eer == min(short.mean_eer.values()))


def test_the_calibration_fitted_from_the_pad_choosers_scores_is_the_one_calibrate_model_fits_with_that_padding(calibrated_run, tmp_path):
    run = calibrated_run / "checkpoints-softmax"
    speakers = {s: [u.path for u in us] for s, us in index_corpus(COMMON_VOICE).utterances_by_speaker().items()}
    choice = choose_embedding_pad(run / "best.h5", speakers, ["repeat", "zeros", "exact"], crop_seconds=(1.0,))
    assert [len(scores) for scores, *_ in choice.by_crop] == [len(choice.by_crop[0][0])] * 2  # A 1 s crop, then whole files, same trials.
    reused, embedded_again = tmp_path / "reused", tmp_path / "embedded_again"
    for folder in (reused, embedded_again):
        folder.mkdir()
        shutil.copy(run / "best.h5", folder / "model.h5")
        config = json.loads((run / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "embedding_pad": choice.pad}))
    from_choice = write_calibration(reused / "model.h5", choice.by_crop, list(speakers), "Common Voice samples", (1.0,), seed=0)
    fitted = calibrate_checkpoint(embedded_again / "model.h5", speakers, "Common Voice samples", (1.0,))
    assert read_calibration(reused / "model.h5") == from_choice
    assert from_choice.fitted_on == fitted.fitted_on and from_choice.fitted_on["crop_seconds"] == [1.0, "whole"]
    assert from_choice.bias == pytest.approx(fitted.bias, abs=1e-6)
    assert from_choice.weights == pytest.approx(fitted.weights, abs=1e-6)


def test_ship_model_refuses_calibration_speakers_that_a_figure_scores_before_any_work(calibrated_run, tmp_path, invoke_cli):
    result = invoke_cli("ship-model", "--checkpoint_file", calibrated_run / "checkpoints-softmax" / "best.h5", "--eval_audio_dir", TEST_OTHER,
                        "--output_dir", tmp_path / "shipped", "--training_corpus", "samples", "--command", "python cli.py train ...")
    assert result.exit_code == 1
    assert "calibration speakers 1688, 1998 are also in an --eval_audio_dir" in result.stderr
    assert not (tmp_path / "shipped").exists() and list(tmp_path.iterdir()) == []


def test_ship_model_without_a_calibration_split_or_folder_refuses_naming_the_option_before_any_work(trained_mtl, tmp_path, invoke_cli):
    result = invoke_cli("ship-model", "--checkpoint_file", trained_mtl / "checkpoints-mtl" / "best.h5", "--eval_audio_dir", TEST_OTHER,
                        "--output_dir", tmp_path / "shipped", "--training_corpus", "samples", "--command", "python cli.py train ...")
    assert result.exit_code == 1
    assert "the run set no speakers aside for calibration" in result.stderr and "--calibration_audio_dir" in result.stderr
    assert "--calibration_speakers" in result.stderr
    assert list(tmp_path.iterdir()) == []  # Neither the shipped folder nor a staging folder.


def test_calibrate_model_fits_on_the_speakers_the_run_set_aside(calibrated_run, tmp_path, invoke_cli):
    run = calibrated_run / "checkpoints-softmax"
    for name in ("best.h5", "config.json", "speakers.json"):
        shutil.copy(run / name, tmp_path / name)
    result = invoke_cli("calibrate-model", "--checkpoint_file", tmp_path / "best.h5", "--working_dir", calibrated_run, "--durations", "2",
                        "--description", "the run's calibration speakers")
    assert result.exit_code == 0, result.output
    fitted_on = read_calibration(tmp_path / "best.h5").fitted_on
    assert fitted_on["speakers"] == ["1688", "1998"] and fitted_on["num_trials"] == 2 * 28 and fitted_on["crop_seconds"] == [2.0, "whole"]
    assert "fitted on 56 trials of 2 speakers (the run's calibration speakers)" in result.stdout


def test_card_durations_keeps_the_weights_of_the_calibration_ship_model_recorded_and_replaces_another(tmp_path):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    card = json.loads((REPO / "pretrained" / "model_card.json").read_text())
    fitted_on = json.loads((REPO / "pretrained" / "calibration.json").read_text())["fitted_on"]
    card["calibration"] = {**fitted_on, "bias": -0.9, "weights": {"score": 4.3, "log_shorter_seconds": 0.5, "log_longer_seconds": -0.7}}
    (shipped / "model_card.json").write_text(json.dumps(card))
    report = {"corpora": {"test-other": {"eer": 0.01, "num_trials": 28}}, "durations": {"test-other": {"1": {"eer": 0.1, "num_trials": 28}}}}
    (tmp_path / "same.json").write_text(json.dumps({**report, "calibration": fitted_on}))
    assert record_duration_figures(shipped, tmp_path / "same.json", "")["calibration"] == card["calibration"]
    assert "LLR = -0.900" in (shipped / "README.md").read_text()
    (tmp_path / "other.json").write_text(json.dumps({**report, "calibration": {**fitted_on, "seed": 1}}))
    assert record_duration_figures(shipped, tmp_path / "other.json", "")["calibration"] == {**fitted_on, "seed": 1}
