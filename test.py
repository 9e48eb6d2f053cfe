"""Evaluation of a checkpoint: the reference protocol, speaker-disjoint trials and the Hive-MTL heads.

`evaluate_checkpoint` is what `python cli.py test-model` runs. Every embedding goes through
`inference.Embedder`, the same path `embed`, `verify` and `identify` use. Verification figures come
per held-out corpus (trials among its own speakers), with the pooled figure beside them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from constants import NUM_NEGATIVES_PER_SPEAKER
from tasks import entry_sources, gender_task
from triplet_loss import batch_cosine_similarity  # noqa: F401  (the reference's example imports it from test)

logger = logging.getLogger(__name__)


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
    trials: dict | None = None  # Pooled over every corpus, or the one given trial list.
    trial_lists: dict[str, dict] = field(default_factory=dict)  # Given trial list name -> its figures.
    corpora: dict[str, dict] = field(default_factory=dict)  # Corpus name -> its own verification figures.
    heads: dict = field(default_factory=dict)  # Accuracies of the embedding (probes, identification) and of task heads.
    unseen_labels: dict[str, dict[str, int]] = field(default_factory=dict)  # Task -> label -> unseen speakers carrying it.
    # Task -> {"speakers", "labels", "probe", "head"}: each unseen speaker's label and predictions (bootstraps over speakers).
    speaker_predictions: dict[str, dict[str, list]] = field(default_factory=dict)
    # Per-clip task -> {"clips", "speakers", "labels", "probe", "head"}: each labelled unseen clip, its speaker, label and predictions.
    clip_predictions: dict[str, dict[str, list]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self, path: str | os.PathLike) -> Path:
        from fileio import write_json_atomically

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(path, self.__dict__)
        return path

    def verification_lines(self) -> list[str]:
        """One line per held-out corpus, then the pooled (or trial-list) line: what test-model prints."""
        rows = list(self.corpora.items()) + [(f"trial list {name}", figures) for name, figures in self.trial_lists.items()]
        if self.trials and not self.trial_lists:
            rows.append(("pooled (all corpora)", self.trials))
        width = max((len(name) for name, _ in rows), default=0)
        return [f"{name:<{width}}  {verification_line(figures)}" for name, figures in rows]


def verification_line(figures: dict) -> str:
    """`speakers = 2, trials = 28 (12 same speaker), EER = 25.00%, threshold = 0.412, minDCF(0.01) = ..., minDCF(0.05) = ...`."""
    speakers = f"speakers = {len(figures['speakers'])}, " if figures.get("speakers") is not None else ""
    return (
        f"{speakers}trials = {figures['num_trials']} ({figures['num_target']} same speaker), EER = {100 * figures['eer']:.2f}%, "
        f"threshold = {figures['eer_threshold']:.3f}, minDCF(0.01) = {figures['min_dcf_001']:.3f}, minDCF(0.05) = {figures['min_dcf_005']:.3f}"
    )


# ----------------------------------------------------------------------------------------------
# Evaluating a checkpoint.


def read_run_info(checkpoint_file: str | os.PathLike) -> dict | None:
    """`speakers.json` of the run a checkpoint belongs to (training speakers, genders, held-out speakers)."""
    path = Path(checkpoint_file).parent / "speakers.json"
    return json.loads(path.read_text()) if path.is_file() else None


def read_run_split(checkpoint_file: str | os.PathLike) -> dict[str, dict[str, list[str]]] | None:
    """`split.json` of the run a checkpoint belongs to: speaker -> {"train": [cache entry names], "test": [...]}."""
    path = Path(checkpoint_file).parent / "split.json"
    return json.loads(path.read_text()) if path.is_file() else None


def training_split(entries: list[Path], recorded: dict[str, list[str]] | None) -> tuple[list[Path], list[Path]]:
    """A training speaker's (train, test) entries: as the run recorded them, else the reference split.

    Recomputed on a cache that grew after training, the 80 % boundary would move and score
    training utterances as test ones; entries added since are in neither list.
    """
    from batcher import split_utterances

    if recorded is None:
        return split_utterances(entries)
    by_name = {entry.name: entry for entry in entries}
    return [by_name[n] for n in recorded["train"] if n in by_name], [by_name[n] for n in recorded["test"] if n in by_name]


HELD_OUT_CORPUS = "held_out"


@dataclass(frozen=True)
class HeldOutCorpus:
    """The speakers of one held-out corpus: one `--eval_audio_dir`, or the run's held-out speakers."""

    name: str
    directory: str | None
    speakers: dict[str, list[Path]]
    genders: dict[str, str] = field(default_factory=dict)


