"""plots.py: every figure is a real PNG, drawn from seeded scores and from features of real recordings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

import audio
from corpus import index_corpus
import plots
from eval_metrics import verification_metrics
from plots import pca_2d, plot_det_curve, plot_embedding_projection, plot_score_histograms

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_is_png(path: Path, min_width: int = 300, min_height: int = 300) -> None:
    assert path.is_file() and path.stat().st_size > 5_000
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width, channels = imread(path).shape
    assert width >= min_width and height >= min_height and channels in (3, 4)


@pytest.fixture(scope="module")
def trial_scores() -> tuple[np.ndarray, np.ndarray]:
    """Seeded cosine-like scores: 200 same-speaker around 0.6, 2,000 different-speaker around 0.2."""
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(200, dtype=int), np.zeros(2_000, dtype=int)]
    scores = np.r_[rng.normal(0.6, 0.15, 200), rng.normal(0.2, 0.15, 2_000)]
    return np.clip(scores, -1, 1), labels


@pytest.fixture(scope="module")
def mean_feature_embeddings() -> tuple[np.ndarray, list[str], list[str | None]]:
    """Mean filterbank vector of each bundled LibriSpeech file and PhilippeRemy file (no gender label)."""
    libri = index_corpus(SAMPLES / "LibriSpeech")
    files = [(u.path, u.speaker, libri.genders.get(u.speaker)) for u in libri.utterances]
    files += [(path, "PhilippeRemy", None) for path in sorted((SAMPLES / "PhilippeRemy").glob("*.wav"))]
    vectors = np.stack([audio.read_mfcc(path).mean(axis=0) for path, _, _ in files])
    return vectors, [speaker for _, speaker, _ in files], [gender for _, _, gender in files]


def test_score_histograms_are_a_png(trial_scores, tmp_path):
    path = plot_score_histograms(*trial_scores, 0.4, tmp_path / "figures" / "scores.png")
    assert path == tmp_path / "figures" / "scores.png"
    assert_is_png(path, min_width=600)


def drawn_threshold(monkeypatch, scores, labels, threshold, path) -> float:
    """x of the vertical line plot_score_histograms draws, read from the figure it saves."""
    saved = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda figure, target: saved.append(figure) or save(figure, target))
    assert_is_png(plot_score_histograms(scores, labels, threshold, path))
    (axes,) = saved[0].axes
    (line,) = axes.lines  # The histograms are patches; the threshold is the only line.
    x_start, x_end = line.get_xdata()
    assert x_start == x_end  # Vertical.
    assert axes.get_legend_handles_labels()[1][-1] == f"threshold = {x_start:.3f}"
    return float(x_start)


def test_score_histograms_default_to_the_eer_threshold(trial_scores, tmp_path, monkeypatch):
    scores, labels = trial_scores
    threshold = drawn_threshold(monkeypatch, scores, labels, None, tmp_path / "scores.png")
    assert threshold == verification_metrics(scores, labels).eer_threshold
    # And it is where false acceptances and false rejections balance, on these scores.
    false_acceptance = np.mean(scores[labels == 0] >= threshold)
    false_rejection = np.mean(scores[labels == 1] < threshold)
    assert abs(false_acceptance - false_rejection) < 0.01 and 0.05 < false_rejection < 0.15


def test_score_histograms_draw_a_given_threshold(trial_scores, tmp_path, monkeypatch):
    assert drawn_threshold(monkeypatch, *trial_scores, 0.25, tmp_path / "scores.png") == 0.25


def test_det_curve_is_a_png(trial_scores, tmp_path):
    assert_is_png(plot_det_curve(*trial_scores, tmp_path / "det.png"))


def test_det_curve_of_a_perfect_and_a_useless_scorer_still_draws(tmp_path):
    labels = np.r_[np.ones(10, dtype=int), np.zeros(90, dtype=int)]
    assert_is_png(plot_det_curve(np.r_[np.full(10, 0.9), np.full(90, 0.1)], labels, tmp_path / "perfect.png"))
    assert_is_png(plot_det_curve(np.full(100, 0.5), labels, tmp_path / "useless.png"))


def test_embedding_projection_of_real_recordings_is_a_two_panel_png(mean_feature_embeddings, tmp_path):
    vectors, speakers, genders = mean_feature_embeddings
    assert None in genders and "F" in genders and "M" in genders  # All three colours are drawn.
    path = plot_embedding_projection(vectors, speakers, genders, tmp_path / "projection.png")
    height, width, _ = imread(path).shape
    assert_is_png(path)
    assert width > 1.5 * height  # Two panels side by side.


def test_projection_keeps_the_two_directions_of_largest_variance():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(500, 3)) * [10.0, 3.0, 0.1] + [5.0, -2.0, 7.0]
    points, shares = pca_2d(data)
    assert points.shape == (500, 2)
    np.testing.assert_allclose(points.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(points.std(axis=0), [10.0, 3.0], rtol=0.1)
    assert shares[0] > 0.9 and shares.sum() < 1


def test_projection_refuses_mismatched_labels(mean_feature_embeddings, tmp_path):
    vectors, speakers, genders = mean_feature_embeddings
    with pytest.raises(ValueError, match="one speaker and one gender per embedding"):
        plot_embedding_projection(vectors, speakers[:-1], genders, tmp_path / "bad.png")
