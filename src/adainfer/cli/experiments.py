"""`adainfer prompts`, `eval`, `report`, `export-traces` and `transfer`: the paper's experiment.

Settings are collected once and cached; tables and figures are rebuilt from the cache without the
model. Relative paths (the defaults included) are relative to the current directory.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Annotated, Literal

import typer

from adainfer.cli.common import (CacheOption, DataDirOption, ModelOption, clean_errors, command_line, err,
                                 open_model, parse_ints)
from adainfer.cli.progress import progress_bar
from adainfer.cli.scaling import AddressOption, RayOption, WorkersOption, check_ray_options, ray_connection, ray_rows
from adainfer.data.tasks import TASKS, write_prompts_jsonl
from adainfer.engine.cost_profile import CostProfile
from adainfer.engine.files import check_output_file
from adainfer.engine.model import EarlyExitModel
from adainfer.eval.collect import RowSource
from adainfer.eval.experiments import model_transfer_rows
from adainfer.data.task_data import load_task
from adainfer.engine.model import model_slug
from adainfer.eval.harness import (HarnessError, Setting, SettingData, check_settings, collect_setting, export_setting,
                                   load_setting, settings_grid, task_prompts)
from adainfer.eval.report import write_model_transfer, write_report

DEFAULT_RUNS = Path("runs/cache")


@clean_errors
def prompts(
    task: Annotated[str, typer.Argument(help=f"A built-in task ({', '.join(TASKS)}) or a .jsonl file of {{input, output}} lines, split in two halves as `adainfer eval` splits it.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file of {prompt, answer} to write.")],
    split: Annotated[Literal["train", "eval"], typer.Option(help="train: classifier-training prompts; eval: the evaluated prompts, whose inputs are never in train prompts or demonstrations.")] = "train",
    shots: Annotated[int, typer.Option(help="Demonstrations per prompt, always drawn from the task's train split.")] = 5,
    limit: Annotated[int | None, typer.Option(help="Number of prompts (a seeded sample).")] = None,
    seed: Annotated[int, typer.Option(help="The seed of an `adainfer eval` setting: --split eval and --split train then write exactly that setting's eval and train prompts (train draws with seed + 1). Use the same seed for both splits.")] = 0,
    data_dir: DataDirOption = None,
) -> None:
    """Write zero- or few-shot prompts `Q: x\\nA:` with their gold answers, as `adainfer eval` builds them."""
    check_output_file(out)
    written = task_prompts(load_task(task, data_dir), split, shots, limit, seed)
    write_prompts_jsonl(written, out)
    err.print(f"wrote {len(written)} prompts to {out}")


@clean_errors
def eval_command(
    context: typer.Context,
    tasks: Annotated[str, typer.Option(help=f"Comma-separated tasks ({', '.join(TASKS)}) or .jsonl files of {{input, output}}.")] = "sst2",
    shots: Annotated[str, typer.Option(help="Comma-separated numbers of demonstrations; 0 is zero-shot. The paper: 0,5,10,15,20.")] = "0,5",
    limit: Annotated[int, typer.Option(help="Evaluation prompts per task and setting (seeded sample of the eval split).")] = 200,
    train_limit: Annotated[int, typer.Option(help="Classifier-training prompts per task and setting, from the train split.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the prompt sample and demonstrations.")] = 0,
    runs: Annotated[Path, typer.Option(help="Cache of collected per-layer traces; reruns resume from it.")] = DEFAULT_RUNS,
    out: Annotated[Path | None, typer.Option(help="Where tables and figures go. Default: results/<model folder name>.")] = None,
    data_dir: DataDirOption = None,
    model: ModelOption = None,
    cache_dir: CacheOption = None,
    ray: RayOption = False,
    address: AddressOption = None,
    workers: WorkersOption = None,
) -> None:
    """Collect every (task, shots) setting once, then write the paper's tables and figures."""
    if limit < 1 or train_limit < 1:
        raise ValueError("--limit and --train-limit must be at least 1")
    check_ray_options(ray, address, workers)
    task_names = [name.strip() for name in tasks.split(",") if name.strip()]
    for name in task_names:
        if not name.endswith(".jsonl") and name not in TASKS:
            raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}, or a .jsonl file")
        if name.endswith(".jsonl") and not Path(name).is_file():
            raise ValueError(f"task file {name} does not exist")
    grid = settings_grid(task_names, parse_ints(shots, "--shots"), seed)
    check_settings(grid, train_limit, limit, data_dir)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if ray:  # before the model loads: a missing extra or a wrong address fails at once
            ray_connection(stack, address, workers)
        exit_model = open_model(model, cache_dir)
        row_source = ray_rows(model, cache_dir, exit_model, workers) if ray else None
        collected = _collect_grid(exit_model, grid, runs, train_limit, limit, data_dir, row_source)
    out = out or Path("results") / model_slug(exit_model)
    written = write_report(collected, out, command_line(context))
    minutes = (time.perf_counter() - started) / 60
    err.print(f"{len(grid)} settings in {minutes:.1f} min; wrote {len(written)} files under {out}")


