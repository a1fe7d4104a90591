"""A fitted classifier's four passes over its cached demonstrations, timed in rotation, batch by batch, in one run.

(a) the model's forward on the full prompt; (b) the model's forward on each prompt's own tokens
over the demonstrations' keys and values prefilled once and copied per batch (`logits_to_keep=1`):
the best dense path a transformers user can write; (c) our walk at full depth over the same
cached prefix; (d) early exit over it. The passes are `adainfer.fit.timing.measure_speedup`'s,
the same code as the fit card's speed figures. Reported at each thread count and batch size:
d/a, d/b, d/c, seconds per prompt, the prompts and threads, the cache's size in bytes, how many
answers of (d) equal the full-prompt forward's, and the machine's load average around the run.

A fifth pass, (b2), is (b) with the LM head applied by hand to the last position as a 2D matrix:
the model's own forward with `logits_to_keep=1` hands the head a (batch, 1, hidden) slice, which
torch multiplies as a batched product reading the 671 MB head once per row (0.68-0.75 s for 16
rows against 0.10-0.14 s in 2D on this machine; no difference at batch 1). (b2) is the dense
baseline a user who noticed that would write; d/b2 is reported beside d/b.

Prompts: the first `--prompts` test prompts of the classifier's own fit (its demonstrations,
seed and split sizes, rebuilt with `plan_fit` and checked against its card).

Usage: python benchmarks/prefix_cache.py --classifier runs/fit/gemma3-270m-sst2 [--task sst2]
       [--prompts 64] [--batch-sizes 1,16] [--threads 1,2] [--out benchmarks/results/prefix_cache]
(writes prefix_cache.json and prefix_cache.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report_files import write_report  # noqa: E402

from adainfer.engine.model import EarlyExitModel  # noqa: E402
from adainfer.engine.row_groups import group_prompts  # noqa: E402
from adainfer.fit.cached_prefix import use_demonstrations  # noqa: E402
from adainfer.fit.classifier import load_classifier  # noqa: E402
from adainfer.fit.pipeline import FitOptions, plan_fit, task_source  # noqa: E402
from adainfer.fit.splits import SplitSizes  # noqa: E402
from adainfer.fit.timing import measure_speedup  # noqa: E402
from adainfer.inference.dense import dense_answers  # noqa: E402


def test_prompts(model: EarlyExitModel, card, task: str, count: int) -> list[str]:
    """The first `count` test prompts of the classifier's fit, with its card's demonstrations."""
    options = FitOptions(shots=card.shots, sizes=SplitSizes(**card.split_sizes), seed=card.seed,
                         choices=tuple(card.answer_set) if card.answer_set else None, timing_prompts=0)
    splits = plan_fit(model, task_source(task), options).splits
    if [{"input": d.input, "output": d.output} for d in splits.demonstrations] != card.demonstrations:
        raise SystemExit(f"error: the {task} fit rebuilt here has other demonstrations than the card's")
    return [prompt.prompt for prompt in splits.prompts("test")[:count]]


@torch.no_grad()
def cached_forward_2d_head(model: EarlyExitModel, prompts: list[str]) -> torch.Tensor:
    """(b2): the base model's forward over the cached prefix, then the LM head on the last position in 2D."""
    device = model.executor.head.weight.device
    logits = []
    for group in group_prompts(model, prompts):
        hidden = model.model.base_model(**group.forward_kwargs(device)).last_hidden_state[:, -1].contiguous()
        logits.append(model.executor.lens.unembed(hidden))  # `hidden_states[-1]` is already final-normed
    return torch.cat(logits)


