"""recipes/voxceleb2_resnet.json: a dry run on a tiny corpus in VoxCeleb's layout, so that a user's first real run does not fail on a path.

As SpeechBrain's recipe tests do: the recipe as shipped, but one step of the small model (the
full model's step costs tens of CPU seconds here; the layout, the keys and the files are what
is checked), on VoxCeleb2's AAC `.m4a` files encoded here from VCTK with PyAV, then test-model
on a VoxCeleb1-O style list (WAV, as VoxCeleb1 ships) with the root inferred. The noise and
room folders are MUSAN's and RIRS_NOISES' layouts holding real recordings and a simulated room.
"""

from __future__ import annotations

import json
from pathlib import Path

import soundfile

from augment_sources import simulated_rir
from constants import SAMPLE_RATE
from encoded_audio import encode

REPO = Path(__file__).resolve().parents[1]
VCTK = REPO.parent / "shared" / "data" / "VCTK"
RECIPE = REPO / "recipes" / "voxceleb2_resnet.json"
RUN_FILES = {"config.json", "speakers.json", "split.json", "best.h5", "state.json", "metrics.csv"}


def voxceleb_folder(root: Path, speakers: dict[str, str], per_speaker: int, extension: str) -> list[str]:
    """`root/idNNNNN/<video>/NNNNN.<extension>` from VCTK recordings (.wav: links; .m4a: AAC at 64 kbit/s); the paths relative to root."""
    names = []
    for speaker_id, vctk_speaker in speakers.items():
        for index, source in enumerate(sorted((VCTK / vctk_speaker).glob("*.wav"))[:per_speaker]):
            name = f"{speaker_id}/video{index % 2}/{index + 1:05d}{extension}"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            if extension == ".wav":
                (root / name).symlink_to(source)
            else:
                encode(source, root / name, "aac", 64_000)
            names.append(name)
    return names


def test_voxceleb2_recipe_dry_run_trains_from_the_dev_folder_and_scores_voxceleb1_o(tmp_path, invoke_cli):
    voxceleb_folder(tmp_path / "voxceleb2" / "dev" / "aac", {"id00012": "p225", "id00015": "p226"}, per_speaker=4, extension=".m4a")
    test_files = voxceleb_folder(tmp_path / "voxceleb1" / "test" / "wav", {"id10270": "p227", "id10271": "p228"}, per_speaker=2, extension=".wav")
    trials = [f"{int(a.split('/')[0] == b.split('/')[0])} {a} {b}" for i, a in enumerate(test_files) for b in test_files[i + 1 :]]
    (tmp_path / "voxceleb1" / "test" / "veri_test2.txt").write_text("\n".join(trials) + "\n")
    voxceleb_folder(tmp_path / "musan" / "noise", {"free-sound": "p226"}, per_speaker=2, extension=".wav")
    rooms = tmp_path / "RIRS_NOISES" / "simulated_rirs" / "smallroom" / "Room001"
    rooms.mkdir(parents=True)
    soundfile.write(rooms / "Room001-00001.wav", simulated_rir(seed=0, room=0), SAMPLE_RATE)
    recipe = json.loads(RECIPE.read_text())
    assert (recipe["model_size"], recipe["head"], recipe["precision"]) == ("full", "aam", "auto")
    assert (recipe["noise_dir"], recipe["rir_dir"]) == ("../data/musan", "../data/RIRS_NOISES/simulated_rirs")
    recipe.update({"audio_dirs": ["voxceleb2/dev/aac"], "noise_dir": "musan", "rir_dir": "RIRS_NOISES/simulated_rirs", "model_size": "small", "epochs": 1, "steps_per_epoch": 1, "batch_size": 8,
                   "validation_steps": 1, "input_workers": 1})
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    working_dir = tmp_path / "work"

    trained = invoke_cli("train", "--working_dir", working_dir, "--recipe", tmp_path / "recipe.json")
    assert trained.exit_code == 0, trained.output
    run = working_dir / "checkpoints-softmax"
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    assert json.loads((run / "speakers.json").read_text())["speakers"] == ["id00012", "id00015"]
    config = json.loads((run / "config.json").read_text())
    assert {k: config[k] for k in ("head", "trim", "pad", "speed_perturb", "balanced_sampling", "reverb_probability", "input_processes")} == {
        k: recipe[k] for k in ("head", "trim", "pad", "speed_perturb", "balanced_sampling", "reverb_probability", "input_processes")}
    assert (config["noise_dir"], config["rir_dir"]) == (str((tmp_path / "musan").resolve()), str((tmp_path / "RIRS_NOISES" / "simulated_rirs").resolve()))
    assert sorted(p.name for p in (working_dir / "audio-waveforms-energy").iterdir())[0] == "id00012_video0-00001.npy"

    scored = invoke_cli("test-model", "--checkpoint_file", run / "best.h5", "--trials", tmp_path / "voxceleb1" / "test" / "veri_test2.txt",
                        "--output", tmp_path / "test-model.json")
    assert scored.exit_code == 0, scored.output
    figures = json.loads((tmp_path / "test-model.json").read_text())["trial_lists"]["veri_test2.txt"]
    assert (figures["num_trials"], figures["num_target"]) == (6, 2)
    assert "trial list veri_test2.txt  trials = 6 (2 same speaker), EER = " in scored.stdout
