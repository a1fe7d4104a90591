import json
import os

import numpy as np
import pytest
from filelock import FileLock

from adainfer.data.tasks import LabelledPrompt
from adainfer.engine.files import lock_path
from adainfer.engine.model import EarlyExitModel
from adainfer.eval.collect import collect, prompt_rows
from adainfer.eval.traces import CollectionFileError, load_collection

FEATURES = ("gap", "top_prob", "depth")
PROMPTS = [
    LabelledPrompt("Q: red\nA: hot\n\nQ: blue\nA:", "cold"),
    LabelledPrompt("Q: one\nA:", "two"),
    LabelledPrompt("Q: up\nA: down\n\nQ: left\nA:", "right"),
]


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    return EarlyExitModel.from_pretrained(str(tiny_llama_dir))


@pytest.fixture(scope="module")
def fresh_file(model, tmp_path_factory):
    """All three prompts collected in one uninterrupted run."""
    path = tmp_path_factory.mktemp("fresh") / "rows.jsonl"
    assert collect(model, PROMPTS, path, FEATURES) == 3
    return path


def test_collection_has_one_row_per_prompt_and_layer(model, fresh_file):
    collection = load_collection(fresh_file)
    assert collection.features.shape == (3, 4, len(FEATURES))
    assert collection.labels.shape == collection.top1.shape == (3, 4)
    assert collection.feature_names == FEATURES
    assert collection.model_identity == model.identity()
    np.testing.assert_array_equal(collection.labels, collection.top1 == collection.gold[:, None])
    expected_gold = [model.answer_token(item.prompt, item.answer) for item in PROMPTS]
    assert collection.gold.tolist() == expected_gold
    np.testing.assert_allclose(collection.features[..., 2], np.tile([0.25, 0.5, 0.75, 1.0], (3, 1)))
    assert collection.seq_len.tolist() == [model.encode(item.prompt).shape[1] for item in PROMPTS]


def test_rows_are_the_models_own_full_depth_trace(model, fresh_file):
    collection = load_collection(fresh_file)
    for index, item in enumerate(PROMPTS):
        trace = model.trace(item.prompt, FEATURES)
        np.testing.assert_allclose(collection.features[index], trace.features, atol=1e-6)
        assert collection.top1[index].tolist() == trace.top1.tolist()


def test_file_is_a_header_then_rows_with_one_based_layers(model, fresh_file):
    lines = [json.loads(line) for line in fresh_file.read_text().splitlines()]
    assert len(lines) == 1 + 3 * 4
    assert lines[0]["num_layers"] == 4 and lines[0]["feature_names"] == list(FEATURES)
    assert [(row["prompt_index"], row["layer"]) for row in lines[1:5]] == [(0, 1), (0, 2), (0, 3), (0, 4)]


def test_on_prompt_reports_each_collected_index(model, tmp_path):
    seen = []
    collect(model, PROMPTS, tmp_path / "rows.jsonl", FEATURES, on_prompt=seen.append)
    assert seen == [0, 1, 2]


def test_resume_adds_only_missing_prompts_and_equals_a_fresh_run(model, fresh_file, tmp_path):
    path = tmp_path / "rows.jsonl"
    assert collect(model, PROMPTS[:2], path, FEATURES) == 2
    seen = []
    assert collect(model, PROMPTS, path, FEATURES, on_prompt=seen.append) == 1
    assert seen == [2]
    assert load_collection(path).features.shape[0] == 3
    assert path.read_text() == fresh_file.read_text()


