"""Measured wall-clock speedup of early exit over the model's own forward, side by side in one run.

The machine is noisy, so the two are timed in alternation, batch by batch (dense first on even
batches, early exit first on odd ones), after one untimed warm-up of each: drift in the
machine's load falls on both. The speedup is total dense time over total early-exit time; the
median of the per-batch ratios is reported beside it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from adainfer.engine.model import EarlyExitModel
from adainfer.inference.dense import dense_logits
from adainfer.inference.predict import ExitResult, predict_batch
from adainfer.policies.base import StopPolicy


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

    def to_dict(self) -> dict[str, float | int]:
        return {key: round(value, 4) if isinstance(value, float) else value for key, value in asdict(self).items()}


def _timed(run: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def measure_speedup(model: EarlyExitModel, prompts: Sequence[str], policy: StopPolicy,
                    candidate_ids: Sequence[int] | None, batch_size: int,
                    on_batch: Callable[[], None] | None = None) -> tuple[SpeedFigure, list[ExitResult]]:
    """Time `predict_batch` against the dense forward on `prompts` in batches of `batch_size`.

    Returns the figure and the early-exit results of the timed runs (so a caller can check them
    against replay). `on_batch` is called after each timed batch, for progress bars.
    """
    if batch_size < 1 or not prompts:
        raise ValueError(f"need prompts and a batch size >= 1, got {len(prompts)} prompts, batch {batch_size}")
    device = model.executor.head.weight.device
    batches = [list(prompts[start:start + batch_size]) for start in range(0, len(prompts), batch_size)]
    dense_logits(model, batches[0])  # warm-ups: first calls allocate and pick kernels
    predict_batch(model, batches[0], policy, candidate_ids)
    dense_times, exit_times, results = [], [], []
    for index, batch in enumerate(batches):
        answered: list[ExitResult] = []

        def dense() -> None:
            dense_times.append(_timed(lambda: dense_logits(model, batch), device))

        def early() -> None:
            exit_times.append(_timed(lambda: answered.extend(predict_batch(model, batch, policy, candidate_ids)),
                                     device))

        for run in ((dense, early) if index % 2 == 0 else (early, dense)):
            run()
        results.extend(answered)
        if on_batch is not None:
            on_batch()
    ratios = [d / e for d, e in zip(dense_times, exit_times)]
    figure = SpeedFigure(batch_size, len(prompts), sum(dense_times), sum(exit_times),
                         sum(dense_times) / sum(exit_times), statistics.median(ratios), torch.get_num_threads())
    return figure, results
