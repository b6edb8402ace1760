"""A raw SMTP client for tests that need exact bytes on the wire: pipelined
writes, bare line endings, half-sent messages. smtplib hides all of that."""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

_STATUS = re.compile(r"^([245])\.\d{1,3}\.\d{1,3}$")


@dataclass
class Reply:
    code: int
    lines: list[str]  # text after "NNN-" / "NNN "
    raw: bytes

    @property
    def status(self) -> str:
        """The enhanced status code (RFC 3463) of the first line, or ""."""
        first = self.lines[0].split(" ", 1)[0] if self.lines else ""
        return first if _STATUS.match(first) else ""

    @property
    def text(self) -> str:
        """The first line's text without the enhanced status code."""
        first = self.lines[0] if self.lines else ""
        return first.split(" ", 1)[1] if self.status and " " in first else ("" if self.status else first)

    def __str__(self) -> str:
        return self.raw.decode("utf-8", "replace").strip()


class ConnectionClosed(AssertionError):
    pass


class RawClient:
    def __init__(self, host: str, port: int, timeout: float = 10.0, source: str | None = None):
        # `source`: another loopback address to connect from (127.0.0.2: a client outside mynetworks).
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def cmd(self, line: str) -> None:
        self.send(line.encode("utf-8") + b"\r\n")

    def _fill(self, timeout: float | None) -> bool:
        self.sock.settimeout(timeout if timeout is not None else self.timeout)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def _line(self, timeout: float | None) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[: i + 2])
                del self.buf[: i + 2]
                return line
            if not self._fill(timeout):
                raise ConnectionClosed(f"connection closed by the server (pending: {bytes(self.buf)!r})")

    def reply(self, timeout: float | None = None) -> Reply:
        raw = b""
        lines = []
        while True:
            line = self._line(timeout)
            raw += line
            m = re.match(rb"^(\d{3})([ -])(.*)\r\n$", line, re.S)
            assert m, f"malformed reply line {line!r}"
            lines.append(m.group(3).decode("utf-8", "replace"))
            if m.group(2) == b" ":
                return Reply(int(m.group(1)), lines, raw)

    def expect(self, code: int, status: str | None = None, text: str | None = None, timeout: float | None = None) -> Reply:
        r = self.reply(timeout)
        assert r.code == code, f"want {code} {status or ''}, got {r}"
        if status is not None:
            assert r.status == status, f"want {code} {status}, got {r}"
        if text is not None:
            assert text in "\n".join(r.lines), f"want {text!r} in {r}"
        return r

    def exchange(self, line: str, code: int, status: str | None = None, text: str | None = None) -> Reply:
        self.cmd(line)
        return self.expect(code, status, text)

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes (EOF or reset) within `timeout` with
        nothing more to say; AssertionError if it sends more bytes instead."""
        if self.buf:
            raise AssertionError(f"unexpected bytes before close: {bytes(self.buf)!r}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self._fill(max(0.01, deadline - time.monotonic())):
                    return True
            except socket.timeout:
                return False
            raise AssertionError(f"unexpected bytes before close: {bytes(self.buf)!r}")
        return False

    def transaction(self, mail_from: str, rcpts: list[str], body: bytes, end: bytes = b"\r\n.\r\n") -> Reply:
        """MAIL, RCPT..., DATA, the body and its end; returns the reply after the dot.
        `body` must be dot-stuffed already; it should not end in CRLF (`end` adds it)."""
        self.exchange(f"MAIL FROM:<{mail_from}>", 250)
        for r in rcpts:
            self.exchange(f"RCPT TO:<{r}>", 250)
        self.exchange("DATA", 354)
        self.send(body + end)
        return self.reply()
