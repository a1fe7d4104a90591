"""A task's closed answer set: detected from its labelled outputs, or given, and checked.

Early exit pays most when a check reads only the few head rows of the possible answers (|C|·h
instead of V·h per check). That needs a closed answer set whose first tokens differ: the model
answers with one token, and two labels starting with the same token could not be told apart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from adainfer.data.tasks import Example
from adainfer.engine.model import EarlyExitModel

MAX_CHOICES = 32


class AnswerSetError(ValueError):
    """Outputs that cannot make a task: a single distinct one, or labels whose first tokens collide."""


@dataclass(frozen=True)
class AnswerSet:
    """The labels of a closed task, in a fixed order, and the first token of each (same order)."""

    choices: tuple[str, ...]
    token_ids: tuple[int, ...]

    def label_of(self, token_id: int) -> str:
        """The label whose first token is `token_id` (an answer read from the candidate rows)."""
        return self.choices[self.token_ids.index(token_id)]


def looks_closed(outputs: Sequence[str], max_choices: int = MAX_CHOICES) -> bool:
    """Whether outputs come from a closed set: at most `max_choices` distinct values, each seen
    about twice or more on average (a small open task also has few distinct outputs, but they
    do not repeat)."""
    distinct = len(set(outputs))
    return 2 <= distinct <= max_choices and distinct * 2 <= len(outputs)


def check_outputs(examples: Sequence[Example]) -> None:
    """Refuse a task whose outputs take a single value: there is nothing to classify."""
    distinct = {example.output.strip() for example in examples}
    if len(distinct) < 2:
        raise AnswerSetError(f"every example has the output {next(iter(distinct), '')!r}: a task needs at least "
                             f"two distinct outputs")


def answer_set(model: EarlyExitModel, choices: Sequence[str]) -> AnswerSet:
    """The first token of each choice as it follows ``A:``; colliding first tokens are an error."""
    labels = tuple(dict.fromkeys(choice.strip() for choice in choices if choice.strip()))
    if len(labels) < 2:
        raise AnswerSetError(f"an answer set needs at least two distinct labels, got {list(choices)!r}")
    if len(labels) > MAX_CHOICES:
        raise AnswerSetError(f"{len(labels)} labels is more than {MAX_CHOICES}; fit it as an open-vocabulary task")
    token_ids = [model.answer_token("A:", label) for label in labels]
    by_token: dict[int, list[str]] = {}
    for label, token in zip(labels, token_ids):
        by_token.setdefault(token, []).append(label)
    collisions = {token: names for token, names in by_token.items() if len(names) > 1}
    if collisions:
        shown = "; ".join(" and ".join(repr(name) for name in names) + f" both start with token "
                          f"{model.decode_token(token)!r}" for token, names in collisions.items())
        raise AnswerSetError(f"labels whose first tokens collide cannot be told apart by a one-token answer: {shown}; "
                             f"rename them, or pass --choices with labels that start differently")
    return AnswerSet(labels, tuple(token_ids))


def detect_answer_set(model: EarlyExitModel, examples: Sequence[Example],
                      choices: Sequence[str] | None = None) -> AnswerSet | None:
    """The task's answer set: `choices` when given (every output must be one of them), else the
    distinct outputs when they look closed (`looks_closed`), else None (open vocabulary)."""
    check_outputs(examples)
    outputs = [example.output.strip() for example in examples]
    if choices:
        found = answer_set(model, choices)
        stray = sorted(set(outputs) - set(found.choices))
        if stray:
            raise AnswerSetError(f"{len(stray)} outputs are not in --choices, e.g. {stray[:3]!r}")
        return found
    if not looks_closed(outputs):
        return None
    ordered = [label for label, _ in sorted(Counter(outputs).items())]
    return answer_set(model, ordered)
