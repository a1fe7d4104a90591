"""Trace collection on Ray with 1 and 2 workers, side by side in one run: does it scale?

The same N few-shot prompts (SST-2's eval prompts of `adainfer eval`'s setting) are collected
twice on a local Ray of 2 CPUs, once with 1 worker and once with 2, each worker one torch thread,
into two fresh rows files, which must be byte-identical. Per run:

- `steady_prompts_per_second`: (N - k) prompts / the time from the k-th prompt's rows reaching
  the driver to the last one's, k = N // 4 (at least the number of workers): the rate once every
  worker has loaded the model and is tracing, which is what a long collection runs at. The first
  quarter is left out, not just each worker's first prompt, because the first rows can reach the
  driver in a clump and would make a short interval look fast.
- `end_to_end_prompts_per_second`: N / the whole `collect` call, actor start-up and model loads
  included (each worker loads its own copy), which a short run like this one is dominated by.

Usage: python benchmarks/ray_collect.py [--prompts 32] [--shots 5] [--task sst2] [--model gemma3-270m]
       [--out benchmarks/results]   (prints the JSON; writes ray_collect.{json,md} under --out)
Timings are of a shared machine: the load average at the start is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from adainfer.data.tasks import LabelledPrompt
from adainfer.engine.features import CANDIDATE_FEATURES
from adainfer.engine.files import write_text_atomic
from adainfer.engine.model import EarlyExitModel
from adainfer.eval.collect import collect
from adainfer.data.task_data import load_task
from adainfer.eval.harness import BASE_FEATURES, task_prompts
from adainfer.scale.collect import RayRows, connected

WORKERS = (1, 2)


def timed_run(model: EarlyExitModel, source: str | None, prompts: list[LabelledPrompt], features: tuple[str, ...],
              candidates: list[int] | None, workers: int, output: Path) -> dict[str, object]:
    """Collect `prompts` into `output` with `workers` Ray workers, stamping each prompt's arrival."""
    ray_rows = RayRows(source, None, model.identity(), workers=workers)
    arrivals: list[float] = []

    def stamped(pending: Sequence[tuple[int, LabelledPrompt]], names: tuple[str, ...],
                candidate_ids: list[int] | None) -> Iterator[tuple[int, str]]:
        for index, rows in ray_rows(pending, names, candidate_ids):
            arrivals.append(time.perf_counter())
            yield index, rows

    start = time.perf_counter()
    collect(model, prompts, output, features, candidate_ids=candidates, row_source=stamped)
    total = time.perf_counter() - start
    warm = max(workers, len(prompts) // 4)
    steady = arrivals[-1] - arrivals[warm - 1]
    return {
        "workers": workers,
        "prompts": len(prompts),
        "seconds_total": round(total, 2),
        "seconds_to_first_prompt": round(arrivals[0] - start, 2),
        "end_to_end_prompts_per_second": round(len(prompts) / total, 3),
        "steady_prompts_per_second": round((len(prompts) - warm) / steady, 3),
    }


def markdown(result: dict) -> str:
    lines = ["# Trace collection on Ray: 1 vs 2 workers", "", f"`{result['command']}`", "",
             f"{result['prompts']} {result['setting']} eval prompts on {result['model']}, features "
             f"{', '.join(result['features'])}; a local Ray of {result['ray_cpus']} CPUs on a machine of "
             f"{result['machine_cpus']} cores (load average {result['load_average_at_start']} at the start: "
             f"shared, so noisy); each worker one torch thread. The two rows files are "
             f"{'byte-identical' if result['identical_rows'] else 'DIFFERENT'}.", "",
             "| workers | steady prompts/s | end-to-end prompts/s | seconds to first prompt | seconds in all |",
             "|---|---|---|---|---|"]
    for run in result["runs"]:
        lines.append(f"| {run['workers']} | {run['steady_prompts_per_second']} | {run['end_to_end_prompts_per_second']} "
                     f"| {run['seconds_to_first_prompt']} | {run['seconds_total']} |")
    lines += ["", f"Steady-state speed-up with 2 workers: **{result['steady_speedup']}×**; end to end (start-up "
              f"and model loads included): {result['end_to_end_speedup']}×.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--model", default=None, help="Default: the embedded Gemma 3 270M.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_average = round(os.getloadavg()[0], 2)
    task = load_task(args.task)
    prompts = task_prompts(task, "eval", args.shots, args.prompts, seed=0)
    model = EarlyExitModel.from_pretrained(args.model)  # converts a GGUF once, before workers load it
    candidates = model.candidate_tokens(task.choices) if task.choices else None
    features = BASE_FEATURES + (CANDIDATE_FEATURES if candidates else ())
    source = str(Path(args.model).resolve()) if args.model and Path(args.model).exists() else args.model
    runs, files = [], []
    with tempfile.TemporaryDirectory() as folder, connected(workers=max(WORKERS)):
        for workers in WORKERS:
            output = Path(folder) / f"{workers}-workers.jsonl"
            runs.append(timed_run(model, source, prompts, features, candidates, workers, output))
            files.append(output.read_bytes())
    result = {
        "command": shlex.join(["python", *sys.argv]),
        "model": model.loaded.name,
        "setting": f"{task.name}/{args.shots}shot-seed0",
        "prompts": len(prompts),
        "features": list(features),
        "machine_cpus": os.cpu_count(),
        "ray_cpus": max(WORKERS),
        "load_average_at_start": load_average,
        "identical_rows": all(data == files[0] for data in files),
        "runs": runs,
        "steady_speedup": round(runs[1]["steady_prompts_per_second"] / runs[0]["steady_prompts_per_second"], 2),
        "end_to_end_speedup": round(runs[1]["end_to_end_prompts_per_second"]
                                    / runs[0]["end_to_end_prompts_per_second"], 2),
    }
    text = json.dumps(result, indent=1)
    write_text_atomic(args.out / "ray_collect.json", text + "\n")
    write_text_atomic(args.out / "ray_collect.md", markdown(result))
    print(text)


if __name__ == "__main__":
    main()
