"""A scriptable, fault-injecting SMTP server: the upstream for failure tests.

Driven by a dict of stage -> behaviour, in the spirit of chasquid's fake
upstream. Stages:

    "CONNECT"          only "refuse": nothing listens on the port at all
    "GREETING"         the 220 banner
    "EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT"
    "RCPT <address>"   one recipient only (looked up before plain "RCPT")
    "MAIL <address>"   one sender only (looked up before plain "MAIL")
    "BODY"             as soon as the first message bytes after 354 arrive;
                       also "slow:N": read this message at N bytes per second
    "RCVBUF"           not a stage: SO_RCVBUF for every connection (with "slow:N")
    "DOT"              the reply to the final "." of a message
    "DOT <address>"    ... of a message whose first recipient is <address>

A behaviour is either reply text ("451 4.3.0 busy"; multi-line replies use
"\\r\\n" between lines) or one of these actions:

    "close"    close the connection without replying
    "stall"    never answer (the connection stays open until stop())
    "garbage"  answer "xyz"
    "421"      answer "421 4.3.2 fake.upstream closing" and close
    "TEXT|close"  answer TEXT, then close (e.g. a 250 followed by an idle 421)
    b"BYTES"   send exactly these bytes (no CRLF added): 8-bit text, bare endings
    {"send": TEXT, "then": TEXT2, "delay": SECONDS}
               answer TEXT, then SECONDS later send TEXT2 unasked (str or
               bytes each; a str gets CRLF): a reply in one segment and
               unsolicited bytes in another. TEXT2 "TEXT3|close" sends TEXT3
               and closes the connection, "close" closes it saying nothing
               (an idle timeout's 421, or a silent one, while the proxy
               waits for its client)
    {"drip": [LINE, ...], "every": SECONDS}
               answer with these lines (each a str, CRLF added), SECONDS
               apart: a reply that comes a line at a time
    {"wait": SECONDS, "send": TEXT}
               answer TEXT (any behaviour above) SECONDS late: a content
               filter that takes its time over the final dot ("then" may
               follow too)

Like Postfix, it answers a MAIL sent while a transaction is open (after a
MAIL it accepted, until RSET or the message's final reply; a refused DATA
leaves it open) with "503 5.5.1 Error: nested MAIL command".

Hostile replies are plain text too: "250 ok\r\n354 go" answers and adds an
unsolicited 354 in the same segment; "354 go" to MAIL is a reply out of place.

A list of behaviours is consumed one per occurrence of the stage (across all
connections); when it runs out the default reply is used. So {"MAIL": ["stall"]}
stalls only the first MAIL, and the next connection works normally.
`arrange(stage, behaviour)` adds to the script while the server runs (a test
that picks each transaction's fault as it goes, keyed by its addresses).

Everything received is recorded byte for byte (`received`, per connection in
`connections`); `commands` lists every command line, `messages` every
message the server accepted with 250 (envelope and exact, still dot-stuffed
and un-stuffed, bytes).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

HOSTNAME = "fake.upstream"

DEFAULTS = {
    "GREETING": f"220 {HOSTNAME} ESMTP fake",
    "EHLO": f"250-{HOSTNAME}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 104857600",
    "HELO": f"250 {HOSTNAME}",
    "MAIL": "250 2.1.0 Sender ok (fake)",
    "RCPT": "250 2.1.5 Recipient ok (fake)",
    "DATA": "354 Go ahead (fake)",
    "DOT": "250 2.0.0 Ok: queued as FAKE{n}",
    "RSET": "250 2.0.0 Reset (fake)",
    "NOOP": "250 2.0.0 Ok (fake)",
    "QUIT": "221 2.0.0 Bye (fake)",
    "BODY": None,  # no reply of its own: just receive the message
}
ACTIONS = {"close", "stall", "garbage", "421"}


@dataclass
class Message:
    mail_from: str
    rcpt_tos: list[str]
    wire: bytes  # as sent after 354, dot-stuffed, without the final ".\r\n"
    content: bytes  # un-stuffed
    mail_line: str


@dataclass
class Connection:
    received: bytearray = field(default_factory=bytearray)
    commands: list[str] = field(default_factory=list)
    closed_by_peer: bool = False
    pipelined: int = 0  # commands read with the next one already received behind them (sent before our reply)


class FakeUpstream:
    def __init__(self, script: dict | None = None, host: str = "127.0.0.1"):
        self.script = {k: (list(v) if isinstance(v, list) else v) for k, v in (script or {}).items()}
        self.host = host
        self.connections: list[Connection] = []
        self.messages: list[Message] = []
        self.stages_hit: list[str] = []  # every scripted (non-default) behaviour used, in order
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._queued = 0
        self.refusing = self.script.get("CONNECT") == "refuse"
        if self.refusing:
            # A port that was free a moment ago and has no listener: connect() gets ECONNREFUSED.
            s = socket.socket()
            s.bind((host, 0))
            self.port = s.getsockname()[1]
            s.close()
            self._listener = None
        else:
            self._listener = socket.socket()
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.script.get("RCVBUF"):
                # A fixed, small receive window (accepted sockets inherit it): a slow reader really is slow.
                self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(self.script["RCVBUF"]))
            self._listener.bind((host, 0))
            self._listener.listen(64)
            self.port = self._listener.getsockname()[1]

    # -- public -----------------------------------------------------------

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    @property
    def received(self) -> bytes:
        with self._lock:
            return b"".join(bytes(c.received) for c in self.connections)

    @property
    def commands(self) -> list[str]:
        with self._lock:
            return [cmd for c in self.connections for cmd in c.commands]

    def start(self) -> "FakeUpstream":
        if self._listener is not None:
            t = threading.Thread(target=self._accept_loop, name="fake-upstream-accept", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=5)

    def arrange(self, stage: str, behaviour) -> None:
        """Scripts `stage` from now on (as the constructor's `script` does)."""
        with self._lock:
            self.script[stage] = list(behaviour) if isinstance(behaviour, list) else behaviour

    def wait_for(self, predicate, timeout: float = 5.0) -> bool:
        """Polls `predicate()` (under no lock) until true or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return bool(predicate())

    # -- server -----------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._socks.append(sock)
            t = threading.Thread(target=self._serve, args=(sock,), name="fake-upstream-conn", daemon=True)
            t.start()
            self._threads.append(t)

    def _behaviour(self, *stages: str):
        """The scripted behaviour for the first stage that has one, else the default."""
        with self._lock:
            for stage in stages:
                if stage not in self.script:
                    continue
                b = self.script[stage]
                if isinstance(b, list):
                    if not b:
                        continue
                    b = b.pop(0)
                if b is None:
                    continue
                self.stages_hit.append(f"{stage}:{b}")
                return b
        b = DEFAULTS.get(stages[-1], "500 5.5.1 Unknown command (fake)")
        if b and "{n}" in b:
            with self._lock:
                self._queued += 1
                b = b.replace("{n}", str(self._queued))
        return b

    def _serve(self, sock: socket.socket) -> None:
        conn = Connection()
        with self._lock:
            self.connections.append(conn)
        buf = bytearray()

        def send(text: str | bytes) -> None:
            sock.sendall(text if isinstance(text, bytes) else text.encode("utf-8") + b"\r\n")

        def send_later(text: str | bytes, delay: float) -> None:
            def later():
                if self._stop.wait(delay):
                    return
                try:
                    closing = isinstance(text, str) and (text == "close" or text.endswith("|close"))
                    if text != "close":
                        send(text[: -len("|close")] if closing else text)
                    if closing:
                        sock.shutdown(socket.SHUT_RDWR)  # the serving thread's recv() ends: it closes
                except OSError:
                    pass

            t = threading.Thread(target=later, name="fake-upstream-later", daemon=True)
            t.start()
            self._threads.append(t)

        def act(behaviour) -> bool:
            """Carries out a behaviour; False when the connection is over."""
            if isinstance(behaviour, dict) and "drip" in behaviour:
                for i, line in enumerate(behaviour["drip"]):
                    if i and self._stop.wait(float(behaviour["every"])):
                        return False
                    send(line)
                return True
            if isinstance(behaviour, dict):
                if behaviour.get("wait") and self._stop.wait(float(behaviour["wait"])):
                    return False
                if not act(behaviour["send"]):
                    return False
                if "then" in behaviour:
                    send_later(behaviour["then"], float(behaviour.get("delay", 0.2)))
                return True
            if isinstance(behaviour, bytes):
                send(behaviour)
                return True
            if behaviour == "close":
                return False
            if behaviour == "stall":
                self._stop.wait()
                return False
            if behaviour == "garbage":
                send("xyz")
                return True
            if behaviour == "421":
                send(f"421 4.3.2 {HOSTNAME} closing")
                return False
            if isinstance(behaviour, str) and behaviour.endswith("|close"):
                send(behaviour[: -len("|close")])
                return False
            if behaviour is not None:
                send(behaviour)
            return True

        rate = [0]  # bytes per second while reading a "slow:N" message body; 0: as fast as it comes

        def read_more() -> bool:
            try:
                if rate[0]:
                    chunk = sock.recv(16384)
                    time.sleep(len(chunk) / rate[0])
                else:
                    chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                conn.closed_by_peer = True
                return False
            with self._lock:
                conn.received += chunk
            buf.extend(chunk)
            return True

        def read_line() -> bytes | None:
            while True:
                i = buf.find(b"\n")
                if i >= 0:
                    line = bytes(buf[: i + 1])
                    del buf[: i + 1]
                    return line
                if not read_more():
                    return None

        mail_from, rcpts, mail_line = None, [], ""
        try:
            if not act(self._behaviour("GREETING")):
                return
            while not self._stop.is_set():
                raw = read_line()
                if raw is None:
                    return
                line = raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
                with self._lock:
                    conn.commands.append(line)
                    conn.pipelined += b"\n" in buf
                verb = line.split(" ", 1)[0].upper()
                if verb == "MAIL" and mail_from is not None:
                    # As Postfix: a transaction is open (a refused DATA leaves it so) until RSET or a message.
                    if not act("503 5.5.1 Error: nested MAIL command"):
                        return
                elif verb == "MAIL":
                    b = self._behaviour(f"MAIL {_angle(line)}", "MAIL")
                    if _starts(b, "250"):
                        mail_from, rcpts, mail_line = _angle(line), [], line
                    if not act(b):
                        return
                elif verb == "RCPT":
                    addr = _angle(line)
                    b = self._behaviour(f"RCPT {addr}", "RCPT")
                    if _starts(b, "250"):
                        rcpts.append(addr)
                    if not act(b):
                        return
                elif verb == "DATA":
                    b = self._behaviour("DATA")
                    if not act(b):
                        return
                    if not _starts(b, "354"):
                        continue  # refused: MAIL and RCPT stay in force (RFC 5321 §4.1.1.4)
                    # The message: up to CRLF.CRLF; the BODY stage fires on its first bytes.
                    while not buf:
                        if not read_more():
                            return
                    body_action = self._behaviour("BODY")
                    if isinstance(body_action, str) and body_action.startswith("slow:"):
                        rate[0] = int(body_action[5:])
                    elif body_action is not None and not act(body_action):
                        return
                    scan = 0  # where to resume looking for the end (no rescans of a big message)
                    while True:
                        end = -2 if buf.startswith(b".\r\n") else buf.find(b"\r\n.\r\n", scan)
                        if end != -1:
                            break
                        scan = max(0, len(buf) - 4)
                        if not read_more():
                            return
                    rate[0] = 0
                    wire = bytes(buf[: end + 2])
                    del buf[: end + 5]
                    b = self._behaviour(*([f"DOT {rcpts[0]}"] if rcpts else []), "DOT")
                    if _starts(b, "250"):
                        with self._lock:
                            self.messages.append(Message(mail_from, list(rcpts), wire, _unstuff(wire), mail_line))
                    mail_from, rcpts = None, []
                    if not act(b):
                        return
                elif verb in ("EHLO", "HELO", "RSET", "NOOP", "QUIT"):
                    if verb == "RSET":
                        mail_from, rcpts = None, []
                    b = self._behaviour(verb)
                    if not act(b) or verb == "QUIT":
                        return
                else:
                    if not act(self._behaviour(verb if verb in self.script else "UNKNOWN")):
                        return
        except OSError:
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass


def _starts(behaviour, code: str) -> bool:
    """Does this behaviour answer with `code` (first, when it says more)?"""
    if isinstance(behaviour, dict):
        behaviour = behaviour["drip"][0] if "drip" in behaviour else behaviour["send"]
    if isinstance(behaviour, bytes):
        return behaviour.startswith(code.encode())
    return isinstance(behaviour, str) and behaviour.startswith(code)


def _angle(line: str) -> str:
    start, end = line.find("<"), line.find(">")
    return line[start + 1 : end] if 0 <= start < end else ""


def _unstuff(wire: bytes) -> bytes:
    lines = wire.split(b"\r\n")
    return b"\r\n".join(l[1:] if l.startswith(b".") else l for l in lines)
