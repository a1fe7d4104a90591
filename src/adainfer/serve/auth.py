"""API keys: every route but /healthz answers only a request that carries one of the server's keys.

A client sends `Authorization: Bearer <key>`, as the `openai` client does with its `api_key`.
Keys are compared with `hmac.compare_digest` against every key the server holds (so neither
which key matched nor how much of one did shows in the time taken). A refusal is one JSON line
(401), sent before the body is read: a client without a key cannot make the server read,
parse or queue anything.

Keys come from `--api-key` (repeatable) and from `ADAINFER_API_KEY`, which may hold several
separated by commas (a key is any run of printable characters without a comma or whitespace).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Callable, Iterable, Sequence

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

KEY_ENVIRONMENT = "ADAINFER_API_KEY"
OPEN_PATHS = frozenset({"/healthz"})  # a load balancer's probe carries no key


def api_keys(given: Iterable[str], environment: str | None = None) -> tuple[str, ...]:
    """The server's keys: those given (`--api-key`), then those in `ADAINFER_API_KEY` (comma-separated).
    Raises ValueError for an empty key or one holding whitespace (a header could not carry it)."""
    from_environment = os.environ.get(KEY_ENVIRONMENT, "") if environment is None else environment
    keys = [*given, *(part.strip() for part in from_environment.split(",") if part.strip())]
    for key in keys:
        if not key or any(character.isspace() or not character.isprintable() for character in key):
            raise ValueError("an API key must be non-empty printable characters without whitespace")
    return tuple(dict.fromkeys(keys))


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, `localhost`)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def key_matches(header: bytes | None, keys: Sequence[str]) -> bool:
    """Whether an Authorization header is `Bearer <one of keys>`, compared in constant time per key."""
    if header is None:
        return False
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    token = token.strip()
    matched = False
    for key in keys:  # every key compared, whichever matches
        matched |= hmac.compare_digest(token, key.encode("utf-8"))
    return matched


class ApiKeys:
    """ASGI middleware: 401 (one JSON line, from `refuse(message)`) for a request without a valid key."""

    def __init__(self, app: ASGIApp, keys: Sequence[str], refuse: Callable[[str], JSONResponse]) -> None:
        self.app = app
        self.keys = tuple(keys)
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization")
        if key_matches(header, self.keys):
            await self.app(scope, receive, send)
            return
        message = ("this server needs an API key: send `Authorization: Bearer <key>`" if header is None
                   else "the API key is not valid for this server")
        response = self.refuse(message)
        response.headers["WWW-Authenticate"] = "Bearer"
        response.headers["Connection"] = "close"  # the unread body must not be taken for a request
        await response(scope, receive, send)
