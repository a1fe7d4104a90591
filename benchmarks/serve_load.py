"""Load test of `adainfer serve`: early exit against two dense baselines, through the same server and batcher.

Three servers run as separate processes (`adainfer serve -p POLICY`, the same with `--dense`: the
model's forward on each full prompt, and with `--dense-cached`: its forward over the card's
demonstrations computed once, the strongest dense baseline), each on its own port, so the clients here never share an interpreter with the model. For each
level of concurrency in turn, each server is loaded by N concurrent asyncio httpx clients that
send the same raw SST-2 inputs, one per `POST /v1/classify` request, until `--requests` are
answered; the servers take turns level by level, so a load change on a shared machine hits
both alike. Reported per server and level: throughput (requests/s over the wall time of the
level), latency percentiles, and the mean batch size and exit layer read from the server's own
/metrics (their change over the level). The labels are compared too: how often early exit
answers as the dense model does.

Inputs: the first `--requests` raw inputs of the task's held-out pool
(`adainfer.fit.pipeline.task_source(task).eval_pool`), under the classifier's card (its prompt
format and fixed demonstrations).

Usage: python benchmarks/serve_load.py --policy runs/fit/gemma3-270m-sst2 [--model gemma3-270m]
       [--requests 64] [--concurrency 1,8,32] [--max-batch-size 16] [--max-wait-ms 10] [--threads N]
       [--out benchmarks/results/serve_load.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import torch
from prometheus_client.parser import text_string_to_metric_families

from adainfer.fit.card import ClassifierCard, read_card
from adainfer.fit.pipeline import task_source

MODES = {"early_exit": [], "dense": ["--dense"], "dense_cached": ["--dense-cached"]}
BASELINES = ("dense", "dense_cached")


def free_port() -> int:
    """A port free now (the OS's pick); the server binds it a moment later."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`adainfer serve` in a child process, on a free port."""

    def __init__(self, arguments: list[str]) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([sys.executable, "-c", "from adainfer.cli.app import app; app()", "serve",
                                         "--port", str(port), "--log-level", "warning", *arguments],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        self._wait_until_ready()

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.5)
        self.process.kill()
        raise RuntimeError("the server did not start:\n" + "".join(self.log))

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=60).text
        return next((sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                     if sample.name == name and not sample.labels), 0.0)

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=120)


async def load(url: str, texts: list[str], concurrency: int) -> tuple[float, list[float], list[str]]:
    """Send each text as one request from `concurrency` clients; (wall seconds, latencies, labels in order)."""
    pending = list(enumerate(texts))
    latencies: list[float] = [0.0] * len(texts)
    labels: list[str] = [""] * len(texts)

    async def client(http: httpx.AsyncClient) -> None:
        while pending:
            index, text = pending.pop(0)
            started = time.perf_counter()
            response = await http.post("/v1/classify", json={"input": text})
            latencies[index] = time.perf_counter() - started
            response.raise_for_status()
            labels[index] = response.json()["answers"][0]["label"]

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, labels


def classifier_inputs(policy: str, requests: int, data_dir: str | None) -> tuple[ClassifierCard, list[str]]:
    """The classifier's card and the first `requests` raw inputs of its task's held-out pool."""
    card = read_card(Path(policy))
    pool = task_source(card.task, Path(data_dir) if data_dir else None).eval_pool
    return card, [example.input for example in pool[:requests]]


