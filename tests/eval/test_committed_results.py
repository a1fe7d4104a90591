"""The committed tables are what their commands produce from the committed traces, byte for byte."""

import json
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adainfer.cli.app import app

REPO = Path(__file__).resolve().parents[2]
REPORT_FILES = ("tasks.md", "tasks.csv", "tasks.json", "groups.md", "beyond.md", "best_within_1pt.md",
                "calibration.md", "calibration.csv", "factor_study.md", "rows.json", "provenance.json")
# One table of each kind, by the file whose "command" rebuilt it: a report over one pair of settings,
# the k-shot report, whose several numbers of demonstrations add the per-k table (tasks_by_shots),
# and the inter-model table (paper Table 6) over three models' traces.
COMMITTED_TABLES = {
    "user-task-english-german": ("tasks.json", REPORT_FILES),
    "gemma3-270m-kshot": ("tasks.json", REPORT_FILES + ("tasks_by_shots.md", "tasks_by_shots.csv",
                                                        "tasks_by_shots.json")),
    "inter_model": ("inter_model.json", ("inter_model.md", "inter_model.csv", "inter_model.json",
                                         "inter_model_tasks.md", "inter_model_tasks.csv", "inter_model_tasks.json")),
}


def rebuild(command: str, tmp_path: Path, monkeypatch) -> Path:
    """Run a committed table's command, as committed, from a scratch folder that sees the repository's
    traces (and nothing else of results/); the scratch folder, where its tables now are."""
    words = shlex.split(command)
    out = words[words.index("--out") + 1]
    assert words[0] == "adainfer" and out.startswith("results/")
    named = [word.partition("=")[2] or word for word in words[2:] if "results/" in word and word != out]
    assert named and all(path.startswith("results/traces/") for path in named), named
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "traces").symlink_to(REPO / "results" / "traces")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, words[1:])
    assert result.exit_code == 0, result.output
    return tmp_path / out


@pytest.mark.parametrize("table", sorted(COMMITTED_TABLES))
def test_a_committed_table_rebuilds_byte_identical_from_the_committed_traces(table, tmp_path, monkeypatch):
    folder = REPO / "results" / table
    command_file, files = COMMITTED_TABLES[table]
    rebuilt = rebuild(json.loads((folder / command_file).read_text())["command"], tmp_path, monkeypatch)
    assert rebuilt == tmp_path / "results" / table
    for name in files:
        assert (rebuilt / name).read_bytes() == (folder / name).read_bytes(), name


@pytest.mark.parametrize("folder", sorted(path.parent for path in (REPO / "results").glob("*/tasks.json")),
                         ids=lambda path: path.name)
def test_every_committed_table_names_a_command_that_reads_committed_traces(folder):
    command = shlex.split(json.loads((folder / "tasks.json").read_text())["command"])
    assert command[1] == "report"
    assert (REPO / command[2]).is_dir(), f"{command[2]} is not committed"
    assert (folder / "provenance.json").exists()
