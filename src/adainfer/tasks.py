"""Tasks: examples from the shared datasets, and the prompts the model answers.

A task is declared once in ``TASKS`` (which files hold its train and eval splits, and how a file
becomes ``Example`` rows); everything else is generic. Prompts follow Todd et al. (2024), which
AdaInfer uses for its metric: a zero-shot prompt is ``Q: {x}\\nA:``, a few-shot prompt puts
``Q: {x_k}\\nA: {y_k}\\n\\n`` before it for each demonstration. The model must produce the first
token of the gold answer right after ``A:``, so answers are single words such as ``positive``.

Demonstrations always come from the train split and are drawn by a seeded sampler that never
picks an item with the query's input, as lm-evaluation-harness's few-shot sampler never picks
the document under evaluation.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

DATA_ENV = "ADAINFER_DATA"


@dataclass(frozen=True)
class Example:
    """One task item: the text after ``Q:`` and the gold answer after ``A:``."""

    input: str
    output: str


@dataclass(frozen=True)
class LabelledPrompt:
    """A fully formatted prompt and the answer whose first token the model must produce.

    Serialised to JSONL as ``{"prompt": ..., "answer": ...}``.
    """

    prompt: str
    answer: str


class DataNotFoundError(FileNotFoundError):
    """A dataset file the task needs is not in the data directory."""


class PromptFileError(ValueError):
    """A prompt JSONL file has a line that is not a valid ``LabelledPrompt``."""


class TaskFileError(ValueError):
    """A user task JSONL file has a line that is not a valid ``Example``."""


def default_data_dir() -> Path:
    """``$ADAINFER_DATA``, else ``../shared/data`` relative to the current directory.

    Read at call time, so setting the variable after import still takes effect.
    """
    return Path(os.environ.get(DATA_ENV, "../shared/data"))


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's two splits live and how each file becomes examples.

    ``train_file`` feeds demonstrations and the stop classifier's training prompts;
    ``eval_file`` is kept for evaluation only. Paths are relative to the data directory.
    """

    name: str
    train_file: str
    eval_file: str
    read_train: Callable[[Path], list[Example]]
    read_eval: Callable[[Path], list[Example]]


def _examples(inputs: pd.Series, outputs: pd.Series) -> list[Example]:
    # Inputs are stripped: SST-2 rows end in a space and many AG News descriptions start with
    # one, which would otherwise put odd spacing around "Q:" and before the newline.
    return [Example(text.strip(), label) for text, label in zip(inputs, outputs, strict=True)]


SST2_ANSWERS = {"0": "negative", "1": "positive"}


def _read_sst2(path: Path) -> list[Example]:
    # GLUE's SST-2 TSV is unquoted; QUOTE_NONE keeps any quote character as text.
    frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
    return _examples(frame["text"], frame["label"].map(SST2_ANSWERS))


# The train TSV's label names; classes.txt says "Science/Tech" and Todd et al. use "Science",
# but train and eval must share answer words, and the train file is the one that names them.
AG_NEWS_ANSWERS = {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"}


def _read_ag_news_test(path: Path) -> list[Example]:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    inputs = frame["Title"] + " " + frame["Description"]
    return _examples(inputs, frame["Class Index"].map(AG_NEWS_ANSWERS))


def _read_ag_news_train(path: Path) -> list[Example]:
    # This ALPS sample has descriptions only (no title), unlike the test split, so train inputs
    # are shorter than eval inputs. Its fields use CSV quoting (doubled quotes), hence default
    # quoting here.
    frame = pd.read_csv(path, sep="\t", header=None, names=["description", "label"], dtype=str,
                        keep_default_na=False)
    return _examples(frame["description"], frame["label"])


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", "sst2/train.tsv", "sst2/dev.tsv", _read_sst2, _read_sst2),
    "ag_news": TaskSpec("ag_news", "ag_news/train_subset10k_alps.tsv", "ag_news/test.csv",
                        _read_ag_news_train, _read_ag_news_test),
}


