"""Every rendered table in README.md and bench/README.md is what its script makes of the committed
results files today: a figure edited by hand, or a results file changed without re-rendering, fails here."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from experiment import answer_table, results_table
from model_card import duration_table, figures_table, score_norm_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import render_tables  # noqa: E402  (bench/ is a folder of scripts, not a package)


def marked_section(path: Path, marker: str) -> str:
    match = re.search(rf"<!-- {re.escape(marker)} -->\n(.*?)\n<!-- /{re.escape(marker)} -->", path.read_text(), flags=re.S)
    assert match, f"{path}: no <!-- {marker} --> section"
    return match.group(1)


def bench_results() -> dict[str, dict]:
    return render_tables.load_results(sorted((REPO / "bench" / "results").glob("*.json")))


SECTIONS = {
    ("README.md", "pretrained-model"): lambda: figures_table(json.loads((REPO / "pretrained" / "model_card.json").read_text())),
    ("README.md", "pretrained-durations"): lambda: duration_table(json.loads((REPO / "pretrained" / "model_card.json").read_text())["by_duration"]),
    ("README.md", "pretrained-score-norm"): lambda: score_norm_table(REPO / "results"),
    ("README.md", "ablation-results"): lambda: results_table(REPO / "results" / "ablation_small.csv"),
    ("README.md", "mtl-results"): lambda: results_table(REPO / "results" / "mtl_vs_single.csv"),
    ("README.md", "mtl-results-answer"): lambda: answer_table(REPO / "results" / "mtl_vs_single_answer.csv"),
    ("README.md", "windows-results"): lambda: results_table(REPO / "results" / "windows_and_reverb.csv"),
    ("README.md", "windows-results-answer"): lambda: answer_table(REPO / "results" / "windows_and_reverb_answer.csv"),
    **{("README.md", marker): (lambda build=build: build(bench_results())) for marker, build in render_tables.README_SECTIONS.items()},
    **{("bench/README.md", marker): (lambda build=build: build(bench_results())) for marker, build in render_tables.BENCH_README_SECTIONS.items()},
}


@pytest.mark.parametrize("file, marker", list(SECTIONS), ids=[f"{file}:{marker}" for file, marker in SECTIONS])
def test_the_rendered_section_is_what_its_results_file_renders_to_today(file, marker):
    assert marked_section(REPO / file, marker) == SECTIONS[file, marker](), (
        f"{file} <!-- {marker} --> is stale: re-render it (cli.py results-table, cli.py ship-model --readme, bench/render_tables.py)")


def test_every_marked_section_of_the_readmes_is_checked_here():
    for file in ("README.md", "bench/README.md"):
        markers = set(re.findall(r"<!-- (?!/)([\w-]+) -->", (REPO / file).read_text()))
        assert markers == {marker for f, marker in SECTIONS if f == file}, file
