"""Every refusal as one JSON line: `{"error": {"message": ..., "type": ...}}`, counted by type.

The shape is OpenAI's, so the `openai` client raises with the server's message; the `type` is the
label of `adainfer_errors_total` in /metrics. FastAPI's own validation errors (a list of dicts per
field) are flattened into one message naming each field.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from adainfer.serve.batcher import QueueFull, WorkerStopped
from adainfer.serve.metrics import ServeMetrics

RETRY_AFTER_SECONDS = 1


class ServeError(Exception):
    """A request refused with `status` and an error `kind` (the JSON body's `type`)."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = headers


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"message": " ".join(message.split()), "type": kind}}


def error_response(metrics: ServeMetrics, error: ServeError) -> JSONResponse:
    metrics.errors.labels(error.kind).inc()
    return JSONResponse(error_body(error.kind, error.message), status_code=error.status, headers=error.headers)


def validation_message(error: RequestValidationError) -> str:
    """FastAPI's per-field errors as one line: `inputs.1: Input should be a valid string; ...`."""
    parts = []
    for item in error.errors():
        if item.get("type") == "json_invalid":
            parts.append(f"body is not valid JSON ({item.get('ctx', {}).get('error', 'decode error')} at character "
                         f"{item['loc'][-1]})")
            continue
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI, metrics: ServeMetrics) -> None:
    """Route every expected failure to `error_response`."""

    async def serve_error(_: Request, error: ServeError) -> JSONResponse:
        return error_response(metrics, error)

    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(metrics, ServeError(422, "invalid_request", validation_message(error)))

    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        kind = HTTPStatus(error.status_code).phrase.lower().replace(" ", "_")
        return error_response(metrics, ServeError(error.status_code, kind, str(error.detail), error.headers))

    async def queue_full(_: Request, error: QueueFull) -> JSONResponse:
        return error_response(metrics, ServeError(503, "queue_full", f"{error}; retry later",
                                                  {"Retry-After": str(RETRY_AFTER_SECONDS)}))

    async def worker_stopped(_: Request, error: WorkerStopped) -> JSONResponse:
        return error_response(metrics, ServeError(503, "worker_stopped", str(error)))

    async def internal(_: Request, error: Exception) -> JSONResponse:
        """Anything unexpected (the model raising on one request): one JSON line, no traceback."""
        return error_response(metrics, ServeError(500, "internal_error",
                                                  f"the model failed on this request ({type(error).__name__}: "
                                                  f"{error}); the server goes on"))

    app.add_exception_handler(ServeError, serve_error)
    app.add_exception_handler(WorkerStopped, worker_stopped)
    app.add_exception_handler(Exception, internal)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(QueueFull, queue_full)
