"""A server process for the tests: started, waited for until it answers, stopped after."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(command: list[str], ready: Callable[[], bool], what: str, timeout: float = 10) -> Iterator[None]:
    """Runs `command` until the block ends (SIGTERM, then SIGKILL after 10 s); the block starts
    once `ready()` is true; RuntimeError with the process's output if it dies or never is."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not _ready(ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{what} did not start: {proc.stdout.read().decode(errors='replace')}")
            time.sleep(0.05)
        yield
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it is still there 10 s later."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _ready(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except OSError:
        return False
