"""A task's splits, loaded by name or from a user's JSONL file: what evaluation and `fit` both read.

Loading a task is not evaluation, so it lives with the data: `adainfer.eval` builds its grid on
it and `adainfer.fit` reads its examples without importing `eval`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adainfer.data.tasks import TASKS, Example, load_examples, load_jsonl_task, split_examples

CLASSIFIER_SPLIT_SEED = 20240304  # fixed: which eval rows may train classifiers never changes


class TaskError(ValueError):
    """A task that cannot be loaded: an unknown name, or a user file too small to split."""


@dataclass(frozen=True)
class TaskData:
    """A task's splits and closed answer set; built-in or read from a user's JSONL file.

    `train` gives demonstrations, `classifier` the queries of classifier-training prompts (the
    train split unless the task says otherwise), `eval` the evaluated queries; no eval query's
    input appears in `train` or `classifier`.
    """

    name: str
    group: str
    train: list[Example]
    eval: list[Example]
    choices: tuple[str, ...] | None
    classifier: list[Example] | None = None

    @property
    def classifier_queries(self) -> list[Example]:
        return self.train if self.classifier is None else self.classifier


def _without(examples: list[Example], *others: list[Example]) -> list[Example]:
    seen = {example.input for group in others for example in group}
    return [example for example in examples if example.input not in seen]


def load_task(task: str, data_dir: Path | None = None) -> TaskData:
    """A registered task by name, or a user task from a `.jsonl` file of {input, output}.

    A user file is split in two halves by a fixed seed (`tasks.split_examples`): the first half
    gives demonstrations and classifier-training prompts, the second is evaluated.
    """
    if task.endswith(".jsonl"):
        path = Path(task)
        train, evaluation = split_examples(load_jsonl_task(path))
        if not train or not evaluation:
            raise TaskError(f"{path} needs at least two examples to split into train and eval")
        return TaskData(path.stem, "user", train, evaluation, None)
    if task not in TASKS:
        raise TaskError(f"unknown task {task!r}; known: {', '.join(TASKS)}, or a path to a .jsonl file")
    spec = TASKS[task]
    train = load_examples(task, "train", data_dir)
    evaluation = _without(load_examples(task, "eval", data_dir), train)
    if not spec.classifier_queries_from_eval:
        return TaskData(task, spec.group, train, evaluation, spec.choices)
    # A fixed half of the eval split's distinct inputs, whatever the limits, so caches stay
    # valid as limits grow; by input, because MMLU repeats some questions.
    inputs = list(dict.fromkeys(example.input for example in evaluation))
    order = np.random.default_rng(CLASSIFIER_SPLIT_SEED).permutation(len(inputs))
    classifier_inputs = {inputs[i] for i in order[len(inputs) // 2:]}
    return TaskData(task, spec.group, train, [e for e in evaluation if e.input not in classifier_inputs],
                    spec.choices, classifier=[e for e in evaluation if e.input in classifier_inputs])