def measure(model: EarlyExitModel, prompts: list[str], policy, card, batch_sizes: list[int],
            threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    full_answers = dense_answers(model, prompts, card.answer_token_ids)  # untimed: the reference answers
    rows = []
    for batch_size in batch_sizes:
        load_before = os.getloadavg()[0]
        figure, results = measure_speedup(model, prompts, policy, card.answer_token_ids, batch_size,
                                          peers={"b2": lambda batch: cached_forward_2d_head(model, batch)})
        row = figure.to_dict()
        b2 = figure.peer_seconds["b2"]
        row.update({
            "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2),
            "seconds_per_prompt": {name: round(row[key] / len(prompts), 4) for name, key in (
                ("a_full_forward", "dense_seconds"), ("b_cached_forward", "cached_dense_seconds"),
                ("c_cached_full_depth", "full_depth_seconds"), ("d_cached_early_exit", "early_exit_seconds"))},
            "b2_seconds_per_prompt": round(b2 / len(prompts), 4), "d_over_b2": round(b2 / figure.early_exit_seconds, 3),
            "d_over_a": round(figure.speedup, 3), "d_over_b": round(figure.speedup_vs_cached_dense, 3),
            "d_over_c": round(figure.speedup_vs_full_depth, 3),
            "mean_exit_layer": round(sum(r.exit_layer for r in results) / len(results), 3),
            "answers_equal_full_forward": sum(r.answer_token_id == a for r, a in zip(results, full_answers)),
        })
        rows.append(row)
    return rows


def markdown(report: dict) -> str:
    lines = [f"Command: `{report['command']}`", "",
             f"{report['model']} on {report['task']} ({report['prompts']} test prompts of the classifier's fit, "
             f"{report['prefix_tokens']} prefix tokens cached once: {report['cache_bytes']} bytes of keys and values; "
             f"{report['cpu_count']} CPUs, machine default {report['default_threads']} threads). Four passes timed in "
             "rotation batch by batch: (a) the model's forward on the full prompt, (b) the model's forward over the "
             "prefilled prefix copied per batch (logits_to_keep=1), (c) our walk at full depth over the cached prefix, "
             "(d) early exit over it. Ratios are of total seconds; the load average (1 min) is read before and after "
             "each batch size: the machine is shared, so absolute seconds move with it, ratios less.", "",
             "(b2) is (b) with the LM head applied to the last position as a 2D matrix (module docstring).", "",
             "| threads | batch | prompts | a s/prompt | b s/prompt | b2 s/prompt | c s/prompt | d s/prompt | d/a | d/b | "
             "d/b2 | d/c | median batch d/a | mean exit layer | d answers = a | load before/after |",
             "|" + "---|" * 16]
    for row in report["rows"]:
        per = row["seconds_per_prompt"]
        lines.append(f"| {row['torch_threads']} | {row['batch_size']} | {row['prompts']} | {per['a_full_forward']:.4f} | "
                     f"{per['b_cached_forward']:.4f} | {row['b2_seconds_per_prompt']:.4f} | "
                     f"{per['c_cached_full_depth']:.4f} | {per['d_cached_early_exit']:.4f} | {row['d_over_a']:.2f} | "
                     f"{row['d_over_b']:.2f} | {row['d_over_b2']:.2f} | {row['d_over_c']:.2f} | {row['median_batch_speedup']:.2f} | {row['mean_exit_layer']:.2f} | "
                     f"{row['answers_equal_full_forward']}/{row['prompts']} | "
                     f"{row['load_average_before']}/{row['load_average_after']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", type=Path, required=True, help="a directory written by `adainfer fit`")
    parser.add_argument("--task", default="sst2", help="the task it was fitted on (its test prompts are timed)")
    parser.add_argument("--model", default=None, help="embedded model name (default: gemma3-270m)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts, each timed in turn")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prefix_cache"))
    args = parser.parse_args()
    model = EarlyExitModel.from_pretrained(args.model)
    policy, card = load_classifier(args.classifier, model)
    prompts = test_prompts(model, card, args.task, args.prompts)
    prefix = use_demonstrations(model, card.demonstrations)
    if prefix is None:
        raise SystemExit("error: the classifier has no demonstrations to cache")
    default_threads = torch.get_num_threads()
    rows = []
    for threads in [int(value) for value in args.threads.split(",")]:
        rows += measure(model, prompts, policy, card, [int(value) for value in args.batch_sizes.split(",")], threads)
    report = {"command": shlex.join(["python", "benchmarks/prefix_cache.py", *sys.argv[1:]]), "model": card.model,
              "task": card.task, "classifier": str(args.classifier), "prompts": len(prompts),
              "prefix_tokens": len(prefix), "cache_bytes": prefix.nbytes, "prefix_fallbacks": prefix.fallbacks,
              "cpu_count": os.cpu_count(), "default_threads": default_threads, "platform": platform.platform(),
              "torch": torch.__version__, "rows": rows}
    write_report(args.out, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
