"""Measured wall-clock speedup of early exit over the model's own forward, side by side in one run.

Three passes answer the same batches: the model's own forward (dense, the baseline a user
compares with), our walk at full depth (every layer, one lens read at the last: no check, no
exit) and early exit. The first ratio is what a user gains; the second isolates what early exit
itself gains, since our layer loop alone can differ in speed from the model's forward (on short
prompts it can be faster, which the first ratio would credit to early exit). The machine is
noisy, so the three are timed in turn, batch by batch, in an order that rotates from batch to
batch, after one untimed warm-up of each: drift in the machine's load falls on all. A speedup is
a ratio of total times; the median of the per-batch ratios is reported beside the first.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TypeVar

import torch

from adainfer.engine.model import EarlyExitModel
from adainfer.inference.dense import dense_logits
from adainfer.inference.predict import ExitResult, predict_batch
from adainfer.policies.base import StopPolicy

T = TypeVar("T")


@dataclass(frozen=True)
class SpeedFigure:
    """Wall seconds of dense and early-exit passes over the same prompts at one batch size."""

    batch_size: int
    prompts: int
    dense_seconds: float
    early_exit_seconds: float
    speedup: float  # dense_seconds / early_exit_seconds
    median_batch_speedup: float
    torch_threads: int
    full_depth_seconds: float
    speedup_vs_full_depth: float  # full_depth_seconds / early_exit_seconds: early exit's own gain

    def to_dict(self) -> dict[str, float | int]:
        return {key: round(value, 4) if isinstance(value, float) else value for key, value in asdict(self).items()}


def _timed(run: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """Wall seconds of `run()` (the device synchronised around it), and what it returned."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, result


def measure_speedup(model: EarlyExitModel, prompts: Sequence[str], policy: StopPolicy,
                    candidate_ids: Sequence[int] | None, batch_size: int,
                    on_batch: Callable[[], None] | None = None) -> tuple[SpeedFigure, list[ExitResult]]:
    """Time `predict_batch` against the dense forward and against itself at full depth, on
    `prompts` in batches of `batch_size`.

    Returns the figure and the early-exit results of the timed runs (so a caller can check them
    against replay). `on_batch` is called after each timed batch, for progress bars.
    """
    if batch_size < 1 or not prompts:
        raise ValueError(f"need prompts and a batch size >= 1, got {len(prompts)} prompts, batch {batch_size}")
    device = model.executor.head.weight.device
    never_check = model.num_layers + 1
    batches = [list(prompts[start:start + batch_size]) for start in range(0, len(prompts), batch_size)]
    passes: dict[str, Callable[[list[str]], list[ExitResult] | object]] = {
        "dense": lambda batch: dense_logits(model, batch),
        "full_depth": lambda batch: predict_batch(model, batch, policy, candidate_ids, first_check=never_check),
        "early_exit": lambda batch: predict_batch(model, batch, policy, candidate_ids),
    }
    for run in passes.values():  # warm-ups: first calls allocate and pick kernels
        run(batches[0])
    seconds: dict[str, list[float]] = {name: [] for name in passes}
    results: list[ExitResult] = []
    order = list(passes)
    for index, batch in enumerate(batches):
        for name in order[index % 3:] + order[:index % 3]:
            spent, answered = _timed(lambda: passes[name](batch), device)
            seconds[name].append(spent)
            if name == "early_exit":
                results.extend(answered)
        if on_batch is not None:
            on_batch()
    dense, full_depth, early = (sum(seconds[name]) for name in ("dense", "full_depth", "early_exit"))
    ratios = [d / e for d, e in zip(seconds["dense"], seconds["early_exit"])]
    figure = SpeedFigure(batch_size, len(prompts), dense, early, dense / early, statistics.median(ratios),
                         torch.get_num_threads(), full_depth, full_depth / early)
    return figure, results
