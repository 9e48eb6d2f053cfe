"""Cosine scores to log-likelihood ratios, aware of how much speech each side of a trial had.

A cosine score means more on two long recordings than on two one-second clips, so one threshold
cannot serve both. As WeSpeaker's quality-measure calibration does, a logistic regression maps the
score and the log durations of the shorter and the longer side (in that order, so a trial and its
mirror get one LLR) to a log-likelihood ratio. The classes are weighted to an explicit prior of 0.5,
so the fitted log-odds are the LLR itself; a user's prior enters only at the decision
(`posterior`, `eval_metrics.bayes_threshold`).

It must be fitted on trials among speakers set aside for it, never on the speakers of a figure
it will be judged by: `fit_calibration` records what it was fitted on, and `calibrate-model`
(see `calibrate_checkpoint`) writes it beside the checkpoint as `calibration.json`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from constants import CALIBRATION_CROP_SECONDS, CALIBRATION_FILE_NAME, CALIBRATION_REGULARISATION
from fileio import write_json_atomically

FEATURES = ("score", "log_shorter_seconds", "log_longer_seconds")
PRIOR = 0.5  # The prior the classes are weighted to: the fitted log-odds are then the LLR.


class CalibrationError(ValueError):
    """A calibration file that cannot be used; the message names the file."""


def pair_features(scores: np.ndarray, seconds_a: np.ndarray, seconds_b: np.ndarray) -> np.ndarray:
    """(trials, 3): the score, then the log seconds of the shorter and of the longer side."""
    seconds = np.stack([np.asarray(seconds_a, dtype=np.float64), np.asarray(seconds_b, dtype=np.float64)], axis=1)
    if np.any(seconds <= 0):
        raise ValueError("every side of a trial needs a positive duration")
    log_seconds = np.sort(np.log(seconds), axis=1)
    return np.column_stack([np.asarray(scores, dtype=np.float64), log_seconds])


@dataclass(frozen=True)
class Calibration:
    """LLR = bias + the weights . `pair_features`; `fitted_on` says on what trials (speakers, corpus, crops)."""

    bias: float
    weights: dict[str, float]
    fitted_on: dict = field(default_factory=dict)

    def llr(self, scores: np.ndarray, seconds_a: np.ndarray, seconds_b: np.ndarray) -> np.ndarray:
        """The log-likelihood ratio of each trial, natural log."""
        return self.bias + pair_features(scores, seconds_a, seconds_b) @ np.array([self.weights[name] for name in FEATURES])

    def to_json(self, path: str | os.PathLike) -> Path:
        write_json_atomically(path, {"features": list(FEATURES), "prior": PRIOR, **asdict(self)})
        return Path(path)


def posterior(llrs: np.ndarray, prior: float) -> np.ndarray:
    """P(same speaker) of trials with these LLRs at a prior of `prior`: the logistic of LLR + logit(prior)."""
    if not 0 < prior < 1:
        raise ValueError(f"the prior must be strictly between 0 and 1, got {prior}")
    return 1 / (1 + np.exp(-(np.asarray(llrs, dtype=np.float64) + np.log(prior / (1 - prior)))))


def fit_calibration(scores: np.ndarray, labels: np.ndarray, seconds_a: np.ndarray, seconds_b: np.ndarray, fitted_on: dict | None = None) -> Calibration:
    """Logistic regression of the labels on `pair_features`, each class weighing half (the prior 0.5)."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        raise ValueError("a calibration needs both same-speaker and different-speaker trials")
    weights = np.where(labels, 0.5 / labels.mean(), 0.5 / (1 - labels.mean()))
    model = LogisticRegression(C=CALIBRATION_REGULARISATION, max_iter=1000)
    model.fit(pair_features(scores, seconds_a, seconds_b), labels, sample_weight=weights)
    return Calibration(float(model.intercept_[0]), dict(zip(FEATURES, map(float, model.coef_[0]))), fitted_on or {})


def calibration_file(checkpoint_file: str | os.PathLike) -> Path:
    return Path(checkpoint_file).parent / CALIBRATION_FILE_NAME


def read_calibration(checkpoint_file: str | os.PathLike) -> Calibration | None:
    """The calibration beside a checkpoint, or None where there is none; a broken file is a CalibrationError naming it."""
    path = calibration_file(checkpoint_file)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("features") != list(FEATURES):
            raise CalibrationError(f"{path}: features {data.get('features')} are not {list(FEATURES)}; refit it with `cli.py calibrate-model`")
        return Calibration(float(data["bias"]), {name: float(data["weights"][name]) for name in FEATURES}, data.get("fitted_on", {}))
    except (ValueError, KeyError, TypeError) as error:
        if isinstance(error, CalibrationError):
            raise
        raise CalibrationError(f"{path}: not a calibration file ({error}); refit it with `cli.py calibrate-model`") from None


