"""The inputs issue 15 listed as tracebacks or silent mistakes: each is now one `error:` line and exit code 2."""

import json
import shutil
import time

import pytest
from cli_runner import assert_clean_error, invoke, ok
from fault_data import IDENTITY, LAYERS, make_traces, write_rows

from adainfer.cli.common import policy_candidates
from adainfer.engine.model import EarlyExitModel
from adainfer.eval.harness import Setting, settings_grid
from adainfer.policies.gap import GapThresholdPolicy


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    return EarlyExitModel.from_pretrained(str(tiny_llama_dir))


def test_train_refuses_a_nan_threshold(tmp_path):
    rows = write_rows(tmp_path / "rows.jsonl", n_prompts=4)
    assert_clean_error(invoke("train", rows, "-o", tmp_path / "p", "--policy", "gap", "--threshold", "nan"),
                       "--threshold must be a finite number")
    assert not (tmp_path / "p").exists()


def test_calibrate_first_check_at_the_last_layer(tmp_path):
    rows = write_rows(tmp_path / "rows.jsonl", n_prompts=6)
    result = invoke("calibrate", rows, rows, "-o", tmp_path / "p", "--features", "gap,top_prob",
                    "--first-check", LAYERS)
    assert_clean_error(result, "--first-check must be in 1..7")


def test_report_on_a_bad_setting_json(tmp_path):
    folder = tmp_path / "runs" / "model" / "task-0shot"
    folder.mkdir(parents=True)
    (folder / "setting.json").write_text("{not json")
    assert_clean_error(invoke("report", tmp_path / "runs" / "model", "--out", tmp_path / "out"), "setting.json")


@pytest.mark.parametrize("tasks", [",", " , ,"])
def test_eval_with_no_task(tmp_path, tasks):
    assert_clean_error(invoke("eval", "--tasks", tasks, "--runs", tmp_path, "--model", tmp_path / "none"),
                       "at least one task")


def test_a_setting_named_twice_is_collected_and_counted_once():
    assert settings_grid(["sst2", "sst2"], [0, 5, 0]) == [Setting("sst2", 0), Setting("sst2", 5)]


def test_empty_prompts_file_stops_before_the_model_loads(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    policy = GapThresholdPolicy().fit(make_traces()[0][..., :1]).save(tmp_path / "p", IDENTITY)
    missing_model = tmp_path / "no-model"  # loading it would be a different error
    assert_clean_error(invoke("predict", empty, "-p", policy, "--model", missing_model), "holds no prompts")
    assert_clean_error(invoke("collect", empty, "-o", tmp_path / "r.jsonl", "--model", missing_model),
                       "holds no prompts")


def test_lone_surrogate_and_non_utf8_prompts_name_their_line(tmp_path):
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text('{"prompt": "ok", "answer": "a"}\n{"prompt": "bad \\ud800", "answer": "a"}\n')
    assert_clean_error(invoke("collect", surrogate, "-o", tmp_path / "r.jsonl", "--model", tmp_path / "x"),
                       "line 2", "surrogate")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "ok", "answer": "a"}\n{"prompt": "caf\xe9", "answer": "a"}\n')
    assert_clean_error(invoke("collect", latin, "-o", tmp_path / "r.jsonl", "--model", tmp_path / "x"),
                       str(latin), "line 2", "not UTF-8")


def test_a_huge_prompt_is_refused_on_its_byte_length_before_tokenizing(model):
    started = time.perf_counter()
    with pytest.raises(ValueError, match="bytes, more than the model's context"):
        model.encode("word " * 2_000_000)
    assert time.perf_counter() - started < 2


def test_a_directory_without_safetensors_is_refused(tiny_llama_dir, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_llama_dir, pickled)
    for path in pickled.glob("*.safetensors"):
        path.rename(path.with_suffix(".bin"))
    assert_clean_error(invoke("info", "--model", pickled), "no .safetensors weights")


def test_predict_refuses_choices_other_than_the_policy_answer_set(model):
    policy = GapThresholdPolicy(feature="cand_gap")
    policy.candidate_ids_ = (11, 12)
    with pytest.raises(ValueError, match="trained on the answer set with tokens \\[11, 12\\]"):
        policy_candidates(model, policy, "yes,no")
    assert policy_candidates(model, policy, None) == [11, 12]


def test_a_policy_records_its_answer_set(tmp_path):
    policy = GapThresholdPolicy(feature="cand_gap").fit(make_traces()[0][..., :1])
    policy.save(tmp_path / "p", IDENTITY, candidate_ids=[5, 9])
    assert json.loads((tmp_path / "p" / "config.json").read_text())["candidate_ids"] == [5, 9]
