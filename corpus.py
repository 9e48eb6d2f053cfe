"""The corpus index: which audio files a corpus folder holds, whose speaker each is, and the speakers' genders."""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from constants import AUDIO_EXTENSIONS, GENDER_TABLE_NAMES, SPEAKERS_FILE_NAME

logger = logging.getLogger(__name__)

LIBRISPEECH_NAME = re.compile(r"^(?P<speaker>\d+)-(?P<chapter>\d+)-(?P<index>\d+)$")
CELEB_SPEAKER = re.compile(r"^id\d{5}$")  # VoxCeleb1/2 and CN-Celeb speaker folders: <id>/<video>/<n>, data/<id>/<genre>-<session>-<n>.
CELEB_FILE_NAME = re.compile(r"^(?P<speaker>id\d{5})-(?P<utterance>.+)$")  # CN-Celeb's eval/: <id>-<genre>-<session>-<n>, <id>-enroll.
VCTK_SPEAKERS_FILE_NAME = "speaker-info.txt"
SPEAKER_COLUMNS = ("speaker", "voxceleb1 id", "voxceleb2 id")  # The speaker column of a speaker table (VoxCeleb's meta files name theirs so).
KALDI_RECORDINGS = "wav.scp"  # A Kaldi data directory is recognised by it.


class CorpusError(ValueError):
    """A corpus or feature cache that cannot be used: no audio, unreadable layout, no cache."""



@dataclass(frozen=True)
class Utterance:
    """One recording, or with `segment` (start, end seconds; end None: to the end) a span of one.

    `speaker` and `utterance` name its cache entry `<speaker>_<utterance>.npy`.
    """

    speaker: str
    utterance: str
    path: Path
    segment: tuple[float, float | None] | None = None

    @property
    def cache_name(self) -> str:
        return f"{self.speaker}_{self.utterance}.npy"


@dataclass
class Corpus:
    """The utterances of a corpus, grouped by speaker, with the gender labels that exist."""

    root: Path
    utterances: list[Utterance]
    genders: dict[str, str] = field(default_factory=dict)

    @property
    def speakers(self) -> list[str]:
        return sorted({u.speaker for u in self.utterances}, key=natural_key)

    def utterances_by_speaker(self) -> dict[str, list[Utterance]]:
        grouped: dict[str, list[Utterance]] = defaultdict(list)
        for utterance in self.utterances:
            grouped[utterance.speaker].append(utterance)
        return {speaker: sorted(grouped[speaker], key=lambda u: natural_key(u.utterance)) for speaker in self.speakers}


_DIGIT_RUNS = re.compile(r"(\d+)")


def natural_key(text: str) -> list:
    """Sort key that orders 'a2' before 'a10': the text's runs of digits as numbers, between its other runs.

    Splitting on a captured pattern puts the digit runs at the odd places, so only those are converted
    (a run-start start training reads this for every utterance of the corpus)."""
    parts = _DIGIT_RUNS.split(text)
    parts[1::2] = map(int, parts[1::2])
    return parts


def utterance_from_path(path: Path, root: Path) -> Utterance | None:
    """Name a file: LibriSpeech `<spk>-<chapter>-<n>` anywhere; else below a VoxCeleb/CN-Celeb `idNNNNN`
    folder at any depth (the utterance: the path after it); else CN-Celeb's eval `idNNNNN-<rest>`;
    else `<root>/<speaker>/**/<file>`."""
    match = LIBRISPEECH_NAME.match(path.stem)
    if match:
        return Utterance(match["speaker"], f"{match['chapter']}-{match['index']}", path)
    relative = path.relative_to(root)
    folders = relative.parts[:-1]
    celeb = next((depth for depth, folder in enumerate(folders) if CELEB_SPEAKER.match(folder)), None)
    if celeb is not None:
        return Utterance(folders[celeb], "-".join(relative.with_suffix("").parts[celeb + 1 :]), path)
    match = CELEB_FILE_NAME.match(path.stem)
    if match:
        return Utterance(match["speaker"], match["utterance"], path)
    if len(relative.parts) < 2:
        return None  # A file directly under the root belongs to no speaker folder.
    speaker = relative.parts[0]
    utterance = "-".join(relative.with_suffix("").parts[1:])
    return Utterance(speaker, utterance, path)


GENDER_WORDS = {"m": "M", "male": "M", "f": "F", "female": "F", "male_masculine": "M", "female_feminine": "F"}  # Any case.


