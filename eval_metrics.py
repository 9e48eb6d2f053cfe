"""Speaker verification metrics: the reference Deep Speaker protocol and the standard EER / minDCF.

Two families, kept apart on purpose because they answer different questions:

* `reference_metrics` reproduces the numbers the Deep Speaker paper and code report (F-measure,
  true positive rate and accuracy at the best-F threshold, and a grid-search EER) on the
  "1 positive + 99 negatives per speaker" score matrix, so results compare with the published ones.
* `verification_metrics` gives the numbers the rest of the field reports on a trial list (VoxCeleb,
  NIST SRE): the exact EER from the ROC and the normalised minimum detection cost.

Everything is vectorised: scores are sorted once and counts at every threshold come from
`searchsorted` / cumulative sums, so a 2,484 x 100 matrix or a million trials take milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from constants import BOOTSTRAP_RESAMPLES, CONFIDENCE_LEVEL, DCF_COST_FALSE_ALARM, DCF_COST_MISS, MIN_DCF_P_TARGETS, THRESHOLD_STEP

# ----------------------------------------------------------------------------------------------
# Input validation (shared by both families).


def _validated(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat float64 scores and bool labels, or a ValueError that says what is wrong."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels must have the same shape, got {scores.shape} and {labels.shape}")
    if scores.size == 0:
        raise ValueError("no scores given")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"scores must be finite numbers, got {np.count_nonzero(~np.isfinite(scores))} NaN or infinite values")
    if not np.all((labels == 0) | (labels == 1)):
        bad = np.unique(labels[(labels != 0) & (labels != 1)])[:5]
        raise ValueError(f"labels must be 0 (different speakers) or 1 (same speaker), got {bad.tolist()}")
    labels = labels.astype(bool)
    num_target = int(labels.sum())
    if num_target == 0 or num_target == labels.size:
        missing = "same-speaker (label 1)" if num_target == 0 else "different-speaker (label 0)"
        raise ValueError(f"both classes are needed, but there are no {missing} trials among {labels.size}")
    return scores.ravel(), labels.ravel()


# ----------------------------------------------------------------------------------------------
# The reference Deep Speaker protocol.


def reference_thresholds(step: float = THRESHOLD_STEP) -> np.ndarray:
    """0, step, ..., 1 (1,001 values for 0.001).

    Computed as i / n so every threshold is the double nearest its decimal value (0.3 == 300/1000),
    which keeps hand-made scores such as 0.6 exactly on the grid.
    """
    num_steps = int(round(1.0 / step))
    return np.arange(num_steps + 1) / num_steps


def reference_labels(num_speakers: int, num_columns: int) -> np.ndarray:
    """The reference layout: one row per speaker, column 0 is the positive, the others negatives."""
    labels = np.zeros((num_speakers, num_columns), dtype=np.int8)
    labels[:, 0] = 1
    return labels


@dataclass(frozen=True)
class ThresholdSweep:
    """Confusion counts and the rates derived from them at each threshold (arrays of equal length)."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray

    @property
    def precision(self) -> np.ndarray:
        """TP / (TP + FP); 0 where nothing is accepted, as in the reference."""
        accepted = self.tp + self.fp
        return np.divide(self.tp, accepted, out=np.zeros(len(self.tp)), where=accepted > 0)

    @property
    def true_positive_rate(self) -> np.ndarray:
        """Recall: TP / (TP + FN)."""
        return self.tp / (self.tp + self.fn)

    @property
    def f_measure(self) -> np.ndarray:
        """2PR / (P + R), written as 2TP / (2TP + FP + FN): the same value, and 0 (not 0/0) when TP is 0."""
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn)

    @property
    def accuracy(self) -> np.ndarray:
        return (self.tp + self.tn) / (self.tp + self.fp + self.fn + self.tn)

    @property
    def false_acceptance_rate(self) -> np.ndarray:
        """FAR = FP / (FP + TN)."""
        return self.fp / (self.fp + self.tn)

    @property
    def false_rejection_rate(self) -> np.ndarray:
        """FRR = FN / (TP + FN)."""
        return self.fn / (self.tp + self.fn)


