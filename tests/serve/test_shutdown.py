"""`adainfer serve` in its own process: SIGTERM while requests are in flight drains them, then exits 0."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from adainfer.engine.model import EarlyExitModel
from adainfer.inference.generate import generate

LONG_PROMPT = "The"  # the tiny model generates 2,000 tokens after it without an end of sequence (~3 s)


def start_server(model_dir, classifier_dir, *extra: str,
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str, list[str]]:
    """The CLI on port 0 (the OS picks one), with `extra` options and `env` added to the environment;
    returns the process, its URL and its stderr lines so far (growing)."""
    process = subprocess.Popen(
        [sys.executable, "-c", "from adainfer.cli.app import app; app()", "serve", "-p", str(classifier_dir),
         "-m", str(model_dir), "--port", "0", "--threads", "1", "--max-wait-ms", "0", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    lines: list[str] = []

    def drain() -> None:
        for line in process.stderr:
            lines.append(line)

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        found = [re.search(r"running on (http://127\.0\.0\.1:\d+)", line) for line in lines]
        if any(found):
            return process, next(match.group(1) for match in found if match), lines
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("the server did not start:\n" + "".join(lines))


def test_sigterm_answers_the_requests_in_flight_then_exits_with_success(tiny_spaced_dir, classifier_dir):
    process, url, log = start_server(tiny_spaced_dir, classifier_dir)
    try:
        with httpx.Client(base_url=url, timeout=60) as http, ThreadPoolExecutor(1) as pool:
            with http.stream("POST", "/v1/completions",
                             json={"prompt": LONG_PROMPT, "max_tokens": 2000, "stream": True}) as stream:
                lines = stream.iter_lines()
                received = [next(line for line in lines if line)]  # generating now
                queued = pool.submit(httpx.post, f"{url}/v1/classify", json={"input": "red cat 3"}, timeout=60)
                while http.get("/healthz").json()["queued_rows"] < 1:  # waiting behind the generation
                    assert not queued.done(), queued.result().text
                process.send_signal(signal.SIGTERM)
                received += [line for line in lines if line]
            assert queued.result().status_code == 200 and queued.result().json()["answers"][0]["label"] in {"even", "odd"}
        assert process.wait(timeout=60) == 0, "".join(log)
    finally:
        process.kill()
    assert received[-1] == "data: [DONE]"
    text = "".join(json.loads(line.removeprefix("data: "))["choices"][0]["text"] for line in received[:-1])
    assert text == generate(EarlyExitModel.from_pretrained(str(tiny_spaced_dir)), LONG_PROMPT, 2000).text
    assert any("Application shutdown complete" in line for line in log)
