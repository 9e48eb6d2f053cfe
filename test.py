"""Evaluation of a checkpoint: the reference protocol, speaker-disjoint trials and the Hive-MTL heads.

`evaluate_checkpoint` is what `python cli.py test-model` runs. Every embedding goes through
`inference.Embedder`, the same path `embed`, `verify` and `identify` use.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from constants import NUM_NEGATIVES_PER_SPEAKER

logger = logging.getLogger(__name__)


def batch_cosine_similarity(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays of L2-normalised embeddings: their dot product."""
    x1, x2 = np.asarray(x1), np.asarray(x2)
    if x1.shape != x2.shape:
        raise ValueError(f"embeddings must have the same shape, got {x1.shape} and {x2.shape}")
    return np.sum(x1 * x2, axis=-1)


def reference_protocol_scores(
    embeddings: dict[str, np.ndarray], rng: np.random.Generator, num_negatives: int = NUM_NEGATIVES_PER_SPEAKER
) -> np.ndarray:
    """(speakers, 1 + num_negatives) cosine scores; column 0 is the positive pair.

    Per speaker with two or more utterances: an anchor and a positive utterance of that speaker,
    and `num_negatives` utterances of other speakers, one per speaker (the reference's protocol;
    speakers repeat only when there are fewer other speakers than negatives).
    """
    speakers = [s for s in embeddings if len(embeddings[s]) >= 2]
    if len(speakers) < 1 or len(embeddings) < 2:
        raise ValueError("the reference protocol needs a speaker with 2 test utterances and at least 2 speakers")
    names = list(embeddings)
    anchors, candidates = [], []
    for speaker in speakers:
        own = embeddings[speaker]
        first, second = rng.choice(len(own), 2, replace=False)
        others = [name for name in names if name != speaker]
        chosen = rng.choice(len(others), num_negatives, replace=len(others) < num_negatives)
        negatives = [embeddings[others[i]][rng.integers(len(embeddings[others[i]]))] for i in chosen]
        anchors.append(own[first])
        candidates.append(np.stack([own[second], *negatives]))
    return np.einsum("sd,snd->sn", np.stack(anchors), np.stack(candidates))


@dataclass
class EvaluationReport:
    """Every figure of one evaluation; `to_json` is what test-model writes."""

    checkpoint: str
    reference: dict | None = None
    trials: dict | None = None
    heads: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self, path: str | os.PathLike) -> Path:
        from audio import write_json_atomically

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(path, self.__dict__)
        return path


# ----------------------------------------------------------------------------------------------
# Evaluating a checkpoint.


def read_run_info(checkpoint_file: str | os.PathLike) -> dict | None:
    """`speakers.json` of the run a checkpoint belongs to (training speakers, genders, held-out speakers)."""
    path = Path(checkpoint_file).parent / "speakers.json"
    return json.loads(path.read_text()) if path.is_file() else None


def evaluation_speakers(eval_audio_dirs, held_out: dict[str, list[Path]]) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """Speakers for verification trials: the corpora given, else the run's held-out speakers from the cache."""
    from audio import index_corpus

    if not eval_audio_dirs:
        return held_out, {}
    speakers: dict[str, list[Path]] = {}
    genders: dict[str, str] = {}
    for directory in eval_audio_dirs:
        corpus = index_corpus(directory)
        for speaker, utterances in corpus.utterances_by_speaker().items():
            speakers.setdefault(speaker, []).extend(u.path for u in utterances)
        genders.update(corpus.genders)
    return speakers, genders


def gender_probe_accuracy(train_embeddings: np.ndarray, train_genders: list[str], test_embeddings: np.ndarray, test_genders: list[str]) -> float:
    """Balanced accuracy of a logistic-regression probe for gender on frozen embeddings (held-out speakers)."""
    from sklearn.linear_model import LogisticRegression

    from eval_metrics import balanced_accuracy

    probe = LogisticRegression(max_iter=1000)
    probe.fit(train_embeddings, np.array(train_genders) == "F")
    return balanced_accuracy(probe.predict(test_embeddings), np.array(test_genders) == "F")


def task_heads(checkpoint_file: str | os.PathLike):
    """The Hive-MTL heads as a model on 512-d embeddings, or None for a checkpoint without heads."""
    import keras

    import conv_models  # noqa: F401  (registers the custom layers the checkpoint refers to)
    from conv_models import GENDER_OUTPUT, SPEAKER_OUTPUT
    from constants import EMBEDDING_SIZE
    from inference import inspect_checkpoint

    if SPEAKER_OUTPUT not in inspect_checkpoint(checkpoint_file).layer_names:
        return None
    model = keras.models.load_model(checkpoint_file, compile=False)
    embedding = keras.Input((EMBEDDING_SIZE,))
    shared = model.get_layer("shared")(embedding)
    outputs = {SPEAKER_OUTPUT: model.get_layer(SPEAKER_OUTPUT)(model.get_layer("speaker_task")(shared))}
    if GENDER_OUTPUT in [layer.name for layer in model.layers]:
        outputs[GENDER_OUTPUT] = model.get_layer(GENDER_OUTPUT)(shared)
    return keras.Model(embedding, outputs)