def write_report(report: dict, out: str, markdown_text: str) -> None:
    """The report as JSON at `out` and as Markdown beside it, and the Markdown on stdout."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown_text)
    print(markdown_text)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run_level(server: Server, texts: list[str], concurrency: int) -> dict:
    before = {name: server.metric(name) for name in ("adainfer_batch_size_sum", "adainfer_batch_size_count",
                                                     "adainfer_exit_layer_sum", "adainfer_exit_layer_count")}
    wall, latencies, labels = asyncio.run(load(server.url, texts, concurrency))
    delta = {name: server.metric(name) - value for name, value in before.items()}
    return {
        "concurrency": concurrency, "requests": len(texts), "seconds": round(wall, 2),
        "throughput_rps": round(len(texts) / wall, 3),
        "latency_ms": {f"p{int(q * 100)}": round(1000 * percentile(latencies, q), 1) for q in (0.5, 0.95, 0.99)},
        "batches": int(delta["adainfer_batch_size_count"]),
        "mean_batch_size": round(delta["adainfer_batch_size_sum"] / delta["adainfer_batch_size_count"], 2),
        "mean_exit_layer": round(delta["adainfer_exit_layer_sum"] / delta["adainfer_exit_layer_count"], 2),
        "labels": labels,
    }


def markdown(report: dict) -> str:
    rows = ["# `adainfer serve` under load: early exit against dense, on full prompts and over cached demonstrations", "", f"`{report['command']}`", "",
            f"Model `{report['model']}` ({report['num_layers']} layers), classifier `{report['policy']}` "
            f"({report['task']}, {report['shots']}-shot); {report['requests']} requests per level, one raw input "
            f"each; server batching: max batch {report['max_batch_size']}, max wait {report['max_wait_ms']} ms; "
            f"server torch threads: {report['server_threads']}; {report['cpus']} CPUs, load average "
            f"{report['load_average_start']} at start, {report['load_average_end']} at end.", "",
            "| clients | mode | requests/s | p50 ms | p95 ms | p99 ms | mean batch | mean exit layer | early exit / this |",
            "|---|---|---|---|---|---|---|---|---|"]
    for level in report["levels"]:
        for mode in MODES:
            figures = level[mode]
            speedup = f"{level['speedup'][mode]:.2f}x" if mode in BASELINES else ""
            rows.append(f"| {level['concurrency']} | {mode} | {figures['throughput_rps']:.2f} | "
                        f"{figures['latency_ms']['p50']:.0f} | {figures['latency_ms']['p95']:.0f} | "
                        f"{figures['latency_ms']['p99']:.0f} | {figures['mean_batch_size']:.2f} | "
                        f"{figures['mean_exit_layer']:.2f} | {speedup} |")
    rows += ["", f"Early exit answered as the dense model on {report['agreement_with_dense']:.3f} of the "
                 f"{report['requests']} inputs (compared at every level; the labels never changed with concurrency: "
                 f"{report['labels_equal_across_levels']})."]
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, help="classifier directory written by `adainfer fit`")
    parser.add_argument("--model", default="gemma3-270m", help="embedded model name, local directory or .gguf")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=None, help="server torch threads (default: torch's)")
    parser.add_argument("--data-dir", default=None, help="datasets folder (default: $ADAINFER_DATA or ../shared/data)")
    parser.add_argument("--out", default="benchmarks/results/serve_load.json")
    args = parser.parse_args()
    levels = [int(part) for part in args.concurrency.split(",") if part.strip()]
    if args.requests < 1 or not levels or min(levels) < 1:
        parser.error("--requests and every --concurrency must be >= 1")

    card, texts = classifier_inputs(args.policy, args.requests, args.data_dir)
    common = ["-p", args.policy, "-m", args.model, "--max-batch-size", str(args.max_batch_size),
              "--max-wait-ms", str(args.max_wait_ms), *(["--threads", str(args.threads)] if args.threads else [])]
    load_start = round(os.getloadavg()[0], 2)
    servers = {mode: Server(common + flags) for mode, flags in MODES.items()}
    try:
        for server in servers.values():  # the first passes allocate and pick kernels
            asyncio.run(load(server.url, texts[:4], 1))
        results = []
        for concurrency in levels:
            level = {"concurrency": concurrency}
            for mode, server in servers.items():
                level[mode] = run_level(server, texts, concurrency)
                print(f"{concurrency} clients, {mode}: {level[mode]['throughput_rps']:.2f} requests/s, "
                      f"mean batch {level[mode]['mean_batch_size']:.2f}", file=sys.stderr, flush=True)
            level["speedup"] = {baseline: round(level["early_exit"]["throughput_rps"] / level[baseline]["throughput_rps"], 3)
                                for baseline in BASELINES}
            results.append(level)
    finally:
        exit_codes = {mode: server.stop() for mode, server in servers.items()}
    dense_labels = results[0]["dense"]["labels"]
    report = {
        "benchmark": "serve_load",
        "command": "python " + " ".join(shlex.quote(part) for part in sys.argv),
        "model": args.model, "num_layers": card.model_identity.get("num_layers"), "policy": args.policy,
        "task": card.task, "shots": card.shots, "requests": len(texts), "max_batch_size": args.max_batch_size,
        "max_wait_ms": args.max_wait_ms, "server_threads": args.threads or torch.get_num_threads(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "load_average_start": load_start, "load_average_end": round(os.getloadavg()[0], 2),
        "agreement_with_dense": round(statistics.mean(
            a == b for a, b in zip(results[0]["early_exit"]["labels"], dense_labels)), 3),
        "labels_equal_across_levels": all(level[mode]["labels"] == results[0][mode]["labels"]
                                          for level in results for mode in MODES),
        "server_exit_codes": exit_codes,
        "levels": results,
    }
    write_report(report, args.out, markdown(report))


if __name__ == "__main__":
    main()
