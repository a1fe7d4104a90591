"""A request the model cannot take, or a failure inside the worker, fails that request only.

Each case goes through a real uvicorn; after it, the same server must still answer other clients
(classification and completions), and /healthz must say whether the worker is alive.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from adainfer.engine.model import EarlyExitModel
from adainfer.fit.classifier import load_classifier
from adainfer.serve.app import ServeOptions, create_app
from live_server import running

BAD_TEXTS = {
    "lone high surrogate": "\ud800 bad",
    "lone low surrogate": "ok \udfff",
    "surrogate pair as escapes": "\ud83d\ude00",  # JSON "\ud83d\ude00" decodes to one emoji: accepted
    "nul byte": "red\x00cat 3",
    "escape control": "red \x1b[31m cat 3",
    "bell": "red\x07 3",
    "delete control": "red\x7f 3",
    "only controls": "\x01\x02\x03",
}
REFUSED = {name: text for name, text in BAD_TEXTS.items() if name != "surrogate pair as escapes"}


def raw_json(body: dict) -> bytes:
    """JSON as a hostile client writes it: lone surrogates kept as \\uXXXX escapes (valid JSON)."""
    return json.dumps(body).encode("ascii")


@pytest.fixture(scope="module")
def url(tiny_spaced_dir, classifier_dir):
    model = EarlyExitModel.from_pretrained(str(tiny_spaced_dir))
    app = create_app(model, *load_classifier(classifier_dir, model), "tiny", ServeOptions(max_wait_ms=0))
    with running(app) as base:
        yield base


def still_serving(url: str) -> None:
    """Another client still gets answers, and /healthz says ok."""
    classified = httpx.post(f"{url}/v1/classify", json={"input": "red cat 3"}, timeout=30)
    assert classified.status_code == 200, classified.text
    completed = httpx.post(f"{url}/v1/completions", json={"prompt": "Q: red cat 3\nA:", "max_tokens": 2}, timeout=30)
    assert completed.status_code == 200, completed.text
    health = httpx.get(f"{url}/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"


def one_json_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.text.count("\n") == 0
    return response.json()["error"]["message"]


@pytest.mark.parametrize("name", sorted(REFUSED))
@pytest.mark.parametrize("route, field", [("/v1/classify", "input"), ("/v1/classify", "inputs"),
                                          ("/v1/completions", "prompt"), ("/v1/completions", "prompt_list")])
def test_a_text_the_model_cannot_take_gets_one_4xx_line_and_the_server_goes_on(url, name, route, field):
    text = REFUSED[name]
    body = {"input": text} if field == "input" else {"inputs": ["red cat 3", text]} if field == "inputs" else \
        {"prompt": text} if field == "prompt" else {"prompt": ["Q: ok\nA:", text]}
    response = httpx.post(f"{url}{route}", content=raw_json(body), headers={"content-type": "application/json"},
                          timeout=30)
    message = one_json_error(response, 400 if response.status_code == 400 else 422)
    assert "surrogate" in message or "control" in message, message
    still_serving(url)


def test_a_valid_surrogate_pair_is_one_character_and_is_answered(url):
    response = httpx.post(f"{url}/v1/classify", content=raw_json({"input": BAD_TEXTS["surrogate pair as escapes"]}),
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 200, response.text
    still_serving(url)


class Boom(Exception):
    """An error no check foresaw, raised inside the worker."""


@pytest.fixture()
def fragile(tiny_spaced_dir, classifier_dir):
    """A server whose model raises `Boom` (a TypeError, a RuntimeError...) on any input holding "boom"."""
    model = EarlyExitModel.from_pretrained(str(tiny_spaced_dir))
    app = create_app(model, *load_classifier(classifier_dir, model), "tiny", ServeOptions(max_wait_ms=0))
    worker = app.state.server.worker
    answer, check = worker.run_batch, worker.check_row

    def run_batch(texts):
        if any("boom" in text for text in texts):
            raise Boom("the model broke")
        return answer(texts)

    def check_row(text):
        if "crash" in text:
            raise TypeError("the tokenizer broke")
        check(text)

    worker.run_batch, worker.check_row = run_batch, check_row
    with running(app) as base:
        yield base, worker


@pytest.mark.parametrize("body", [{"input": "boom 3"}, {"inputs": ["red 1", "boom 3", "cat 2"]},
                                  {"input": "crash 3"}, {"inputs": ["red 1", "crash 3"]}])
def test_an_error_inside_the_worker_fails_its_request_with_one_500_line_and_the_worker_goes_on(fragile, body):
    url, worker = fragile
    message = one_json_error(httpx.post(f"{url}/v1/classify", json=body, timeout=30), 500)
    assert "broke" in message and "\n" not in message
    still_serving(url)
    assert worker.alive


def test_an_error_in_a_completion_is_one_500_json_line_not_a_traceback(fragile, monkeypatch):
    url, _ = fragile
    import adainfer.serve.completions as completions

    def broken(*args, **kwargs):
        raise TypeError("generate broke")

    monkeypatch.setattr(completions, "generate", broken)
    for stream in (False, True):
        response = httpx.post(f"{url}/v1/completions", json={"prompt": "Q: red\nA:", "stream": stream}, timeout=30)
        assert "generate broke" in one_json_error(response, 500)
        assert "Traceback" not in response.text
    monkeypatch.undo()
    still_serving(url)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the worker logs its end
def test_a_worker_that_dies_says_so_on_healthz_and_refuses_requests_with_503(fragile):
    url, worker = fragile

    def dead(*args, **kwargs):
        raise SystemExit("the worker loop itself failed")  # not an Exception: nothing per request catches it

    worker._next_work = dead  # the worker waiting in its current call answers one more request, then dies
    httpx.post(f"{url}/v1/classify", json={"input": "red cat 3"}, timeout=30)
    deadline = time.monotonic() + 10
    while worker.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    response = httpx.post(f"{url}/v1/classify", json={"input": "red cat 3"}, timeout=30)
    assert response.status_code == 503 and "worker stopped" in response.json()["error"]["message"]
    health = httpx.get(f"{url}/healthz", timeout=10)
    assert health.status_code == 503 and health.json()["status"] == "worker_stopped"
    assert not worker.alive
