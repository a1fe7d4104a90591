"""The rows behind the tables, scored on synthetic traces: dense, oracle, policies, transfer, calibration."""

import numpy as np
import pytest
from synthetic_traces import LAYERS, setting, synthetic

from adainfer.eval import experiments
from adainfer.policies import calibrated
from adainfer.eval.experiments import (PAPER_METHODS, calibration_rows, dense_and_oracle, factor_rows,
                                       model_transfer_rows, score, setting_rows, transfer_rows)
from adainfer.eval.harness import Setting, SettingData
from adainfer.policies.calibrated import CalibratedPolicy, RiskCertificate, learn_then_test
from adainfer.policies.gap import GapThresholdPolicy


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


def test_transfer_replays_one_classifier_on_every_target():
    sources = [setting("a", 5), setting("b", 5, seed=7)]
    rows = transfer_rows(sources, sources)
    assert [(r["train_task"], r["eval_task"]) for r in rows] == [
        ("a/5shot-seed0", "a/5shot-seed0"), ("a/5shot-seed0", "b/5shot-seed0"),
        ("b/5shot-seed0", "a/5shot-seed0"), ("b/5shot-seed0", "b/5shot-seed0")]


def test_factor_study_adds_one_cosine_at_a_time():
    rows = factor_rows(setting("a", 5))
    assert [row["features"] for row in rows] == ["gap, top_prob", "+ cos_attn", "+ cos_hidden", "+ cos_mlp"]


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


def _setting(eval_seed: int = 1, eval_prompts: int = 31):
    return SettingData(Setting("a", 5), "toys", synthetic(100, 0), synthetic(eval_prompts, eval_seed))


def _fixed_thresholds(monkeypatch, thresholds):
    """Make every split of `calibration_rows` certify the next of `thresholds` (cycled)."""
    chosen = iter(thresholds * 100)

    def fake(scores, top1, epsilon, delta, grid, first_check=1):
        return RiskCertificate(epsilon, delta, len(scores), next(chosen), 0.0, 0.01, 1)

    monkeypatch.setattr(calibrated, "learn_then_test", fake)


def test_calibration_rows_test_the_grid_of_the_training_traces(monkeypatch):
    grids = []

    def recording(scores, top1, epsilon, delta, grid, first_check=1):
        grids.append(grid)
        return learn_then_test(scores, top1, epsilon, delta, grid, first_check)

    monkeypatch.setattr(calibrated, "learn_then_test", recording)
    data = _setting()
    experiments.calibration_rows(data, 0.1, 0.1, splits=3)
    experiments.calibration_rows(_setting(eval_seed=2, eval_prompts=60), 0.1, 0.1, splits=3)
    features = ("gap", "top_prob", "depth", "agree_prev")
    policy = CalibratedPolicy(features).fit(data.train.select(features), data.train.top1)
    for grid in grids:  # the same grid whatever the eval traces
        np.testing.assert_array_equal(grid, policy.threshold_grid_)


def test_a_finite_threshold_that_no_test_prompt_passes_certifies_no_early_exit(monkeypatch):
    _fixed_thresholds(monkeypatch, [1e9])
    row = experiments.calibration_rows(_setting(), epsilon=0.1, delta=0.1, splits=10)
    assert row["splits_with_early_exits"] == 0 and row["splits_certifying_exits"] == 0
    assert row["fraction_within_epsilon"] is None  # never the vacuous 1.0
    assert row["fraction_within_epsilon_all_splits"] == 1.0 and row["layers_saved"] == 0.0
    assert row["calibration_prompts"] == 15 and row["test_prompts"] == 16


def test_the_fraction_within_epsilon_counts_only_splits_that_exit_early(monkeypatch):
    # Alternate: no threshold (never exits, risk 0) and one below every score (every test prompt
    # exits at layer 1, whose top-1 is never the final one: risk 1).
    _fixed_thresholds(monkeypatch, [float("inf"), -1e9])
    row = experiments.calibration_rows(_setting(), epsilon=0.1, delta=0.1, splits=10)
    assert row["splits_with_early_exits"] == 5 and row["splits_certifying_exits"] == 5
    assert row["fraction_within_epsilon"] == 0.0
    assert row["fraction_within_epsilon_all_splits"] == 0.5
