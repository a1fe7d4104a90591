import json

import pytest

from adainfer.tasks import (
    DataNotFoundError,
    Example,
    LabelledPrompt,
    PromptFileError,
    TaskFileError,
    build_prompts,
    format_prompt,
    load_examples,
    load_jsonl_task,
    read_prompts_jsonl,
    write_prompts_jsonl,
)


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
