"""bench/device_run.sh and bench/bench_device.py: the GPU benchmark, rehearsed on the CPU.

No GPU is needed: the dry run does everything the GPU run does (wheel check, synthetic cache,
one worker process per dtype policy, every measure, the summary and its table) with the small
model and tiny sizes on the CPU, and with TensorFlow made unimportable as on the GPU machine.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_device", REPO / "bench" / "bench_device.py")
bench_device = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_device)


def summary_line(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith('{"benchmark": "bench_device"')]
    assert len(lines) == 1, stdout[-3000:]
    return json.loads(lines[0])


def test_dry_run_measures_every_figure_on_the_cpu(jax_subprocess_env):
    result = subprocess.run(["bash", "bench/device_run.sh", "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**jax_subprocess_env, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "wheels OK" in result.stdout or "wheel check skipped" in result.stdout  # CI has no .whl/: a note, not a failure.
    summary = summary_line(result.stdout)
    assert summary["errors"] == [] and summary["environment"]["keras_backend"] == "jax"
    for policy in ("mixed_bfloat16", "float32"):
        assert summary["train_windows_per_s"][policy]["6"] > 0
        assert summary["inference_windows_per_s"][policy]["8"] > 0
        assert summary["inference_host_io_windows_per_s"][policy]["8"] > 0
    assert summary["end_to_end_windows_per_s"]["mixed_bfloat16"]["6"] > 0  # The batcher fed the model,
    assert summary["end_to_end_processes_windows_per_s"]["2"] > 0  # and with reader processes,
    assert summary["end_to_end_augmented_processes_windows_per_s"]["2"] > 0  # and the augmented one with processes.
    assert "| end_to_end (augmented, 2 processes) | mixed_bfloat16 | 6 |" in result.stdout
    assert summary["pipeline_windows_per_s"]["2"] > 0
    assert summary["meets_train_target"] is False and summary["meets_inference_target"] is False  # A CPU, small model.
    assert all(np.isfinite(r["loss"]) for r in summary["records"] if "loss" in r)
    built_by = {r["built_by"] for r in summary["records"] if r["measure"] == "model"}
    assert built_by == {"training_models.build_model"}
    assert "| training | mixed_bfloat16 | 6 |" in result.stdout  # The README table of the run.


def test_the_reader_alone_is_measured_with_threads_and_with_worker_processes(jax_subprocess_env, tmp_path):
    """`--policies ""` measures the input pipeline alone: threads and PyDataset worker processes, reported apart, for the
    plain reader and for the augmented one (on synthetic cached audio, one hard link per feature entry)."""
    result = subprocess.run([sys.executable, "bench/bench_device.py", "--tiny", "--working_dir", str(tmp_path / "cache"), "--out", str(tmp_path / "r.json"),
                             "--policies", "", "--pipeline_workers", "1", "--pipeline_processes", "2", "--pipeline_windows", "60",
                             "--augmented_workers", "1", "--augmented_processes", "2", "--augmented_windows", "12"],
                            cwd=REPO, capture_output=True, text=True, timeout=300, env=jax_subprocess_env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["errors"] == [] and summary["train_windows_per_s"] == {}
    assert summary["pipeline_windows_per_s"]["1"] > 0 and summary["pipeline_processes_windows_per_s"]["2"] > 0
    assert "1 threads" in bench_device.markdown_table(summary) and "2 processes" in bench_device.markdown_table(summary)
    assert set(summary["augmented_pipeline_windows_per_s"]) == {"1 threads", "2 processes"} and min(summary["augmented_pipeline_windows_per_s"].values()) > 0
    assert "Augmented reader alone (windows/s" in bench_device.markdown_table(summary)
    features, audio = tmp_path / "cache" / "audio-fbanks", tmp_path / "cache" / "audio-waveforms-energy"
    assert sorted(p.name for p in audio.iterdir()) == sorted(p.name for p in features.iterdir())
    assert np.load(next(audio.iterdir())).dtype == np.float16  # As the cache keeps audio.


def test_wheel_check_names_missing_and_stray_wheels(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "keras-3.15.0-py3-none-any.whl").touch()
    (wheels / "numpy-2.5.2-cp312-cp312-manylinux_2_28_x86_64.whl").touch()
    result = subprocess.run(["bash", "bench/device_run.sh", "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "DEVICE_WHEEL_DIR": str(wheels), "PYTHON": sys.executable})
    assert result.returncode == 1
    assert "WRONG VERSION of keras: keras-3.15.0-py3-none-any.whl, expected 3.15.1" in result.stdout
    assert "MISSING wheel optree==" in result.stdout
    assert "NOT LISTED in bench/fetch_device_wheels.sh: numpy-2.5.2" in result.stdout
    assert "rehearsal" not in result.stdout  # Nothing runs on a broken set of wheels.


@pytest.mark.parametrize("model_size", ["small", "full"])
def test_forward_flops_counts_every_convolution_and_dense_layer(model_size):
    import keras

    from conv_models import DeepSpeakerModel

    model = DeepSpeakerModel(batch_input_shape=(None, 160, 64, 1), include_softmax=True, num_speakers_softmax=500, model_size=model_size).m
    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, frames, freq, filters = layer.output.shape
            flops += 2 * frames * freq * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * int(np.prod(layer.kernel.shape))
    assert bench_device.forward_flops(model_size, num_classes=500) == flops
    if model_size == "full":
        assert round(bench_device.forward_flops("full") / 1e9, 2) == 5.33


def test_synthetic_cache_is_a_training_corpus_of_normalised_librispeech_like_features(tmp_path):
    from batcher import SpeakerClassBatches, load_training_data

    figures = bench_device.build_synthetic_cache(tmp_path, speakers=5, utterances=4, pool_size=7)
    assert figures["entries"] == 20 and not figures["reused"]
    data = load_training_data(tmp_path)
    assert len(data.speakers) == 5 and sum(map(len, data.train.values())) == 15
    features = [np.load(entry) for entries in data.train.values() for entry in entries]
    assert all(f.dtype == np.float32 and f.shape[1] == 64 and 100 <= len(f) <= 3500 for f in features)
    np.testing.assert_allclose(features[0].mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(features[0].std(axis=1), 1, atol=1e-4)
    windows, labels = SpeakerClassBatches(data.train, data.speakers, 8, 1)[0]
    assert windows.shape == (8, 160, 64, 1) and labels.max() < 5
    assert bench_device.build_synthetic_cache(tmp_path, speakers=5, utterances=4, pool_size=7)["reused"]


def test_librispeech_like_lengths_average_about_twelve_seconds():
    frames = bench_device.librispeech_like_frames(np.random.default_rng(0), 10_000)
    assert 1_200 < frames.mean() < 1_300 and frames.min() >= 100 and frames.max() <= 3_500
    assert 0.001 < (frames < 160).mean() < 0.05  # A few clips shorter than a window: the padding path is drawn too.


def test_plan_measures_the_target_figures_first():
    spec = {"train_batch_sizes": [1024, 256, 96], "infer_batch_sizes": [1024, 256], "end_to_end": True}
    assert bench_device.worker_plan(spec) == [
        ("training", 1024), ("inference", 1024), ("end_to_end", 1024), ("inference", 256), ("training", 256), ("training", 96)]
    assert ("end_to_end", 1024) not in bench_device.worker_plan({**spec, "end_to_end": False})


def test_summary_judges_targets_and_pipeline_and_renders_a_table():
    records = [
        {"measure": "environment", "device_kind": "NVIDIA H200", "jax_backend": "gpu", "jax": "0.11.2", "keras": "3.15.1"},
        {"measure": "training", "policy": "mixed_bfloat16", "batch_size": 1024, "windows_per_s": 12_000.0, "tflops": 190.0, "compile_s": 40.0, "peak_gpu_bytes": 9 * 2**30},
        {"measure": "training", "policy": "mixed_bfloat16", "batch_size": 96, "windows_per_s": 4_000.0, "tflops": 64.0, "compile_s": 30.0, "peak_gpu_bytes": 10 * 2**30},
        {"measure": "inference", "policy": "mixed_bfloat16", "batch_size": 1024, "windows_per_s": 25_000.0, "host_io_windows_per_s": 20_000.0, "tflops": 133.0, "compile_s": 9.0},
        {"measure": "end_to_end", "policy": "mixed_bfloat16", "batch_size": 1024, "windows_per_s": 6_000.0, "input_workers": 4, "processes": False},
        {"measure": "end_to_end", "policy": "mixed_bfloat16", "batch_size": 1024, "windows_per_s": 9_000.0, "input_workers": 8, "processes": True},
        {"measure": "pipeline", "batch_size": 1024, "input_workers": 4, "windows_per_s": 6_500.0},
        {"measure": "training", "policy": "float32", "batch_size": 1024, "error": "XlaRuntimeError: RESOURCE_EXHAUSTED"},
    ]
    config = {"model_size": "full", "cache": {"speakers": 500}}
    summary = bench_device.summarise(records, config, notes=[])
    assert summary["meets_train_target"] is True and summary["meets_inference_target"] is False
    assert summary["pipeline_keeps_up"] is False  # At best 9,000 fed (8 reader processes) against 12,000 from RAM.
    assert summary["end_to_end_windows_per_s"] == {"mixed_bfloat16": {"1024": 6_000.0}}  # Threads, as train's default reads.
    assert summary["end_to_end_processes_windows_per_s"] == {"8": 9_000.0}
    assert bench_device.summarise([r | {"windows_per_s": 11_000.0} if r.get("processes") else r for r in records], config, [])["pipeline_keeps_up"] is True
    assert summary["peak_gpu_bytes"] == {"mixed_bfloat16": 10 * 2**30}
    assert summary["errors"] == ["training float32 1024: XlaRuntimeError: RESOURCE_EXHAUSTED"]
    table = bench_device.markdown_table(summary)
    assert "| training | mixed_bfloat16 | 1024 | 12,000 | 190 | 40.0 | 9.0 |" in table
    assert "| inference | mixed_bfloat16 | 1024 | 25,000 (20,000 NumPy in/out) |" in table
    assert "| training | float32 | 1024 | error: XlaRuntimeError: RESOURCE_EXHAUSTED |" in table
    assert "| end_to_end | mixed_bfloat16 | 1024 | 6,000 |" in table
    assert "| end_to_end (8 processes) | mixed_bfloat16 | 1024 | 9,000 |" in table
    assert "Device: NVIDIA H200 (gpu)" in table


def test_fetch_script_lists_only_what_the_gpu_image_lacks():
    listed = subprocess.run(["bash", "-c", "source bench/fetch_device_wheels.sh && printf '%s\\n' \"${DEVICE_WHEELS[@]}\""],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    names = {spec.split("==")[0] for spec in listed}
    assert {"keras", "namex", "optree", "soundfile", "cffi", "pycparser", "soxr", "python_speech_features"} == names
    assert not names & {"numpy", "jax", "jaxlib", "h5py", "ml-dtypes", "scipy", "absl-py", "rich", "packaging"}  # In the image: never shadowed.
