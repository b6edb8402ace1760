"""Shared helpers for the TLS, AUTH, relay-guard, PROXY-protocol and Postfix
end-to-end tests: certificates made with the openssl CLI at test time, a
users file with crypt(3) hashes, a daemon fixture whose config may hold
inline tables ([tls] certificates = [{cert, key}]), clients bound to any
127.0.0.0/8 source address, and a recording policy.

    from sec_helpers import sec_daemon, certs  # noqa: F401  (fixtures)
"""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import textwrap
import warnings
from pathlib import Path

import pytest

from conftest import HOSTNAME, Daemon, json_lines, stop_all, wait_until
from smtp_client import RawClient

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # noqa: E402  (deprecated in 3.11, still the simplest sha512-crypt)


# --------------------------------------------------------------------------
# Certificates


def make_cert(directory: Path, name: str, sans: list[str], days: int = 2) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for `sans` (DNS names); returns (cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", str(days), "-subj", f"/CN={sans[0]}",
         "-addext", "subjectAltName=" + ",".join(f"DNS:{s}" for s in sans)],
        check=True, capture_output=True,
    )
    return cert, key


def cert_der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


def client_context(minimum=ssl.TLSVersion.TLSv1_2, maximum=None) -> ssl.SSLContext:
    """A client context that does not verify (the certificates are self-signed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """Two certificate pairs made once per session: `mx` (mx.test) and `other` (other.test)."""
    d = tmp_path_factory.mktemp("certs")
    mx = make_cert(d, "mx", ["mx.test", "localhost"])
    other = make_cert(d, "other", ["other.test", "www.other.test"])
    return {"dir": d, "mx": mx, "other": other}


# --------------------------------------------------------------------------
# Users


def write_users(path: Path, users: dict[str, str]) -> Path:
    lines = [f"{u}:{crypt.crypt(pw, crypt.mksalt(crypt.METHOD_SHA512))}" for u, pw in users.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


# --------------------------------------------------------------------------
# TOML with inline tables


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (str, Path)):
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def render(tables: dict) -> str:
    out = []
    for name, table in tables.items():
        out.append(f"[{name}]")
        out.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
        out.append("")
    return "\n".join(out)


def listening(port: int, host: str = "127.0.0.1") -> bool:
    want = "".join(f"{int(b):02X}" for b in reversed(host.split("."))) + f":{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(l.split()[1] == want and l.split()[3] == "0A" for l in f.readlines()[1:])


class SecDaemon(Daemon):
    """conftest's Daemon with inline-table TOML, an optional implicit-TLS port
    and clients from any loopback source address."""

    tls_port: int | None = None

    def write_config(self, text: str | None = None) -> None:
        self.config_path.write_text(text if text is not None else render(self.tables))

    def client(self, source: str | None = None, timeout: float = 10.0) -> "Client":
        return Client(self.port, source=source, timeout=timeout)

    def tls_client(self, source: str | None = None, timeout: float = 10.0, server_hostname: str = HOSTNAME,
                   ctx: ssl.SSLContext | None = None) -> "Client":
        c = Client(self.tls_port, source=source, timeout=timeout)
        c.wrap(ctx or client_context(), server_hostname)
        return c

    def connect(self, ehlo: str | None = "client.test", source: str | None = None, **kw) -> "Client":
        c = self.client(source=source, **kw)
        c.expect(220)
        if ehlo:
            c.exchange(f"EHLO {ehlo}", 250)
        return c

    def tls_connect(self, ehlo: str | None = "client.test", source: str | None = None) -> "Client":
        """Banner, EHLO, STARTTLS, EHLO again."""
        c = self.connect(ehlo="pre.tls", source=source)
        c.starttls()
        if ehlo:
            c.exchange(f"EHLO {ehlo}", 250)
        return c

    def session_of(self, client_port: int, ip: str = "127.0.0.1", timeout: float = 5.0) -> str:
        m = self.wait_log(rf"^\S+ \w+ (\w+): connect from \[{ip.replace('.', '[.]')}\]:{client_port}( |$)", timeout)
        return m[0].group(1)


@pytest.fixture
def sec_daemon(portcullis_bin, tmp_path):
    """sec_daemon(upstream_url, log_level=None, tls_port=False, **tables) -> SecDaemon (started).

    Tables may hold inline tables (dicts); tls_port=True adds a listen_tls port.
    Teardown: SIGTERM, and the daemon must exit 0 (unless the test stopped it).
    """
    daemons: list[SecDaemon] = []

    def start(upstream_url: str, log_level: str | None = None, tls_port: bool = False, **tables) -> SecDaemon:
        wd = tmp_path / f"sec{len(daemons)}"
        wd.mkdir()
        d = SecDaemon(portcullis_bin, wd, upstream_url, tables, log_level)
        if tls_port:
            from conftest import free_port

            d.tls_port = free_port()
            d.tables["server"]["listen_tls"] = [f"127.0.0.1:{d.tls_port}"]
            d.write_config()
        daemons.append(d)
        d.start()
        if d.tls_port:
            wait_until(lambda: listening(d.tls_port) or d.proc.poll() is not None, timeout=10,
                       what="the implicit-TLS listener")
        return d

    yield start
    stop_all(daemons)


# --------------------------------------------------------------------------
# Clients


class Client(RawClient):
    """RawClient from an optional loopback source address, able to start TLS."""

    def __init__(self, port: int, source: str | None = None, timeout: float = 10.0, host: str = "127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False

    def __exit__(self, *exc):
        # Leave politely: a session still in a transaction would otherwise race the daemon's
        # SIGTERM at teardown (see test_sigterm_as_clients_leave_mid_transaction).
        if not self.eof and not exc[0]:
            try:
                self.sock.settimeout(2)
                self.sock.sendall(b"QUIT\r\n")
                while self.sock.recv(4096):
                    pass
            except (OSError, ValueError):
                pass
        self.close()

    def wrap(self, ctx: ssl.SSLContext, server_hostname: str | None = HOSTNAME) -> None:
        assert not self.buf, f"bytes before the TLS handshake: {bytes(self.buf)!r}"
        self.sock.settimeout(self.timeout)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)

    def starttls(self, ctx: ssl.SSLContext | None = None, server_hostname: str | None = HOSTNAME) -> None:
        self.exchange("STARTTLS", 220, "2.0.0")
        self.wrap(ctx or client_context(), server_hostname)

    @property
    def tls_version(self) -> str | None:
        return self.sock.version() if isinstance(self.sock, ssl.SSLSocket) else None


# --------------------------------------------------------------------------
# A policy that records what every hook saw


RECORDER = """
import json, threading
import portcullis as pc

