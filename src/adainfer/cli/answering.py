"""`adainfer predict` and `adainfer generate`: answers with early exit, one token or many."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from adainfer.cli.common import (CacheOption, ModelOption, check_prompts, clean_errors, err, open_model,
                                 policy_candidates)
from adainfer.cli.progress import progress_bar
from adainfer.data.tasks import LabelledPrompt, read_inputs_jsonl, read_prompts_jsonl
from adainfer.engine.files import check_output_file
from adainfer.fit.cached_prefix import use_demonstrations
from adainfer.fit.card import CARD_JSON, ClassifierCard
from adainfer.fit.classifier import load_classifier
from adainfer.inference.answering import Answer, answer_batches, summarize
from adainfer.inference.generate import DRAFT_WEIGHTS, MODES, generate
from adainfer.inference.stream import GeneratedToken
from adainfer.policies.io import load_policy


@clean_errors
def predict(
    inputs_file: Annotated[Path, typer.Argument(help="JSONL of {input} lines (raw inputs; an `output` is scored) for a classifier from `adainfer fit`, or of {prompt} lines (an `answer` is scored) for a policy from `train`/`calibrate`.")],
    policy_dir: Annotated[Path, typer.Option("--policy", "-p", help="Directory written by `adainfer fit`, `train` or `calibrate`.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Results JSONL. Default: stdout.")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per batch; rows leave a batch at their own exit layer.")] = 16,
    choices: Annotated[str | None, typer.Option(help="Comma-separated closed answer set (e.g. negative,positive), for policies on cand_* features; a classifier's is on its card.")] = None,
    model: ModelOption = None,
    cache_dir: CacheOption = None,
) -> None:
    """Answer each input with early exit; with gold answers, the summary compares with the dense model."""
    if out is not None and out.exists() and inputs_file.exists() and out.resolve() == inputs_file.resolve():
        raise ValueError(f"--out {out} is the inputs file itself; choose another output file")
    if out is not None:
        check_output_file(out)  # before anything is written: os.replace would replace a device
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    classifier = (policy_dir / CARD_JSON).is_file()
    if classifier and choices:
        raise ValueError(f"{policy_dir} is a classifier from `adainfer fit`: its answer set is on its card; drop --choices")
    rows = ([(example.input, example.output) for example in read_inputs_jsonl(inputs_file)] if classifier
            else [(item.prompt, item.answer) for item in read_prompts_jsonl(inputs_file, require_answer=False)])
    if not rows:
        raise ValueError(f"{inputs_file} holds no {'inputs' if classifier else 'prompts'}: nothing to predict")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    exit_model = open_model(model, cache_dir)
    if classifier:
        policy, card = load_classifier(policy_dir, exit_model)
        candidates, prompts = card.answer_token_ids, [card.prompt(text) for text, _ in rows]
        use_demonstrations(exit_model, card.demonstrations)  # as calibrated: each prompt runs its own tokens
    else:
        policy = load_policy(policy_dir, expected_identity=exit_model.identity())
        card, candidates, prompts = None, policy_candidates(exit_model, policy, choices), [text for text, _ in rows]
    items = [LabelledPrompt(prompt, gold) for prompt, (_, gold) in zip(prompts, rows)]
    check_prompts(exit_model, items, inputs_file)
    gold_tokens = [exit_model.answer_token(item.prompt, item.answer) if item.answer else None for item in items]
    # Results go to stdout as they come, or to a temporary file that replaces --out only once every
    # input is answered: a failure leaves an existing --out as it was.
    sink = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=out.parent, prefix=f".{out.name}.", suffix=".tmp",
                                       delete=False) if out else sys.stdout
    answers: list[Answer] = []
    try:
        with progress_bar(err, transient=out is None) as progress:
            bar = progress.add_task("predicting", total=len(items))
            for batch in answer_batches(exit_model, prompts, policy, candidates, batch_size=batch_size,
                                        compare_dense=any(gold is not None for gold in gold_tokens)):
                for answer in batch:
                    row = len(answers)
                    sink.write(json.dumps(_record(rows[row][0], items[row], answer, gold_tokens[row], card)) + "\n")
                    answers.append(answer)
                sink.flush()
                progress.advance(bar, len(batch))
        if out:
            os.fsync(sink.fileno())
            sink.close()
            os.replace(sink.name, out)
    finally:
        if out:
            sink.close()
            Path(sink.name).unlink(missing_ok=True)
    err.print(json.dumps(summarize(answers, gold_tokens)), highlight=False, soft_wrap=True)


def _record(given: str, item: LabelledPrompt, answer: Answer, gold: int | None, card: ClassifierCard | None) -> dict:
    """One output line: the input (raw, or the prompt), the answer and its costs, and, with a gold
    answer, whether the early exit and the dense model got it right."""
    result = answer.result
    record = {"input": given} if card else {"prompt": given}
    if card:
        record["label"] = card.answer_label(result.answer_token_id, result.answer_text)
    record.update(result.to_dict())
    if gold is not None:
        record.update({"gold": item.answer, "correct": result.answer_token_id == gold,
                       "dense_correct": answer.dense_token == gold,
                       "agrees_with_dense": result.answer_token_id == answer.dense_token})
    return record


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
    draft_weights: Annotated[str, typer.Option(help=f"Lossless drafts' weights, {' or '.join(DRAFT_WEIGHTS)}: int8 "
                                                    "copies of the layers read a quarter of the bytes (faster on a "
                                                    "CPU, a quarter more memory); the output is the same.")] = "model",
    prompt_lookup: Annotated[int, typer.Option(help="Lossless: draft up to this many tokens copied from where the "
                                                    "last tokens occurred before in the prompt or output (0: "
                                                    "never); the output is the same.")] = 0,
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
                      stop=stop, first_check=first_check, draft_weights=draft_weights,
                      prompt_lookup=prompt_lookup, on_token=_show)
    sys.stdout.write("\n")
    summary = {"mode": result.mode, "tokens": len(result.token_ids), "finish_reason": result.finish_reason,
               "tokens_per_second": round(result.tokens_per_second, 2), "seconds": round(result.seconds, 3),
               "mean_exit_layer": round(result.mean_exit_layer, 2), "num_layers": result.num_layers,
               "layers_per_token": round(result.layers_per_token, 2), "lens_rows": result.lens_rows}
    if result.mode == "lossless":
        summary["mean_accepted_length"] = round(result.mean_accepted_length, 2)
    err.print(json.dumps(summary), highlight=False, soft_wrap=True)
