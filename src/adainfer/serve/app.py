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
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

from adainfer.engine.model import EarlyExitModel
from adainfer.fit.card import ClassifierCard
from adainfer.policies.base import StopPolicy
from adainfer.serve.auth import ApiKeys
from adainfer.serve.batcher import ModelWorker
from adainfer.serve.classifying import BatchClassifier
from adainfer.serve.completions import (CompletionEvent, EventStream, GenerationJob, completion_body, completion_id,
                                        next_event, sse_chunks)
from adainfer.serve.errors import ServeError, error_response, install_error_handlers
from adainfer.serve.limits import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES, BodyLimit
from adainfer.serve.metrics import CONTENT_TYPE, RequestMetrics, ServeMetrics
from adainfer.serve.schemas import (ClassifyAnswer, ClassifyRequest, ClassifyResponse, Completion, CompletionRequest,
                                    ErrorResponse, ModelCard, ModelList)

ENDPOINTS = ("/v1/classify", "/v1/completions", "/v1/models", "/healthz", "/metrics")
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description} for status, description in {
        400: "An input the model cannot take (over its context).",
        401: "No API key, or one this server does not hold (`Authorization: Bearer <key>`).",
        408: "A body not received within the server's body timeout.",
        404: "A model this server does not serve.",
        413: "A body over the size limit.",
        422: "A body that does not fit the schema: wrong type, unknown field, blank input, refused option.",
        500: "The model failed on this request; the server goes on.",
        503: "The queue is full, or the server is shutting down (retry after `Retry-After` seconds), or the "
             "model worker has stopped.",
    }.items()}


@dataclass(frozen=True)
class ServeOptions:
    """How the server batches and what it accepts; `dense` answers /v1/classify without early exit.

    api_keys: the keys a request must carry (`auth`); empty: none needed.
    body_timeout_s: the most seconds a request body may take to arrive.
    show_pid: /healthz names the answering process (to tell replicas apart); off, it leaks nothing.
    docs: serve /docs and /redoc (their pages load scripts from a CDN); /openapi.json is always served.
    shutdown_timeout_s: how long the worker may take to finish what it holds when the server stops.
    """

    max_batch_size: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    dense: bool = False
    api_keys: tuple[str, ...] = ()
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    show_pid: bool = False
    docs: bool = False
    shutdown_timeout_s: float = 30.0


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
            await asyncio.to_thread(worker.close, options.shutdown_timeout_s)  # finishes what it holds

    app = FastAPI(title="adainfer", lifespan=lifespan, docs_url="/docs" if options.docs else None,
                  redoc_url="/redoc" if options.docs else None,
                  description=f"Early-exit classification ({card.task}: {', '.join(card.answer_set or ['open'])}) "
                              f"and lossless greedy completions on {model_id}.")
    app.state.worker, app.state.metrics = worker, metrics
    install_error_handlers(app, metrics)
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes, read_timeout=options.body_timeout_s,
                       refuse=lambda status, message: error_response(metrics, ServeError(
                           status, "body_too_large" if status == 413 else "body_timeout", message)))
    app.add_middleware(ApiKeys, keys=options.api_keys,  # outside the body limit: no body read without a key
                       refuse=lambda message: error_response(metrics, ServeError(401, "unauthorized", message)))
    app.add_middleware(RequestMetrics, metrics=metrics)
    model.check_prompt("warm")  # reads the vocabulary once, here, rather than in a request on the event loop

    def check_inputs(texts: list[str], what: str, prompt: Any = lambda text: text) -> None:
        """The model's cheap checks (`check_prompt`: Unicode, size) on each input, before it is queued."""
        for index, text in enumerate(texts):
            try:
                model.check_prompt(prompt(text))
            except ValueError as error:
                raise ServeError(400, "invalid_input", f"{what} {index}: {error}") from None

    @app.post("/v1/classify", response_model=ClassifyResponse, responses=ERRORS)
    async def classify(request: ClassifyRequest) -> ClassifyResponse:
        """Label raw inputs with the fitted classifier; each answer says where it exited and what it saved."""
        check_inputs(request.texts, "input", card.prompt)
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
        check_inputs(request.prompts, "prompt")
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

    @app.get("/healthz", responses={503: {"description": "The model worker has stopped."}})
    async def healthz() -> Any:
        """Liveness: answered by the event loop even while the worker runs a batch; 503 once the
        model worker has stopped. With `show_pid`, `pid` names the process that answered: behind a
        proxy with several replicas (`serve --ray`), the replica. Needs no API key."""
        body: dict[str, Any] = {"status": "ok" if worker.alive else "worker_stopped", "model": model_id,
                                "mode": classifier.mode, "queued_rows": worker.queued_rows}
        if options.show_pid:
            body["pid"] = os.getpid()
        return body if worker.alive else JSONResponse(body, status_code=503)

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