def threshold_sweep(scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | None = None) -> ThresholdSweep:
    """Confusion counts at every threshold, a trial being accepted when `score > threshold`.

    Strictly greater, as the reference (`np.greater(sims, threshold)`), so published numbers are
    reproduced even for scores that fall exactly on the grid. Counts come from `searchsorted` on the
    sorted scores of each class: O((n + t) log n), no (n, t) matrix.
    """
    scores, labels = _validated(scores, labels)
    thresholds = reference_thresholds() if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    target = np.sort(scores[labels])
    nontarget = np.sort(scores[~labels])
    fn = np.searchsorted(target, thresholds, side="right")  # Targets with score <= threshold: rejected.
    tn = np.searchsorted(nontarget, thresholds, side="right")
    return ThresholdSweep(thresholds, len(target) - fn, len(nontarget) - tn, fn, tn)


@dataclass(frozen=True)
class ReferenceMetrics:
    """The reference's report: F, TPR and accuracy at the best-F threshold, and its grid EER."""

    f_measure: float
    true_positive_rate: float
    accuracy: float
    equal_error_rate: float
    threshold_best_f: float
    threshold_eer: float

    def format(self, digits: int = 3) -> str:
        """The reference's line, e.g. `f-measure = 0.789, true positive rate = 0.733, accuracy = 0.996, equal error rate = 0.043`."""
        return (
            f"f-measure = {self.f_measure:.{digits}f}, true positive rate = {self.true_positive_rate:.{digits}f}, "
            f"accuracy = {self.accuracy:.{digits}f}, equal error rate = {self.equal_error_rate:.{digits}f}"
        )

    def __str__(self) -> str:
        return self.format()


def reference_metrics(scores: np.ndarray, labels: np.ndarray | None = None, step: float = THRESHOLD_STEP) -> ReferenceMetrics:
    """The Deep Speaker evaluation of a (speakers, 100) cosine score matrix.

    `labels=None` means the reference layout (column 0 positive, the rest negatives). Over the
    thresholds 0..1 (`step` apart), accepting `score > threshold`: the best F-measure and the TPR
    and accuracy at its threshold; and the EER as the reference computes it, (FRR + FAR) / 2 at the
    threshold where |FRR - FAR| is smallest. Ties go to the lowest threshold, like `np.argmax` and
    the reference's strict `<` in its loop.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if labels is None:
        if scores.ndim != 2 or scores.shape[1] < 2:
            raise ValueError(f"without labels, scores must be (speakers, 1 positive + negatives), got shape {scores.shape}")
        labels = reference_labels(*scores.shape)
    sweep = threshold_sweep(scores, labels, reference_thresholds(step))
    best_f = int(np.argmax(sweep.f_measure))
    frr, far = sweep.false_rejection_rate, sweep.false_acceptance_rate
    eer_index = int(np.argmin(np.abs(frr - far)))
    return ReferenceMetrics(
        f_measure=float(sweep.f_measure[best_f]),
        true_positive_rate=float(sweep.true_positive_rate[best_f]),
        accuracy=float(sweep.accuracy[best_f]),
        equal_error_rate=float((frr[eer_index] + far[eer_index]) / 2),
        threshold_best_f=float(sweep.thresholds[best_f]),
        threshold_eer=float(sweep.thresholds[eer_index]),
    )


# ----------------------------------------------------------------------------------------------
# Standard verification metrics on a trial list.


@dataclass(frozen=True)
class OperatingPoints:
    """Every distinct operating point of a scorer, from 'accept nothing' to 'accept everything'.

    `thresholds[0]` is +inf (FAR 0, FRR 1); then one point per distinct score, accepting
    `score >= threshold` (the `sklearn.metrics.roc_curve` convention); the last accepts all (FAR 1,
    FRR 0). FAR never decreases and FRR never increases along the arrays.
    """

    thresholds: np.ndarray
    far: np.ndarray
    frr: np.ndarray


def operating_points(scores: np.ndarray, labels: np.ndarray) -> OperatingPoints:
    """Sort once (descending), cumulate target / non-target counts, keep the last of each tie group."""
    scores, labels = _validated(scores, labels)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    accepted_targets = np.cumsum(sorted_labels)
    accepted_nontargets = np.cumsum(~sorted_labels)
    group_ends = np.append(np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1)
    num_target, num_nontarget = accepted_targets[-1], accepted_nontargets[-1]
    far = np.concatenate([[0], accepted_nontargets[group_ends]]) / num_nontarget
    frr = np.concatenate([[num_target], num_target - accepted_targets[group_ends]]) / num_target
    return OperatingPoints(np.concatenate([[np.inf], sorted_scores[group_ends]]), far, frr)


def det_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, FRR) at every operating point, for DET plots: FAR rising from 0 to 1, FRR falling from 1 to 0."""
    points = operating_points(scores, labels)
    return points.far, points.frr


