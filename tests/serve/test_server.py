"""The server as its clients use it: real uvicorn on a free port, called over HTTP with httpx and `openai`.

Each server gets its own copy of the tiny model (its worker thread owns it); the answers it must
give come from another copy, one input at a time.
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adainfer.engine.model import EarlyExitModel
from adainfer.fit.classifier import classify, load_classifier
from adainfer.inference.dense import dense_answers
from adainfer.inference.generate import generate
from adainfer.serve.app import ServeOptions, create_app
from fit_data import parity_examples
from live_server import running

MODEL_ID = "tiny-spaced-llama"
TEXTS = [example.input for example in parity_examples(48, seed=11)]
LONG_PROMPT = "The"  # the tiny model generates 2,000 tokens after it without an end of sequence (~3 s)


def load(tiny_spaced_dir, classifier_dir):
    model = EarlyExitModel.from_pretrained(str(tiny_spaced_dir))
    return (model, *load_classifier(classifier_dir, model))


@pytest.fixture(scope="module")
def reference(tiny_spaced_dir, classifier_dir):
    """(model, policy, card): the copy the tests compute expected answers with."""
    return load(tiny_spaced_dir, classifier_dir)


@pytest.fixture(scope="module")
def expected(reference) -> dict[str, tuple[str, int, bool]]:
    """Each text's (label, exit layer, accepted), classified alone (batch size 1)."""
    model, policy, card = reference
    answers = {text: (a.label, a.exit_layer, a.accepted) for text in TEXTS
               for a in classify(model, policy, card, [text], batch_size=1)}
    assert any(exit_layer < model.num_layers for _, exit_layer, _ in answers.values())  # some rows exit early
    return answers


@pytest.fixture(scope="module")
def url(tiny_spaced_dir, classifier_dir):
    app = create_app(*load(tiny_spaced_dir, classifier_dir), MODEL_ID,
                     ServeOptions(max_batch_size=8, max_wait_ms=20, max_queue=64))
    with running(app) as base:
        yield base


def answered(response: httpx.Response) -> list[tuple[str, int, bool]]:
    assert response.status_code == 200, response.text
    return [(a["label"], a["exit_layer"], a["accepted"]) for a in response.json()["answers"]]


def samples(base: str, name: str) -> dict[tuple, float]:
    """Every sample of metric family `name` on /metrics, keyed by (sample name, sorted labels)."""
    text = httpx.get(f"{base}/metrics").text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) if family.name == name for sample in family.samples}


def value(base: str, name: str, sample: str | None = None, **labels: str) -> float:
    return samples(base, name).get((sample or name, tuple(sorted(labels.items()))), 0.0)


def test_classify_answers_equal_one_by_one_classification(url, expected):
    response = httpx.post(f"{url}/v1/classify", json={"inputs": TEXTS[:24]})
    assert answered(response) == [expected[text] for text in TEXTS[:24]]
    body = response.json()
    assert body["model"] == MODEL_ID and body["mode"] == "early_exit"
    assert all(a["layers_saved"] == 1 - a["exit_layer"] / a["num_layers"] for a in body["answers"])
    assert answered(httpx.post(f"{url}/v1/classify", json={"input": TEXTS[0]})) == [expected[TEXTS[0]]]


def test_sixteen_concurrent_clients_each_get_their_own_answers_in_shared_batches(url, expected):
    rows_before = value(url, "adainfer_batch_size", "adainfer_batch_size_sum")
    batches_before = value(url, "adainfer_batch_size", "adainfer_batch_size_count")
    start = threading.Barrier(16)

    def client(seed: int) -> tuple[bool, int]:
        rng = random.Random(seed)
        correct, sent = True, 0
        with httpx.Client(base_url=url, timeout=60) as http:
            start.wait()
            for _ in range(3):
                texts = rng.sample(TEXTS, rng.randint(1, 3))
                correct &= answered(http.post("/v1/classify", json={"inputs": texts})) == [expected[t] for t in texts]
                sent += len(texts)
        return correct, sent

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(client, range(16)))
    assert all(correct for correct, _ in results)
    rows = value(url, "adainfer_batch_size", "adainfer_batch_size_sum") - rows_before
    batches = value(url, "adainfer_batch_size", "adainfer_batch_size_count") - batches_before
    assert rows == sum(sent for _, sent in results)
    assert 0 < batches < 48  # fewer passes than requests: batches held rows of several requests


