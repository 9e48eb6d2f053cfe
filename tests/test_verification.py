"""verification.py: scoring by duration (centred crops of the front end's frames) with the shipped model, on real speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from verification import EmbeddingsOnce, HeldOutCorpus, centre_crop, corpus_verification

REPO = Path(__file__).resolve().parent.parent
TEST_OTHER = REPO.parent / "shared" / "data" / "LibriSpeech" / "test-other"
FILES_PER_SPEAKER = 3


@pytest.fixture(scope="module")
def embedder():
    from inference import Embedder, pretrained_checkpoint

    return Embedder.from_checkpoint(pretrained_checkpoint())


@pytest.fixture(scope="module")
def five_test_other_women() -> HeldOutCorpus:
    """The five women of test-other, three files each: 15 files, 105 trials (men against women would be too easy to tell)."""
    speakers = {s: sorted((TEST_OTHER / s).rglob("*.flac"))[:FILES_PER_SPEAKER] for s in ("1998", "3080", "3331", "367", "533")}
    return HeldOutCorpus("test-other", str(TEST_OTHER), speakers)


def test_a_centred_crop_keeps_the_middle_frames_and_a_crop_longer_than_the_features_keeps_them_all():
    features = np.arange(10)[:, None] * np.ones((1, 64))
    np.testing.assert_array_equal(centre_crop(features, 4)[:, 0], [3, 4, 5, 6])
    np.testing.assert_array_equal(centre_crop(features, 3)[:, 0], [3, 4, 5])
    np.testing.assert_array_equal(centre_crop(features, 10), features)
    np.testing.assert_array_equal(centre_crop(features, 500), features)


def test_a_crop_longer_than_the_file_embeds_the_whole_file_and_counts_its_own_seconds(embedder, five_test_other_women):
    path = str(five_test_other_women.speakers["1998"][0])
    features: dict = {}
    whole = EmbeddingsOnce(embedder, "mean", np.random.default_rng(0), features=features)
    long_crop = EmbeddingsOnce(embedder, "mean", np.random.default_rng(0), crop_seconds=1000, features=features)
    one_second = EmbeddingsOnce(embedder, "mean", np.random.default_rng(0), crop_seconds=1, features=features)
    np.testing.assert_array_equal(long_crop([path]), whole([path]))
    assert long_crop.seconds[path] == whole.seconds[path] == len(features[path]) / 100 > 2
    assert one_second([path]).shape == (1, 512) and one_second.seconds[path] == 1.0
    assert float(one_second([path])[0] @ whole([path])[0]) < 0.999  # A second of it is not the whole file.


def test_one_second_crops_of_the_shipped_model_verify_worse_than_whole_files(embedder, five_test_other_women):
    features: dict = {}
    figures = {}
    for seconds in (1, None):
        embed = EmbeddingsOnce(embedder, "mean", np.random.default_rng(0), crop_seconds=seconds, features=features)
        figures[seconds] = corpus_verification([five_test_other_women], embed, None, seed=0)[0]["test-other"]
    assert figures[1]["num_trials"] == figures[None]["num_trials"] == 105  # The same trials, all pairs of 15 files.
    assert figures[1]["eer"] > figures[None]["eer"]
    assert figures[1]["min_cllr"] > figures[None]["min_cllr"]


def test_each_corpus_is_scored_with_the_normalisation_asked_for_against_the_shipped_cohort(embedder, five_test_other_women):
    from inference import pretrained_checkpoint
    from score_norm import normalised_scores, read_cohort
    from trials import generate_trials

    cohort = read_cohort(pretrained_checkpoint())
    embed = EmbeddingsOnce(embedder, "mean", np.random.default_rng(0))
    scored = {}
    for norm in ("none", "asnorm"):
        corpus_verification([five_test_other_women], embed, None, 0, scored.setdefault(norm, {}), score_norm=norm, cohort=cohort)
    trials = generate_trials({s: [str(p) for p in paths] for s, paths in five_test_other_women.speakers.items()}, None, 0)
    sides = [embed([str(getattr(t, side)) for t in trials]) for side in ("path1", "path2")]
    np.testing.assert_allclose(scored["asnorm"]["test-other"][0], normalised_scores(*sides, "asnorm", cohort), rtol=1e-6)
    np.testing.assert_allclose(scored["none"]["test-other"][0], np.einsum("td,td->t", *sides), atol=1e-5)
    assert not np.allclose(scored["asnorm"]["test-other"][0], scored["none"]["test-other"][0])