def test_rerun_of_a_finished_file_adds_nothing(model, fresh_file, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(fresh_file.read_text())
    assert collect(model, PROMPTS, path, FEATURES) == 0
    assert path.read_text() == fresh_file.read_text()


@pytest.mark.parametrize("cut", [1, 5, 40])
def test_line_cut_by_an_interrupted_write_is_redone(model, fresh_file, tmp_path, cut):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(fresh_file.read_bytes()[:-cut])
    assert collect(model, PROMPTS, path, FEATURES) == (0 if cut == 1 else 1)  # 1 byte: only "\n"
    assert path.read_text() == fresh_file.read_text()
    assert load_collection(path).features.shape == (3, 4, 3)


def test_interrupted_run_keeps_finished_prompts(model, fresh_file, tmp_path):
    path = tmp_path / "rows.jsonl"

    def stop_after_first(index):
        if index == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect(model, PROMPTS, path, FEATURES, on_prompt=stop_after_first)
    assert load_collection(path).features.shape[0] == 1
    assert collect(model, PROMPTS, path, FEATURES) == 2
    assert path.read_text() == fresh_file.read_text()


def _rows_in(order, model, fail_after=None):
    """A row source that computes here but hands prompts back in `order` (positions into its
    pending list), as a pool of workers finishing out of order would; raises after `fail_after`."""

    def source(pending, feature_names, candidate_ids, prefix_text):
        for count, position in enumerate(order):
            if count == fail_after:
                raise KeyboardInterrupt
            index, item = pending[position]
            yield index, prompt_rows(model, index, item, feature_names, candidate_ids)

    return source


def test_rows_arriving_out_of_order_are_written_in_prompt_order(model, fresh_file, tmp_path):
    path = tmp_path / "rows.jsonl"
    seen = []
    assert collect(model, PROMPTS, path, FEATURES, on_prompt=seen.append, row_source=_rows_in([2, 0, 1], model)) == 3
    assert seen == [0, 1, 2]
    assert path.read_bytes() == fresh_file.read_bytes()


def test_an_interrupt_keeps_only_prompts_whose_predecessors_were_written(model, fresh_file, tmp_path):
    path = tmp_path / "rows.jsonl"
    with pytest.raises(KeyboardInterrupt):  # prompts 0 and 2 finished; 1 never did
        collect(model, PROMPTS, path, FEATURES, row_source=_rows_in([2, 0, 1], model, fail_after=2))
    assert load_collection(path).gold.shape == (1,)  # prompt 2 was held back, not written after 0
    assert collect(model, PROMPTS, path, FEATURES) == 2
    assert path.read_bytes() == fresh_file.read_bytes()


@pytest.mark.parametrize("order, message", [([0, 1, 1, 2], "came back twice"), ([0, 1], "no rows came back for "
                                                                                          "prompts 2")])
def test_a_row_source_that_repeats_or_drops_a_prompt_is_an_error(model, tmp_path, order, message):
    path = tmp_path / "rows.jsonl"
    with pytest.raises(CollectionFileError, match=message):
        collect(model, PROMPTS, path, FEATURES, row_source=_rows_in(order, model))
    assert load_collection(path).gold.shape == (2,)  # what came back in order is kept


def test_resuming_with_other_features_is_refused(model, fresh_file, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(fresh_file.read_text())
    with pytest.raises(CollectionFileError, match="other features"):
        collect(model, PROMPTS, path, ("gap", "top_prob"))
    assert path.read_text() == fresh_file.read_text()  # refused before touching the file


def test_resuming_with_another_model_is_refused(fresh_file, tiny_qwen2_dir, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(fresh_file.read_text())
    qwen2 = EarlyExitModel.from_pretrained(str(tiny_qwen2_dir))
    with pytest.raises(CollectionFileError, match="another model"):
        collect(qwen2, PROMPTS, path, FEATURES)


def test_collecting_into_a_non_collection_file_is_refused(model, tmp_path):
    path = tmp_path / "prompts.jsonl"
    original = json.dumps({"prompt": "Q: a\nA:", "answer": "b"}) + "\n"
    path.write_text(original)
    with pytest.raises(CollectionFileError):
        collect(model, PROMPTS, path, FEATURES)
    assert path.read_text() == original


def test_empty_existing_file_is_collected_into(model, fresh_file, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.touch()
    assert collect(model, PROMPTS, path, FEATURES) == 3
    assert path.read_text() == fresh_file.read_text()


def test_missing_parent_folders_are_created(model, tmp_path):
    path = tmp_path / "a" / "b" / "rows.jsonl"
    collect(model, PROMPTS[:1], path, FEATURES)
    assert load_collection(path).features.shape == (1, 4, 3)


def test_load_missing_file(tmp_path):
    with pytest.raises(CollectionFileError, match="no such collection file"):
        load_collection(tmp_path / "absent.jsonl")


@pytest.mark.parametrize("text", ["", '{"prompt": "Q: a\\nA:", "answer": "b"}\n', "[1, 2]\n"])
def test_load_non_collection_file(tmp_path, text):
    path = tmp_path / "other.jsonl"
    path.write_text(text)
    with pytest.raises(CollectionFileError, match="not a collection file|expected a JSON object"):
        load_collection(path)


def test_load_header_only_file(fresh_file, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(fresh_file.read_text().splitlines()[0] + "\n")
    with pytest.raises(CollectionFileError, match="no complete prompt"):
        load_collection(path)


def test_load_names_the_line_of_a_row_without_a_feature(fresh_file, tmp_path):
    lines = fresh_file.read_text().splitlines()
    row = json.loads(lines[2])
    del row["top_prob"]
    lines[2] = json.dumps(row)
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CollectionFileError, match=r"line 3: row lacks 'top_prob'"):
        load_collection(path)


def test_load_names_an_incomplete_prompt_instead_of_skipping_it(fresh_file, tmp_path):
    # Skipped silently, a half-collected file once trained a policy on 1 of 10 prompts.
    lines = fresh_file.read_text().splitlines()
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines[:-1]) + "\n")  # last prompt lost its layer-4 row
    with pytest.raises(CollectionFileError, match="prompts 2 do not have exactly one row for each of the 4 layers"):
        load_collection(path)


def test_load_names_a_prompt_written_twice(fresh_file, tmp_path):
    lines = fresh_file.read_text().splitlines()
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines + lines[1:5]) + "\n")  # prompt 0 again, as a second writer did
    with pytest.raises(CollectionFileError, match="prompts 0 do not have exactly one row"):
        load_collection(path)