def equal_error_rate(points: OperatingPoints) -> tuple[float, float]:
    """(EER, threshold) where the piecewise-linear DET curve crosses FAR = FRR.

    The first operating point with FRR <= FAR and the one before it bound the crossing; along the
    segment between them FAR and FRR both move linearly, so the crossing is at the fraction
    alpha = d0 / (d0 - d1) of the segment (d = FRR - FAR), where EER = FAR = FRR exactly. This is
    the value `brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)` gives on `roc_curve`, without
    the root finder, and it is invariant to any increasing transform of the scores. The threshold is
    interpolated between the two points' thresholds with the same alpha (the later one when the
    segment starts at 'accept nothing', whose threshold is infinite).
    """
    gap = points.frr - points.far  # +1 at the first point, -1 at the last: a crossing always exists.
    after = int(np.argmax(gap <= 0))
    before = after - 1
    alpha = gap[before] / (gap[before] - gap[after])
    eer = points.far[before] + alpha * (points.far[after] - points.far[before])
    if before == 0:
        threshold = points.thresholds[after]
    else:
        threshold = points.thresholds[before] + alpha * (points.thresholds[after] - points.thresholds[before])
    return float(eer), float(threshold)


def min_dcf(
    points: OperatingPoints, p_target: float, cost_miss: float = DCF_COST_MISS, cost_false_alarm: float = DCF_COST_FALSE_ALARM
) -> float:
    """Normalised minimum detection cost (NIST SRE / VoxCeleb convention).

    min over operating points of C_miss * P_miss * p + C_fa * P_fa * (1 - p), divided by the cost of
    the best trivial system, min(C_miss * p, C_fa * (1 - p)); so 1.0 means no better than always
    accepting or always rejecting. Both trivial systems are among the operating points, so it is <= 1.
    """
    if not 0 < p_target < 1:
        raise ValueError(f"p_target must be strictly between 0 and 1, got {p_target}")
    cost = cost_miss * points.frr * p_target + cost_false_alarm * points.far * (1 - p_target)
    return float(cost.min() / min(cost_miss * p_target, cost_false_alarm * (1 - p_target)))


@dataclass(frozen=True)
class VerificationMetrics:
    """EER (with its threshold) and normalised minDCF at p_target 0.01 and 0.05, C_miss = C_fa = 1."""

    eer: float
    eer_threshold: float
    min_dcf_001: float
    min_dcf_005: float
    num_target: int
    num_nontarget: int

    def format(self) -> str:
        return (
            f"EER = {100 * self.eer:.2f}% (threshold {self.eer_threshold:.4f}), "
            f"minDCF(p=0.01) = {self.min_dcf_001:.4f}, minDCF(p=0.05) = {self.min_dcf_005:.4f} "
            f"on {self.num_target} same-speaker and {self.num_nontarget} different-speaker trials"
        )

    def __str__(self) -> str:
        return self.format()


def verification_metrics(scores: np.ndarray, labels: np.ndarray) -> VerificationMetrics:
    """EER and minDCF of a trial list: `scores` (higher = more alike) and `labels` (1 same speaker, 0 not)."""
    points = operating_points(scores, labels)
    eer, threshold = equal_error_rate(points)
    low_p, high_p = MIN_DCF_P_TARGETS
    labels = np.asarray(labels)
    num_target = int(np.count_nonzero(labels))
    return VerificationMetrics(
        eer=eer,
        eer_threshold=threshold,
        min_dcf_001=min_dcf(points, low_p),
        min_dcf_005=min_dcf(points, high_p),
        num_target=num_target,
        num_nontarget=int(labels.size - num_target),
    )


# ----------------------------------------------------------------------------------------------
# Calibrated scores: log-likelihood ratios, their decisions and their cost.


def bayes_threshold(p_target: float, cost_miss: float = DCF_COST_MISS, cost_false_alarm: float = DCF_COST_FALSE_ALARM) -> float:
    """The log-likelihood ratio above which accepting costs less than rejecting: log(C_fa (1 - p) / (C_miss p))."""
    if not 0 < p_target < 1:
        raise ValueError(f"p_target must be strictly between 0 and 1, got {p_target}")
    if cost_miss <= 0 or cost_false_alarm <= 0:
        raise ValueError(f"the costs of a miss and of a false alarm must be positive, got {cost_miss} and {cost_false_alarm}")
    return float(np.log(cost_false_alarm * (1 - p_target) / (cost_miss * p_target)))


