"""`EarlyExitClassifier`: the scikit-learn face of `fit`, and its saved directory."""

import json

import pytest

from adainfer.engine.model import EarlyExitModel
from adainfer.fit.card import CardError
from adainfer.fit.classifier import EarlyExitClassifier
from adainfer.policies.base import PolicyFileError, PolicyMismatchError
from adainfer.testing.tiny_models import tiny_spaced_exit_model
from fit_data import parity_examples


@pytest.fixture(scope="module")
def fitted(tiny_spaced_dir, tmp_path_factory):
    examples = parity_examples(300)
    model = EarlyExitModel.from_pretrained(str(tiny_spaced_dir))
    classifier = EarlyExitClassifier(model, shots=2, epsilon=0.1, delta=0.1, train_size=40, calibration_size=60,
                                     test_size=30, batch_size=8, cache_dir=tmp_path_factory.mktemp("traces"))
    return classifier.fit([e.input for e in examples], [e.output for e in examples])


def test_fit_learns_state_in_underscored_attributes_and_keeps_its_arguments(fitted):
    assert fitted.shots == 2 and fitted.epsilon == 0.1
    assert fitted.card_.answer_set == ["even", "odd"] and fitted.card_.epsilon == 0.1
    assert fitted.card_.speed == []  # no timing unless asked


def test_measure_speed_times_as_many_test_prompts_as_asked(tiny_spaced_dir, tmp_path):
    examples = parity_examples(300)
    classifier = EarlyExitClassifier(EarlyExitModel.from_pretrained(str(tiny_spaced_dir)), shots=2, epsilon=0.1,
                                     delta=0.1, train_size=40, calibration_size=60, test_size=30, measure_speed=True,
                                     timing_prompts=6, cache_dir=tmp_path)
    classifier.fit([e.input for e in examples], [e.output for e in examples])
    assert [(figure["batch_size"], figure["prompts"]) for figure in classifier.card_.speed] == [(1, 6), (16, 6)]
    with pytest.raises(TypeError):
        EarlyExitClassifier(None, 2)  # beyond the model, arguments are keyword-only (scikit-learn's habit)


def test_predict_gives_labels_of_the_answer_set_and_score_is_their_accuracy(fitted):
    examples = parity_examples(20, seed=7)
    texts, labels = [e.input for e in examples], [e.output for e in examples]
    predicted = fitted.predict(texts)
    assert set(predicted) <= {"even", "odd"} and len(predicted) == 20
    assert fitted.score(texts, labels) == pytest.approx(sum(p == y for p, y in zip(predicted, labels)) / 20)
    details = fitted.predict_details(texts[:3])
    assert all(1 <= d.exit_layer <= d.num_layers and d.layers_saved == 1 - d.exit_layer / d.num_layers for d in details)


def test_save_and_load_round_trip_and_refuse_another_model_or_an_edited_card(fitted, tmp_path, tiny_spaced_dir):
    directory = fitted.save(tmp_path / "clf")
    texts = [e.input for e in parity_examples(10, seed=3)]
    loaded = EarlyExitClassifier.load(directory, EarlyExitModel.from_pretrained(str(tiny_spaced_dir)))
    assert loaded.predict(texts) == fitted.predict(texts) and loaded.epsilon == 0.1
    with pytest.raises(PolicyMismatchError):
        EarlyExitClassifier.load(directory, tiny_spaced_exit_model("llama", seed=1))
    card = json.loads((directory / "card.json").read_text())
    card["demonstrations"][0]["output"] = "odd" if card["demonstrations"][0]["output"] == "even" else "even"
    (directory / "card.json").write_text(json.dumps(card))
    with pytest.raises(PolicyFileError, match="card.json is corrupted"):
        EarlyExitClassifier.load(directory, fitted.model)


def test_unfitted_or_mismatched_input_is_refused(fitted):
    with pytest.raises(ValueError, match="not fitted"):
        EarlyExitClassifier(fitted.model).predict(["x"])
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        EarlyExitClassifier(fitted.model).fit(["a", "b"], ["even"])
    with pytest.raises(ValueError, match="non-empty string"):
        fitted.predict(["fine", "  "])
    assert CardError.__mro__[1] is ValueError
