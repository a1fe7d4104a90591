"""`adainfer` on the command line: a thin shell over the Python API.

Every verb parses its arguments, calls the API and prints. Expected failures (bad input files,
bad prompts, a classifier for another model) print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import transformers
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from adainfer.eval.collect import collect as collect_rows
from adainfer.eval.collect import load_collection
from adainfer.engine.cost_profile import measure_cost_profile
from adainfer.eval.replay import evaluate_policy, training_labels
from adainfer.engine.features import PAPER_FEATURES, check_feature_names
from adainfer.eval.harness import load_task, task_prompts
from adainfer.engine.loading import DEFAULT_MODEL, EMBEDDED_MODELS, cache_root
from adainfer.engine.model import EarlyExitModel
from adainfer.policies.crf import CRFPolicy
from adainfer.policies.gap import GapThresholdPolicy
from adainfer.policies.io import load_policy
from adainfer.policies.svm import SVMPolicy
from adainfer.inference.predict import predict as predict_one
from adainfer.data.tasks import TASKS, LabelledPrompt, read_prompts_jsonl, write_prompts_jsonl

app = typer.Typer(
    help="Instance-aware early exit for frozen decoder-only LLMs (AdaInfer, arXiv 2403.02181).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)

ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help=f"Embedded model ({', '.join(EMBEDDED_MODELS)}), a local HF directory or a .gguf file. Default: {DEFAULT_MODEL}."),
]
CacheOption = Annotated[
    Path | None, typer.Option("--cache-dir", help="Where converted models are kept. Default: $ADAINFER_CACHE or ~/.cache/adainfer.")
]


def _clean_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected errors into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (ValueError, OSError) as error:
            err.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


def _load(model: str | None, cache_dir: Path | None) -> EarlyExitModel:
    transformers.utils.logging.disable_progress_bar()  # our own status line says what is happening
    with err.status(f"loading {model or DEFAULT_MODEL} (the first load of a GGUF model converts it once)"):
        return EarlyExitModel.from_pretrained(model, cache_dir)


def _check_prompts(model: EarlyExitModel, items: list[LabelledPrompt], source: Path) -> None:
    """Reject a bad prompt or answer before any work starts, naming its line."""
    for number, item in enumerate(items, start=1):
        try:
            model.encode(item.prompt)
            if item.answer:
                model.answer_token(item.prompt, item.answer)
        except ValueError as error:
            raise ValueError(f"{source} line {number}: {error}") from None


def _choices(text: str) -> list[str]:
    answers = [answer.strip() for answer in text.split(",") if answer.strip()]
    if len(answers) < 2:
        raise ValueError(f"--choices needs at least two comma-separated answers, got {text!r}")
    return answers


def _features(text: str) -> tuple[str, ...]:
    return check_feature_names([name.strip() for name in text.split(",") if name.strip()])


@app.command()
@_clean_errors
def info(model: ModelOption = None, cache_dir: CacheOption = None) -> None:
    """Show the model's family, layers, sizes, context and cache location."""
    loaded = _load(model, cache_dir)
    typer.echo(json.dumps({
        "model": loaded.loaded.name,
        "source": loaded.loaded.source,
        "architecture": type(loaded.model).__name__,
        "num_layers": loaded.num_layers,
        "hidden_size": loaded.cost_model.hidden_size,
        "vocab_size": loaded.cost_model.vocab_size,
        "max_context": loaded.max_context,
        "cache_root": str(cache_root(cache_dir)),
        "converted_copy": str(loaded.loaded.cache_path) if loaded.loaded.cache_path else None,
        "load_seconds": round(loaded.loaded.load_seconds, 2),
        "identity": loaded.identity(),
    }, indent=2))