def test_the_openai_client_gets_the_models_greedy_output(url, reference):
    model = reference[0]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    prompt = "Q: red cat 3\nA:"
    completion = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=20)
    ids = model.encode(prompt)
    greedy = model.model.generate(ids, attention_mask=ids.new_ones(ids.shape), max_new_tokens=20, do_sample=False)
    assert completion.choices[0].text == model.tokenizer.decode(greedy[0, ids.shape[1]:], skip_special_tokens=True)
    assert completion.choices[0].finish_reason == "length" and completion.model == MODEL_ID
    assert completion.usage.completion_tokens == 20 and completion.usage.prompt_tokens == ids.shape[1]
    assert [listed.id for listed in client.models.list()] == [MODEL_ID]


def test_completions_drafted_by_int8_layers_and_copies_are_still_the_greedy_output(tiny_spaced_dir, classifier_dir,
                                                                                   reference):
    model = reference[0]
    app = create_app(*load(tiny_spaced_dir, classifier_dir), MODEL_ID,
                     ServeOptions(draft_weights="int8", prompt_lookup=4))
    prompts = ["Q: red cat 3\nA:", "Q: red cat red cat red\nA: red cat"]
    with running(app) as base:
        body = httpx.post(f"{base}/v1/completions", json={"prompt": prompts, "max_tokens": 16}).json()
    for prompt, choice in zip(prompts, body["choices"]):
        ids = model.encode(prompt)
        greedy = model.model.generate(ids, attention_mask=ids.new_ones(ids.shape), max_new_tokens=16, do_sample=False)
        assert choice["text"] == model.tokenizer.decode(greedy[0, ids.shape[1]:], skip_special_tokens=True)


def test_the_openai_client_streams_the_same_text_and_stops_before_a_stop_string(url, reference):
    model = reference[0]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    prompt = "Q: blue dog 8\nA:"
    full = generate(model, prompt, 24).text
    chunks = list(client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=24, stream=True))
    assert "".join(chunk.choices[0].text for chunk in chunks) == full and len(chunks) > 2
    assert [chunk.choices[0].finish_reason for chunk in chunks][-1] == "length"
    stop = full[10:12]
    cut = list(client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=24, stream=True, stop=[stop]))
    assert "".join(chunk.choices[0].text for chunk in cut) == full[:full.find(stop)]
    assert cut[-1].choices[0].finish_reason == "stop"


def test_a_list_of_prompts_gets_one_choice_each(url, reference):
    prompts = ["Q: sun 1\nA:", "Q: moon star 2\nA:"]
    response = httpx.post(f"{url}/v1/completions", json={"prompt": prompts, "max_tokens": 8, "temperature": 0})
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert [c["text"] for c in choices] == [generate(reference[0], prompt, 8).text for prompt in prompts]


BAD_REQUESTS = [
    ("/v1/classify", {"inputs": ["red 1", 3]}, 422, "invalid_request", "inputs.1"),
    ("/v1/classify", {"input": "red 1", "top_k": 2}, 422, "invalid_request", "top_k: Extra inputs are not permitted"),
    ("/v1/classify", {"input": "   "}, 422, "invalid_request", "blank"),
    ("/v1/classify", {}, 422, "invalid_request", "exactly one of"),
    ("/v1/classify", {"inputs": ["red 1", "x" * 5000]}, 400, "invalid_input", "input 1: prompt has"),
    ("/v1/completions", {"prompt": "Q", "temperature": 0.7}, 422, "invalid_request", "temperature"),
    ("/v1/completions", {"prompt": "Q", "echo": True}, 422, "invalid_request", "echo"),
    ("/v1/completions", {"prompt": ""}, 422, "invalid_request", "blank"),
    ("/v1/completions", {"prompt": "Q", "max_tokens": 5000}, 400, "invalid_input", "use at most 2047"),
    ("/v1/completions", {"prompt": "Q", "max_tokens": 5000, "stream": True}, 400, "invalid_input", "use at most"),
    ("/v1/completions", {"prompt": "Q", "model": "gpt-4"}, 404, "model_not_found", "gpt-4"),
]