_lock = threading.Lock()
RECORD = pc.config["probe"]["record"]

def _rec(hook, conn, **extra):
    entry = {"hook": hook, "client_ip": conn.client_ip, "client_port": conn.client_port, "helo": conn.helo,
             "tls": conn.tls, "tls_version": conn.tls_version, "tls_cipher": conn.tls_cipher,
             "auth_user": conn.auth_user}
    entry.update(extra)
    with _lock, open(RECORD, "a") as f:
        f.write(json.dumps(entry) + "\\n")

def on_connect(conn):
    _rec("connect", conn)

def on_helo(conn, hostname):
    _rec("helo", conn, hostname=hostname)

def on_mail(tx, sender):
    _rec("mail", tx.conn, sender=str(sender))

def on_rcpt(tx, rcpt):
    _rec("rcpt", tx.conn, rcpt=str(rcpt))
"""


def recorder_tables(tmp_path: Path, extra_source: str = "") -> tuple[dict, Path]:
    """Tables for a daemon running the recording policy (plus `extra_source`,
    appended to it); returns (tables, record_file)."""
    pdir = tmp_path / "sec_policies"
    pdir.mkdir(exist_ok=True)
    n = len(list(pdir.iterdir()))
    policy = pdir / f"recorder{n}.py"
    policy.write_text(RECORDER + textwrap.dedent(extra_source))
    record = pdir / f"record{n}.jsonl"
    return {"policy": {"files": [str(policy)]}, "probe": {"record": str(record)}}, record


def wait_record(record: Path, hook: str, n: int = 1, timeout: float = 5.0) -> list[dict]:
    def found():
        got = [e for e in json_lines(record) if e["hook"] == hook]
        return got if len(got) >= n else None

    return wait_until(found, timeout=timeout, what=f"{n} {hook} record(s)")