def actual_dcf(
    scores: np.ndarray, labels: np.ndarray, threshold: float, p_target: float,
    cost_miss: float = DCF_COST_MISS, cost_false_alarm: float = DCF_COST_FALSE_ALARM,
) -> float:
    """Normalised detection cost of the decisions actually taken, accepting `score >= threshold`.

    `min_dcf`'s cost at one operating point, the one a deployed system uses: for log-likelihood
    ratios that is `bayes_threshold(p_target, ...)`, and actual minus minimum DCF is the cost of
    miscalibration.
    """
    scores, labels = _validated(scores, labels)
    if not 0 < p_target < 1:
        raise ValueError(f"p_target must be strictly between 0 and 1, got {p_target}")
    accepted = scores >= threshold
    p_miss, p_false_alarm = np.mean(~accepted[labels]), np.mean(accepted[~labels])
    cost = cost_miss * p_miss * p_target + cost_false_alarm * p_false_alarm * (1 - p_target)
    return float(cost / min(cost_miss * p_target, cost_false_alarm * (1 - p_target)))


def cllr(llrs: np.ndarray, labels: np.ndarray) -> float:
    """Log-likelihood-ratio cost in bits (Brummer): the mean of log2(1 + e^-llr) over same-speaker trials
    and of log2(1 + e^llr) over different-speaker ones, halved. 0 is perfect, 1 is an uninformative LLR of 0."""
    llrs, labels = _validated(llrs, labels)
    return float((np.mean(np.logaddexp(0, -llrs[labels])) + np.mean(np.logaddexp(0, llrs[~labels]))) / (2 * np.log(2)))


def optimal_posteriors(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """P(same speaker | score) of the best monotonic calibration of these trials: the pool-adjacent-violators
    (isotonic regression) fit of the labels on the scores, tied scores sharing one value."""
    from sklearn.isotonic import IsotonicRegression

    scores, labels = _validated(scores, labels)
    return IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True).fit_transform(scores, labels.astype(np.float64))


def min_cllr(scores: np.ndarray, labels: np.ndarray) -> float:
    """Cllr after the optimal monotonic calibration (`optimal_posteriors`): what the scores could give, so Cllr
    minus minCllr is the calibration loss. Any increasing transform of the scores leaves it unchanged.

    A posterior p becomes the LLR logit(p) - logit(share of same-speaker trials); written on p itself so
    that p = 1 on a same-speaker trial (and p = 0 on another) costs 0 rather than an infinity's arithmetic.
    """
    scores, labels = _validated(scores, labels)
    posteriors = optimal_posteriors(scores, labels)
    prior_odds = labels.mean() / (1 - labels.mean())
    target, nontarget = posteriors[labels], posteriors[~labels]
    target_cost = np.log2(1 + (1 - target) / target * prior_odds)  # PAV never gives a same-speaker trial p = 0.
    nontarget_cost = np.log2(1 + nontarget / (1 - nontarget) / prior_odds)  # Nor a different-speaker one p = 1.
    return float((target_cost.mean() + nontarget_cost.mean()) / 2)


