import functools
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from adainfer.data.tasks import (
    TASKS,
    DataNotFoundError,
    Example,
    LabelledPrompt,
    PromptFileError,
    TaskFileError,
    build_prompts,
    default_data_dir,
    format_prompt,
    load_examples,
    load_jsonl_task,
    read_prompts_jsonl,
    split_examples,
    write_prompts_jsonl,
)


@functools.cache
def cached(task, split):
    """Each real split is read once per test session; tests must not mutate the list."""
    return load_examples(task, split)


@pytest.fixture(scope="module")
def sst2_train():
    return load_examples("sst2", "train")


def test_sst2_splits_have_readme_row_counts_and_answer_words(sst2_train):
    sst2_eval = load_examples("sst2", "eval")
    assert len(sst2_train) == 67_349
    assert len(sst2_eval) == 872
    assert {example.output for example in sst2_train + sst2_eval} == {"positive", "negative"}
    assert sst2_eval[0] == Example("it 's a charming and often affecting journey .", "positive")


def test_ag_news_train_and_eval_share_answer_words():
    ag_eval = load_examples("ag_news", "eval")
    ag_train = load_examples("ag_news", "train")
    assert len(ag_eval) == 7_600
    assert len(ag_train) == 10_001
    answers = {"World", "Sports", "Business", "Sci/Tech"}
    assert {example.output for example in ag_eval} == answers
    assert {example.output for example in ag_train} == answers
    assert ag_eval[0].output == "Business"
    assert ag_eval[0].input.startswith("Fears for T N pension after talks Unions representing")
    # CSV-quoted train rows come back unquoted, with doubled quotes undone.
    kimberly_clark = next(example for example in ag_train if "Kimberly-Clark" in example.input)
    assert kimberly_clark.input.startswith("NEW YORK (Reuters)")
    assert 'HREF="http' in kimberly_clark.input


def test_unknown_task_names_known_tasks():
    with pytest.raises(ValueError, match="sst2") as info:
        load_examples("imdb", "eval")
    assert "ag_news" in str(info.value)


def test_missing_data_file_says_where_data_must_be(tmp_path):
    with pytest.raises(DataNotFoundError, match="ADAINFER_DATA") as info:
        load_examples("sst2", "eval", data_dir=tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "sst2" / "dev.tsv") in str(info.value)


def test_data_dir_defaults_to_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAINFER_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError, match=str(tmp_path)):
        load_examples("ag_news", "train")


def test_format_prompt_zero_shot():
    assert format_prompt("great film", []) == "Q: great film\nA:"


def test_format_prompt_two_shots():
    demos = [Example("awful", "negative"), Example("lovely", "positive")]
    expected = "Q: awful\nA: negative\n\nQ: lovely\nA: positive\n\nQ: great film\nA:"
    assert format_prompt("great film", demos) == expected


def test_build_prompts_is_deterministic_per_seed(sst2_train):
    pool = sst2_train[:500]
    first = build_prompts(pool, pool, shots=3, limit=50, seed=7)
    assert first == build_prompts(pool, pool, shots=3, limit=50, seed=7)
    assert first != build_prompts(pool, pool, shots=3, limit=50, seed=8)
    assert len(first) == 50
    assert all(prompt.prompt.count("Q: ") == 4 for prompt in first)


def test_build_prompts_limit_none_keeps_every_example_once():
    examples = [Example(f"x{i}", f"y{i}") for i in range(20)]
    prompts = build_prompts(examples, examples, shots=0, limit=None, seed=0)
    assert sorted(prompt.prompt for prompt in prompts) == sorted(f"Q: x{i}\nA:" for i in range(20))
    assert [prompt.prompt for prompt in prompts] != [f"Q: x{i}\nA:" for i in range(20)]


def _split_prompt(prompt):
    """(query input, demonstration inputs) of a prompt whose inputs contain no blank line."""
    *demos, query = prompt.split("\n\n")
    return query[len("Q: "):-len("\nA:")], [demo.split("\nA: ")[0][len("Q: "):] for demo in demos]


def test_query_never_among_its_own_demonstrations():
    # "a" appears twice in the pool (duplicate rows), so its 3 shots must be exactly the others.
    pool = [Example("a", "1"), Example("b", "2"), Example("a", "1"), Example("c", "3"),
            Example("d", "4")]
    for seed in range(50):
        for prompt in build_prompts(pool, pool, shots=3, limit=None, seed=seed):
            query, demos = _split_prompt(prompt.prompt)
            assert len(demos) == 3 and query not in demos
            if query == "a":
                assert sorted(demos) == ["b", "c", "d"]


