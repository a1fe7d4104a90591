"""`adainfer fit`: a labelled task in, a certified and measured early-exit classifier out."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from adainfer.cli.common import (CacheOption, DataDirOption, ModelOption, clean_errors, command_line, err,
                                 open_model, parse_choices, parse_ints)
from adainfer.cli.experiments import DEFAULT_RUNS
from adainfer.cli.progress import progress_bar
from adainfer.cli.scaling import AddressOption, RayOption, WorkersOption, check_ray_options, ray_connection, ray_rows
from adainfer.data.tasks import TASKS
from adainfer.engine.files import check_output_directory
from adainfer.engine.loading import DEFAULT_MODEL
from adainfer.fit.card import summary_lines
from adainfer.fit.payoff import calibration_warning
from adainfer.fit.pipeline import FitOptions, fit_classifier, plan_fit, task_source
from adainfer.fit.scorer_choice import SCORERS
from adainfer.fit.splits import SplitSizes
from adainfer.policies.base import CONFIG_NAME


@clean_errors
def fit(
    context: typer.Context,
    task: Annotated[str, typer.Argument(help=f"A built-in task ({', '.join(TASKS)}) or a .jsonl file of {{input, output}} lines.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the classifier (policy, card.json, card.md).")],
    epsilon: Annotated[float, typer.Option(help="Largest acceptable fraction of answers that differ from the full model's.")] = 0.05,
    delta: Annotated[float, typer.Option(help="Allowed probability that the calibration sample misleads (confidence 1 - delta).")] = 0.05,
    shots: Annotated[int, typer.Option(help="Fixed demonstrations in every prompt.")] = 5,
    train: Annotated[int, typer.Option("--train", help="Most prompts whose traces fit the scorer.")] = 100,
    calibration: Annotated[int, typer.Option("--calibration", help="Most prompts that calibrate the threshold.")] = 200,
    test: Annotated[int, typer.Option("--test", help="Most prompts the figures are measured on.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the demonstrations and the three splits.")] = 0,
    choices: Annotated[str | None, typer.Option(help="Comma-separated closed answer set; default: detected from the outputs.")] = None,
    timing_prompts: Annotated[int, typer.Option(help="Test prompts timed live against the model's forward (0: none).")] = 64,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes to time at.")] = "1,16",
    resplits: Annotated[int, typer.Option(help="Random calibration/test re-splits that check the guarantee (0: none).")] = 100,
    scorers: Annotated[str, typer.Option(help="Comma-separated scorers cross-validation on the train split chooses "
                                         f"from ({', '.join(SCORERS)}); one name: that scorer.")] = ",".join(SCORERS),
    runs: Annotated[Path, typer.Option(help="Cache of collected traces; a rerun resumes from it.")] = DEFAULT_RUNS,
    data_dir: DataDirOption = None,
    model: ModelOption = None,
    cache_dir: CacheOption = None,
    ray: RayOption = False,
    address: AddressOption = None,
    workers: WorkersOption = None,
) -> None:
    """Fit an early-exit classifier whose answers match the full model's within epsilon (w.p. >= 1 - delta), and measure it."""
    check_output_directory(out, CONFIG_NAME)
    options = FitOptions(shots=shots, epsilon=epsilon, delta=delta, sizes=SplitSizes(train, calibration, test),
                         seed=seed, choices=tuple(parse_choices(choices)) if choices else None,
                         timing_prompts=timing_prompts, batch_sizes=tuple(parse_ints(batch_sizes, "--batch-sizes")), resplits=resplits,
                         scorers=tuple(name.strip() for name in scorers.split(",") if name.strip()))
    check_ray_options(ray, address, workers)
    if task.endswith(".jsonl") and not Path(task).is_file():
        raise ValueError(f"task file {task} does not exist")
    source = task_source(task, data_dir)
    with contextlib.ExitStack() as stack:
        if ray:  # before the model loads: a missing extra or a wrong address fails at once
            ray_connection(stack, address, workers)
        exit_model = open_model(model, cache_dir)
        plan = plan_fit(exit_model, source, options)
        warning = calibration_warning(len(plan.splits.calibration), options.epsilon, options.delta)
        if warning:
            err.print(f"warning: {warning}", highlight=False, soft_wrap=True)
        row_source = ray_rows(model, cache_dir, exit_model, workers) if ray else None
        with progress_bar(err) as progress:
            bar = progress.add_task("", total=None)

            def report(stage: str, done: int, total: int) -> None:
                progress.update(bar, description=stage, completed=done, total=total)

            fitted = fit_classifier(exit_model, source, options, cache_dir=runs, model_name=model or DEFAULT_MODEL,
                                    command=command_line(context), progress=report, plan=plan, row_source=row_source)
    fitted.save(out)
    typer.echo("\n".join([f"saved to {out} (card: {out / 'card.md'})", *summary_lines(fitted.card)]))
