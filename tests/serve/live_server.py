"""Real servers for the serve tests: uvicorn on a free port, in a thread of the test process."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

from adainfer.serve.connections import ConnectionLimits, server_config


def free_socket() -> socket.socket:
    """A listening-ready socket on a port the OS picked, handed to uvicorn (no race for the port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def running(app, limits: ConnectionLimits = ConnectionLimits()) -> Iterator[str]:
    """Serve `app` with uvicorn as `adainfer serve` configures it (`limits`), on a thread of this
    process; yields its base URL, stops it after."""
    sock = free_socket()
    server = uvicorn.Server(server_config(app, "127.0.0.1", 0, limits=limits, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