def corpus_names(directories: Sequence[str | os.PathLike]) -> list[str]:
    """A short, unique, stable name per folder: its own name (`test-other`, `VCTK`), lengthened with
    parent folders (`a/test-other`, `b/test-other`) only where two different folders share it.

    The names key `EvaluationReport.corpora`, so they must not depend on the order of the options
    or on how a path was spelled; the same folder given twice gets the same name.
    """
    paths = [Path(d).resolve() for d in directories]
    depth = {path: 1 for path in paths}

    def name(path: Path) -> str:
        return Path(*path.parts[-depth[path]:]).as_posix()

    while True:
        owners: dict[str, set[Path]] = {}
        for path in depth:
            owners.setdefault(name(path), set()).add(path)
        clashing = [path for group in owners.values() if len(group) > 1 for path in group if depth[path] < len(path.parts)]
        if not clashing:
            return [name(path) for path in paths]
        for path in clashing:
            depth[path] += 1


def evaluation_corpora(eval_audio_dirs: Sequence[str | os.PathLike], held_out: dict[str, list[Path]],
                       held_out_homes: dict[str, str] | None = None) -> list[HeldOutCorpus]:
    """One corpus per folder given (a folder given twice counts once), then the run's held-out speakers
    that no folder given holds, one corpus per home (`held_out_homes`: speaker -> the name of the training
    corpus it comes from; `held_out` for a speaker without one)."""
    from audio import index_corpus

    corpora: dict[str, HeldOutCorpus] = {}
    for name, directory in zip(corpus_names(eval_audio_dirs), eval_audio_dirs):
        if name not in corpora:
            corpus = index_corpus(directory)
            speakers = {speaker: [u.path for u in utterances] for speaker, utterances in corpus.utterances_by_speaker().items()}
            corpora[name] = HeldOutCorpus(name, str(directory), speakers, dict(corpus.genders))
    listed = {speaker for corpus in corpora.values() for speaker in corpus.speakers}
    homes: dict[str, dict[str, list[Path]]] = {}
    for speaker, entries in held_out.items():
        if speaker not in listed:  # Scored once, from their folder.
            homes.setdefault((held_out_homes or {}).get(speaker, HELD_OUT_CORPUS), {})[speaker] = entries
    for home, speakers in homes.items():
        name = home if home not in corpora else f"{home} (held out)"
        corpora[name] = HeldOutCorpus(name, None, speakers)
    return list(corpora.values())


def held_out_homes(working_dir: str | os.PathLike, speakers: Sequence[str]) -> dict[str, str]:
    """The training corpus each of the run's held-out speakers comes from (its folder name, e.g. `CommonVoice-fa`),
    for those the cache records the sources of; `evaluation_corpora` scores each home's speakers as one corpus."""
    from audio import CorpusError, read_corpus_index
    from tasks import speaker_source_files

    try:
        files = speaker_source_files(working_dir)
    except CorpusError:
        return {}
    audio_dirs = [Path(d) for d in read_corpus_index(working_dir).get("audio_dirs", [])]
    homes = {}
    for speaker in speakers:
        found = [d.name for d in audio_dirs if speaker in files and d in files[speaker].parents]
        if found:
            homes[speaker] = found[0]
    return homes


def pooled_speakers(corpora: Sequence[HeldOutCorpus]) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """Speakers and genders of all corpora together; a speaker name found in two corpora becomes one speaker."""
    speakers: dict[str, list[Path]] = {}
    genders: dict[str, str] = {}
    for corpus in corpora:
        for speaker, paths in corpus.speakers.items():
            speakers.setdefault(speaker, []).extend(paths)
        genders.update(corpus.genders)
    return speakers, genders