class EmbeddingsOnce:
    """Embeds each cache entry or audio file once (whole utterance) and remembers the result."""

    def __init__(self, embedder, mode: str, rng: np.random.Generator):
        self.embedder, self.mode, self.rng = embedder, mode, rng
        self.known: dict[str, np.ndarray] = {}

    def __call__(self, paths: list) -> np.ndarray:
        keys = [str(p) for p in paths]
        missing = [k for k in dict.fromkeys(keys) if k not in self.known]
        self.known.update(zip(missing, self.embedder.embed_files(missing, self.mode, self.rng)))
        return np.stack([self.known[k] for k in keys])


def evaluate_checkpoint(
    working_dir: str | os.PathLike,
    checkpoint_file: str | os.PathLike,
    eval_audio_dirs: tuple[str, ...] = (),
    trials_file: str | os.PathLike | None = None,
    num_trials: int | None = None,
    window: str = "mean",
    seed: int = 0,
    plots_dir: str | os.PathLike | None = None,
    extra_genders: dict[str, str] | None = None,
    held_out_speakers: list[str] | None = None,
) -> EvaluationReport:
    """Every figure of a checkpoint on the cache of `working_dir` (and on unseen corpora if given).

    - reference protocol on the test utterances of the training speakers (one random window per
      utterance, 1 positive and 99 negatives per speaker), as the reference reports it;
    - verification trials between speakers never seen in training (`trials_file`, else all or
      `num_trials` pairs among `eval_audio_dirs`, else among the run's held-out speakers):
      EER, minDCF, with whole-utterance embeddings (`window`);
    - gender balanced accuracy (mean of the female and male recall, so the majority class earns
      nothing) of a logistic-regression probe on the frozen embeddings (trained on the training
      speakers, tested on the unseen ones), and for a Hive-MTL checkpoint the accuracy of its
      speaker head (test utterances) and the balanced accuracy of its gender head (unseen speakers);
    - closed-set speaker identification from the embedding (nearest training-speaker profile).

    `held_out_speakers` restricts the unseen speakers to those named; `extra_genders` adds
    gender labels that no label file gives.
    """
    from audio import cached_entries
    from batcher import split_utterances
    from eval_metrics import reference_metrics, verification_metrics
    from inference import Embedder
    from trials import generate_trials, read_trials, score_trials

    embedder = Embedder.from_checkpoint(checkpoint_file)
    report = EvaluationReport(str(checkpoint_file))
    rng = np.random.default_rng(seed)
    embed = EmbeddingsOnce(embedder, window, rng)
    entries, genders = cached_entries(working_dir)
    run = read_run_info(checkpoint_file)
    if run is None:
        report.notes.append("no speakers.json beside the checkpoint: every cached speaker counts as a training speaker")
    training_speakers = [s for s in (run["speakers"] if run else entries) if s in entries]
    held_out = {s: entries[s] for s in (run["held_out_speakers"] if run else []) if s in entries}
    splits = {s: split_utterances(entries[s]) for s in training_speakers}

    test_embeddings = {s: embedder.embed_files(test, "random", rng) for s, (_, test) in splits.items() if test}
    if len(test_embeddings) >= 2 and any(len(e) >= 2 for e in test_embeddings.values()):
        metrics = reference_metrics(reference_protocol_scores(test_embeddings, rng))
        report.reference = {**metrics.__dict__, "speakers": sum(len(e) >= 2 for e in test_embeddings.values()), "line": metrics.format()}
    else:
        report.notes.append("reference protocol skipped: it needs 2 speakers with test utterances, one with at least 2")

    trial_speakers, trial_genders = evaluation_speakers(eval_audio_dirs, held_out)
    if held_out_speakers is not None:
        trial_speakers = {s: trial_speakers[s] for s in held_out_speakers if s in trial_speakers}
    genders = {**genders, **trial_genders, **(extra_genders or {})}
    seen = sorted(set(trial_speakers) & set(training_speakers))
    if seen:
        report.notes.append(f"trial speakers seen in training (the figures are not speaker-disjoint): {', '.join(seen)}")
    trials = read_trials(trials_file) if trials_file else None
    if trials is None and len(trial_speakers) >= 2:
        trials = generate_trials({s: [str(p) for p in paths] for s, paths in trial_speakers.items()}, num_trials, seed)
    if trials:
        paths = sorted({str(p) for trial in trials for p in (trial.path1, trial.path2)})
        scores, labels = score_trials(trials, dict(zip(paths, embed(paths))))
        metrics = verification_metrics(scores, labels)
        report.trials = {**metrics.__dict__, "num_trials": len(trials), "speakers": None if trials_file else sorted(trial_speakers), "window": window}
        if plots_dir:
            write_score_plots(plots_dir, scores, labels, metrics.eer_threshold)
    else:
        report.notes.append("no speaker-disjoint trials: train with --held_out_speakers, or pass --eval_audio_dir or --trials")

    unseen = [(p, s) for s, paths in trial_speakers.items() if s in genders for p in paths]
    train_rows = [(p, s) for s, (train, _) in splits.items() if s in genders for p in train]
    if unseen and len({genders[s] for _, s in train_rows}) == 2:
        report.heads["gender_acc_probe"] = gender_probe_accuracy(
            embed([p for p, _ in train_rows]), [genders[s] for _, s in train_rows], embed([p for p, _ in unseen]), [genders[s] for _, s in unseen]
        )
    speaker_id = speaker_id_accuracy(embed, splits)
    if speaker_id is not None:
        report.heads["speaker_id_acc"] = speaker_id
    heads = task_heads(checkpoint_file)
    if heads is not None:
        report.heads.update(head_accuracies(heads, embed, splits, training_speakers, unseen, genders))
    if plots_dir and trial_speakers:
        rows = [(p, s) for s, paths in trial_speakers.items() for p in paths]
        write_projection_plot(plots_dir, embed([p for p, _ in rows]), [s for _, s in rows], [genders.get(s) for _, s in rows])
    return report