def refused(response: httpx.Response, status: int, kind: str, words: str) -> bool:
    error = response.json()["error"]
    return (response.status_code, error["type"]) == (status, kind) and words in error["message"] and (
        "\n" not in response.text.strip())


def test_bad_requests_get_one_line_errors_and_leave_concurrent_requests_alone(url, expected):
    before = value(url, "adainfer_errors", "adainfer_errors_total", kind="invalid_request")

    def bad(case) -> bool:
        path, body, status, kind, words = case
        return refused(httpx.post(f"{url}{path}", json=body, timeout=60), status, kind, words)

    def good(index: int) -> bool:
        texts = TEXTS[index * 4:index * 4 + 4]
        return answered(httpx.post(f"{url}/v1/classify", json={"inputs": texts}, timeout=60)) == [
            expected[text] for text in texts]

    with ThreadPoolExecutor(8) as pool:
        bad_results = pool.map(bad, BAD_REQUESTS)
        good_results = pool.map(good, range(8))
        assert list(bad_results) == [True] * len(BAD_REQUESTS)
        assert all(good_results)
    malformed = httpx.post(f"{url}/v1/classify", content=b"{not json", headers={"Content-Type": "application/json"})
    assert refused(malformed, 422, "invalid_request", "not valid JSON")
    after = value(url, "adainfer_errors", "adainfer_errors_total", kind="invalid_request")
    assert after - before == 1 + sum(case[3] == "invalid_request" for case in BAD_REQUESTS)


def test_a_body_over_the_limit_is_refused_whether_its_length_is_declared_or_not(url):
    body = json.dumps({"input": "x" * 1_100_000}).encode()
    declared = httpx.post(f"{url}/v1/classify", content=body, headers={"Content-Type": "application/json"})
    chunked = httpx.post(f"{url}/v1/classify", content=iter([body[:600_000], body[600_000:]]),
                         headers={"Content-Type": "application/json"})
    assert refused(declared, 413, "body_too_large", "1100013 bytes")
    assert refused(chunked, 413, "body_too_large", "over this server's limit of 1000000 bytes")
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"


def test_the_loop_answers_while_a_generation_runs_and_a_client_that_leaves_stops_it(url):
    tokens_before = value(url, "adainfer_generated_tokens", "adainfer_generated_tokens_total")
    left_before = value(url, "adainfer_errors", "adainfer_errors_total", kind="client_disconnected")
    with httpx.Client(base_url=url, timeout=60) as http:
        with http.stream("POST", "/v1/completions",
                         json={"prompt": LONG_PROMPT, "max_tokens": 2000, "stream": True}) as stream:
            lines = stream.iter_lines()  # kept: dropping a half-read iterator closes the connection
            first = next(line for line in lines if line)
            assert json.loads(first.removeprefix("data: "))["choices"][0]["finish_reason"] is None
            with httpx.Client(base_url=url, timeout=60) as other:  # a new connection, while the worker generates
                assert other.get("/healthz").json()["status"] == "ok"
                during = value(url, "adainfer_generated_tokens", "adainfer_generated_tokens_total") - tokens_before
            assert 0 < during < 2000
        # leaving the `with` closes the connection mid-stream
    # the worker runs one thing at a time: this answer means the abandoned generation has ended
    after_leaving = httpx.post(f"{url}/v1/completions", json={"prompt": "Q", "max_tokens": 1}, timeout=60)
    assert after_leaving.status_code == 200
    generated = value(url, "adainfer_generated_tokens", "adainfer_generated_tokens_total") - tokens_before
    assert generated < 1000  # of the 2,000 asked for, plus the one token just above
    assert value(url, "adainfer_errors", "adainfer_errors_total", kind="client_disconnected") == left_before + 1