def corpus_verification(
    corpora: Sequence[HeldOutCorpus], embed: Callable[[list], np.ndarray], num_trials: int | None, seed: int,
    trial_scores: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[dict[str, dict], list[str]]:
    """EER and minDCF of each corpus on trials among its own speakers only, and notes on corpora skipped or cut.
    `trial_scores`, when given, receives each corpus's (scores, labels), in trial order (for bootstraps).

    Pooled trials also pair files of different corpora, and such a pair (another channel, often
    another language) is an easy rejection that flatters the pooled EER; a corpus's own figure is
    what compares across models and with published results. `num_trials` applies to each corpus;
    a corpus with fewer pairs gets as many as it has, still half same-speaker.
    """
    from eval_metrics import verification_metrics
    from trials import count_pairs, generate_trials, score_trials

    figures: dict[str, dict] = {}
    notes: list[str] = []
    for corpus in corpora:
        speakers = {s: [str(p) for p in paths] for s, paths in corpus.speakers.items() if paths}
        num_target, num_nontarget = count_pairs(speakers)
        if not num_target or not num_nontarget:
            notes.append(f"{corpus.name}: no trials of its own: it needs 2 speakers, one with 2 utterances")
            continue
        wanted = num_trials
        if num_trials is not None and num_trials > 2 * min(num_target, num_nontarget):
            wanted = 2 * min(num_target, num_nontarget)
            notes.append(f"{corpus.name}: {wanted} trials instead of {num_trials}: it has {num_target} same-speaker and {num_nontarget} different-speaker pairs")
        trials = generate_trials(speakers, wanted, seed)
        paths = sorted({str(p) for trial in trials for p in (trial.path1, trial.path2)})
        scores, labels = score_trials(trials, dict(zip(paths, embed(paths))))
        if trial_scores is not None:
            trial_scores[corpus.name] = (scores, labels)
        metrics = verification_metrics(scores, labels)
        figures[corpus.name] = {
            **metrics.__dict__, "num_trials": len(trials), "num_target_trials": metrics.num_target,
            "speakers": sorted(speakers), "directory": corpus.directory,
        }
    return figures, notes


def fit_probe(train_embeddings: np.ndarray, train_labels: list[str]):
    """A logistic-regression probe for a label (gender, language) on frozen embeddings."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000).fit(train_embeddings, np.array(train_labels))


def probe_accuracy(train_embeddings: np.ndarray, train_labels: list[str], test_embeddings: np.ndarray, test_labels: list[str]) -> float:
    """Balanced accuracy of a logistic-regression probe for a label (gender, language) on frozen embeddings, per embedding."""
    from eval_metrics import balanced_accuracy

    return balanced_accuracy(fit_probe(train_embeddings, train_labels).predict(test_embeddings), np.array(test_labels))


def per_speaker_labels(probabilities: np.ndarray, classes: Sequence[str], owners: np.ndarray, num_speakers: int) -> np.ndarray:
    """Each speaker's label: the class of highest mean probability over its files.

    `probabilities` (files, classes) in the order of `classes`; `owners[i]` is the speaker (0 ..
    num_speakers - 1) of file i. A speaker of 50 short clips counts once, as one of 2 long files does.
    """
    sums = np.zeros((num_speakers, probabilities.shape[1]))
    np.add.at(sums, owners, probabilities)
    return np.asarray(classes)[np.argmax(sums / np.bincount(owners, minlength=num_speakers)[:, None], axis=1)]


def task_heads(checkpoint_file: str | os.PathLike):
    """The Hive-MTL heads as a model on 512-d embeddings (outputs keyed by head name), or None for a checkpoint without heads.

    The speaker head reads `speaker_task` (softmax head) or the embedding itself (AAM head);
    every label head (`<task>_pred`) reads `shared`, an adversarial one its own `<task>_pred_hidden`
    (its gradient reversal is the identity forward).
    """
    import keras

    import conv_models  # noqa: F401  (registers the custom layers the checkpoint refers to)
    from conv_models import SPEAKER_OUTPUT
    from constants import EMBEDDING_SIZE
    from inference import inspect_checkpoint

    if SPEAKER_OUTPUT not in inspect_checkpoint(checkpoint_file).layer_names:
        return None
    model = keras.models.load_model(checkpoint_file, compile=False)
    names = [layer.name for layer in model.layers]
    embedding = keras.Input((EMBEDDING_SIZE,))
    shared = model.get_layer("shared")(embedding) if "shared" in names else None
    speaker_input = model.get_layer("speaker_task")(shared) if "speaker_task" in names else embedding
    outputs = {SPEAKER_OUTPUT: model.get_layer(SPEAKER_OUTPUT)(speaker_input)}
    for name in names:
        if name.endswith("_pred") and name != SPEAKER_OUTPUT:
            head_input = model.get_layer(f"{name}_hidden")(embedding) if f"{name}_hidden" in names else shared
            outputs[name] = model.get_layer(name)(head_input)
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
    working_dir: str | os.PathLike | None,
    checkpoint_file: str | os.PathLike,
    eval_audio_dirs: tuple[str, ...] = (),
    trials_file: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    num_trials: int | None = None,
    window: str = "mean",
    seed: int = 0,
    plots_dir: str | os.PathLike | None = None,
    extra_genders: dict[str, str] | None = None,
    held_out_speakers: list[str] | None = None,
    label_tasks: Sequence | None = None,
    trial_scores: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    precision: str = "float32",
    trials_root: str | os.PathLike | None = None,
) -> EvaluationReport:
    """Every figure of a checkpoint on the cache of `working_dir` (and on unseen corpora if given).

    - reference protocol on the test utterances of the training speakers (one random window per
      utterance, 1 positive and 99 negatives per speaker), as the reference reports it;
    - verification trials between speakers never seen in training (`trials_file`, else all or
      `num_trials` pairs among `eval_audio_dirs`, else among the run's held-out speakers):
      EER, minDCF, with whole-utterance embeddings (`window`); without `trials_file`, for each
      corpus on its own (`report.corpora`, see `corpus_verification`) and pooled (`report.trials`);
    - for gender and each label task (`label_tasks`, default: the tasks the run declared), the
      balanced accuracy (mean recall per label, so the majority label earns nothing) of a
      logistic-regression probe on the frozen embeddings (trained on the training speakers'
      training utterances, tested on the unseen speakers), `<task>_acc_probe`; for a Hive-MTL
      checkpoint with that head, the head's balanced accuracy on the unseen speakers,
      `<task>_acc_head`; and how many unseen speakers carry each label (`report.unseen_labels`);
      a per-clip task (emotion) the same two over the unseen speakers' labelled clips, each clip
      once (`clip_task_accuracies`; each clip's label and predictions in `report.clip_predictions`);
    - closed-set speaker identification from the embedding (nearest training-speaker profile) on
      the test utterances (never the validation ones), and a Hive-MTL speaker head's accuracy.

    `held_out_speakers` restricts the unseen speakers to those named; `extra_genders` adds
    gender labels that no label file gives; `trial_scores` receives each corpus's trial scores;
    `precision` is the Embedder's (`precision.resolve_precision`). `trials_file` may be several
    published lists (VoxCeleb's, CN-Celeb's; `trials.read_published_trials`, paths relative to
    `trials_root` or inferred), each scored on its own in `report.trial_lists`, every file
    embedded once; a missing file stops the evaluation before any embedding work.
    """
    from audio import cached_entries
    from eval_metrics import reference_metrics, verification_metrics
    from inference import Embedder
    from trials import generate_trials, read_trial_lists, score_trials

    lists = [trials_file] if isinstance(trials_file, (str, os.PathLike)) else list(trials_file or ())
    trial_lists = read_trial_lists(lists, trials_root)
    embedder = Embedder.from_checkpoint(checkpoint_file, precision=precision)
    report = EvaluationReport(str(checkpoint_file))
    rng = np.random.default_rng(seed)
    embed = EmbeddingsOnce(embedder, window, rng)
    entries, genders = cached_entries(working_dir) if working_dir is not None else ({}, {})
    run = read_run_info(checkpoint_file)
    if run is None and working_dir is not None:
        report.notes.append("no speakers.json beside the checkpoint: every cached speaker counts as a training speaker")
    training_speakers = [s for s in (run["speakers"] if run else entries) if s in entries]
    held_out = {s: entries[s] for s in (run["held_out_speakers"] if run else []) if s in entries}
    recorded = read_run_split(checkpoint_file) or {}
    splits = {s: training_split(entries[s], recorded.get(s)) for s in training_speakers}

    test_embeddings = {s: embedder.embed_files(test, "random", rng) for s, (_, test) in splits.items() if test}
    if len(test_embeddings) >= 2 and any(len(e) >= 2 for e in test_embeddings.values()):
        metrics = reference_metrics(reference_protocol_scores(test_embeddings, rng))
        report.reference = {**metrics.__dict__, "speakers": sum(len(e) >= 2 for e in test_embeddings.values()), "line": metrics.format()}
    else:
        report.notes.append("reference protocol skipped: it needs 2 speakers with test utterances, one with at least 2")

    corpora = evaluation_corpora(eval_audio_dirs, held_out, held_out_homes(working_dir, list(held_out)) if held_out else None)
    trial_speakers, trial_genders = pooled_speakers(corpora)
    if held_out_speakers is not None:
        trial_speakers = {s: trial_speakers[s] for s in held_out_speakers if s in trial_speakers}
        corpora = [replace(c, speakers={s: p for s, p in c.speakers.items() if s in trial_speakers}) for c in corpora]
    genders = {**genders, **trial_genders, **(extra_genders or {})}
    seen = sorted(set(trial_speakers) & set(training_speakers))
    if seen:
        report.notes.append(f"trial speakers seen in training (the figures are not speaker-disjoint): {', '.join(seen)}")
    shared = sorted(s for s in trial_speakers if sum(s in c.speakers for c in corpora) > 1)
    if shared:
        report.notes.append(f"speakers in more than one corpus, one speaker each in the pooled trials: {', '.join(shared)}")
    if trial_lists:
        paths = sorted({str(p) for _, trials in trial_lists.values() for trial in trials for p in (trial.path1, trial.path2)})
        embeddings = dict(zip(paths, embed(paths)))  # Each file once, however many lists it is in.
        for name, (list_file, trials) in trial_lists.items():
            scores, labels = score_trials(trials, embeddings)
            metrics = verification_metrics(scores, labels)
            report.trial_lists[name] = {**metrics.__dict__, "num_trials": len(trials), "speakers": None, "window": window, "trials_file": str(list_file)}
        report.trials = next(iter(report.trial_lists.values())) if len(trial_lists) == 1 else None
        if plots_dir and report.trials:
            write_score_plots(plots_dir, scores, labels, metrics.eer_threshold)
    elif len(trial_speakers) >= 2:
        trials = generate_trials({s: [str(p) for p in paths] for s, paths in trial_speakers.items()}, num_trials, seed)
        paths = sorted({str(p) for trial in trials for p in (trial.path1, trial.path2)})
        scores, labels = score_trials(trials, dict(zip(paths, embed(paths))))
        metrics = verification_metrics(scores, labels)
        report.trials = {**metrics.__dict__, "num_trials": len(trials), "speakers": sorted(trial_speakers), "window": window, "trials_file": None}
        if plots_dir:
            write_score_plots(plots_dir, scores, labels, metrics.eer_threshold)
        report.corpora, notes = corpus_verification(corpora, embed, num_trials, seed, trial_scores)
        report.notes.extend(notes)
    else:
        report.notes.append("no speaker-disjoint trials: train with --held_out_speakers, or pass --eval_audio_dir or --trials")

    speaker_id = speaker_id_accuracy(embed, splits)
    if speaker_id is not None:
        report.heads["speaker_id_acc"] = speaker_id
    heads = task_heads(checkpoint_file)
    if heads is not None:
        report.heads.update(speaker_head_accuracy(heads, embed, splits, run["speakers"] if run else training_speakers))
    tasks = [gender_task(1.0), *(run_label_tasks(checkpoint_file) if label_tasks is None else label_tasks)]
    files = label_source_files(working_dir, trial_speakers, training_speakers, tasks)
    sources = entry_sources(working_dir) if working_dir is not None and any(task.per_clip for task in tasks) else {}
    for task in tasks:
        if task.per_clip:
            figures, predictions = clip_task_accuracies(task, heads, embed, splits, trial_speakers, sources, run)
            report.heads.update(figures)
            if predictions:
                report.clip_predictions[task.name] = predictions
            continue
        figures, counts, predictions = label_task_accuracies(task, heads, embed, splits, trial_speakers, files, genders, run)
        report.heads.update(figures)
        if counts:
            report.unseen_labels[task.name] = counts
            report.speaker_predictions[task.name] = predictions
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


def speaker_head_accuracy(heads, embed: EmbeddingsOnce, splits, class_speakers: list[str]) -> dict:
    """Speaker-head accuracy on the test utterances of the training speakers (a speed-perturbed class counts as its speaker).

    `class_speakers` are the run's training speakers in class order (its speakers.json), also those
    the cache no longer holds: class s + k * len(class_speakers) is speaker s at the k-th speed.
    """
    from conv_models import SPEAKER_OUTPUT

    class_of = {speaker: index for index, speaker in enumerate(class_speakers)}  # Not list.index per row: quadratic on VoxCeleb2.
    test_rows = [(p, class_of[s]) for s, (_, test) in splits.items() for p in test]
    if not test_rows:
        return {}
    predictions = heads.predict(embed([p for p, _ in test_rows]), verbose=0)[SPEAKER_OUTPUT]
    predicted = np.argmax(predictions, axis=1) % len(class_speakers)
    return {"speaker_id_acc_head": float(np.mean(predicted == np.array([c for _, c in test_rows])))}


def run_label_tasks(checkpoint_file: str | os.PathLike) -> list:
    """The label tasks the checkpoint's run declared (config.json beside it), besides gender."""
    from tasks import parse_tasks

    path = Path(checkpoint_file).parent / "config.json"
    return parse_tasks(json.loads(path.read_text()).get("tasks") or {}) if path.is_file() else []


def label_source_files(working_dir, trial_speakers: dict[str, list], training_speakers: list[str], tasks: Sequence) -> dict[str, Path]:
    """One source audio file per speaker to read folder labels from: cached speakers' from corpus.json, the others' own files."""
    from tasks import speaker_source_files

    if not any(isinstance(task.labels, dict) for task in tasks):  # Gender comes from the speaker tables, clip labels from clip tables.
        return {s: Path() for s in [*trial_speakers, *training_speakers]}
    cached = speaker_source_files(working_dir) if working_dir is not None else {}
    files = {s: Path(paths[0]) for s, paths in trial_speakers.items() if paths}
    return {**files, **{s: cached[s] for s in [*trial_speakers, *training_speakers] if s in cached}}


def label_task_accuracies(task, heads, embed: EmbeddingsOnce, splits, trial_speakers: dict[str, list], files: dict[str, Path],
                          genders: dict[str, str], run: dict | None) -> tuple[dict, dict[str, int], dict[str, list]]:
    """Probe and head balanced accuracies of one label task on the unseen speakers that carry its label; how many
    of those speakers carry each label; and each speaker's label and predictions.

    Per speaker (`<task>_acc_probe_per_speaker`, `<task>_acc_head_per_speaker`): the mean
    probability of a speaker's files decides its label, and each speaker counts once, so FSDD's
    six speakers of 50 digits each weigh as six speakers, not as most of the files. Per file
    (`<task>_acc_probe`, `<task>_acc_head`), as figures before these were reported. The probe is
    trained on the training speakers' training utterances.
    """
    from eval_metrics import balanced_accuracy

    unseen_labels = task.speaker_labels({s: files[s] for s in trial_speakers if s in files}, genders)
    training_labels = task.speaker_labels({s: files[s] for s in splits if s in files}, genders)
    speakers = [s for s, paths in trial_speakers.items() if s in unseen_labels and paths]
    if not speakers:
        return {}, {}, {}
    rows = [(p, i) for i, s in enumerate(speakers) for p in trial_speakers[s]]
    owners = np.array([i for _, i in rows])
    speaker_labels = np.array([unseen_labels[s] for s in speakers])
    file_labels = speaker_labels[owners]
    counts = {c: sum(v == c for v in unseen_labels.values()) for c in task.classes if c in unseen_labels.values()}
    figures, predictions = {}, {"speakers": speakers, "labels": speaker_labels.tolist()}
    scored = []  # (kind, class probabilities of each file, their classes)
    train_rows = [(p, training_labels[s]) for s, (train, _) in splits.items() if s in training_labels for p in train]
    if len({label for _, label in train_rows}) >= 2:
        probe = fit_probe(embed([p for p, _ in train_rows]), [label for _, label in train_rows])
        scored.append(("probe", probe.predict_proba(embed([p for p, _ in rows])), probe.classes_))
    if heads is not None and task.output in heads.output:
        classes = ((run or {}).get("tasks") or {}).get(task.name, {}).get("classes") or list(task.classes)
        outputs = heads.predict(embed([p for p, _ in rows]), verbose=0)[task.output]
        scored.append(("head", np.concatenate([1 - outputs, outputs], axis=1) if outputs.shape[1] == 1 else outputs, np.array(classes)))
    for kind, probabilities, classes in scored:
        figures[f"{task.name}_acc_{kind}"] = balanced_accuracy(classes[np.argmax(probabilities, axis=1)], file_labels)
        by_speaker = per_speaker_labels(probabilities, classes, owners, len(speakers))
        figures[f"{task.name}_acc_{kind}_per_speaker"] = balanced_accuracy(by_speaker, speaker_labels)
        predictions[kind] = by_speaker.tolist()
    return figures, counts, predictions


def clip_task_accuracies(task, heads, embed: EmbeddingsOnce, splits, trial_speakers: dict[str, list], sources: dict[str, Path],
                         run: dict | None) -> tuple[dict, dict[str, list]]:
    """Probe and head balanced accuracies of a per-clip task (emotion) over the labelled clips of the unseen speakers,
    and each such clip's speaker, label and predictions.

    Balanced over the task's classes (the mean of their recalls: 1/7 is chance for seven emotions,
    whatever their mix). The probe (`<task>_acc_probe`, logistic regression on the frozen embedding)
    is trained on the labelled training utterances of the training speakers; the head
    (`<task>_acc_head`) is the Hive-MTL checkpoint's own. A cache entry's label is its audio file's
    (`sources`: entry name -> audio file), an audio file's its own.
    """
    from eval_metrics import balanced_accuracy

    def audio_file(path) -> Path:
        path = Path(path)
        return sources.get(path.name, path) if path.suffix == ".npy" else path

    unseen = task.clip_labels({str(p): audio_file(p) for paths in trial_speakers.values() for p in paths})
    rows = [(p, s, unseen[str(p)]) for s, paths in trial_speakers.items() for p in paths if str(p) in unseen]
    if not rows:
        return {}, {}
    training = task.clip_labels({str(p): audio_file(p) for train, _ in splits.values() for p in train})
    labels = np.array([label for _, _, label in rows])
    predictions = {"clips": [str(p) for p, _, _ in rows], "speakers": [s for _, s, _ in rows], "labels": labels.tolist()}
    figures = {}
    if len(set(training.values())) >= 2:
        probe = fit_probe(embed(list(training)), list(training.values()))
        predicted = probe.predict(embed([p for p, _, _ in rows]))
        figures[f"{task.name}_acc_probe"], predictions["probe"] = balanced_accuracy(predicted, labels), predicted.tolist()
    if heads is not None and task.output in heads.output:
        classes = np.array(((run or {}).get("tasks") or {}).get(task.name, {}).get("classes") or list(task.classes))
        outputs = heads.predict(embed([p for p, _, _ in rows]), verbose=0)[task.output]
        predicted = classes[(outputs[:, 0] > 0.5).astype(int)] if outputs.shape[1] == 1 else classes[np.argmax(outputs, axis=1)]
        figures[f"{task.name}_acc_head"], predictions["head"] = balanced_accuracy(predicted, labels), predicted.tolist()
    return figures, predictions


def write_score_plots(plots_dir: str | os.PathLike, scores: np.ndarray, labels: np.ndarray, threshold: float) -> None:
    from plots import plot_det_curve, plot_score_histograms

    Path(plots_dir).mkdir(parents=True, exist_ok=True)
    plot_score_histograms(scores, labels, threshold, Path(plots_dir) / "score_histograms.png")
    plot_det_curve(scores, labels, Path(plots_dir) / "det_curve.png")


def write_projection_plot(plots_dir: str | os.PathLike, embeddings: np.ndarray, speakers: list[str], genders: list[str | None]) -> None:
    from plots import plot_embedding_projection

    Path(plots_dir).mkdir(parents=True, exist_ok=True)
    plot_embedding_projection(embeddings, speakers, genders, Path(plots_dir) / "embedding_projection.png")