def _collect_grid(exit_model: EarlyExitModel, grid: list[Setting], runs: Path, train_limit: int, limit: int,
                  data_dir: Path | None, row_source: RowSource | None) -> list[SettingData]:
    """`collect_setting` for every setting of the grid, under one progress bar."""
    collected = []
    with progress_bar(err) as progress:
        bar = progress.add_task("", total=None)
        for number, setting in enumerate(grid, start=1):
            def on_prompt(split: str, done: int, total: int, name: str = setting.name, number: int = number) -> None:
                progress.update(bar, description=f"[{number}/{len(grid)}] {name} {split}", completed=done, total=total)

            collected.append(collect_setting(exit_model, setting, runs, train_limit, limit, data_dir, on_prompt,
                                             row_source))
    return collected


@clean_errors
def report(
    context: typer.Context,
    runs: Annotated[Path, typer.Argument(help="A model's folder of collected settings, e.g. runs/cache/<model>.")],
    out: Annotated[Path, typer.Option(help="Where tables and figures go.")],
    tasks: Annotated[str | None, typer.Option(help="Only these tasks (comma-separated). Default: all collected.")] = None,
    shots: Annotated[str | None, typer.Option(help="Only these numbers of demonstrations (comma-separated). Default: all collected.")] = None,
    cost_profile: Annotated[Path | None, typer.Option(help="A measured cost profile of the model (`adainfer "
                                                      "profile -o`) for the `estimated_time_ratio` columns. "
                                                      "Default: RUNS/cost_profile.json when it exists.")] = None,
) -> None:
    """Rebuild tables and figures from collected traces, without loading the model."""
    folders = _setting_folders(runs, tasks, shots)
    settings = [load_setting(folder) for folder in folders]
    profile = _cost_profile(cost_profile or Path(runs) / "cost_profile.json", settings, required=cost_profile is not None)
    written = write_report(settings, out, command_line(context), profile)
    err.print(f"{len(folders)} settings; wrote {len(written)} files under {out}")


def _cost_profile(path: Path, settings: list, required: bool) -> CostProfile | None:
    """The profile at `path` (None when absent and not `required`), checked against the traces' model."""
    if not path.exists():
        if required:
            raise ValueError(f"{path}: no such cost profile")
        return None
    try:
        profile = CostProfile.load(path)
    except (ValueError, TypeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a cost profile ({error})") from None
    traced = settings[0].eval.model_identity
    if profile.model_identity != traced:
        raise ValueError(f"{path} was measured on another model ({profile.model_identity.get('architecture')}, "
                         f"head {profile.model_identity.get('head_sha256')}) than the traces "
                         f"({traced.get('architecture')}, head {traced.get('head_sha256')})")
    return profile


@clean_errors
def export_traces(
    runs: Annotated[Path, typer.Argument(help="A model's folder of collected settings, e.g. runs/cache/<model>.")],
    out: Annotated[Path, typer.Option(help="Where the compact traces go, e.g. results/traces/<model>.")],
    tasks: Annotated[str | None, typer.Option(help="Only these tasks (comma-separated). Default: all collected.")] = None,
    shots: Annotated[str | None, typer.Option(help="Only these numbers of demonstrations (comma-separated). Default: all collected.")] = None,
) -> None:
    """Copy collected traces as compact .npz files that `adainfer report` reads without the model."""
    folders = _setting_folders(runs, tasks, shots)
    for folder in folders:
        export_setting(load_setting(folder), Path(out) / folder.parent.name / folder.name)
    err.print(f"{len(folders)} settings exported under {out}")


def _setting_folders(runs: Path, tasks: str | None, shots: str | None = None) -> list[Path]:
    """The collected settings under a model's cache folder, optionally only some tasks and shots."""
    folders = sorted(path.parent for path in Path(runs).glob("*/*/setting.json"))
    if tasks:
        wanted = {name.strip() for name in tasks.split(",")}
        folders = [folder for folder in folders if folder.parent.name in wanted]
    if shots:
        wanted_shots = set(parse_ints(shots, "--shots"))
        folders = [folder for folder in folders
                   if json.loads((folder / "setting.json").read_text())["shots"] in wanted_shots]
    if not folders:
        raise HarnessError(f"no collected settings under {runs} (expected <task>/<setting>/setting.json)")
    return folders


@clean_errors
def transfer(
    context: typer.Context,
    runs: Annotated[list[str], typer.Argument(help="Two or more models' folders of collected settings "
                                              "(runs/cache/<model>), each optionally as NAME=FOLDER.")],
    out: Annotated[Path, typer.Option(help="Where the tables go.")],
    tasks: Annotated[str | None, typer.Option(help="Only these tasks (comma-separated). Default: all shared.")] = None,
) -> None:
    """Inter-model generalization (paper Table 6): policies fitted on one model, replayed on another."""
    models: dict[str, list] = {}
    for item in runs:
        name, _, folder = item.rpartition("=")
        name = name or Path(folder).name
        if name in models:
            raise ValueError(f"model name {name!r} given twice; name them with NAME=FOLDER")
        models[name] = [load_setting(path) for path in _setting_folders(Path(folder), tasks)]
    if len(models) < 2:
        raise ValueError("transfer needs at least two models' folders")
    rows = model_transfer_rows(models)
    if not rows:
        raise HarnessError("the models share no collected setting (same task, shots and seed); collect "
                           "the same --tasks/--shots/--seed with each model first")
    written = write_model_transfer(rows, out, command_line(context))
    err.print(f"{len({row['task'] for row in rows})} shared tasks, {len(models)} models; "
              f"wrote {len(written)} files under {out}")
