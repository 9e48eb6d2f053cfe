"""Evaluation figures: score histograms, DET curve, 2-D projection of embeddings. PNG files.

Figures are drawn on `matplotlib.figure.Figure` with an explicit Agg canvas, not through pyplot:
no global state, no display needed, safe in worker processes and tests. Each function takes arrays
and an output path, writes the PNG (creating its folder) and returns the path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import norm

from constants import PLOT_DPI
from eval_metrics import det_curve, verification_metrics
from fileio import write_atomically

SAME_COLOUR = "tab:green"
DIFFERENT_COLOUR = "tab:red"
GENDER_COLOURS = {"F": "tab:red", "M": "tab:blue"}
UNKNOWN_GENDER_COLOUR = "0.6"
DET_TICKS = np.array([0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.98, 0.99])
MAX_SPEAKER_LEGEND_ENTRIES = 20


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=PLOT_DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda handle: figure.savefig(handle, format="png", dpi=PLOT_DPI))
    return path


def plot_score_histograms(scores: np.ndarray, labels: np.ndarray, threshold: float | None, path: str | os.PathLike) -> Path:
    """Histograms of same- and different-speaker scores, the threshold (EER's if None) as a line.

    Densities, not counts: the reference protocol has 99 different-speaker scores per same-speaker
    one, and counts would flatten the same-speaker histogram.
    """
    metrics = verification_metrics(scores, labels)
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    threshold = metrics.eer_threshold if threshold is None else float(threshold)
    bins = np.linspace(scores.min(), scores.max(), 51) if scores.max() > scores.min() else 10
    figure = _new_figure(7, 4.5)
    axes = figure.subplots()
    axes.hist(scores[labels], bins=bins, density=True, alpha=0.6, color=SAME_COLOUR, label=f"same speaker ({labels.sum()})")
    axes.hist(scores[~labels], bins=bins, density=True, alpha=0.6, color=DIFFERENT_COLOUR, label=f"different speakers ({(~labels).sum()})")
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold = {threshold:.3f}")
    axes.set_xlabel("cosine score")
    axes.set_ylabel("density")
    axes.set_title(f"Score distributions (EER = {100 * metrics.eer:.2f}%)")
    axes.legend()
    figure.tight_layout()
    return _save(figure, path)


def _probit(rates: np.ndarray) -> np.ndarray:
    """Normal deviate of a rate; 0 and 1 are clipped so they land just outside the axes."""
    return norm.ppf(np.clip(rates, 1e-7, 1 - 1e-7))


def plot_det_curve(scores: np.ndarray, labels: np.ndarray, path: str | os.PathLike) -> Path:
    """DET curve: FRR against FAR on normal-deviate axes (straight lines for Gaussian scores), EER marked.

    The axes span the ticks around the data: from the smallest non-zero error rate (1% at most,
    0.01% at least) up to 40% (99% when the EER is above 30%).
    """
    far, frr = det_curve(scores, labels)
    eer = verification_metrics(scores, labels).eer
    nonzero = np.concatenate([far[far > 0], frr[frr > 0]])
    smallest = max(min(float(nonzero.min()), 0.01), DET_TICKS[0])  # nonzero holds at least FAR 1 and FRR 1.
    low = DET_TICKS[DET_TICKS <= smallest].max()
    high = 0.99 if eer > 0.3 else 0.4
    ticks = DET_TICKS[(DET_TICKS >= low) & (DET_TICKS <= high)]
    labels_text = [f"{100 * tick:g}" for tick in ticks]
    figure = _new_figure(5.5, 5.5)
    axes = figure.subplots()
    axes.plot(_probit(far), _probit(frr), color="tab:blue", label="DET")
    axes.plot(_probit(ticks[[0, -1]]), _probit(ticks[[0, -1]]), color="0.7", linestyle=":", label="FAR = FRR")
    if 0 < eer < 1:
        axes.plot(_probit(eer), _probit(eer), "o", color="tab:red", label=f"EER = {100 * eer:.2f}%")
    axes.set_xticks(_probit(ticks), labels_text)
    axes.set_yticks(_probit(ticks), labels_text)
    axes.set_xlim(_probit(low), _probit(high))
    axes.set_ylim(_probit(low), _probit(high))
    axes.set_xlabel("false acceptance rate (%)")
    axes.set_ylabel("false rejection rate (%)")
    axes.set_title("DET curve")
    axes.grid(True, color="0.9")
    axes.set_aspect("equal")
    axes.legend(loc="upper right")
    figure.tight_layout()
    return _save(figure, path)


def pca_2d(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) projection on the first two principal components, and their shares of the variance."""
    centred = np.asarray(embeddings, dtype=np.float64) - np.mean(embeddings, axis=0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    projection = centred @ components[:2].T
    if projection.shape[1] < 2:  # One-dimensional input: a flat second axis.
        projection = np.pad(projection, ((0, 0), (0, 2 - projection.shape[1])))
    variance = singular**2
    shares = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
    return projection, np.pad(shares, (0, 2 - len(shares)))


def _gender_key(gender: str | None) -> str | None:
    """'F' or 'M' (any case), else None: anything else counts as unknown."""
    key = gender.strip().upper() if isinstance(gender, str) else None
    return key if key in GENDER_COLOURS else None


def plot_embedding_projection(
    embeddings: np.ndarray, speakers: Sequence[str], genders: Sequence[str | None], path: str | os.PathLike
) -> Path:
    """PCA of the embeddings in two panels: coloured by speaker, and by gender (unknown in grey)."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(embeddings) < 2:
        raise ValueError(f"embeddings must be (n >= 2, dimensions), got shape {embeddings.shape}")
    if not len(speakers) == len(genders) == len(embeddings):
        raise ValueError(
            f"need one speaker and one gender per embedding: "
            f"{len(embeddings)} embeddings, {len(speakers)} speakers, {len(genders)} genders"
        )
    points, shares = pca_2d(embeddings)
    figure = _new_figure(12, 5.5)
    by_speaker, by_gender = figure.subplots(1, 2)
    names = list(dict.fromkeys(speakers))
    palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
    speakers_array = np.asarray([str(s) for s in speakers])
    for k, name in enumerate(names):
        mask = speakers_array == str(name)
        by_speaker.scatter(points[mask, 0], points[mask, 1], s=18, color=palette(k % palette.N), label=str(name))
    if len(names) <= MAX_SPEAKER_LEGEND_ENTRIES:
        by_speaker.legend(title="speaker", fontsize="small", loc="best")
    by_speaker.set_title(f"By speaker ({len(names)})")
    keys = [_gender_key(g) for g in genders]
    for gender, text in (("F", "female"), ("M", "male"), (None, "unknown")):
        mask = np.array([key == gender for key in keys])
        colour = GENDER_COLOURS.get(gender, UNKNOWN_GENDER_COLOUR)
        if mask.any():
            by_gender.scatter(points[mask, 0], points[mask, 1], s=18, color=colour, label=f"{text} ({mask.sum()})")
    by_gender.legend(title="gender", fontsize="small", loc="best")
    by_gender.set_title("By gender")
    for axes in (by_speaker, by_gender):
        axes.set_xlabel(f"PC 1 ({100 * shares[0]:.0f}% of variance)")
        axes.set_ylabel(f"PC 2 ({100 * shares[1]:.0f}% of variance)")
    figure.suptitle(f"Embeddings projected by PCA ({len(embeddings)} utterances)")
    figure.tight_layout()
    return _save(figure, path)


def plot_learning_curve(csv_path: str | os.PathLike, path: str | os.PathLike) -> Path:
    """EER (log scale) per held-out corpus against training windows, from a learning-curve CSV."""
    import csv

    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    figure = _new_figure(7, 4.5)
    axes = figure.subplots()
    for corpus in sorted({row["corpus"] for row in rows}):
        points = sorted((int(row["train_windows"]), 100 * float(row["eer"])) for row in rows if row["corpus"] == corpus)
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=corpus)
    axes.set_xlabel("training windows")
    axes.set_ylabel("EER (%)")
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return _save(figure, path)


def write_score_plots(plots_dir: str | os.PathLike, scores: np.ndarray, labels: np.ndarray, threshold: float) -> None:
    from plots import plot_det_curve, plot_score_histograms

    Path(plots_dir).mkdir(parents=True, exist_ok=True)
    plot_score_histograms(scores, labels, threshold, Path(plots_dir) / "score_histograms.png")
    plot_det_curve(scores, labels, Path(plots_dir) / "det_curve.png")


def write_projection_plot(plots_dir: str | os.PathLike, embeddings: np.ndarray, speakers: list[str], genders: list[str | None]) -> None:
    from plots import plot_embedding_projection

    Path(plots_dir).mkdir(parents=True, exist_ok=True)
    plot_embedding_projection(embeddings, speakers, genders, Path(plots_dir) / "embedding_projection.png")
