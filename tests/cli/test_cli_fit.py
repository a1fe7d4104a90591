"""`adainfer fit` and `adainfer predict` on raw inputs, as a user runs them, and their refusals."""

import json
import sys

import pytest

from cli_runner import assert_clean_error, invoke, ok, stderr
from fit_data import parity_examples, write_task  # tests/fit, on the path by the root conftest

SMALL = ("--shots", 2, "--train", 30, "--calibration", 40, "--test", 20, "--epsilon", 0.1, "--delta", 0.1,
         "--timing-prompts", 4, "--batch-sizes", "1,2", "--resplits", 10)


@pytest.fixture(scope="module")
def fitted(tiny_spaced_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("fit")
    task = write_task(work / "parity.jsonl", parity_examples(240))
    result = ok("fit", task, "-o", work / "clf", *SMALL, "--runs", work / "runs", "--model", tiny_spaced_dir,
                "--cache-dir", work / "cache")
    return work, result


def test_fit_writes_a_classifier_with_its_card_and_prints_the_summary(fitted):
    work, result = fitted
    card = json.loads((work / "clf" / "card.json").read_text())
    assert card["answer_set"] == ["even", "odd"] and card["split_sizes"] == {"train": 30, "calibration": 40, "test": 20}
    assert card["command"].startswith("adainfer fit ") and "--epsilon 0.1" in card["command"]
    assert "dense accuracy" in result.stdout and "measured speedup" in result.stdout and "certificate" in result.stdout
    assert (work / "clf" / "card.md").read_text().startswith("# Early-exit classifier: parity")
    # Scorer and first check were chosen on the train split; every candidate tried is on the card.
    assert card["scorer"]["scorer"] in {c["scorer"] for c in card["scorer"]["candidates"]}
    assert card["first_check"] == card["scorer"]["first_check"] and "scorer:" in result.stdout
    # At epsilon = delta = 0.1, 38 calibration prompts certify a policy changing 5 % of answers: 40 need no warning.
    assert card["calibration_needed"]["calibration_prompts"] == 40
    assert card["calibration_needed"]["half_epsilon_risk"] == 38 and "warning" not in stderr(result)


def test_predict_answers_raw_inputs_in_batches_and_compares_with_the_dense_model(fitted, tiny_spaced_dir):
    work, _ = fitted
    inputs = work / "inputs.jsonl"
    write_task(inputs, parity_examples(7, seed=11))
    base = ("predict", inputs, "-p", work / "clf", "--model", tiny_spaced_dir, "--cache-dir", work / "cache")
    result = ok(*base, "--batch-size", 3)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 7 and all(r["label"] in ("even", "odd") and "dense_correct" in r for r in records)
    assert all(r["cached_tokens"] > 0 for r in records)  # the card's demonstrations ran once, as calibrated
    text = stderr(result)
    summary = json.loads(" ".join(text[text.rindex('{"prompts"'):].splitlines()))
    assert summary["prompts"] == 7 and {"accuracy", "dense_accuracy", "agreement_with_dense"} <= set(summary)
    one_by_one = [json.loads(line) for line in ok(*base, "--batch-size", 1).stdout.splitlines()]
    # Batching pads prompts (features equal within float error) and changes no answer or exit.
    assert [(r["label"], r["exit_layer"]) for r in one_by_one] == [(r["label"], r["exit_layer"]) for r in records]
    unlabelled = work / "unlabelled.jsonl"
    unlabelled.write_text('{"input": "red cat"}\n')
    assert "dense_accuracy" not in stderr(ok(*base[:1], unlabelled, *base[2:]))
    assert_clean_error(invoke(*base, "--choices", "even,odd"), "answer set is on its card")


@pytest.mark.parametrize("outputs, message", [
    (("same", "same"), "at least two distinct outputs"),
    (("yes", "yellow"), "both start with token ' y'"),
])
def test_bad_tasks_are_one_error_line_and_write_nothing(tmp_path, tiny_spaced_dir, outputs, message):
    task = write_task(tmp_path / "task.jsonl", parity_examples(240, labels=outputs))
    result = invoke("fit", task, "-o", tmp_path / "clf", *SMALL, "--runs", tmp_path / "runs", "--model",
                    tiny_spaced_dir, "--cache-dir", tmp_path / "cache")
    assert_clean_error(result, message)
    assert not (tmp_path / "clf").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("options, message", [
    (("--epsilon", 1.5), "--epsilon must be in (0, 1)"),
    (("--delta", 0), "--delta must be in (0, 1)"),
    (("--calibration", 10), "at least 22 are needed"),
    (("--workers", 2), "add --ray"),
    (("--scorers", "forest"), "--scorers must name some of svm"),
    (("--ray", "--workers", 0), "--workers must be at least 1"),
])
def test_bad_options_are_one_error_line_and_write_nothing(tmp_path, tiny_spaced_dir, options, message):
    task = write_task(tmp_path / "task.jsonl", parity_examples(240))
    result = invoke("fit", task, "-o", tmp_path / "clf", *SMALL, *options, "--runs", tmp_path / "runs",
                    "--model", tiny_spaced_dir, "--cache-dir", tmp_path / "cache")
    assert_clean_error(result, message)
    assert not (tmp_path / "clf").exists() and not (tmp_path / "runs").exists()


def test_fit_with_ray_but_without_ray_installed_names_the_extra_and_writes_nothing(tmp_path, tiny_spaced_dir,
                                                                                  monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "adainfer.scale.collect", raising=False)
    task = write_task(tmp_path / "task.jsonl", parity_examples(240))
    result = invoke("fit", task, "-o", tmp_path / "clf", *SMALL, "--ray", "--runs", tmp_path / "runs",
                    "--model", tiny_spaced_dir)
    assert_clean_error(result, "--ray needs Ray", 'pip install -e ".[ray]"')
    assert not (tmp_path / "clf").exists() and not (tmp_path / "runs").exists()


def test_too_few_examples_for_three_splits_is_one_error_line(tmp_path, tiny_spaced_dir):
    task = write_task(tmp_path / "task.jsonl", parity_examples(8))
    result = invoke("fit", task, "-o", tmp_path / "clf", *SMALL, "--runs", tmp_path / "runs", "--model",
                    tiny_spaced_dir)
    assert_clean_error(result, "too few examples for three splits")
    assert not (tmp_path / "clf").exists()
    assert stderr(result).splitlines()[-1].startswith("error:") and "━" not in stderr(result)


def test_profile_with_a_task_prints_the_best_reachable_speedup_and_a_verdict(tmp_path, tiny_spaced_dir):
    task = write_task(tmp_path / "parity.jsonl", parity_examples(120))
    result = ok("profile", "--task", task, "--sample", 4, "--shots", 2, "--repeats", 1, "-o", tmp_path / "payoff.json",
                "--model", tiny_spaced_dir, "--cache-dir", tmp_path / "cache")
    payoff = json.loads(result.stdout)
    assert payoff["prompts"] == 4 and payoff["closed_answer_set"] and payoff["best_speedup"] > 0
    assert payoff["verdict"] in stderr(result)
    # 120 examples leave fit 30 calibration prompts: far fewer than epsilon = 5 % needs to certify much.
    assert payoff["fit_calibration_prompts"] == 30 and "warning: only 30 calibration prompts" in stderr(result)
    assert json.loads((tmp_path / "payoff.json").read_text()) == payoff
