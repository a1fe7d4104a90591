"""The HTTP server: a FastAPI app over one model, its fitted classifier, and one batching worker.

`create_app` builds everything an app needs (worker, metrics registry, error handlers, API keys,
body limits), so that several apps can live in one process; the worker thread starts and stops
with the app's lifespan, so a server that is told to stop (SIGTERM) first lets uvicorn finish the
requests in flight, then lets the worker finish what it holds (within `shutdown_timeout_s`).

Every input is checked on the event loop before it is queued (`schemas`, `check_prompt`), and
whatever still fails on the worker fails its own request (400 for an input, 500 for anything
else), as one JSON line; if the worker itself ends, /healthz answers 503 and requests 503.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI

from adainfer.engine.model import EarlyExitModel
from adainfer.fit.card import ClassifierCard
from adainfer.policies.base import StopPolicy
from adainfer.serve.auth import ApiKeys
from adainfer.serve.batcher import ModelWorker
from adainfer.serve.classifying import BatchClassifier
from adainfer.serve.errors import ServeError, error_response, install_error_handlers
from adainfer.serve.limits import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES, BodyLimit
from adainfer.serve.metrics import RequestMetrics, ServeMetrics
from adainfer.serve.routes import ENDPOINTS, Server, router


@dataclass(frozen=True)
class ServeOptions:
    """How the server batches and what it accepts; `dense` answers /v1/classify without early exit,
    `cached_dense` the same over the demonstrations' cached keys and values.

    api_keys: the keys a request must carry (`auth`); empty: none needed.
    body_timeout_s: the most seconds a request body may take to arrive.
    show_pid: /healthz names the answering process (to tell replicas apart); off, it leaks nothing.
    docs: serve /docs and /redoc (their pages load scripts from a CDN); /openapi.json is always served.
    shutdown_timeout_s: how long the worker may take to finish what it holds when the server stops.
    draft_weights, prompt_lookup: how /v1/completions drafts (`adainfer.inference.generate.generate`);
        they change its speed, never its text.
    """

    max_batch_size: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    dense: bool = False
    cached_dense: bool = False
    api_keys: tuple[str, ...] = ()
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    show_pid: bool = False
    docs: bool = False
    shutdown_timeout_s: float = 30.0
    draft_weights: str = "model"
    prompt_lookup: int = 0


def create_app(model: EarlyExitModel, policy: StopPolicy, card: ClassifierCard, model_id: str,
               options: ServeOptions = ServeOptions()) -> FastAPI:
    """An app answering /v1/classify with the classifier (`policy`, `card`) and /v1/completions with
    lossless generation, all model work on one worker thread."""
    classifier = BatchClassifier(model, card, None if options.dense or options.cached_dense else policy,
                                 cached_dense=options.cached_dense)
    metrics = ServeMetrics(model.num_layers, ENDPOINTS)
    worker: ModelWorker = ModelWorker(classifier.answer, classifier.check, max_batch_size=options.max_batch_size,
                                      max_wait=options.max_wait_ms / 1000, max_queue=options.max_queue,
                                      on_batch=metrics.batch_size.observe)
    metrics.queued_rows.set_function(lambda: worker.queued_rows)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.close, options.shutdown_timeout_s)  # finishes what it holds

    app = FastAPI(title="adainfer", lifespan=lifespan, docs_url="/docs" if options.docs else None,
                  redoc_url="/redoc" if options.docs else None,
                  description=f"Early-exit classification ({card.task}: {', '.join(card.answer_set or ['open'])}) "
                              f"and lossless greedy completions on {model_id}.")
    app.state.server = Server(model, card, classifier, worker, metrics, model_id, int(time.time()), options.show_pid,
                              options.draft_weights, options.prompt_lookup)
    install_error_handlers(app, metrics)
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes, read_timeout=options.body_timeout_s,
                       refuse=lambda status, message: error_response(metrics, ServeError(
                           status, "body_too_large" if status == 413 else "body_timeout", message)))
    app.add_middleware(ApiKeys, keys=options.api_keys,  # outside the body limit: no body read without a key
                       refuse=lambda message: error_response(metrics, ServeError(401, "unauthorized", message)))
    app.add_middleware(RequestMetrics, metrics=metrics)
    model.check_prompt("warm")  # reads the vocabulary once, here, rather than in a request on the event loop
    app.include_router(router)
    return app