@app.command()
@_clean_errors
def profile(
    seq_lens: Annotated[str, typer.Option(help="Comma-separated prompt lengths in tokens.")] = "64,128,256,512",
    repeats: Annotated[int, typer.Option(help="Timed runs of each part; the median is kept.")] = 5,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="JSON file for the profile (`CostProfile.load` reads it).")] = None,
    model: ModelOption = None,
    cache_dir: CacheOption = None,
) -> None:
    """Time one decoder layer, one lens check (full vocabulary and candidate rows) and the dense forward, per prompt length."""
    try:
        lengths = [int(part) for part in seq_lens.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--seq-lens must be comma-separated integers, got {seq_lens!r}") from None
    loaded = _load(model, cache_dir)
    with Progress(console=err, transient=True) as progress:
        bar = progress.add_task("timing", total=len(lengths))
        measured = measure_cost_profile(loaded, lengths, repeats, on_seq_len=lambda _: progress.advance(bar))
    layers = measured.num_layers
    rows = f"{measured.candidate_count} rows"
    table = Table(title=f"{loaded.loaded.name}: median ms, {measured.device}, {measured.torch_threads} thread(s)",
                  caption=f"layer: one decoder layer over the prompt; check: full-vocabulary lens at the last "
                          f"position; {rows}: lens over {rows} of the head; dense: the model's forward, one logit row")
    for column in ("tokens", "layer", f"{layers} layers", "check", rows, "dense", "check/layers"):
        table.add_column(column, justify="right")
    for index, length in enumerate(measured.seq_lens):
        layer, check = measured.layer_seconds[index], measured.full_check_seconds[index]
        table.add_row(str(length), f"{1e3 * layer:.2f}", f"{1e3 * layers * layer:.1f}", f"{1e3 * check:.2f}",
                      f"{1e3 * measured.candidate_check_seconds[index]:.3f}",
                      f"{1e3 * measured.dense_seconds[index]:.1f}", f"{check / (layers * layer):.1%}")
    Console().print(table)
    if out:
        measured.save(out)
        err.print(f"wrote {out}")


@app.command()
@_clean_errors
def prompts(
    task: Annotated[str, typer.Argument(help=f"A built-in task ({', '.join(TASKS)}) or a .jsonl file of {{input, output}} lines, split in two halves as `adainfer eval` splits it.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file of {prompt, answer} to write.")],
    split: Annotated[Literal["train", "eval"], typer.Option(help="train: classifier-training prompts; eval: the evaluated prompts, whose inputs are never in train prompts or demonstrations.")] = "train",
    shots: Annotated[int, typer.Option(help="Demonstrations per prompt, always drawn from the task's train split.")] = 5,
    limit: Annotated[int | None, typer.Option(help="Number of prompts (a seeded sample).")] = None,
    seed: Annotated[int, typer.Option(help="The seed of an `adainfer eval` setting: --split eval and --split train then write exactly that setting's eval and train prompts (train draws with seed + 1). Use the same seed for both splits.")] = 0,
    data_dir: Annotated[Path | None, typer.Option(help="Datasets folder. Default: $ADAINFER_DATA or ../shared/data.")] = None,
) -> None:
    """Write zero- or few-shot prompts `Q: x\\nA:` with their gold answers, as `adainfer eval` builds them."""
    written = task_prompts(load_task(task, data_dir), split, shots, limit, seed)
    write_prompts_jsonl(written, out)
    err.print(f"wrote {len(written)} prompts to {out}")


@app.command()
@_clean_errors
def collect(
    prompts_file: Annotated[Path, typer.Argument(help="JSONL of {prompt, answer}.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Rows file (JSONL); an existing one is resumed.")],
    features: Annotated[str, typer.Option(help="Comma-separated features to record.")] = "gap,top_prob,depth",
    choices: Annotated[str | None, typer.Option(help="Comma-separated closed answer set, for cand_* features.")] = None,
    model: ModelOption = None,
    cache_dir: CacheOption = None,
) -> None:
    """Record one row per (prompt, layer): lens features and whether the layer's top-1 is the gold token."""
    items = read_prompts_jsonl(prompts_file)
    names = _features(features)
    answers = _choices(choices) if choices else None
    loaded = _load(model, cache_dir)
    _check_prompts(loaded, items, prompts_file)
    candidates = loaded.candidate_tokens(answers) if answers else None
    with Progress(console=err) as progress:
        bar = progress.add_task("collecting", total=len(items))
        added = collect_rows(loaded, items, out, names, on_prompt=lambda _: progress.advance(bar),
                             candidate_ids=candidates)
        progress.update(bar, completed=len(items))
    err.print(f"{added} prompts added, {len(items)} in {out}")


POLICIES = {"svm": SVMPolicy, "crf": CRFPolicy, "gap": GapThresholdPolicy}


@app.command()
@_clean_errors
def train(
    rows_file: Annotated[Path, typer.Argument(help="Rows written by `adainfer collect`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the trained policy.")],
    policy: Annotated[str, typer.Option(help="svm (paper default), crf, or gap (stop when gap > threshold).")] = "svm",
    features: Annotated[str, typer.Option(help="Comma-separated features; the paper's are gap,top_prob.")] = ",".join(PAPER_FEATURES),
    threshold: Annotated[float, typer.Option(help="Gap threshold for --policy gap.")] = 0.8,
) -> None:
    """Fit a stop policy on collected rows and save it with the identity of the model they came from."""
    if policy not in POLICIES:
        raise ValueError(f"--policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    collection = load_collection(rows_file)
    names = _features(features)
    if policy == "gap":
        estimator = GapThresholdPolicy(threshold=threshold, feature=names[0])
    else:
        estimator = POLICIES[policy](features=names)
    X = collection.select(estimator.features)
    estimator.fit(X, training_labels(estimator, collection))
    estimator.save(out, collection.model_identity)
    report = evaluate_policy(estimator, collection).to_dict()
    typer.echo(json.dumps({"policy": policy, "features": list(estimator.features), "saved_to": str(out),
                           "on_training_rows": report}, indent=2))


@app.command()
@_clean_errors
def evaluate(
    rows_file: Annotated[Path, typer.Argument(help="Rows collected on held-out prompts (not the training rows).")],
    policy_dirs: Annotated[list[Path], typer.Option("--policy", "-p", help="Policy directory; repeat to compare.")],
) -> None:
    """Replay policies over collected rows: accuracy vs dense, exit layers, oracle, both FLOPs ratios."""
    collection = load_collection(rows_file)
    reports = {}
    for directory in policy_dirs:
        policy = load_policy(directory, expected_identity=collection.model_identity)
        reports[str(directory)] = evaluate_policy(policy, collection).to_dict()
    typer.echo(json.dumps(reports, indent=2))


@app.command()
@_clean_errors
def predict(
    prompts_file: Annotated[Path, typer.Argument(help="JSONL of {prompt} (an `answer` key, if present, is scored).")],
    policy_dir: Annotated[Path, typer.Option("--policy", "-p", help="Directory written by `adainfer train`.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Results JSONL. Default: stdout.")] = None,
    choices: Annotated[str | None, typer.Option(help="Comma-separated closed answer set (e.g. negative,positive), for policies on cand_* features.")] = None,
    model: ModelOption = None,
    cache_dir: CacheOption = None,
) -> None:
    """Answer each prompt with early exit: answer, exit layer, FLOPs ratios (paper's and with check cost)."""
    items = read_prompts_jsonl(prompts_file, require_answer=False)
    loaded = _load(model, cache_dir)
    policy = load_policy(policy_dir, expected_identity=loaded.identity())
    candidates = loaded.candidate_tokens(_choices(choices)) if choices else None
    _check_prompts(loaded, items, prompts_file)
    sink = out.open("w", encoding="utf-8") if out else sys.stdout
    records = []
    try:
        with Progress(console=err, transient=out is None) as progress:
            for item in progress.track(items, description="predicting"):
                record = {"prompt": item.prompt, **predict_one(loaded, item.prompt, policy, candidates).to_dict()}
                if item.answer:
                    record["gold"] = item.answer
                    record["correct"] = record["answer_token_id"] == loaded.answer_token(item.prompt, item.answer)
                records.append(record)
                sink.write(json.dumps(record) + "\n")
                sink.flush()
    finally:
        if out:
            sink.close()
    summary = {"prompts": len(records)}
    means = {"exit_layer": "mean_exit_layer", "paper_flops_ratio": "mean_paper_flops_ratio",
             "honest_flops_ratio": "mean_honest_flops_ratio", "correct": "accuracy"}
    for key, name in means.items():
        if records and all(key in record for record in records):
            summary[name] = round(float(np.mean([record[key] for record in records])), 4)
    err.print(json.dumps(summary), highlight=False, soft_wrap=True)


# Verbs that live in their own modules register themselves on `app` when imported.
from adainfer import cli_eval  # noqa: E402,F401
from adainfer import cli_generate  # noqa: E402,F401
