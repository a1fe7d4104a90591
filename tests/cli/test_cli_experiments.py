"""`adainfer eval` and `adainfer report` end to end on a tiny model and a user JSONL task."""

import json
import sys

import pytest

from cli_runner import assert_clean_error, invoke, ok


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "parity.jsonl"
    rows = [{"input": f"n{i}", "output": ["even", "odd"][i % 2]} for i in range(40)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, task_file, tiny_llama_dir):
    work = tmp_path_factory.mktemp("eval")
    result = ok("eval", "--tasks", task_file, "--shots", "0,2", "--limit", 6, "--train-limit", 8,
                "--runs", work / "runs", "--out", work / "out", "--model", tiny_llama_dir, "--cache-dir", work / "cache")
    return work, result


def test_eval_of_a_user_task_writes_the_tables(evaluated, task_file):
    work, _ = evaluated
    tasks = json.loads((work / "out" / "tasks.json").read_text())
    assert tasks["command"].startswith("adainfer eval --tasks " + str(task_file))
    assert {(row["regime"], row["method"]) for row in tasks["rows"]} >= {
        ("zero-shot", "dense"), ("zero-shot", "stable-answer oracle"), ("few-shot", "gap>0.8")}
    assert all(row["prompts"] == 6 for row in tasks["rows"] if row["method"] == "dense")
    assert (work / "out" / "figures" / "layer_accuracy.png").exists()


def test_report_rebuilds_the_same_tables_from_the_cache(evaluated):
    work, _ = evaluated
    [model_folder] = (work / "runs").iterdir()
    ok("report", model_folder, "--out", work / "again")
    first = json.loads((work / "out" / "tasks.json").read_text())["rows"]
    again = json.loads((work / "again" / "tasks.json").read_text())["rows"]
    assert first == again


@pytest.mark.parametrize("args, keywords", [
    (("--tasks", "nope"), ("unknown task 'nope'",)),
    (("--tasks", "missing.jsonl"), ("missing.jsonl", "does not exist")),
    (("--tasks", "sst2", "--shots", "five"), ("comma-separated integers",)),
    (("--tasks", "sst2", "--limit", 0), ("at least 1",)),
])
def test_eval_rejects_bad_arguments_before_loading_anything(args, keywords):
    assert_clean_error(invoke("eval", *args, "--model", "/nonexistent/model"), *keywords)


def test_eval_rejects_a_grid_with_too_few_demonstrations_before_loading_the_model(task_file, tmp_path):
    # 40 rows cannot give 60 demonstrations; the 2-shot setting alone would have been fine.
    result = invoke("eval", "--tasks", task_file, "--shots", "2,60", "--limit", 2, "--train-limit", 2,
                    "--runs", tmp_path / "runs", "--model", "/nonexistent/model")
    assert_clean_error(result, "parity/60shot-seed0", "cannot be built")
    assert not (tmp_path / "runs").exists()


def test_report_can_keep_only_some_numbers_of_demonstrations(evaluated):
    work, _ = evaluated
    [model_folder] = [path for path in (work / "runs").iterdir() if path.name.startswith("Llama")]
    ok("report", model_folder, "--out", work / "zero", "--shots", "0")
    rows = json.loads((work / "zero" / "rows.json").read_text())["rows"]
    assert {row["shots"] for row in rows} == {0}
    assert_clean_error(invoke("report", model_folder, "--out", work / "none", "--shots", "7"), "no collected settings")


def test_report_on_an_empty_folder_fails_clearly(tmp_path):
    assert_clean_error(invoke("report", tmp_path, "--out", tmp_path / "out"), "no collected settings")


def test_calibrate_saves_a_policy_with_its_certificate(evaluated):
    work, _ = evaluated
    folder = next((work / "runs").iterdir()) / "parity" / "0shot-seed0"
    result = ok("calibrate", folder / "train.jsonl", folder / "eval.jsonl", "--out", work / "calibrated",
                "--epsilon", 0.5, "--delta", 0.2, "--features", "gap,depth")
    certificate = json.loads(result.stdout)["certificate"]
    assert certificate["calibration_prompts"] == 6 and certificate["epsilon"] == 0.5
    from adainfer.policies.io import load_policy
    policy = load_policy(work / "calibrated")
    assert policy.kind == "calibrated-svm" and policy.certificate_.calibration_prompts == 6


