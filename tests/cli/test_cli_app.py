"""The CLI end to end on tiny models: the happy path, then one clean error per kind of bad input."""

import collections
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import assert_clean_error, invoke, ok, stderr
from transformers import PhiConfig, PhiForCausalLM

from adainfer.data.tasks import read_prompts_jsonl
from adainfer.engine.model import EarlyExitModel
from adainfer.eval.traces import load_collection
from adainfer.data.task_data import load_task
from adainfer.engine.model import model_slug
from adainfer.eval.harness import Setting, collect_setting
from adainfer.policies.crf import CRFPolicy
from adainfer.policies.svm import SVMPolicy
from adainfer.testing.tiny_models import char_tokenizer, tiny_model

SPACE = 95  # the char tokenizer's id of " ": the gold token of every `Q: ..\nA:` prompt


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def task_file(work) -> Path:
    """40 rows: `adainfer prompts` splits them as `adainfer eval` does, 20 train and 20 eval."""
    return write_jsonl(work / "task.jsonl", ({"input": f"w{i}", "output": ["yes", "no"][i % 2]} for i in range(40)))


@pytest.fixture(scope="module")
def prompts_file(work, task_file) -> Path:
    out = work / "prompts.jsonl"
    ok("prompts", task_file, "--out", out, "--shots", 2, "--limit", 20)
    return out


def _model_args(model_dir: Path, work: Path):
    return ("--model", model_dir, "--cache-dir", work / "cache")


@pytest.fixture(scope="module")
def llama_rows(work, prompts_file, tiny_llama_dir) -> Path:
    out = work / "llama-rows.jsonl"
    ok("collect", prompts_file, "--out", out, *_model_args(tiny_llama_dir, work))
    return out


@pytest.fixture(scope="module")
def gold_model_dir(work, prompts_file, tiny_llama_dir) -> Path:
    """The tiny llama with the space token's head row set to 1.1 x the row of its commonest top-1 token.

    The random tiny llama never predicts " ", the gold token of every prompt, so its rows are all
    label 0. This copy predicts " " wherever the original predicted that common token: both labels.
    """
    original = EarlyExitModel.from_pretrained(str(tiny_llama_dir))
    counts = collections.Counter(
        token for item in read_prompts_jsonl(prompts_file)
        for token in original.trace(item.prompt, ["gap"]).top1.tolist())
    common = counts.most_common(1)[0][0]
    model = tiny_model("llama")
    with torch.no_grad():
        model.lm_head.weight[SPACE] = 1.1 * model.lm_head.weight[common]
    directory = work / "gold-llama"
    model.save_pretrained(directory)
    char_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def gold_rows(work, prompts_file, gold_model_dir) -> Path:
    out = work / "gold-rows.jsonl"
    ok("collect", prompts_file, "--out", out, *_model_args(gold_model_dir, work))
    labels = load_collection(out).labels
    assert 0 < labels.sum() < labels.size, "the gold model must give both labels"
    return out


# --- the happy path -------------------------------------------------------------------------

def test_info_prints_the_models_json(tiny_llama_dir, work):
    result = ok("info", *_model_args(tiny_llama_dir, work))
    info = json.loads(result.stdout)
    assert info["num_layers"] == 4
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["max_context"] == 128 and info["vocab_size"] == 97
    assert info["cache_root"] == str(work / "cache")
    assert info["identity"] == EarlyExitModel.from_pretrained(str(tiny_llama_dir)).identity()


def test_prompts_from_a_user_task(prompts_file, task_file):
    items = read_prompts_jsonl(prompts_file)
    assert len(items) == 20
    train_inputs = {example.input for example in load_task(str(task_file)).train}
    for item in items:
        assert item.prompt.count("Q: ") == 3 and item.prompt.endswith("\nA:")
        query = item.prompt.rsplit("Q: ", 1)[1].removesuffix("\nA:")
        assert query in train_inputs  # --split train asks the train half only
        assert f"Q: {query}\nA: " not in item.prompt  # never its own demonstration
        assert item.answer in ("yes", "no")