TrialScores = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # Scores, labels, seconds of each first side, of each second side.


def trial_scores_by_crop(embedder, trials: Sequence, crop_seconds: Sequence[float], seed: int, features: dict | None = None) -> list[TrialScores]:
    """The `TrialScores` of `trials` on centred crops of each of `crop_seconds`, then on whole files, every crop
    with its own generator seeded `seed`; `features` (file -> trimmed features), shared between calls, reads each file once."""
    from verification import EmbeddingsOnce, trial_scores_and_seconds

    features = {} if features is None else features
    return [trial_scores_and_seconds(trials, EmbeddingsOnce(embedder, "mean", np.random.default_rng(seed), crop_seconds=seconds, features=features))
            for seconds in [*crop_seconds, None]]


def write_calibration(checkpoint_file: str | os.PathLike, by_crop: Sequence[TrialScores], speakers: Sequence[str], description: str,
                      crop_seconds: Sequence[float], seed: int, corpora: Sequence[str] = ()) -> Calibration:
    """Fit a calibration on the split's `trial_scores_by_crop` and write it beside the checkpoint; `fitted_on` records
    the speakers (`description` says what they are), the crops, the trials and, where given, their corpora."""
    scores, labels, seconds_a, seconds_b = (np.concatenate(column) for column in zip(*by_crop))
    fitted_on = {
        "description": description, "speakers": sorted(speakers), "crop_seconds": list(crop_seconds) + ["whole"],
        "num_trials": int(len(scores)), "num_target_trials": int(labels.sum()), "seed": seed,
    } | ({"corpora": list(corpora)} if corpora else {})
    calibration = fit_calibration(scores, labels, seconds_a, seconds_b, fitted_on)
    calibration.to_json(calibration_file(checkpoint_file))
    return calibration


def calibrate_checkpoint(
    checkpoint_file: str | os.PathLike, speakers: dict[str, list[Path]], description: str, crop_seconds: Sequence[float] = CALIBRATION_CROP_SECONDS,
    num_trials: int | None = None, seed: int = 0, precision: str = "float32", corpora: Sequence[str] = (),
) -> Calibration:
    """Fit the checkpoint's calibration on trials among `speakers` (set aside for it: no figure may use them),
    scored whole and on centred crops of `crop_seconds`, every crop with the same seeded trials; write it beside
    the checkpoint and return it. `description` says what the speakers are, for the file and the model card;
    `corpora`, where given, the corpora they come from (recorded as `fitted_on["corpora"]`)."""
    from inference import Embedder
    from trials import generate_trials

    embedder = Embedder.from_checkpoint(checkpoint_file, precision=precision)
    trials = generate_trials({s: [str(p) for p in paths] for s, paths in speakers.items()}, num_trials, seed)
    return write_calibration(checkpoint_file, trial_scores_by_crop(embedder, trials, crop_seconds, seed), list(speakers), description,
                             crop_seconds, seed, corpora)


@dataclass(frozen=True)
class PadChoice:
    """The padding of short clips a shipped model embeds with, the calibration split's mean EER of every candidate,
    and the chosen padding's `trial_scores_by_crop`, so the calibration is fitted without embedding them again."""

    pad: str
    mean_eer: dict[str, float]
    by_crop: list[TrialScores] = field(default_factory=list, repr=False, compare=False)


def choose_embedding_pad(
    checkpoint_file: str | os.PathLike, speakers: dict[str, list[Path]], candidates: Sequence[str],
    crop_seconds: Sequence[float] = CALIBRATION_CROP_SECONDS, num_trials: int | None = None, seed: int = 0, precision: str = "float32",
) -> PadChoice:
    """The candidate padding of clips shorter than a window with the lowest EER on trials among `speakers` (set aside
    for calibration: never the speakers of a figure), averaged over centred crops of `crop_seconds` and whole files,
    every candidate on the same seeded trials as `calibrate_checkpoint` draws. Padding only changes clips under a
    window (1.6 s), so the short crops decide; on a tie the first candidate (the training padding) is kept."""
    from eval_metrics import equal_error_rate, operating_points
    from inference import Embedder, FrontEnd, load_embedding_model
    from trials import generate_trials

    model = load_embedding_model(checkpoint_file)
    trim = FrontEnd.of_checkpoint(checkpoint_file).trim
    trials = generate_trials({s: [str(p) for p in paths] for s, paths in speakers.items()}, num_trials, seed)
    features: dict = {}  # The trimmed features of each file, read once for every candidate and crop.
    by_pad = {pad: trial_scores_by_crop(Embedder(model, frontend=FrontEnd(trim, pad), precision=precision), trials, crop_seconds, seed, features)
              for pad in dict.fromkeys(candidates)}
    mean_eer = {pad: float(np.mean([equal_error_rate(operating_points(scores, labels))[0] for scores, labels, _, _ in by_crop]))
                for pad, by_crop in by_pad.items()}
    chosen = min(mean_eer, key=mean_eer.get)  # min keeps the first of equal values.
    return PadChoice(chosen, mean_eer, by_pad[chosen])


