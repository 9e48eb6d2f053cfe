"""score_norm.py: mean-centring and adaptive s-norm against a cohort, on cases worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from score_norm import normalised_scores, normalised_trial_scores

COHORT = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
FIRST, SECOND = np.array([[1.0, 0.0]]), np.array([[0.6, 0.8]])


def test_asnorm_standardises_the_score_by_each_sides_top_k_cohort_scores_and_averages_the_two():
    # Cosine 0.6. First side's cohort scores 1, 0, -1: top 2 mean 0.5, sd 0.5 -> 0.2.
    # Second side's 0.6, 0.8, -0.6: top 2 mean 0.7, sd 0.1 -> -1. Their mean: -0.4.
    assert normalised_scores(FIRST, SECOND, "asnorm", COHORT, top_k=2)[0] == pytest.approx(-0.4)
    # With all three (k larger than the cohort): means 0 and 4/15, sds sqrt(2/3) and sqrt(0.4533...).
    everything = [(0.6 - np.mean(s)) / np.std(s) for s in ([1, 0, -1], [0.6, 0.8, -0.6])]
    assert normalised_scores(FIRST, SECOND, "asnorm", COHORT, top_k=50)[0] == pytest.approx(np.mean(everything))


def test_mean_centring_takes_the_cohorts_mean_embedding_off_both_sides_before_the_cosine():
    centre = np.array([0.0, 1 / 3])
    a, b = FIRST[0] - centre, SECOND[0] - centre
    assert normalised_scores(FIRST, SECOND, "mean", COHORT)[0] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert normalised_scores(FIRST, SECOND, "none", None)[0] == pytest.approx(0.6)


def test_a_normalisation_without_a_cohort_or_of_an_unknown_name_is_refused():
    with pytest.raises(ValueError, match="needs a cohort"):
        normalised_scores(FIRST, SECOND, "asnorm", None)
    with pytest.raises(ValueError, match="one of none, mean, asnorm; got 'znorm'"):
        normalised_scores(FIRST, SECOND, "znorm", COHORT)


def test_verify_with_a_score_normalisation_asks_for_a_threshold_before_any_work(invoke_cli):
    result = invoke_cli("verify", "samples/PhilippeRemy/PhilippeRemy_001.wav", "samples/PhilippeRemy/PhilippeRemy_002.wav", "--score_norm", "asnorm")
    assert result.exit_code == 1 and "--score_norm asnorm: give --threshold" in result.output


def test_build_cohort_writes_one_unit_float16_mean_embedding_per_speaker_beside_the_checkpoint(tmp_path, invoke_cli):
    import shutil
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    for name in ("model.h5", "config.json"):
        shutil.copy(repo / "pretrained" / name, tmp_path / name)
    for speaker in ("19", "26", "27"):  # Two files of each of three training speakers.
        (tmp_path / "speakers" / speaker).mkdir(parents=True)
        for path in sorted((repo / "samples" / "LibriSpeech" / "train-clean-100" / speaker).rglob("*.flac"))[:2]:
            shutil.copy(path, tmp_path / "speakers" / speaker / path.name)
    result = invoke_cli("build-cohort", "--checkpoint_file", tmp_path / "model.h5", "--audio_dir", tmp_path / "speakers")
    assert result.exit_code == 0, result.output
    cohort = np.load(tmp_path / "cohort.npy")
    assert cohort.dtype == np.float16 and cohort.shape == (3, 512)  # Speakers 19, 26, 27.
    np.testing.assert_allclose(np.linalg.norm(cohort.astype(np.float32), axis=1), 1.0, atol=2e-3)


def test_trials_given_as_rows_of_one_file_table_score_as_the_same_trials_given_side_by_side():
    rng = np.random.default_rng(0)
    files, cohort = rng.normal(size=(6, 8)), rng.normal(size=(20, 8))
    first, second = np.array([0, 0, 1, 2, 5, 3]), np.array([1, 2, 3, 4, 0, 5])
    for method in ("none", "mean", "asnorm"):
        np.testing.assert_allclose(normalised_trial_scores(files, first, second, method, cohort, top_k=5),
                                   normalised_scores(files[first], files[second], method, cohort, top_k=5), rtol=1e-12)
