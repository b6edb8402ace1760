"""A real redis-server on 127.0.0.1 and a free port, for pc.store's tests (tests/python, tests/e2e)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

from helpers.processes import free_port, running


@contextlib.contextmanager
def running_redis(folder: Path) -> Iterator[str]:
    """redis-server with nothing saved to disk; yields its URL (redis://127.0.0.1:PORT/0); stopped after."""
    port = free_port()

    def answers() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    with running(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--dir", str(folder)], answers, "redis-server"):
        yield f"redis://127.0.0.1:{port}/0"
