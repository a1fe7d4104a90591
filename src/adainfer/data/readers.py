"""Readers for the shared datasets: one function per file format, each returning rows.

A row is ``(input, output, key)``: the text after ``Q:``, the gold answer after ``A:``, and the
sub-task the item belongs to (an MMLU subject, a function-vector task, a relation; ``""`` for
tasks without sub-tasks). Rows come in file order. Readers know file formats only: which files
make a task, and how a split is cut from files that have none, live in ``tasks.TASKS``.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

Row = tuple[str, str, str]

SST2_ANSWERS = {"0": "negative", "1": "positive"}

# The train TSV's label names; classes.txt says "Science/Tech" and Todd et al. use "Science",
# but train and eval must share answer words, and the train file is the one that names them.
AG_NEWS_ANSWERS = {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"}

CHOICE_LETTERS = ("A", "B", "C", "D", "E")

# country_capital_city.json escapes two answers once too often: they read "Bras\u00edlia" and
# "Bogot\u00e1" after JSON decoding, and the model should be asked for "Brasília".
_LITERAL_UNICODE_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def _unescape_unicode(text: str) -> str:
    return _LITERAL_UNICODE_ESCAPE.sub(lambda match: chr(int(match.group(1), 16)), text)


def _rows(inputs: Iterable[str], outputs: Iterable[str], key: str = "") -> list[Row]:
    # Inputs are stripped: SST-2 rows end in a space and many AG News descriptions start with
    # one, which would otherwise put odd spacing around "Q:" and before the newline.
    return [(text.strip(), label, key) for text, label in zip(inputs, outputs, strict=True)]


def multiple_choice_input(question: str, choices: Sequence[str]) -> str:
    """The question, then one ``(A) choice`` line per choice, lettered in order."""
    if len(choices) > len(CHOICE_LETTERS):
        raise ValueError(f"at most {len(CHOICE_LETTERS)} choices can be lettered, got "
                         f"{len(choices)}: {list(choices)}")
    lines = [question.strip()]
    lines += [f"({letter}) {choice.strip()}"
              for letter, choice in zip(CHOICE_LETTERS[:len(choices)], choices, strict=True)]
    return "\n".join(lines)


def read_sst2(path: Path) -> list[Row]:
    # GLUE's SST-2 TSV is unquoted; QUOTE_NONE keeps any quote character as text.
    frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
    return _rows(frame["text"], frame["label"].map(SST2_ANSWERS))


def read_ag_news_test(path: Path) -> list[Row]:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    inputs = frame["Title"] + " " + frame["Description"]
    return _rows(inputs, frame["Class Index"].map(AG_NEWS_ANSWERS))


def read_ag_news_train(path: Path) -> list[Row]:
    # This ALPS sample has descriptions only (no title), unlike the test split, so train inputs
    # are shorter than eval inputs. Its fields use CSV quoting (doubled quotes), hence default
    # quoting here.
    frame = pd.read_csv(path, sep="\t", header=None, names=["description", "label"], dtype=str,
                        keep_default_na=False)
    return _rows(frame["description"], frame["label"])


def read_mmlu(path: Path) -> list[Row]:
    """One subject's ``<subject>_dev.csv`` or ``<subject>_test.csv``; the key is the subject.

    Every cell is read as text: choices such as ``None`` or ``0`` must not become NaN or ints.
    """
    subject = path.stem.rsplit("_", 1)[0]
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    choices = zip(*(frame[f"choice{index}"] for index in range(4)), strict=True)
    inputs = [multiple_choice_input(question, row)
              for question, row in zip(frame["question"], choices, strict=True)]
    outputs = [CHOICE_LETTERS[int(answer)] for answer in frame["answer"]]
    return _rows(inputs, outputs, subject)


def read_commonsense_qa(path: Path) -> list[Row]:
    """CommonsenseQA JSON lines; choices are printed in the order of their labels (A-E)."""
    rows = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                record = json.loads(line)
                choices = dict(zip(record["choices"]["label"], record["choices"]["text"],
                                   strict=True))
                texts = [choices[letter] for letter in sorted(choices)]
                rows.append((multiple_choice_input(record["question"], texts),
                             record["answerKey"], ""))
    return rows


def read_squad(path: Path) -> list[Row]:
    """Official SQuAD JSON: ``{context}\\n{question}`` answered by the first gold answer."""
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    return [(f"{paragraph['context'].strip()}\n{qa['question'].strip()}",
             qa["answers"][0]["text"].strip(), "")
            for article in data for paragraph in article["paragraphs"]
            for qa in paragraph["qas"]]


def _non_empty(rows: Iterable[tuple[object, object, str]]) -> list[Row]:
    # str(): a JSON value may be a number; rows with nothing to ask or answer are dropped.
    text_rows = [(str(given).strip(), str(answer).strip(), key) for given, answer, key in rows]
    return [row for row in text_rows if row[0] and row[1]]


def read_function_vectors(path: Path) -> list[Row]:
    """A Todd et al. (2024) task file, a JSON list of ``{input, output}``; key = file stem."""
    records = json.loads(path.read_text(encoding="utf-8"))
    return _non_empty((record.get("input", ""), record.get("output", ""), path.stem)
                      for record in records)


def read_relation(path: Path) -> list[Row]:
    """A Hernandez et al. (2024) relation; key = its ``name``.

    The first zero-shot template (a question that names the answer's kind) is used when the
    file has a non-empty one; the first bare template otherwise.
    """
    relation = json.loads(path.read_text(encoding="utf-8"))
    zero_shot = relation.get("prompt_templates_zs") or [""]
    template = zero_shot[0] or relation["prompt_templates"][0]
    return _non_empty((template.format(_unescape_unicode(sample["subject"])),
                       _unescape_unicode(sample["object"]), relation["name"])
                      for sample in relation["samples"])
