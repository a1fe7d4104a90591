"""Serving throughput on Ray Serve: 1 replica against 2, through `adainfer serve --ray`.

Each configuration (`--configs`, REPLICASxTHREADS: replicas, and torch threads per replica) is the
CLI in its own process, starting a local Ray, deploying its replicas behind Ray Serve's proxy and
loading the model in each; on a machine of two cores two configurations cannot run at once, so
they take turns, round after round (`--rounds`), each round starting every configuration afresh
in the same order: a load change on a shared machine hits all alike, and medians over rounds are
quoted. Within a round, each level of concurrency sends the same raw inputs, one per
`POST /v1/classify` request from N concurrent asyncio httpx clients (`serve_load.load`), after a
warm-up of a few requests per replica. Reported: throughput (requests/s over the wall time of a
level) and latency percentiles, per configuration and level, the ratio of median throughputs to
the first configuration, and whether every configuration gave the same labels.

Inputs: the first `--requests` raw inputs of the task's held-out pool, under the classifier's card.

Usage: python benchmarks/serve_replicas.py --policy results/fit/gemma3-270m-sst2 [--model gemma3-270m]
       [--configs 1x1,2x1,1x2] [--requests 64] [--concurrency 8,32] [--rounds 2]
       [--out benchmarks/results/serve_replicas.json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import statistics
import sys

import torch

from serve_load import Server, classifier_inputs, load, percentile, write_report


def parse_configs(text: str) -> list[tuple[int, int]]:
    """`1x1,2x1` → [(1, 1), (2, 1)]: (replicas, torch threads per replica)."""
    configs = []
    for part in text.split(","):
        replicas, _, threads = part.strip().partition("x")
        if not (replicas.isdigit() and threads.isdigit() and int(replicas) >= 1 and int(threads) >= 1):
            raise ValueError(f"--configs takes REPLICASxTHREADS items such as 2x1, got {part!r}")
        configs.append((int(replicas), int(threads)))
    return configs


def name(config: tuple[int, int]) -> str:
    replicas, threads = config
    return f"{replicas} replica{'s' if replicas > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"


def measure(server: Server, texts: list[str], concurrency: int) -> dict:
    wall, latencies, labels = asyncio.run(load(server.url, texts, concurrency))
    return {"seconds": round(wall, 2), "throughput_rps": round(len(texts) / wall, 3),
            "latency_ms": {f"p{int(q * 100)}": round(1000 * percentile(latencies, q), 1) for q in (0.5, 0.95)},
            "labels": labels}


def run_round(common: list[str], configs: list[tuple[int, int]], texts: list[str], levels: list[int]) -> dict:
    """Every configuration once, in order: {config name: {"levels": {concurrency: figures}, "exit_code"}}."""
    measured = {}
    for replicas, threads in configs:
        server = Server(common + ["--ray", "--replicas", str(replicas), "--threads", str(threads)])
        try:
            asyncio.run(load(server.url, texts[:4 * replicas], 2 * replicas))  # first passes in every replica
            figures = {}
            for concurrency in levels:
                figures[concurrency] = measure(server, texts, concurrency)
                print(f"{name((replicas, threads))}, {concurrency} clients: "
                      f"{figures[concurrency]['throughput_rps']:.2f} requests/s", file=sys.stderr, flush=True)
        finally:
            exit_code = server.stop()
        measured[name((replicas, threads))] = {"levels": figures, "exit_code": exit_code}
    return measured


def summarize(rounds: list[dict], configs: list[tuple[int, int]], levels: list[int]) -> list[dict]:
    """Per level and configuration: the median over rounds, and its ratio to the first configuration."""
    rows = []
    for concurrency in levels:
        medians = {name(config): statistics.median(r[name(config)]["levels"][concurrency]["throughput_rps"]
                                                   for r in rounds) for config in configs}
        for config in configs:
            key = name(config)
            per_round = [r[key]["levels"][concurrency] for r in rounds]
            rows.append({
                "concurrency": concurrency, "config": key, "replicas": config[0], "threads": config[1],
                "throughput_rps_median": round(medians[key], 3),
                "throughput_rps_rounds": [figures["throughput_rps"] for figures in per_round],
                "p50_ms_median": round(statistics.median(f["latency_ms"]["p50"] for f in per_round), 1),
                "p95_ms_median": round(statistics.median(f["latency_ms"]["p95"] for f in per_round), 1),
                "ratio_to_first": round(medians[key] / medians[name(configs[0])], 3),
            })
    return rows


def markdown(report: dict) -> str:
    lines = ["# `adainfer serve --ray`: throughput with 1 and 2 replicas", "", f"`{report['command']}`", "",
             f"Model `{report['model']}`, classifier `{report['policy']}` ({report['task']}, {report['shots']}-shot, "
             f"early exit); {report['requests']} requests per level, one raw input each; per replica: max batch "
             f"{report['max_batch_size']}, max wait {report['max_wait_ms']} ms; a local Ray on {report['cpus']} CPUs "
             f"(load average {report['load_average_start']} at start, {report['load_average_end']} at end: a shared "
             f"machine, so noisy). Medians over {report['rounds']} rounds; each round starts every configuration "
             "afresh, in turn. Ray's proxy, the load generator and the replicas share the same cores.", "",
             "| clients | configuration | requests/s (median) | per round | p50 ms | p95 ms | vs first |",
             "|---|---|---|---|---|---|---|"]
    for row in report["summary"]:
        lines.append(f"| {row['concurrency']} | {row['config']} | {row['throughput_rps_median']:.2f} | "
                     f"{', '.join(f'{value:.2f}' for value in row['throughput_rps_rounds'])} | "
                     f"{row['p50_ms_median']:.0f} | {row['p95_ms_median']:.0f} | {row['ratio_to_first']:.2f}x |")
    lines += ["", f"Every configuration gave the same labels at every level and round: {report['labels_equal']}. "
                  f"Exit codes after SIGTERM: {sorted(set(report['exit_codes']))}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, help="classifier directory written by `adainfer fit`")
    parser.add_argument("--model", default="gemma3-270m", help="embedded model name, local directory or .gguf")
    parser.add_argument("--configs", default="1x1,2x1,1x2", help="REPLICASxTHREADS, comma-separated; the first is the baseline")
    parser.add_argument("--requests", type=int, default=64, help="requests per level")
    parser.add_argument("--concurrency", default="8,32", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--rounds", type=int, default=2, help="times every configuration is started and measured")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--data-dir", default=None, help="datasets folder (default: $ADAINFER_DATA or ../shared/data)")
    parser.add_argument("--out", default="benchmarks/results/serve_replicas.json")
    args = parser.parse_args()
    levels = [int(part) for part in args.concurrency.split(",") if part.strip()]
    try:
        configs = parse_configs(args.configs)
    except ValueError as error:
        parser.error(str(error))
    if args.requests < 1 or args.rounds < 1 or not levels or min(levels) < 1:
        parser.error("--requests, --rounds and every --concurrency must be >= 1")

    card, texts = classifier_inputs(args.policy, args.requests, args.data_dir)
    common = ["-p", args.policy, "-m", args.model, "--max-batch-size", str(args.max_batch_size),
              "--max-wait-ms", str(args.max_wait_ms)]
    load_start = round(os.getloadavg()[0], 2)
    rounds = [run_round(common, configs, texts, levels) for _ in range(args.rounds)]
    labels = [figures["labels"] for measured in rounds for config in measured.values()
              for figures in config["levels"].values()]
    report = {
        "benchmark": "serve_replicas",
        "command": "python " + " ".join(shlex.quote(part) for part in sys.argv),
        "model": args.model, "policy": args.policy, "task": card.task, "shots": card.shots,
        "requests": len(texts), "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
        "rounds": args.rounds, "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "load_average_start": load_start, "load_average_end": round(os.getloadavg()[0], 2),
        "labels_equal": all(entry == labels[0] for entry in labels),
        "exit_codes": [config["exit_code"] for measured in rounds for config in measured.values()],
        "summary": summarize(rounds, configs, levels),
        "rounds_measured": [{key: {"exit_code": value["exit_code"],
                                   "levels": {str(c): {k: v for k, v in f.items() if k != "labels"}
                                              for c, f in value["levels"].items()}}
                             for key, value in measured.items()} for measured in rounds],
    }
    write_report(report, args.out, markdown(report))


if __name__ == "__main__":
    main()