def test_resume_refuses_a_changed_prompts_file(model, fresh_file, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(fresh_file.read_bytes())
    changed = [PROMPTS[0], LabelledPrompt("Q: something else\nA:", PROMPTS[1].answer), *PROMPTS[2:]]
    with pytest.raises(CollectionFileError, match="prompts 1 differ from the prompts that were collected"):
        collect(model, changed, path, FEATURES)
    with pytest.raises(CollectionFileError, match="holds prompts 2 but the prompts file has 2"):
        collect(model, PROMPTS[:2], path, FEATURES)
    assert path.read_bytes() == fresh_file.read_bytes()


def test_resume_refuses_rows_without_prompt_hashes(model, fresh_file, tmp_path):
    path = tmp_path / "rows.jsonl"
    header, *rows = fresh_file.read_text().splitlines()
    legacy = [json.dumps({k: v for k, v in json.loads(row).items() if k != "prompt_sha256"}) for row in rows]
    path.write_text("\n".join([header, *legacy]) + "\n")
    with pytest.raises(CollectionFileError, match="written before rows recorded prompt_sha256"):
        collect(model, PROMPTS, path, FEATURES)
    assert load_collection(path).features.shape == (3, 4, 3)  # still readable, only not resumable


def test_an_interrupted_resume_rewrite_keeps_the_file(model, fresh_file, tmp_path, monkeypatch):
    # The rewrite of a resumed file used to truncate it first: an interrupt left 0 bytes.
    path = tmp_path / "rows.jsonl"
    path.write_bytes(fresh_file.read_bytes()[:-40])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        collect(model, PROMPTS, path, FEATURES)
    assert path.read_bytes() == fresh_file.read_bytes()[:-40]
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_second_writer_is_refused_while_the_first_holds_the_file(model, tmp_path):
    path = tmp_path / "rows.jsonl"
    with FileLock(lock_path(path)):
        with pytest.raises(CollectionFileError, match="another adainfer run is writing"):
            collect(model, PROMPTS, path, FEATURES)
    assert not path.exists()


def test_select_returns_columns_in_the_asked_order(fresh_file):
    collection = load_collection(fresh_file)
    np.testing.assert_array_equal(collection.select(["depth", "gap"]),
                                  collection.features[..., [2, 0]])


def test_select_of_an_uncollected_feature_names_it(fresh_file):
    collection = load_collection(fresh_file)
    with pytest.raises(CollectionFileError, match="cos_attn"):
        collection.select(["gap", "cos_attn"])


def test_npz_traces_read_back_to_the_same_arrays_and_hash(fresh_file, tmp_path):
    from adainfer.eval.traces import load_collection_npz, save_collection_npz

    collection = load_collection(fresh_file)
    back = load_collection_npz(save_collection_npz(collection, tmp_path / "traces.npz"))
    for name in ("features", "labels", "top1", "gold", "seq_len"):
        assert np.array_equal(getattr(back, name), getattr(collection, name)), name
    assert back.feature_names == collection.feature_names and back.model_identity == collection.model_identity
    assert back.content_sha256() == collection.content_sha256()


@pytest.mark.parametrize("damage", ["garbage", "missing array", "wrong shape"])
def test_a_damaged_npz_is_refused_with_its_name(fresh_file, tmp_path, damage):
    from adainfer.eval.traces import load_collection_npz, save_collection_npz

    path = tmp_path / "traces.npz"
    if damage == "garbage":
        path.write_bytes(b"PK\x03\x04 not a zip at all")
    else:
        collection = load_collection(fresh_file)
        arrays = {"features": collection.features, "labels": collection.labels, "top1": collection.top1,
                  "gold": collection.gold, "seq_len": collection.seq_len, "candidate_ids": np.zeros(0, dtype=np.int32),
                  "feature_names": np.array(collection.feature_names), "model_identity": np.array("{}")}
        if damage == "missing array":
            del arrays["gold"]
        else:
            arrays["top1"] = arrays["top1"][:, :-1]
        np.savez(path, **arrays)
    with pytest.raises(CollectionFileError, match="traces.npz"):
        load_collection_npz(path)
