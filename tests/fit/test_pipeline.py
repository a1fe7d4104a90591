"""`fit_classifier` end to end on a tiny model: the certificate, the figures, the card, the cache."""

import json

import numpy as np
import pytest

from adainfer.engine.model import EarlyExitModel
from adainfer.eval.traces import load_collection
from adainfer.eval.replay import policy_decisions
from adainfer.policies.decisions import answers_at, exit_layers
from adainfer.fit.classifier import classify, load_classifier
from adainfer.fit.pipeline import (FitError, FitOptions, examples_source, fit_classifier,
                                   minimum_calibration_prompts, task_source)
from adainfer.fit.splits import SplitSizes
from adainfer.inference.predict import predict_batch
from adainfer.policies.calibrated import binomial_p_value
from fit_data import parity_examples

OPTIONS = FitOptions(shots=2, sizes=SplitSizes(40, 80, 40), timing_prompts=8, batch_sizes=(1, 4), resplits=20)


@pytest.fixture(scope="module")
def model(tiny_spaced_dir):
    return EarlyExitModel.from_pretrained(str(tiny_spaced_dir))


@pytest.fixture(scope="module")
def fitted(model, tmp_path_factory):
    cache = tmp_path_factory.mktemp("fit-cache")
    return fit_classifier(model, examples_source("parity", parity_examples()), OPTIONS, cache_dir=cache, model_name="tiny", command="cmd"), cache


def test_the_certificate_is_learn_then_test_on_the_calibration_split(fitted):
    card = fitted[0].card
    cert = card.certificate
    assert cert["calibration_prompts"] == card.split_sizes["calibration"] == 80
    if cert["threshold"] is not None:  # the p-value of the changed answers it saw
        changed = round(cert["empirical_risk"] * 80)
        assert cert["p_value"] == pytest.approx(binomial_p_value(changed, 80, 0.05)) and cert["p_value"] <= 0.05
    assert card.answer_set == ["even", "odd"] and card.features[:2] == ["cand_gap", "cand_top_prob"]


def test_the_card_holds_replayed_test_figures_and_live_speed_at_each_batch_size(fitted):
    card, cache = fitted[0].card, fitted[1]
    test = card.test
    assert test["prompts"] == 40 and 0 <= test["layers_saved"] < 1
    # Agreement recomputed from the cached test traces: the exit layer's best candidate vs the last layer's.
    traces = load_collection(next(cache.rglob("held_out.jsonl"))).subset(slice(80, None))  # calibration first
    policy = fitted[0].policy
    exits = exit_layers(policy_decisions(policy, traces, policy.first_check_))
    agreement = np.mean(answers_at(exits, traces.cand_top1) == traces.cand_top1[:, -1])
    assert test["agreement_with_dense"] == pytest.approx(agreement, abs=1e-4)
    assert test["layers_saved"] == pytest.approx(1 - exits.mean() / traces.top1.shape[1], abs=1e-4)
    assert [figure["batch_size"] for figure in card.speed] == [1, 4]
    assert all(figure["prompts"] == 8 and figure["speedup"] > 0 for figure in card.speed)
    for figure in card.speed:  # three passes timed: dense forward, our walk at full depth, early exit
        assert figure["full_depth_seconds"] > 0
        assert figure["speedup_vs_full_depth"] == pytest.approx(
            figure["full_depth_seconds"] / figure["early_exit_seconds"], rel=0.05)  # of seconds rounded to 0.1 ms
    assert test["live_exit_layers_equal_replay"] == 1.0
    assert card.resplit_check["splits"] == 20 and card.resplit_check["prompts"] == 120


def test_saved_classifier_answers_raw_inputs_as_predict_batch_answers_its_prompts(fitted, model, tmp_path):
    directory = fitted[0].save(tmp_path / "classifier")
    policy, card = load_classifier(directory, model)
    texts = [e.input for e in parity_examples(12, seed=5)]
    answers = classify(model, policy, card, texts, batch_size=5)
    direct = predict_batch(model, [card.prompt(t) for t in texts], policy, card.answer_token_ids)
    assert [a.exit_layer for a in answers] == [r.exit_layer for r in direct]
    assert [a.label for a in answers] == [card.answer_set[card.answer_token_ids.index(r.answer_token_id)]
                                          for r in direct]
    assert json.loads((directory / "card.json").read_text())["demonstrations"] == card.demonstrations


