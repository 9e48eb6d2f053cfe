"""eval_metrics.py: the reference Deep Speaker protocol and the standard EER / minDCF, on cases worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from eval_metrics import (
    seeds_to_exclude_zero,
    det_curve,
    operating_points,
    reference_labels,
    reference_metrics,
    reference_thresholds,
    threshold_sweep,
    verification_metrics,
)

# ----------------------------------------------------------------------------------------------
# The reference protocol.


def two_speaker_matrix() -> np.ndarray:
    """2 speakers x (1 positive + 99 negatives), worked by hand below.

    Speaker A: positive 0.8; negatives one 0.6, 98 at 0.1.  Speaker B: positive 0.3; negatives three
    0.35, 96 at 0.1.  So 2 targets, 198 non-targets: one at 0.6, three at 0.35, 194 at 0.1.
    Accepting score > t:
      0.1 <= t < 0.3 : TP 2, FP 4  -> F = 2*2/(4+4+0) = 0.5,  FAR = 4/198, FRR 0   (|FRR-FAR| = 4/198, the smallest)
      0.3 <= t < 0.35: TP 1, FP 4  -> F = 2/(2+4+1) = 0.286
      0.35<= t < 0.6 : TP 1, FP 1  -> F = 2/(2+1+1) = 0.5
      0.6 <= t < 0.8 : TP 1, FP 0  -> F = 2/(2+0+1) = 2/3 (best), TPR 0.5, ACC (1+198)/200 = 0.995, |FRR-FAR| = 0.5
    Best F at t = 0.600 (the negative at exactly 0.6 is rejected by the strict >);
    EER at t = 0.100: (0 + 4/198) / 2 = 1/99.
    """
    scores = np.full((2, 100), 0.1)
    scores[0, 0], scores[0, 1] = 0.8, 0.6
    scores[1, 0], scores[1, 1:4] = 0.3, 0.35
    return scores


def test_reference_metrics_of_a_hand_built_two_speaker_matrix():
    metrics = reference_metrics(two_speaker_matrix())
    assert metrics.f_measure == pytest.approx(2 / 3)
    assert metrics.true_positive_rate == pytest.approx(0.5)
    assert metrics.accuracy == pytest.approx(0.995)
    assert metrics.equal_error_rate == pytest.approx(1 / 99)
    assert metrics.threshold_best_f == pytest.approx(0.6)
    assert metrics.threshold_eer == pytest.approx(0.1)


def test_reference_metrics_print_the_reference_line():
    line = reference_metrics(two_speaker_matrix()).format()
    assert line == "f-measure = 0.667, true positive rate = 0.500, accuracy = 0.995, equal error rate = 0.010"


def test_reference_layout_labels_are_the_default():
    scores = two_speaker_matrix()
    assert reference_metrics(scores) == reference_metrics(scores, reference_labels(2, 100))
    assert reference_labels(2, 100).sum() == 2 and reference_labels(2, 100)[:, 0].all()


def test_reference_accepts_strictly_above_the_threshold():
    # A score equal to a threshold is rejected at that threshold, as with the reference's np.greater:
    # at t = 0.2 the two 0.5s are accepted and the 0.2 is not; at t = 0.5 nothing is.
    sweep = threshold_sweep(np.array([0.5, 0.5, 0.2]), np.array([1, 0, 0]), np.array([0.2, 0.5]))
    np.testing.assert_array_equal(sweep.tp, [1, 0])
    np.testing.assert_array_equal(sweep.fp, [1, 0])


def test_reference_thresholds_are_0_to_1_in_steps_of_a_thousandth_on_the_decimal_grid():
    thresholds = reference_thresholds()
    assert len(thresholds) == 1001 and thresholds[0] == 0.0 and thresholds[-1] == 1.0
    assert thresholds[600] == 0.6 and thresholds[300] == 0.3  # Exactly the literals.


def test_threshold_sweep_rates_agree_with_a_loop_over_thresholds():
    rng = np.random.default_rng(3)
    scores = rng.uniform(-0.2, 1.0, (20, 100))
    labels = reference_labels(20, 100)
    sweep = threshold_sweep(scores, labels)
    for k in (0, 137, 500, 999):
        accepted = scores > sweep.thresholds[k]
        tp, fp = np.sum(accepted & (labels == 1)), np.sum(accepted & (labels == 0))
        fn, tn = np.sum(~accepted & (labels == 1)), np.sum(~accepted & (labels == 0))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn)
        assert (sweep.tp[k], sweep.fp[k], sweep.fn[k], sweep.tn[k]) == (tp, fp, fn, tn)
        assert sweep.f_measure[k] == pytest.approx(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        assert sweep.accuracy[k] == pytest.approx((tp + tn) / scores.size)
        assert sweep.false_acceptance_rate[k] == pytest.approx(fp / (fp + tn))
        assert sweep.false_rejection_rate[k] == pytest.approx(fn / (tp + fn))


def test_reference_metrics_of_a_perfect_scorer():
    scores = np.full((5, 100), 0.2)
    scores[:, 0] = 0.9
    metrics = reference_metrics(scores)
    assert (metrics.f_measure, metrics.true_positive_rate, metrics.accuracy, metrics.equal_error_rate) == (1.0, 1.0, 1.0, 0.0)


def test_reference_metrics_need_positives_and_negatives():
    with pytest.raises(ValueError, match="shape"):
        reference_metrics(np.zeros(100))
    with pytest.raises(ValueError, match="no same-speaker"):
        reference_metrics(np.zeros((2, 100)), np.zeros((2, 100)))


# ----------------------------------------------------------------------------------------------
# EER and minDCF on trial lists.


def test_eer_and_min_dcf_of_six_trials_by_hand():
    # Sorted by score: T T N T N N. Operating points (FAR, FRR), accepting score >= t:
    # t=inf (0, 1); 0.9 (0, 2/3); 0.8 (0, 1/3); 0.7 (1/3, 1/3) <- FAR = FRR here; 0.6 (1/3, 0); 0.5 (2/3, 0); 0.4 (1, 0).
    # EER = 1/3 at t = 0.7.  minDCF(p): min of p*FRR + (1-p)*FAR over the points, / p:
    # p = 0.01: FRR + 99 FAR -> the best is (0, 1/3): 1/3.  p = 0.05: FRR + 19 FAR -> also 1/3.
    metrics = verification_metrics([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1, 1, 0, 1, 0, 0])
    assert metrics.eer == pytest.approx(1 / 3)
    assert metrics.eer_threshold == pytest.approx(0.7)
    assert metrics.min_dcf_001 == pytest.approx(1 / 3)
    assert metrics.min_dcf_005 == pytest.approx(1 / 3)
    assert (metrics.num_target, metrics.num_nontarget) == (3, 3)


def test_eer_interpolates_and_min_dcf_depends_on_the_prior_by_hand():
    # One target at 0.5, one non-target at 0.9, 19 non-targets at 0.1.
    # Points (FAR, FRR): inf (0, 1); 0.9 (1/20, 1); 0.5 (1/20, 0); 0.1 (1, 0).
    # FRR - FAR goes 0.95 -> -0.05 between t=0.9 and t=0.5: alpha = 0.95 / 1.0 = 0.95,
    # EER = 1/20 + 0.95 * 0 = 0.05 (and FRR = 1 - 0.95 = 0.05), threshold = 0.9 + 0.95 * (0.5 - 0.9) = 0.52.
    # p = 0.01: FRR + 99 FAR at the points: 1, 5.95, 4.95, 99 -> 1.0 (reject everything).
    # p = 0.05: FRR + 19 FAR: 1, 1.95, 0.95, 19 -> 0.95 (accept the target, pay one false alarm).
    metrics = verification_metrics([0.5, 0.9] + [0.1] * 19, [1, 0] + [0] * 19)
    assert metrics.eer == pytest.approx(0.05)
    assert metrics.eer_threshold == pytest.approx(0.52)
    assert metrics.min_dcf_001 == pytest.approx(1.0)
    assert metrics.min_dcf_005 == pytest.approx(0.95)


def test_tied_target_and_non_target_scores_give_eer_one_half():
    # One point (FAR 1, FRR 0) after (0, 1): the diagonal segment crosses at 0.5.
    metrics = verification_metrics([0.5, 0.5], [1, 0])
    assert metrics.eer == pytest.approx(0.5)
    assert metrics.eer_threshold == pytest.approx(0.5)


def test_perfect_separation_gives_eer_zero_and_min_dcf_zero():
    scores = np.r_[np.linspace(0.6, 0.9, 30), np.linspace(-0.5, 0.5, 300)]
    labels = np.r_[np.ones(30, int), np.zeros(300, int)]
    metrics = verification_metrics(scores, labels)
    assert metrics.eer == 0.0
    assert metrics.min_dcf_001 == 0.0 and metrics.min_dcf_005 == 0.0
    assert 0.5 < metrics.eer_threshold <= 0.6


def test_fully_reversed_scores_give_eer_one_and_min_dcf_one():
    scores = np.r_[np.linspace(-0.5, 0.0, 30), np.linspace(0.1, 0.9, 300)]
    labels = np.r_[np.ones(30, int), np.zeros(300, int)]
    metrics = verification_metrics(scores, labels)
    assert metrics.eer == pytest.approx(1.0)
    assert metrics.min_dcf_001 == pytest.approx(1.0) and metrics.min_dcf_005 == pytest.approx(1.0)


def test_random_scores_give_eer_near_one_half():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200_000)
    metrics = verification_metrics(rng.uniform(-1, 1, len(labels)), labels)
    assert metrics.eer == pytest.approx(0.5, abs=0.01)
    assert metrics.min_dcf_001 == pytest.approx(1.0, abs=0.01)


def test_eer_and_min_dcf_are_invariant_to_increasing_transforms_of_the_scores():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 5_000)
    scores = rng.normal(size=len(labels)) + 1.5 * labels
    original = verification_metrics(scores, labels)
    for transform in (np.exp, lambda x: 3 * x - 7, lambda x: np.arctan(x) ** 3):
        transformed = verification_metrics(transform(scores), labels)
        assert transformed.eer == pytest.approx(original.eer, abs=1e-12)
        assert transformed.min_dcf_001 == pytest.approx(original.min_dcf_001, abs=1e-12)
        assert transformed.min_dcf_005 == pytest.approx(original.min_dcf_005, abs=1e-12)


def brute_force_rates(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FAR and FRR at every score taken as threshold, and below all, one comparison matrix."""
    thresholds = np.r_[np.unique(scores), np.inf]
    accepted = scores[None, :] >= thresholds[:, None]
    far = np.sum(accepted & (labels == 0), axis=1) / np.sum(labels == 0)
    frr = np.sum(~accepted & (labels == 1), axis=1) / np.sum(labels == 1)
    return far, frr


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_eer_agrees_with_brute_force_over_all_thresholds_within_one_trial(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.uniform(size=600) < 0.2).astype(int)
    scores = np.round(rng.normal(size=600) + labels, 2)  # Rounded: ties between classes happen.
    far, frr = brute_force_rates(scores, labels)
    at_crossing = np.argmin(np.abs(far - frr))
    brute_eer = (far[at_crossing] + frr[at_crossing]) / 2
    smaller_class = min(labels.sum(), len(labels) - labels.sum())
    assert verification_metrics(scores, labels).eer == pytest.approx(brute_eer, abs=1 / smaller_class)
    # And the minDCF, a minimum over the same operating points, is exactly the brute-force one.
    for p, field in ((0.01, "min_dcf_001"), (0.05, "min_dcf_005")):
        brute_dcf = np.min(p * frr + (1 - p) * far) / min(p, 1 - p)
        assert getattr(verification_metrics(scores, labels), field) == pytest.approx(brute_dcf)


