"""A card cannot contradict its classifier: hand edits with every part's hash recomputed are refused
at load (the hashes only catch torn saves), and `adainfer verify` recomputes the certificate."""

import io
import json
import shutil
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from cli_runner import assert_clean_error, invoke
from fit_data import parity_examples

from adainfer.engine.model import EarlyExitModel
from adainfer.fit.calibration_arrays import CALIBRATION_NPZ, CalibrationArrays, read_calibration
from adainfer.fit.card import CardError, ClassifierCard
from adainfer.fit.card_checks import FIELD_TYPES, prompt_sha256
from adainfer.fit.classifier import EarlyExitClassifier, load_classifier
from adainfer.fit.pipeline import FitOptions, examples_source, fit_classifier
from adainfer.fit.splits import SplitSizes
from adainfer.policies.base import file_sha256

REPO = Path(__file__).parent.parent.parent


@pytest.fixture(scope="module")
def model(tiny_spaced_dir):
    return EarlyExitModel.from_pretrained(str(tiny_spaced_dir))


def rehash(directory: Path) -> None:
    """Recompute config.json's hashes of every part, as a careful forger would."""
    config = json.loads((directory / "config.json").read_text())
    config["parts"] = {name: file_sha256(directory / name) for name in config["parts"]}
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def tampered(classifier_dir: Path, tmp_path: Path, edit) -> Path:
    """A copy of the classifier whose card.json is edited by `edit(card_dict)`, hashes recomputed."""
    copy = tmp_path / "edited"
    shutil.copytree(classifier_dir, copy)
    card = json.loads((copy / "card.json").read_text())
    edit(card)
    (copy / "card.json").write_text(json.dumps(card))
    rehash(copy)
    return copy


def set_field(name, value):
    return lambda card: card.__setitem__(name, value)


def swap_labels(card):
    card["answer_set"] = card["answer_set"][::-1]


def change_demonstration(card, rehash_card=False):
    card["demonstrations"][0]["output"] = "odd" if card["demonstrations"][0]["output"] == "even" else "even"
    if rehash_card:
        card["prompt_sha256"] = prompt_sha256(card["prompt_format"], card["demonstrations"])


def certificate_field(name, value):
    return lambda card: card["certificate"].__setitem__(name, value)


CONTRADICTIONS = {
    "labels swapped": (swap_labels, "label"),
    "epsilon not the certificate's": (lambda c: c.__setitem__("epsilon", c["epsilon"] / 2), "epsilon"),
    "delta not the certificate's": (lambda c: c.__setitem__("delta", c["delta"] / 2), "delta"),
    "epsilon and certificate edited together": (lambda c: (c.__setitem__("epsilon", 0.3),
                                                          c["certificate"].__setitem__("epsilon", 0.3)), "epsilon"),
    "threshold edited": (certificate_field("threshold", -5.0), "threshold"),
    "first check edited": (lambda c: c.__setitem__("first_check", c["first_check"] + 1), "first check"),
    "demonstration changed": (change_demonstration, "calibrated with"),
    "demonstration and card hash changed": (lambda c: change_demonstration(c, True), "calibrated with"),
    "prompt format changed": (set_field("prompt_format", "Question: {input}"), "calibrated with"),
    "prompt hash blanked, demonstration changed": (lambda c: (change_demonstration(c), c.__setitem__(
        "prompt_sha256", "")), "calibrated with"),
}
WRONG_TYPES = {"epsilon": "0.05", "delta": "0.05", "epsilon ": True, "seed": "0", "seed ": 0.5, "first_check": "1",
               "first_check ": 1.0, "task": 5, "model": None, "command": ["x"], "test": [], "speed": {},
               "resplit_check": [], "cost_profile": "none", "certificate": [], "split_sizes": [], "prompt_format": 3,
               "prompt_sha256": 7, "features": "gap", "answer_token_ids": "3,4", "shots": "2",
               "model_identity": "tiny", "demonstrations": "none", "answer_set": "even,odd", "scorer": "svm",
               "calibration_needed": 153}


def test_every_card_field_has_a_checked_type():
    assert {item.name for item in fields(ClassifierCard)} == set(FIELD_TYPES)


@pytest.mark.parametrize("case", sorted(CONTRADICTIONS))
def test_a_card_that_contradicts_its_classifier_is_refused_at_load(classifier_dir, tmp_path, model, case):
    edit, named = CONTRADICTIONS[case]
    with pytest.raises(CardError, match=named):
        load_classifier(tampered(classifier_dir, tmp_path, edit), model)


@pytest.mark.parametrize("name", sorted(WRONG_TYPES))
def test_a_card_field_of_the_wrong_type_is_refused_at_load(classifier_dir, tmp_path, model, name):
    with pytest.raises(CardError, match="answer" if name == "answer_token_ids" else name.strip()):
        load_classifier(tampered(classifier_dir, tmp_path, set_field(name.strip(), WRONG_TYPES[name])), model)


@pytest.mark.parametrize("verb", ["predict", "serve"])
def test_the_cli_refuses_a_contradicting_card_in_one_line(classifier_dir, tmp_path, tiny_spaced_dir, verb):
    edited = tampered(classifier_dir, tmp_path, swap_labels)
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"input": "red cat 3"}\n')
    args = ["predict", inputs] if verb == "predict" else ["serve", "--port", "0"]
    assert_clean_error(invoke(*args, "-p", edited, "--model", tiny_spaced_dir), "label")


