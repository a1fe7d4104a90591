"""/v1/completions: lossless generation run by the worker, returned whole or streamed as server-sent events.

Generation is `adainfer.inference.generate.generate` in lossless mode with its default draft
(no policy): every token is the full model's greedy choice, so a completion equals the model's
greedy output. A classifier's policy is not used here: it was fitted on the first answer token of
a closed answer set (its features read the candidates' logits only), which says nothing about
open-ended text.

A stream must not show a stop string, nor text after it, although `generate` streams each token
as soon as it is final: `StopHoldback` keeps back any tail that could still become a stop string.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from adainfer.engine.model import EarlyExitModel
from adainfer.inference.generate import generate
from adainfer.inference.generation_costs import GenerationResult
from adainfer.inference.stream import GeneratedToken
from adainfer.serve.errors import error_body
from adainfer.serve.schemas import Completion, CompletionChoice, CompletionUsage

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}  # generate's reasons -> OpenAI's


class GenerationCancelled(Exception):
    """Raised inside `generate` (from its token callback) to stop a generation nobody reads any more."""


@dataclass
class CompletionEvent:
    """A piece of text of choice `index`; `finish_reason` is set on the choice's last piece only."""

    index: int
    text: str
    finish_reason: str | None = None


class StopHoldback:
    """Passes streamed text on, except a stop string, what follows it, and a tail that may start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.text = ""  # everything fed
        self.sent = ""  # the part of `text` released

    def feed(self, piece: str) -> str:
        """The text that is now safe to send (possibly empty)."""
        self.text += piece
        found = [self.text.find(stop) for stop in self.stops if stop in self.text]
        safe = self.text[:min(found)] if found else self.text[:len(self.text) - self._open_tail()]
        released = safe[len(self.sent):] if len(safe) > len(self.sent) else ""
        self.sent += released
        return released

    def _open_tail(self) -> int:
        """Length of the longest end of `text` that is a proper start of some stop string."""
        return max((size for stop in self.stops for size in range(1, len(stop))
                    if self.text.endswith(stop[:size])), default=0)


def check_prompts(model: EarlyExitModel, prompts: Sequence[str], max_tokens: int) -> None:
    """Refuse every prompt the model cannot take, or cannot follow with `max_tokens`, before any
    token is generated (so that a stream never starts for a request that must fail)."""
    for index, prompt in enumerate(prompts):
        try:
            length = model.encode(prompt).shape[1]
        except ValueError as error:
            raise ValueError(f"prompt {index}: {error}") from None
        room = model.max_context - length
        if max_tokens > room:
            raise ValueError(f"prompt {index} has {length} tokens and the model's context is {model.max_context}: "
                             f"max_tokens={max_tokens} does not fit; use at most {max(room, 0)}")


@dataclass
class GenerationJob:
    """The worker's work for one completion request: every prompt in turn, greedy and lossless.

    emit: called (on the worker thread) with each piece of text as soon as it is final and safe to
        show, and with each choice's last piece; None when the response is not streamed.
    count_token: called once per generated token (for metrics).
    """

    model: EarlyExitModel
    prompts: Sequence[str]
    max_tokens: int
    stops: Sequence[str]
    emit: Callable[[CompletionEvent], None] | None = None
    count_token: Callable[[], None] | None = None
    draft_weights: str = "model"
    prompt_lookup: int = 0

    def __call__(self, cancelled: threading.Event) -> list[GenerationResult]:
        check_prompts(self.model, self.prompts, self.max_tokens)
        return [self._one(index, prompt, cancelled) for index, prompt in enumerate(self.prompts)]

    def _one(self, index: int, prompt: str, cancelled: threading.Event) -> GenerationResult:
        holdback = StopHoldback(self.stops)

        def on_token(token: GeneratedToken) -> None:
            if cancelled.is_set():
                raise GenerationCancelled
            if self.count_token is not None:
                self.count_token()
            if self.emit is not None and (piece := holdback.feed(token.text)):
                self.emit(CompletionEvent(index, piece))

        result = generate(self.model, prompt, self.max_tokens, mode="lossless", stop=list(self.stops),
                          draft_weights=self.draft_weights, prompt_lookup=self.prompt_lookup, on_token=on_token)
        if self.emit is not None:
            rest = result.text[len(holdback.sent):] if result.text.startswith(holdback.sent) else ""
            self.emit(CompletionEvent(index, rest, FINISH_REASONS[result.finish_reason]))
        return result


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def completion_body(request_id: str, model_id: str, results: Sequence[GenerationResult]) -> Completion:
    """The whole response of a request that was not streamed."""
    prompt_tokens = sum(result.prompt_tokens for result in results)
    completion_tokens = sum(len(result.token_ids) for result in results)
    return Completion(
        id=request_id, created=int(time.time()), model=model_id,
        choices=[CompletionChoice(index=index, text=result.text, finish_reason=FINISH_REASONS[result.finish_reason])
                 for index, result in enumerate(results)],
        usage=CompletionUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                              total_tokens=prompt_tokens + completion_tokens))


def _sse(data: str) -> bytes:
    return f"data: {data}\n\n".encode()


async def next_event(events: asyncio.Queue[CompletionEvent], work: asyncio.Future[Any]) -> CompletionEvent:
    """The next streamed event; raises the generation's error if it failed before sending one."""
    getter = asyncio.ensure_future(events.get())
    try:
        await asyncio.wait({getter, work}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        getter.cancel()
        raise
    if getter.done() or (work.exception() is None):  # events are queued before the work resolves
        return await getter
    getter.cancel()
    raise work.exception()


async def sse_chunks(first: CompletionEvent, events: asyncio.Queue[CompletionEvent], work: asyncio.Future[Any],
                     choices: int, request_id: str, model_id: str) -> AsyncIterator[bytes]:
    """Server-sent events as OpenAI streams completions: one chunk per piece, then `data: [DONE]`."""
    event, finished = first, 0
    while True:
        chunk = Completion(id=request_id, created=int(time.time()), model=model_id,
                           choices=[CompletionChoice(index=event.index, text=event.text,
                                                     finish_reason=event.finish_reason)])
        yield _sse(chunk.model_dump_json())
        finished += event.finish_reason is not None
        if finished == choices:
            break
        try:
            event = await next_event(events, work)
        except Exception as error:  # headers are sent: the failure can only be told in the stream
            yield _sse(json.dumps(error_body("generation_failed", str(error) or type(error).__name__)))
            return
    yield _sse("[DONE]")


class EventStream(StreamingResponse):
    """A server-sent event stream that calls `on_close(completed)` however it ends: every chunk
    sent (completed), or the client gone. Whichever way the ASGI server reports a disconnect (by
    cancelling the stream, or by a failed send), this `finally` runs at once."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[bool], None]) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache"})
        self.on_close = on_close
        self.completed = False

    async def stream_response(self, send: Send) -> None:
        await super().stream_response(send)
        self.completed = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close(self.completed)
