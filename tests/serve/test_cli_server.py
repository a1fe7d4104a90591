"""`adainfer serve` as a process: keys from the environment, and a SIGTERM that ends in bounded time
even while the worker holds more work than the shutdown timeout allows."""

from __future__ import annotations

import signal
import threading
import time

import httpx

from test_shutdown import LONG_PROMPT, start_server


def test_keys_from_the_environment_guard_the_server_and_sigterm_exits_within_its_timeout(tiny_spaced_dir,
                                                                                         classifier_dir):
    process, url, log = start_server(tiny_spaced_dir, classifier_dir, "--shutdown-timeout", "1",
                                     env={"ADAINFER_API_KEY": "env-one, env-two"})
    try:
        assert httpx.post(f"{url}/v1/classify", json={"input": "red cat 3"}).status_code == 401
        auth = {"Authorization": "Bearer env-two"}
        assert httpx.post(f"{url}/v1/classify", json={"input": "red cat 3"}, headers=auth).status_code == 200
        health = httpx.get(f"{url}/healthz").json()
        assert health["status"] == "ok" and "pid" not in health
        statuses: list[int] = []

        def long_completion() -> None:  # ~3 s each on the tiny model; four queue ~12 s of work
            try:
                statuses.append(httpx.post(f"{url}/v1/completions", headers=auth, timeout=60,
                                           json={"prompt": LONG_PROMPT, "max_tokens": 2000}).status_code)
            except httpx.TransportError:
                statuses.append(0)

        clients = [threading.Thread(target=long_completion) for _ in range(4)]
        for client in clients:
            client.start()
        while httpx.get(f"{url}/healthz").json()["queued_rows"] < 3:
            time.sleep(0.02)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        assert time.monotonic() - started < 10, "".join(log)  # the queued work alone takes ~12 s
        for client in clients:
            client.join(timeout=30)
        assert len(statuses) == 4 and statuses.count(200) < 4  # not everything was waited for
    finally:
        process.kill()