@pytest.mark.parametrize("args, keywords", [
    (("--epsilon", 0), ("epsilon and delta",)),
    (("--first-check", 99), ("--first-check",)),
    (("--first-check", 0), ("--first-check",)),
    (("--features", "nope"), ("unknown or no features",)),
])
def test_calibrate_rejects_bad_arguments(evaluated, args, keywords):
    work, _ = evaluated
    folder = next((work / "runs").iterdir()) / "parity" / "0shot-seed0"
    result = invoke("calibrate", folder / "train.jsonl", folder / "eval.jsonl", "--out", work / "bad", *args)
    assert_clean_error(result, *keywords)
    assert not (work / "bad").exists()


def test_calibrate_refuses_a_first_check_at_the_last_layer_and_keeps_one_below_it(evaluated):
    from adainfer.eval.traces import load_collection
    from adainfer.policies.io import load_policy

    work, _ = evaluated
    folder = next((work / "runs").iterdir()) / "parity" / "0shot-seed0"
    layers = load_collection(folder / "train.jsonl").top1.shape[1]
    rows = (folder / "train.jsonl", folder / "eval.jsonl")
    result = invoke("calibrate", *rows, "--out", work / "last", "--first-check", layers, "--features", "gap,depth")
    assert_clean_error(result, "--first-check", f"1..{layers - 1}", "no early exit")
    assert not (work / "last").exists()
    ok("calibrate", *rows, "--out", work / "below", "--first-check", layers - 1, "--features", "gap,depth")
    policy = load_policy(work / "below")
    assert policy.first_check == layers - 1 and len(policy.threshold_grid_) > 0


def test_candidate_features_from_collect_to_predict(tmp_path, task_file, tiny_llama_dir):
    model = ("--model", tiny_llama_dir, "--cache-dir", tmp_path / "cache")
    ok("prompts", task_file, "--out", tmp_path / "p.jsonl", "--shots", 1, "--limit", 6)
    ok("collect", tmp_path / "p.jsonl", "-o", tmp_path / "rows.jsonl", "--features", "cand_gap,depth",
       "--choices", "even,odd", *model)
    ok("train", tmp_path / "rows.jsonl", "--policy", "gap", "--features", "cand_gap", "--threshold", 2.0,
       "-o", tmp_path / "policy")
    result = ok("predict", tmp_path / "p.jsonl", "-p", tmp_path / "policy", "--choices", "even,odd", *model)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 6 and all(r["answer_text"] == " " for r in records)  # " even"/" odd" start with " "
    # The policy recorded its answer set: without --choices it is used.
    assert ok("predict", tmp_path / "p.jsonl", "-p", tmp_path / "policy", *model).stdout == result.stdout
    config = json.loads((tmp_path / "policy" / "config.json").read_text())
    assert config["candidate_ids"] == [95]
    config["candidate_ids"] = None  # as a policy without a recorded answer set
    (tmp_path / "policy" / "config.json").write_text(json.dumps(config))
    missing = invoke("predict", tmp_path / "p.jsonl", "-p", tmp_path / "policy", *model)
    assert_clean_error(missing, "candidate answer tokens")
    assert_clean_error(invoke("collect", tmp_path / "p.jsonl", "-o", tmp_path / "r2.jsonl", "--choices", "even",
                              *model), "at least two")


def test_transfer_replays_policies_across_two_models(evaluated, task_file, tiny_qwen2_dir):
    work, _ = evaluated
    ok("eval", "--tasks", task_file, "--shots", "2", "--limit", 6, "--train-limit", 8, "--runs", work / "runs",
       "--out", work / "out-qwen", "--model", tiny_qwen2_dir, "--cache-dir", work / "cache")
    llama, qwen = sorted((work / "runs").iterdir())
    ok("transfer", f"a={llama}", f"b={qwen}", "--out", work / "transfer")
    table = json.loads((work / "transfer" / "inter_model_tasks.json").read_text())
    assert table["command"] == f"adainfer transfer a={llama} b={qwen} --out {work / 'transfer'}"
    pairs = {(row["train_model"], row["eval_model"]) for row in table["rows"]}
    assert pairs == {("a", "a"), ("a", "b"), ("b", "a"), ("b", "b")}
    # Only the 2-shot setting was collected with both models.
    assert {row["shots"] for row in table["rows"]} == {"2"}
    assert (work / "transfer" / "inter_model.md").read_text().startswith("# Inter-model generalization")


