"""The committed tables are what their commands produce from the committed traces, byte for byte."""

import json
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adainfer.cli.app import app

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "results" / "user-task-english-german"
TABLE_FILES = ("tasks.md", "tasks.csv", "tasks.json", "groups.md", "beyond.md", "best_within_1pt.md",
               "calibration.md", "calibration.csv", "factor_study.md", "rows.json", "provenance.json")


def test_a_committed_table_rebuilds_byte_identical_from_the_committed_traces(tmp_path, monkeypatch):
    command = json.loads((TABLE / "tasks.json").read_text())["command"]
    words = shlex.split(command)
    assert words[:2] == ["adainfer", "report"] and words[2].startswith("results/traces/")
    # The command as committed, run from a scratch folder that sees the repository's traces.
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "traces").symlink_to(REPO / "results" / "traces")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, words[1:])
    assert result.exit_code == 0, result.output
    for name in TABLE_FILES:
        rebuilt = tmp_path / "results" / "user-task-english-german" / name
        assert rebuilt.read_bytes() == (TABLE / name).read_bytes(), name


@pytest.mark.parametrize("folder", sorted(path.parent for path in (REPO / "results").glob("*/tasks.json")),
                         ids=lambda path: path.name)
def test_every_committed_table_names_a_command_that_reads_committed_traces(folder):
    command = shlex.split(json.loads((folder / "tasks.json").read_text())["command"])
    assert command[1] == "report"
    assert (REPO / command[2]).is_dir(), f"{command[2]} is not committed"
    assert (folder / "provenance.json").exists()
