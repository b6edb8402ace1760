"""A real postsrsd (Debian's: libsrs2's code) on loopback, for the SRS
interoperability tests of tests/python and tests/e2e."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

SECRET = "tops3cret"
DOMAIN = "fwd.example.test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_postsrsd(folder: Path, secret: str = SECRET, domain: str = DOMAIN) -> Iterator["Postsrsd"]:
    """postsrsd with `secret` for `domain`, its two tcp_table(5) ports on 127.0.0.1; stopped after."""
    secret_file = folder / "postsrsd.secret"
    secret_file.write_text(secret + "\n")
    forward, reverse = _free_port(), _free_port()
    proc = subprocess.Popen(["/usr/sbin/postsrsd", "-s", str(secret_file), "-d", domain, "-l", "127.0.0.1",
                             "-f", str(forward), "-r", str(reverse)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", reverse), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"postsrsd did not start: {proc.stderr.read().decode(errors='replace')}")
                time.sleep(0.05)
        yield Postsrsd(forward, reverse)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Postsrsd:
    def __init__(self, forward_port: int, reverse_port: int) -> None:
        self.forward_port, self.reverse_port = forward_port, reverse_port

    def forward(self, address: str) -> tuple[int, str]:
        """postsrsd's SRS form of a sender: (200, address) or (500, why)."""
        return _lookup(self.forward_port, address)

    def reverse(self, address: str) -> tuple[int, str]:
        """What postsrsd makes of an SRS address: (200, the original) or (500, why)."""
        return _lookup(self.reverse_port, address)


def _lookup(port: int, address: str) -> tuple[int, str]:
    # Postfix tcp_table(5): "get KEY\n" -> "200 VALUE\n" or "500 why\n".
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"get {address}\n".encode())
        line = s.makefile("rb").readline().decode().rstrip("\n")
    code, _, value = line.partition(" ")
    return int(code), value
