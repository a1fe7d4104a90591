"""The experiment grid's collection stage on a tiny model: splits, caching, resuming."""

import json

import numpy as np
import pytest

from adainfer.data.tasks import TASKS, TaskSpec, read_prompts_jsonl
from adainfer.engine.model import EarlyExitModel
from adainfer.eval.traces import CollectionFileError, load_collection
from adainfer.data.task_data import load_task
from adainfer.engine.model import model_slug
from adainfer.eval.harness import BASE_FEATURES, HarnessError, Setting, collect_setting, load_setting


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    return EarlyExitModel.from_pretrained(str(tiny_llama_dir))


@pytest.fixture()
def task_file(tmp_path):
    path = tmp_path / "colours.jsonl"
    rows = [{"input": f"item {i}", "output": ["red", "blue", "green"][i % 3]} for i in range(40)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_user_task_is_split_in_two_disjoint_halves(task_file):
    task = load_task(str(task_file))
    assert task.name == "colours" and task.choices is None
    assert len(task.train) + len(task.eval) == 40
    assert not {e.input for e in task.train} & {e.input for e in task.eval}


def test_mmlu_trains_classifiers_on_test_rows_never_evaluated():
    task = load_task("mmlu")
    assert len(task.train) == 285  # the dev rows give demonstrations only
    classifier, evaluated = {e.input for e in task.classifier_queries}, {e.input for e in task.eval}
    assert not classifier & evaluated
    assert not evaluated & {e.input for e in task.train}
    assert len(classifier) > 6000 and len(evaluated) > 6000


def test_collects_train_and_eval_prompts_with_demonstrations_from_train(model, task_file, tmp_path):
    data = collect_setting(model, Setting(str(task_file), shots=2), tmp_path / "runs", 4, 3)
    assert (len(data.train), len(data.eval)) == (4, 3)
    assert data.train.feature_names == BASE_FEATURES
    folder = tmp_path / "runs" / model_slug(model) / "colours" / "2shot-seed0"
    train_inputs = {e.input for e in load_task(str(task_file)).train}
    for item in read_prompts_jsonl(folder / "eval.prompts.jsonl"):
        *demos, query = item.prompt.split("\n\n")
        assert query.removeprefix("Q: ").removesuffix("\nA:") not in train_inputs
        assert len(demos) == 2 and all(d.split("\n")[0].removeprefix("Q: ") in train_inputs for d in demos)


def test_a_larger_limit_extends_the_cache_and_keeps_earlier_prompts(model, task_file, tmp_path):
    runs = tmp_path / "runs"
    first = collect_setting(model, Setting(str(task_file), shots=1), runs, 2, 2)
    folder = runs / model_slug(model) / "colours" / "1shot-seed0"
    before = read_prompts_jsonl(folder / "eval.prompts.jsonl")
    second = collect_setting(model, Setting(str(task_file), shots=1), runs, 2, 5)
    assert read_prompts_jsonl(folder / "eval.prompts.jsonl")[:2] == before
    np.testing.assert_array_equal(second.eval.features[:2], first.eval.features)
    assert len(second.eval) == 5 and len(load_collection(folder / "eval.jsonl")) == 5
    smaller = collect_setting(model, Setting(str(task_file), shots=1), runs, 2, 1)
    assert len(smaller.eval) == 1  # the cache holds more; only what was asked is returned


def test_a_cache_from_other_prompts_is_refused(model, task_file, tmp_path):
    runs = tmp_path / "runs"
    collect_setting(model, Setting(str(task_file), shots=1), runs, 2, 2)
    prompts = runs / model_slug(model) / "colours" / "1shot-seed0" / "eval.prompts.jsonl"
    prompts.write_text(prompts.read_text().replace("item", "thing"))
    with pytest.raises(CollectionFileError, match="other prompts"):
        collect_setting(model, Setting(str(task_file), shots=1), runs, 2, 2)


def test_closed_answer_tasks_collect_candidate_features_and_reload_without_the_model(model, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    (data_dir / "yn").mkdir(parents=True)
    for split in ("train", "eval"):
        rows = [{"input": f"{split} {i}", "output": ["yes", "no"][i % 2]} for i in range(6)]
        (data_dir / "yn" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def read(path):
        return [(r["input"], r["output"], "") for r in map(json.loads, path.read_text().splitlines())]

    monkeypatch.setitem(TASKS, "yn", TaskSpec("yn", "yn/train.jsonl", "yn/eval.jsonl", read, read,
                                              ("yes", "no"), "toy"))
    data = collect_setting(model, Setting("yn", shots=1), tmp_path / "runs", 3, 2, data_dir)
    assert data.group == "toy"
    assert len(data.eval.candidate_ids) == 1  # " yes" and " no" both start with " " for this tokenizer
    assert data.eval.cand_top1.shape == (2, model.num_layers)
    assert "cand_gap" in data.eval.feature_names
    again = load_setting(tmp_path / "runs" / model_slug(model) / "yn" / "1shot-seed0")
    np.testing.assert_array_equal(again.eval.features, data.eval.features)
    assert again.setting == Setting("yn", 1, 0)


def test_too_few_demonstrations_name_the_setting(model, tmp_path):
    with pytest.raises(HarnessError, match="mmlu/10shot-seed0"):
        collect_setting(model, Setting("mmlu", shots=10), tmp_path / "runs", 1, 1)


def test_a_cache_extended_by_a_larger_run_reports_on_the_prompts_of_its_setting(tmp_path):
    from synthetic_traces import synthetic

    from adainfer.eval.traces import save_collection_npz
    from adainfer.eval.harness import Setting, SettingData, export_setting, load_setting

    data = SettingData(Setting("a", 5), "toys", synthetic(40, 0), synthetic(30, 1))
    folder = export_setting(data, tmp_path / "a" / "5shot-seed0")
    save_collection_npz(synthetic(60, 0), folder / "train.npz")  # another run collected 20 more
    loaded = load_setting(folder)
    assert len(loaded.train) == 40 and len(loaded.eval) == 30
    meta = json.loads((folder / "setting.json").read_text())
    meta["eval_prompts"] = 31
    (folder / "setting.json").write_text(json.dumps(meta))
    with pytest.raises(HarnessError, match="eval_prompts=31"):
        load_setting(folder)
