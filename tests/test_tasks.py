"""tasks.py: declared Hive-MTL label tasks, their labels per speaker, and refused declarations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks import LabelTask, gender_task, parse_tasks, resolve_clip_tables

LANGUAGE = {"language": {"labels": {"LibriSpeech": "en", "CommonVoice-fa": "fa"}, "loss": "binary", "weight": 0.5}}
EMODB = (Path(__file__).resolve().parents[2] / "shared" / "data" / "EmoDB").resolve()
EMOTION = {"emotion": {"clips": str(EMODB / "clips.tsv"), "column": "emotion", "loss": "categorical"}}


def test_a_declared_task_has_its_head_name_classes_and_weight():
    (task,) = parse_tasks(LANGUAGE)
    assert (task.name, task.output, task.classes, task.units, task.loss, task.weight) == ("language", "language_pred", ("en", "fa"), 1, "binary", 0.5)
    accent = parse_tasks({"accent": {"labels": {"a": "north", "b": "south", "c": "west"}, "loss": "categorical"}})[0]
    assert (accent.units, accent.weight) == (3, 1.0)


def test_folder_labels_come_from_the_deepest_declared_folder_of_a_speakers_file():
    task = LabelTask("corpus", {"data": "other", "CommonVoice-fa": "fa", "LibriSpeech": "en"})
    files = {
        "19": Path("/data/LibriSpeech/train-clean-100/19/198/19-198-0001.flac"),
        "00243bfe": Path("/data/CommonVoice-fa/00243bfe/common_voice_fa_1.mp3"),
        "p225": Path("/elsewhere/VCTK/p225/p225_001.wav"),
    }
    labels = task.speaker_labels(files, genders={})
    assert labels == {"19": "en", "00243bfe": "fa"}  # "data" is a parent of both, but the corpus folder is deeper; VCTK has no label.
    assert task.classes == ("en", "fa", "other")  # Sorted: class indices do not depend on the declaration's order.
    np.testing.assert_array_equal(task.values(["00243bfe", "p225", "19"], labels), [1.0, np.nan, 0.0])


def test_gender_labels_come_from_the_speaker_tables_female_as_one():
    task = gender_task(1.0)
    labels = task.speaker_labels({"a": Path(), "b": Path(), "c": Path()}, {"a": "F", "b": "M", "c": "X"})
    assert labels == {"a": "F", "b": "M"}
    np.testing.assert_array_equal(task.values(["a", "b", "c"], labels), [1.0, 0.0, np.nan])


def test_a_clips_table_labels_each_clip_and_its_column_gives_the_classes():
    (task,) = parse_tasks(EMOTION)
    assert (task.per_clip, task.output, task.units) == (True, "emotion_pred", 7)
    assert task.classes == ("anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness")  # Sorted, from the table's column.
    files = {  # Keys as a caller names clips (cache entries), values their audio files, spelled any way.
        "03_03a01Fa.npy": EMODB / "03" / "03a01Fa.wav",
        "03_03a01Wa.npy": EMODB / "03" / ".." / "03" / "03a01Wa.wav",
        "08_08a01Na.npy": EMODB / "08" / "08a01Na.wav",
        "19_198-0001.npy": Path("/data/LibriSpeech/train-clean-100/19/198/19-198-0001.flac"),  # Not in the table: no label.
    }
    labels = task.clip_labels(files)
    assert labels == {"03_03a01Fa.npy": "happiness", "03_03a01Wa.npy": "anger", "08_08a01Na.npy": "neutral"}
    np.testing.assert_array_equal(task.values(list(files), labels), [4.0, 0.0, 5.0, np.nan])


def test_clips_without_a_label_in_the_table_have_none(tmp_path):
    table = tmp_path / "clips.csv"
    table.write_text("path,mood\na/1.wav,calm\na/2.wav,\nb/3.wav,tense\n")
    (task,) = parse_tasks({"mood": {"clips": str(table), "column": "mood", "loss": "binary"}})
    assert task.clip_labels({k: tmp_path / k for k in ("a/1.wav", "a/2.wav", "b/3.wav")}) == {"a/1.wav": "calm", "b/3.wav": "tense"}
    assert task.classes == ("calm", "tense")


def test_relative_clips_tables_are_taken_relative_to_the_declaring_file(tmp_path):
    declared = {"emotion": {"clips": "EmoDB/clips.tsv", "column": "emotion"}, "language": LANGUAGE["language"]}
    resolved = resolve_clip_tables(declared, tmp_path / "recipes")
    assert resolved["emotion"]["clips"] == str((tmp_path / "recipes" / "EmoDB" / "clips.tsv").resolve())
    assert resolved["language"] == LANGUAGE["language"] and resolve_clip_tables(EMOTION, tmp_path) == EMOTION  # Absolute tables stay.


def test_an_adversarial_task_keeps_its_gradient_reversal_scale():
    (task,) = parse_tasks({"language": {**LANGUAGE["language"], "adversarial": True, "reversal_lambda": 0.3}})
    assert (task.adversarial, task.reversal_lambda) == (True, 0.3)
    (plain,) = parse_tasks(LANGUAGE)
    assert (plain.adversarial, plain.reversal_lambda) == (False, 1.0)


@pytest.mark.parametrize(
    "declared, message",
    [
        ({"gender": {"labels": {"a": "M"}}}, "'gender' is built in"),
        ({"speaker": {"labels": {"a": "x", "b": "y"}}}, "other than speaker, ln"),
        ({"language": {"labels": {"a": "en", "b": "fa"}, "los": "binary"}}, "unknown key 'los'"),
        ({"language": {"labels": ["en", "fa"]}}, "'labels' must map corpus folder names to labels"),
        ({"language": {"labels": {"a": "en", "b": "fa"}, "loss": "hinge"}}, "'loss' must be one of binary, categorical"),
        ({"language": {"labels": {"a": "en", "b": "fa"}, "weight": -1}}, "'weight' must be a number >= 0"),
        ({"language": {"labels": {"a": "en", "b": "fa", "c": "de"}}}, "a binary task needs exactly 2 labels"),
        ({"language": {"labels": {"a": "en", "b": "en"}, "loss": "categorical"}}, "a categorical task needs at least 2 labels"),
        ({"emotion": {**EMOTION["emotion"], "labels": {"a": "x", "b": "y"}}}, "per speaker \\('labels'\\) or per clip \\('clips' and 'column'\\), one of the two"),
        ({"emotion": {"loss": "categorical"}}, "per speaker \\('labels'\\) or per clip"),
        ({"emotion": {"clips": str(EMODB / "clips.tsv"), "loss": "categorical"}}, "'clips' must name a clips table and 'column' its label column"),
        ({"emotion": {**EMOTION["emotion"], "column": "mood"}}, "clips.tsv: a clips table needs a header with a 'path' column and the label column 'mood'"),
        ({"emotion": {**EMOTION["emotion"], "clips": "/nowhere/clips.tsv"}}, "task 'emotion': /nowhere/clips.tsv: no such clips table"),
        ({"emotion": {**EMOTION["emotion"], "loss": "binary"}}, "a binary task needs exactly 2 labels; got \\['anger'"),
        ({"language": {**LANGUAGE["language"], "column": "language"}}, "'column' names the label column of a 'clips' table"),
        ({"language": {**LANGUAGE["language"], "adversarial": "yes"}}, "'adversarial' must be true or false"),
        ({"language": {**LANGUAGE["language"], "adversarial": True, "reversal_lambda": 0}}, "'reversal_lambda' must be a number > 0"),
        ({"language": {**LANGUAGE["language"], "reversal_lambda": 0.5}}, "'reversal_lambda' scales a gradient reversal: it needs \"adversarial\": true"),
    ],
)
def test_bad_task_declarations_are_refused_naming_the_task_and_key(declared, message):
    with pytest.raises(ValueError, match=message):
        parse_tasks(declared)
