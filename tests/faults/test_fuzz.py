"""Property-based fuzz of the JSONL readers and the CLI options: every input works or is one clean error.

Never a traceback, never an exception other than the ValueError/OSError the CLI turns into
`error: ...` and exit code 2, and never a changed existing file.
"""

import json
import shutil

from cli_runner import invoke, stderr
from fault_data import IDENTITY, make_traces, write_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adainfer.data.tasks import load_jsonl_task, read_prompts_jsonl
from adainfer.eval.traces import load_collection
from adainfer.policies.svm import SVMPolicy

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=3), max_leaves=6)
# Lines that are mostly close to valid: objects with the keys the readers look for, or raw bytes.
records = st.dictionaries(st.sampled_from(["prompt", "answer", "input", "output", "prompt_index", "layer", "gap",
                                           "top_prob", "top1", "gold", "label", "seq_len", "adainfer_collection",
                                           "feature_names", "num_layers", "model_identity"]), json_values, max_size=8)
lines = st.one_of(records.map(lambda r: json.dumps(r).encode()), st.binary(max_size=30),
                  st.text(max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass")))


def _clean_result(read, path) -> None:
    before = path.read_bytes()
    try:
        read(path)
    except (ValueError, OSError) as error:
        assert str(path) in str(error) or "does not exist" in str(error)
    assert path.read_bytes() == before


@FUZZ
@given(st.lists(lines, max_size=6))
def test_jsonl_readers_read_or_name_the_problem(tmp_path, content):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(content))
    for read in (read_prompts_jsonl, load_jsonl_task, load_collection):
        _clean_result(read, path)


@FUZZ
@given(st.lists(lines, max_size=4), st.integers(0, 40))
def test_a_damaged_collection_loads_or_names_the_problem(tmp_path, extra, cut):
    path = tmp_path / "rows.jsonl"
    text = write_rows(tmp_path / "good.jsonl", n_prompts=3).read_bytes()
    path.write_bytes(text[: len(text) - cut] + b"\n".join(extra))
    _clean_result(load_collection, path)


def one_clean_line_or_success(result) -> None:
    text = stderr(result)
    assert "Traceback" not in text, text
    assert result.exit_code in (0, 2), (result.exit_code, result.exception)
    if result.exit_code == 2:
        assert len([line for line in text.splitlines() if line.startswith("error:")]) == 1, text


option_text = st.one_of(st.text(max_size=12), st.sampled_from(["nan", "inf", "-1", "0", "1e308", ",", "gap,gap",
                                                                 "gap", "svm", "crf", "gap,top_prob", "abc"]))


@FUZZ
@given(policy=option_text, features=option_text, threshold=option_text)
def test_train_options_work_or_fail_cleanly_and_keep_the_old_policy(tmp_path_factory, policy, features, threshold):
    work = tmp_path_factory.mktemp("train")
    rows = write_rows(work / "rows.jsonl", n_prompts=6)
    X, y = make_traces(6)
    old = SVMPolicy().fit(X, y).save(work / "policy", IDENTITY)
    before = {path.name: path.read_bytes() for path in old.iterdir()}
    rows_before = rows.read_bytes()
    result = invoke("train", rows, "-o", old, "--policy", policy, "--features", features, "--threshold", threshold)
    one_clean_line_or_success(result)
    assert rows.read_bytes() == rows_before
    if result.exit_code != 0:
        assert {path.name: path.read_bytes() for path in old.iterdir()} == before
    shutil.rmtree(work)


@FUZZ
@given(shots=option_text, limit=option_text, split=option_text, seed=option_text)
def test_prompts_options_work_or_fail_cleanly(tmp_path_factory, shots, limit, split, seed):
    work = tmp_path_factory.mktemp("prompts")
    task = work / "task.jsonl"
    task.write_text("".join(json.dumps({"input": f"w{i}", "output": "ab"[i % 2]}) + "\n" for i in range(12)))
    out = work / "out.jsonl"
    out.write_text("kept\n")
    result = invoke("prompts", task, "-o", out, "--shots", shots, "--limit", limit, "--split", split, "--seed", seed)
    one_clean_line_or_success(result)
    if result.exit_code != 0:
        assert out.read_text() == "kept\n"
    shutil.rmtree(work)


@FUZZ
@given(tasks=option_text, shots=option_text)
def test_eval_options_fail_cleanly_before_loading_a_model(tmp_path_factory, tasks, shots):
    work = tmp_path_factory.mktemp("eval")
    result = invoke("eval", "--tasks", tasks, "--shots", shots, "--data-dir", work / "no-data", "--runs", work / "runs",
                    "--model", work / "no-model")
    one_clean_line_or_success(result)
    assert result.exit_code == 2
    shutil.rmtree(work)
