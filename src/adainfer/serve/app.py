"""The HTTP server: a FastAPI app over one model, its fitted classifier, and one batching worker.

`create_app` builds everything an app needs (worker, metrics registry, error handlers, body
limit), so that several apps can live in one process; the worker thread starts and stops with
the app's lifespan, so a server that is told to stop (SIGTERM) first lets uvicorn finish the
requests in flight, then lets the worker finish what it holds.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Response

from adainfer.engine.model import EarlyExitModel
from adainfer.fit.card import ClassifierCard
from adainfer.policies.base import StopPolicy
from adainfer.serve.batcher import ModelWorker
from adainfer.serve.classifying import BatchClassifier
from adainfer.serve.completions import (CompletionEvent, EventStream, GenerationJob, completion_body, completion_id,
                                        next_event, sse_chunks)
from adainfer.serve.errors import ServeError, error_response, install_error_handlers
from adainfer.serve.limits import DEFAULT_MAX_BODY_BYTES, BodyLimit
from adainfer.serve.metrics import CONTENT_TYPE, RequestMetrics, ServeMetrics
from adainfer.serve.schemas import (ClassifyAnswer, ClassifyRequest, ClassifyResponse, Completion, CompletionRequest,
                                    ErrorResponse, ModelCard, ModelList)

ENDPOINTS = ("/v1/classify", "/v1/completions", "/v1/models", "/healthz", "/metrics")
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description} for status, description in {
        400: "An input the model cannot take (over its context).",
        404: "A model this server does not serve.",
        413: "A body over the size limit.",
        422: "A body that does not fit the schema: wrong type, unknown field, blank input, refused option.",
        503: "The queue is full, or the server is shutting down; retry after `Retry-After` seconds.",
    }.items()}


@dataclass(frozen=True)
class ServeOptions:
    """How the server batches and what it accepts; `dense` answers /v1/classify without early exit."""

    max_batch_size: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    dense: bool = False


def create_app(model: EarlyExitModel, policy: StopPolicy, card: ClassifierCard, model_id: str,
               options: ServeOptions = ServeOptions()) -> FastAPI:
    """An app answering /v1/classify with the classifier (`policy`, `card`) and /v1/completions with
    lossless generation, all model work on one worker thread."""
    classifier = BatchClassifier(model, card, None if options.dense else policy)
    metrics = ServeMetrics(model.num_layers, ENDPOINTS)
    worker: ModelWorker = ModelWorker(classifier.answer, classifier.check, options.max_batch_size,
                                      options.max_wait_ms / 1000, options.max_queue, metrics.batch_size.observe)
    metrics.queued_rows.set_function(lambda: worker.queued_rows)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.close)  # finishes what it holds

    app = FastAPI(title="adainfer", lifespan=lifespan,
                  description=f"Early-exit classification ({card.task}: {', '.join(card.answer_set or ['open'])}) "
                              f"and lossless greedy completions on {model_id}.")
    app.state.worker, app.state.metrics = worker, metrics
    install_error_handlers(app, metrics)
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes,
                       refuse=lambda message: error_response(metrics, ServeError(413, "body_too_large", message)))
    app.add_middleware(RequestMetrics, metrics=metrics)

    @app.post("/v1/classify", response_model=ClassifyResponse, responses=ERRORS)
    async def classify(request: ClassifyRequest) -> ClassifyResponse:
        """Label raw inputs with the fitted classifier; each answer says where it exited and what it saved."""
        try:
            answers = await worker.batch(request.texts)
        except ValueError as error:
            raise ServeError(400, "invalid_input", str(error)) from None
        for answer in answers:
            metrics.exit_layer.observe(answer.exit_layer)
            metrics.layers_saved.observe(answer.layers_saved)
        return ClassifyResponse(model=model_id, mode=classifier.mode, answers=[
            ClassifyAnswer(label=answer.label, exit_layer=answer.exit_layer, num_layers=answer.num_layers,
                           layers_saved=answer.layers_saved, accepted=answer.accepted,
                           honest_flops_ratio=answer.honest_flops_ratio) for answer in answers])

    @app.post("/v1/completions", response_model=Completion, responses=ERRORS)
    async def completions(request: CompletionRequest) -> Any:
        """OpenAI-style completions, greedy and lossless: the text equals the model's greedy output."""
        if request.model not in (None, model_id):
            raise ServeError(404, "model_not_found", f"model {request.model!r} is not served here; this server "
                                                     f"serves {model_id!r} (GET /v1/models)")
        job = GenerationJob(model, request.prompts, request.max_tokens, request.stops,
                            count_token=metrics.generated_tokens.inc)
        request_id = completion_id()
        if not request.stream:
            ticket = worker.submit(job)
            try:
                return completion_body(request_id, model_id, await ticket.future)
            except ValueError as error:
                raise ServeError(400, "invalid_input", str(error)) from None
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[CompletionEvent] = asyncio.Queue()
        job.emit = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
        ticket = worker.submit(job)
        try:  # the first piece, or the request's error while a plain JSON answer can still be sent
            first = await next_event(events, ticket.future)
        except ValueError as error:
            raise ServeError(400, "invalid_input", str(error)) from None

        def on_close(completed: bool) -> None:
            ticket.cancel()  # a generation still running stops at its next token, freeing the worker
            ticket.future.add_done_callback(_retrieve)
            if not completed:
                metrics.errors.labels("client_disconnected").inc()

        return EventStream(sse_chunks(first, events, ticket.future, len(request.prompts), request_id, model_id),
                           on_close)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        """The one model this server serves."""
        return ModelList(data=[ModelCard(id=model_id, created=created)])

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: answered by the event loop even while the worker runs a batch. `pid` names the
        process that answered: behind a proxy with several replicas (`serve --ray`), the replica."""
        return {"status": "ok", "model": model_id, "mode": classifier.mode, "queued_rows": worker.queued_rows,
                "pid": os.getpid()}

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus text format: requests, errors by kind, latency, batch sizes, exit layers, layers saved."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    return app


def _retrieve(future: asyncio.Future) -> None:
    """Read a finished future's outcome, so that a stream's abandoned generation (cancelled, its
    error unread) is not logged by asyncio as an exception never retrieved."""
    if not future.cancelled():
        future.exception()
