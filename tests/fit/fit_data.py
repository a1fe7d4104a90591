"""Labelled toy tasks for the fit tests: inputs of words, labels from a closed or an open set."""

from __future__ import annotations

import json
import random
from pathlib import Path

from adainfer.data.tasks import Example

WORDS = "red blue green cat dog fish sun moon star tree".split()


def parity_examples(count: int = 400, seed: int = 0, labels: tuple[str, str] = ("even", "odd")) -> list[Example]:
    """Inputs of 1-4 words (each distinct), labelled by the parity of their word count."""
    rng = random.Random(seed)
    examples = []
    for index in range(count):
        words = rng.randint(1, 4)
        examples.append(Example(" ".join(rng.choice(WORDS) for _ in range(words)) + f" {index}",
                                labels[words % 2]))
    return examples


def write_task(path: Path, examples: list[Example]) -> Path:
    path.write_text("".join(json.dumps({"input": e.input, "output": e.output}) + "\n" for e in examples))
    return path
