"""profiles.py: enrolled speakers as normalised mean embeddings, tied to the checkpoint that made them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from constants import EMBEDDING_SIZE
from profiles import (
    Profiles,
    ProfilesError,
    checkpoint_fingerprint,
    enroll,
    identify,
    load_profiles,
    profiles_files,
    save_profiles,
)


def unit_vectors(count: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((count, EMBEDDING_SIZE)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def normalised_mean(x: np.ndarray) -> np.ndarray:
    mean = x.astype(np.float64).mean(axis=0)
    return mean / np.linalg.norm(mean)


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.h5"
    path.write_bytes(b"the bytes of one checkpoint")
    return path


@pytest.fixture
def other_checkpoint(tmp_path):
    path = tmp_path / "other.h5"
    path.write_bytes(b"the bytes of another checkpoint")
    return path


def test_enroll_creates_the_store_with_a_normalised_mean_profile(tmp_path, checkpoint):
    alice = unit_vectors(2, 0)
    result = enroll(tmp_path / "people", "alice", alice, ["a1.wav", "a2.wav"], checkpoint)
    npz_path, json_path = tmp_path / "people.npz", tmp_path / "people.json"
    assert result.npz_path == npz_path and result.profile_files == 2 and result.speakers == 1
    with np.load(npz_path) as data:
        assert data["names"].tolist() == ["alice"] and data["counts"].tolist() == [2]
        assert np.abs(data["profiles"][0] - normalised_mean(alice)).max() < 1e-6
        assert np.array_equal(data["embeddings"], alice)
    index = json.loads(json_path.read_text())
    assert index["checkpoint"] == str(checkpoint.resolve())
    assert index["checkpoint_sha256"] == checkpoint_fingerprint(checkpoint)
    assert [f.rsplit("/", 1)[-1] for f in index["speakers"]["alice"]["files"]] == ["a1.wav", "a2.wav"]
    assert index["created"] and index["updated"] and index["speakers"]["alice"]["enrolled"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.h5", "people.json", "people.npz"]  # No temporary files.


def test_enrolling_a_name_again_adds_to_its_profile_exactly(tmp_path, checkpoint):
    first, second = unit_vectors(2, 1), unit_vectors(3, 2)
    enroll(tmp_path / "p.npz", "bob", first, ["b1.wav", "b2.wav"], checkpoint)
    enroll(tmp_path / "p.npz", "carol", unit_vectors(1, 3), ["c1.wav"], checkpoint)
    result = enroll(tmp_path / "p.npz", "bob", second, ["b3.wav", "b4.wav", "b5.wav"], checkpoint)
    assert result.profile_files == 5 and result.speakers == 2
    store = load_profiles(tmp_path / "p.npz")
    bob = store.names.index("bob")
    assert np.abs(store.profiles[bob] - normalised_mean(np.concatenate([first, second]))).max() < 1e-6
    assert store.counts.tolist() == [5, 1]
    assert [f.rsplit("/", 1)[-1] for f in store.files_of("bob")] == ["b1.wav", "b2.wav", "b3.wav", "b4.wav", "b5.wav"]


def test_a_file_enrolled_before_under_the_name_is_not_counted_twice(tmp_path, checkpoint):
    enroll(tmp_path / "p", "dan", unit_vectors(1, 4), ["d1.wav"], checkpoint)
    result = enroll(tmp_path / "p", "dan", unit_vectors(2, 5), ["d1.wav", "d2.wav"], checkpoint)
    assert result.already_enrolled == ["d1.wav"] and [a.rsplit("/", 1)[-1] for a in result.added] == ["d2.wav"]
    assert result.profile_files == 2


def test_identify_ranks_names_by_cosine_score(tmp_path, checkpoint):
    speakers = {name: unit_vectors(2, seed) for seed, name in enumerate(["ann", "ben", "cat", "dee"])}
    for name, embeddings in speakers.items():
        enroll(tmp_path / "p", name, embeddings, [f"{name}{i}.wav" for i in range(2)], checkpoint)
    probe = speakers["cat"][0]
    ranking = identify(tmp_path / "p.json", probe, top=3)
    expected = sorted(((n, float(normalised_mean(e) @ probe)) for n, e in speakers.items()), key=lambda item: -item[1])[:3]
    assert [name for name, _ in ranking] == [name for name, _ in expected] and ranking[0][0] == "cat"
    assert np.allclose([score for _, score in ranking], [score for _, score in expected], atol=1e-6)
    assert len(identify(tmp_path / "p", probe, top=10)) == 4


def test_another_checkpoint_is_refused(tmp_path, checkpoint, other_checkpoint):
    enroll(tmp_path / "p", "eve", unit_vectors(1, 6), ["e.wav"], checkpoint)
    with pytest.raises(ProfilesError, match=r"p.npz: enrolled with checkpoint .*model.h5.*not .*other.h5"):
        identify(tmp_path / "p", unit_vectors(1, 7)[0], checkpoint=other_checkpoint)
    with pytest.raises(ProfilesError, match="other.h5"):
        enroll(tmp_path / "p", "eve", unit_vectors(1, 8), ["e2.wav"], other_checkpoint)
    moved = tmp_path / "moved.h5"
    checkpoint.rename(moved)  # Same bytes elsewhere: the same model.
    assert identify(tmp_path / "p", unit_vectors(1, 7)[0], checkpoint=moved)[0][0] == "eve"


def test_missing_empty_and_inconsistent_stores_are_refused(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError, match="absent.npz: no such profiles file"):
        identify(tmp_path / "absent.npz", unit_vectors(1, 0)[0])
    empty = Profiles([], np.zeros((0, EMBEDDING_SIZE), np.float32), np.zeros(0, np.int64), [], str(checkpoint), checkpoint_fingerprint(checkpoint), "now", {})
    save_profiles(tmp_path / "empty", empty)
    with pytest.raises(ProfilesError, match="empty.npz: no speakers enrolled"):
        identify(tmp_path / "empty", unit_vectors(1, 0)[0])
    enroll(tmp_path / "p", "fay", unit_vectors(2, 9), ["f1.wav", "f2.wav"], checkpoint)
    index = json.loads((tmp_path / "p.json").read_text())
    index["speakers"]["fay"]["files"].pop()
    (tmp_path / "p.json").write_text(json.dumps(index))
    with pytest.raises(ProfilesError, match="p.npz and .*p.json disagree"):
        identify(tmp_path / "p", unit_vectors(1, 0)[0])


def test_bad_enrollments_are_refused(tmp_path, checkpoint):
    with pytest.raises(ValueError, match="name"):
        enroll(tmp_path / "p", "  ", unit_vectors(1, 0), ["x.wav"], checkpoint)
    with pytest.raises(ValueError, match="one 512-d embedding per file"):
        enroll(tmp_path / "p", "gil", unit_vectors(2, 0), ["x.wav"], checkpoint)
    with pytest.raises(ValueError, match="NaN"):
        enroll(tmp_path / "p", "gil", np.full((1, EMBEDDING_SIZE), np.nan), ["x.wav"], checkpoint)
    enroll(tmp_path / "p", "gil", unit_vectors(1, 0), ["x.wav"], checkpoint)
    with pytest.raises(ValueError, match="top"):
        identify(tmp_path / "p", unit_vectors(1, 0)[0], top=0)


def test_profiles_files_accepts_the_store_by_either_name(tmp_path):
    expected = (tmp_path / "p.npz", tmp_path / "p.json")
    assert profiles_files(tmp_path / "p") == profiles_files(tmp_path / "p.npz") == profiles_files(tmp_path / "p.json") == expected
