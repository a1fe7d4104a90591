"""`adainfer predict` and `adainfer generate`: answers with early exit, one token or many."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.progress import Progress

from adainfer.cli.common import (CacheOption, ModelOption, check_prompts, clean_errors, err, open_model,
                                 policy_candidates)
from adainfer.data.tasks import read_prompts_jsonl
from adainfer.inference.generate import MODES, generate
from adainfer.inference.predict import predict as predict_one
from adainfer.inference.stream import GeneratedToken
from adainfer.policies.io import load_policy


@clean_errors
def predict(
    prompts_file: Annotated[Path, typer.Argument(help="JSONL of {prompt} (an `answer` key, if present, is scored).")],
    policy_dir: Annotated[Path, typer.Option("--policy", "-p", help="Directory written by `adainfer train`.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Results JSONL. Default: stdout.")] = None,
    choices: Annotated[str | None, typer.Option(help="Comma-separated closed answer set (e.g. negative,positive), for policies on cand_* features.")] = None,
    model: ModelOption = None,
    cache_dir: CacheOption = None,
) -> None:
    """Answer each prompt with early exit: answer, exit layer, FLOPs ratios (paper's and with check cost)."""
    if out is not None and out.exists() and prompts_file.exists() and out.resolve() == prompts_file.resolve():
        raise ValueError(f"--out {out} is the prompts file itself; choose another output file")
    items = read_prompts_jsonl(prompts_file, require_answer=False)
    if not items:
        raise ValueError(f"{prompts_file} holds no prompts: nothing to predict")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    exit_model = open_model(model, cache_dir)
    policy = load_policy(policy_dir, expected_identity=exit_model.identity())
    candidates = policy_candidates(exit_model, policy, choices)
    check_prompts(exit_model, items, prompts_file)
    # Results go to stdout as they come, or to a temporary file that replaces --out only once every
    # prompt is answered: a failure leaves an existing --out as it was.
    sink = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=out.parent, prefix=f".{out.name}.", suffix=".tmp",
                                       delete=False) if out else sys.stdout
    records = []
    try:
        with Progress(console=err, transient=out is None) as progress:
            for item in progress.track(items, description="predicting"):
                record = {"prompt": item.prompt, **predict_one(exit_model, item.prompt, policy, candidates).to_dict()}
                if item.answer:
                    record["gold"] = item.answer
                    record["correct"] = record["answer_token_id"] == exit_model.answer_token(item.prompt, item.answer)
                records.append(record)
                sink.write(json.dumps(record) + "\n")
                sink.flush()
        if out:
            os.fsync(sink.fileno())
            sink.close()
            os.replace(sink.name, out)
    finally:
        if out:
            sink.close()
            Path(sink.name).unlink(missing_ok=True)
    summary = {"prompts": len(records)}
    means = {"exit_layer": "mean_exit_layer", "paper_flops_ratio": "mean_paper_flops_ratio",
             "honest_flops_ratio": "mean_honest_flops_ratio", "correct": "accuracy"}
    for key, name in means.items():
        if records and all(key in record for record in records):
            summary[name] = round(float(np.mean([record[key] for record in records])), 4)
    err.print(json.dumps(summary), highlight=False, soft_wrap=True)



def _show(token: GeneratedToken) -> None:
    sys.stdout.write(token.text)
    sys.stdout.flush()


@clean_errors
def generate_command(
    prompt: Annotated[str, typer.Argument(help="Text to continue.")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Most tokens to generate.")] = 32,
    mode: Annotated[str, typer.Option(help=f"{' or '.join(MODES)}: lossless is the dense model's greedy output, "
                                           "drafted early and verified; fast takes each token from its exit "
                                           "layer, unverified.")] = "lossless",
    policy_dir: Annotated[Path | None, typer.Option("--policy", "-p", help="Stop-policy directory choosing each token's exit layer.")] = None,
    draft_layer: Annotated[int | None, typer.Option(help="Fixed draft layer (lossless; default: the last) or exit layer (fast).")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop once the output contains this string (repeatable); streamed, then cut from the text.")] = None,
    first_check: Annotated[int | None, typer.Option(help="First layer at which the policy is asked (1-based); "
                                                    "default: the schedule the policy learned.")] = None,
    model: ModelOption = None,
    cache_dir: CacheOption = None,
) -> None:
    """Generate greedily with early exit: tokens stream to stdout, a JSON summary goes to stderr."""
    exit_model = open_model(model, cache_dir)
    policy = load_policy(policy_dir, expected_identity=exit_model.identity()) if policy_dir else None
    result = generate(exit_model, prompt, max_new_tokens, mode=mode, policy=policy, draft_layer=draft_layer,
                      stop=stop, first_check=first_check, on_token=_show)
    sys.stdout.write("\n")
    summary = {"mode": result.mode, "tokens": len(result.token_ids), "finish_reason": result.finish_reason,
               "tokens_per_second": round(result.tokens_per_second, 2), "seconds": round(result.seconds, 3),
               "mean_exit_layer": round(result.mean_exit_layer, 2), "num_layers": result.num_layers,
               "layers_per_token": round(result.layers_per_token, 2), "lens_rows": result.lens_rows}
    if result.mode == "lossless":
        summary["mean_accepted_length"] = round(result.mean_accepted_length, 2)
    err.print(json.dumps(summary), highlight=False, soft_wrap=True)