def test_the_untouched_classifier_loads_and_its_certificate_verifies(classifier_dir, model):
    load_classifier(classifier_dir, model)
    result = invoke("verify", classifier_dir)
    assert result.exit_code == 0, result.output
    assert "certificate holds" in result.output and "p-value" in result.output


def test_a_classifier_scored_by_boosted_trees_verifies_too(tiny_spaced_dir, tmp_path):
    model = EarlyExitModel.from_pretrained(str(tiny_spaced_dir))
    options = FitOptions(shots=2, sizes=SplitSizes(40, 80, 40), timing_prompts=0, resplits=0,
                         scorers=("gbt-stability",))
    fitted = fit_classifier(model, examples_source("parity", parity_examples()), options, cache_dir=tmp_path / "cache")
    directory = fitted.save(tmp_path / "trees")
    assert json.loads((directory / "config.json").read_text())["kind"] == "calibrated-gbt"
    load_classifier(directory, model)
    result = invoke("verify", directory)
    assert result.exit_code == 0 and "certificate holds" in result.output, result.output


def edit_arrays(classifier_dir: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "arrays-edited"
    shutil.copytree(classifier_dir, copy)
    with np.load(copy / "calibration.npz", allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    edit(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    (copy / "calibration.npz").write_bytes(buffer.getvalue())
    rehash(copy)
    return copy


def every_layer_changes(arrays):
    """Each layer's answer differs from the last layer's: any early exit changes the answer."""
    reference = arrays["reference"]
    reference[:, :-1] = reference[:, -1:] + 1


def scores_raised(arrays):
    arrays["scores"] = arrays["scores"] + 10.0


@pytest.mark.parametrize("edit, problem", [(every_layer_changes, "threshold"), (scores_raised, "margins")])
def test_verify_says_a_certificate_does_not_hold_when_its_sample_does_not_support_it(classifier_dir, tmp_path,
                                                                                      edit, problem):
    result = invoke("verify", edit_arrays(classifier_dir, tmp_path, edit))
    assert result.exit_code == 1, result.output
    assert "does NOT hold" in result.output and problem in result.output


def test_verify_flags_a_certificate_record_the_sample_does_not_give(classifier_dir, tmp_path):
    edited = tampered(classifier_dir, tmp_path, certificate_field("p_value", 1e-9))
    result = invoke("verify", edited)
    assert result.exit_code == 1 and "p_value" in result.output


def test_arrays_of_another_shape_are_refused(classifier_dir, tmp_path):
    edited = edit_arrays(classifier_dir, tmp_path, lambda a: a.__setitem__("reference", a["reference"][:, :2]))
    assert_clean_error(invoke("verify", edited), "calibration.npz")


def older_fit(classifier_dir: Path, tmp_path: Path) -> Path:
    """The classifier as fitted before calibration arrays and the prompt hash were stored."""
    copy = tmp_path / "older"
    shutil.copytree(classifier_dir, copy)
    (copy / "calibration.npz").unlink()
    card = json.loads((copy / "card.json").read_text())
    del card["prompt_sha256"]
    (copy / "card.json").write_text(json.dumps(card))
    config = json.loads((copy / "config.json").read_text())
    del config["parts"]["calibration.npz"]
    (copy / "config.json").write_text(json.dumps(config))
    rehash(copy)
    return copy


def test_a_classifier_fitted_before_still_loads_but_cannot_be_verified(classifier_dir, tmp_path, model):
    older = older_fit(classifier_dir, tmp_path)
    policy, card = load_classifier(older, model)
    assert card.prompt_sha256 == "" and card.answer_set == ["even", "odd"]
    assert_clean_error(invoke("verify", older), "cannot verify", "calibration.npz")


@pytest.mark.parametrize("fit", sorted(path.parent.name for path in (REPO / "results" / "fit").glob("*/card.json")))
def test_each_committed_fit_verifies_or_says_it_predates_its_arrays(fit):
    """No model is loaded: verify recomputes Learn then Test from the stored calibration sample."""
    directory = REPO / "results" / "fit" / fit
    if (directory / CALIBRATION_NPZ).is_file():
        result = invoke("verify", directory)
        assert result.exit_code == 0 and "certificate holds" in result.output, result.output
    else:
        assert_clean_error(invoke("verify", directory), "cannot verify")


def test_save_after_load_keeps_the_arrays(classifier_dir, tmp_path, model):
    saved = EarlyExitClassifier.load(classifier_dir, model).save(tmp_path / "again")
    assert (saved / "calibration.npz").read_bytes() == (classifier_dir / "calibration.npz").read_bytes()
    assert invoke("verify", saved).exit_code == 0


def test_calibration_scores_are_minus_infinity_before_the_first_check_and_still_load(tmp_path):
    """A scorer asked from layer f > 1 scores the layers before f -inf (never asked): the stored
    sample keeps them so, and loads; NaN or +inf is refused."""
    scores = np.full((3, 5), -np.inf)
    scores[:, 2:] = np.arange(9, dtype=np.float64).reshape(3, 3)
    arrays = CalibrationArrays(np.zeros((3, 5, 2)), scores, np.zeros((3, 5), dtype=np.int64), "abc")
    (tmp_path / CALIBRATION_NPZ).write_bytes(arrays.to_bytes())
    np.testing.assert_array_equal(read_calibration(tmp_path).scores, scores)
    for bad in (np.nan, np.inf):
        scores[0, 3] = bad
        (tmp_path / CALIBRATION_NPZ).write_bytes(CalibrationArrays(arrays.features, scores, arrays.reference,
                                                                   "abc").to_bytes())
        with pytest.raises(CardError, match="wrong type or shape"):
            read_calibration(tmp_path)