def test_a_rerun_resumes_from_the_cached_traces(fitted, model):
    first, cache = fitted
    rows = sorted(cache.rglob("*.jsonl"))
    before = {path: path.read_bytes() for path in rows}
    again = fit_classifier(model, examples_source("parity", parity_examples()), OPTIONS, cache_dir=cache, model_name="tiny", command="cmd")
    assert {path: path.read_bytes() for path in rows} == before
    assert again.card.certificate == first.card.certificate and again.card.test["accuracy"] == first.card.test["accuracy"]
    assert [path.name for path in rows] == ["held_out.jsonl", "held_out.prompts.jsonl", "train.jsonl",
                                            "train.prompts.jsonl"]
    assert len(load_collection(next(path for path in rows if path.name == "held_out.jsonl"))) == 80 + 40


def test_other_split_sizes_reuse_the_cache_and_collect_only_what_it_lacks(fitted, model, tmp_path):
    """Fewer calibration prompts move where test starts: the test prompts are the cached held-out
    prompts after the new calibration count, found in the cache, not collected again nor refused."""
    _, cache = fitted
    source = examples_source("parity", parity_examples())
    copy = tmp_path / "cache"
    for path in cache.rglob("*"):
        if path.is_file():
            (copy / path.relative_to(cache)).parent.mkdir(parents=True, exist_ok=True)
            (copy / path.relative_to(cache)).write_bytes(path.read_bytes())
    held_out = next(copy.rglob("held_out.jsonl"))
    before = held_out.read_bytes()
    smaller = FitOptions(shots=2, sizes=SplitSizes(30, 60, 40), timing_prompts=0, resplits=0)
    refit = fit_classifier(model, source, smaller, cache_dir=copy)
    assert held_out.read_bytes() == before  # 60 + 40 of the 120 cached: nothing collected
    assert refit.card.split_sizes == {"train": 30, "calibration": 60, "test": 40}
    larger = FitOptions(shots=2, sizes=SplitSizes(40, 80, 60), timing_prompts=0, resplits=0)
    fit_classifier(model, source, larger, cache_dir=copy)
    grown = load_collection(held_out)
    assert len(grown) == 140 and held_out.read_bytes().startswith(before[:before.index(b"\n") + 1])


def test_too_few_calibration_prompts_for_epsilon_is_refused_before_any_trace(model, tmp_path):
    assert minimum_calibration_prompts(0.05, 0.05) == 59
    assert (1 - 0.05) ** 59 <= 0.05 < (1 - 0.05) ** 58
    options = FitOptions(shots=2, sizes=SplitSizes(40, 30, 40))
    with pytest.raises(FitError, match="at least 59 are needed"):
        fit_classifier(model, examples_source("parity", parity_examples()), options, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())
    for bad in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(FitError, match="in \\(0, 1\\)"):
            FitOptions(epsilon=bad)


@pytest.mark.parametrize("task, letters", [("mmlu", ["A", "B", "C", "D"]), ("commonsense_qa", ["A", "B", "C", "D", "E"])])
def test_multiple_choice_tasks_fit_with_their_letters_as_the_answer_set(model, tmp_path, task, letters):
    options = FitOptions(shots=1, epsilon=0.2, delta=0.2, sizes=SplitSizes(12, 16, 8), timing_prompts=0, resplits=5)
    fitted = fit_classifier(model, task_source(task), options, cache_dir=tmp_path)
    assert fitted.card.answer_set == letters
    assert fitted.card.test["prompts"] == 8 and np.isfinite(fitted.card.test["accuracy"])


def test_an_open_vocabulary_task_reads_the_full_lens_under_a_learned_schedule(model, tmp_path):
    from adainfer.data.tasks import Example
    examples = [Example(f"item {i} of {w}", f"{w}{i}") for i, w in enumerate(("alpha", "beta", "gamma", "delta") * 60)]
    options = FitOptions(shots=1, epsilon=0.2, delta=0.2, sizes=SplitSizes(30, 40, 20), timing_prompts=4,
                         batch_sizes=(2,), resplits=5)
    fitted = fit_classifier(model, examples_source("open", examples), options, cache_dir=tmp_path)
    card = fitted.card
    assert card.answer_set is None and card.features == ["gap", "top_prob", "agree_prev", "depth"]
    assert 1 <= card.first_check < model.num_layers and fitted.policy.first_check_ == card.first_check
    assert card.cost_profile["check_cost_in_layers"] > 0
    directory = fitted.save(tmp_path / "open-classifier")
    policy, loaded = load_classifier(directory, model)
    answer = classify(model, policy, loaded, ["item 999 of alpha"])[0]
    assert answer.label == model.decode_token(answer.answer_token_id).strip()