def load_examples(task: str, split: Literal["train", "eval"],
                  data_dir: Path | None = None) -> list[Example]:
    """All examples of one split of a registered task, in file order.

    Raises ``ValueError`` for an unknown task or split and ``DataNotFoundError`` (a
    ``FileNotFoundError``) when the split's file is missing from the data directory.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(sorted(TASKS))}")
    if split not in ("train", "eval"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'eval'")
    spec = TASKS[task]
    relative, reader = ((spec.train_file, spec.read_train) if split == "train"
                        else (spec.eval_file, spec.read_eval))
    path = Path(data_dir if data_dir is not None else default_data_dir()) / relative
    if not path.is_file():
        raise DataNotFoundError(
            f"{task} {split} split needs {path}, which does not exist; the datasets must be in "
            f"../shared/data (relative to the current directory) or in the directory named by "
            f"${DATA_ENV}")
    return reader(path)


def _read_jsonl(path: Path, keys: tuple[str, ...], error: type[ValueError],
                what: str, optional: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """Records of a JSONL file, each an object with a non-empty string under every key.

    Keys in ``optional`` may be absent (read as ``""``) but must be strings when present.

    Blank lines are skipped; any other bad line raises ``error`` naming its 1-based number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    records = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path} line {number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise error(f"{path} line {number}: expected a JSON object with keys {keys}")
            for key in (*keys, *optional):
                value = record.get(key, "" if key in optional else None)
                if not isinstance(value, str) or not (value or key in optional):
                    raise error(f"{path} line {number}: {key!r} must be a non-empty string, "
                                f"got {value!r}")
            records.append({key: record.get(key, "") for key in (*keys, *optional)})
    return records


def load_jsonl_task(path: Path) -> list[Example]:
    """A user-supplied task: one ``{"input": ..., "output": ...}`` object per line.

    Raises ``TaskFileError`` (a ``ValueError``) naming the line number of a malformed line.
    """
    return [Example(record["input"], record["output"])
            for record in _read_jsonl(path, ("input", "output"), TaskFileError, "task")]


def format_prompt(query: str, demonstrations: Sequence[Example]) -> str:
    """``Q: {x_k}\\nA: {y_k}\\n\\n`` per demonstration, then ``Q: {query}\\nA:``.

    No space follows the final ``A:``: the answer's first token carries its own leading space.
    """
    shots = "".join(f"Q: {demo.input}\nA: {demo.output}\n\n" for demo in demonstrations)
    return f"{shots}Q: {query}\nA:"


def build_prompts(examples: Sequence[Example], demonstration_pool: Sequence[Example], shots: int,
                  limit: int | None, seed: int) -> list[LabelledPrompt]:
    """Few-shot prompts for a seeded random subset of ``examples``.

    ``limit`` examples are taken in an order fixed by ``seed`` (all of them when ``None`` or
    when ``limit`` exceeds their number). Each gets ``shots`` distinct demonstrations drawn
    from ``demonstration_pool`` by the same seeded generator, never one whose input equals the
    query's: that keeps the query out of its own demonstrations when queries and pool are the
    same split, and also drops duplicate rows (SST-2's train split repeats some sentences,
    a few with both labels).
    """
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(examples))
    if limit is not None:
        order = order[:limit]
    positions_by_input: dict[str, list[int]] = {}
    for index, demo in enumerate(demonstration_pool):
        positions_by_input.setdefault(demo.input, []).append(index)

    prompts = []
    for index in order:
        query = examples[index]
        demonstrations: list[Example] = []
        if shots:
            excluded = set(positions_by_input.get(query.input, ()))
            available = len(demonstration_pool) - len(excluded)
            if available < shots:
                raise ValueError(f"{shots} shots requested but the demonstration pool has only "
                                 f"{available} items other than the query {query.input!r}")
            # Drawing enough extra indices to cover every excluded one, then dropping them,
            # leaves a uniform sample of the eligible items without scanning the whole pool.
            drawn = rng.choice(len(demonstration_pool), size=shots + len(excluded), replace=False)
            demonstrations = [demonstration_pool[i] for i in drawn if i not in excluded][:shots]
        prompts.append(LabelledPrompt(format_prompt(query.input, demonstrations), query.output))
    return prompts


def write_prompts_jsonl(prompts: Sequence[LabelledPrompt], path: Path) -> None:
    """One ``{"prompt": ..., "answer": ...}`` object per line, UTF-8, parent folders created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for prompt in prompts:
            out.write(json.dumps(asdict(prompt), ensure_ascii=False) + "\n")


def read_prompts_jsonl(path: Path, require_answer: bool = True) -> list[LabelledPrompt]:
    """The prompts written by ``write_prompts_jsonl`` (or by hand, same format).

    Raises ``PromptFileError`` (a ``ValueError``) naming the line number of malformed JSON or
    of a missing or empty ``"prompt"`` (or ``"answer"`` when ``require_answer``), and
    ``FileNotFoundError`` for no file. Without ``require_answer`` a missing answer reads ``""``.
    """
    keys, optional = (("prompt", "answer"), ()) if require_answer else (("prompt",), ("answer",))
    return [LabelledPrompt(record["prompt"], record["answer"])
            for record in _read_jsonl(path, keys, PromptFileError, "prompt", optional)]
