"""Tasks: examples from the shared datasets, and the prompts the model answers.

A task is declared once in ``TASKS`` (which files hold its train and eval splits, which reader in
``data.readers`` turns a file into rows, its closed answer set and its group in the paper's
tables); everything else is generic. Prompts follow Todd et al. (2024), which AdaInfer uses for
its metric: a zero-shot prompt is ``Q: {x}\\nA:``, a few-shot prompt puts
``Q: {x_k}\\nA: {y_k}\\n\\n`` before it for each demonstration. The model must produce the first
token of the gold answer right after ``A:``: a word such as ``positive``, a choice letter, or
the start of an open-ended answer.

Demonstrations always come from the train split, from the query's own sub-task (its ``key``:
an MMLU subject, a function-vector task, a relation), and are drawn by a seeded sampler that
never picks an item with the query's input, as lm-evaluation-harness's few-shot sampler never
picks the document under evaluation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from adainfer.data.readers import (
    AG_NEWS_ANSWERS,
    CHOICE_LETTERS,
    SST2_ANSWERS,
    Row,
    read_ag_news_test,
    read_ag_news_train,
    read_commonsense_qa,
    read_function_vectors,
    read_mmlu,
    read_relation,
    read_squad,
    read_sst2,
)
from adainfer.engine.files import write_bytes_atomic
from adainfer.engine.model import PromptError, check_text

DATA_ENV = "ADAINFER_DATA"


@dataclass(frozen=True)
class Example:
    """One task item: the text after ``Q:``, the gold answer after ``A:``, and its sub-task.

    ``key`` names the sub-task (MMLU subject, function-vector task, relation) whose items
    alone may serve as this item's demonstrations; ``""`` for a task without sub-tasks.
    """

    input: str
    output: str
    key: str = ""


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
    """Where a task's two splits live, how each file becomes rows, and its answer set.

    ``train_file`` feeds demonstrations and the stop classifier's training prompts;
    ``eval_file`` is kept for evaluation only. Both are relative to the data directory and may
    be glob patterns (``mmlu/dev/*_dev.csv``): the matches, in sorted order and less the file
    names in ``exclude``, are read one by one and concatenated. With ``split_files_in_half`` the
    files have no split of their own, so both patterns name the same files and
    ``split_examples`` cuts each key's rows in two: the first half train, the second eval.

    ``choices`` is the closed answer set (every gold answer is one of them, so only their first
    tokens are possible answers), ``None`` for open-ended tasks; ``group`` is the paper's task
    group, for averaging tables.
    """

    name: str
    train_file: str
    eval_file: str
    read_train: Callable[[Path], list[Row]]
    read_eval: Callable[[Path], list[Row]]
    choices: tuple[str, ...] | None = None
    group: str = ""
    exclude: tuple[str, ...] = ()
    split_files_in_half: bool = False
    # MMLU's train split is its 5 dev rows per subject: enough demonstrations for 5-shot, but a
    # dev query would have only 4 others of its subject. Its classifier-training queries are
    # therefore a fixed half of the test rows, disjoint from the half that is evaluated.
    classifier_queries_from_eval: bool = False


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", "sst2/train.tsv", "sst2/dev.tsv", read_sst2, read_sst2,
                     tuple(SST2_ANSWERS.values()), "text classification"),
    "ag_news": TaskSpec("ag_news", "ag_news/train_subset10k_alps.tsv", "ag_news/test.csv",
                        read_ag_news_train, read_ag_news_test, tuple(AG_NEWS_ANSWERS.values()),
                        "text classification"),
    "mmlu": TaskSpec("mmlu", "mmlu/dev/*_dev.csv", "mmlu/test/*_test.csv", read_mmlu, read_mmlu,
                     CHOICE_LETTERS[:4], "question answering", classifier_queries_from_eval=True),
    "commonsense_qa": TaskSpec("commonsense_qa", "commonsense_qa/train.jsonl",
                               "commonsense_qa/validation.jsonl", read_commonsense_qa,
                               read_commonsense_qa, CHOICE_LETTERS, "question answering"),
    "squad": TaskSpec("squad", "squad/train-v1.1-subset.json", "squad/dev-v1.1.json",
                      read_squad, read_squad, None, "question answering"),
    # Three abstractive files restate the classification and QA tasks above (ag_news.json is
    # ag_news/test.csv row for row, commonsense_qa.json is CommonsenseQA train + validation,
    # sentiment.json asks SST-2's positive/negative question of movie-review sentences), so
    # they are left out of the rule-understanding tasks.
    "fv_abstractive": TaskSpec("fv_abstractive", "function_vectors/abstractive/*.json",
                               "function_vectors/abstractive/*.json", read_function_vectors,
                               read_function_vectors, None, "rule understanding",
                               exclude=("ag_news.json", "sentiment.json", "commonsense_qa.json"),
                               split_files_in_half=True),
    "fv_extractive": TaskSpec("fv_extractive", "function_vectors/extractive/*.json",
                              "function_vectors/extractive/*.json", read_function_vectors,
                              read_function_vectors, None, "rule understanding",
                              split_files_in_half=True),
    "relations": TaskSpec("relations", "relations/*/*.json", "relations/*/*.json", read_relation,
                          read_relation, None, "rule understanding", split_files_in_half=True),
}


def _task_files(spec: TaskSpec, split: str, pattern: str, data_dir: Path) -> list[Path]:
    """The files a split pattern names, sorted; ``DataNotFoundError`` when there are none."""
    wildcard = any(character in pattern for character in "*?[")
    files = sorted(path for path in data_dir.glob(pattern)
                   if path.is_file() and path.name not in spec.exclude)
    if not files:
        missing = "matches no file" if wildcard else "does not exist"
        raise DataNotFoundError(
            f"{spec.name} {split} split needs {data_dir / pattern}, which {missing}; the "
            f"datasets must be in ../shared/data (relative to the current directory) or in the "
            f"directory named by ${DATA_ENV}")
    return files


def load_examples(task: str, split: Literal["train", "eval"],
                  data_dir: Path | None = None) -> list[Example]:
    """All examples of one split of a registered task, in file order.

    Raises ``ValueError`` for an unknown task or split and ``DataNotFoundError`` (a
    ``FileNotFoundError``) when the split's file, or every file of its pattern, is missing
    from the data directory.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(sorted(TASKS))}")
    if split not in ("train", "eval"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'eval'")
    spec = TASKS[task]
    pattern, reader = ((spec.train_file, spec.read_train) if split == "train"
                       else (spec.eval_file, spec.read_eval))
    data_dir = Path(data_dir if data_dir is not None else default_data_dir())
    examples = [Example(*row) for path in _task_files(spec, split, pattern, data_dir)
                for row in reader(path)]
    if spec.split_files_in_half:
        train, held_out = split_examples(examples)
        examples = train if split == "train" else held_out
    return examples


def split_examples(examples: Sequence[Example],
                   seed: int = 0) -> tuple[list[Example], list[Example]]:
    """``(train, eval)`` halves of examples that come without a split, e.g. one user file.

    Each key's examples are split on their own: its distinct inputs are shuffled by a fresh
    ``numpy.random.default_rng(seed)``, and the items whose input falls in the first half
    (the larger half when the count is odd) go to train, the rest to eval. Splitting by input
    keeps a row repeated in the file, or an input with two answers, on one side only, and a
    fresh generator per key makes a key's split independent of which other keys are present
    and of their order. Both halves keep the order of ``examples``.
    """
    inputs_by_key: dict[str, dict[str, None]] = {}
    for example in examples:
        inputs_by_key.setdefault(example.key, {})[example.input] = None
    train_inputs: set[tuple[str, str]] = set()
    for key, inputs in inputs_by_key.items():
        ordered = list(inputs)
        order = np.random.default_rng(seed).permutation(len(ordered))
        train_inputs.update((key, ordered[index]) for index in order[:(len(ordered) + 1) // 2])
    train = [example for example in examples if (example.key, example.input) in train_inputs]
    held_out = [example for example in examples
                if (example.key, example.input) not in train_inputs]
    return train, held_out


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
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise error(f"{path} line {number}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path} line {number}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise error(f"{path} line {number}: JSON nested too deeply") from None
            if not isinstance(record, dict):
                raise error(f"{path} line {number}: expected a JSON object with keys {keys}")
            for key in (*keys, *optional):
                value = record.get(key, "" if key in optional else None)
                if not isinstance(value, str) or not (value or key in optional):
                    raise error(f"{path} line {number}: {key!r} must be a non-empty string, "
                                f"got {value!r}")
                try:
                    check_text(value, repr(key))
                except PromptError as problem:
                    raise error(f"{path} line {number}: {problem}") from None
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
    return f"{demonstrations_text(demonstrations)}Q: {query}\nA:"


def demonstrations_text(demonstrations: Sequence[Example]) -> str:
    """The ``Q: {x_k}\nA: {y_k}\n\n`` blocks that start every prompt of `format_prompt` ("" for none):
    the prefix a classifier's prompts share, whose keys and values are computed once."""
    return "".join(f"Q: {demo.input}\nA: {demo.output}\n\n" for demo in demonstrations)


def build_prompts(examples: Sequence[Example], demonstration_pool: Sequence[Example], shots: int,
                  limit: int | None, seed: int) -> list[LabelledPrompt]:
    """Few-shot prompts for a seeded random subset of ``examples``.

    ``limit`` examples are taken in an order fixed by ``seed`` (all of them when ``None`` or
    when ``limit`` exceeds their number). Each gets ``shots`` distinct demonstrations drawn
    from ``demonstration_pool`` by the same seeded generator: only items with the query's
    ``key`` (any item when the query's key is ``""``), and never one whose input equals the
    query's: that keeps the query out of its own demonstrations when queries and pool are the
    same split, and also drops duplicate rows (SST-2's train split repeats some sentences,
    a few with both labels). Raises ``ValueError`` naming the key and the number of eligible
    items when a query has fewer than ``shots`` (MMLU has 5 train items a subject).
    """
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(examples))
    if limit is not None:
        order = order[:limit]
    # Pool indices a query of each key may draw from ("": all of them), and the offsets in
    # those lists of each input, so excluding the query never scans the pool.
    candidates_by_key: dict[str, list[int]] = {"": list(range(len(demonstration_pool)))}
    for index, demo in enumerate(demonstration_pool):
        if demo.key:
            candidates_by_key.setdefault(demo.key, []).append(index)
    offsets_by_input: dict[tuple[str, str], list[int]] = {}
    for key, candidates in candidates_by_key.items():
        for offset, index in enumerate(candidates):
            offsets_by_input.setdefault((key, demonstration_pool[index].input), []).append(offset)

    prompts = []
    for index in order:
        query = examples[index]
        demonstrations: list[Example] = []
        if shots:
            candidates = candidates_by_key.get(query.key, [])
            excluded = set(offsets_by_input.get((query.key, query.input), ()))
            available = len(candidates) - len(excluded)
            if available < shots:
                scope = f" with key {query.key!r}" if query.key else ""
                raise ValueError(f"{shots} shots requested but the demonstration pool has only "
                                 f"{available} items{scope} other than the query "
                                 f"{query.input[:80]!r}")
            # Drawing enough extra offsets to cover every excluded one, then dropping them,
            # leaves a uniform sample of the eligible items without scanning the candidates.
            drawn = rng.choice(len(candidates), size=shots + len(excluded), replace=False)
            demonstrations = [demonstration_pool[candidates[offset]] for offset in drawn
                              if offset not in excluded][:shots]
        prompts.append(LabelledPrompt(format_prompt(query.input, demonstrations), query.output))
    return prompts


def write_prompts_jsonl(prompts: Sequence[LabelledPrompt], path: Path) -> None:
    """One ``{"prompt": ..., "answer": ...}`` object per line, UTF-8, parent folders created.

    Encoded in full before anything is written, then written atomically: a prompt that cannot be
    encoded (a lone surrogate) or an interrupt leaves the file that was there.
    """
    text = "".join(json.dumps(asdict(prompt), ensure_ascii=False) + "\n" for prompt in prompts)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise PromptFileError(f"cannot write {path}: a prompt is not valid Unicode ({error.reason})") from None
    write_bytes_atomic(Path(path), data)


def read_prompts_jsonl(path: Path, require_answer: bool = True) -> list[LabelledPrompt]:
    """The prompts written by ``write_prompts_jsonl`` (or by hand, same format).

    Raises ``PromptFileError`` (a ``ValueError``) naming the line number of malformed JSON or
    of a missing or empty ``"prompt"`` (or ``"answer"`` when ``require_answer``), and
    ``FileNotFoundError`` for no file. Without ``require_answer`` a missing answer reads ``""``.
    """
    keys, optional = (("prompt", "answer"), ()) if require_answer else (("prompt",), ("answer",))
    return [LabelledPrompt(record["prompt"], record["answer"])
            for record in _read_jsonl(path, keys, PromptFileError, "prompt", optional)]


def read_inputs_jsonl(path: Path) -> list[Example]:
    """Raw inputs for a fitted classifier: ``{"input": ...}`` per line, with an optional gold
    ``"output"`` (read as ``""`` when absent). Raises ``TaskFileError`` naming a bad line."""
    return [Example(record["input"], record["output"])
            for record in _read_jsonl(path, ("input",), TaskFileError, "input", optional=("output",))]
