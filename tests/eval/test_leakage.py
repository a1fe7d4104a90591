"""No evaluated input ever reaches a classifier-training prompt or a demonstration (issue 12).

Checked on every path that builds prompts: `harness.task_prompts` (what `adainfer eval` collects)
for every built-in task and for a user's JSONL file, and the `adainfer prompts` verb. Leakage is
looked for in the prompt text, not only in the examples, so a path that formats prompts its own
way is caught too.
"""

import functools
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adainfer.cli.app import app
from adainfer.data.tasks import TASKS, LabelledPrompt, read_prompts_jsonl
from adainfer.data.task_data import TaskData, load_task
from adainfer.eval.harness import task_prompts

LIMIT = 30  # prompts per split: enough draws to catch a shared pool, quick on the largest task
SHOTS = 5  # every built-in task has at least 5 train items per key besides any query
SEED = 0


@functools.cache
def builtin_task(name: str) -> TaskData:
    """Each built-in task is read once per session from the default data directory."""
    return load_task(name)


@pytest.fixture()
def user_task_file(tmp_path) -> Path:
    path = tmp_path / "capitals.jsonl"
    rows = [{"input": f"city number {i}", "output": ["north", "south", "east"][i % 3]} for i in range(40)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def query_of(prompt: LabelledPrompt) -> str:
    """The input a prompt asks about: the text after its last `Q: `, before the final `\\nA:`."""
    return prompt.prompt.rsplit("Q: ", 1)[1].removesuffix("\nA:")


def assert_no_leak(evaluated_inputs: set[str], train: list[LabelledPrompt], evaluated: list[LabelledPrompt]) -> None:
    """No evaluated input is a train prompt's query or a demonstration of any prompt.

    A demonstration reads `Q: x\\nA: y`, a query ends `Q: x\\nA:`: so `Q: x\\nA:` must be nowhere in
    a train prompt, and `Q: x\\nA: ` (the space before an answer) nowhere in an eval prompt.
    """
    assert evaluated_inputs, "nothing evaluated: the check would pass vacuously"
    train_text = "\0".join(item.prompt for item in train)
    eval_text = "\0".join(item.prompt for item in evaluated)
    in_train = sorted(x for x in evaluated_inputs if f"Q: {x}\nA:" in train_text)
    as_demonstration = sorted(x for x in evaluated_inputs if f"Q: {x}\nA: " in eval_text)
    assert not in_train, f"{len(in_train)} evaluated inputs in train prompts, e.g. {in_train[0][:80]!r}"
    assert not as_demonstration, (f"{len(as_demonstration)} evaluated inputs demonstrate eval prompts, "
                                  f"e.g. {as_demonstration[0][:80]!r}")


@pytest.mark.parametrize("name", list(TASKS))
def test_builtin_task_prompts_never_show_an_evaluated_input(name):
    task = builtin_task(name)
    evaluated_inputs = {example.input for example in task.eval}
    assert not evaluated_inputs & {example.input for example in task.train}
    assert not evaluated_inputs & {example.input for example in task.classifier_queries}
    train = task_prompts(task, "train", SHOTS, LIMIT, SEED)
    evaluated = task_prompts(task, "eval", SHOTS, LIMIT, SEED)
    assert len(train) == len(evaluated) == LIMIT
    # Every evaluated input, not only the sampled queries: none may show up in any prompt.
    assert_no_leak(evaluated_inputs, train, evaluated)


def test_user_task_prompts_never_show_an_evaluated_input(user_task_file):
    task = load_task(str(user_task_file))
    train = task_prompts(task, "train", 3, None, SEED)
    evaluated = task_prompts(task, "eval", 3, None, SEED)
    assert len(train) + len(evaluated) == 40  # every row is used, on one side only
    assert_no_leak({query_of(item) for item in evaluated}, train, evaluated)


def test_prompts_verb_keeps_a_user_tasks_eval_queries_out_of_its_train_prompts(user_task_file, tmp_path):
    runner = CliRunner()
    files = {}
    for split in ("train", "eval"):
        files[split] = tmp_path / f"{split}.jsonl"
        result = runner.invoke(app, ["prompts", str(user_task_file), "--out", str(files[split]), "--split", split,
                                     "--shots", "3", "--seed", str(SEED)])
        assert result.exit_code == 0, result.output
    train, evaluated = read_prompts_jsonl(files["train"]), read_prompts_jsonl(files["eval"])
    eval_queries = {query_of(item) for item in evaluated}
    assert not eval_queries & {query_of(item) for item in train}
    assert_no_leak(eval_queries, train, evaluated)


def test_prompts_verb_on_a_builtin_task_writes_the_harness_prompts(tmp_path):
    # MMLU is the task whose classifier queries are not its train split, and whose eval split
    # repeats questions: the two things a verb building its own splits got wrong.
    runner = CliRunner()
    task = builtin_task("mmlu")
    for split in ("train", "eval"):
        out = tmp_path / f"mmlu-{split}.jsonl"
        result = runner.invoke(app, ["prompts", "mmlu", "--out", str(out), "--split", split, "--shots", str(SHOTS),
                                     "--limit", str(LIMIT), "--seed", "4"])
        assert result.exit_code == 0, result.output
        assert read_prompts_jsonl(out) == task_prompts(task, split, SHOTS, LIMIT, 4)
