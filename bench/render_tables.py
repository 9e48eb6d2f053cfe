"""README tables from the benchmarks' results files, so that no figure in a table is typed by hand.

`bench_features.py`, `bench_inference.py` and `bench_training.py` take `--output FILE.json`: the
script then writes one JSON object holding every figure it printed, as numbers, with the command
that ran, the machine, the library versions and the date (`results_record` below says which
keys). This script reads such files and rewrites the tables between markers:

  README.md (`--readme`)              <!-- bench-performance --> ... <!-- /bench-performance -->
  bench/README.md (`--bench_readme`)  <!-- bench-windows -->, <!-- bench-end-to-end -->, <!-- bench-accuracy -->, ...,
                                      <!-- bench-device --> (the GPU run, from bench_device.json)

Each table is followed by one line naming the machine(s), the load average and the date of the
files it came from. A row is made only from a results file given on the command line: a row
whose file is missing is left out (a table with none says which file and command would make
it), never filled from elsewhere. Without --readme or --bench_readme the tables are printed.
A file is recognised by its content (benchmark, mode, model size), not by its name.

    python bench/render_tables.py --readme README.md --bench_readme bench/README.md bench/results/*.json
    python bench/render_tables.py /tmp/features.json          # print the tables, write nothing
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fileio import write_atomically  # noqa: E402
from precision import BFLOAT16_CPU_FLAGS  # noqa: E402

# The results files, by the name render_tables gives each (bench/results/<name>.json), and the
# command (run from the repository root, under `nice -n 19`, on a quiet machine) that writes it.
RESULT_FILES = {
    "features": "python bench/bench_features.py --data_dir ../shared/data --profile --output bench/results/features.json",
    "inference_windows_full": "python bench/bench_inference.py --windows 96 --repeats 5 --output bench/results/inference_windows_full.json",
    "inference_windows_small": "python bench/bench_inference.py --model_size small --windows 512 --repeats 5 "
                               "--output bench/results/inference_windows_small.json",
    "inference_end_to_end": "python bench/bench_inference.py --end_to_end --tflite --export_dir /tmp/shipped_export --repeats 5 "
                            "--output bench/results/inference_end_to_end.json",
    "inference_accuracy": "python bench/bench_inference.py --accuracy --export_dir /tmp/shipped_export --output bench/results/inference_accuracy.json",
    "training_precision": "python bench/bench_training.py --working_dir /tmp/bench_cache --compare_precision 30 --model_size small "
                          "--output bench/results/training_precision.json",
    "training_steps_small": "python bench/bench_training.py --working_dir /tmp/bench_cache --train_steps 6 --model_size small "
                            "--output bench/results/training_steps_small.json",
    "training_steps_full": "python bench/bench_training.py --working_dir /tmp/bench_cache --train_steps 3 --model_size full --batches 20 "
                           "--output bench/results/training_steps_full.json",
    "cache_scale": "python bench/bench_cache_scale.py --entries 100000 --output bench/results/cache_scale.json",
    "cache_scale_waveforms": "python bench/bench_cache_scale.py --entries 2000 --waveforms energy --output bench/results/cache_scale_waveforms.json",
    "recipe_learns": "python bench/bench_recipe_learns.py --output bench/results/recipe_learns.json",
    "onednn": "python bench/bench_onednn.py --steps 10 --output bench/results/onednn.json",
    "bench_device": "bash bench/device_run.sh (on the lent GPU machine; then copy its $OUT/bench_device.json to bench/results/)",
}
LIBRARIES = ("numpy", "scipy", "soundfile", "soxr", "librosa", "python_speech_features", "tensorflow", "keras", "jax")

# Row names the scripts print, which the tables pick out.
EMBEDDER_FLOAT32, EMBEDDER_BFLOAT16 = "Embedder, float32 (folded)", "Embedder, bfloat16 (folded)"
END_TO_END_REFERENCE, END_TO_END_FLOAT32, END_TO_END_AUTO = "reference:", "Embedder.embed_files, float32", "Embedder.embed_files, auto"
ACCURACY_BASELINE = "Embedder float32"
REFERENCE_ARRAY = "reference: every softmax window in one array"
TRAINING_BASELINE = "float32, layers as before"  # --compare_precision: Keras's batch norm, min(max(x, 0), 20).


# ----------------------------------------------------------------------------------------------
# Writing: what the bench scripts call.


def results_path(text: str) -> Path:
    """argparse type of --output: a .json path whose folder exists (made here) and is writable, checked
    before the benchmark runs rather than after."""
    path = Path(text)
    if path.suffix != ".json":
        raise argparse.ArgumentTypeError(f"{text}: a results file's name ends in .json")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise argparse.ArgumentTypeError(f"{text}: cannot make its folder: {error.strerror}") from error
    if not os.access(path.parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text}: its folder is not writable")
    return path


def machine(load_at_start: float) -> dict:
    """CPU model name, cores, whether the CPU has bfloat16 units, and the 1-minute load average at the start and now."""
    cpu, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in reversed(cpuinfo.read_text().splitlines()):  # Reversed: the first processor's lines win.
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {"cpu": cpu, "cores": os.cpu_count(), "bfloat16_hardware": bool(BFLOAT16_CPU_FLAGS & flags),
            "load_average": [load_at_start, os.getloadavg()[0]]}


def versions() -> dict:
    """Python's version and those of the measured libraries this process imported."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        if name in sys.modules:
            try:
                found[name] = getattr(sys.modules[name], "__version__", None) or importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                found[name] = "unknown"
    return found


