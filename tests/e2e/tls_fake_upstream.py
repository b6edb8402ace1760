"""An implicit-TLS (smtps://) SMTP upstream whose TLS records are under the
test's control: every reply is a record of its own, and a scripted reply can
bring unsolicited ones with it, in the same TCP write (records behind the one
the proxy's read returns, which only TLS holds: no look at the socket sees
them) or a moment later. For the lock-step checks under TLS; the clear-text
fake upstream (fake_upstream.py) covers the rest.

    up = TlsFakeUpstream(cert, key, after={"RCPT": ["354 go"]})
    up = TlsFakeUpstream(cert, key, after={"DOT": ["250 2.0.0 stale"]}, later=0.1)

`after`: stage ("MAIL", "RCPT", "RCPT <address>", "DOT") -> replies sent
unasked behind that stage's reply, the first time the stage is answered; `later`: seconds to wait before
sending them (0: the same write). Recipients whose local part starts with
"reject" get 550. `messages`: the messages it took, `commands`: each
connection's command lines.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time


class TlsFakeUpstream:
    def __init__(self, cert: str, key: str, after: dict[str, list[str]] | None = None, later: float = 0,
                 ciphers: str | None = None):
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(cert, key)
        if ciphers:  # TLS 1.2 with these suites alone (an older appliance)
            self._ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            self._ctx.set_ciphers(ciphers)
        self.server_names: list[str | None] = []  # the SNI of each handshake (None: none sent)
        self._ctx.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
        self._after = dict(after or {})
        self._later = later
        self._lock = threading.Lock()
        self.commands: list[list[str]] = []
        self.messages: list[bytes] = []
        self.goodbyes: list[str] = []  # per QUIT: "close_notify" (the proxy's), or "bare close"
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"smtps://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _extra(self, stage: str) -> list[str]:
        with self._lock:
            return self._after.pop(stage, [])

    def _serve(self, sock: socket.socket) -> None:
        commands: list[str] = []
        with self._lock:
            self.commands.append(commands)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self._ctx.wrap_bio(incoming, outgoing, server_side=True)
        buf = bytearray()

        def flush() -> None:
            data = outgoing.read()
            if data:
                sock.sendall(data)

        def receive() -> None:
            data = sock.recv(65536)
            if not data:
                raise EOFError
            incoming.write(data)

        def line() -> str:
            while b"\n" not in buf:
                try:
                    buf.extend(tls.read(65536))
                except ssl.SSLWantReadError:
                    flush()
                    receive()
            end = buf.index(b"\n")
            text = bytes(buf[:end]).rstrip(b"\r")
            del buf[: end + 1]
            return text.decode()

        def reply(text: str, stage: str | None = None) -> None:
            tls.write(text.encode() + b"\r\n")  # one record
            extra = self._extra(stage) if stage else []
            if extra and self._later:
                flush()
                time.sleep(self._later)
            for unasked in extra:
                tls.write(unasked.encode() + b"\r\n")  # a record of its own, in the same write unless `later`
            flush()

        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    flush()
                    receive()
            flush()
            reply("220 tls.fake ESMTP")
            while True:
                command = line()
                commands.append(command)
                verb = command.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    reply("250-tls.fake\r\n250-PIPELINING\r\n250 8BITMIME")
                elif verb == "MAIL":
                    reply("250 2.1.0 Sender ok (tls.fake)", "MAIL")
                elif verb == "RCPT":
                    if command[len("RCPT TO:<"):].startswith("reject"):
                        reply("550 5.1.1 No such user (tls.fake)")
                    else:
                        address = command[len("RCPT TO:<"):].rstrip(">")
                        reply("250 2.1.5 Recipient ok (tls.fake)", f"RCPT {address}" if f"RCPT {address}" in self._after
                              else "RCPT")
                elif verb == "DATA":
                    reply("354 go ahead (tls.fake)")
                    lines = []
                    while (text := line()) != ".":
                        lines.append(text)
                    with self._lock:
                        self.messages.append("\r\n".join(lines).encode())
                        n = len(self.messages)
                    reply(f"250 2.0.0 Ok: queued as TLS{n}", "DOT")
                elif verb == "RSET":
                    reply("250 2.0.0 Reset (tls.fake)")
                elif verb == "QUIT":
                    reply("221 2.0.0 Bye")
                    sock.settimeout(5)
                    try:
                        while True:  # ours out, then the proxy's close_notify in
                            try:
                                tls.unwrap()
                                break
                            except ssl.SSLWantReadError:
                                flush()
                                receive()
                        goodbye = "close_notify"
                    except (EOFError, OSError, ssl.SSLError):
                        goodbye = "bare close"
                    with self._lock:
                        self.goodbyes.append(goodbye)
                    return
                else:
                    reply("502 5.5.2 not here")
        except (EOFError, OSError, ssl.SSLError):
            pass
        finally:
            sock.close()
