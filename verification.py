"""Speaker verification of held-out corpora: the reference protocol's score matrix, the corpora a
checkpoint is scored on, and EER / minDCF per corpus on trials among its own speakers.

`test.evaluate_checkpoint` orchestrates these; every embedding goes through `inference.Embedder`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from constants import FRAMES_PER_SECOND, INFERENCE_FILES_PER_CHUNK, NUM_NEGATIVES_PER_SPEAKER


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


def verification_line(figures: dict) -> str:
    """`speakers = 2, trials = 28 (12 same speaker), EER = 25.00%, threshold = 0.412, minDCF(0.01) = ..., minDCF(0.05) = ...`,
    then minCllr, and the calibrated figures (actDCF(0.01), Cllr, half total error) where there are."""
    speakers = f"speakers = {len(figures['speakers'])}, " if figures.get("speakers") is not None else ""
    line = (
        f"{speakers}trials = {figures['num_trials']} ({figures['num_target']} same speaker), EER = {100 * figures['eer']:.2f}%, "
        f"threshold = {figures['eer_threshold']:.3f}, minDCF(0.01) = {figures['min_dcf_001']:.3f}, minDCF(0.05) = {figures['min_dcf_005']:.3f}"
    )
    if "min_cllr" in figures:
        line += f", minCllr = {figures['min_cllr']:.3f}"
    if "cllr" in figures:
        line += f", actDCF(0.01) = {figures['act_dcf_001']:.3f}, Cllr = {figures['cllr']:.3f}, HTER = {100 * figures['half_total_error']:.2f}%"
    return line


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
    from corpus import CorpusError, index_corpus

    corpora: dict[str, HeldOutCorpus] = {}
    for name, directory in zip(corpus_names(eval_audio_dirs), eval_audio_dirs):
        if name not in corpora:
            corpus = index_corpus(directory)
            if any(u.segment for u in corpus.utterances):
                raise CorpusError(f"{directory}: a Kaldi segments file cuts its recordings, but an evaluation folder is scored file by file; "
                                  "cache it with build-mfcc-cache and hold its speakers out of training instead")
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
    from corpus import CorpusError
    from feature_cache import read_corpus_index
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
    trial_scores: dict[str, tuple[np.ndarray, np.ndarray]] | None = None, calibration=None, score_norm: str = "none",
    cohort: np.ndarray | None = None,
) -> tuple[dict[str, dict], list[str]]:
    """EER, minDCF and minCllr of each corpus on trials among its own speakers only, and notes on corpora skipped or cut.
    `trial_scores`, when given, receives each corpus's (scores, labels), in trial order (for bootstraps). With a
    `calibration.Calibration` (then `embed` is an `EmbeddingsOnce`, which knows each file's seconds), also the
    figures of its LLRs (`calibrated_figures`). `score_norm` ('mean', 'asnorm' against `cohort`: `score_norm.py`)
    normalises every score first.

    Pooled trials also pair files of different corpora, and such a pair (another channel, often
    another language) is an easy rejection that flatters the pooled EER; a corpus's own figure is
    what compares across models and with published results. `num_trials` applies to each corpus;
    a corpus with fewer pairs gets as many as it has, still half same-speaker.
    """
    from trials import count_pairs, generate_trials

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
        found, scores, labels = trial_set_figures(trials, embed, calibration, score_norm, cohort)
        if trial_scores is not None:
            trial_scores[corpus.name] = (scores, labels)
        figures[corpus.name] = {**found, "speakers": sorted(speakers), "directory": corpus.directory}
    return figures, notes


def trial_set_figures(trials: Sequence, embed: Callable[[list], np.ndarray], calibration=None, score_norm: str = "none",
                      cohort: np.ndarray | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    """(EER, minDCF, minCllr and trial counts of the trials, with a `calibration.Calibration` also the figures of
    its LLRs (`calibrated_figures`); their scores; their labels). One path for a corpus's own trials and a
    published list: the same normalisation and calibration."""
    from eval_metrics import min_cllr, verification_metrics

    scores, labels, seconds_a, seconds_b = trial_scores_and_seconds(trials, embed, calibration is not None, score_norm, cohort)
    metrics = verification_metrics(scores, labels)
    figures = {**metrics.__dict__, "num_trials": len(trials), "num_target_trials": metrics.num_target, "min_cllr": min_cllr(scores, labels)}
    if calibration is not None:
        figures.update(calibrated_figures(calibration.llr(scores, seconds_a, seconds_b), labels))
    return figures, scores, labels


def trial_scores_and_seconds(trials: Sequence, embed: Callable[[list], np.ndarray], with_seconds: bool = True, score_norm: str = "none",
                             cohort: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """(cosine scores, normalised by `score_norm` against `cohort` (`score_norm.py`), labels, seconds of each first side,
    of each second side) of the trials; the seconds (of what `embed`, an `EmbeddingsOnce`, embedded of each file) are
    None without `with_seconds`."""
    from score_norm import normalised_trial_scores
    from trials import trial_labels, trial_rows

    paths = sorted({str(p) for trial in trials for p in (trial.path1, trial.path2)})
    rows, first, second = trial_rows(trials, dict(zip(paths, embed(paths))))
    scores, labels = normalised_trial_scores(rows, first, second, score_norm, cohort), trial_labels(trials)
    if not with_seconds:
        return scores, labels, None, None
    return scores, labels, *(np.array([embed.seconds[str(getattr(t, side))] for t in trials]) for side in ("path1", "path2"))


def calibrated_figures(llrs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Cllr of the LLRs, the actual DCF of their Bayes decision at p_target 0.01, and the half total error rate
    (mean of the miss and false-alarm rates) of `verify`'s default decision (prior VERIFY_PRIOR, unit costs)."""
    from constants import MIN_DCF_P_TARGETS, VERIFY_PRIOR
    from eval_metrics import actual_dcf, bayes_threshold, cllr

    low_p = MIN_DCF_P_TARGETS[0]
    # At unit costs the normalised DCF at the prior 0.5 is P_miss + P_fa: twice the half total error rate.
    half_total_error = actual_dcf(llrs, labels, bayes_threshold(VERIFY_PRIOR), VERIFY_PRIOR) * min(VERIFY_PRIOR, 1 - VERIFY_PRIOR)
    return {"cllr": cllr(llrs, labels), "act_dcf_001": actual_dcf(llrs, labels, bayes_threshold(low_p), low_p), "half_total_error": half_total_error}


def crop_name(seconds: float) -> str:
    """How a crop length keys `EvaluationReport.durations` ("1", "0.5"): what test-model writes and the experiment CSV reads."""
    return f"{seconds:g}"


def centre_crop(features: np.ndarray, frames: int) -> np.ndarray:
    """The middle `frames` frames of an utterance's features; the whole utterance where it is no longer."""
    start = max(0, (len(features) - frames) // 2)
    return features[start : start + frames]


class EmbeddingsOnce:
    """Embeds each cache entry or audio file once, whole or as its centred crop of `crop_seconds` (of the front
    end's frames, after the checkpoint's trim), and remembers the embedding and the seconds it saw (`seconds`).

    Evaluations at several crops of the same files share one `features` dict, so each file is decoded once.
    """

    def __init__(self, embedder, mode: str, rng: np.random.Generator, crop_seconds: float | None = None, features: dict | None = None):
        self.embedder, self.mode, self.rng = embedder, mode, rng
        self.crop_frames = None if crop_seconds is None else max(1, round(crop_seconds * FRAMES_PER_SECOND))
        self.features = features
        self.known: dict[str, np.ndarray] = {}
        self.seconds: dict[str, float] = {}

    def __call__(self, paths: list) -> np.ndarray:
        from inference import read_features

        keys = [str(p) for p in paths]
        missing = [k for k in dict.fromkeys(keys) if k not in self.known]
        for start in range(0, len(missing), INFERENCE_FILES_PER_CHUNK):  # Features of one chunk of files in memory at a time.
            chunk = missing[start : start + INFERENCE_FILES_PER_CHUNK]
            if self.features is None:
                features = read_features(chunk, self.embedder.frontend)
            else:
                unread = [k for k in chunk if k not in self.features]
                self.features.update(zip(unread, read_features(unread, self.embedder.frontend)))
                features = [self.features[k] for k in chunk]
            crops = features if self.crop_frames is None else [centre_crop(f, self.crop_frames) for f in features]
            self.known.update(zip(chunk, self.embedder.embed_mfccs(crops, self.mode, self.rng)))
            self.seconds.update((k, len(crop) / FRAMES_PER_SECOND) for k, crop in zip(chunk, crops))
        return np.stack([self.known[k] for k in keys])
