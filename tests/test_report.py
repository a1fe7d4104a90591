"""Tables and figures from collected settings: scoring rows, averaging, files written."""

import json

import numpy as np
import pandas as pd
import pytest

from adainfer.eval.collect import Collection
from adainfer.eval.experiments import (PAPER_METHODS, calibration_rows, dense_and_oracle, factor_rows, model_transfer_rows, score,
                             setting_rows, transfer_rows)
from adainfer.eval.harness import Setting, SettingData
from adainfer.eval.report import summarise, write_report
from adainfer.policies.gap import GapThresholdPolicy

LAYERS = 6
NAMES = ("gap", "top_prob", "depth", "cos_attn", "cos_mlp", "cos_hidden", "agree_prev")
IDENTITY = {"architecture": "Toy", "num_layers": LAYERS, "hidden_size": 64, "vocab_size": 100, "head_sha256": "0"}


def synthetic(prompts: int, seed: int, settle: int = 3) -> Collection:
    """Traces whose top-1 becomes the gold token (7) at layer `settle` or later, and gap jumps with it."""
    rng = np.random.default_rng(seed)
    settles = rng.integers(settle, LAYERS + 1, size=prompts)
    layer = np.arange(1, LAYERS + 1)
    right = layer[None, :] >= settles[:, None]
    top1 = np.where(right, 7, 3)
    features = rng.uniform(0, 0.3, size=(prompts, LAYERS, len(NAMES))).astype(np.float32)
    features[..., 0] += 0.6 * right  # gap
    features[..., 2] = layer / LAYERS  # depth
    return Collection(features=features, labels=right.astype(np.int64), top1=top1, gold=np.full(prompts, 7),
                      seq_len=np.full(prompts, 20), feature_names=NAMES, model_identity=IDENTITY)


def setting(task: str, shots: int, seed: int = 0) -> SettingData:
    return SettingData(Setting(task, shots), "toys", synthetic(40, seed), synthetic(30, seed + 100))


def test_dense_and_oracle_rows_follow_the_traces():
    data = setting("a", 0)
    dense, oracle = dense_and_oracle(data)
    assert dense["accuracy"] == 1.0 and dense["mean_exit_layer"] == LAYERS
    first_right = (data.eval.top1 == 7).argmax(axis=1) + 1
    assert oracle["mean_exit_layer"] == pytest.approx(first_right.mean(), abs=1e-4)
    assert oracle["layers_saved"] == pytest.approx(1 - first_right.mean() / LAYERS, abs=1e-4)


def test_a_learnable_signal_gives_the_svm_most_of_the_oracle():
    rows = {row["method"]: row for row in setting_rows(setting("a", 5))}
    assert set(rows) == {"dense", "stable-answer oracle", "svm", "crf", "gap>0.8", "svm+depth", "svm+depth+agree"}  # no candidates here
    assert rows["svm"]["accuracy_change"] > -0.05
    assert rows["svm"]["saved_of_oracle"] > 0.8


def test_an_untrainable_policy_gives_its_reason_not_figures():
    data = setting("a", 0)
    data.train.labels[:] = 0
    result = score(PAPER_METHODS[0].make(), data.train, data.eval)
    assert "only label 0" in result["error"] and "accuracy" not in result
    assert "accuracy" in score(GapThresholdPolicy(0.8), data.train, data.eval)


def test_few_shot_rows_average_over_the_numbers_of_demonstrations():
    rows = setting_rows(setting("a", 5, seed=1)) + setting_rows(setting("a", 10, seed=2)) + setting_rows(setting("a", 0))
    summary = summarise(rows).set_index(["regime", "task", "method"])
    few = [row["accuracy"] for row in rows if row["method"] == "svm" and row["shots"] > 0]
    assert summary.loc[("few-shot", "a", "svm"), "accuracy"] == pytest.approx(np.mean(few))
    assert summary.loc[("few-shot", "a", "svm"), "shots"] == "5,10"
    assert summary.loc[("zero-shot", "a", "svm"), "shots"] == "0"


