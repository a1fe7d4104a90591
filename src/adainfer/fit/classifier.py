"""A fitted early-exit classifier with a scikit-learn face, and the one function that answers raw inputs.

`EarlyExitClassifier(model=..., shots=5, epsilon=0.05, delta=0.05).fit(texts, labels)` runs
`fit_classifier` on labelled texts; `predict(texts)` builds each prompt as the card says (the
fixed demonstrations it was calibrated with, whose keys and values the model computes once:
`fit.cached_prefix`) and answers in batches with `predict_batch`, each row leaving at its own
exit layer. `save`/`load` use the policy directory (`config.json`, the
scorer, and the card), refusing one made for another model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adainfer.data.tasks import Example
from adainfer.engine.loading import cache_root
from adainfer.engine.model import EarlyExitModel
from adainfer.fit.cached_prefix import use_demonstrations
from adainfer.fit.calibration_arrays import read_calibration, read_calibration_bytes
from adainfer.fit.card import CardError, ClassifierCard, read_card
from adainfer.fit.card_checks import check_card
from adainfer.fit.pipeline import FitOptions, FittedClassifier, examples_source, fit_classifier
from adainfer.fit.splits import SplitSizes
from adainfer.inference.answering import answer_batches
from adainfer.policies.base import StopPolicy
from adainfer.policies.io import load_policy


@dataclass
class Classification:
    """One raw input's answer: its label, where it exited and what that saved."""

    input: str
    label: str
    answer_token_id: int
    exit_layer: int
    num_layers: int
    accepted: bool  # False when the policy never accepted and the last layer answered
    layers_saved: float
    honest_flops_ratio: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def classify(model: EarlyExitModel, policy: StopPolicy, card: ClassifierCard, texts: Sequence[str],
             batch_size: int = 16, on_batch: Callable[[int], None] | None = None) -> list[Classification]:
    """Answer raw `texts` with early exit, `batch_size` at a time; `on_batch(rows)` after each batch."""
    prompts = [card.prompt(text) for text in texts]  # every input checked before any model work
    use_demonstrations(model, card.demonstrations)  # computed once per model; prompts run their own tokens
    answers: list[Classification] = []
    for batch in answer_batches(model, prompts, policy, card.answer_token_ids, batch_size=batch_size):
        for answer in batch:
            result = answer.result
            answers.append(Classification(
                input=texts[len(answers)], label=card.answer_label(result.answer_token_id, result.answer_text),
                answer_token_id=result.answer_token_id, exit_layer=result.exit_layer, num_layers=result.num_layers,
                accepted=result.accepted, layers_saved=1 - result.exit_layer / result.num_layers,
                honest_flops_ratio=result.honest_flops_ratio))
        if on_batch is not None:
            on_batch(len(batch))
    return answers


def load_classifier(directory: str | Path, model: EarlyExitModel) -> tuple[StopPolicy, ClassifierCard]:
    """The policy and card of a directory written by `adainfer fit`, checked against `model`."""
    policy = load_policy(directory, expected_identity=model.identity())  # also checks the card's hash
    card = read_card(Path(directory))
    if card.model_identity != json.loads(json.dumps(model.identity())):
        raise CardError(f"{directory}: the card describes another model than its policy")
    if tuple(card.answer_token_ids or ()) != tuple(getattr(policy, "candidate_ids_", ())):
        raise CardError(f"{directory}: the card's answer set is not the one its policy was saved with")
    arrays = read_calibration(Path(directory))
    check_card(card, policy, model, directory=Path(directory),
               recorded_prompt_sha256=arrays.prompt_sha256 if arrays else None)
    return policy, card


