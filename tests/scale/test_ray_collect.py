"""Trace collection on Ray workers writes the same bytes as a run in one process: whole, resumed
after an interrupt, and with a worker killed mid-run.

One local Ray of 2 CPUs serves the module (starting Ray takes seconds). Both sides trace with one
torch thread (the root conftest sets it here; workers set it themselves), so their floats agree
to the last bit.
"""

import json
import os
import socket

import pytest
from typer.testing import CliRunner

ray = pytest.importorskip("ray")

from adainfer.cli.app import app  # noqa: E402
from adainfer.data.tasks import LabelledPrompt  # noqa: E402
from adainfer.engine.features import CANDIDATE_FEATURES  # noqa: E402
from adainfer.engine.model import EarlyExitModel  # noqa: E402
from adainfer.eval.collect import collect, load_collection  # noqa: E402
from adainfer.fit import pipeline  # noqa: E402
from adainfer.scale.collect import (PromptTracer, RayRows, actor_resources, check_reachable, connected,  # noqa: E402
                                    default_workers)
from fit_data import parity_examples, write_task  # noqa: E402

FEATURES = ("gap", "top_prob", "depth", "agree_prev") + CANDIDATE_FEATURES
CHOICES = ["red", "blue", "green"]
PROMPTS = [LabelledPrompt(f"Q: colour {i}\nA: {CHOICES[i % 2]}\n\nQ: colour {i + 1}\nA:", CHOICES[(i + 1) % 3])
           for i in range(12)]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    with connected(workers=2):
        yield


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    return EarlyExitModel.from_pretrained(str(tiny_llama_dir))


@pytest.fixture(scope="module")
def candidates(model):
    return model.candidate_tokens(CHOICES)


@pytest.fixture(scope="module")
def local_file(model, candidates, tmp_path_factory):
    """All prompts collected in this process, the reference every Ray run must equal byte for byte."""
    path = tmp_path_factory.mktemp("local") / "rows.jsonl"
    collect(model, PROMPTS, path, FEATURES, candidate_ids=candidates)
    return path


def ray_rows(model, tiny_llama_dir, tracer=PromptTracer):
    return RayRows(str(tiny_llama_dir), None, model.identity(), workers=2, tracer=tracer)


def test_sharded_collection_equals_local_collection_byte_for_byte(model, tiny_llama_dir, candidates, local_file,
                                                                 tmp_path):
    path = tmp_path / "rows.jsonl"
    written = []
    added = collect(model, PROMPTS, path, FEATURES, on_prompt=written.append, candidate_ids=candidates,
                    row_source=ray_rows(model, tiny_llama_dir))
    assert added == len(PROMPTS) and written == list(range(len(PROMPTS)))
    assert path.read_bytes() == local_file.read_bytes()
    assert load_collection(path).cand_top1.shape == (len(PROMPTS), model.num_layers)


def test_an_interrupted_sharded_run_with_a_torn_prompt_resumes_to_the_same_bytes(model, tiny_llama_dir, candidates,
                                                                                local_file, tmp_path):
    path = tmp_path / "rows.jsonl"

    def stop_after_three(index):
        if index == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect(model, PROMPTS, path, FEATURES, on_prompt=stop_after_three, candidate_ids=candidates,
                row_source=ray_rows(model, tiny_llama_dir))
    assert len(load_collection(path)) == 3
    # The fourth prompt torn as a killed driver would leave it: two whole rows and half a line.
    fourth = [line for line in local_file.read_text().splitlines() if json.loads(line).get("prompt_index") == 3]
    with path.open("a") as handle:
        handle.write("\n".join(fourth[:2]) + "\n" + fourth[2][:40])
    added = collect(model, PROMPTS, path, FEATURES, candidate_ids=candidates,
                    row_source=ray_rows(model, tiny_llama_dir))
    assert added == len(PROMPTS) - 3
    assert path.read_bytes() == local_file.read_bytes()


def dying_tracer(marker, at_index):
    """A tracer whose worker process dies (no cleanup, as a killed node would) when handed prompt
    `at_index`, once: the marker file tells the restarted worker not to die again."""

    class DyingTracer(PromptTracer):
        def __call__(self, batch):
            if at_index in batch["index"].tolist() and not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)
            return super().__call__(batch)

    return DyingTracer


def test_a_worker_killed_mid_run_loses_no_rows_and_duplicates_none(model, tiny_llama_dir, candidates, local_file,
                                                                  tmp_path):
    path, marker = tmp_path / "rows.jsonl", tmp_path / "died"
    added = collect(model, PROMPTS, path, FEATURES, candidate_ids=candidates,
                    row_source=ray_rows(model, tiny_llama_dir, dying_tracer(str(marker), at_index=5)))
    assert marker.exists()  # a worker did die
    assert added == len(PROMPTS)
    assert path.read_bytes() == local_file.read_bytes()


