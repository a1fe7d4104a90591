"""What `eval --ray`, `fit --ray` and `serve --ray` share: the options, the optional import of Ray,
the connection, and the model as workers load it.

Ray is an optional extra, so `adainfer.scale` is imported only when `--ray` is given, and its
absence is one clear error naming the extra, raised before the model loads.
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer

from adainfer.cli.common import err
from adainfer.engine.loading import EMBEDDED_MODELS
from adainfer.engine.model import EarlyExitModel
from adainfer.eval.collect import RowSource

RayOption = Annotated[bool, typer.Option("--ray", help="Run on Ray (a local cluster started here, or --address). Needs the ray extra: pip install -e \".\\[ray]\".")]
AddressOption = Annotated[str | None, typer.Option(help="With --ray: the cluster to run on (ray://HOST:10001, or auto for the one this machine belongs to). Default: start a local one.")]
WorkersOption = Annotated[int | None, typer.Option(help="With --ray: how many workers trace prompts, each one CPU (or one GPU) and a copy of the model; this process still writes the cache, the same bytes as without --ray. Default: one per CPU (GPU) of the cluster.")]


def check_ray_options(ray: bool, address: str | None, workers: int | None, name: str = "--workers") -> None:
    """Refuse Ray options that cannot run, before anything loads: `address`/`workers` without
    `--ray`, or fewer than one worker (`name` is the option's flag in messages)."""
    if (address is not None or workers is not None) and not ray:
        raise ValueError(f"--address and {name} choose where --ray runs; add --ray")
    if workers is not None and workers < 1:
        raise ValueError(f"{name} must be at least 1, got {workers}")


def ray_module(name: str) -> ModuleType:
    """`adainfer.scale.<name>`, or a ValueError naming the extra when Ray is not installed."""
    try:
        return importlib.import_module(f"adainfer.scale.{name}")
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] != "ray":
            raise
        raise ValueError('--ray needs Ray, an optional extra: pip install -e ".[ray]"') from None


def ray_connection(stack: contextlib.ExitStack, address: str | None, cpus: int | None) -> None:
    """Connect to `address`, or start a local Ray with `cpus` CPUs (default: all), for the rest of
    `stack`; a missing extra or an address nothing answers at fails here, at once."""
    collect = ray_module("collect")
    with err.status("starting Ray" if address is None else f"connecting to Ray at {address}"):
        stack.enter_context(collect.connected(address, cpus))


def ray_rows(model: str | None, cache_dir: Path | None, exit_model: EarlyExitModel, workers: int | None) -> RowSource:
    """The row source that traces prompts on Ray workers loading the model the verb was given
    (`--model`, `--cache-dir`), checked against the driver's copy, `exit_model`."""
    return ray_module("collect").RayRows(worker_source(model), absolute(cache_dir), exit_model.identity(), workers)


def worker_source(model: str | None) -> str | None:
    """The model as workers load it: a local path made absolute (a worker may start elsewhere),
    an embedded name or the default as given (the loader reads a name before a path)."""
    if model is None or model in EMBEDDED_MODELS or not Path(model).expanduser().exists():
        return model
    return str(Path(model).expanduser().resolve())


def absolute(path: Path | None) -> str | None:
    """A path as workers read it: absolute, since a worker may start in another directory."""
    return None if path is None else str(path.expanduser().resolve())