def gender_label(value: str) -> str | None:
    """'M' or 'F' of a gender cell: M, F, male or female in any case (and Common Voice's male_masculine,
    female_feminine); None for an empty cell (no label). Anything else raises ValueError."""
    value = value.strip()
    if not value:
        return None
    if value.lower() not in GENDER_WORDS:
        raise ValueError(f"gender {value!r} is none of M, F, male, female (any case); leave the cell empty for a speaker without a label")
    return GENDER_WORDS[value.lower()]


def _gender_of_row(path: Path, line_number: int, speaker: str, value: str) -> str | None:
    """`gender_label` of one row of a label file, its error naming the file, the line and the speaker."""
    try:
        return gender_label(value)
    except ValueError as error:
        raise CorpusError(f"{path}, line {line_number} (speaker {speaker}): {error}") from None


def read_gender_table(path: Path, text: str) -> dict[str, str]:
    """A plain speaker table: a header row naming `speaker` (or VoxCeleb's `VoxCeleb1 ID`) and `gender` columns, tab or comma
    separated; see `gender_label`."""
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    header_line = lines[0][1]
    delimiter = "\t" if "\t" in header_line else ","
    header = [name.strip().lower() for name in header_line.split(delimiter)]
    speaker_name = next((name for name in SPEAKER_COLUMNS if name in header), None)
    if speaker_name is None or not ({"gender", "sex"} & set(header)):
        raise CorpusError(f"{path}: a speaker table needs a header with 'speaker' and 'gender' columns; got {header_line!r}")
    speaker_column = header.index(speaker_name)
    gender_column = header.index("gender" if "gender" in header else "sex")
    genders = {}
    for number, line in lines[1:]:
        fields = [part.strip() for part in line.split(delimiter)]
        speaker = fields[speaker_column]
        sex = _gender_of_row(path, number, speaker, fields[gender_column] if len(fields) > gender_column else "")
        if sex is not None:
            genders[speaker] = sex
    return genders


