"""The HTTP routes: classification, completions, models, health and metrics, as one FastAPI router.

Routes hold no state of their own: each asks for the app's `Server` (`server`, a FastAPI
dependency reading `app.state.server`), so the same router serves every app `create_app` builds,
several in one process included.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from adainfer.engine.model import EarlyExitModel
from adainfer.fit.card import ClassifierCard
from adainfer.serve.batcher import ModelWorker
from adainfer.serve.classifying import BatchClassifier
from adainfer.serve.completions import (CompletionEvent, EventStream, GenerationJob, completion_body, completion_id,
                                        next_event, sse_chunks)
from adainfer.serve.errors import ServeError
from adainfer.serve.metrics import CONTENT_TYPE, ServeMetrics
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


@dataclass
class Server:
    """What the routes of one app share: the model, its classifier, the one worker thread and the metrics.

    `show_pid`: /healthz names the answering process (to tell replicas apart); off, it leaks nothing.
    `draft_weights`, `prompt_lookup`: how completions draft (`generate`'s options of those names).
    """

    model: EarlyExitModel
    card: ClassifierCard
    classifier: BatchClassifier
    worker: ModelWorker
    metrics: ServeMetrics
    model_id: str
    created: int
    show_pid: bool = False
    draft_weights: str = "model"
    prompt_lookup: int = 0

    def check_inputs(self, texts: Sequence[str], what: str, prompt: Callable[[str], str] = lambda text: text) -> None:
        """The model's cheap checks (`check_prompt`: Unicode, size) on each input, before it is queued."""
        for index, text in enumerate(texts):
            try:
                self.model.check_prompt(prompt(text))
            except ValueError as error:
                raise ServeError(400, "invalid_input", f"{what} {index}: {error}") from None


def server(request: Request) -> Server:
    """The app's `Server` (a FastAPI dependency)."""
    return request.app.state.server


ServerDep = Annotated[Server, Depends(server)]
router = APIRouter()


@router.post("/v1/classify", response_model=ClassifyResponse, responses=ERRORS)
async def classify(request: ClassifyRequest, state: ServerDep) -> ClassifyResponse:
    """Label raw inputs with the fitted classifier; each answer says where it exited and what it saved."""
    state.check_inputs(request.texts, "input", state.card.prompt)
    try:
        answers = await state.worker.batch(request.texts)
    except ValueError as error:
        raise ServeError(400, "invalid_input", str(error)) from None
    for answer in answers:
        state.metrics.exit_layer.observe(answer.exit_layer)
        state.metrics.layers_saved.observe(answer.layers_saved)
    return ClassifyResponse(model=state.model_id, mode=state.classifier.mode, answers=[
        ClassifyAnswer(label=answer.label, exit_layer=answer.exit_layer, num_layers=answer.num_layers,
                       layers_saved=answer.layers_saved, accepted=answer.accepted,
                       honest_flops_ratio=answer.honest_flops_ratio) for answer in answers])


@router.post("/v1/completions", response_model=Completion, responses=ERRORS)
async def completions(request: CompletionRequest, state: ServerDep) -> Any:
    """OpenAI-style completions, greedy and lossless: the text equals the model's greedy output."""
    if request.model not in (None, state.model_id):
        raise ServeError(404, "model_not_found", f"model {request.model!r} is not served here; this server "
                                                 f"serves {state.model_id!r} (GET /v1/models)")
    state.check_inputs(request.prompts, "prompt")
    job = GenerationJob(state.model, request.prompts, request.max_tokens, request.stops,
                        count_token=state.metrics.generated_tokens.inc, draft_weights=state.draft_weights,
                        prompt_lookup=state.prompt_lookup)
    request_id = completion_id()
    if not request.stream:
        ticket = state.worker.submit(job)
        try:
            return completion_body(request_id, state.model_id, await ticket.future)
        except ValueError as error:
            raise ServeError(400, "invalid_input", str(error)) from None
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[CompletionEvent] = asyncio.Queue()
    job.emit = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
    ticket = state.worker.submit(job)
    try:  # the first piece, or the request's error while a plain JSON answer can still be sent
        first = await next_event(events, ticket.future)
    except ValueError as error:
        raise ServeError(400, "invalid_input", str(error)) from None

    def on_close(completed: bool) -> None:
        ticket.cancel()  # a generation still running stops at its next token, freeing the worker
        ticket.future.add_done_callback(_retrieve)
        if not completed:
            state.metrics.errors.labels("client_disconnected").inc()

    return EventStream(sse_chunks(first, events, ticket.future, len(request.prompts), request_id, state.model_id),
                       on_close)


@router.get("/v1/models", response_model=ModelList)
async def models(state: ServerDep) -> ModelList:
    """The one model this server serves."""
    return ModelList(data=[ModelCard(id=state.model_id, created=state.created)])


@router.get("/healthz", responses={503: {"description": "The model worker has stopped."}})
async def healthz(state: ServerDep) -> Any:
    """Liveness: answered by the event loop even while the worker runs a batch; 503 once the
    model worker has stopped. With `show_pid`, `pid` names the process that answered: behind a
    proxy with several replicas (`serve --ray`), the replica. Needs no API key."""
    worker = state.worker
    body: dict[str, Any] = {"status": "ok" if worker.alive else "worker_stopped", "model": state.model_id,
                            "mode": state.classifier.mode, "queued_rows": worker.queued_rows}
    if state.show_pid:
        body["pid"] = os.getpid()
    return body if worker.alive else JSONResponse(body, status_code=503)


@router.get("/metrics")
async def prometheus(state: ServerDep) -> Response:
    """Prometheus text format: requests, errors by kind, latency, batch sizes, exit layers, layers saved."""
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)


def _retrieve(future: asyncio.Future) -> None:
    """Read a finished future's outcome, so that a stream's abandoned generation (cancelled, its
    error unread) is not logged by asyncio as an exception never retrieved."""
    if not future.cancelled():
        future.exception()