def test_transfer_needs_two_models_with_a_shared_setting(evaluated, tmp_path):
    work, _ = evaluated
    model_folder = next((work / "runs").iterdir())
    assert_clean_error(invoke("transfer", model_folder, "--out", tmp_path), "at least two")
    assert_clean_error(invoke("transfer", f"x={model_folder}", f"x={model_folder}", "--out", tmp_path), "given twice")


def test_exported_traces_rebuild_the_same_tables_and_take_a_cost_profile(evaluated, tiny_llama_dir):
    work, _ = evaluated
    [model_folder] = (work / "runs").glob("LlamaForCausalLM-*")
    ok("export-traces", model_folder, "--out", work / "traces")
    assert sorted(path.name for path in (work / "traces").glob("*/*/*.npz")) == ["eval.npz", "eval.npz",
                                                                                 "train.npz", "train.npz"]
    ok("report", work / "traces", "--out", work / "from-traces")
    ok("report", model_folder, "--out", work / "from-cache")
    for name in ("tasks.csv", "calibration.csv", "provenance.json"):
        assert (work / "from-traces" / name).read_bytes() == (work / "from-cache" / name).read_bytes(), name
    ok("profile", "--model", tiny_llama_dir, "--cache-dir", work / "cache", "--seq-lens", "4,8", "--repeats", 1,
       "-o", work / "traces" / "cost_profile.json")
    ok("report", work / "traces", "--out", work / "timed")
    timed = json.loads((work / "timed" / "tasks.json").read_text())["rows"]
    assert any(isinstance(row.get("estimated_time_ratio"), float) for row in timed)


def test_report_refuses_a_cost_profile_of_another_model(evaluated, tmp_path):
    work, _ = evaluated
    [model_folder] = (work / "runs").glob("LlamaForCausalLM-*")
    profile = {"model_identity": {"architecture": "Other", "num_layers": 4, "head_sha256": "x"}, "device": "cpu",
               "torch_threads": 1, "seq_lens": [4], "layer_seconds": [1.0], "full_check_seconds": [1.0],
               "candidate_check_seconds": [1.0], "dense_seconds": [1.0], "candidate_count": 4, "repeats": 1}
    (tmp_path / "other.json").write_text(json.dumps(profile))
    result = invoke("report", model_folder, "--out", tmp_path / "out", "--cost-profile", tmp_path / "other.json")
    assert_clean_error(result, "measured on another model")
    (tmp_path / "bad.json").write_text("{not json")
    assert_clean_error(invoke("report", model_folder, "--out", tmp_path / "out", "--cost-profile",
                              tmp_path / "bad.json"), "not a cost profile")


@pytest.mark.parametrize("args, keywords", [
    (("--workers", 2), ("--address and --workers", "add --ray")),
    (("--address", "auto"), ("add --ray",)),
    (("--ray", "--workers", 0), ("--workers must be at least 1",)),
])
def test_eval_rejects_ray_options_that_cannot_run_before_loading_anything(task_file, args, keywords):
    assert_clean_error(invoke("eval", "--tasks", task_file, *args, "--model", "/nonexistent/model"), *keywords)


def test_eval_with_ray_but_without_ray_installed_names_the_extra_to_install(task_file, tiny_llama_dir, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "adainfer.scale.collect", raising=False)
    result = invoke("eval", "--tasks", task_file, "--shots", "1", "--limit", 2, "--train-limit", 2, "--ray",
                    "--runs", tmp_path / "runs", "--model", tiny_llama_dir)
    assert_clean_error(result, "--ray needs Ray", 'pip install -e ".[ray]"')
    assert not (tmp_path / "runs").exists()