def test_a_prompt_a_worker_cannot_trace_is_one_clear_error_after_the_rows_before_it(model, tiny_llama_dir, tmp_path):
    path = tmp_path / "rows.jsonl"
    prompts = PROMPTS[:2] + [LabelledPrompt("Q: colour\nA:", " ")] + PROMPTS[3:5]
    with pytest.raises(ValueError, match="^prompt 2: empty answer$"):
        collect(model, prompts, path, ("gap",), row_source=ray_rows(model, tiny_llama_dir))
    assert len(load_collection(path)) == 2


def test_workers_refuse_a_model_other_than_the_drivers(model, tiny_llama_dir, tiny_qwen2_dir, tmp_path):
    other = RayRows(str(tiny_qwen2_dir), None, model.identity(), workers=1)
    with pytest.raises(ValueError, match="another model"):
        collect(model, PROMPTS[:2], tmp_path / "rows.jsonl", ("gap",), row_source=other)


def test_eval_with_ray_writes_the_same_cache_as_without(tiny_llama_dir, tmp_path):
    task = tmp_path / "parity.jsonl"
    task.write_text("".join(json.dumps({"input": f"n{i}", "output": ["even", "odd"][i % 2]}) + "\n"
                            for i in range(30)))
    caches = {}
    for name, extra in (("local", ()), ("ray", ("--ray", "--workers", "2"))):
        result = CliRunner().invoke(app, [str(arg) for arg in (
            "eval", "--tasks", task, "--shots", "1", "--limit", 4, "--train-limit", 5, "--runs", tmp_path / name,
            "--out", tmp_path / f"{name}-out", "--model", tiny_llama_dir, *extra)])
        assert result.exit_code == 0, result.output
        caches[name] = {path.relative_to(tmp_path / name): path.read_bytes()
                        for path in sorted((tmp_path / name).rglob("*.jsonl"))}
    assert len(caches["local"]) == 4  # {train,eval}.jsonl and their prompts
    assert caches["ray"] == caches["local"]
    command = json.loads((tmp_path / "ray-out" / "tasks.json").read_text())["command"]
    assert "--ray --workers 2" in command


def test_fit_with_ray_writes_the_same_cache_and_classifier_as_without(tiny_spaced_dir, tmp_path, monkeypatch):
    # The first check is priced by a live timing of a check; a fixed price keeps the two fits comparable.
    first_check = pipeline.cheapest_first_check
    monkeypatch.setattr(pipeline, "cheapest_first_check", lambda oracle, layers, _cost: first_check(oracle, layers, 0.2))
    task = tmp_path / "parity.jsonl"
    write_task(task, parity_examples(120))
    saved = {}
    for name, extra in (("local", ()), ("ray", ("--ray", "--workers", "2"))):
        result = CliRunner().invoke(app, [str(arg) for arg in (
            "fit", task, "-o", tmp_path / f"{name}-classifier", "--shots", 2, "--train", 30, "--calibration", 40,
            "--test", 20, "--epsilon", 0.1, "--delta", 0.1, "--timing-prompts", 0, "--resplits", 0,
            "--runs", tmp_path / name, "--model", tiny_spaced_dir, *extra)])
        assert result.exit_code == 0, result.output
        saved[name] = {path.relative_to(tmp_path / name): path.read_bytes()
                       for path in sorted((tmp_path / name).rglob("*.jsonl"))}
        saved[f"{name}-card"] = json.loads((tmp_path / f"{name}-classifier" / "card.json").read_text())
    assert len(saved["local"]) == 4  # {train,held_out}.jsonl and their prompts
    assert saved["ray"] == saved["local"]
    # The same traces fit the same classifier; what differs is timed afresh (the cost profile and
    # the time it estimates) or names the command.
    local, card = saved["local-card"], saved["ray-card"]
    for figures in (local, card):
        del figures["test"]["estimated_time_ratio"]
    assert [card[key] for key in ("first_check", "certificate", "test")] == \
        [local[key] for key in ("first_check", "certificate", "test")]
    assert "--ray --workers 2" in card["command"]


@pytest.mark.parametrize("cluster, resources, workers", [
    ({"CPU": 16.0, "memory": 1e9}, {"num_cpus": 1}, 16),
    ({"CPU": 16.0, "GPU": 2.0}, {"num_cpus": 1, "num_gpus": 1}, 2),
    ({"CPU": 0.5}, {"num_cpus": 1}, 1),
])
def test_workers_take_one_gpu_each_when_the_cluster_has_gpus(cluster, resources, workers):
    assert actor_resources(cluster) == resources
    assert default_workers(cluster) == workers


def test_an_address_where_nothing_answers_is_refused_at_once_not_retried_for_minutes():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_reachable(f"127.0.0.1:{port}")
        check_reachable(f"ray://127.0.0.1:{port}")
    with pytest.raises(ConnectionError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}")  # closed now
    check_reachable("auto")  # Ray's to find
