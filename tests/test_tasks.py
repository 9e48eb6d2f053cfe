"""tasks.py: declared Hive-MTL label tasks, their labels per speaker, and refused declarations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks import LabelTask, gender_task, parse_tasks

LANGUAGE = {"language": {"labels": {"LibriSpeech": "en", "CommonVoice-fa": "fa"}, "loss": "binary", "weight": 0.5}}


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
    ],
)
def test_bad_task_declarations_are_refused_naming_the_task_and_key(declared, message):
    with pytest.raises(ValueError, match=message):
        parse_tasks(declared)