def results_record(benchmark: str, load_at_start: float, part: dict) -> dict:
    """The object a bench script writes with --output.

    `part` is what the script measured: "mode", its settings, and "rows", one per line of
    figures it printed, each with "path" (the name it printed) or "group", and figures as
    numbers. Added here: "benchmark", "command" (as run, from the repository root), "machine"
    (`machine`), "versions" (`versions`) and "date" (ISO).
    """
    assert "mode" in part and "rows" in part, "a results part needs its mode and rows"
    return {**part, "benchmark": benchmark, "command": shlex.join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
            "machine": machine(load_at_start), "versions": versions(), "date": datetime.date.today().isoformat()}


def write_results(path: Path, record: dict) -> None:
    """Write the record atomically (a temporary file renamed over `path`; keys in the order measured), and say where."""
    write_atomically(path, lambda handle: json.dump(record, handle, indent=2), text=True)
    print(f"results written to {path}")


# ----------------------------------------------------------------------------------------------
# Reading the results files.


def result_name(record: dict) -> str:
    """The name of what a record measured: a key of RESULT_FILES ("training_pipeline" too, the pipeline alone)."""
    benchmark, mode = record.get("benchmark"), record.get("mode")
    if benchmark == "bench_features":
        return "features"
    if benchmark == "bench_inference" and mode == "windows":
        return f"inference_windows_{record['model_size']}"
    if benchmark == "bench_inference" and mode in ("end_to_end", "accuracy"):
        return f"inference_{mode}"
    if benchmark == "bench_training" and mode == "compare_precision":
        return "training_precision"
    if benchmark == "bench_training" and mode == "train_steps":
        return f"training_steps_{record['model_size']}"
    if benchmark == "bench_training" and mode == "pipeline":
        return "training_pipeline"
    if benchmark == "bench_cache_scale":
        return "cache_scale_waveforms" if record.get("waveforms") else "cache_scale"
    if benchmark == "bench_recipe_learns":
        return "recipe_learns"
    if benchmark == "bench_onednn":
        return "onednn"
    if benchmark == "bench_device":
        return "bench_device"
    raise ValueError(f"not a results file of bench_features, bench_inference, bench_training, bench_cache_scale, bench_recipe_learns, bench_onednn "
                     f"or bench_device "
                     f"(benchmark {benchmark!r}, mode {mode!r})")


def load_results(paths: list[Path]) -> dict[str, dict]:
    """name -> record of each file (its path kept under "file"); two files of one name are an error."""
    results: dict[str, dict] = {}
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
            name = result_name(record)
        except OSError as error:
            raise ValueError(f"{path}: {error.strerror}") from error
        except (ValueError, KeyError, AttributeError) as error:  # Not JSON, or not a record's keys.
            raise ValueError(f"{path}: {'no key ' if isinstance(error, KeyError) else ''}{error}") from error
        if name in results:
            raise ValueError(f"{path} and {results[name]['file']} both hold {name}: give one")
        results[name] = {**record, "file": str(path)}
    return results