def test_sst2_training_prompts_exclude_their_query(sst2_train):
    for prompt in build_prompts(sst2_train, sst2_train, shots=4, limit=300, seed=3):
        query, demos = _split_prompt(prompt.prompt)
        assert len(demos) == 4 and query not in demos


def test_too_few_demonstrations_raises():
    pool = [Example("a", "1"), Example("b", "2")]
    with pytest.raises(ValueError, match="only 1 items"):
        build_prompts(pool, pool, shots=2, limit=None, seed=0)


def test_prompts_jsonl_round_trip(tmp_path):
    prompts = [LabelledPrompt("Q: café\nA:", "positive"), LabelledPrompt("Q: x\nA:", "negative")]
    path = tmp_path / "nested" / "prompts.jsonl"
    write_prompts_jsonl(prompts, path)
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0]) == {
        "prompt": "Q: café\nA:", "answer": "positive"}
    assert read_prompts_jsonl(path) == prompts


@pytest.mark.parametrize("bad_line, message", [
    ('{"prompt": "Q: x\\nA:", ', "not valid JSON"),
    ('["Q: x", "y"]', "JSON object"),
    ('{"answer": "y"}', "'prompt'"),
    ('{"prompt": "Q: x\\nA:", "answer": ""}', "'answer'"),
    ('{"prompt": "Q: x\\nA:"}', "'answer'"),
])
def test_malformed_prompt_line_names_its_number(tmp_path, bad_line, message):
    good = json.dumps({"prompt": "Q: x\nA:", "answer": "y"})
    path = tmp_path / "prompts.jsonl"
    path.write_text(f"{good}\n\n{good}\n{bad_line}\n", encoding="utf-8")
    with pytest.raises(PromptFileError, match=f"line 4: .*{message}"):
        read_prompts_jsonl(path)


def test_missing_prompt_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        read_prompts_jsonl(tmp_path / "nothing.jsonl")