def test_prompts_seed_is_the_eval_settings_seed(work, task_file, tiny_llama_dir):
    """`adainfer prompts --seed S` writes exactly the prompts `adainfer eval` collects for seed S."""
    model = EarlyExitModel.from_pretrained(str(tiny_llama_dir))
    collect_setting(model, Setting(str(task_file), shots=2, seed=3), work / "runs", 4, 3)
    folder = work / "runs" / model_slug(model) / "task" / "2shot-seed3"
    for split, limit in (("train", 4), ("eval", 3)):
        out = work / f"seed3-{split}.jsonl"
        ok("prompts", task_file, "--out", out, "--split", split, "--shots", 2, "--limit", limit, "--seed", 3)
        assert read_prompts_jsonl(out) == read_prompts_jsonl(folder / f"{split}.prompts.jsonl")


def test_collect_writes_every_prompt(llama_rows, tiny_llama_dir):
    collection = load_collection(llama_rows)
    assert collection.features.shape == (20, 4, 3)
    assert collection.feature_names == ("gap", "top_prob", "depth")
    assert collection.model_identity == EarlyExitModel.from_pretrained(str(tiny_llama_dir)).identity()
    assert (collection.gold == SPACE).all()


def test_collect_into_a_log_reports_progress_in_plain_lines(prompts_file, tiny_llama_dir, work):
    result = ok("collect", prompts_file, "--out", work / "logged-rows.jsonl", *_model_args(tiny_llama_dir, work))
    lines = stderr(result).splitlines()  # CliRunner's stderr is not a terminal, as a log file is not
    assert lines[0].startswith("collecting: 1/20 (5 %), ") and ", ETA " in lines[0], lines
    assert any(line.startswith("collecting: 20/20 (100 %), ") and "/s, done in " in line for line in lines), lines


def test_collect_rerun_resumes_and_adds_nothing(llama_rows, prompts_file, tiny_llama_dir, work):
    before = llama_rows.read_text()
    result = ok("collect", prompts_file, "--out", llama_rows, *_model_args(tiny_llama_dir, work))
    assert "0 prompts added" in stderr(result)
    assert llama_rows.read_text() == before


@pytest.mark.parametrize("kind", ["svm", "crf"])
def test_classifier_on_rows_with_one_label_fails_clearly(work, tiny_llama_dir, kind):
    prompts = write_jsonl(work / f"zero-shot-{kind}.jsonl", ({"prompt": f"Q: w{i}\nA:", "answer": "yes"} for i in range(10)))
    rows = work / f"zero-shot-{kind}-rows.jsonl"
    ok("collect", prompts, "--out", rows, *_model_args(tiny_llama_dir, work))
    assert load_collection(rows).labels.sum() == 0  # the random tiny llama never says " " after these prompts
    result = invoke("train", rows, "--out", work / f"{kind}-none", "--policy", kind)
    assert_clean_error(result, "only label 0")
    assert not (work / f"{kind}-none" / "config.json").exists()


def _predictions(path_or_text) -> list[dict]:
    text = path_or_text.read_text() if isinstance(path_or_text, Path) else path_or_text
    return [json.loads(line) for line in text.splitlines()]


def _check_predictions(records, prompts_file):
    items = read_prompts_jsonl(prompts_file)
    assert [record["prompt"] for record in records] == [item.prompt for item in items]
    for record in records:
        assert {"answer_text", "exit_layer", "paper_flops_ratio", "honest_flops_ratio"} <= record.keys()
        assert 1 <= record["exit_layer"] <= 4
        assert len(record["trace"]) == record["lens_reads"] == record["exit_layer"] - record["first_read_layer"] + 1
        assert 0 < record["paper_flops_ratio"] and record["honest_flops_ratio"] > 0
        assert record["paper_flops_ratio"] <= 1.0
        assert record["correct"] == (record["answer_token_id"] == SPACE)


