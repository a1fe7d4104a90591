"""Measured wall-clock speedup of early exit over the model's own forward, side by side in one run.

Four passes answer the same batches:

(a) `dense`: the model's own forward on the full prompts (the baseline a user first compares with);
(b) `cached_dense`: the model's forward on each prompt's own tokens over the prefix's keys and
    values, prefilled once and copied per batch (`EarlyExitModel.use_prefix`): the best dense path
    a transformers user can write for prompts that share their demonstrations;
(c) `full_depth`: our walk at full depth over the same cached prefix (every layer, one lens read
    at the last: no check, no exit);
(d) `early_exit`: early exit over the cached prefix.

d against a is what a user gains over today's baseline; d against b what early exit still gains
over the strongest dense baseline; d against c what early exit itself gains, since our layer loop
alone can differ in speed from the model's forward. Without a prefix in use (b), (c) and (d) run
the full prompts. The machine is noisy, so the passes are timed in turn, batch by batch, in an
order that rotates from batch to batch, after one untimed warm-up of each: drift in the machine's
load falls on all. A speedup is a ratio of total times; the median of the per-batch ratios d/a is
reported beside the first.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

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
    cached_dense_seconds: float
    speedup_vs_cached_dense: float  # cached_dense_seconds / early_exit_seconds: over the best dense path
    prefix_tokens: int  # the cached prefix's tokens (0: none)
    prefix_bytes: int  # its keys and values at every layer
    prefix_fallbacks: int  # timed prompts answered from their full prompt (tokens not extending the prefix)
    peer_seconds: dict[str, float] = field(default_factory=dict)  # other engines timed in the same rotation

    def to_dict(self) -> dict[str, Any]:
        return {key: _rounded(value) for key, value in asdict(self).items()}


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    return round(value, 4) if isinstance(value, float) else value


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
                    on_batch: Callable[[], None] | None = None,
                    peers: dict[str, Callable[[list[str]], object]] | None = None) -> tuple[SpeedFigure, list[ExitResult]]:
    """Time the four passes of the module docstring on `prompts` in batches of `batch_size`, over
    the model's cached prefix where one is in use.

    Returns the figure and the early-exit results of the timed runs (so a caller can check them
    against replay). `on_batch` is called after each timed batch, for progress bars. `peers` (name:
    a function answering a batch) are other engines timed in the same rotation (`peer_seconds`).
    """
    if batch_size < 1 or not prompts:
        raise ValueError(f"need prompts and a batch size >= 1, got {len(prompts)} prompts, batch {batch_size}")
    device = model.executor.head.weight.device
    never_check = model.num_layers + 1
    batches = [list(prompts[start:start + batch_size]) for start in range(0, len(prompts), batch_size)]
    passes: dict[str, Callable[[list[str]], list[ExitResult] | object]] = {
        "dense": lambda batch: dense_logits(model, batch),
        "cached_dense": lambda batch: dense_logits(model, batch, use_prefix=True),
        "full_depth": lambda batch: predict_batch(model, batch, policy, candidate_ids, first_check=never_check),
        "early_exit": lambda batch: predict_batch(model, batch, policy, candidate_ids),
        **(peers or {}),
    }
    for run in passes.values():  # warm-ups: first calls allocate and pick kernels
        run(batches[0])
    prefix = model.prefix
    fallbacks_before = prefix.fallbacks if prefix is not None else 0
    seconds: dict[str, list[float]] = {name: [] for name in passes}
    results: list[ExitResult] = []
    order = list(passes)
    for index, batch in enumerate(batches):
        for name in order[index % len(order):] + order[:index % len(order)]:
            spent, answered = _timed(lambda: passes[name](batch), device)
            seconds[name].append(spent)
            if name == "early_exit":
                results.extend(answered)
        if on_batch is not None:
            on_batch()
    dense, cached, full_depth, early = (sum(seconds[name]) for name in
                                        ("dense", "cached_dense", "full_depth", "early_exit"))
    ratios = [d / e for d, e in zip(seconds["dense"], seconds["early_exit"])]
    # Each timed batch runs the three cached passes: a prompt that fell back did so three times.
    fallbacks = (prefix.fallbacks - fallbacks_before) // 3 if prefix is not None else 0
    figure = SpeedFigure(batch_size, len(prompts), dense, early, dense / early, statistics.median(ratios),
                         torch.get_num_threads(), full_depth, full_depth / early, cached, cached / early,
                         len(prefix) if prefix is not None else 0, prefix.nbytes if prefix is not None else 0,
                         fallbacks, {name: sum(seconds[name]) for name in peers or {}})
    return figure, results