def path_row(record: dict, prefix: str) -> dict:
    """The first row whose printed name starts with `prefix`."""
    for row in record["rows"]:
        if row.get("path", "").startswith(prefix):
            return row
    raise ValueError(f"{record['file']}: no row named {prefix!r}... (rows: {', '.join(r.get('path', '?') for r in record['rows'])})")


# ----------------------------------------------------------------------------------------------
# Markdown.


def figure(value: float) -> str:
    """About three significant figures, thousands separated: 0.25, 4.48, 18.6, 267, 2,166."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def markdown_table(header: list[str], align: str, rows: list[list[str]]) -> list[str]:
    """`align` has one character a column: l (text) or r (figures)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


def command(record: dict) -> str:
    return f"`{record['command']}`"


def provenance(results: dict[str, dict]) -> str:
    """One line: per machine, the results it measured, its load average (lowest to highest) and the dates."""
    machines: dict[tuple, list[str]] = {}
    for name, record in results.items():
        about = record["machine"]
        machines.setdefault((about["cpu"], about["cores"], about["bfloat16_hardware"]), []).append(name)
    parts = []
    for (cpu, cores, bfloat16), names in machines.items():
        loads = [load for name in names for load in results[name]["machine"]["load_average"]]
        dates = sorted({results[name]["date"] for name in names})
        parts.append(f"{', '.join(f'`{name}.json`' for name in names)} on {cpu}, {cores} cores"
                     f"{', bfloat16 in hardware' if bfloat16 else ''}, load average {min(loads):.1f} to {max(loads):.1f}, "
                     f"{dates[0]}{'' if len(dates) == 1 else f' to {dates[-1]}'}")
    return "Measured: " + "; ".join(parts) + "."


def not_measured(*names: str) -> str:
    return "Not measured: " + "; ".join(f"no `{name}.json` among the results given (`{RESULT_FILES[name]}` writes it)" for name in names) + "."


def chosen(results: dict[str, dict], *names: str) -> dict[str, dict]:
    return {name: results[name] for name in names if name in results}


# ----------------------------------------------------------------------------------------------
# README.md: the performance table, one row per figure, where its results file was given.


def features_rows(results: dict[str, dict]) -> list[list[str]]:
    if "features" not in results:
        return []
    record = results["features"]
    every = next(row for row in record["rows"] if row["group"] == "all")
    whole = every["whole_path"]
    rows = [[f"features, one core (x real time, {every['files']:,} files of `{record['data_dir']}`)",
             f"{figure(whole['reference'])} x (librosa + python_speech_features + frame loop)",
             f"{figure(whole['project'])} x (`read_mfcc`)", figure(whole["ratio"]), command(record)]]
    if "cache" in record:
        workers = record["cache"]["workers"]
        rows.append([f"features, all cores (`build_feature_cache`, {workers} worker{'s' * (workers != 1)})", "",
                     f"{figure(record['cache']['x_real_time'])} x", "", "same"])
    return rows


