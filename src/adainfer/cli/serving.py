"""`adainfer serve`: the HTTP API (classification with early exit, lossless completions) under uvicorn."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import torch
import typer
import uvicorn

from adainfer.cli.common import CacheOption, ModelOption, clean_errors, err, open_model
from adainfer.engine.loading import DEFAULT_MODEL
from adainfer.fit.classifier import load_classifier
from adainfer.serve.app import ServeOptions, create_app


@clean_errors
def serve(
    policy_dir: Annotated[Path, typer.Option("--policy", "-p", help="Classifier directory written by `adainfer fit`.")],
    model: ModelOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_batch_size: Annotated[int, typer.Option(help="Most classification inputs answered by one batched pass.")] = 16,
    max_wait_ms: Annotated[float, typer.Option(help="How long a batch waits for more inputs after its oldest one arrived.")] = 10.0,
    max_queue: Annotated[int, typer.Option(help="Most inputs waiting; beyond it requests get 503 with Retry-After.")] = 256,
    dense: Annotated[bool, typer.Option("--dense", help="Answer /v1/classify with the dense model (no early exit): the baseline.")] = False,
    threads: Annotated[int | None, typer.Option(help="torch threads of the model worker. Default: torch's.")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level (critical, error, warning, info, debug).")] = "info",
    cache_dir: CacheOption = None,
) -> None:
    """Serve /v1/classify (early exit, dynamic batching), /v1/completions (lossless, OpenAI schema), /metrics, /docs."""
    if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0 or (threads is not None and threads < 1):
        raise ValueError("--max-batch-size, --max-queue and --threads must be >= 1 and --max-wait-ms >= 0")
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    exit_model = open_model(model, cache_dir)
    policy, card = load_classifier(policy_dir, exit_model)
    if threads is not None:
        torch.set_num_threads(threads)
    model_id = model or DEFAULT_MODEL
    options = ServeOptions(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue, dense=dense)
    app = create_app(exit_model, policy, card, model_id, options)
    err.print(f"serving {model_id} ({'dense' if dense else 'early exit'}, {card.task}: "
              f"{', '.join(card.answer_set or ['open vocabulary'])}) on http://{host}:{port} (API docs: /docs)",
              highlight=False, soft_wrap=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    signal.signal(signal.SIGTERM, _exit_cleanly)
    server.run()


def _exit_cleanly(_signal: int, _frame: FrameType | None) -> None:
    """SIGTERM outside uvicorn's own handler: before it starts, or when it re-raises the signal it
    drained on (uvicorn restores the previous handler, then raises the signal again). Either way
    there is nothing left to finish, so exit with success."""
    raise SystemExit(0)
