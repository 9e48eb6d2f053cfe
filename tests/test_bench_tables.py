"""bench scripts' --output and bench/render_tables.py: the README tables hold the figures a benchmark printed.

Real runs on the bundled samples, at the smallest sizes: bench_features.py on 4 files, and
bench_inference.py's windows/s on 8 windows of the small model, one round.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# One printed line of bench_features.py's rates table: group, files, audio s, then reference, project, ratio twice.
FEATURES_LINE = re.compile(r"^ {0,2}(\S.*?)\s+(\d+)\s+(\d+) \|\s+(\d+)x\s+(\d+)x\s+([\d.]+)x \|\s+(\d+)x\s+(\d+)x\s+([\d.]+)x$", re.M)
# One printed line of bench_inference.py's rates: path, rate, median, CPU seconds, ratio.
INFERENCE_LINE = re.compile(r"^  (\S.*?)\s+([\d.]+) windows/s \(median\s+([\d.]+); CPU\s+([\d.]+) s\)\s+([\d.]+)x predict", re.M)
OUTSIDE_BEFORE = "# A README\n\nText above the table, kept as it is.\n\n"
OUTSIDE_AFTER = "\n\nText below the table, kept as it is.\n"


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def marked_file(path: Path, *markers: str) -> Path:
    sections = "\n\n".join(f"<!-- {m} -->\n| a hand-typed | table |\n<!-- /{m} -->" for m in markers)
    path.write_text(OUTSIDE_BEFORE + sections + OUTSIDE_AFTER)
    return path


def section(text: str, marker: str) -> str:
    return text.split(f"<!-- {marker} -->\n", 1)[1].split(f"\n<!-- /{marker} -->", 1)[0]


def cell_number(row: str, pattern: str) -> float:
    return float(re.search(pattern, row).group(1).replace(",", ""))


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> tuple[str, dict, Path]:
    """What bench_features.py printed, the JSON it wrote, and that file."""
    output = tmp_path_factory.mktemp("results") / "features.json"
    result = run("bench/bench_features.py", "--data_dir", "samples", "--limit", "4", "--workers", "1", "--profile", "--output", str(output))
    return result.stdout, json.loads(output.read_text()), output


def test_features_json_holds_every_figure_it_printed(features):
    stdout, record, _ = features
    printed = FEATURES_LINE.findall(stdout)
    assert [p[0] for p in printed][0] == "all" and len(printed) == len(record["rows"]) >= 2
    for line, row in zip(printed, record["rows"]):
        whole, after = row["whole_path"], row["after_decoding"]
        assert line == (row["group"], str(row["files"]), f"{row['audio_seconds']:.0f}",
                        f"{whole['reference']:.0f}", f"{whole['project']:.0f}", f"{whole['ratio']:.2f}",
                        f"{after['reference']:.0f}", f"{after['project']:.0f}", f"{after['ratio']:.2f}")
    assert f"over 4 files: {record['agreement']['max_difference']:.3g} (within" in stdout
    for path, name in (("reference", "normalise (frame loop)"), ("read_mfcc", "normalise")):
        stages = record["profile"][path]
        assert re.search(rf"  {re.escape(name)}\s+{stages['stages_cpu_s'][name]:.3f} s", stdout)
        assert f"work after decoding / decoding: {stages['after_decoding_over_decoding']:.2f}" in stdout
    cache = record["cache"]
    assert f"1 workers: {cache['wall_s']:.1f} s wall, {cache['x_real_time']:.0f} audio seconds per wall second" in stdout
    assert (record["benchmark"], record["mode"], record["files"]) == ("bench_features", "features", 4)
    assert record["command"].startswith("python bench/bench_features.py --data_dir samples --limit 4")
    assert record["machine"]["cores"] == os.cpu_count() and len(record["machine"]["load_average"]) == 2
    assert record["versions"]["numpy"] == np.__version__
    assert datetime.date.fromisoformat(record["date"])


def test_render_puts_the_printed_figures_between_the_markers_and_keeps_the_rest(features, tmp_path):
    stdout, record, output = features
    readme = marked_file(tmp_path / "README.md", "bench-performance")
    run("bench/render_tables.py", "--readme", str(readme), str(output))
    text = readme.read_text()
    assert text.startswith(OUTSIDE_BEFORE + "<!-- bench-performance -->\n") and text.endswith("<!-- /bench-performance -->" + OUTSIDE_AFTER)
    table = section(text, "bench-performance")
    assert "hand-typed" not in table
    row = next(line for line in table.splitlines() if line.startswith("| features, one core"))
    _, files, _, reference, project, ratio, *_ = FEATURES_LINE.findall(stdout)[0]
    assert "4 files of `samples`" in row and record["command"] in row
    assert cell_number(row, r"\| ([\d,]+) x \(librosa") == int(reference)
    assert cell_number(row, r"\| ([\d,]+) x \(`read_mfcc`\)") == int(project)
    assert abs(cell_number(row, r"\) \| ([\d.]+) \| `python") - float(ratio)) <= 0.05
    assert "| features, all cores (`build_feature_cache`, 1 worker) |" in table
    assert not any(line.startswith(("| inference", "| training")) for line in table.splitlines())  # No file given: no row.
    machine = record["machine"]
    assert table.splitlines()[-1].startswith(f"Measured: `features.json` on {machine['cpu']}, {machine['cores']} cores")
    assert table.splitlines()[-1].endswith(f", {record['date']}.")


def test_a_missing_marker_is_one_line_naming_the_file_and_the_marker(features, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(OUTSIDE_BEFORE + "<!-- bench-performance -->\n| a hand-typed | table |\n" + OUTSIDE_AFTER)
    before = readme.read_text()
    result = subprocess.run([sys.executable, "bench/render_tables.py", "--readme", str(readme), str(features[2])],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"{readme}: no <!-- /bench-performance --> marker" in result.stderr
    assert readme.read_text() == before


def test_inference_json_holds_its_printed_rates_and_fills_the_windows_table(features, tmp_path):
    output = tmp_path / "inference_windows_small.json"
    result = run("bench/bench_inference.py", "--model_size", "small", "--windows", "8", "--repeats", "1", "--output", str(output))
    record = json.loads(output.read_text())
    printed = INFERENCE_LINE.findall(result.stdout)
    assert len(printed) == len(record["rows"]) == 5
    for line, row in zip(printed, record["rows"]):
        assert line == (row["path"], f"{row['rate']:.1f}", f"{row['median_rate']:.1f}", f"{row['cpu_s']:.2f}", f"{row['ratio']:.2f}")
        assert f"{row['path']}: max |difference| to batched predict {row['max_difference']:.1e}, cosine min {row['cosine_min']:.6f}" in result.stdout
    assert (record["mode"], record["model_size"], record["windows"], record["repeats"]) == ("windows", "small", 8, 1)

    bench_readme = marked_file(tmp_path / "bench_README.md", "bench-windows", "bench-end-to-end", "bench-accuracy", "bench-cache-scale", "bench-recipe-learns",
                               "bench-onednn", "bench-device")
    run("bench/render_tables.py", "--bench_readme", str(bench_readme), str(output), str(features[2]))
    text = bench_readme.read_text()
    bfloat16 = next(line for line in section(text, "bench-windows").splitlines() if line.startswith("| Embedder, bfloat16 (folded) |"))
    _, rate, median, cpu, ratio = next(p for p in printed if p[0] == "Embedder, bfloat16 (folded)")
    assert abs(cell_number(bfloat16, r"^\| [^|]+ \| ([\d,.]+) \(") - float(rate)) <= 0.5
    assert abs(cell_number(bfloat16, r"\(([\d,.]+)\) \|") - float(median)) <= 0.5
    assert bfloat16.endswith(f" | {cpu} |")
    assert "no `inference_end_to_end.json` among the results given" in section(text, "bench-end-to-end")
    assert "no `inference_accuracy.json`" in section(text, "bench-accuracy")
    assert "no `bench_device.json` among the results given (`bash bench/device_run.sh" in section(text, "bench-device")
    assert text.startswith(OUTSIDE_BEFORE) and text.endswith(OUTSIDE_AFTER)
