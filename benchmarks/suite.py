"""Does the clock agree with the layers saved? Executor overhead, early-exit speed against its ideal, peak memory.

All figures come from one run on the same prompts (few-shot SST-2 and MMLU eval queries from
`../shared/data`). Within a section every configuration makes one untimed warm-up pass, then
`--repeats` timed passes interleaved batch by batch (each batch is run by every configuration in
turn, starting at a rotating one), so a load that drifts over seconds falls on all alike;
figures are medians over the passes. Tokenising is inside every timed pass that starts from text.
Wall-clock seconds decide the goals; the process's CPU seconds are reported too (on a CPU with
one torch thread they leave out the time other processes take from it).

(a) `overhead`: the executor at full depth (`prepare` + `run_layers(0, L)` + `lens` of the last
    position) against two dense references on the same encoded batches: `forward`, the model's
    forward as transformers runs it (`logits_to_keep=1`, `use_cache=False`), and `dense`, the same
    forward with the head given a (batch, hidden) input. transformers hands the head a
    (batch, 1, hidden) strided view, which PyTorch's CPU linear runs as a bmm 3-4x slower than a
    matmul (0.54 s vs 0.14 s for 8 rows of Gemma 3's 262k-row head), so at batch > 1 `forward`
    is the slower reference. overhead = executor / reference - 1; the goal (<= 5 %) must hold
    against both.
(b) `early_exit`: `predict` (batch 1) / `predict_batch` (batch 16) against two dense baselines:
    `dense` (above) and `dense-cand`, the same forward with the head on the candidate answer
    tokens only, which is all a closed answer set needs (the full head is memory-bound at
    batch 1: on Gemma 3 270M it reads 671 MB, about 4 layers' time for a 100-token prompt). Each
    schedule runs with the lens on the full vocabulary (`-full`, compared with `dense`) or on the
    candidates (`-cand`, compared with `dense-cand`), so the two sides of a ratio differ only by
    the layers skipped and the per-layer checks; `speedup_vs_dense` compares everything with `dense`.
    - `fixedE`: every prompt exits after layer E (default 2L/3), whatever the features say, so
      speed against ideal is measured apart from any policy's quality;
    - `spread-cand`: each prompt exits after a layer in L/3..L picked by a hash of its features,
      so batches lose rows at many layers (the cost of cutting rows out of a batch shows here);
    - `svm`: an RBF `SVMPolicy` on (cand_gap, cand_top_prob, depth) fitted on full-depth traces of
      train prompts, label 1 where the layer's best candidate is the gold answer's first token.
      `svm-full` decides on the same three features but also reads the paper's `gap` and
      `top_prob` on the full vocabulary, so the two lens costs are compared at (almost) the same
      exits. With `--random-llama-7b` the SVM is skipped (random weights).
    speedup = baseline seconds / early-exit seconds. ideal = the speedup if time were proportional
    to the token-layers computed: sum_i w_i * L / sum_i w_i * e_i, where e_i is prompt i's exit
    layer and w_i the tokens its row holds (its length at batch 1, its batch's padded width at
    batch 16); checks, embedding and the final head are free in the ideal. efficiency = speedup / ideal
    (goal >= 0.9). Batches are formed from the prompts sorted by length, as a server would.
(c) `memory`: peak memory of one pass of each configuration of (b): the most bytes held at once
    by tensors allocated during the pass, so weights and inputs made before it are not counted.
    CUDA: `torch.cuda.max_memory_allocated()` above `memory_allocated()` before the pass. CPU has no
    such counter, so the pass runs under `torch.profiler` with `profile_memory=True`, whose memory
    events carry the running total of bytes allocated minus freed; its maximum is the peak. (Process
    RSS was tried first and rejected: the safetensors weights are memory-mapped and paged in by
    whichever pass touches them first, and malloc's reuse of freed memory hides or shows
    allocations by chance, so RSS deltas moved by tens of MiB between identical passes.)

Usage: python benchmarks/suite.py [--prompts 32] [--repeats 3] [--device cpu|cuda] [--random-llama-7b]
Writes benchmarks/results/suite.json and suite.md (suite-random-llama-7b.* with --random-llama-7b).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adainfer.data.task_data import load_task
from adainfer.data.tasks import build_prompts
from adainfer.engine.batch import PaddedBatch, encode_batch
from adainfer.engine.model import EarlyExitModel
from adainfer.inference.predict import predict, predict_batch
from adainfer.policies.svm import SVMPolicy
from suite_report import markdown

CANDIDATE_FEATURES = ("cand_gap", "cand_top_prob", "depth")
FULL_VOCAB_FEATURES = ("gap", "top_prob")
GOALS = {"executor_overhead_max": 0.05, "efficiency_min": 0.9}


class FixedExit:
    """Exits every prompt after `exit_layer` layers; `features` only set what the lens computes."""

    def __init__(self, exit_layer: int, features: tuple[str, ...]) -> None:
        self.exit_layer, self.features = exit_layer, features

    def should_exit(self, trace: np.ndarray) -> bool:
        return len(trace) >= self.exit_layer


class SpreadExit:
    """Exits each prompt after a layer in `lowest`..L picked by a hash of its first-layer features.

    The layers mean nothing; they are spread evenly so that batches lose rows at many different
    layers, which neither the fixed schedule nor a policy with clustered exits exercises.
    """

    def __init__(self, lowest: int, num_layers: int, features: tuple[str, ...]) -> None:
        self.lowest, self.num_layers, self.features = lowest, num_layers, features

    def should_exit(self, trace: np.ndarray) -> bool:
        key = int(round(float(trace[0].sum()) * 1000)) * 2654435761 % 2**32  # Knuth's multiplicative hash
        return len(trace) >= self.lowest + key % (self.num_layers - self.lowest + 1)


class AlsoReading:
    """`policy`, deciding on its own features (the last columns), while the lens also reads `extra` ones."""

    def __init__(self, policy: Any, extra: tuple[str, ...]) -> None:
        self.policy, self.features = policy, (*extra, *policy.features)

    def should_exit(self, trace: np.ndarray) -> bool:
        return self.policy.should_exit(trace[:, -len(self.policy.features):])


def shots_for(spec: str) -> dict[str, int]:
    return {task: int(shots) for task, shots in (item.split("=") for item in spec.split(","))}


def build_model(args: argparse.Namespace) -> EarlyExitModel:
    if args.random_llama_7b:
        from random_llama import random_llama_7b

        splits = [load_task(task) for task in args.tasks]
        texts = [example.input for task in splits for example in [*task.train[:20000], *task.eval[:20000]]]
        return random_llama_7b(texts, args.device, args.llama_layers, args.seed)
    model = EarlyExitModel.from_pretrained(args.model)
    model.model.to(args.device)
    return model


def workload(model: EarlyExitModel, task_name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The task's timed prompts sorted by token count, their gold answer ids, and its candidate ids."""
    task = load_task(task_name)
    shots = shots_for(args.shots).get(task_name, 5)
    labelled = build_prompts(task.eval, task.train, shots, args.prompts, args.seed)
    labelled.sort(key=lambda item: model.encode(item.prompt).shape[1])
    return {"task": task, "shots": shots, "prompts": [item.prompt for item in labelled],
            "gold": [model.answer_token(item.prompt, item.answer) for item in labelled],
            "candidate_ids": model.candidate_tokens(task.choices)}


