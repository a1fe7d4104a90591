"""The report's files from settings: tables averaged over demonstrations, figures, provenance, determinism."""

import json

import numpy as np
import pandas as pd
import pytest
from synthetic_traces import setting

from adainfer.eval.experiments import setting_rows
from adainfer.eval.report import summarise, write_report


def test_few_shot_rows_average_over_the_numbers_of_demonstrations():
    rows = setting_rows(setting("a", 5, seed=1)) + setting_rows(setting("a", 10, seed=2)) + setting_rows(setting("a", 0))
    summary = summarise(rows).set_index(["regime", "task", "method"])
    few = [row["accuracy"] for row in rows if row["method"] == "svm" and row["shots"] > 0]
    assert summary.loc[("few-shot", "a", "svm"), "accuracy"] == pytest.approx(np.mean(few))
    assert summary.loc[("few-shot", "a", "svm"), "shots"] == "5,10"
    assert summary.loc[("zero-shot", "a", "svm"), "shots"] == "0"


def test_report_writes_every_table_and_figure_with_its_command(tmp_path):
    settings = [setting("a", 0), setting("a", 5), setting("b", 5, seed=3)]
    written = write_report(settings, tmp_path, "adainfer eval --tasks a,b")
    names = {path.relative_to(tmp_path).as_posix() for path in written}
    for stem in ("tasks", "groups", "inter_task", "factor_study", "beyond", "best_within_1pt", "calibration"):
        assert {f"{stem}.csv", f"{stem}.json", f"{stem}.md"} <= names
        assert (tmp_path / f"{stem}.md").read_text().splitlines()[2] == "Command: `adainfer eval --tasks a,b`"
    for png in ("layer_accuracy.png", "lens_features_a.png", "exit_layers_b.png"):
        assert (tmp_path / "figures" / png).read_bytes()[:4] == b"\x89PNG"
    table = pd.read_csv(tmp_path / "tasks.csv")
    assert set(table["regime"]) == {"zero-shot", "few-shot"}
    assert json.loads((tmp_path / "rows.json").read_text())["command"] == "adainfer eval --tasks a,b"
    assert not (tmp_path / "tasks_by_shots.csv").exists()  # one k only: nothing to break down


def test_report_breaks_few_shot_rows_down_by_k_when_several_were_run(tmp_path):
    settings = [setting("a", 0), setting("a", 5), setting("a", 10, seed=4)]
    write_report(settings, tmp_path, "adainfer report runs --shots 0,5,10")
    per_k = pd.read_csv(tmp_path / "tasks_by_shots.csv")
    dense = per_k[per_k["method"] == "dense"]
    assert list(dense["shots"]) == [5, 10]
    averaged = pd.read_csv(tmp_path / "tasks.csv")
    few_shot_svm = averaged[(averaged["regime"] == "few-shot") & (averaged["method"] == "svm")]
    assert few_shot_svm["layers_saved"].item() == pytest.approx(
        per_k[per_k["method"] == "svm"]["layers_saved"].mean())


def test_report_twice_on_the_same_traces_is_byte_identical(tmp_path):
    settings = [setting("a", 0), setting("a", 5), setting("b", 5, seed=3)]
    first = write_report(settings, tmp_path / "first", "adainfer report runs --out x")
    write_report(settings, tmp_path / "second", "adainfer report runs --out x")
    tables = [path for path in first if path.suffix in (".md", ".csv", ".json")]
    assert len(tables) > 20
    for path in tables:
        twin = tmp_path / "second" / path.relative_to(tmp_path / "first")
        assert path.read_bytes() == twin.read_bytes(), path.name


def test_every_table_records_its_prompts_and_a_hash_of_its_traces(tmp_path):
    settings = [setting("a", 5), setting("b", 5, seed=3)]
    write_report(settings, tmp_path, "adainfer report runs --out x")
    origin = json.loads((tmp_path / "provenance.json").read_text())
    assert [item["eval_prompts"] for item in origin["settings"]] == [30, 30]
    assert origin["settings"][0]["traces_sha256"] == settings[0].content_sha256()
    assert "scikit-learn" in origin["versions"]
    assert f"content sha256 `{origin['traces_sha256'][:16]}`" in (tmp_path / "tasks.md").read_text()
    changed = setting("b", 5, seed=3)
    changed.eval.features[0, 0, 0] += 1e-3  # one feature of one prompt: another hash
    assert changed.content_sha256() != settings[1].content_sha256()
    table = pd.read_csv(tmp_path / "tasks.csv")
    assert set(table["train_prompts"]) == {40}  # each task: one setting of 40 train prompts