def test_metrics_count_requests_latency_exit_layers_and_layers_saved(url, expected):
    exits_before = samples(url, "adainfer_exit_layer")
    requests_before = value(url, "adainfer_requests", "adainfer_requests_total", endpoint="/v1/classify", status="200")
    texts = TEXTS[:10]
    answers = httpx.post(f"{url}/v1/classify", json={"inputs": texts}).json()["answers"]
    exits_after = samples(url, "adainfer_exit_layer")
    for layer in range(1, 5):
        key = ("adainfer_exit_layer_bucket", (("le", f"{float(layer)}"),))
        assert exits_after[key] - exits_before.get(key, 0) == sum(a["exit_layer"] <= layer for a in answers)
    saved_sum = ("adainfer_layers_saved_sum", ())
    assert samples(url, "adainfer_layers_saved")[saved_sum] >= sum(a["layers_saved"] for a in answers)
    assert value(url, "adainfer_requests", "adainfer_requests_total", endpoint="/v1/classify",
                 status="200") == requests_before + 1
    assert value(url, "adainfer_request_seconds", "adainfer_request_seconds_count", endpoint="/v1/classify") > 0
    assert httpx.get(f"{url}/metrics").headers["content-type"].startswith("text/plain")


def test_docs_and_openapi_describe_the_endpoints(url):
    assert httpx.get(f"{url}/docs").status_code == 404  # off by default: its page loads scripts from a CDN
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    assert {"/v1/classify", "/v1/completions", "/v1/models", "/healthz", "/metrics"} <= set(paths)


def test_a_full_queue_answers_503_with_retry_after(tiny_spaced_dir, classifier_dir, expected):
    app = create_app(*load(tiny_spaced_dir, classifier_dir), MODEL_ID,
                     ServeOptions(max_batch_size=4, max_wait_ms=0, max_queue=2))
    with running(app) as base, httpx.Client(base_url=base, timeout=60) as http:
        with http.stream("POST", "/v1/completions",
                         json={"prompt": LONG_PROMPT, "max_tokens": 2000, "stream": True}) as stream:
            lines = stream.iter_lines()
            next(line for line in lines if line)  # the worker is generating
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(httpx.post, f"{base}/v1/classify", json={"inputs": TEXTS[:2]}, timeout=60)
                deadline = time.monotonic() + 30
                while http.get("/healthz").json()["queued_rows"] < 2:
                    assert time.monotonic() < deadline and not waiting.done(), "the request was not queued"
                full = http.post("/v1/classify", json={"input": TEXTS[2]})
                assert refused(full, 503, "queue_full", "queue is full") and full.headers["Retry-After"] == "1"
                stream.close()  # frees the worker: the waiting request is answered
                assert answered(waiting.result()) == [expected[text] for text in TEXTS[:2]]


@pytest.mark.parametrize("options, mode", [({"dense": True}, "dense"), ({"cached_dense": True}, "dense_cached")])
def test_the_dense_server_answers_as_the_dense_model(tiny_spaced_dir, classifier_dir, reference, options, mode):
    model, _, card = reference
    app = create_app(*load(tiny_spaced_dir, classifier_dir), MODEL_ID,
                     ServeOptions(max_batch_size=8, **options))
    with running(app) as base:
        body = httpx.post(f"{base}/v1/classify", json={"inputs": TEXTS[:12]}).json()
    token_ids = dense_answers(model, [card.prompt(text) for text in TEXTS[:12]], card.answer_token_ids)
    assert body["mode"] == mode
    assert [a["label"] for a in body["answers"]] == [card.answer_set[card.answer_token_ids.index(token)]
                                                     for token in token_ids]
    assert all(a["exit_layer"] == model.num_layers and a["layers_saved"] == 0 for a in body["answers"])