def test_gap_policy_trains_without_labels_and_predicts(work, llama_rows, prompts_file, tiny_llama_dir):
    policy = work / "gap"
    report = json.loads(ok("train", llama_rows, "--out", policy, "--policy", "gap", "--threshold", 0.05).stdout)
    assert report["policy"] == "gap" and report["features"] == ["gap"]
    assert report["on_training_rows"]["prompts"] == 20
    out = work / "gap-predictions.jsonl"
    result = ok("predict", prompts_file, "--policy", policy, "--out", out, *_model_args(tiny_llama_dir, work))
    records = _predictions(out)
    _check_predictions(records, prompts_file)
    for record in records:  # exit at the first layer with gap > 0.05, the last layer answering anyway
        gaps = [row[0] for row in record["trace"]]
        assert all(gap <= 0.05 for gap in gaps[:-1])
        assert record["accepted"] == (gaps[-1] > 0.05 and record["exit_layer"] < 4)
    assert len({record["exit_layer"] for record in records}) > 1  # the threshold actually splits them
    summary = _summary(result)
    assert summary["prompts"] == 20
    assert summary["mean_exit_layer"] == round(sum(record["exit_layer"] for record in records) / 20, 4)
    assert summary["accuracy"] == round(sum(record["correct"] for record in records) / 20, 4)


def _summary(result) -> dict:
    # The summary is the last thing on stderr; rich may wrap it at 80 columns when not a terminal.
    text = stderr(result)
    return json.loads(" ".join(text[text.rindex('{"prompts"'):].splitlines()))


def test_predict_without_out_writes_json_lines_to_stdout(work, llama_rows, prompts_file, tiny_llama_dir):
    policy = work / "gap-stdout"
    ok("train", llama_rows, "--out", policy, "--policy", "gap")
    result = ok("predict", prompts_file, "--policy", policy, *_model_args(tiny_llama_dir, work))
    _check_predictions(_predictions(result.stdout), prompts_file)


@pytest.mark.parametrize("kind, model_file", [("svm", "svm.skops"), ("crf", "crf.npz")])
def test_classifier_trains_on_both_labels_and_predicts(work, gold_rows, gold_model_dir, prompts_file,
                                                       kind, model_file):
    policy = work / f"{kind}-policy"
    report = json.loads(ok("train", gold_rows, "--out", policy, "--policy", kind).stdout)
    assert report["policy"] == kind and report["features"] == ["gap", "top_prob"]
    assert (policy / "config.json").is_file() and (policy / model_file).is_file()
    out = work / f"{kind}-predictions.jsonl"
    ok("predict", prompts_file, "--policy", policy, "--out", out, *_model_args(gold_model_dir, work))
    _check_predictions(_predictions(out), prompts_file)


def test_train_on_chosen_features(work, gold_rows):
    policy = work / "svm-depth"
    report = json.loads(ok("train", gold_rows, "--out", policy, "--features", "gap,depth").stdout)
    assert report["features"] == ["gap", "depth"]
    assert json.loads((policy / "config.json").read_text())["features"] == ["gap", "depth"]


# --- bad input: exit 2 and one line naming the problem --------------------------------------

@pytest.fixture(scope="module")
def gap_policy(work, llama_rows) -> Path:
    policy = work / "gap-for-errors"
    ok("train", llama_rows, "--out", policy, "--policy", "gap")
    return policy


def test_bad_prompt_at_line_3_fails_before_any_output(work, gap_policy, tiny_llama_dir):
    prompts = write_jsonl(work / "bad3.jsonl", [{"prompt": "Q: a\nA:"}, {"prompt": "Q: b\nA:"}, {"prompt": "  "}])
    out = work / "bad3-out.jsonl"
    out.write_text("earlier results\n")
    result = invoke("predict", prompts, "--policy", gap_policy, "--out", out, *_model_args(tiny_llama_dir, work))
    assert_clean_error(result, "bad3.jsonl line 3", "empty prompt")
    assert out.read_text() == "earlier results\n"  # not truncated, nothing half written
    result = invoke("predict", prompts, "--policy", gap_policy, *_model_args(tiny_llama_dir, work))
    assert_clean_error(result, "empty prompt")
    assert result.stdout == ""


def test_blank_answer_at_line_3_fails_before_any_output(work, gap_policy, tiny_llama_dir):
    prompts = write_jsonl(work / "blank-answer.jsonl", [
        {"prompt": "Q: a\nA:", "answer": "x"}, {"prompt": "Q: b\nA:", "answer": "y"},
        {"prompt": "Q: c\nA:", "answer": "  "}])
    out = work / "blank-answer-out.jsonl"
    result = invoke("predict", prompts, "--policy", gap_policy, "--out", out, *_model_args(tiny_llama_dir, work))
    assert_clean_error(result, "line 3", "empty answer")
    assert not out.exists()


