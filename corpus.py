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
VCTK_SPEAKERS_FILE_NAME = "speaker-info.txt"


class CorpusError(ValueError):
    """A corpus or feature cache that cannot be used: no audio, unreadable layout, no cache."""



@dataclass(frozen=True)
class Utterance:
    """One recording: `speaker` and `utterance` name its cache entry `<speaker>_<utterance>.npy`."""

    speaker: str
    utterance: str
    path: Path

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


def natural_key(text: str) -> list:
    """Sort key that orders 'a2' before 'a10'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def utterance_from_path(path: Path, root: Path) -> Utterance | None:
    """Name a file: LibriSpeech `<spk>-<chapter>-<n>` anywhere, else `<root>/<speaker>/**/<file>`."""
    match = LIBRISPEECH_NAME.match(path.stem)
    if match:
        return Utterance(match["speaker"], f"{match['chapter']}-{match['index']}", path)
    relative = path.relative_to(root)
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
    """A plain speaker table: a header row naming `speaker` and `gender` columns (tab or comma); see `gender_label`."""
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    header_line = lines[0][1]
    delimiter = "\t" if "\t" in header_line else ","
    header = [name.strip().lower() for name in header_line.split(delimiter)]
    if "speaker" not in header or not ({"gender", "sex"} & set(header)):
        raise CorpusError(f"{path}: a speaker table needs a header with 'speaker' and 'gender' columns; got {header_line!r}")
    speaker_column = header.index("speaker")
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
    table with `speaker` and `gender` columns (Common Voice style `speakers.tsv`, or CSV). A gender
    may be written M, F, male or female in any case (`gender_label`); an empty one is no label, and
    any other value raises CorpusError naming the file, the line and the speaker."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such gender label file")
    text = path.read_text(encoding="utf-8", errors="replace")
    first = next((line for line in text.splitlines() if line.strip() and not line.startswith(";")), "")
    if "speaker" in first.lower() and ("\t" in first or "," in first):
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
    """Find every audio file under `audio_dir` and name its speaker and utterance; read genders.

    Genders come from the label files found in and above the corpus (SPEAKERS.TXT,
    speaker-info.txt, speakers.tsv), then from `genders_file`, which wins.
    """
    root = Path(audio_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such audio directory")
    utterances: list[Utterance] = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()):
        utterance = utterance_from_path(path, root)
        if utterance is None:
            logger.warning("%s: skipped, not inside a speaker folder and not LibriSpeech-named", path)
            continue
        utterances.append(utterance)
    if not utterances:
        raise CorpusError(f"{root}: no {'/'.join(e[1:].upper() for e in AUDIO_EXTENSIONS)} files found (expected <root>/<speaker>/**/<audio> or LibriSpeech layout)")
    duplicates = _duplicate_cache_names(utterances)
    if duplicates:
        raise CorpusError(f"{root}: several files map to the same cache entry, e.g. {duplicates[0]}")
    genders: dict[str, str] = {}
    for gender_file in reversed(find_gender_files(root)):  # Nearest files win.
        genders.update(read_gender_labels(gender_file))
    if genders_file is not None:
        genders.update(read_gender_labels(genders_file))
    speakers = {u.speaker for u in utterances}
    return Corpus(root, utterances, {s: g for s, g in genders.items() if s in speakers})


def _duplicate_cache_names(utterances: list[Utterance]) -> list[str]:
    seen: dict[str, Path] = {}
    duplicates = []
    for utterance in utterances:
        if utterance.cache_name in seen:
            duplicates.append(f"{seen[utterance.cache_name]} and {utterance.path}")
        seen[utterance.cache_name] = utterance.path
    return duplicates