@dataclass(frozen=True)
class Decision:
    """`verify`'s answer: the score, its LLR and P(same speaker) (None without a calibration), and on what it decided."""

    score: float
    llr: float | None
    probability: float | None
    same_speaker: bool
    basis: str  # What the decision compared, e.g. "Bayes threshold 0.000 on the LLR: prior 0.5, costs 1 (miss) / 1 (false alarm)".

    def line(self) -> str:
        decision = "same speaker" if self.same_speaker else "different speakers"
        if self.llr is None:
            return f"score = {self.score:.3f} -> {decision} ({self.basis})"
        return f"score = {self.score:.3f}, LLR = {self.llr:.3f}, P(same speaker) = {self.probability:.3f} -> {decision} ({self.basis})"


def decide(score: float, seconds: tuple[float, float], calibration: Calibration | None, prior: float, cost_miss: float, cost_false_alarm: float,
           threshold: float | None, uncalibrated_threshold: float) -> Decision:
    """Same speaker or not: at the Bayes threshold of the prior and costs on the calibrated LLR; on the score at
    `threshold` where one is given; on the score at `uncalibrated_threshold` where there is no calibration."""
    from eval_metrics import bayes_threshold

    if calibration is None:
        limit = uncalibrated_threshold if threshold is None else threshold
        return Decision(score, None, None, score >= limit, f"threshold {limit:.3f}")
    llr = float(calibration.llr(np.array([score]), np.array([seconds[0]]), np.array([seconds[1]]))[0])
    probability = float(posterior(llr, prior))
    if threshold is not None:
        return Decision(score, llr, probability, score >= threshold, f"threshold {threshold:.3f} on the score, as given")
    bayes = bayes_threshold(prior, cost_miss, cost_false_alarm)
    return Decision(score, llr, probability, llr >= bayes,
                    f"Bayes threshold {bayes:.3f} on the LLR: prior {prior:g}, costs {cost_miss:g} (miss) / {cost_false_alarm:g} (false alarm)")


def speakers_to_calibrate_on(checkpoint_file: str | os.PathLike, working_dir: str | os.PathLike | None,
                             audio_dirs: Sequence[str | os.PathLike], only: Sequence[str] | None) -> dict[str, list[Path]]:
    """The speakers a calibration is fitted on: those of `audio_dirs` where given, else the run's calibration
    speakers (its speakers.json) in the cache of `working_dir`, every one of them; `only` keeps those named. A training
    speaker of the run is refused: its scores are not those of the unseen speakers the calibration will serve."""
    from corpus import index_corpus
    from feature_cache import cached_entries

    run_file = Path(checkpoint_file).parent / "speakers.json"
    run = json.loads(run_file.read_text()) if run_file.is_file() else {}
    if audio_dirs:
        speakers: dict[str, list[Path]] = {}
        for directory in audio_dirs:
            for speaker, utterances in index_corpus(directory).utterances_by_speaker().items():
                speakers.setdefault(speaker, []).extend(u.path for u in utterances)
    elif working_dir is not None and run.get("calibration_speakers"):
        entries = cached_entries(working_dir)[0]
        missing = [s for s in run["calibration_speakers"] if s not in entries]
        if missing:
            raise CalibrationError(f"{working_dir}: the feature cache lacks the calibration speakers {', '.join(missing)} of {run_file}; "
                                   "pass the --working_dir the run trained from")
        speakers = {s: entries[s] for s in run["calibration_speakers"]}
    else:
        raise CalibrationError(f"{run_file}: the run set no speakers aside for calibration (train with --calibration_speakers), "
                               "so pass --working_dir of such a run or --audio_dir of speakers no figure uses")
    if only:
        missing = sorted(set(only) - set(speakers))
        if missing:
            raise CalibrationError(f"--speakers names speakers not found: {', '.join(missing)}")
        speakers = {s: speakers[s] for s in only}
    trained = sorted(set(speakers) & set(run.get("speakers", [])))
    if trained:
        raise CalibrationError(f"{run_file}: {', '.join(trained[:10])} trained the model; calibrate on speakers it never saw")
    return speakers
