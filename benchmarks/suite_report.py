"""The Markdown summary of `suite.py`'s JSON: one table per section, the command on top."""

from __future__ import annotations

from typing import Any


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def _mark(met: bool) -> str:
    return "yes" if met else "**no**"


def markdown(report: dict[str, Any]) -> str:
    """Tables (a) overhead, (b) early exit against dense and ideal, (c) peak memory."""
    model, machine, settings = report["model"], report["machine"], report["settings"]
    goals = report["goals"]
    parts = [
        "# Early exit against the clock\n",
        f"`{report['command']}`\n",
        f"Model `{model['name']}` ({model['layers']} layers, hidden {model['hidden']}, vocabulary "
        f"{model['vocab']:,}, {model['dtype']}) on {machine['device']} ({machine['cpus']} CPUs, "
        f"{machine['torch_threads']} torch thread(s), torch {machine['torch']}); load average "
        f"{machine['load_average_at_start'][0]:.1f} at start, {machine['load_average_at_end'][0]:.1f} at end. "
        f"Medians of {settings['repeats']} passes over the same prompts, interleaved batch by batch; wall-clock "
        "seconds decide the goals, CPU-time columns leave out time taken by other processes; definitions in "
        "`benchmarks/suite.py`.\n",
    ]
    for task, entry in report["tasks"].items():
        policy = entry["policy"]
        about = policy["kind"] + (f" on {', '.join(policy['features'])}, fitted on {policy['train_prompts']} train "
                                  f"prompts (positive rate {policy['positive_rate']:.2f})" if "features" in policy else "")
        if "error" in policy:
            about += f"; not fitted: {policy['error']}"
        parts.append(f"- `{task}`: {entry['prompts']} eval prompts, {entry['shots']}-shot, "
                     f"{entry['mean_tokens']:.0f} tokens on average (max {entry['max_tokens']}); "
                     f"`svm` policy: {about}.")
    parts.append("")

    rows = [[task, key.removeprefix("batch_"), f"{row['forward_seconds']:.3f}", f"{row['dense_seconds']:.3f}",
             f"{row['executor_seconds']:.3f}", f"{row['overhead_vs_forward']:+.1%}", f"{row['overhead_vs_dense']:+.1%}",
             f"{row['overhead_vs_dense_cpu_time']:+.1%}", _mark(row["goal_met"]),
             f"{row['max_abs_logit_difference']['executor']:.1e}"]
            for task, entry in report["tasks"].items() for key, row in entry["overhead"].items()]
    parts += ["## (a) Executor at full depth against the model's forward\n",
              "`forward`: transformers' forward with `logits_to_keep=1`; `dense`: the same with the head on a "
              "(batch, hidden) input, which avoids a slow bmm at batch > 1. The goal must hold against both.\n",
              _table(["task", "batch", "forward (s)", "dense (s)", "executor (s)", "vs forward", "vs dense",
                      "vs dense (CPU time)", f"<= {goals['executor_overhead_max']:.0%}",
                      "max abs logit diff"], rows)]

    rows = []
    for task, entry in report["tasks"].items():
        for key, configs in entry["early_exit"].items():
            for name, row in configs.items():
                own = name == row["baseline"]
                rows.append([task, key.removeprefix("batch_"), name, row["lens"], "" if own else row["baseline"],
                             f"{row['mean_exit_layer']:.1f}", f"{row['seconds_median']:.3f}",
                             f"{row['ideal_speedup']:.2f}", f"{row['speedup']:.2f}", f"{row['efficiency']:.2f}",
                             "" if own else _mark(row["goal_met"]), f"{row['efficiency_cpu_time']:.2f}",
                             f"{row['speedup_vs_dense']:.2f}",
                             f"{row['accuracy']:.2f}"])
    parts += ["## (b) Early exit against dense, and against the ideal from layers saved\n",
              "ideal = token-layers of dense / token-layers of early exit; measured = baseline seconds / "
              "seconds; efficiency = measured / ideal. `-full` configurations are compared with `dense` (the "
              "model's forward), `-cand` ones with `dense-cand` (the same forward, head on the candidates).\n",
              _table(["task", "batch", "config", "lens", "baseline", "mean exit layer", "seconds", "ideal speedup",
                      "measured speedup", "efficiency", f">= {goals['efficiency_min']}", "efficiency (CPU time)",
                      "speedup vs dense",
                      "accuracy"], rows)]

    rows = [[task, key.removeprefix("batch_"), name, f"{row['peak_mib']:.1f}", f"{row['vs_baseline']:.2f}"]
            for task, entry in report["tasks"].items() for key, configs in entry["memory"].items()
            for name, row in configs.items()]
    if rows:
        parts += ["## (c) Peak memory of one pass\n",
                  "The most bytes held at once by tensors allocated during the pass (weights not counted).\n",
                  _table(["task", "batch", "config", "peak (MiB)", "vs baseline"], rows)]
    return "\n".join(parts)
