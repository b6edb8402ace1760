"""A real postsrsd (Debian's: libsrs2's code) on loopback, for the SRS
interoperability tests of tests/python and tests/e2e."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

from helpers.processes import free_port, running

SECRET = "tops3cret"
DOMAIN = "fwd.example.test"


@contextlib.contextmanager
def running_postsrsd(folder: Path, secret: str = SECRET, domain: str = DOMAIN) -> Iterator["Postsrsd"]:
    """postsrsd with `secret` for `domain`, its two tcp_table(5) ports on 127.0.0.1; stopped after."""
    secret_file = folder / "postsrsd.secret"
    secret_file.write_text(secret + "\n")
    forward, reverse = free_port(), free_port()

    def answers() -> bool:
        socket.create_connection(("127.0.0.1", reverse), timeout=1).close()
        return True

    with running(["/usr/sbin/postsrsd", "-s", str(secret_file), "-d", domain, "-l", "127.0.0.1",
                  "-f", str(forward), "-r", str(reverse)], answers, "postsrsd"):
        yield Postsrsd(forward, reverse)


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