def inference_rows(results: dict[str, dict]) -> list[list[str]]:
    rows = []
    for size in ("full", "small"):
        if (record := results.get(f"inference_windows_{size}")) is None:
            continue
        baseline, float32, bfloat16 = (path_row(record, name) for name in (record["baseline"], EMBEDDER_FLOAT32, EMBEDDER_BFLOAT16))
        rows.append([f"inference, {size} model (windows/s, {record['windows']} windows)",
                     f"{figure(baseline['rate'])} (`model.predict`, batches of {record['batch_size']})",
                     f"{figure(float32['rate'])} float32, {figure(bfloat16['rate'])} bfloat16 (`Embedder`, `precision=`)",
                     f"{figure(float32['ratio'])} / {figure(bfloat16['ratio'])}", command(record)])
    if (record := results.get("inference_end_to_end")) is not None:
        reference, float32, auto = (path_row(record, name) for name in (END_TO_END_REFERENCE, END_TO_END_FLOAT32, END_TO_END_AUTO))
        rows.append([f"end to end, shipped model, {record['files']} files of `{Path(record['audio_dir']).name}`: decode, features, model (x real time)",
                     f"{figure(reference['rate'])} (librosa + psf features, `predict` per file)",
                     f"{figure(float32['rate'])} float32, {figure(auto['rate'])} auto = {record['precision_auto']} "
                     f"({figure(2 * auto['cpu_rate'])} per 2 CPU-seconds)",
                     f"{figure(float32['ratio'])} / {figure(auto['ratio'])}", command(record)])
        tflite = [row for row in record["rows"] if row["path"].startswith("TFLite")]
        if tflite:
            rows.append(["same, exported TFLite (x real time)", "",
                         ", ".join(f"{figure(row['rate'])} {row['path'].removeprefix('TFLite ')}" for row in tflite), "", "same"])
    if (record := results.get("inference_accuracy")) is not None:
        baseline = path_row(record, ACCURACY_BASELINE)
        corpora = list(baseline["corpora"])

        def eers(row: dict) -> str:
            return " / ".join(f"{100 * row['corpora'][corpus]['eer']:.2f}" for corpus in corpora) + " %"

        others = "; ".join(f"{row['path'].removeprefix('Embedder ').split(' (')[0]} {eers(row)}" for row in record["rows"] if row is not baseline)
        rows.append([f"shipped model, EER {' / '.join(corpora)}", f"{eers(baseline)} (float32)", others, "", command(record)])
    return rows


def training_rows(results: dict[str, dict]) -> list[list[str]]:
    rows = []
    pipeline = next((results[name] for name in ("training_steps_small", "training_steps_full", "training_pipeline") if name in results), None)
    if pipeline is not None:
        reference = path_row(pipeline, REFERENCE_ARRAY)
        rows.append([f"training input, {pipeline['speakers']:,} speakers x {pipeline['utterances']} utterances (RAM)",
                     f"{reference['array_gb']:.1f} GB array, {reference['ram_gb_while_building']:.1f} GB peak while built "
                     f"(estimated: measured on {reference['measured_speakers']} speakers, scaled to {pipeline['speakers']:,})",
                     f"{pipeline['peak_rss_mb'] / 1024:.2f} GB peak (index + pipeline)", f"1/{ratio:,.0f}" if (ratio := reference["ratio_to_pipeline_peak"]) >= 10 else f"1/{figure(ratio)}", command(pipeline)])
        rates = [row for row in pipeline["rows"] if row["path"].startswith("input pipeline")]
        rows.append([f"training input (windows/s, {pipeline['workers']} reader threads, batches of {pipeline['batch_size']})", "",
                     ", ".join(f"{row['batches']} {figure(row['windows_per_s'])}" for row in rates), "", "same"])
    steps = list(chosen(results, "training_steps_small", "training_steps_full").values())
    if steps:
        trained = [path_row(record, "training,") for record in steps]
        rows.append([f"training step, {' / '.join(r['model_size'] for r in steps)} model (windows/s, batch {steps[0]['batch_size']})", "",
                     " / ".join(figure(row["windows_per_s"]) for row in trained), "", " / ".join(command(r) for r in steps)])
    if (record := results.get("training_precision")) is not None:
        by_path = {row["path"]: row for row in record["rows"]}
        baseline, float32, xla = by_path[TRAINING_BASELINE], by_path["float32"], by_path["float32 + XLA"]
        mixed = by_path[next(path for path, row in by_path.items() if row["policy"].startswith("mixed") and not row["keras_batch_norm"])]
        rows.append([f"training step, {record['model_size']} model, batch {record['batch_size']}, {record['steps']} identical batches (windows/s)",
                     f"{figure(baseline['windows_per_s'])} (float32, Keras batch norm)",
                     f"{figure(mixed['windows_per_s'])} ({mixed['policy']}, `--precision auto` on this CPU, fused batch norm; "
                     f"float32: {figure(float32['windows_per_s'])}, float32 + XLA: {figure(xla['windows_per_s'])})",
                     figure(mixed["ratio"]), command(record)])
    return rows


