"""calibration.py: duration-aware calibration of scores to log-likelihood ratios, its file, and its use by `verify`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from calibration import Calibration, CalibrationError, decide, fit_calibration, pair_features, posterior, read_calibration, speakers_to_calibrate_on
from eval_metrics import bayes_threshold

REPO = Path(__file__).resolve().parent.parent
PHILIPPE = REPO / "samples" / "PhilippeRemy"


def test_a_trial_gets_one_llr_whichever_side_comes_first():
    calibration = Calibration(-1.0, {"score": 5.0, "log_shorter_seconds": 0.5, "log_longer_seconds": -0.25})
    scores, short, long = np.array([0.3, 0.7]), np.array([1.0, 2.0]), np.array([8.0, 3.0])
    np.testing.assert_allclose(calibration.llr(scores, short, long), calibration.llr(scores, long, short))
    np.testing.assert_allclose(pair_features(scores, long, short)[:, 1:], np.log([[1.0, 8.0], [2.0, 3.0]]))
    np.testing.assert_allclose(calibration.llr(scores, short, long), -1 + 5 * scores + 0.5 * np.log(short) - 0.25 * np.log(long))


def test_the_fitted_llr_is_the_log_ratio_of_the_score_densities_whatever_the_share_of_same_speaker_trials():
    """Scores N(1, 0.5) for the same speaker, N(0, 0.5) for others: LLR = 4 score - 2, at 10 % same-speaker trials
    as at 50 %, since the classes are weighted to the explicit prior of 0.5."""
    rng = np.random.default_rng(0)
    for share in (0.1, 0.5):
        labels = rng.random(10_000) < share
        scores = rng.normal(labels.astype(float), 0.5)
        seconds = np.full(len(scores), 2.0)
        calibration = fit_calibration(scores, labels, seconds, seconds)
        np.testing.assert_allclose(calibration.llr(np.array([0.0, 0.5, 1.0]), seconds[:3], seconds[:3]), [-2.0, 0.0, 2.0], atol=0.25)


def test_the_probability_of_the_same_speaker_moves_with_the_prior_as_bayes_says():
    assert posterior(0.0, 0.5) == pytest.approx(0.5)
    assert posterior(np.log(9), 0.5) == pytest.approx(0.9)
    assert posterior(np.log(9), 0.1) == pytest.approx(0.5)  # Odds 9 x 1/9.


def test_a_given_threshold_overrides_the_calibrated_decision_and_no_calibration_decides_on_the_score():
    calibration = Calibration(0.0, {"score": 10.0, "log_shorter_seconds": 0.0, "log_longer_seconds": 0.0})
    calibrated = decide(0.1, (2.0, 2.0), calibration, 0.5, 1.0, 1.0, None, 0.4)
    assert calibrated.same_speaker and calibrated.llr == pytest.approx(1.0) and "Bayes threshold" in calibrated.basis
    assert not decide(0.1, (2.0, 2.0), calibration, 0.01, 1.0, 1.0, None, 0.4).same_speaker  # LLR 1 < log 99.
    assert not decide(0.1, (2.0, 2.0), calibration, 0.5, 1.0, 1.0, 0.2, 0.4).same_speaker
    uncalibrated = decide(0.5, (2.0, 2.0), None, 0.5, 1.0, 1.0, None, 0.4)
    assert uncalibrated.same_speaker and uncalibrated.llr is None and uncalibrated.line() == "score = 0.500 -> same speaker (threshold 0.400)"


def test_a_calibration_file_is_read_back_as_written_and_a_broken_one_is_an_error_naming_it(tmp_path):
    checkpoint = tmp_path / "model.h5"
    assert read_calibration(checkpoint) is None
    written = Calibration(-0.5, {"score": 4.0, "log_shorter_seconds": 0.3, "log_longer_seconds": -0.2}, {"description": "EmoDB"})
    written.to_json(tmp_path / "calibration.json")
    assert read_calibration(checkpoint) == written
    (tmp_path / "calibration.json").write_text(json.dumps({"features": ["score"], "bias": 0, "weights": {}}))
    with pytest.raises(CalibrationError, match=r"calibration.json: features \['score'\] are not"):
        read_calibration(checkpoint)
    (tmp_path / "calibration.json").write_text("{")
    with pytest.raises(CalibrationError, match="calibration.json: not a calibration file"):
        read_calibration(checkpoint)


def test_speakers_the_model_trained_on_are_refused_for_calibration(tmp_path, emodb_sample):
    (tmp_path / "speakers.json").write_text(json.dumps({"speakers": ["10", "99"], "held_out_speakers": []}))
    with pytest.raises(CalibrationError, match="speakers.json: 10 trained the model"):
        speakers_to_calibrate_on(tmp_path / "best.h5", None, [emodb_sample], None)
    assert sorted(speakers_to_calibrate_on(tmp_path / "best.h5", None, [emodb_sample], ["11", "13"])) == ["11", "13"]
    with pytest.raises(CalibrationError, match="set no speakers aside for calibration"):
        speakers_to_calibrate_on(tmp_path / "best.h5", None, [], None)


def test_a_run_whose_calibration_speakers_the_cache_lacks_is_refused_naming_them(tmp_path):
    from feature_cache import build_feature_cache

    build_feature_cache(Path(__file__).resolve().parents[1] / "samples" / "LibriSpeech" / "test-other", tmp_path, workers=1, progress=False)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "speakers.json").write_text(json.dumps({"speakers": ["19"], "held_out_speakers": [], "calibration_speakers": ["1688", "77"]}))
    with pytest.raises(CalibrationError, match="the feature cache lacks the calibration speakers 77 of"):
        speakers_to_calibrate_on(tmp_path / "run" / "best.h5", tmp_path, [], None)
    (tmp_path / "run" / "speakers.json").write_text(json.dumps({"speakers": ["19"], "held_out_speakers": [], "calibration_speakers": ["1688"]}))
    assert list(speakers_to_calibrate_on(tmp_path / "run" / "best.h5", tmp_path, [], None)) == ["1688"]


def test_calibrate_model_fits_on_real_audio_and_verify_prints_the_llr_and_decides_at_the_bayes_threshold(tmp_path, emodb_sample, invoke_cli):
    for name in ("model.h5", "config.json"):
        shutil.copy(REPO / "pretrained" / name, tmp_path / name)
    checkpoint = tmp_path / "model.h5"
    fitted = invoke_cli("calibrate-model", "--checkpoint_file", checkpoint, "--audio_dir", emodb_sample, "--speakers", "10,13",
                        "--durations", "1", "--description", "two EmoDB actors")
    assert fitted.exit_code == 0, fitted.output
    calibration = read_calibration(checkpoint)
    assert calibration.fitted_on["speakers"] == ["10", "13"] and calibration.fitted_on["num_trials"] == 2 * 91  # 1 s and whole.
    assert calibration.weights["score"] > 0  # A higher cosine means the same speaker more likely.
    lines = {}
    for prior in ("0.5", "0.001"):
        result = invoke_cli("verify", PHILIPPE / "PhilippeRemy_001.wav", PHILIPPE / "PhilippeRemy_002.wav", "--checkpoint_file", checkpoint, "--prior", prior)
        assert result.exit_code == 0, result.output
        lines[float(prior)] = re.fullmatch(r"score = (\S+), LLR = (\S+), P\(same speaker\) = (\S+) -> (same speaker|different speakers) \(Bayes threshold (\S+) on the LLR: .*\)",
                                           result.stdout.strip())
    for prior, match in lines.items():
        assert match, lines
        llr = float(match[2])
        assert float(match[3]) == pytest.approx(posterior(llr, prior), abs=1e-3)
        assert float(match[5]) == pytest.approx(bayes_threshold(prior), abs=1e-3)
        assert match[4] == ("same speaker" if llr >= bayes_threshold(prior) else "different speakers")
    assert lines[0.5][2] == lines[0.001][2]  # The prior moves the probability and the decision, not the evidence.