def fit_policy(model: EarlyExitModel, work: dict[str, Any], args: argparse.Namespace) -> tuple[Any, dict]:
    """The SVM of the `svm` schedule, fitted on full-depth traces of the task's train prompts."""
    task = work["task"]
    labelled = build_prompts(task.classifier_queries, task.train, work["shots"], args.train_prompts, args.seed + 1)
    traces = [model.trace(item.prompt, CANDIDATE_FEATURES, work["candidate_ids"]) for item in labelled]
    X = np.stack([trace.features for trace in traces])
    y = np.stack([trace.cand_top1 == model.answer_token(item.prompt, item.answer)
                  for trace, item in zip(traces, labelled)]).astype(int)
    about = {"kind": "SVMPolicy (RBF, C=1)", "features": list(CANDIDATE_FEATURES), "train_prompts": len(labelled),
             "label": "layer's best candidate == gold answer's first token", "positive_rate": float(y.mean())}
    try:
        return SVMPolicy(CANDIDATE_FEATURES).fit(X, y), about
    except ValueError as error:
        return None, {**about, "error": str(error)}


def policies_for(model: EarlyExitModel, svm: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Early-exit configurations by name; `-full` ones read the full-vocabulary lens, `-cand` ones the candidates'."""
    exit_layer = args.exit_layer or round(2 * model.num_layers / 3)
    chosen = {f"fixed{exit_layer}-full": FixedExit(exit_layer, (*FULL_VOCAB_FEATURES, "depth")),
              f"fixed{exit_layer}-cand": FixedExit(exit_layer, CANDIDATE_FEATURES),
              "spread-cand": SpreadExit(model.num_layers // 3, model.num_layers, CANDIDATE_FEATURES)}
    if svm is not None:
        chosen["svm-full"] = AlsoReading(svm, FULL_VOCAB_FEATURES)
        chosen["svm-cand"] = svm
    return chosen


def to_device(batch: PaddedBatch, device: str) -> PaddedBatch:
    return PaddedBatch(batch.input_ids.to(device), batch.attention_mask.to(device), batch.position_ids.to(device),
                       batch.lengths)


def chunks(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def forward(model: EarlyExitModel, batch: PaddedBatch) -> torch.Tensor:
    """The model's own forward as transformers runs it: last-position logits (batch, vocab)."""
    return model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, logits_to_keep=1, use_cache=False).logits[:, -1]


def dense_forward(model: EarlyExitModel, batch: PaddedBatch, candidate_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The model's own forward with its head on a (batch, hidden) input: logits (batch, vocab or candidates).

    The base model's output is already through the final norm (and OPT's projection); the head
    and soft-cap are left (`Lens.unembed`). `forward` hands the head a (batch, 1, hidden) view instead, which
    PyTorch's CPU linear runs as a bmm several times slower than this matmul at batch > 1.
    With `candidate_ids` only their rows of the head run, all a closed answer set needs.
    """
    last = model.model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                  position_ids=batch.position_ids, use_cache=False).last_hidden_state[:, -1]
    return model.executor.lens.unembed(last, rows=candidate_ids)


def executor_forward(model: EarlyExitModel, batch: PaddedBatch) -> torch.Tensor:
    """The executor at full depth: the same logits (batch, vocab) one layer at a time."""
    executor = model.executor
    inputs = executor.prepare(batch.input_ids, batch.attention_mask, position_ids=batch.position_ids)
    return executor.lens(executor.run_layers(inputs.embeddings, inputs, 0, executor.num_layers)[:, -1])


Steps = list[Callable[[], Any]]  # one pass over the prompts, one step per batch


def overhead_runs(model: EarlyExitModel, prompts: list[str], batch_size: int, device: str) -> dict[str, Steps]:
    batches = [to_device(encode_batch(model, chunk), device) for chunk in chunks(prompts, batch_size)]
    return {name: [torch.no_grad()(lambda run=run, batch=batch: run(model, batch)) for batch in batches]
            for name, run in (("forward", forward), ("dense", dense_forward), ("executor", executor_forward))}


def early_exit_runs(model: EarlyExitModel, work: dict[str, Any], batch_size: int,
                    configs: dict[str, Any], device: str) -> dict[str, Steps]:
    """Each configuration's steps; a step returns (answer id, exit layer, row width) per prompt of its batch."""
    candidate_ids = torch.tensor(work["candidate_ids"], device=device)

    @torch.no_grad()
    def dense(group: list[str], on_candidates: bool) -> list[tuple[int, int, int]]:
        batch = to_device(encode_batch(model, group), device)
        answers = (candidate_ids[dense_forward(model, batch, candidate_ids).argmax(dim=-1)] if on_candidates
                   else dense_forward(model, batch).argmax(dim=-1)).tolist()
        return [(answer, model.num_layers, batch.input_ids.shape[1]) for answer in answers]

    def early_exit(group: list[str], policy: Any, candidates: list[int] | None) -> list[tuple[int, int, int]]:
        results = ([predict(model, group[0], policy, candidates)] if len(group) == 1
                   else predict_batch(model, group, policy, candidates))
        width = max(result.seq_len for result in results)
        return [(result.answer_token_id, result.exit_layer, width) for result in results]

    groups = chunks(work["prompts"], batch_size)
    runs = {name: [lambda group=group, flag=flag: dense(group, flag) for group in groups]
            for name, flag in (("dense", False), ("dense-cand", True))}
    for name, policy in configs.items():
        candidates = work["candidate_ids"] if any(f.startswith("cand_") for f in policy.features) else None
        runs[name] = [lambda group=group, policy=policy, candidates=candidates: early_exit(group, policy, candidates)
                      for group in groups]
    return runs


def timed(runs: dict[str, Steps], repeats: int, device: str) -> dict[str, Any]:
    """Wall-clock and process CPU seconds of each run's pass per repeat, after one untimed warm-up pass each.

    Interleaved step by step: each batch is run by every configuration in turn (starting at a
    rotating one) before the next batch, so a load that changes over seconds falls on all of them
    alike. Also returns each run's warm-up outputs per step and the runs whose (non-tensor)
    outputs changed between passes (none expected on a CPU).
    """
    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    outputs = {name: [step() for step in steps] for name, steps in runs.items()}
    names, unstable = list(runs), set()
    wall = {name: [0.0] * repeats for name in names}
    cpu = {name: [0.0] * repeats for name in names}
    for repeat in range(repeats):
        for index in range(len(runs[names[0]])):
            shift = (repeat + index) % len(names)
            for name in names[shift:] + names[:shift]:
                sync()
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                output = runs[name][index]()
                sync()
                wall[name][repeat] += time.perf_counter() - start_wall
                cpu[name][repeat] += time.process_time() - start_cpu
                if not isinstance(output, torch.Tensor) and output != outputs[name][index]:
                    unstable.add(name)
    return {"wall": wall, "cpu": cpu, "outputs": outputs, "unstable": unstable}


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in times.items()}


def overhead_section(model: EarlyExitModel, prompts: list[str], batch_size: int, args) -> dict[str, Any]:
    timing = timed(overhead_runs(model, prompts, batch_size, args.device), args.repeats, args.device)
    wall, cpu, outputs = medians(timing["wall"]), medians(timing["cpu"]), timing["outputs"]
    overhead = {name: wall["executor"] / wall[name] - 1 for name in ("forward", "dense")}
    return {"forward_seconds": wall["forward"], "dense_seconds": wall["dense"], "executor_seconds": wall["executor"],
            "overhead_vs_forward": overhead["forward"], "overhead_vs_dense": overhead["dense"],
            "overhead_vs_forward_cpu_time": cpu["executor"] / cpu["forward"] - 1,
            "overhead_vs_dense_cpu_time": cpu["executor"] / cpu["dense"] - 1,
            "goal_met": max(overhead.values()) <= GOALS["executor_overhead_max"],
            "max_abs_logit_difference": {name: max(float((a.float() - b.float()).abs().max())
                                                   for a, b in zip(outputs["forward"], outputs[name]))
                                         for name in ("dense", "executor")},
            "wall_seconds": timing["wall"], "cpu_seconds": timing["cpu"]}


def baseline_of(name: str) -> str:
    return "dense-cand" if name.endswith("-cand") else "dense"


def early_exit_section(model: EarlyExitModel, work: dict[str, Any], batch_size: int,
                       configs: dict[str, Any], args) -> dict[str, Any]:
    timing = timed(early_exit_runs(model, work, batch_size, configs, args.device), args.repeats, args.device)
    wall, cpu = medians(timing["wall"]), medians(timing["cpu"])
    rows = {}
    for name, steps in timing["outputs"].items():
        answers, exits, widths = (np.array(column) for column in zip(*[row for step in steps for row in step]))
        baseline = baseline_of(name)
        ideal = float((widths * model.num_layers).sum() / (widths * exits).sum())
        speedup = wall[baseline] / wall[name]
        rows[name] = {
            "lens": "candidates" if name.endswith("-cand") else "full vocabulary", "baseline": baseline,
            "seconds_median": wall[name], "mean_exit_layer": float(exits.mean()), "ideal_speedup": ideal,
            "speedup": speedup, "efficiency": speedup / ideal,
            "efficiency_cpu_time": cpu[baseline] / cpu[name] / ideal,
            "speedup_vs_dense": wall["dense"] / wall[name], "goal_met": speedup / ideal >= GOALS["efficiency_min"],
            "accuracy": float((answers == np.array(work["gold"])).mean()),
            "same_answers_every_repeat": name not in timing["unstable"],
            "wall_seconds": timing["wall"][name], "cpu_seconds": timing["cpu"][name]}
    return rows


def peak_memory(steps: Steps, device: str) -> float:
    """Peak MiB held at once by tensors allocated during one pass (weights and earlier tensors excluded)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for step in steps:
            step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        for step in steps:
            step()
    with tempfile.TemporaryDirectory() as folder:
        profiler.export_chrome_trace(f"{folder}/trace.json")
        events = json.loads(Path(f"{folder}/trace.json").read_text())["traceEvents"]
    # "Total Allocated" is the running sum of the bytes allocated minus freed since the profiler started.
    return max([0] + [event["args"]["Total Allocated"] for event in events if event.get("name") == "[memory]"]) / 2**20


def memory_section(model, work, batch_size, configs, args) -> dict[str, Any]:
    runs = early_exit_runs(model, work, batch_size, configs, args.device)
    rows = {name: {"peak_mib": peak_memory(steps, args.device)} for name, steps in runs.items()}
    for name, row in rows.items():
        row["vs_baseline"] = row["peak_mib"] / rows[baseline_of(name)]["peak_mib"]
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m", help="embedded model name or local directory")
    parser.add_argument("--tasks", type=lambda text: text.split(","), default=["sst2", "mmlu"])
    parser.add_argument("--shots", default="sst2=5,mmlu=1", help="demonstrations per task, TASK=K,...")
    parser.add_argument("--prompts", type=int, default=32, help="timed eval prompts per task")
    parser.add_argument("--train-prompts", type=int, default=64, help="train prompts the SVM is fitted on")
    parser.add_argument("--batch-sizes", type=lambda text: [int(x) for x in text.split(",")], default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--exit-layer", type=int, default=None, help="fixed schedule's exit layer (default 2L/3)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip section (c)")
    parser.add_argument("--random-llama-7b", action="store_true", help="random Llama-2-7B-shaped model, fixed schedule")
    parser.add_argument("--llama-layers", type=int, default=32, help="layers of the random Llama (fewer to test on CPU)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to torch on this machine")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    command = "python benchmarks/suite.py " + " ".join(sys.argv[1:])
    load_before = os.getloadavg()
    model = build_model(args)
    first = next(model.model.parameters())
    report: dict[str, Any] = {
        "benchmark": "suite", "command": command.strip(), "goals": GOALS,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads,
                    "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                    "torch": torch.__version__, "load_average_at_start": load_before},
        "model": {"name": model.loaded.name, "layers": model.num_layers, "hidden": model.cost_model.hidden_size,
                  "vocab": model.cost_model.vocab_size, "dtype": str(first.dtype).removeprefix("torch.")},
        "settings": {"repeats": args.repeats, "prompts_per_task": args.prompts, "batch_sizes": args.batch_sizes,
                     "train_prompts": args.train_prompts, "shots": shots_for(args.shots)},
        "tasks": {},
    }
    for task_name in args.tasks:
        work = workload(model, task_name, args)
        lengths = [model.encode(prompt).shape[1] for prompt in work["prompts"]]
        svm, about = (None, {"kind": "none: random weights, fixed and spread schedules only"}) if args.random_llama_7b \
            else fit_policy(model, work, args)
        configs = policies_for(model, svm, args)
        entry = report["tasks"][task_name] = {
            "shots": work["shots"], "prompts": len(lengths), "mean_tokens": float(np.mean(lengths)),
            "max_tokens": max(lengths), "candidate_ids": work["candidate_ids"], "policy": about,
            "overhead": {}, "early_exit": {}, "memory": {}}
        for batch_size in args.batch_sizes:
            key = f"batch_{batch_size}"
            print(f"{task_name} {key}: overhead, early exit" + ("" if args.no_memory else ", memory"), file=sys.stderr)
            entry["overhead"][key] = overhead_section(model, work["prompts"], batch_size, args)
            entry["early_exit"][key] = early_exit_section(model, work, batch_size, configs, args)
            if not args.no_memory:
                entry["memory"][key] = memory_section(model, work, batch_size, configs, args)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    stem = "suite-random-llama-7b" if args.random_llama_7b else "suite"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(json.dumps({task: {key: {name: round(row.get("efficiency", 1.0), 3) for name, row in rows.items()}
                             for key, rows in entry["early_exit"].items()}
                      for task, entry in report["tasks"].items()}, indent=1))


if __name__ == "__main__":
    main()