def performance_table(results: dict[str, dict]) -> str:
    rows = features_rows(results) + inference_rows(results) + training_rows(results)
    lines = markdown_table(["stage", "straightforward path", "this project", "ratio", "command"], "lrrrl", rows)
    used = {name: record for name, record in results.items() if not name.startswith("cache_scale") and name not in ("recipe_learns", "onednn", "bench_device")}  # Own tables in bench/README.md.
    return "\n".join(lines + ["", provenance(used) if used else "Measured: no results file given."])


# ----------------------------------------------------------------------------------------------
# bench/README.md: windows/s, end to end, accuracy.


def windows_table(results: dict[str, dict]) -> str:
    records = chosen(results, "inference_windows_full", "inference_windows_small")
    if not records:
        return not_measured("inference_windows_full", "inference_windows_small")
    header, align = ["path"], "l"
    for record in records.values():
        header += [f"{record['model_size']} model, windows/s (median)", "ratio", "CPU s"]
        align += "rrr"
    names = list(dict.fromkeys(row["path"] for record in records.values() for row in record["rows"]))
    rows = []
    for name in names:
        cells = [name]
        for record in records.values():
            row = next((r for r in record["rows"] if r["path"] == name), None)
            cells += ["", "", ""] if row is None else [f"{figure(row['rate'])} ({figure(row['median_rate'])})", figure(row["ratio"]), f"{row['cpu_s']:.2f}"]
        rows.append(cells)
    settings = "; ".join(f"{r['model_size']} model: {r['windows']} real windows, batches of {r['batch_size']}, best of {r['repeats']} rounds, "
                         f"{r['threads']} threads" for r in records.values())
    return "\n".join(markdown_table(header, align, rows) + ["", f"{settings}. {provenance(records)}"])


def end_to_end_table(results: dict[str, dict]) -> str:
    if "inference_end_to_end" not in results:
        return not_measured("inference_end_to_end")
    record = results["inference_end_to_end"]
    rows = [[row["path"], f"{figure(row['rate'])} ({figure(row['median_rate'])})", figure(row["ratio"]), f"{row['cpu_s']:.2f}",
             figure(2 * row["cpu_rate"])] for row in record["rows"]]
    lines = markdown_table(["path", "x real time (median)", "ratio", "CPU s", "x real time per 2 CPU-seconds"], "lrrrr", rows)
    settings = (f"{record['files']} files of `{record['audio_dir']}`, {record['audio_seconds']:.1f} s of audio, "
                f"best of {record['repeats']} rounds, {record['threads']} threads")
    return "\n".join(lines + ["", f"{settings}. {provenance(chosen(results, 'inference_end_to_end'))}"])


def accuracy_table(results: dict[str, dict]) -> str:
    if "inference_accuracy" not in results:
        return not_measured("inference_accuracy")
    record = results["inference_accuracy"]
    corpora = list(path_row(record, ACCURACY_BASELINE)["corpora"])
    rows = [[row["path"], *(f"{100 * row['corpora'][c]['eer']:.2f} %" for c in corpora),
             " / ".join(f"{row['corpora'][c]['min_dcf_001']:.3f}" for c in corpora), f"{row['cosine_min']:.5f} ({row['cosine_mean']:.5f})"]
            for row in record["rows"]]
    header = ["path", *(f"{c} EER" for c in corpora), f"{' / '.join(corpora)} minDCF", f"cosine to float32, min (mean) over {record['files']} files"]
    lines = markdown_table(header, "l" + "r" * len(corpora) + "lr", rows)
    return "\n".join(lines + ["", provenance(chosen(results, "inference_accuracy"))])