def test_empty_prompt_string_names_its_line(work, gap_policy, tiny_llama_dir):
    prompts = write_jsonl(work / "empty.jsonl", [{"prompt": ""}])
    result = invoke("predict", prompts, "--policy", gap_policy, *_model_args(tiny_llama_dir, work))
    assert_clean_error(result, "line 1", "'prompt' must be a non-empty string")


def test_prompt_longer_than_the_context(work, gap_policy, tiny_llama_dir, prompts_file):
    long_prompt = {"prompt": "Q: " + "x" * 200 + "\nA:", "answer": "yes"}
    prompts = write_jsonl(work / "long.jsonl", [{"prompt": "Q: a\nA:", "answer": "no"}, long_prompt])
    result = invoke("predict", prompts, "--policy", gap_policy, *_model_args(tiny_llama_dir, work))
    assert_clean_error(result, "long.jsonl line 2", "206 tokens", "context of 128")
    result = invoke("collect", prompts, "--out", work / "long-rows.jsonl", *_model_args(tiny_llama_dir, work))
    assert_clean_error(result, "context of 128")


def test_unsupported_architecture_names_the_supported_ones(work):
    directory = work / "tiny-phi"
    PhiForCausalLM(PhiConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=128)).save_pretrained(directory)
    char_tokenizer().save_pretrained(directory)
    result = invoke("info", *_model_args(directory, work))
    assert_clean_error(result, "unsupported architecture PhiForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM")


def test_policy_for_another_architecture_is_refused(work, gap_policy, prompts_file, tiny_qwen2_dir):
    out = work / "mismatch.jsonl"
    result = invoke("predict", prompts_file, "--policy", gap_policy, "--out", out, *_model_args(tiny_qwen2_dir, work))
    assert_clean_error(result, "trained for another model", "LlamaForCausalLM", "Qwen2ForCausalLM")
    assert not out.exists()


def test_policy_for_the_same_architecture_with_other_weights_is_refused(work, gap_policy, prompts_file,
                                                                        gold_model_dir):
    result = invoke("predict", prompts_file, "--policy", gap_policy, *_model_args(gold_model_dir, work))
    line = assert_clean_error(result, "trained for another model", "head_sha256")
    assert "architecture" not in line  # only the head differs


@pytest.fixture(scope="module")
def saved_classifiers(work, tiny_llama_dir):
    """An SVM and a CRF fitted on synthetic rows, saved for the tiny llama, so only the files can be wrong."""
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (20, 4, 2))
    y = (X[..., 0] > 0.5).astype(int)
    identity = EarlyExitModel.from_pretrained(str(tiny_llama_dir)).identity()
    return {kind: policy.fit(X, y).save(work / f"good-{kind}", identity)
            for kind, policy in (("svm", SVMPolicy()), ("crf", CRFPolicy()))}


def _copy(directory: Path, target: Path) -> Path:
    target.mkdir()
    for path in directory.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_saved_classifiers_work_before_corruption(work, saved_classifiers, prompts_file, tiny_llama_dir):
    for directory in saved_classifiers.values():
        result = ok("predict", prompts_file, "--policy", directory, *_model_args(tiny_llama_dir, work))
        assert len(result.stdout.splitlines()) == 20


def _flip_middle_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind, damage, keyword", [
    ("svm", lambda d: (d / "config.json").write_text("{garbage"), "not valid JSON"),
    ("crf", lambda d: (d / "config.json").write_bytes(b"\xff\xfe\x00junk"), "not valid JSON"),
    ("crf", lambda d: _flip_middle_bytes(d / "crf.npz"), "corrupted"),
    ("svm", lambda d: (d / "svm.skops").write_bytes(b"not a zip file"), "corrupted"),
    ("svm", lambda d: _flip_middle_bytes(d / "svm.skops"), "corrupted"),
    ("svm", lambda d: (d / "svm.skops").unlink(), "missing"),
], ids=["svm-config-garbage", "crf-config-binary", "crf-bytes-flipped", "svm-garbage", "svm-bytes-flipped",
        "svm-file-missing"])
