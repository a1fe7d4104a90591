"""`adainfer serve --ray --replicas 2` as a user runs it: the CLI in its own process starts a local
Ray, deploys two replicas behind Ray Serve's proxy, answers HTTP as one `adainfer serve` does, and
on SIGTERM takes the replicas down and exits with success.

The expected answers come from a copy of the model in this process, one input at a time, with one
torch thread, as each replica runs.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import openai
import pytest

pytest.importorskip("ray")

from adainfer.engine.model import EarlyExitModel  # noqa: E402
from adainfer.fit.classifier import classify, load_classifier  # noqa: E402
from adainfer.inference.generate import generate  # noqa: E402
from fit_data import parity_examples  # noqa: E402

TEXTS = [example.input for example in parity_examples(32, seed=5)]
PROMPT = "Q: 3 4\nA:"
KEY = "ray-replica-key"  # the replicas must honour `--api-key` as `adainfer serve` does
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclass
class Deployment:
    process: subprocess.Popen
    url: str
    log: list[str]


def free_port() -> int:
    """A port free now; Ray Serve's proxy binds it a few seconds later (it cannot be handed a socket)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def deployment(tiny_spaced_dir, classifier_dir):
    """The CLI with two replicas of one torch thread each, up and answering."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", "from adainfer.cli.app import app; app()", "serve", "-p", str(classifier_dir),
         "-m", str(tiny_spaced_dir), "--ray", "--replicas", "2", "--port", str(port), "--max-batch-size", "8",
         "--max-wait-ms", "20", "--health-pid", "--api-key", KEY],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(process.stderr), daemon=True).start()
    deadline = time.monotonic() + 300
    while not any(re.search(r"with 2 replicas on Ray", line) for line in log):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the deployment did not start:\n" + "".join(log))
        time.sleep(0.2)
    try:
        yield Deployment(process, f"http://127.0.0.1:{port}", log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)


@pytest.fixture(scope="module")
def reference(tiny_spaced_dir, classifier_dir):
    model = EarlyExitModel.from_pretrained(str(tiny_spaced_dir))
    return (model, *load_classifier(classifier_dir, model))


def test_two_replicas_answer_concurrent_clients_as_one_process_classifies_alone(deployment, reference):
    model, policy, card = reference
    expected = [(a.label, a.exit_layer, a.accepted) for text in TEXTS
                for a in classify(model, policy, card, [text], batch_size=1)]
    assert any(exit_layer < model.num_layers for _, exit_layer, _ in expected)  # some inputs exit early

    def post(text: str) -> tuple[str, int, bool]:
        response = httpx.post(f"{deployment.url}/v1/classify", json={"input": text}, timeout=120, headers=AUTH)
        assert response.status_code == 200, response.text
        answer = response.json()["answers"][0]
        return answer["label"], answer["exit_layer"], answer["accepted"]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(post, TEXTS)) == expected


def test_requests_are_spread_over_both_replicas(deployment):
    with ThreadPoolExecutor(8) as pool:
        pids = set(pool.map(lambda _: httpx.get(f"{deployment.url}/healthz", timeout=60).json()["pid"], range(64)))
    assert len(pids) == 2 and deployment.process.pid not in pids


def test_the_http_api_is_the_one_adainfer_serve_answers(deployment, reference):
    unkeyed = httpx.post(f"{deployment.url}/v1/classify", json={"input": "3"}, timeout=60)
    assert unkeyed.status_code == 401 and unkeyed.json()["error"]["type"] == "unauthorized"
    refused = httpx.post(f"{deployment.url}/v1/classify", json={"input": "3", "temperature": 1}, timeout=60,
                         headers=AUTH)
    assert refused.status_code == 422 and refused.text.count("\n") == 0
    assert refused.json()["error"]["type"] == "invalid_request"
    client = openai.OpenAI(base_url=f"{deployment.url}/v1", api_key=KEY, timeout=120)
    [served] = [entry.id for entry in client.models.list().data]
    pieces = [chunk.choices[0].text for chunk in
              client.completions.create(model=served, prompt=PROMPT, max_tokens=12, stream=True)]
    assert "".join(pieces) == generate(reference[0], PROMPT, 12).text


def test_sigterm_takes_the_replicas_down_and_exits_with_success(deployment):
    deployment.process.send_signal(signal.SIGTERM)
    assert deployment.process.wait(timeout=120) == 0, "".join(deployment.log)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{deployment.url}/healthz", timeout=5)