def cache_scale_table(results: dict[str, dict]) -> str:
    """The feature cache and the training input at scale: one row per figure, the per-entry costs at a tenth and at all of the corpus."""
    if "cache_scale" not in results:
        return not_measured("cache_scale")
    record = results["cache_scale"]
    build, start, reader = (path_row(record, name) for name in ("cache build", "start of a training run", "streamed reader"))
    parts = [row for row in record["rows"] if row["path"].startswith("index steps")]
    small, whole = parts[0], parts[-1]
    per_entry = {"check_sources_s_per_1000": "checking entry sources", "write_index_s_per_1000": "writing corpus.json",
                 "merge_index_s_per_1000": "merging a second corpus into corpus.json", "load_and_split_s_per_1000": "reading and splitting the index",
                 "run_files_s_per_1000": "writing speakers.json and split.json", "total_s_per_1000": "cache to first batch"}
    rows = [
        ["cache build (`build_feature_cache`)", f"{figure(build['entries_per_s'])} entries/s with {build['workers']} workers, "
         f"{figure(build['cpu_ms_per_entry'])} CPU ms an entry; {build['entries']:,} entries in {figure(build['seconds'])} s"],
        ["peak RAM of the build", f"main process {figure(build['peak_rss_mb_main'])} MB, largest worker {figure(build['peak_rss_mb_worker'])} MB"],
        ["corpus index (`corpus.json`)", f"{build['index_bytes'] / 2**20:.1f} MiB, {figure(build['index_bytes_per_entry'])} bytes an entry"],
        ["indexing the folder (`index_corpus`)", f"{figure(path_row(record, 'index folder')['s_per_1000'])} s per 1,000 files"],
        *([f"{label}, s per 1,000 entries", f"{small[key]:.3f} at {small['entries']:,}, {whole[key]:.3f} at {whole['entries']:,}"]
          for key, label in per_entry.items()),
        [f"start of a training run, {start['entries']:,} entries, {start['speakers']:,} speakers",
         f"{figure(start['total_s'])} s: index and split {figure(start['load_and_split_s'])} s, speakers.json and split.json "
         f"{figure(start['run_files_s'])} s, first batch {figure(start['first_batch_s'])} s (no model)"],
        [f"streamed reader (`SpeakerClassBatches`, one thread, batch {reader['batch_size']})",
         f"{figure(reader['windows_per_s'])} windows/s, {figure(reader['windows_per_cpu_s'])} per CPU second: "
         f"{reader['cores_for_gpu_target']:.1f} such cores for 10,000 windows/s"],
    ]
    if "cache_scale_waveforms" in results:
        augmented = path_row(results["cache_scale_waveforms"], "augmented reader")
        rows.append([f"augmented reader (`AugmentedBatches`, the VoxCeleb recipe's speed, noise, band-limit and mask probabilities, babble and "
                     f"coloured noise, no reverberation, one thread; "
                     f"{results['cache_scale_waveforms']['entries']:,} entries with their audio cached)",
                     f"{figure(augmented['windows_per_s'])} windows/s, {figure(augmented['windows_per_cpu_s'])} per CPU second: "
                     f"{augmented['cores_for_gpu_target']:.0f} such cores for 10,000 windows/s"])
    settings = (f"{record['entries']:,} synthetic entries ({record['per_speaker']} a speaker, {record['seconds'][0]:g} to "
                f"{record['seconds'][1]:g} s crops of real speech, {record['corpus_gib']:.1f} GiB of WAV)")
    return "\n".join(markdown_table(["figure", "measured"], "ll", rows) + ["", f"{settings}. {provenance(chosen(results, 'cache_scale', 'cache_scale_waveforms'))}"])


def recipe_learns_table(results: dict[str, dict]) -> str:
    """test-other EER of the shipped recipe's short run, epoch by epoch, against the untrained model's."""
    if "recipe_learns" not in results:
        return not_measured("recipe_learns")
    record = results["recipe_learns"]
    untrained = record["rows"][0]["eer_test_other"]
    rows = [[row["path"], f"{row['windows']:,}", f"{100 * row['eer_test_other']:.2f} %", f"{row['eer_test_other'] / untrained:.2f}"] for row in record["rows"]]
    verdict = (f"Claim (last epoch at most {record['claimed_ratio']:g} of the untrained model's EER): "
               f"{'holds' if record['holds'] else 'fails'} at {record['ratio']:.2f}. Training: {figure(record['train_cpu_s'])} CPU-s "
               f"({record['epochs'] * record['steps_per_epoch']} steps of {record['batch_size']} windows, {record['model_size']} model, {record['precision']}).")
    return "\n".join(markdown_table(["after", "windows", "test-other EER", "of untrained"], "lrrr", rows)
                     + ["", verdict, provenance(chosen(results, "recipe_learns"))])


