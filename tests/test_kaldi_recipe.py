"""A Kaldi data directory through the CLI: a dry run of Hive-MTL training on one, so that a Kaldi user's first real run does not fail on a path.

As tests/test_voxceleb_recipe.py does for VoxCeleb's folders: `data/train` and `data/test` are
written here as Kaldi writes them (`wav.scp` of plain paths into ../shared/data, `utt2spk` or
`spk2utt`, `spk2gender`; `segments` cutting one LibriSpeech recording into two utterances), then
`train --audio_dir data/train --mode mtl` for 1 epoch of 2 steps of the small model, then
`test-model --eval_audio_dir data/test`. Speaker ids carry a corpus prefix that no speaker table
knows, so a gender in the run can only have come from `spk2gender`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from test_corpus import kaldi_dir

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LIBRI = SHARED_DATA / "LibriSpeech" / "train-clean-100"
VCTK = SHARED_DATA / "VCTK"
RUN_FILES = {"config.json", "speakers.json", "split.json", "best.h5", "state.json", "metrics.csv"}


def kaldi_table(paths: list[Path]) -> dict[str, Path]:
    """Kaldi recording id -> its audio: `lbs-<LibriSpeech name>` or `vctk-pNNN-UUU`, speaker-prefixed as Kaldi sorts them."""
    return {f"{'vctk' if path.stem.startswith('p') else 'lbs'}-{path.stem.replace('_', '-')}": path for path in paths}


def speaker_of(utterance: str) -> str:
    return "-".join(utterance.split("-")[:2])


def test_hive_mtl_dry_run_trains_from_a_kaldi_data_dir_with_segments_and_spk2gender_and_scores_a_held_out_one(tmp_path, invoke_cli):
    recordings = kaldi_table([LIBRI / "19" / "198" / "19-198-0000.flac", LIBRI / "19" / "198" / "19-198-0008.flac",  # The shortest: 2 to 5 s.
                              LIBRI / "26" / "495" / "26-495-0030.flac", LIBRI / "26" / "496" / "26-496-0026.flac",
                              VCTK / "p225" / "p225_022.wav", VCTK / "p225" / "p225_020.wav", VCTK / "p226" / "p226_011.wav", VCTK / "p226" / "p226_024.wav"])
    spans = {utterance: f"{utterance} 0 -1" for utterance in recordings if utterance != "lbs-26-495-0030"}
    spans |= {"lbs-26-495-0030-a": "lbs-26-495-0030 0 1.75", "lbs-26-495-0030-b": "lbs-26-495-0030 1.75 3.49"}  # A 3.49 s recording.
    train_dir = kaldi_dir(tmp_path / "data" / "train",
                          wav_scp="".join(f"{key} {path}\n" for key, path in recordings.items()),
                          segments="".join(f"{utterance} {span}\n" for utterance, span in sorted(spans.items())),
                          utt2spk="".join(f"{utterance} {speaker_of(utterance)}\n" for utterance in sorted(spans)),
                          spk2gender="lbs-19 f\nlbs-26 m\nvctk-p225 f\nvctk-p226 m\n")
    held_out = kaldi_table([VCTK / "p227" / "p227_005.wav", VCTK / "p227" / "p227_016.wav", VCTK / "p228" / "p228_016.wav", VCTK / "p228" / "p228_024.wav"])
    test_dir = kaldi_dir(tmp_path / "data" / "test",
                         wav_scp="".join(f"{key} {path}\n" for key, path in held_out.items()),
                         spk2utt="".join(f"{s} {' '.join(u for u in held_out if speaker_of(u) == s)}\n" for s in ("vctk-p227", "vctk-p228")),
                         spk2gender="vctk-p227 m\nvctk-p228 f\n")
    working_dir = tmp_path / "work"

    trained = invoke_cli("train", "--working_dir", working_dir, "--audio_dir", train_dir, "--mode", "mtl", "--model_size", "small",
                         "--epochs", 1, "--steps_per_epoch", 2, "--validation_steps", 1, "--batch_size", 6, "--input_workers", 1)
    assert trained.exit_code == 0, trained.output
    assert "9 written, 0 already cached, 0 failed" in trained.stdout
    run = working_dir / "checkpoints-mtl"
    assert RUN_FILES <= {p.name for p in run.iterdir()} and list(run.glob("latest-*.weights.h5"))
    assert json.loads((run / "config.json").read_text())["mode"] == "mtl"
    speakers = json.loads((run / "speakers.json").read_text())
    assert speakers["speakers"] == ["lbs-19", "lbs-26", "vctk-p225", "vctk-p226"]
    assert speakers["genders"] == {"lbs-19": "F", "lbs-26": "M", "vctk-p225": "F", "vctk-p226": "M"}  # From spk2gender: no table knows these ids.
    with open(run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and "gender_pred_binary_accuracy" in rows[-1]  # The gender head trained on those labels.
    split = json.loads((run / "split.json").read_text())
    assert split["lbs-26"]["train"] == ["lbs-26_lbs-26-495-0030-a.npy", "lbs-26_lbs-26-495-0030-b.npy"]  # The segments, first in Kaldi's order.
    assert split["lbs-26"]["test"] == ["lbs-26_lbs-26-496-0026.npy"]
    index = json.loads((working_dir / "corpus.json").read_text())
    assert index["segments"]["lbs-26_lbs-26-495-0030-a.npy"] == [0.0, 1.75] and index["segments"]["lbs-26_lbs-26-495-0030-b.npy"] == [1.75, 3.49]

    scored = invoke_cli("test-model", "--working_dir", working_dir, "--checkpoint_file", run / "best.h5", "--eval_audio_dir", test_dir,
                        "--output", tmp_path / "test-model.json")
    assert scored.exit_code == 0, scored.output
    report = json.loads((tmp_path / "test-model.json").read_text())
    figures = report["corpora"]["test"]
    assert (figures["speakers"], figures["num_trials"], figures["num_target"]) == (["vctk-p227", "vctk-p228"], 6, 2)
    assert report["speaker_predictions"]["gender"]["labels"] == ["M", "F"]  # The held-out speakers' spk2gender, for the gender head.


@pytest.mark.parametrize(
    "tables, error",
    [
        ({"utt2spk": "a p225\nb p225\n"}, "utt2spk, line 2: utterance 'b' is not in wav.scp (1 of its 2 utterances are not)"),
        ({"wav_scp": "absent audio/absent.flac\n", "utt2spk": "absent p225\n"}, "wav.scp, line 1: the audio file of 'absent' does not exist: audio/absent.flac"),
    ],
    ids=["utterance-not-in-wav-scp", "missing-audio-file"],
)
def test_train_on_a_broken_kaldi_data_dir_fails_with_one_line_naming_the_file_and_the_problem(tmp_path, invoke_cli, tables, error):
    data = kaldi_dir(tmp_path / "data", **{"wav_scp": f"a {sorted((VCTK / 'p225').glob('*.wav'))[0]}\n", **tables})
    result = invoke_cli("train", "--working_dir", tmp_path / "work", "--audio_dir", data, "--mode", "mtl")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(f"Error: {data / error.split(',')[0]}, {error.split(', ', 1)[1]}")
    assert not (tmp_path / "work" / "audio-fbanks").exists()  # Refused before any audio is read.
