"""test.py: cosine scoring, the reference protocol, and the evaluation of a trained checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from eval_metrics import reference_metrics
from probes import nearest_profile_accuracy, probe_accuracy
from test import EvaluationReport, batch_cosine_similarity, evaluate_checkpoint
from verification import HeldOutCorpus, corpus_names, corpus_verification, reference_protocol_scores
from trials import generate_trials, write_trials


def test_cosine_of_unit_vectors_is_their_row_wise_dot_product_as_a_numpy_array():
    """The reference's example imports it from test and prints NumPy arrays; the loss's tensors are the same function's."""
    x1 = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    x2 = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, -1.0]])
    similarity = batch_cosine_similarity(x1, x2)
    assert isinstance(similarity, np.ndarray)
    np.testing.assert_allclose(similarity, [1.0, 0.96, -1.0])


def test_one_row_is_scored_against_every_row_of_the_other_as_the_reference_example_pcm_does():
    anchor = np.array([[1.0, 0.0]])
    others = np.array([[0.6, 0.8], [-1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(batch_cosine_similarity(anchor, others), [0.6, -1.0, 0.0])
    np.testing.assert_allclose(batch_cosine_similarity(others, anchor), [0.6, -1.0, 0.0])


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        batch_cosine_similarity(np.zeros((2, 512)), np.zeros((3, 512)))
    with pytest.raises(ValueError, match="same shape"):
        batch_cosine_similarity(np.zeros((1, 512)), np.zeros((3, 256)))


# ---------------------------------------------------------------------------------------------- reference protocol

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"


def one_hot_speakers(num_speakers: int, per_speaker: int) -> dict[str, np.ndarray]:
    """Every speaker's utterances share one unit vector, orthogonal to the other speakers'."""
    return {f"s{i}": np.tile(np.eye(num_speakers)[i], (per_speaker, 1)) for i in range(num_speakers)}


def test_reference_protocol_puts_the_positive_first_then_99_negatives():
    scores = reference_protocol_scores(one_hot_speakers(120, 3), np.random.default_rng(0))
    assert scores.shape == (120, 100)
    np.testing.assert_array_equal(scores[:, 0], 1.0)
    np.testing.assert_array_equal(scores[:, 1:], 0.0)
    metrics = reference_metrics(scores)
    assert (metrics.f_measure, metrics.true_positive_rate, metrics.accuracy, metrics.equal_error_rate) == (1.0, 1.0, 1.0, 0.0)


def test_reference_protocol_draws_negatives_from_other_speakers_only():
    embeddings = one_hot_speakers(5, 2)  # Fewer other speakers than negatives: they repeat.
    scores = reference_protocol_scores(embeddings, np.random.default_rng(1), num_negatives=99)
    assert scores.shape == (5, 100) and np.all(scores[:, 1:] == 0.0)


def test_reference_protocol_skips_speakers_with_a_single_utterance():
    embeddings = {"a": np.eye(3)[[0, 0]], "b": np.eye(3)[[1]], "c": np.eye(3)[[2]]}
    assert reference_protocol_scores(embeddings, np.random.default_rng(0)).shape == (1, 100)


def test_nearest_profile_accuracy_counts_test_utterances_closest_to_their_own_speaker():
    enrollment = {"a": np.array([[1.0, 0.0], [0.8, 0.6]]), "b": np.array([[0.0, 1.0]])}
    test = np.array([[0.9, 0.1], [0.1, 0.9], [0.7, 0.71]])
    assert nearest_profile_accuracy(enrollment, test, ["a", "b", "b"]) == 2 / 3


def test_gender_probe_separates_linearly_separable_embeddings():
    rng = np.random.default_rng(0)
    female, male = rng.normal(1.0, 0.3, (20, 8)), rng.normal(-1.0, 0.3, (20, 8))
    train = np.concatenate([female, male])
    labels = ["F"] * 20 + ["M"] * 20
    assert probe_accuracy(train, labels, np.array([[1.0] * 8, [-1.0] * 8]), ["F", "M"]) == 1.0
    assert probe_accuracy(train, labels, np.array([[1.0] * 8, [-1.0] * 8]), ["M", "F"]) == 0.0


# ---------------------------------------------------------------------------------------------- a trained checkpoint


@pytest.fixture(scope="module")
def mtl_run(trained_mtl) -> tuple[Path, Path]:
    """(working dir, best.h5) of the shared Hive-MTL run: test-other speakers held out."""
    return trained_mtl, trained_mtl / "checkpoints-mtl" / "best.h5"


def test_evaluation_of_an_mtl_checkpoint_reports_every_figure(mtl_run, tmp_path):
    working_dir, checkpoint = mtl_run
    report = evaluate_checkpoint(working_dir, checkpoint, plots_dir=tmp_path / "plots")
    assert report.reference["speakers"] == 3 and report.reference["line"].startswith("f-measure = ")
    assert report.trials["speakers"] == ["1688", "1998"]
    assert report.trials["num_trials"] == 28  # 8 utterances: 12 same-speaker and 16 different-speaker pairs.
    assert list(report.corpora) == ["LibriSpeech"]  # The run's held-out speakers are one corpus, named by the folder they were cached from.
    assert {k: report.corpora["LibriSpeech"][k] for k in ("speakers", "num_trials", "eer")} == {k: report.trials[k] for k in ("speakers", "num_trials", "eer")}
    assert set(report.heads) == {"speaker_id_acc", "speaker_id_acc_head", "gender_acc_head", "gender_acc_probe", "gender_acc_head_per_speaker",
                                 "gender_acc_probe_per_speaker"}
    assert report.unseen_labels == {"gender": {"M": 1, "F": 1}}  # 1688 and 1998.
    assert all(0.0 <= value <= 1.0 for value in report.heads.values())
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["det_curve.png", "embedding_projection.png", "score_histograms.png"]
    written = json.loads(report.to_json(tmp_path / "report.json").read_text())
    assert written["trials"]["eer"] == report.trials["eer"]


def test_evaluation_on_unseen_corpora_says_when_trial_speakers_were_seen_in_training(mtl_run):
    working_dir, checkpoint = mtl_run
    report = evaluate_checkpoint(working_dir, checkpoint, eval_audio_dirs=(str(SAMPLES / "LibriSpeech" / "train-clean-100"),), num_trials=20)
    assert report.trials["num_trials"] == 20
    assert report.corpora["train-clean-100"]["num_trials"] == 20  # --num_trials applies to each corpus.
    assert any("seen in training" in note and "19, 26, 27" in note for note in report.notes)


def test_evaluation_scores_the_test_utterances_the_run_recorded_when_the_cache_grew_since(mtl_run, tmp_path, monkeypatch):
    import feature_cache
    import test as evaluation

    working_dir = tmp_path / "work"
    shutil.copytree(mtl_run[0], working_dir)
    more = tmp_path / "more" / "19"
    more.mkdir(parents=True)
    for index, path in enumerate(sorted((SAMPLES / "LibriSpeech" / "test-other").rglob("*.flac"))[:4]):
        shutil.copy(path, more / f"0-{index}.flac")  # Sorted before 19's own utterances: recomputed, the 80 % boundary would move.
    feature_cache.build_feature_cache(more.parent, working_dir, workers=1, progress=False)
    scored = {}
    protocol = evaluation.reference_protocol_scores

    def spy(embeddings, rng, *args):
        scored.update({speaker: len(rows) for speaker, rows in embeddings.items()})
        return protocol(embeddings, rng, *args)

    monkeypatch.setattr(evaluation, "reference_protocol_scores", spy)
    evaluate_checkpoint(working_dir, working_dir / "checkpoints-mtl" / "best.h5")
    assert scored == {"19": 2, "26": 2, "27": 2}  # Recomputed on the grown cache, 19 would have 3, one of them trained on.
    recorded = json.loads((working_dir / "checkpoints-mtl" / "split.json").read_text())
    assert {speaker: len(split["test"]) for speaker, split in recorded.items()} == scored


def test_the_speaker_head_is_scored_by_the_class_order_of_the_runs_speakers_json_when_a_run_speaker_left_the_cache(mtl_run, tmp_path):
    """The run trained speakers 19, 26 and 27 (classes 0, 1, 2); the cache evaluated here no longer holds 19.
    A head that names class 0, speaker 19, for every utterance is right on none of the test utterances
    left (26's and 27's). Counted by position among the cached speakers, class 0 would be 26: 0.5."""
    import keras

    import feature_cache
    from fileio import save_model_atomically

    corpus = tmp_path / "LibriSpeech"
    shutil.copytree(SAMPLES / "LibriSpeech", corpus, ignore=shutil.ignore_patterns("19"))
    working_dir = tmp_path / "work"
    feature_cache.build_feature_cache(corpus, working_dir, workers=1, progress=False)
    run = shutil.copytree(mtl_run[0] / "checkpoints-mtl", tmp_path / "run", ignore=shutil.ignore_patterns("tensorboard"))
    assert json.loads((run / "speakers.json").read_text())["speakers"] == ["19", "26", "27"]
    model = keras.models.load_model(run / "best.h5", compile=False)
    head = model.get_layer("speaker_pred")
    kernel, bias = head.get_weights()
    head.set_weights([np.zeros_like(kernel), np.where(np.arange(len(bias)) == 0, 10.0, -10.0).astype(bias.dtype)])
    save_model_atomically(model, run / "best.h5")
    report = evaluate_checkpoint(working_dir, run / "best.h5", held_out_speakers=[])  # No trials: only the heads are read here.
    assert report.heads["speaker_id_acc_head"] == 0.0


# ---------------------------------------------------------------------------------------------- figures per held-out corpus

TEST_OTHER = SAMPLES / "LibriSpeech" / "test-other"  # 1688 and 1998, 4 utterances each.
TRAIN_CLEAN = SAMPLES / "LibriSpeech" / "train-clean-100"  # 19, 26 and 27, 8 utterances each.


def test_each_eval_corpus_is_scored_on_trials_among_its_own_speakers_beside_the_pooled_figure(mtl_run, tmp_path):
    working_dir, checkpoint = mtl_run
    report = evaluate_checkpoint(working_dir, checkpoint, eval_audio_dirs=(str(TEST_OTHER), str(TRAIN_CLEAN)))
    assert list(report.corpora) == ["test-other", "train-clean-100"]
    assert report.corpora["test-other"]["speakers"] == ["1688", "1998"]
    assert report.corpora["train-clean-100"]["speakers"] == ["19", "26", "27"]
    assert [c["num_trials"] for c in report.corpora.values()] == [28, 276]  # All pairs of 8 and of 24 utterances.
    assert [c["num_target_trials"] for c in report.corpora.values()] == [12, 84]
    # Pooled: the pairs within each corpus and the 8 x 24 pairs across them.
    assert report.trials["num_trials"] == 28 + 276 + 8 * 24 >= sum(c["num_trials"] for c in report.corpora.values())
    for figures in report.corpora.values():
        assert 0.0 <= figures["eer"] <= 1.0 and 0.0 <= figures["min_dcf_001"] <= 1.0 and 0.0 <= figures["min_dcf_005"] <= 1.0
        assert figures["num_target"] + figures["num_nontarget"] == figures["num_trials"]
    assert report.corpora["test-other"]["directory"] == str(TEST_OTHER)
    written = json.loads(report.to_json(tmp_path / "report.json").read_text())
    assert written["corpora"] == report.corpora and written["trials"]["eer"] == report.trials["eer"]


def test_a_trial_list_is_scored_as_it_is_without_a_split_by_corpus(mtl_run, tmp_path):
    working_dir, checkpoint = mtl_run
    trials_file = write_trials(tmp_path / "trials.txt", generate_trials({"1688": sorted(TEST_OTHER.glob("1688/*/*.flac")),
                                                                         "1998": sorted(TEST_OTHER.glob("1998/*/*.flac"))}, 6, seed=0))
    report = evaluate_checkpoint(working_dir, checkpoint, eval_audio_dirs=(str(TEST_OTHER),), trials_file=trials_file)
    assert report.corpora == {}
    assert report.trials["num_trials"] == 6 and report.trials["trials_file"] == str(trials_file)
    assert report.verification_lines()[0].startswith("trial list trials.txt  trials = 6 (3 same speaker), EER = ")


def test_a_small_corpus_gets_all_the_balanced_trials_it_has_and_a_note():
    corpus = HeldOutCorpus("tiny", None, {"a": ["a1", "a2", "a3"], "b": ["b1"]})  # 3 same-speaker, 3 different-speaker pairs.
    embed = {"a1": [1.0, 0.0], "a2": [0.9, 0.1], "a3": [0.8, 0.3], "b1": [0.0, 1.0]}
    figures, notes = corpus_verification([corpus], lambda paths: np.array([embed[p] for p in paths]), 100, seed=0)
    assert (figures["tiny"]["num_trials"], figures["tiny"]["num_target_trials"], figures["tiny"]["eer"]) == (6, 3, 0.0)
    assert notes == ["tiny: 6 trials instead of 100: it has 3 same-speaker and 3 different-speaker pairs"]


def test_a_corpus_without_a_same_speaker_pair_is_skipped_with_a_note():
    figures, notes = corpus_verification([HeldOutCorpus("singles", None, {"a": ["a1"], "b": ["b1"]})], None, None, seed=0)
    assert figures == {} and notes == ["singles: no trials of its own: it needs 2 speakers, one with 2 utterances"]


def test_corpora_are_named_by_their_folder_and_by_parents_only_where_names_clash(tmp_path):
    folders = [tmp_path / "a" / "test-other", tmp_path / "VCTK", tmp_path / "b" / "test-other", tmp_path / "a" / "test-other" / ".." / "test-other"]
    assert corpus_names(folders) == ["a/test-other", "VCTK", "b/test-other", "a/test-other"]


def test_verification_lines_show_each_corpus_then_the_pooled_figure_labelled_pooled():
    def figures(speakers: int, trials: int, target: int, eer: float) -> dict:
        return {"speakers": [str(s) for s in range(speakers)], "num_trials": trials, "num_target": target, "eer": eer,
                "eer_threshold": 0.4123, "min_dcf_001": 1.0, "min_dcf_005": 0.8}

    report = EvaluationReport("best.h5", trials=figures(5, 496, 96, 0.1), corpora={"test-other": figures(2, 28, 12, 0.25), "VCTK": figures(3, 276, 84, 0.05)})
    assert report.verification_lines() == [
        "test-other            speakers = 2, trials = 28 (12 same speaker), EER = 25.00%, threshold = 0.412, minDCF(0.01) = 1.000, minDCF(0.05) = 0.800",
        "VCTK                  speakers = 3, trials = 276 (84 same speaker), EER = 5.00%, threshold = 0.412, minDCF(0.01) = 1.000, minDCF(0.05) = 0.800",
        "pooled (all corpora)  speakers = 5, trials = 496 (96 same speaker), EER = 10.00%, threshold = 0.412, minDCF(0.01) = 1.000, minDCF(0.05) = 0.800",
    ]


# ---------------------------------------------------------------------------------------------- the checkpoint's front end


@pytest.fixture(scope="module")
def energy_trim_run(tmp_path_factory) -> tuple[Path, Path]:
    """(working dir, best.h5): the bundled LibriSpeech cached (reference trim, as every cache), and beside an
    untrained small model the run files of a run trained with the energy trim, test-other's speakers held out."""
    import feature_cache
    from conv_models import DeepSpeakerModel
    from fileio import save_model_atomically

    working_dir = tmp_path_factory.mktemp("energy_trim_run")
    feature_cache.build_feature_cache(SAMPLES / "LibriSpeech", working_dir, workers=1, progress=False)
    run = working_dir / "checkpoints-softmax"
    run.mkdir()
    save_model_atomically(DeepSpeakerModel(model_size="small").m, run / "best.h5")
    (run / "config.json").write_text(json.dumps({"mode": "softmax", "trim": "energy", "pad": "repeat"}))
    (run / "speakers.json").write_text(json.dumps({"speakers": ["19", "26", "27"], "held_out_speakers": ["1688", "1998"], "genders": {}}))
    return working_dir, run / "best.h5"


def test_cached_and_uncached_evaluation_of_the_same_speakers_give_the_same_scores_with_the_checkpoints_trim(energy_trim_run):
    working_dir, checkpoint = energy_trim_run
    cached, uncached = {}, {}
    evaluate_checkpoint(working_dir, checkpoint, trial_scores=cached)  # 1688 and 1998 from the cache, as held-out speakers.
    evaluate_checkpoint(None, checkpoint, eval_audio_dirs=(str(TEST_OTHER),), trial_scores=uncached)  # The same speakers from their audio.
    (cached_scores, cached_labels), = cached.values()
    (scores, labels), = uncached.values()
    assert len(scores) == 28 and sorted(cached_labels) == sorted(labels)
    np.testing.assert_allclose(np.sort(cached_scores), np.sort(scores), atol=1e-6)


def test_every_cached_utterance_evaluation_embeds_gets_the_checkpoints_trim(energy_trim_run):
    """Reference protocol, identification and probes read training speakers' cache entries: with the run's trim."""
    import feature_cache
    from inference import Embedder

    working_dir, checkpoint = energy_trim_run
    embedder = Embedder.from_checkpoint(checkpoint)
    index = json.loads((working_dir / "corpus.json").read_text())
    entries = sorted(feature_cache.cache_dir(working_dir).glob("19_*.npy"))
    sources = [index["sources"][entry.name] for entry in entries]
    np.testing.assert_allclose(embedder.embed_files(entries), embedder.embed_files(sources), atol=1e-6)


# ---------------------------------------------------------------------------------------------- label tasks per speaker


def test_label_accuracies_count_each_unseen_speaker_once_whatever_its_number_of_files():
    """A stand-in embedding puts each file at a designed point: the probe sees which side of zero it lies.
    m1 has 10 files, 4 of them weakly on the female side; f1 has 2, both female."""
    from tasks import gender_task
    from probes import label_task_accuracies

    points = {f"m1/{i}": [-2.0] for i in range(6)} | {f"m1/{i}": [0.3] for i in range(6, 10)} | {"f1/0": [2.0], "f1/1": [1.5]}
    points |= {f"{s}/{i}": [(2.0 if s.startswith("f") else -2.0) + 0.1 * i] for s in ("fa", "fb", "ma", "mb") for i in range(3)}

    def embed(paths: list) -> np.ndarray:
        return np.array([points[p] for p in paths])

    splits = {s: ([f"{s}/{i}" for i in range(3)], []) for s in ("fa", "fb", "ma", "mb")}
    unseen = {"m1": [f"m1/{i}" for i in range(10)], "f1": ["f1/0", "f1/1"]}
    genders = {"fa": "F", "fb": "F", "ma": "M", "mb": "M", "m1": "M", "f1": "F"}
    files = {s: Path() for s in [*splits, *unseen]}
    figures, counts, predictions = label_task_accuracies(gender_task(1.0), None, embed, splits, unseen, files, genders, None)
    assert figures["gender_acc_probe"] == pytest.approx((6 / 10 + 1.0) / 2)  # Per file: 4 of m1's 10 files answered F.
    assert figures["gender_acc_probe_per_speaker"] == 1.0  # Per speaker: m1's files average to M.
    assert counts == {"M": 1, "F": 1}
    assert predictions == {"speakers": ["m1", "f1"], "labels": ["M", "F"], "probe": ["M", "F"]}


def test_evaluation_reports_label_accuracies_per_speaker_with_each_speakers_prediction(mtl_run, tmp_path):
    working_dir, checkpoint = mtl_run
    fsdd = tmp_path / "FSDD" / "george"  # 12 digits of one speaker beside test-other's 2 speakers of 4 files each.
    fsdd.mkdir(parents=True)
    for path in sorted((REPO.parent / "shared" / "data" / "FSDD" / "george").glob("*.wav"))[:12]:
        shutil.copy(path, fsdd / path.name)
    report = evaluate_checkpoint(working_dir, checkpoint, eval_audio_dirs=(str(TEST_OTHER), str(fsdd.parent)), extra_genders={"george": "M"})
    assert report.unseen_labels == {"gender": {"M": 2, "F": 1}}
    predicted = report.speaker_predictions["gender"]
    assert (predicted["speakers"], predicted["labels"]) == (["1688", "1998", "george"], ["M", "F", "M"])
    for kind in ("probe", "head"):
        assert len(predicted[kind]) == 3
        male = np.mean([p == "M" for p, label in zip(predicted[kind], predicted["labels"]) if label == "M"])
        female = float(predicted[kind][1] == "F")
        assert report.heads[f"gender_acc_{kind}_per_speaker"] == pytest.approx((male + female) / 2)  # Three speakers, each one vote.


# ---------------------------------------------------------------------------------------------- label tasks per clip


def test_clip_task_accuracies_score_each_labelled_unseen_clip_balanced_over_the_labels(tmp_path):
    """A stand-in embedding puts calm clips below zero and tense ones above, but one calm clip of u1 above: per clip,
    calm is recalled 2 times in 3 and tense 2 in 2. A cache entry reads the label of the audio it was made from."""
    from tasks import parse_tasks
    from probes import clip_task_accuracies

    (tmp_path / "clips.tsv").write_text("path\tmood\n" + "".join(f"{clip}\t{mood}\n" for clip, mood in (
        ("t1/0.wav", "calm"), ("t1/1.wav", "tense"), ("t2/0.wav", "calm"), ("t2/1.wav", "tense"),
        ("u1/0.wav", "calm"), ("u1/1.wav", "calm"), ("u1/2.wav", "tense"), ("u1/3.wav", "calm"), ("u1/4.wav", ""), ("u2/0.wav", "tense"))))
    (task,) = parse_tasks({"mood": {"clips": str(tmp_path / "clips.tsv"), "column": "mood", "loss": "binary"}})
    at = {"t1/0": -2.0, "t1/1": 2.0, "t2/0": -1.5, "t2/1": 1.5, "u1/0": -2.0, "u1/1": -1.0, "u1/2": 2.0, "u1/3": 0.5, "u1/4": 3.0}
    points = {str(tmp_path / f"{clip}.wav"): [value] for clip, value in at.items()} | {str(tmp_path / "cache" / "u2_0.npy"): [1.5]}

    def embed(paths: list) -> np.ndarray:
        return np.array([points[str(p)] for p in paths])

    splits = {s: ([str(tmp_path / f"{s}/{i}.wav") for i in range(2)], []) for s in ("t1", "t2")}
    unseen = {"u1": [str(tmp_path / f"u1/{i}.wav") for i in range(5)], "u2": [str(tmp_path / "cache" / "u2_0.npy")]}
    figures, predictions = clip_task_accuracies(task, None, embed, splits, unseen, {"u2_0.npy": tmp_path / "u2" / "0.wav"}, None)
    assert figures == {"mood_acc_probe": pytest.approx((2 / 3 + 1.0) / 2)}  # u1/4 has no label: not scored.
    assert predictions == {"clips": [*unseen["u1"][:4], *unseen["u2"]], "speakers": ["u1"] * 4 + ["u2"], "labels": ["calm", "calm", "tense", "calm", "tense"],
                           "probe": ["calm", "calm", "tense", "tense", "tense"]}


def test_held_out_training_speakers_are_scored_as_one_corpus_per_home_corpus():
    from verification import evaluation_corpora

    held_out = {"0874d76d": [Path("a.npy"), Path("b.npy")], "11": [Path("c.npy"), Path("d.npy")], "13": [Path("e.npy")], "x": [Path("f.npy")],
                "1688": [Path("g.npy")]}
    corpora = evaluation_corpora([str(TEST_OTHER)], held_out, {"0874d76d": "CommonVoice-fa", "11": "EmoDB", "13": "EmoDB"})
    assert [(c.name, sorted(c.speakers)) for c in corpora] == [("test-other", ["1688", "1998"]), ("CommonVoice-fa", ["0874d76d"]),
                                                             ("EmoDB", ["11", "13"]), ("held_out", ["x"])]  # 1688 is scored from its folder.


def test_an_evaluation_folder_that_is_a_kaldi_dir_with_segments_is_refused_saying_what_to_do(tmp_path):
    from corpus import CorpusError
    from verification import evaluation_corpora

    flac = next(TEST_OTHER.rglob("*.flac"))
    (tmp_path / "wav.scp").write_text(f"rec {flac}\n")
    (tmp_path / "segments").write_text("rec-a rec 0 1\nrec-b rec 1 2\n")
    (tmp_path / "utt2spk").write_text("rec-a s\nrec-b s\n")
    with pytest.raises(CorpusError, match="segments file cuts its recordings.*build-mfcc-cache"):
        evaluation_corpora([tmp_path], {})
    (tmp_path / "segments").unlink()  # Whole recordings: scored file by file, as any folder.
    (tmp_path / "utt2spk").write_text("rec s\n")
    assert [c.speakers for c in evaluation_corpora([tmp_path], {})] == [{"s": [flac]}]