def onednn_table(results: dict[str, dict]) -> str:
    """Training steps of the small model with TensorFlow's oneDNN kernels off and on, same weights and batches."""
    if "onednn" not in results:
        return not_measured("onednn")
    record = results["onednn"]
    rows = [[f"{row['path']} (`TF_ENABLE_ONEDNN_OPTS={row['TF_ENABLE_ONEDNN_OPTS']}`)", f"{row['s_per_step']:.2f}", f"{row['cpu_s_per_step']:.2f}",
             f"{row['windows_per_cpu_s']:.1f}", f"{row['losses'][-1]:.4f}"] for row in record["rows"]]
    summary = (f"oneDNN on: {record['cpu_ratio']:.2f} times fewer CPU seconds a step; largest gap between the two loss curves "
               f"{record['largest_loss_gap']:.4f} over {record['steps']} steps ({record['model_size']} model, batch {record['batch_size']}, float32).")
    return "\n".join(markdown_table(["setting", "s a step", "CPU-s a step", "windows per CPU-s", "last loss"], "lrrrr", rows)
                     + ["", summary, provenance(chosen(results, "onednn"))])


def device_table(results: dict[str, dict]) -> str:
    """The GPU benchmark's figures, as `bench_device.py --table` prints them (its record names the device, not the CPU)."""
    if "bench_device" not in results:
        return not_measured("bench_device")
    from bench_device import markdown_table as device_markdown_table  # bench/ is on the path: this script's own folder.

    record = results["bench_device"]
    return device_markdown_table(record) + f"\n\nMeasured: `bench_device.json` ({record['environment']['cpu_count']} CPU cores beside the GPU)."


README_SECTIONS = {"bench-performance": performance_table}
BENCH_README_SECTIONS = {"bench-windows": windows_table, "bench-end-to-end": end_to_end_table, "bench-accuracy": accuracy_table,
                         "bench-cache-scale": cache_scale_table, "bench-recipe-learns": recipe_learns_table, "bench-onednn": onednn_table,
                         "bench-device": device_table}


def check_markers(path: Path, markers: list[str]) -> None:
    """Every `<!-- marker -->` ... `<!-- /marker -->` pair is in the file, so no file is half rewritten."""
    content = path.read_text()
    for marker in markers:
        for tag in (f"<!-- {marker} -->", f"<!-- /{marker} -->"):
            if tag not in content:
                raise ValueError(f"{path}: no {tag} marker (the table goes between <!-- {marker} --> and <!-- /{marker} -->)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="results files and the commands that write them (from the repository root, under nice -n 19):\n"
               + "\n".join(f"  {name}.json\n      {line}" for name, line in RESULT_FILES.items()))
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULTS.json", help="Results files written by the bench scripts' --output.")
    parser.add_argument("--readme", type=Path, help="Rewrite the performance table of this file (README.md) between its bench-performance markers.")
    parser.add_argument("--bench_readme", type=Path, help="Rewrite the windows/s, end-to-end and accuracy tables of this file (bench/README.md).")
    args = parser.parse_args(argv)
    targets = {path: sections for path, sections in ((args.readme, README_SECTIONS), (args.bench_readme, BENCH_README_SECTIONS)) if path}
    try:
        results = load_results(args.results)
        if not targets:
            for marker, build in {**README_SECTIONS, **BENCH_README_SECTIONS}.items():
                print(f"<!-- {marker} -->\n{build(results)}\n<!-- /{marker} -->\n")
            return 0
        tables = {path: {marker: build(results) for marker, build in sections.items()} for path, sections in targets.items()}
        for path, sections in tables.items():
            check_markers(path, list(sections))
        from experiment import replace_marked_section

        for path, sections in tables.items():
            for marker, table in sections.items():
                replace_marked_section(path, marker, table)
            print(f"{path}: {', '.join(sections)} rewritten from {len(results)} results files")
    except OSError as error:
        sys.exit(f"render_tables.py: {error.filename}: {error.strerror}")
    except ValueError as error:
        sys.exit(f"render_tables.py: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
