"""Concurrent writers, SIGKILL at random points, a full disk: nothing is lost or mixed, reruns equal clean runs."""

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cli_runner import assert_clean_error, invoke, ok
from fault_data import IDENTITY, make_traces
from filelock import FileLock

from adainfer.cli import answering
from adainfer.engine.files import lock_path
from adainfer.policies.io import load_policy
from adainfer.policies.svm import SVMPolicy

SRC = Path(__file__).resolve().parents[2] / "src"
# collect, train and predict in one process: a kill at a random time lands in any of them.
PIPELINE = """
import sys
from adainfer.cli.app import app
prompts, rows, policy, out, model, cache = sys.argv[1:]
print("started", flush=True)
for args in (["collect", prompts, "-o", rows, "--model", model, "--cache-dir", cache],
             ["train", rows, "-o", policy, "--policy", "gap", "--threshold", "0.05"],
             ["predict", prompts, "-p", policy, "-o", out, "--model", model, "--cache-dir", cache]):
    try:
        app(args)
    except SystemExit as code:
        if code.code:
            raise
"""


def prompts_file(path: Path, count: int = 24) -> Path:
    lines = [json.dumps({"prompt": f"Q: w{i}\nA: {'yes' if i % 3 else 'no'}\n\nQ: v{i}\nA:", "answer": "yes"})
             for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def pipeline_args(folder: Path, prompts: Path, model_dir: Path) -> list[str]:
    return [str(prompts), str(folder / "rows.jsonl"), str(folder / "policy"), str(folder / "out.jsonl"),
            str(model_dir), str(folder / "cache")]


def run_in_process(prompts, rows, policy, out, model, cache) -> None:
    ok("collect", prompts, "-o", rows, "--model", model, "--cache-dir", cache)
    ok("train", rows, "-o", policy, "--policy", "gap", "--threshold", "0.05")
    ok("predict", prompts, "-p", policy, "-o", out, "--model", model, "--cache-dir", cache)


def visible_files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and not any(part.startswith(".") or part == "cache"
                                          for part in path.relative_to(folder).parts)}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, tiny_llama_dir):
    folder = tmp_path_factory.mktemp("clean")
    prompts = prompts_file(folder / "prompts.jsonl")
    run_in_process(*pipeline_args(folder, prompts, tiny_llama_dir))
    return folder, prompts


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_a_random_point_then_a_rerun_equals_a_clean_run(clean_run, tmp_path, tiny_llama_dir, seed):
    clean, prompts = clean_run
    args = pipeline_args(tmp_path, prompts, tiny_llama_dir)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", PIPELINE, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, env=env)
    assert process.stdout.readline().strip() == b"started"
    time.sleep(random.Random(seed).uniform(0.2, 2.5))
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_in_process(*args)
    expected = visible_files(clean)
    del expected["prompts.jsonl"]
    assert visible_files(tmp_path).keys() == expected.keys()
    assert visible_files(tmp_path) == expected


def test_a_second_collect_on_one_output_is_refused_and_the_first_finishes(clean_run, tmp_path, tiny_llama_dir):
    # Two runs on one file both exited 0 and left 9 of 10 prompts duplicated.
    clean, prompts = clean_run
    rows = tmp_path / "rows.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); "
                               "time.sleep(60)", str(lock_path(rows))], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        refused = invoke("collect", prompts, "-o", rows, "--model", tiny_llama_dir, "--cache-dir", tmp_path / "c")
        assert_clean_error(refused, "another adainfer run is writing")
        assert not rows.exists()
    finally:
        holder.kill()
        holder.wait()
    ok("collect", prompts, "-o", rows, "--model", tiny_llama_dir, "--cache-dir", tmp_path / "c")
    assert rows.read_bytes() == (clean / "rows.jsonl").read_bytes()


def test_concurrent_policy_saves_leave_one_whole_policy(tmp_path):
    X, y = make_traces()
    policies = [SVMPolicy(C=c).fit(X, y) for c in (0.1, 10.0)]
    threads = [threading.Thread(target=policy.save, args=(tmp_path / "policy", IDENTITY)) for policy in policies
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    loaded = load_policy(tmp_path / "policy", IDENTITY)
    assert any(np.array_equal(loaded.predict(X), policy.predict(X)) and loaded.C == policy.C for policy in policies)
    assert sorted(path.name for path in tmp_path.iterdir()) == [".policy.lock", "policy"]


def test_predict_on_a_full_disk_is_one_error_line(clean_run, tiny_llama_dir, tmp_path, monkeypatch, capsys):
    clean, prompts = clean_run
    full = open("/dev/full", "w")
    monkeypatch.setattr(sys, "stdout", full)
    with pytest.raises(answering.typer.Exit) as raised:
        answering.predict(prompts, clean / "policy", model=str(tiny_llama_dir), cache_dir=tmp_path / "cache")
    with contextlib.suppress(OSError):  # what could not be written is still buffered
        full.close()
    assert raised.value.exit_code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0]


def test_a_failing_predict_keeps_the_existing_output(clean_run, tiny_llama_dir, tmp_path):
    clean, prompts = clean_run
    out = tmp_path / "out.jsonl"
    out.write_text("earlier results\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(prompts.read_text() + json.dumps({"prompt": "x" * 10**6}) + "\n")
    result = invoke("predict", bad, "-p", clean / "policy", "-o", out, "--model", tiny_llama_dir,
                    "--cache-dir", tmp_path / "cache")
    assert_clean_error(result, "line 25")
    assert out.read_text() == "earlier results\n"
    assert_clean_error(invoke("predict", prompts, "-p", clean / "policy", "-o", prompts, "--model", tiny_llama_dir),
                       "is the inputs file itself")
    nested = tmp_path / "new" / "folder" / "out.jsonl"
    ok("predict", prompts, "-p", clean / "policy", "-o", nested, "--model", tiny_llama_dir,
       "--cache-dir", tmp_path / "cache")
    assert nested.read_bytes() == (clean / "out.jsonl").read_bytes()


def test_a_lock_held_elsewhere_makes_a_policy_save_wait(tmp_path):
    X, y = make_traces()
    policy = SVMPolicy().fit(X, y)
    lock = FileLock(lock_path(tmp_path / "policy"))
    lock.acquire()
    saver = threading.Thread(target=policy.save, args=(tmp_path / "policy", IDENTITY))
    saver.start()
    time.sleep(0.3)
    assert not (tmp_path / "policy").exists()
    lock.release()
    saver.join()
    assert load_policy(tmp_path / "policy", IDENTITY).C == 1.0
