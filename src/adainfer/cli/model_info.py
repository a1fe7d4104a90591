"""`adainfer info` and `adainfer profile`: what the model is, and what its parts cost in seconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from adainfer.cli.common import CacheOption, DataDirOption, ModelOption, clean_errors, err, open_model, parse_ints
from adainfer.cli.progress import progress_bar
from adainfer.engine.cost_profile import measure_cost_profile
from adainfer.engine.files import check_output_file, write_text_atomic
from adainfer.engine.loading import cache_root
from adainfer.fit.payoff import measure_payoff
from adainfer.fit.pipeline import task_source


@clean_errors
def info(model: ModelOption = None, cache_dir: CacheOption = None) -> None:
    """Show the model's family, layers, sizes, context and cache location."""
    exit_model = open_model(model, cache_dir)
    loaded = exit_model.loaded
    typer.echo(json.dumps({
        "model": loaded.name,
        "source": loaded.source,
        "architecture": type(exit_model.model).__name__,
        "num_layers": exit_model.num_layers,
        "hidden_size": exit_model.cost_model.hidden_size,
        "vocab_size": exit_model.cost_model.vocab_size,
        "max_context": exit_model.max_context,
        "cache_root": str(cache_root(cache_dir)),
        "converted_copy": str(loaded.cache_path) if loaded.cache_path else None,
        "load_seconds": round(loaded.load_seconds, 2),
        "identity": exit_model.identity(),
    }, indent=2))


@clean_errors
def profile(
    seq_lens: Annotated[str, typer.Option(help="Comma-separated prompt lengths in tokens.")] = "64,128,256,512",
    repeats: Annotated[int, typer.Option(help="Timed runs of each part; the median is kept.")] = 5,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="JSON file for the profile (`CostProfile.load` reads it).")] = None,
    task: Annotated[str | None, typer.Option(help="A built-in task or .jsonl file: will early exit pay on it? (times at its prompt length, the stable-answer oracle on a sample, the best reachable speedup, a verdict)")] = None,
    shots: Annotated[int, typer.Option(help="With --task: fixed demonstrations per prompt, as `adainfer fit` builds them.")] = 5,
    sample: Annotated[int, typer.Option(help="With --task: prompts whose oracle exit is measured.")] = 32,
    data_dir: DataDirOption = None,
    model: ModelOption = None,
    cache_dir: CacheOption = None,
) -> None:
    """Time one decoder layer, one lens check (full vocabulary and candidate rows) and the dense forward, per prompt
    length; with --task, say whether early exit can pay on it."""
    if out is not None:
        check_output_file(out)  # before the minutes of measuring
    if task is not None:
        return _task_payoff(task, shots, sample, repeats, out, data_dir, model, cache_dir)
    lengths = parse_ints(seq_lens, "--seq-lens")
    exit_model = open_model(model, cache_dir)
    with progress_bar(err, transient=True) as progress:
        bar = progress.add_task("timing", total=len(lengths))
        measured = measure_cost_profile(exit_model, lengths, repeats, on_seq_len=lambda _: progress.advance(bar))
    layers = measured.num_layers
    rows = f"{measured.candidate_count} rows"
    table = Table(title=f"{exit_model.loaded.name}: median ms, {measured.device}, {measured.torch_threads} thread(s)",
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


def _task_payoff(task: str, shots: int, sample: int, repeats: int, out: Path | None, data_dir: Path | None,
                 model: str | None, cache_dir: Path | None) -> None:
    """`adainfer profile --task`: the measured parts, the oracle and the verdict, as JSON on stdout."""
    if sample < 1 or repeats < 1:
        raise ValueError(f"--sample and --repeats must be at least 1, got {sample} and {repeats}")
    source = task_source(task, data_dir)
    exit_model = open_model(model, cache_dir)
    with progress_bar(err, transient=True) as progress:
        bar = progress.add_task("oracle exits", total=sample)
        payoff = measure_payoff(exit_model, name=source.name, train_pool=source.train_pool,
                                eval_pool=source.eval_pool, choices=source.choices, shots=shots, sample=sample,
                                repeats=repeats, on_prompt=lambda done, total: progress.update(
                                    bar, completed=done, total=total))
    text = json.dumps(payoff.to_dict(), indent=2)
    typer.echo(text)
    err.print(payoff.verdict, highlight=False, soft_wrap=True)
    if payoff.calibration_warning:
        err.print(f"warning: {payoff.calibration_warning}", highlight=False, soft_wrap=True)
    if out:
        write_text_atomic(out, text + "\n")
        err.print(f"wrote {out}")
