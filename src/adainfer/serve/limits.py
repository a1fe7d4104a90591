"""A cap on request bodies, in size and in time, enforced before the app parses one.

A declared `Content-Length` over the cap is refused without reading the body; a body without
one (chunked) is read only up to the cap. Either way the app never holds more than `max_bytes`
of a body: FastAPI reads a whole body into memory before validating it, so without this cap one
client could make the server allocate whatever it sends. And the whole body must arrive within
`read_timeout` seconds of the request's headers (408 otherwise): a client that declares 100 bytes
and sends 4 does not hold a request open for ever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_BODY_TIMEOUT_S = 30.0


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, 408 for one not read within `read_timeout`
    seconds; `refuse(status, message)` builds those responses."""

    def __init__(self, app: ASGIApp, max_bytes: int, refuse: Callable[[int, str], JSONResponse],
                 read_timeout: float = DEFAULT_BODY_TIMEOUT_S) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.refuse = refuse
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(f"request body of {int(declared)} bytes", scope, receive, send)
            return
        body = bytearray()
        more_body = True
        deadline = time.monotonic() + self.read_timeout
        while more_body:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                await self._send(408, f"request body not received within {self.read_timeout:g} s (got "
                                      f"{len(body)} bytes)", scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: there is nobody to answer
            body += message.get("body", b"")
            more_body = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._refuse("request body", scope, receive, send)
                return
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _refuse(self, what: str, scope: Scope, receive: Receive, send: Send) -> None:
        await self._send(413, f"{what} is over this server's limit of {self.max_bytes} bytes", scope, receive, send)

    async def _send(self, status: int, message: str, scope: Scope, receive: Receive, send: Send) -> None:
        response = self.refuse(status, message)
        response.headers["Connection"] = "close"  # the unread rest of the body must not be taken for a request
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then the client's later messages
    (a disconnect, which a streamed response listens for)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
