"""Three disjoint splits of a labelled task, and the one fixed prompt format a fitted classifier uses.

A certificate holds for prompts drawn like the calibration prompts. A deployed classifier sees
raw inputs and must build its prompts itself, so `fit` fixes ONE set of demonstrations (drawn by
the seed, balanced over the labels of a closed set) and builds every train, calibration and test
prompt with it, exactly as `predict` later builds a user's: what was calibrated is what runs.

Splits, by the seed: `train` (the scorer's traces) from the task's train pool, `calibration`
(the threshold) and `test` (the figures) from its evaluation pool, cut by distinct input; no
input of one split, nor a demonstration's, appears in another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from adainfer.data.tasks import Example, LabelledPrompt, format_prompt
from adainfer.engine.parameters import ParameterError
from adainfer.fit.answer_set import AnswerSet

MIN_TRAIN = 4  # the scorer needs a few traces of each kind; fewer cannot fit an SVM
MIN_TEST = 2


class SplitError(ParameterError):
    """Too few examples for demonstrations and three disjoint splits."""


@dataclass(frozen=True)
class SplitSizes:
    """The most prompts each split takes (fewer when the task has fewer)."""

    train: int = 100
    calibration: int = 200
    test: int = 200

    def __post_init__(self) -> None:
        for name in ("train", "calibration", "test"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SplitError(f"must be a positive integer, got {value!r}", name)


@dataclass(frozen=True)
class FitSplits:
    """The fixed demonstrations and the three splits' examples."""

    demonstrations: tuple[Example, ...]
    train: list[Example]
    calibration: list[Example]
    test: list[Example]

    def prompts(self, split: str) -> list[LabelledPrompt]:
        """One split's prompts, each built with the fixed demonstrations."""
        return [LabelledPrompt(prompt_for(example.input, self.demonstrations), example.output)
                for example in getattr(self, split)]


def prompt_for(text: str, demonstrations: Sequence[Example]) -> str:
    """The prompt of one raw input: the demonstrations' ``Q: x\\nA: y\\n\\n`` blocks, then ``Q: {text}\\nA:``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"an input must be a non-empty string, got {text!r}")
    return format_prompt(text, demonstrations)


def choose_demonstrations(pool: Sequence[Example], shots: int, answers: AnswerSet | None,
                          rng: np.random.Generator) -> tuple[Example, ...]:
    """`shots` demonstrations from `pool` with distinct inputs; for a closed set, the labels take
    turns (in a seeded order) so that no label dominates the context, then the order is shuffled."""
    if shots < 0:
        raise SplitError(f"shots must be >= 0, got {shots}")
    unique = list({example.input: example for example in pool}.values())
    if len(unique) < shots:
        raise SplitError(f"{shots} shots asked, but the train pool has only {len(unique)} distinct inputs")
    order = [unique[i] for i in rng.permutation(len(unique))]
    if answers is None:
        chosen = order[:shots]
    else:
        by_label: dict[str, list[Example]] = {}
        for example in order:
            by_label.setdefault(example.output.strip(), []).append(example)
        labels = [label for label in np.asarray(answers.choices)[rng.permutation(len(answers.choices))]
                  if label in by_label]
        chosen = []
        while len(chosen) < shots:
            for label in labels:
                if by_label[label] and len(chosen) < shots:
                    chosen.append(by_label[label].pop(0))
    return tuple(chosen[i] for i in rng.permutation(len(chosen)))


def make_splits(train_pool: Sequence[Example], eval_pool: Sequence[Example], shots: int, sizes: SplitSizes,
                seed: int, answers: AnswerSet | None = None,
                demonstration_pool: Sequence[Example] | None = None) -> FitSplits:
    """Demonstrations (from `demonstration_pool`, default `train_pool`), then train from
    `train_pool` and calibration + test from `eval_pool`, all by `seed`.

    When the evaluation pool holds fewer inputs than calibration + test ask for, it is cut in the
    same proportion. Raises `SplitError` when a split would be too small to mean anything.
    """
    rng = np.random.default_rng(seed)
    demos = choose_demonstrations(demonstration_pool if demonstration_pool is not None else train_pool, shots,
                                  answers, rng)
    taken = {demo.input for demo in demos}
    train_unique = [e for e in {e.input: e for e in train_pool}.values() if e.input not in taken]
    train = [train_unique[i] for i in rng.permutation(len(train_unique))[: sizes.train]]
    taken |= {example.input for example in train_pool}
    eval_unique = [e for e in {e.input: e for e in eval_pool}.values() if e.input not in taken]
    order = [eval_unique[i] for i in rng.permutation(len(eval_unique))]
    wanted = sizes.calibration + sizes.test
    calibration_count = (sizes.calibration if len(order) >= wanted
                         else round(len(order) * sizes.calibration / wanted))
    calibration = order[:calibration_count]
    test = order[calibration_count: calibration_count + sizes.test]
    if len(train) < MIN_TRAIN or len(test) < MIN_TEST or not calibration:
        raise SplitError(f"too few examples for three splits: after {len(demos)} demonstrations there are "
                         f"{len(train)} train, {len(calibration)} calibration and {len(test)} test examples "
                         f"(need at least {MIN_TRAIN} train, 1 calibration and {MIN_TEST} test); add examples or "
                         f"fewer shots")
    return FitSplits(demos, train, calibration, test)