def balanced_accuracy(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Mean over the classes present of the share of their items predicted right.

    Unlike plain accuracy it does not reward predicting the majority class: on unseen speakers
    that are mostly male, "always male" scores 0.5, not the male share.
    """
    predicted, actual = np.asarray(predicted), np.asarray(actual)
    if predicted.shape != actual.shape or not len(actual):
        raise ValueError(f"predicted and actual labels must be non-empty and of one shape; got {predicted.shape} and {actual.shape}")
    return float(np.mean([np.mean(predicted[actual == label] == label) for label in np.unique(actual)]))


# ----------------------------------------------------------------------------------------------
# Uncertainty of a difference between two models.


@dataclass
class Interval:
    """A difference and its confidence interval (`low`, `high` None where it cannot be computed)."""

    difference: float
    low: float | None
    high: float | None

    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def paired_t_interval(differences: np.ndarray, confidence: float = CONFIDENCE_LEVEL) -> Interval:
    """Mean of paired differences (one per seed) with Student's t interval; no interval from a single pair."""
    from scipy.stats import t

    differences = np.asarray(differences, dtype=np.float64)
    mean = float(differences.mean())
    if len(differences) < 2:
        return Interval(mean, None, None)
    half = t.ppf(0.5 + confidence / 2, len(differences) - 1) * differences.std(ddof=1) / np.sqrt(len(differences))
    return Interval(mean, mean - half, mean + half)


def seeds_to_exclude_zero(differences: np.ndarray, confidence: float = CONFIDENCE_LEVEL) -> int | None:
    """The fewest seeds at which `paired_t_interval` would exclude zero if the mean and the standard deviation of
    the paired differences stayed as seen: the smallest n >= len(differences) with t(n - 1) * sd / sqrt(n) < |mean|.

    It is the count seen where the interval excludes zero already; None where the spread cannot be
    seen (one seed) or no number of seeds would do (a mean of exactly zero). An estimate: the next
    seeds move both the mean and the spread.
    """
    from scipy.stats import norm, t

    differences = np.asarray(differences, dtype=np.float64)
    if len(differences) < 2 or differences.mean() == 0:
        return None
    mean, spread = abs(float(differences.mean())), float(differences.std(ddof=1))
    if spread == 0:
        return len(differences)
    quantile = 0.5 + confidence / 2
    n = max(len(differences), int(np.ceil((norm.ppf(quantile) * spread / mean) ** 2)))  # The normal bound: t only needs more.
    while t.ppf(quantile, n - 1) * spread / np.sqrt(n) >= mean:
        n += 1
    return n


def fast_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """`equal_error_rate` of (scores, labels) without the other operating-point figures (for bootstraps)."""
    return equal_error_rate(operating_points(scores, labels))[0]


def paired_bootstrap_difference(
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    statistic,
    rng: np.random.Generator,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE_LEVEL,
    within_labels: bool = False,
) -> Interval:
    """statistic(labels, b) - statistic(labels, a), averaged over `pairs` of (labels, a, b) on the same
    items, with a percentile interval from resampling the items (the same resample for both models of
    a pair). With `within_labels`, items are resampled within each label, so every resample keeps the
    label counts; else a resample that lacks a label of the pair is left out of it.
    """
    def resample(labels: np.ndarray, generator: np.random.Generator) -> np.ndarray:
        return resample_within_labels(labels, generator) if within_labels else generator.integers(0, len(labels), len(labels))

    def difference(generator: np.random.Generator | None) -> float:
        values = []
        for labels, a, b in pairs:
            chosen = slice(None) if generator is None else resample(labels, generator)
            if len(np.unique(labels[chosen])) < len(np.unique(labels)):
                continue
            values.append(statistic(labels[chosen], b[chosen]) - statistic(labels[chosen], a[chosen]))
        return float(np.mean(values)) if values else float("nan")

    draws = np.array([difference(rng) for _ in range(resamples)])
    low, high = np.nanpercentile(draws, [50 * (1 - confidence), 50 * (1 + confidence)])
    return Interval(difference(None), float(low), float(high))


def resample_within_labels(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of a bootstrap resample that draws, with replacement, as many items of each label as there are."""
    labels = np.asarray(labels)
    return np.concatenate([rng.choice(rows, len(rows)) for rows in (np.flatnonzero(labels == label) for label in np.unique(labels))])


def paired_bootstrap_eer_difference(
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE_LEVEL,
) -> Interval:
    """EER(b) - EER(a), averaged over `pairs` of (labels, scores_a, scores_b) on the same trials, with a
    percentile interval from resampling the trials (the same resample for both models of a pair).

    Trials share speakers and files, so they are not independent: this interval covers the choice
    of trials only, and is narrower than one that resampled speakers.
    """
    return paired_bootstrap_difference(pairs, lambda labels, scores: fast_eer(scores, labels), rng, resamples, confidence)


def paired_bootstrap_accuracy_difference(
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE_LEVEL,
) -> Interval:
    """Balanced accuracy of b minus that of a, averaged over `pairs` of (labels, predicted_a, predicted_b)
    of the same speakers (one label and one prediction each), with a percentile interval from resampling
    the speakers within each label (the same resample for both models of a pair).

    The speakers, not their files, are the items: a speaker's files share a voice, a channel and
    often a sentence, so resampling files would count one speaker's many clips as independent.
    """
    return paired_bootstrap_difference(pairs, lambda labels, predicted: balanced_accuracy(predicted, labels), rng, resamples, confidence,
                                       within_labels=True)
