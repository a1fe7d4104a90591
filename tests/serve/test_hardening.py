"""A hostile client against a real uvicorn configured as `adainfer serve` configures it: API keys,
strict request types, slow and oversized requests. After each, other clients are still answered."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import openai
import pytest

from adainfer.engine.model import EarlyExitModel
from adainfer.fit.classifier import load_classifier
from adainfer.serve.app import ServeOptions, create_app
from adainfer.serve.auth import api_keys, is_loopback, key_matches
from adainfer.serve.connections import ConnectionLimits
from live_server import running

KEYS = ("first-key", "second-key")
AUTH = {"Authorization": f"Bearer {KEYS[1]}"}
LIMITS = ConnectionLimits(header_timeout_s=1.0, max_header_bytes=8192, max_connections=64)


@pytest.fixture(scope="module")
def url(tiny_spaced_dir, classifier_dir):
    model = EarlyExitModel.from_pretrained(str(tiny_spaced_dir))
    options = ServeOptions(max_wait_ms=0, api_keys=KEYS, body_timeout_s=1.0, max_body_bytes=4096)
    with running(create_app(model, *load_classifier(classifier_dir, model), "tiny", options), LIMITS) as base:
        yield base


def answers(url: str) -> bool:
    response = httpx.post(f"{url}/v1/classify", json={"input": "red cat 3"}, headers=AUTH, timeout=30)
    return response.status_code == 200 and response.json()["answers"][0]["label"] in {"even", "odd"}


def one_line_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    assert response.text.count("\n") == 0 and response.json()["error"]["type"] == kind
    return response.json()["error"]["message"]


# --- API keys ---------------------------------------------------------------------------------------

ROUTES = [("POST", "/v1/classify", {"input": "red cat 3"}), ("POST", "/v1/completions", {"prompt": "Q: a\nA:"}),
          ("GET", "/v1/models", None), ("GET", "/metrics", None), ("GET", "/openapi.json", None),
          ("GET", "/no/such/route", None)]
BAD_HEADERS = {"none": {}, "wrong key": {"Authorization": "Bearer not-a-key"},
               "key prefix": {"Authorization": f"Bearer {KEYS[0][:-1]}"},
               "key plus more": {"Authorization": f"Bearer {KEYS[0]}x"},
               "no scheme": {"Authorization": KEYS[0]}, "basic scheme": {"Authorization": f"Basic {KEYS[0]}"},
               "bare bearer": {"Authorization": "Bearer"}, "both keys": {"Authorization": f"Bearer {','.join(KEYS)}"}}


@pytest.mark.parametrize("header", sorted(BAD_HEADERS))
@pytest.mark.parametrize("method, path, body", ROUTES, ids=[path for _, path, _ in ROUTES])
def test_every_route_but_healthz_needs_a_key_and_refuses_with_one_401_line(url, method, path, body, header):
    response = httpx.request(method, f"{url}{path}", json=body, headers=BAD_HEADERS[header], timeout=30)
    assert "API key" in one_line_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("method, path, body", ROUTES[:5], ids=[path for _, path, _ in ROUTES[:5]])
def test_each_key_opens_every_route(url, method, path, body, key):
    response = httpx.request(method, f"{url}{path}", json=body, headers={"Authorization": f"bearer {key}"}, timeout=30)
    assert response.status_code == 200, response.text


def test_healthz_needs_no_key_and_names_no_process(url):
    health = httpx.get(f"{url}/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok" and "pid" not in health.json()


def test_docs_are_off_by_default(url):
    assert httpx.get(f"{url}/docs", headers=AUTH).status_code == 404
    assert httpx.get(f"{url}/redoc", headers=AUTH).status_code == 404


def test_the_openai_client_with_a_key_is_served_and_without_one_is_refused(url):
    served = openai.OpenAI(base_url=f"{url}/v1", api_key=KEYS[0])
    assert served.completions.create(model="tiny", prompt="Q: red\nA:", max_tokens=2).choices[0].finish_reason
    with pytest.raises(openai.AuthenticationError, match="not valid"):
        openai.OpenAI(base_url=f"{url}/v1", api_key="stolen").completions.create(model="tiny", prompt="Q", max_tokens=1)


@pytest.mark.parametrize("given, environment, expected", [
    ([], "", ()), (["a"], "", ("a",)), ([], "a,b", ("a", "b")), (["a"], " b , c ,", ("a", "b", "c")),
    (["a", "a"], "a", ("a",)), ([], ",,", ())])
def test_keys_come_from_flags_and_the_comma_separated_environment(given, environment, expected):
    assert api_keys(given, environment) == expected


@pytest.mark.parametrize("bad", ["", "two words", "tab\tkey", "new\nline", "bell\x07"])
def test_a_key_a_header_cannot_carry_is_refused(bad):
    with pytest.raises(ValueError, match="API key"):
        api_keys([bad], "")


@pytest.mark.parametrize("header, matched", [(None, False), (b"Bearer k", True), (b"bearer k", True),
                                             (b"BEARER  k ", True), (b"Bearer kk", False), (b"Token k", False),
                                             (b"Bearerk", False), (b"Bearer \xff", False)])
def test_key_matching(header, matched):
    assert key_matches(header, ("k",)) is matched


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.4", False), ("example.com", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


# --- strict request types ---------------------------------------------------------------------------

COERCED = [("/v1/completions", {"prompt": "Q: a\nA:", "stream": "yes"}),
           ("/v1/completions", {"prompt": "Q: a\nA:", "stream": 1}),
           ("/v1/completions", {"prompt": "Q: a\nA:", "stream": "true"}),
           ("/v1/completions", {"prompt": "Q: a\nA:", "max_tokens": "5"}),
           ("/v1/completions", {"prompt": "Q: a\nA:", "max_tokens": 5.0}),
           ("/v1/completions", {"prompt": "Q: a\nA:", "max_tokens": True}),
           ("/v1/completions", {"prompt": "Q: a\nA:", "n": "1"}),
           ("/v1/completions", {"prompt": "Q: a\nA:", "echo": "false"}),
           ("/v1/completions", {"prompt": "Q: a\nA:", "echo": 0}),
           ("/v1/completions", {"prompt": "Q: a\nA:", "temperature": "0"}),
           ("/v1/completions", {"prompt": "Q: a\nA:", "temperature": False}),
           ("/v1/completions", {"prompt": 5}), ("/v1/completions", {"prompt": ["Q: a", 5]}),
           ("/v1/completions", {"prompt": "Q: a\nA:", "stop": 5}),
           ("/v1/completions", {"prompt": "Q: a\nA:", "model": 5}),
           ("/v1/classify", {"input": 3}), ("/v1/classify", {"input": True}),
           ("/v1/classify", {"inputs": ["a", 3]}), ("/v1/classify", {"inputs": "red cat 3"}),
           ("/v1/classify", {"input": ["red cat 3"]})]


@pytest.mark.parametrize("route, body", COERCED, ids=[str(body) for _, body in COERCED])
def test_a_value_of_the_wrong_json_type_is_refused_not_coerced(url, route, body):
    one_line_error(httpx.post(f"{url}{route}", json=body, headers=AUTH, timeout=30), 422, "invalid_request")


def test_the_right_types_still_pass(url):
    response = httpx.post(f"{url}/v1/completions", json={"prompt": "Q: a\nA:", "max_tokens": 2, "stream": False,
                                                          "temperature": 0, "n": 1, "echo": False}, headers=AUTH)
    assert response.status_code == 200, response.text


# --- slow and oversized clients ---------------------------------------------------------------------

def raw_connection(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing `sock`, or None if it is still open after `seconds`."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


@pytest.fixture(scope="module")
def default_url(tiny_spaced_dir, classifier_dir):
    """A server with the default limits (1024 connections) but for a 1 s header deadline."""
    model = EarlyExitModel.from_pretrained(str(tiny_spaced_dir))
    options = ServeOptions(max_wait_ms=0, api_keys=KEYS)
    with running(create_app(model, *load_classifier(classifier_dir, model), "tiny", options),
                 ConnectionLimits(header_timeout_s=1.0)) as base:
        yield base


@pytest.mark.parametrize("server, connections", [("url", 40), ("default_url", 300)])
def test_slowloris_connections_are_closed_and_other_clients_answered_meanwhile(request, server, connections):
    url = request.getfixturevalue(server)
    clients = [raw_connection(url) for _ in range(connections)]
    stop = threading.Event()

    def trickle() -> None:
        for sock in clients:
            sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
        while not stop.wait(0.3):  # one header line every 0.3 s: never finishes
            for sock in clients:
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        assert answers(url)  # served while the slow clients hold connections
        started = time.monotonic()
        assert all(closed_within(sock, 10) is not None for sock in clients)
        assert time.monotonic() - started < 10
    finally:
        stop.set()
        thread.join()
        for sock in clients:
            sock.close()
    assert answers(url)


def test_a_connection_that_never_sends_a_request_is_closed(url):
    with raw_connection(url) as sock:
        assert closed_within(sock, 5) == b""


@pytest.mark.parametrize("declared, sent", [(100, 4), (4096, 0), (10, 9)])
def test_a_stalled_body_gets_408_and_other_clients_are_answered(url, declared, sent):
    with raw_connection(url) as sock:
        sock.sendall(f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS[0]}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n".encode() + b"{" * sent)
        assert answers(url)
        reply = closed_within(sock, 5)
    assert reply is not None and reply.startswith(b"HTTP/1.1 408") and b'"type":"body_timeout"' in reply
    assert answers(url)


@pytest.mark.parametrize("size", [9000, 50_000, 200_000])
def test_an_oversized_header_is_refused(url, size):
    try:
        status = httpx.get(f"{url}/healthz", headers={"X-Big": "a" * size}, timeout=10).status_code
    except (httpx.ReadError, httpx.WriteError):  # refused and closed while the client was still sending
        status = None
    assert status in (400, None)
    assert answers(url)


def test_a_body_over_the_limit_is_refused_before_it_is_read(url):
    response = httpx.post(f"{url}/v1/classify", json={"inputs": ["red cat 3"] * 1000}, headers=AUTH, timeout=10)
    one_line_error(response, 413, "body_too_large")


def test_connections_over_the_cap_get_503_and_the_server_recovers(url):
    held = [raw_connection(url) for _ in range(LIMITS.max_connections + 4)]
    try:
        time.sleep(0.2)
        response = httpx.get(f"{url}/healthz", timeout=10)
        assert response.status_code == 503
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while httpx.get(f"{url}/healthz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert answers(url)