def test_exact_eer_matches_scikit_learn_roc_curve_interpolation():
    metrics_module = pytest.importorskip("sklearn.metrics")
    from scipy.interpolate import interp1d
    from scipy.optimize import brentq

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 3_000)
    scores = rng.normal(size=len(labels)) + labels
    fpr, tpr, _ = metrics_module.roc_curve(labels, scores)
    expected = brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)
    assert verification_metrics(scores, labels).eer == pytest.approx(expected, abs=1e-9)


def test_det_curve_runs_from_accept_nothing_to_accept_everything():
    far, frr = det_curve([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1, 1, 0, 1, 0, 0])
    np.testing.assert_allclose(far, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(frr, [1, 2 / 3, 1 / 3, 1 / 3, 0, 0, 0])


def test_operating_points_merge_tied_scores():
    points = operating_points([0.5, 0.5, 0.5, 0.1], [1, 0, 1, 0])
    np.testing.assert_array_equal(points.thresholds, [np.inf, 0.5, 0.1])
    np.testing.assert_allclose(points.far, [0, 0.5, 1])
    np.testing.assert_allclose(points.frr, [1, 0, 0])


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, 0.2, 0.3], [1, 0], "same shape"),
        ([0.1, 0.2], [1, 1], "no different-speaker"),
        ([0.1, 0.2], [0, 0], "no same-speaker"),
        ([0.1, 0.2], [1, 2], r"0 \(different speakers\) or 1"),
        ([0.1, np.nan], [1, 0], "finite"),
        ([], [], "no scores"),
    ],
)
def test_bad_inputs_are_refused_with_what_is_wrong(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        verification_metrics(scores, labels)


def test_verification_metrics_print_one_line():
    line = verification_metrics([0.5, 0.9] + [0.1] * 19, [1, 0] + [0] * 19).format()
    assert line.startswith("EER = 5.00% (threshold 0.5200), minDCF(p=0.01) = 1.0000, minDCF(p=0.05) = 0.9500")


def test_balanced_accuracy_gives_always_the_majority_class_one_half():
    from eval_metrics import balanced_accuracy

    actual = np.array([False, False, False, True])  # Three male, one female.
    assert balanced_accuracy(np.zeros(4, bool), actual) == 0.5
    assert balanced_accuracy(np.array([False, True, False, True]), actual) == (2 / 3 + 1) / 2
    with pytest.raises(ValueError, match="one shape"):
        balanced_accuracy(np.zeros(3, bool), actual)


def test_paired_t_interval_over_three_seeds_matches_students_t_and_one_seed_has_none():
    from eval_metrics import paired_t_interval

    interval = paired_t_interval(np.array([0.01, 0.02, 0.03]))
    half = 4.302652729911275 * 0.01 / np.sqrt(3)  # t(0.975, 2 degrees of freedom) x standard error.
    assert (interval.difference, interval.low, interval.high) == pytest.approx((0.02, 0.02 - half, 0.02 + half))
    assert not interval.excludes_zero()
    assert paired_t_interval(np.array([0.05, 0.06, 0.055])).excludes_zero()
    single = paired_t_interval(np.array([0.04]))
    assert (single.difference, single.low, single.high) == (pytest.approx(0.04), None, None) and not single.excludes_zero()


def test_paired_bootstrap_of_eer_is_zero_for_the_same_model_and_excludes_zero_for_a_better_one():
    from eval_metrics import fast_eer, paired_bootstrap_eer_difference

    rng = np.random.default_rng(0)
    labels = np.repeat([True, False], 500)
    weak = np.where(labels, 0.4, 0.0) + rng.normal(0, 0.3, 1000)
    strong = np.where(labels, 1.5, 0.0) + rng.normal(0, 0.3, 1000)
    same = paired_bootstrap_eer_difference([(labels, weak, weak)], np.random.default_rng(1), resamples=200)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    better = paired_bootstrap_eer_difference([(labels, weak, strong), (labels, weak, strong)], np.random.default_rng(1), resamples=200)
    assert better.difference == pytest.approx(fast_eer(strong, labels) - fast_eer(weak, labels))
    assert better.low <= better.difference <= better.high < 0  # The stronger model's EER is lower on every resample.


def test_paired_bootstrap_of_accuracy_resamples_speakers_within_each_label():
    from eval_metrics import balanced_accuracy, paired_bootstrap_accuracy_difference

    labels = np.array(["M"] * 14 + ["F"] * 7)  # One label and one prediction per unseen speaker.
    weak = labels.copy()
    weak[[0, 1, 2, 14, 15]] = np.where(labels[[0, 1, 2, 14, 15]] == "M", "F", "M")  # 3 men and 2 women wrong.
    same = paired_bootstrap_accuracy_difference([(labels, weak, weak)], np.random.default_rng(1), resamples=200)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    better = paired_bootstrap_accuracy_difference([(labels, weak, labels)], np.random.default_rng(1), resamples=400)
    assert better.difference == pytest.approx(1.0 - balanced_accuracy(weak, labels))
    assert 0 < better.low <= better.difference <= better.high


def test_a_resample_within_labels_keeps_the_count_of_each_label_and_draws_with_replacement():
    from eval_metrics import resample_within_labels

    labels = np.array(["M"] * 14 + ["F"] * 7)
    rng = np.random.default_rng(0)
    resamples = [resample_within_labels(labels, rng) for _ in range(100)]
    assert all(sorted(labels[rows]) == sorted(labels) for rows in resamples)  # 14 men and 7 women, every time,
    assert any(len(set(rows)) < len(rows) for rows in resamples)  # some of them drawn twice.


def test_seeds_to_exclude_zero_is_where_the_t_interval_would_exclude_zero_at_the_spread_seen():
    from scipy.stats import t

    differences = np.array([-0.010, 0.001, -0.009])  # Mean -0.006, SD 0.0061: the interval over 3 seeds spans zero.
    mean, spread = abs(differences.mean()), differences.std(ddof=1)

    def half_width(n: int) -> float:
        return t.ppf(0.975, n - 1) * spread / np.sqrt(n)

    needed = seeds_to_exclude_zero(differences)
    assert needed == 7 and half_width(needed) < mean <= half_width(needed - 1)
    assert seeds_to_exclude_zero(np.array([0.05, 0.06, 0.07])) == 3  # Excludes zero already: the seeds there are.
    assert seeds_to_exclude_zero(np.array([0.1])) is None  # One seed shows no spread,
    assert seeds_to_exclude_zero(np.array([0.01, -0.01])) is None  # and no number of seeds decides a mean of zero.


# ----------------------------------------------------------------------------------------------
# Calibrated scores: actual DCF, Cllr, minCllr.


def test_bayes_threshold_is_zero_at_even_odds_and_log_99_at_a_prior_of_one_percent():
    from eval_metrics import bayes_threshold

    assert bayes_threshold(0.5) == 0.0
    assert bayes_threshold(0.01) == pytest.approx(np.log(99))
    assert bayes_threshold(0.5, cost_miss=10) == pytest.approx(-np.log(10))


def test_actual_dcf_counts_the_misses_and_false_alarms_of_the_decisions_taken_at_the_threshold():
    from eval_metrics import actual_dcf

    llrs, labels = np.array([2.0, -1.0, -3.0, 0.5]), np.array([1, 1, 0, 0])
    # At 0: one of two targets missed, one of two non-targets accepted: 0.5 * 0.5 + 0.5 * 0.5, over the trivial 0.5.
    assert actual_dcf(llrs, labels, 0.0, 0.5) == pytest.approx(1.0)
    # At -2: no miss, one false alarm in two: 0.5 * 0.5 / 0.5.
    assert actual_dcf(llrs, labels, -2.0, 0.5) == pytest.approx(0.5)
    # At p = 0.25 and threshold -2: 0.75 * 0.5 / min(0.25, 0.75).
    assert actual_dcf(llrs, labels, -2.0, 0.25) == pytest.approx(1.5)


def test_cllr_is_one_bit_for_llrs_of_zero_and_log2_of_four_thirds_for_llrs_of_plus_and_minus_log_3():
    from eval_metrics import cllr

    assert cllr(np.zeros(4), np.array([1, 0, 1, 0])) == pytest.approx(1.0)
    assert cllr(np.array([np.log(3), -np.log(3)]), np.array([1, 0])) == pytest.approx(np.log2(4 / 3))


def test_min_cllr_pools_adjacent_violators_and_ignores_any_increasing_transform_of_the_scores():
    from eval_metrics import min_cllr

    scores, labels = np.array([0.0, 1.0, 2.0, 3.0]), np.array([0, 1, 0, 1])
    # PAV posteriors 0, 0.5, 0.5, 1 at a prior of 0.5: the two middle trials cost a bit each, the others nothing.
    assert min_cllr(scores, labels) == pytest.approx(0.5)
    assert min_cllr(np.exp(3 * scores), labels) == pytest.approx(0.5)
    assert min_cllr(scores, np.array([0, 0, 1, 1])) == pytest.approx(0.0)
    assert min_cllr(scores, np.array([1, 1, 0, 0])) == pytest.approx(1.0)  # Reversed scores: the best is to ignore them.


def test_min_cllr_is_at_most_the_cllr_of_any_calibration_of_the_same_scores():
    from eval_metrics import cllr, min_cllr

    rng = np.random.default_rng(0)
    labels = np.repeat([1, 0], [200, 800])
    scores = rng.normal(np.where(labels == 1, 2.0, 0.0), 1.0)
    assert min_cllr(scores, labels) < cllr(2 * scores - 2, labels)  # The LLR of these two Gaussians.
    assert min_cllr(scores, labels) < cllr(scores, labels)