class EarlyExitClassifier:
    """Early exit as a classifier: fit on labelled texts, predict labels, certified at (epsilon, delta).

    `model` is an `EarlyExitModel`, or what `EarlyExitModel.from_pretrained` takes (None: the
    embedded default), loaded on first use. Constructor arguments are stored unchanged; what
    `fit` learns ends in `_` (`policy_`, `card_`). With `measure_speed`, `fit` times
    `timing_prompts` test prompts live against the model's forward (the card's speedups).
    """

    def __init__(self, model: EarlyExitModel | str | None = None, *, shots: int = 5, epsilon: float = 0.05,
                 delta: float = 0.05, choices: Sequence[str] | None = None, seed: int = 0, train_size: int = 100,
                 calibration_size: int = 200, test_size: int = 200, measure_speed: bool = False,
                 timing_prompts: int = 64, batch_size: int = 16, cache_dir: str | Path | None = None) -> None:
        self.model = model
        self.shots = shots
        self.epsilon = epsilon
        self.delta = delta
        self.choices = choices
        self.seed = seed
        self.train_size = train_size
        self.calibration_size = calibration_size
        self.test_size = test_size
        self.measure_speed = measure_speed
        self.timing_prompts = timing_prompts
        self.batch_size = batch_size
        self.cache_dir = cache_dir

    def _model(self) -> EarlyExitModel:
        if not isinstance(self.model, EarlyExitModel):
            self.model = EarlyExitModel.from_pretrained(self.model)
        return self.model

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> EarlyExitClassifier:
        """Split, collect traces, fit the scorer and certify its threshold (`fit_classifier`)."""
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        bad = [i for i, value in enumerate([*texts, *labels]) if not isinstance(value, str) or not value.strip()]
        if bad:
            raise ValueError(f"texts and labels must be non-empty strings; item {bad[0] % len(texts)} is not")
        options = FitOptions(shots=self.shots, epsilon=self.epsilon, delta=self.delta,
                             sizes=SplitSizes(self.train_size, self.calibration_size, self.test_size), seed=self.seed,
                             choices=tuple(self.choices) if self.choices else None,
                             timing_prompts=self.timing_prompts if self.measure_speed else 0)
        fitted = fit_classifier(self._model(), examples_source("classifier", [Example(t, y) for t, y in
                                                                             zip(texts, labels)]),
                                options, cache_dir=Path(self.cache_dir) if self.cache_dir else cache_root() / "traces")
        self.policy_, self.card_, self.calibration_ = fitted.policy, fitted.card, fitted.calibration
        return self

    def predict_details(self, texts: Sequence[str]) -> list[Classification]:
        """Per text: label, exit layer, whether the policy accepted, layers saved, FLOPs ratio."""
        self._check_fitted()
        return classify(self._model(), self.policy_, self.card_, list(texts), self.batch_size)

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The label of each text (for an open-vocabulary task, the first answer token's text)."""
        return [answer.label for answer in self.predict_details(texts)]

    def score(self, texts: Sequence[str], labels: Sequence[str]) -> float:
        """Accuracy of `predict` against `labels`."""
        predicted = self.predict(texts)
        return sum(p == y.strip() for p, y in zip(predicted, labels)) / max(len(labels), 1)

    def save(self, directory: str | Path) -> Path:
        """The policy directory with its card, written atomically."""
        self._check_fitted()
        return FittedClassifier(self.policy_, self.card_, getattr(self, "calibration_", None)).save(Path(directory))

    @classmethod
    def load(cls, directory: str | Path, model: EarlyExitModel | str | None = None) -> EarlyExitClassifier:
        """A classifier saved by `save` or `adainfer fit`; refused for another model."""
        classifier = cls(model)
        classifier.policy_, classifier.card_ = load_classifier(directory, classifier._model())
        classifier.calibration_ = read_calibration_bytes(Path(directory))
        classifier.shots, classifier.epsilon, classifier.delta = (classifier.card_.shots, classifier.card_.epsilon,
                                                                  classifier.card_.delta)
        return classifier

    def _check_fitted(self) -> None:
        if not hasattr(self, "policy_"):
            raise ValueError("this classifier is not fitted: call fit(texts, labels) or load(directory) first")
