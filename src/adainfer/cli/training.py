"""`adainfer collect`, `train`, `evaluate` and `calibrate`: stop policies from collected rows."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from adainfer.cli.common import (CacheOption, ModelOption, check_prompts, clean_errors, err, flag_error, open_model,
                                 parse_choices, parse_features)
from adainfer.cli.progress import progress_bar
from adainfer.data.tasks import read_prompts_jsonl
from adainfer.engine.features import PAPER_FEATURES
from adainfer.engine.files import check_output_directory, check_output_file
from adainfer.engine.schedule import check_first_check
from adainfer.eval.collect import collect as collect_rows
from adainfer.eval.traces import load_collection
from adainfer.eval.replay import evaluate_policy, fit_on
from adainfer.policies.base import CONFIG_NAME
from adainfer.policies.calibrated import CalibratedPolicy
from adainfer.policies.crf import CRFPolicy
from adainfer.policies.gap import GapThresholdPolicy
from adainfer.policies.io import load_policy
from adainfer.policies.svm import SVMPolicy


@clean_errors
def collect(
    prompts_file: Annotated[Path, typer.Argument(help="JSONL of {prompt, answer}.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Rows file (JSONL); an existing one is resumed.")],
    features: Annotated[str, typer.Option(help="Comma-separated features to record.")] = "gap,top_prob,depth",
    choices: Annotated[str | None, typer.Option(help="Comma-separated closed answer set, for cand_* features.")] = None,
    model: ModelOption = None,
    cache_dir: CacheOption = None,
) -> None:
    """Record one row per (prompt, layer): lens features and whether the layer's top-1 is the gold token."""
    check_output_file(out)
    items = read_prompts_jsonl(prompts_file)
    if not items:
        raise ValueError(f"{prompts_file} holds no prompts: nothing to collect")
    names = parse_features(features)
    answers = parse_choices(choices) if choices else None
    exit_model = open_model(model, cache_dir)
    check_prompts(exit_model, items, prompts_file)
    candidates = exit_model.candidate_tokens(answers) if answers else None
    with progress_bar(err) as progress:
        bar = progress.add_task("collecting", total=len(items))
        added = collect_rows(exit_model, items, out, names, on_prompt=lambda _: progress.advance(bar),
                             candidate_ids=candidates)
        progress.update(bar, completed=len(items))
    err.print(f"{added} prompts added, {len(items)} in {out}")


POLICIES = {"svm": SVMPolicy, "crf": CRFPolicy, "gap": GapThresholdPolicy}


@clean_errors
def train(
    rows_file: Annotated[Path, typer.Argument(help="Rows written by `adainfer collect`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the trained policy.")],
    policy: Annotated[str, typer.Option(help="svm (paper default), crf, or gap (stop when gap > threshold).")] = "svm",
    features: Annotated[str, typer.Option(help="Comma-separated features; the paper's are gap,top_prob.")] = ",".join(PAPER_FEATURES),
    threshold: Annotated[float, typer.Option(help="Gap threshold for --policy gap.")] = 0.8,
) -> None:
    """Fit a stop policy on collected rows and save it with the identity of the model they came from."""
    check_output_directory(out, CONFIG_NAME)
    if policy not in POLICIES:
        raise ValueError(f"--policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if not math.isfinite(threshold):
        raise ValueError(f"--threshold must be a finite number, got {threshold}")
    collection = load_collection(rows_file)
    names = parse_features(features)
    if policy == "gap":
        estimator = GapThresholdPolicy(threshold=threshold, feature=names[0])
    else:
        estimator = POLICIES[policy](features=names)
    fit_on(estimator, collection)
    reads_candidates = any(name.startswith("cand_") for name in estimator.features)
    estimator.save(out, collection.model_identity,
                   candidate_ids=collection.candidate_ids if reads_candidates else None)
    report = evaluate_policy(estimator, collection).to_dict()
    typer.echo(json.dumps({"policy": policy, "features": list(estimator.features), "saved_to": str(out),
                           "on_training_rows": report}, indent=2))


@clean_errors
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


@clean_errors
def calibrate(
    train_rows: Annotated[Path, typer.Argument(help="Rows (`adainfer collect`) to fit the scorer on; no labels are used.")],
    calibration_rows: Annotated[Path, typer.Argument(help="Other rows of the same task to calibrate the threshold on.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the calibrated policy.")],
    epsilon: Annotated[float, typer.Option(help="Largest acceptable fraction of answers that differ from the full model's.")] = 0.05,
    delta: Annotated[float, typer.Option(help="Allowed probability that the calibration sample misleads (confidence 1 - delta).")] = 0.05,
    features: Annotated[str, typer.Option(help="Comma-separated features of the scorer.")] = "gap,top_prob,depth,agree_prev",
    first_check: Annotated[int, typer.Option(help="First layer (1-based) whose lens is read: the policy never "
                                             "exits before it. Must be below the last layer.")] = 1,
) -> None:
    """Fit a stop policy whose exit threshold is certified by Learn then Test: risk <= epsilon w.p. >= 1 - delta.

    The thresholds tested come from the training rows' scores; the calibration rows only choose among them.
    """
    check_output_directory(out, CONFIG_NAME)
    train = load_collection(train_rows)
    calibration = load_collection(calibration_rows)
    if train.model_identity != calibration.model_identity:
        raise ValueError(f"{train_rows} and {calibration_rows} come from different models")
    names = parse_features(features)
    layers = train.top1.shape[1]
    try:
        check_first_check(first_check, layers, allow_never=False)
    except ValueError as error:
        raise flag_error(error, "first_check", "--first-check") from None
    policy = fit_on(CalibratedPolicy(names, first_check=first_check), train)
    certificate = policy.calibrate(calibration.select(names), calibration.top1, epsilon, delta)
    policy.save(out, train.model_identity)
    if math.isinf(certificate.threshold):
        err.print(f"no threshold passed with {certificate.calibration_prompts} calibration prompts: the policy "
                  f"never exits early (more calibration prompts or a larger epsilon would let it)")
    typer.echo(json.dumps({"saved_to": str(out), "certificate": certificate.to_dict()}, indent=2))