def read_gender_labels(path: str | os.PathLike) -> dict[str, str]:
    """Speaker -> 'F'/'M' from LibriSpeech `SPEAKERS.TXT`, VCTK `speaker-info.txt`, or a speaker
    table with `speaker` and `gender` columns (Common Voice style `speakers.tsv`, CSV, VoxCeleb's `vox1_meta.csv`). A gender
    may be written M, F, male or female in any case (`gender_label`); an empty one is no label, and
    any other value raises CorpusError naming the file, the line and the speaker."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such gender label file")
    text = path.read_text(encoding="utf-8", errors="replace")
    first = next((line for line in text.splitlines() if line.strip() and not line.startswith(";")), "")
    if any(name in first.lower() for name in SPEAKER_COLUMNS) and ("\t" in first or "," in first):
        return read_gender_table(path, text)
    genders: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith((";", "#")):  # Comments: LibriSpeech's ';', a '#' line under a copied VCTK table.
            continue
        if "|" in line:  # LibriSpeech: ID | SEX | SUBSET | MINUTES | NAME
            fields = [part.strip() for part in line.split("|")]
            speaker, sex = fields[0], fields[1] if len(fields) > 1 else ""
        else:  # VCTK: ID AGE GENDER ACCENTS REGION, ids with or without the 'p'.
            fields = line.split()
            if len(fields) < 3 or fields[0] == "ID":
                continue
            speaker, sex = (fields[0] if fields[0].startswith("p") else f"p{fields[0]}"), fields[2]
        label = _gender_of_row(path, number, speaker, sex)
        if label is not None:
            genders[speaker] = label
    return genders


def find_gender_files(root: Path) -> list[Path]:
    """Gender label files inside `root` and in its ancestors (LibriSpeech keeps SPEAKERS.TXT at its top)."""
    names = (SPEAKERS_FILE_NAME, VCTK_SPEAKERS_FILE_NAME, *GENDER_TABLE_NAMES)
    found = [p for name in names for p in sorted(root.rglob(name))]
    for ancestor in root.resolve().parents:
        found += [ancestor / name for name in names if (ancestor / name).is_file()]
    return found


def index_corpus(audio_dir: str | os.PathLike, genders_file: str | os.PathLike | None = None) -> Corpus:
    """Find every utterance of the corpus in `audio_dir`, name its speaker and utterance; read genders.

    A folder with a `wav.scp` is a Kaldi data directory (`read_kaldi_dir`); any other folder is
    searched for audio files (`utterance_from_path`), and genders come from the label files
    found in and above it (SPEAKERS.TXT, speaker-info.txt, speakers.tsv). `genders_file` wins.
    """
    root = Path(audio_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such audio directory")
    if (root / KALDI_RECORDINGS).is_file():
        utterances, genders = read_kaldi_dir(root)
    else:
        utterances = _utterances_in_folders(root)
        genders = {}
        for gender_file in reversed(find_gender_files(root)):  # Nearest files win.
            genders.update(read_gender_labels(gender_file))
    duplicates = _duplicate_cache_names(utterances)
    if duplicates:
        raise CorpusError(f"{root}: several files map to the same cache entry, e.g. {duplicates[0]}")
    if genders_file is not None:
        genders.update(read_gender_labels(genders_file))
    speakers = {u.speaker for u in utterances}
    return Corpus(root, utterances, {s: g for s, g in genders.items() if s in speakers})


def _utterances_in_folders(root: Path) -> list[Utterance]:
    utterances: list[Utterance] = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()):
        utterance = utterance_from_path(path, root)
        if utterance is None:
            logger.warning("%s: skipped, not inside a speaker folder and not LibriSpeech-named", path)
            continue
        utterances.append(utterance)
    if not utterances:
        raise CorpusError(f"{root}: no {'/'.join(e[1:].upper() for e in AUDIO_EXTENSIONS)} files found "
                          "(expected <root>/<speaker>/**/<audio>, LibriSpeech, VoxCeleb or CN-Celeb layout, or a Kaldi wav.scp)")
    return utterances


# ----------------------------------------------------------------------------------------------
# Kaldi data directories.


def kaldi_data_dir(data_dir: str | os.PathLike) -> Path:
    """`data_dir` if it is a Kaldi data directory (it has a wav.scp); else CorpusError saying what is missing."""
    root = Path(data_dir)
    if not (root / KALDI_RECORDINGS).is_file():
        raise CorpusError(f"{root}: not a Kaldi data directory (no {KALDI_RECORDINGS})")
    return root


def read_kaldi_table(path: Path) -> list[tuple[int, str, str]]:
    """(line number, key, rest of the line) of each non-empty line of a Kaldi table file."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        key, _, rest = line.strip().partition(" ")
        if key:
            if not rest.strip():
                raise CorpusError(f"{path}, line {number}: '{key}' has no value")
            rows.append((number, key, rest.strip()))
    return rows


def read_kaldi_dir(root: Path) -> tuple[list[Utterance], dict[str, str]]:
    """Utterances and genders of a Kaldi data directory.

    `wav.scp` (recording -> audio file; plain paths only, relative ones from the current folder or
    else from `root`), `utt2spk` or `spk2utt`, optional `segments` (utterance -> recording, start,
    end seconds; an end of -1 is the end of the recording) and optional `spk2gender` (m/f). As
    Kaldi's `utils/validate_data_dir.sh` does, refuses a directory whose speaker table and
    utterances (`segments`, else `wav.scp`) list different utterances; and an audio file that
    does not exist, naming its line, before any is read.
    """
    scp = root / KALDI_RECORDINGS
    recordings: dict[str, Path] = {}
    scp_lines: dict[str, tuple[int, str]] = {}  # Recording -> its line number and path as written.
    for number, key, value in read_kaldi_table(scp):
        if value.endswith("|") or value.startswith("-"):
            raise CorpusError(f"{scp}, line {number}: '{key}' is read through a command ({value!r}); only plain audio paths are read: "
                              "write the audio to files and list their paths")
        path = Path(value)
        recordings[key] = path if path.is_absolute() or path.exists() else root / path
        scp_lines[key] = (number, value)
    speakers_file, speaker_rows = _kaldi_speakers(root)
    speaker_of = {utterance: speaker for utterance, (speaker, _) in speaker_rows.items()}
    spans: dict[str, tuple[str, tuple[float, float | None] | None]] = {key: (key, None) for key in recordings}
    utterances_file = scp
    if (root / "segments").is_file():
        utterances_file = root / "segments"
        spans = {utterance: (recording, segment) for utterance, recording, segment in _kaldi_segments(utterances_file, recordings)}
    missing = [key for key in spans if key not in speaker_of]
    if missing:
        raise CorpusError(f"{root}: {len(missing)} utterances have no speaker in utt2spk/spk2utt, e.g. '{missing[0]}'")
    _refuse_utterances_without_audio(speakers_file, speaker_rows, utterances_file, set(spans))
    _refuse_missing_audio(scp, scp_lines, {recording: recordings[recording] for recording, _ in spans.values()})
    utterances = [Utterance(speaker_of[key], key, recordings[recording], segment) for key, (recording, segment) in sorted(spans.items())]
    genders: dict[str, str] = {}
    if (root / "spk2gender").is_file():
        for number, speaker, value in read_kaldi_table(root / "spk2gender"):
            label = _gender_of_row(root / "spk2gender", number, speaker, value)
            if label is not None:
                genders[speaker] = label
    return utterances, genders


