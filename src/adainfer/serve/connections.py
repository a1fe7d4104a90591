"""Connection limits: what one slow or greedy client may hold of a server, and the uvicorn that enforces them.

uvicorn's defaults let a client hold a connection without end: its fast parser (httptools) takes
headers of any size, and nothing times out a request whose headers never finish (a slowloris
sends one header line every few seconds). So `adainfer serve` runs uvicorn's h11 protocol as
`HeaderDeadline`, which refuses a request line + headers over `max_header_bytes` (400; h11's own
limit only counts a head that arrives in pieces) and closes a connection whose headers are not
complete `header_timeout_s` seconds after their first byte, with at most `max_connections` connections and requests at once (beyond it,
503), and with idle keep-alive connections closed after `keep_alive_s`. The body's own limits
(size, read time) are the app's (`limits.BodyLimit`), so they hold behind any proxy too.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from adainfer.engine.parameters import ParameterError


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection limits of the HTTP server (flags of `adainfer serve`)."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 16_384
    max_connections: int = 1024
    keep_alive_s: int = 5
    shutdown_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name, value, smallest, exclusive in (("header_timeout", self.header_timeout_s, 0, True),
                                                 ("shutdown_timeout", self.shutdown_timeout_s, 0, True),
                                                 ("keep_alive", self.keep_alive_s, 1, False),
                                                 ("max_header_bytes", self.max_header_bytes, 1024, False),
                                                 ("max_connections", self.max_connections, 1, False)):
            if value < smallest or (exclusive and value == smallest):
                raise ParameterError(f"must be {'>' if exclusive else '>='} {smallest}, got {value}", name)


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers take longer than
    `header_timeout` seconds from their first byte (from the connection's start for the first
    request). Once the headers are in, the body has its own deadline (`BodyLimit`)."""

    header_timeout: float = ConnectionLimits.header_timeout_s
    max_header_bytes: int = ConnectionLimits.max_header_bytes

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = self.loop.call_later(self.header_timeout, self._too_slow)
        self._head = b""  # the bytes of the request head read so far (at most max_header_bytes + one read)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # no complete request line + headers yet
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if (end + 4 if end >= 0 else len(self._head)) > self.max_header_bytes:
                self._cancel_header_timer()
                self.send_400_response(f"Request line and headers over {self.max_header_bytes} bytes.")
                return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_header_timer()
            self._head = b""

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def server_config(app: Any, host: str, port: int, *, limits: ConnectionLimits = ConnectionLimits(),
                  log_level: str = "info") -> uvicorn.Config:
    """The uvicorn configuration `adainfer serve` runs `app` with, enforcing `limits`."""
    protocol = type("HeaderDeadlineProtocol", (HeaderDeadline,), {"header_timeout": limits.header_timeout_s,
                                                                   "max_header_bytes": limits.max_header_bytes})
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol,
                          h11_max_incomplete_event_size=limits.max_header_bytes,
                          limit_concurrency=limits.max_connections, timeout_keep_alive=limits.keep_alive_s,
                          timeout_graceful_shutdown=max(1, round(limits.shutdown_timeout_s)))
