"""Trace collection on Ray: prompts go to a pool of workers, rows come back to the driver.

Collecting per-layer traces is one independent model call per prompt, so it spreads over
workers with no coordination beyond handing out prompts. We do not schedule anything ourselves:
Ray Data's `map_batches` with a callable class (`PromptTracer`) runs a fixed pool of actors that
each load the model once and trace the prompts they are handed, and (its default for actor
pools) restarts an actor that dies and hands its unfinished prompts to it again, without limit.
`ray.init` with no address starts a cluster inside this process, so the same command runs on a
laptop and, with `address`, on a cluster. A pool lives for one rows file (one split of one
setting): its workers load the model once per file, seconds for a small model.

What runs where: the driver (the process that calls `collect`) holds the lock, reads what is
already collected, and writes every row, in prompt order (`adainfer.eval.collect`); the workers
only compute `prompt_rows`. A run spread over workers therefore resumes, refuses a changed prompts
file and writes the same bytes as a run in one process, given the same number of torch threads
(workers use one each).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import ray
import ray.data
import torch

from adainfer.data.tasks import LabelledPrompt
from adainfer.engine.model import EarlyExitModel
from adainfer.eval.collect import prompt_rows

# One prompt per block, so work is handed out one prompt at a time and each prompt's rows come
# back as soon as it is traced; past this many prompts, blocks grow to keep Ray's bookkeeping small.
MAX_BLOCKS = 10_000


@contextlib.contextmanager
def connected(address: str | None = None, workers: int | None = None) -> Iterator[None]:
    """Connected to the cluster at `address` (``ray://host:10001``, ``auto``), or to a local one
    started here with `workers` CPUs (default: all of this machine's), for the `with` block. Ray
    is shut down at its end only if this call started it: a process already connected (a notebook,
    a test session) stays connected."""
    if ray.is_initialized():
        yield
        return
    # Quiet: our own progress bar reports; workers' logs stay in Ray's session folder.
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address:
        check_reachable(address)
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, **quiet)
    try:
        yield
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Raise ConnectionError (an OSError: one clear line from the CLI) when nothing answers at a
    ``host:port`` or ``ray://host:port`` address: given a wrong address, `ray.init` retries for
    many minutes, printing a warning every few seconds. ``auto`` is left to Ray, which fails fast."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise ConnectionError(f"no Ray cluster answers at {address} ({error})") from None


def actor_resources(cluster: dict[str, float]) -> dict[str, float]:
    """What one worker reserves: one CPU, and one GPU when the cluster (`ray.cluster_resources()`)
    has any, so that workers spread one per GPU instead of piling onto CPUs."""
    return {"num_cpus": 1, "num_gpus": 1} if cluster.get("GPU", 0) >= 1 else {"num_cpus": 1}


def default_workers(cluster: dict[str, float]) -> int:
    """One worker per GPU on a GPU cluster, else one per CPU."""
    return max(1, int(cluster.get("GPU", 0) or cluster.get("CPU", 1)))


class PromptTracer:
    """The callable class Ray Data runs in each worker: loads the model once, then traces prompts.

    Each batch is a dict of arrays `index`, `prompt`, `answer` (prompts,); the result adds `rows`
    (each prompt's `prompt_rows` text) and `error`, empty when the prompt was traced. An expected
    error (a prompt too long for the model, a model that cannot be loaded on this node, a node
    whose copy of the model differs from the driver's) comes back as text for the driver to raise
    as one clear error, rather than as a worker crash that Ray would retry. The model moves to the
    worker's GPU when it has one; a model larger than one GPU would need ``device_map="auto"`` at
    load time, inside the actor, with several GPUs reserved per worker, which is not done here.
    """

    def __init__(self, source: str | None, cache_dir: str | None, feature_names: Sequence[str],
                 candidate_ids: Sequence[int] | None, expected_identity: dict[str, object],
                 prefix_text: str | None = None) -> None:
        torch.set_num_threads(1)  # workers are processes, one per CPU: threads inside would contend
        self.feature_names = tuple(feature_names)
        self.candidate_ids = list(candidate_ids) if candidate_ids else None
        self.problem = ""
        try:
            self.model = EarlyExitModel.from_pretrained(source, cache_dir)
        except (ValueError, OSError) as error:
            self.problem = f"a worker cannot load the model: {error}"
            return
        if torch.cuda.is_available():
            self.model.model.to("cuda")
        identity = self.model.identity()
        if identity != expected_identity:
            self.problem = (f"a worker loaded another model from {source or 'the default model'} "
                            f"(head {identity.get('head_sha256')}) than the driver "
                            f"(head {expected_identity.get('head_sha256')}); every node needs the same files")
        elif prefix_text is not None:  # the driver's cached prefix: the same traces as the driver's
            try:
                self.model.use_prefix(prefix_text)
            except ValueError as error:
                self.problem = f"a worker cannot cache the prompts' prefix: {error}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, errors = [], []
        for index, prompt, answer in zip(batch["index"], batch["prompt"], batch["answer"]):
            text, error = "", self.problem
            if not error:
                try:
                    text = prompt_rows(self.model, int(index), LabelledPrompt(str(prompt), str(answer)),
                                       self.feature_names, self.candidate_ids)
                except ValueError as problem:
                    error = str(problem)
            rows.append(text)
            errors.append(error)
        return {"index": batch["index"], "rows": np.array(rows, dtype=object), "error": np.array(errors, dtype=object)}


@dataclass
class RayRows:
    """A `adainfer.eval.collect.RowSource` whose prompts are traced by Ray workers.

    Workers load `EarlyExitModel.from_pretrained(source, cache_dir)`: the same string the driver
    was given (a local path as an absolute one), which on a cluster must name the same files on
    every node; each worker checks its model's identity against `expected_identity`. `workers`
    fixes the pool's size (default `default_workers`). Rows come back as workers finish, in any
    order; `collect` writes them in prompt order. `tracer` is the class the workers run.
    """

    source: str | None
    cache_dir: str | None
    expected_identity: dict[str, object]
    workers: int | None = None
    tracer: type = field(default=PromptTracer)

    def __call__(self, pending: Sequence[tuple[int, LabelledPrompt]], feature_names: tuple[str, ...],
                 candidate_ids: list[int] | None, prefix_text: str | None = None) -> Iterator[tuple[int, str]]:
        if not pending:
            return
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the CLI draws its own bar
        context.print_on_execution_start = False
        cluster = ray.cluster_resources()
        items = [{"index": index, "prompt": item.prompt, "answer": item.answer} for index, item in pending]
        dataset = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))
        traced = dataset.map_batches(
            self.tracer,
            fn_constructor_kwargs={"source": self.source, "cache_dir": self.cache_dir,
                                   "feature_names": feature_names, "candidate_ids": candidate_ids,
                                   "expected_identity": self.expected_identity, "prefix_text": prefix_text},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(self.workers or default_workers(cluster), len(items))),
            **actor_resources(cluster),
        )
        for row in traced.iter_rows():
            if row["error"]:
                raise ValueError(f"prompt {row['index']}: {row['error']}")
            yield int(row["index"]), str(row["rows"])