def _refuse_utterances_without_audio(speakers_file: Path, speaker_rows: dict[str, tuple[str, int]], utterances_file: Path, utterances: set[str]) -> None:
    """CorpusError naming the first line of utt2spk/spk2utt whose utterance `utterances_file` (segments, else wav.scp) lacks."""
    unlisted = sorted((key for key in speaker_rows if key not in utterances), key=lambda key: speaker_rows[key][1])
    if unlisted:
        first = unlisted[0]
        raise CorpusError(f"{speakers_file}, line {speaker_rows[first][1]}: utterance '{first}' is not in {utterances_file.name} "
                          f"({len(unlisted)} of its {len(speaker_rows)} utterances are not): list the same utterances in both "
                          "(Kaldi's utils/fix_data_dir.sh keeps those in both)")


def _refuse_missing_audio(scp: Path, scp_lines: dict[str, tuple[int, str]], used: dict[str, Path]) -> None:
    """CorpusError naming the first line of wav.scp whose audio file, among the recordings `used`, does not exist."""
    absent = sorted((key for key, path in used.items() if not path.is_file()), key=lambda key: scp_lines[key][0])
    if absent:
        number, value = scp_lines[absent[0]]
        where = "" if Path(value).is_absolute() else f" (a relative path is read from the current folder {Path.cwd()}, else from {scp.parent})"
        raise CorpusError(f"{scp}, line {number}: the audio file of '{absent[0]}' does not exist: {value}{where} "
                          f"({len(absent)} of the {len(used)} recordings are missing)")


def _kaldi_speakers(root: Path) -> tuple[Path, dict[str, tuple[str, int]]]:
    """The speaker table (`utt2spk`, else `spk2utt`) and utterance -> (speaker, its line there)."""
    if (root / "utt2spk").is_file():
        path = root / "utt2spk"
        return path, {utterance: (speaker, number) for number, utterance, speaker in read_kaldi_table(path)}
    if (root / "spk2utt").is_file():
        path = root / "spk2utt"
        return path, {utterance: (speaker, number) for number, speaker, utterances in read_kaldi_table(path) for utterance in utterances.split()}
    raise CorpusError(f"{root}: a Kaldi data directory needs utt2spk or spk2utt beside {KALDI_RECORDINGS}")


def _kaldi_segments(path: Path, recordings: dict[str, Path]) -> list[tuple[str, str, tuple[float, float | None]]]:
    """(utterance, recording, (start, end)) of each line of a Kaldi `segments` file."""
    segments = []
    for number, utterance, value in read_kaldi_table(path):
        fields = value.split()
        try:
            recording, start, end = fields[0], float(fields[1]), float(fields[2])
        except (IndexError, ValueError):
            raise CorpusError(f"{path}, line {number}: expected '<utterance> <recording> <start> <end>' (seconds); got '{utterance} {value}'") from None
        if recording not in recordings:
            raise CorpusError(f"{path}, line {number}: recording '{recording}' of '{utterance}' is not in {KALDI_RECORDINGS}")
        if start < 0 or (end >= 0 and end <= start):
            raise CorpusError(f"{path}, line {number}: '{utterance}' spans {start:g} to {end:g} s: the end must come after the start")
        segments.append((utterance, recording, (start, None if end < 0 else end)))
    return segments


def _duplicate_cache_names(utterances: list[Utterance]) -> list[str]:
    seen: dict[str, Path] = {}
    duplicates = []
    for utterance in utterances:
        if utterance.cache_name in seen:
            duplicates.append(f"{seen[utterance.cache_name]} and {utterance.path}")
        seen[utterance.cache_name] = utterance.path
    return duplicates