def test_corrupted_classifier_is_refused(work, saved_classifiers, prompts_file, tiny_llama_dir, kind, damage,
                                         keyword, request):
    directory = _copy(saved_classifiers[kind], work / f"damaged-{request.node.callspec.id}")
    damage(directory)
    out = work / f"damaged-{request.node.callspec.id}.jsonl"
    result = invoke("predict", prompts_file, "--policy", directory, "--out", out, *_model_args(tiny_llama_dir, work))
    assert_clean_error(result, keyword)
    assert not out.exists()


@pytest.mark.parametrize("command", ["predict", "collect", "prompts", "train"])
def test_missing_input_file(work, gap_policy, tiny_llama_dir, command):
    missing = work / "no-such-file.jsonl"
    args = {
        "predict": ("predict", missing, "--policy", gap_policy, *_model_args(tiny_llama_dir, work)),
        "collect": ("collect", missing, "--out", work / "unused-rows.jsonl", *_model_args(tiny_llama_dir, work)),
        "prompts": ("prompts", missing, "--out", work / "unused-prompts.jsonl"),
        "train": ("train", missing, "--out", work / "unused-policy"),
    }[command]
    line = assert_clean_error(invoke(*args))
    assert "no-such-file.jsonl" in line and ("does not exist" in line or "no such" in line)


def test_missing_policy_directory(work, prompts_file, tiny_llama_dir):
    result = invoke("predict", prompts_file, "--policy", work / "no-policy", *_model_args(tiny_llama_dir, work))
    assert_clean_error(result, "no-policy", "does not exist")


def test_missing_model_directory(work):
    assert_clean_error(invoke("info", "--model", work / "no-model"), "no-model", "neither a local path")


def test_malformed_jsonl_line_names_its_number(work, gap_policy, tiny_llama_dir):
    prompts = work / "malformed.jsonl"
    prompts.write_text(json.dumps({"prompt": "Q: a\nA:"}) + "\n{\"prompt\": \"Q: b\n")
    result = invoke("predict", prompts, "--policy", gap_policy, *_model_args(tiny_llama_dir, work))
    assert_clean_error(result, "line 2", "not valid JSON")
    task = work / "malformed-task.jsonl"
    task.write_text(json.dumps({"input": "a", "output": "b"}) + "\n" + json.dumps({"input": "c"}) + "\n")
    result = invoke("prompts", task, "--out", work / "unused.jsonl", "--shots", 0)
    assert_clean_error(result, "line 2", "'output'")


def test_unknown_policy_kind_and_feature(work, llama_rows, prompts_file, tiny_llama_dir):
    assert_clean_error(invoke("train", llama_rows, "--out", work / "x", "--policy", "tree"), "--policy", "svm")
    result = invoke("collect", prompts_file, "--out", work / "bad-features.jsonl", "--features", "gap,colour",
                    *_model_args(tiny_llama_dir, work))
    assert_clean_error(result, "colour")
    result = invoke("train", llama_rows, "--out", work / "x", "--features", "gap,cos_mlp")
    assert_clean_error(result, "cos_mlp", "not collected")


def test_collect_into_a_file_of_other_features_is_refused(work, llama_rows, prompts_file, tiny_llama_dir):
    before = llama_rows.read_text()
    result = invoke("collect", prompts_file, "--out", llama_rows, "--features", "gap",
                    *_model_args(tiny_llama_dir, work))
    assert_clean_error(result, "other features")
    assert llama_rows.read_text() == before


def test_every_verb_is_registered_once_in_the_order_help_lists_them():
    from adainfer.cli.app import app

    names = [command.name or command.callback.__name__ for command in app.registered_commands]
    assert names == ["fit", "info", "profile", "prompts", "collect", "train", "evaluate", "predict", "eval", "report",
                     "export-traces", "transfer", "calibrate", "generate", "serve", "verify"]
    listed = invoke("--help").stdout
    positions = [listed.index(f" {name} ") for name in ("fit", "info", "collect", "predict", "eval", "calibrate", "generate",
                                                    "serve")]
    assert positions == sorted(positions)
