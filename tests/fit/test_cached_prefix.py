"""A fit and its classifier run on the cached demonstrations: traces, cost, timing and answers."""

import pytest

from adainfer.data.tasks import Example, demonstrations_text
from adainfer.engine.model import EarlyExitModel
from adainfer.fit.card import summary_lines
from adainfer.fit.classifier import classify, load_classifier
from adainfer.fit.pipeline import FitOptions, examples_source, fit_classifier
from adainfer.fit.splits import SplitSizes
from adainfer.inference.predict import predict_batch
from fit_data import parity_examples

OPTIONS = FitOptions(shots=2, sizes=SplitSizes(40, 80, 40), timing_prompts=8, batch_sizes=(1, 4), resplits=0)


@pytest.fixture(scope="module")
def model(tiny_spaced_dir):
    return EarlyExitModel.from_pretrained(str(tiny_spaced_dir))


@pytest.fixture(scope="module")
def fitted(model, tmp_path_factory):
    return fit_classifier(model, examples_source("parity", parity_examples()), OPTIONS,
                          cache_dir=tmp_path_factory.mktemp("fit-cache"), model_name="tiny", command="cmd")


def test_the_fit_caches_its_demonstrations_and_times_four_passes_over_them(fitted, model):
    card = fitted.card
    text = demonstrations_text([Example(d["input"], d["output"]) for d in card.demonstrations])
    assert model.prefix is not None and model.prefix.text == text
    assert card.cost_profile["cached_tokens"] == len(model.prefix) > 0
    assert card.cost_profile["cache_bytes"] == model.prefix.nbytes > 0
    for figure in card.speed:
        assert figure["prefix_tokens"] == len(model.prefix) and figure["prefix_fallbacks"] == 0
        assert figure["cached_dense_seconds"] > 0
        assert figure["speedup_vs_cached_dense"] == pytest.approx(
            figure["cached_dense_seconds"] / figure["early_exit_seconds"], rel=0.05)
    assert card.test["live_exit_layers_equal_replay"] == 1.0  # traces on the prefix = what runs on it
    assert any("over the cached prefix" in line for line in summary_lines(card))


def test_a_classifier_answers_on_its_cached_demonstrations_as_on_its_full_prompts(fitted, model, tmp_path):
    policy, card = load_classifier(fitted.save(tmp_path / "classifier"), model)
    model.use_prefix(None)
    texts = [e.input for e in parity_examples(12, seed=5)]
    answers = classify(model, policy, card, texts, batch_size=5)
    assert model.prefix is not None  # classify cached the card's demonstrations
    full = predict_batch(model, [card.prompt(t) for t in texts], policy, card.answer_token_ids, use_prefix=False)
    assert [a.exit_layer for a in answers] == [r.exit_layer for r in full]
    assert [a.answer_token_id for a in answers] == [r.answer_token_id for r in full]


def test_a_card_timed_before_the_cached_prefix_still_summarises(fitted):
    card = fitted.card
    old = [{key: value for key, value in figure.items()
            if key not in ("cached_dense_seconds", "speedup_vs_cached_dense", "prefix_tokens", "prefix_bytes",
                           "prefix_fallbacks", "peer_seconds")} for figure in card.speed]
    card.speed, saved = old, card.speed
    try:
        lines = summary_lines(card)
    finally:
        card.speed = saved
    assert not any("cached prefix" in line for line in lines) and any("batch 4" in line for line in lines)