def test_jsonl_task_loads_and_reports_bad_line(tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_text('{"input": "France", "output": "Paris"}\n{"input": "Spain"}\n',
                    encoding="utf-8")
    with pytest.raises(TaskFileError, match="line 2: 'output'"):
        load_jsonl_task(path)
    path.write_text('{"input": "France", "output": "Paris", "extra": 1}\n', encoding="utf-8")
    assert load_jsonl_task(path) == [Example("France", "Paris")]


def test_registry_declares_answer_sets_and_groups():
    expected = {
        "sst2": (("negative", "positive"), "text classification"),
        "ag_news": (("World", "Sports", "Business", "Sci/Tech"), "text classification"),
        "mmlu": (("A", "B", "C", "D"), "question answering"),
        "commonsense_qa": (("A", "B", "C", "D", "E"), "question answering"),
        "squad": (None, "question answering"),
        "fv_abstractive": (None, "rule understanding"),
        "fv_extractive": (None, "rule understanding"),
        "relations": (None, "rule understanding"),
    }
    assert {name: (spec.choices, spec.group) for name, spec in TASKS.items()} == expected


@pytest.mark.parametrize("task", ["sst2", "ag_news", "mmlu", "commonsense_qa"])
def test_closed_answer_set_holds_every_gold_answer(task):
    choices = TASKS[task].choices
    for split in ("train", "eval"):
        answers = Counter(example.output for example in cached(task, split))
        # Every choice is used, and nothing outside the choices is.
        assert set(answers) == set(choices), (split, answers)


def test_mmlu_has_readme_row_counts_and_a_subject_per_item():
    train, held_out = cached("mmlu", "train"), cached("mmlu", "eval")
    assert len(train) == 285
    assert len(held_out) == 14_042
    train_subjects = Counter(example.key for example in train)
    assert len(train_subjects) == 57 and set(train_subjects.values()) == {5}
    assert set(train_subjects) == {example.key for example in held_out}
    assert "high_school_computer_science" in train_subjects


def test_mmlu_input_lists_lettered_choices_read_as_text():
    # Numeric-looking choices stay text ("0", not 0.0) and the answer index becomes a letter.
    assert cached("mmlu", "train")[0] == Example(
        "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\n(A) 0\n(B) 1\n(C) 2\n(D) 3",
        "B", "abstract_algebra")
    # A choice reading "None" must not become NaN.
    mergesort = next(example for example in cached("mmlu", "eval")
                     if example.input.startswith("Mergesort works by splitting"))
    assert mergesort.key == "college_computer_science"
    assert mergesort.input.endswith("\n(A) None\n(B) III only\n(C) I and II only\n"
                                    "(D) I, II, and III")
    assert mergesort.output == "D"


def test_commonsense_qa_rows_and_five_lettered_choices():
    train, held_out = cached("commonsense_qa", "train"), cached("commonsense_qa", "eval")
    assert (len(train), len(held_out)) == (9_741, 1_221)
    assert held_out[0] == Example(
        "A revolving door is convenient for two direction travel, but it also serves as a "
        "security measure at a what?\n(A) bank\n(B) library\n(C) department store\n(D) mall\n"
        "(E) new york", "A")
    assert {example.key for example in train + held_out} == {""}


def test_squad_rows_are_context_then_question_answered_by_first_answer():
    train, held_out = cached("squad", "train"), cached("squad", "eval")
    assert (len(train), len(held_out)) == (11_877, 10_570)
    first = held_out[0]
    assert first.input.startswith("Super Bowl 50 was an American football game")
    assert first.input.endswith(".\nWhich NFL team represented the AFC at Super Bowl 50?")
    assert first.output == "Denver Broncos"
    assert not {example.input for example in train} & {example.input for example in held_out}


def _source_rows(pattern):
    return sum(len(json.loads(path.read_text(encoding="utf-8")))
               for path in default_data_dir().glob(pattern))


@pytest.mark.parametrize("task, sub_tasks", [
    ("fv_abstractive", 20), ("fv_extractive", 25), ("relations", 33)])
def test_halved_tasks_split_every_sub_task_without_sharing_an_input(task, sub_tasks):
    train, held_out = cached(task, "train"), cached(task, "eval")
    train_inputs, held_out_inputs = {}, {}
    for examples, inputs in ((train, train_inputs), (held_out, held_out_inputs)):
        for example in examples:
            inputs.setdefault(example.key, set()).add(example.input)
    assert len(train_inputs) == sub_tasks and set(train_inputs) == set(held_out_inputs)
    # Each sub-task is split in two halves of its distinct inputs.
    for key, inputs in train_inputs.items():
        assert not inputs & held_out_inputs[key], key
        assert len(inputs) - len(held_out_inputs[key]) in (0, 1), key


def test_function_vector_split_keeps_every_row_and_excludes_duplicated_tasks():
    abstractive = cached("fv_abstractive", "train") + cached("fv_abstractive", "eval")
    keys = {example.key for example in abstractive}
    assert not keys & {"ag_news", "sentiment", "commonsense_qa"}
    assert "english-german" in keys
    excluded_rows = sum(len(json.loads((default_data_dir() / "function_vectors/abstractive" /
                                        name).read_text(encoding="utf-8")))
                        for name in ("ag_news.json", "sentiment.json", "commonsense_qa.json"))
    assert len(abstractive) == _source_rows("function_vectors/abstractive/*.json") - excluded_rows
    extractive = cached("fv_extractive", "train") + cached("fv_extractive", "eval")
    assert len(extractive) == _source_rows("function_vectors/extractive/*.json")
    # conll2003 repeats sentences (one row per entity): all copies land on one side.
    location = [example for example in extractive if example.key == "conll2003_location"]
    assert len(location) > len({example.input for example in location})


def test_split_of_a_file_does_not_depend_on_the_other_files(tmp_path):
    folder = tmp_path / "function_vectors" / "extractive"
    folder.mkdir(parents=True)
    shutil.copy(default_data_dir() / "function_vectors/extractive/choose_last_of_5.json", folder)
    alone = load_examples("fv_extractive", "train", data_dir=tmp_path)
    among_all = [example for example in cached("fv_extractive", "train")
                 if example.key == "choose_last_of_5"]
    assert alone == among_all and len(alone) == 500


def test_relations_use_zero_shot_template_and_unescaped_answers():
    relations = cached("relations", "train") + cached("relations", "eval")
    assert len(relations) == sum(
        len(json.loads(path.read_text(encoding="utf-8"))["samples"])
        for path in default_data_dir().glob("relations/*/*.json"))
    assert Example("The capital of Brazil is the city of", "Brasília",
                   "country capital city") in relations
    assert not any("\\u" in example.output for example in relations)


def test_relation_without_zero_shot_template_uses_the_plain_one(tmp_path):
    folder = tmp_path / "relations" / "factual"
    folder.mkdir(parents=True)
    relation = {"name": "toy", "prompt_templates": ["{} lies in"], "prompt_templates_zs": [""],
                "properties": {}, "samples": [{"subject": f"s{i}", "object": f"o{i}"}
                                              for i in range(4)] + [{"subject": "s", "object": ""}]}
    (folder / "toy.json").write_text(json.dumps(relation), encoding="utf-8")
    rows = load_examples("relations", "train", tmp_path) + load_examples("relations", "eval",
                                                                           tmp_path)
    assert sorted(rows, key=lambda example: example.input) == [
        Example(f"s{i} lies in", f"o{i}", "toy") for i in range(4)]


@pytest.mark.parametrize("task, files", [
    ("mmlu", "mmlu/dev/*_dev.csv"),
    ("fv_abstractive", "function_vectors/abstractive/*.json"),
    ("relations", "relations/*/*.json"),
])
def test_folder_task_without_files_says_where_data_must_be(tmp_path, task, files):
    with pytest.raises(DataNotFoundError, match="ADAINFER_DATA") as info:
        load_examples(task, "train", data_dir=tmp_path)
    assert str(tmp_path / files) in str(info.value)


def test_folder_of_only_excluded_files_is_missing_data(tmp_path):
    folder = tmp_path / "function_vectors" / "abstractive"
    folder.mkdir(parents=True)
    (folder / "sentiment.json").write_text('[{"input": "good", "output": "positive"}]')
    with pytest.raises(DataNotFoundError, match="matches no file"):
        load_examples("fv_abstractive", "eval", data_dir=tmp_path)


def test_split_examples_is_deterministic_by_input_and_keeps_order():
    examples = [Example(f"x{i}", f"y{i}") for i in range(9)] + [Example("x3", "other")]
    train, held_out = split_examples(examples)
    assert (train, held_out) == split_examples(examples, seed=0)
    assert split_examples(examples, seed=1) != (train, held_out)
    assert len({example.input for example in train}) == 5
    assert len({example.input for example in held_out}) == 4
    assert sorted(train + held_out, key=examples.index) == examples
    assert train == sorted(train, key=examples.index)
    assert sum(example.input == "x3" for example in train) in (0, 2)


def test_split_examples_splits_each_key_on_its_own():
    first = [Example(f"a{i}", "1", "a") for i in range(10)]
    second = [Example(f"b{i}", "2", "b") for i in range(7)]
    train, held_out = split_examples(second + first)
    assert [example for example in train if example.key == "a"] == split_examples(first)[0]
    assert Counter(example.key for example in train) == {"a": 5, "b": 4}
    assert Counter(example.key for example in held_out) == {"a": 5, "b": 3}


def test_demonstrations_come_from_the_query_key():
    pool = [Example(f"a{i}", "A", "a") for i in range(6)] + [
        Example(f"b{i}", "B", "b") for i in range(6)]
    queries = [Example("qa", "A", "a"), Example("qb", "B", "b")]
    for seed in range(20):
        for prompt in build_prompts(queries, pool, shots=4, limit=None, seed=seed):
            query, demos = _split_prompt(prompt.prompt)
            assert len(demos) == 4 and {demo[0] for demo in demos} == {query[1]}
    # A query without a key draws from the whole pool.
    drawn = {demo[0] for seed in range(20)
             for demo in _split_prompt(build_prompts([Example("q", "?")], pool, shots=4,
                                                     limit=None, seed=seed)[0].prompt)[1]}
    assert drawn == {"a", "b"}


def test_mmlu_five_shot_uses_exactly_the_subject_dev_rows():
    train, held_out = cached("mmlu", "train"), cached("mmlu", "eval")
    dev_by_subject = {}
    for example in train:
        dev_by_subject.setdefault(example.key, []).append(example)
    for query in held_out[::140]:
        [prompt] = build_prompts([query], train, shots=5, limit=None, seed=1)
        subject_rows = dev_by_subject[query.key]
        assert prompt.answer == query.output
        assert all(f"Q: {demo.input}\nA: {demo.output}\n\n" in prompt.prompt
                   for demo in subject_rows)
        # Same length as the subject's rows in some order: no other subject's row is in it.
        assert len(prompt.prompt) == len(format_prompt(query.input, subject_rows))
        assert prompt.prompt.endswith(f"Q: {query.input}\nA:")


def test_ten_shot_mmlu_fails_naming_the_subject_and_its_five_rows():
    with pytest.raises(ValueError, match=r"10 shots .* only 5 items with key '[a-z_]+'"):
        build_prompts(cached("mmlu", "eval"), cached("mmlu", "train"), shots=10, limit=1,
                      seed=0)


def test_example_key_defaults_to_empty():
    assert Example("x", "y") == Example("x", "y", "")
    assert Example("x", "y", "a") != Example("x", "y", "b")