def test_transfer_replays_one_classifier_on_every_target():
    sources = [setting("a", 5), setting("b", 5, seed=7)]
    rows = transfer_rows(sources, sources)
    assert [(r["train_task"], r["eval_task"]) for r in rows] == [
        ("a/5shot-seed0", "a/5shot-seed0"), ("a/5shot-seed0", "b/5shot-seed0"),
        ("b/5shot-seed0", "a/5shot-seed0"), ("b/5shot-seed0", "b/5shot-seed0")]


def test_factor_study_adds_one_cosine_at_a_time():
    rows = factor_rows(setting("a", 5))
    assert [row["features"] for row in rows] == ["gap, top_prob", "+ cos_attn", "+ cos_hidden", "+ cos_mlp"]


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


def test_a_check_schedule_skips_layers_the_policy_never_accepted_in_training():
    rows = {row["method"]: row for row in setting_rows(setting("a", 5))}
    svm = rows["svm"]
    assert svm["first_check"] >= 2  # gold never on top at layer 1 in these traces
    assert svm["scheduled_honest_flops_ratio"] < svm["honest_flops_ratio"]


def test_calibration_rows_report_the_fraction_of_splits_within_epsilon():
    data = SettingData(Setting("a", 5), "toys", synthetic(100, 0), synthetic(400, 1))
    row = calibration_rows(data, epsilon=0.1, delta=0.1, splits=20)
    assert row["splits"] == 20 and row["calibration_prompts"] == 200
    assert 0 <= row["fraction_within_epsilon"] <= 1 and row["fraction_within_epsilon"] >= 0.9


def test_model_transfer_diagonal_is_the_intra_model_score_and_only_shared_settings_count():
    first = [setting("a", 5, seed=0), setting("only-first", 5, seed=1)]
    second = [SettingData(Setting("a", 5), "toys", synthetic(40, 7, settle=5), synthetic(30, 8, settle=5))]
    rows = model_transfer_rows({"m1": first, "m2": second}, methods=PAPER_METHODS[:1])
    assert {row["task"] for row in rows} == {"a"}
    by_pair = {(row["train_model"], row["eval_model"]): row for row in rows}
    assert set(by_pair) == {("m1", "m1"), ("m1", "m2"), ("m2", "m1"), ("m2", "m2")}
    intra = score(PAPER_METHODS[0].make(), first[0].train, first[0].eval)
    assert by_pair[("m1", "m1")]["layers_saved"] == intra["layers_saved"]
    # Answers, oracle and exits are the evaluated model's own: m2's answers settle later than m1's.
    assert by_pair[("m1", "m2")]["oracle_layers_saved"] == by_pair[("m2", "m2")]["oracle_layers_saved"]
    assert by_pair[("m1", "m2")]["oracle_layers_saved"] < by_pair[("m1", "m1")]["oracle_layers_saved"]


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


def test_intervals_bracket_the_change_and_a_row_carries_agreement():
    rows = {row["method"]: row for row in setting_rows(setting("a", 5))}
    for method in ("svm", "svm+depth"):
        row = rows[method]
        assert row["accuracy_change_low"] <= row["accuracy_change"] <= row["accuracy_change_high"]
        assert row["layers_saved_low"] <= row["layers_saved"] <= row["layers_saved_high"]
        assert 0 <= row["agreement_with_dense"] <= 1


@pytest.mark.parametrize("method", PAPER_METHODS[:2], ids=lambda method: method.name)
def test_fitting_a_policy_twice_on_the_same_rows_gives_the_same_decisions(method):
    data = setting("a", 5)
    first, second = score(method.make(), data.train, data.eval), score(method.make(), data.train, data.eval)
    first.pop("_per_prompt"), second.pop("_per_prompt")
    assert first == second