def nearest_profile_accuracy(enrollment: dict[str, np.ndarray], test_embeddings: np.ndarray, test_speakers: list[str]) -> float:
    """Closed-set identification: each speaker's profile is the normalised mean of its enrollment
    embeddings; a test embedding gets the speaker of the most similar profile."""
    from inference import l2_normalize

    speakers = list(enrollment)
    profiles = l2_normalize(np.stack([enrollment[s].mean(axis=0) for s in speakers]))
    predicted = np.array(speakers)[np.argmax(test_embeddings @ profiles.T, axis=1)]
    return float(np.mean(predicted == np.array(test_speakers)))


def speaker_id_accuracy(embed: EmbeddingsOnce, splits: dict[str, tuple[list, list]]) -> float | None:
    """Speaker identification from the embedding alone, so every model is scored the same way:
    training utterances enroll each training speaker, test utterances are identified."""
    test_rows = [(p, s) for s, (train, test) in splits.items() if train for p in test]
    if not test_rows:
        return None
    enrollment = {s: embed(train) for s, (train, _) in splits.items() if train}
    return nearest_profile_accuracy(enrollment, embed([p for p, _ in test_rows]), [s for _, s in test_rows])


def head_accuracies(heads, embed: EmbeddingsOnce, splits, training_speakers, unseen, genders) -> dict:
    """Speaker-head accuracy on test utterances of training speakers; gender-head accuracy on unseen speakers."""
    from conv_models import GENDER_OUTPUT, SPEAKER_OUTPUT
    from eval_metrics import balanced_accuracy

    figures = {}
    test_rows = [(p, training_speakers.index(s)) for s, (_, test) in splits.items() for p in test]
    if test_rows:
        predictions = heads.predict(embed([p for p, _ in test_rows]), verbose=0)
        figures["speaker_id_acc_head"] = float(np.mean(np.argmax(predictions[SPEAKER_OUTPUT], axis=1) == np.array([c for _, c in test_rows])))
    if unseen and GENDER_OUTPUT in heads.output:
        predictions = heads.predict(embed([p for p, _ in unseen]), verbose=0)
        is_female = predictions[GENDER_OUTPUT][:, 0] >= 0.5
        figures["gender_acc_head"] = balanced_accuracy(is_female, np.array([genders[s] == "F" for _, s in unseen]))
    return figures


def write_score_plots(plots_dir: str | os.PathLike, scores: np.ndarray, labels: np.ndarray, threshold: float) -> None:
    from plots import plot_det_curve, plot_score_histograms

    Path(plots_dir).mkdir(parents=True, exist_ok=True)
    plot_score_histograms(scores, labels, threshold, Path(plots_dir) / "score_histograms.png")
    plot_det_curve(scores, labels, Path(plots_dir) / "det_curve.png")


def write_projection_plot(plots_dir: str | os.PathLike, embeddings: np.ndarray, speakers: list[str], genders: list[str | None]) -> None:
    from plots import plot_embedding_projection

    Path(plots_dir).mkdir(parents=True, exist_ok=True)
    plot_embedding_projection(embeddings, speakers, genders, Path(plots_dir) / "embedding_projection.png")
