"""End-to-end fixtures: the built daemon, a real upstream (aiosmtpd) and a
scriptable fault-injecting one (fake_upstream.py), all on 127.0.0.1: on
ports the kernel picks, or (for what binds later, the daemon) from this test
process's own block (`free_port`), so tests may run in parallel (pytest -n).

    def test_x(start_daemon, aiosmtpd_upstream):
        d = start_daemon(aiosmtpd_upstream.url, server={"max_recipients": 2})
        with d.client() as c: ...

The daemon's stderr goes to a file (`d.log_text()`, `d.wait_log(regex)`,
`d.session_id(client_port)`); on teardown it gets SIGTERM and must exit 0.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/helpers: shared with tests/python

from fake_upstream import FakeUpstream  # noqa: E402
from smtp_client import RawClient  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
HOSTNAME = "mx.test"


def _port_block() -> range:
    """The ports this process hands out: a block of its own per pytest-xdist
    worker, below the kernel's ephemeral range (32768 and up), so that
    neither another worker nor a bind(0) or connect() elsewhere takes a port
    between free_port() and the daemon binding it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # gw0, gw1, ...
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    low = 12000 + (index % 10) * 2000
    return range(low, low + 2000)


_next_ports = itertools.cycle(_port_block())


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, for a server that binds it later."""
    for _ in range(len(_port_block())):
        port = next(_next_ports)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (or in TIME_WAIT): the next one
            return port
    raise RuntimeError("no free port left in this test process's block")


def complete_text(path) -> str:
    """A file another process appends lines to, up to its last newline ("" if it is not there yet):
    a read may see part of a write still under way, and half a line must never be taken."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return ""
    return data[: data.rfind(b"\n") + 1].decode("utf-8", "replace")


def json_lines(path) -> list:
    """The JSON records a policy appended to ``path``, one a line (complete lines only)."""
    return [json.loads(line) for line in complete_text(path).splitlines() if line.strip()]


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    """proc.wait(timeout), woken by the exit itself (a pidfd) rather than by
    Popen's polling, whose sleeps grow to 50 ms: a daemon stopped in 10 ms
    would be seen 50 ms later, at every one of the suite's daemon stops."""
    if proc.returncode is None:
        try:
            fd = os.pidfd_open(proc.pid)
        except ProcessLookupError:  # already reaped
            return proc.wait()
        try:
            if not select.select([fd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(proc.args, timeout)
        finally:
            os.close(fd)
    return proc.wait()


# --------------------------------------------------------------------------
# TOML


def write_atomically(path: Path, text: str) -> None:
    """Writes a file whole (a rename), as an operator's tooling should: a daemon reading a
    half-written config may find valid TOML with half the settings, which it cannot tell."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table; keys quoted (they may hold dots)
        return "{ " + ", ".join(f"{_toml_value(str(k))} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def render_toml(tables: dict) -> str:
    out = []
    for name, table in tables.items():
        out.append(f"[{name}]")
        for k, v in table.items():
            out.append(f"{k} = {_toml_value(v)}")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------
# The daemon


class Daemon:
    def __init__(self, binary: Path, workdir: Path, upstream_url: str, tables: dict, log_level: str | None):
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.config_path = workdir / "portcullis.toml"
        self.log_path = workdir / "portcullis.log"
        self.preexec = None  # a function run in the child before exec (resource limits)
        self.tables = self._merge(
            {
                # One process (no supervisor): tests read its pid, RSS and log as one daemon's.
                # test_workers.py sets workers itself.
                "server": {"hostname": HOSTNAME, "listen": [f"127.0.0.1:{self.port}"], "threads": 2, "workers": 1},
                "upstream": {"url": upstream_url, "timeout": 10},
            },
            tables,
        )
        self.write_config()
        self.log_level = log_level
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def _merge(base: dict, extra: dict) -> dict:
        out = {k: dict(v) for k, v in base.items()}
        for table, values in (extra or {}).items():
            out.setdefault(table, {}).update(values)
        return out

    def write_config(self, text: str | None = None) -> None:
        # Atomically (a new file renamed over the old): a SIGHUP still on its
        # way must read the old config or the new, never half of one.
        tmp = self.config_path.with_name(self.config_path.name + ".new")
        tmp.write_text(text if text is not None else render_toml(self.tables))
        os.replace(tmp, self.config_path)

    def start(self) -> "Daemon":
        env = dict(os.environ)
        if self.log_level:
            env["PORTCULLIS_LOG_LEVEL"] = self.log_level
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(self.binary), "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            env=env,
            preexec_fn=self.preexec,
        )
        # Ready when the kernel has the listening socket (no probe session to
        # pollute the log or the per-client counts).
        wait_until(lambda: self._listening() or self._died(), timeout=10, what="the daemon to listen")
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode} at start:\n{self.log_text()}")
        return self

    def _died(self) -> bool:
        return self.proc.poll() is not None

    def _listening(self) -> bool:
        # Loopback, the wildcard, or loopback IPv4-mapped on an IPv6 socket.
        want = (f"0100007F:{self.port:04X}", f"00000000:{self.port:04X}",
                f"0000000000000000FFFF00000100007F:{self.port:04X}")
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as f:
                    for line in f.readlines()[1:]:
                        parts = line.split()
                        if parts[1] in want and parts[3] == "0A":
                            return True
            except OSError:
                pass
        return False

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- talking to it ----------------------------------------------------

    def client(self, **kw) -> RawClient:
        return RawClient("127.0.0.1", self.port, **kw)

    def connect(self, ehlo: str | None = "client.test", **kw) -> RawClient:
        """A RawClient past the banner (and EHLO unless ehlo=None)."""
        c = self.client(**kw)
        c.expect(220)
        if ehlo:
            c.cmd(f"EHLO {ehlo}")
            c.expect(250)
        return c

    # -- log --------------------------------------------------------------

    def log_text(self) -> str:
        return complete_text(self.log_path)  # (a summary line of 4 KB may be halfway written)

    def wait_log(self, pattern: str, timeout: float = 5.0, count: int = 1) -> list[re.Match]:
        rx = re.compile(pattern, re.M)

        def found():
            ms = list(rx.finditer(self.log_text()))
            return ms if len(ms) >= count else None

        try:
            return wait_until(found, timeout=timeout, what=f"log /{pattern}/ x{count}")
        except AssertionError:
            raise AssertionError(f"no log line /{pattern}/ (x{count}) in:\n{self.log_text()[-6000:]}") from None

    def session_id(self, client_port: int, timeout: float = 5.0) -> str:
        """The session id of the connection whose local port is `client_port`."""
        m = self.wait_log(rf"^\S+ \w+ (\w+): connect from \[127\.0\.0\.1\]:{client_port}$", timeout)
        return m[0].group(1)

    def session_log(self, sid: str) -> list[str]:
        return [l for l in self.log_text().splitlines() if f" {sid}: " in l]

    # -- signals and the end ----------------------------------------------

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def reload(self, tables: dict | None = None, text: str | None = None, expect_ok: bool = True) -> None:
        before = self.log_text().count("reload: ")
        if tables is not None:
            self.tables = self._merge(self.tables, tables)
        self.write_config(text)
        self.signal(signal.SIGHUP)
        # Wait until the daemon has logged this reload's outcome.
        wait_until(lambda: self.log_text().count("reload: ") > before, timeout=5, what="the reload to be logged")
        if expect_ok:
            self.wait_log(r"reload: .* reloaded; new sessions use it", count=1)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                wait_exit(self.proc, timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"daemon ignored SIGTERM for {timeout}s:\n{self.log_text()[-4000:]}")
        self._log_file.close()
        return self.proc.returncode

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="session")
def portcullis_bin() -> Path:
    p = Path(os.environ.get("PORTCULLIS_BIN", REPO_ROOT / "build" / "portcullis"))
    if not p.is_absolute():
        p = REPO_ROOT / p
    if not os.access(p, os.X_OK):
        pytest.fail(f"daemon binary {p} not found: build it (cmake --build build --target portcullis) or set PORTCULLIS_BIN", pytrace=False)
    return p


@pytest.fixture
def start_daemon(portcullis_bin, tmp_path, request):
    """start_daemon(upstream_url, server={...}, upstream={...}, log_level=None) -> Daemon.

    Teardown: SIGTERM, and the daemon must exit 0 (unless the test stopped it itself).
    A failed test's report carries each daemon's log tail (pytest_runtest_makereport).
    """
    daemons: list[Daemon] = []
    request.node.portcullis_daemons = daemons

    def start(upstream_url: str, log_level: str | None = None, preexec=None, **tables) -> Daemon:
        wd = tmp_path / f"daemon{len(daemons)}"
        wd.mkdir()
        d = Daemon(portcullis_bin, wd, upstream_url, tables, log_level)
        d.preexec = preexec
        daemons.append(d)
        return d.start()

    yield start
    stop_all(daemons)


# --------------------------------------------------------------------------
# aiosmtpd: the real upstream


class RecordingHandler:
    """Records every envelope aiosmtpd accepts, with distinctive reply texts
    so that tests can tell the upstream's words from the proxy's."""

    def __init__(self):
        self.envelopes: list[dict] = []
        self.mails: list[tuple[str, list[str]]] = []
        self.rcpts: list[tuple[str, list[str]]] = []
        self.sessions = 0
        self.lock = threading.Lock()
        self.n = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        with self.lock:
            self.sessions += 1
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        with self.lock:
            self.mails.append((address, list(mail_options)))
        return "250 2.1.0 Sender ok (aiosmtpd)"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        with self.lock:
            self.rcpts.append((address, list(rcpt_options)))
        return "250 2.1.5 Recipient ok (aiosmtpd)"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.n += 1
            qid = f"AIO{self.n:05d}"
            self.envelopes.append(
                {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": list(envelope.rcpt_tos),
                    "content": bytes(envelope.original_content),
                    "mail_options": list(envelope.mail_options),
                    "rcpt_options": list(envelope.rcpt_options),
                    "smtp_utf8": envelope.smtp_utf8,
                    "helo": session.host_name,
                    "queue_id": qid,
                }
            )
        return f"250 2.0.0 Ok: queued as {qid} (aiosmtpd)"


class AiosmtpdUpstream:
    def __init__(self):
        from aiosmtpd.controller import Controller

        self.handler = RecordingHandler()
        self.port = free_port()
        self.controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port, enable_SMTPUTF8=True, server_hostname="aio.upstream"
        )

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def envelopes(self) -> list[dict]:
        with self.handler.lock:
            return list(self.handler.envelopes)

    def wait_messages(self, n: int, timeout: float = 5.0) -> list[dict]:
        wait_until(lambda: len(self.envelopes) >= n, timeout, what=f"{n} message(s) at aiosmtpd")
        return self.envelopes


@pytest.fixture
def aiosmtpd_upstream():
    up = AiosmtpdUpstream()
    up.controller.start()
    yield up
    up.controller.stop()


@pytest.fixture
def fake_upstream():
    """fake_upstream(script) -> a started FakeUpstream; all stopped at teardown."""
    started: list[FakeUpstream] = []

    def make(script: dict | None = None) -> FakeUpstream:
        f = FakeUpstream(script).start()
        started.append(f)
        return f

    yield make
    for f in started:
        f.stop()


# --------------------------------------------------------------------------
# Python policies

POLICY_DIR = Path(__file__).parent / "policies"


def sanitized_python_env() -> dict[str, str]:
    """What a daemon that embeds Python needs in its environment under ASan.

    The daemon never finalises its interpreter (python_engine.cpp), so at
    exit every Python object is still reachable - but pymalloc keeps objects
    in mmap'd arenas that LeakSanitizer does not scan, and it reports ~3 MB
    of libpython allocations as leaked (exit 1). PYTHONMALLOC=malloc makes
    them visible; real leaks are still reported.
    """
    return {"PYTHONMALLOC": "malloc"} if os.environ.get("PORTCULLIS_SANITIZED") else {}


@pytest.fixture
def policy_daemon(start_daemon, tmp_path, monkeypatch):
    """policy_daemon(upstream_url, *policies, policy={...}, log_level=None, **tables) -> Daemon.

    Each of `policies` is Python source (dedented and written to
    tmp_path/policies/policyN.py) or a Path (used as it is, e.g. one of
    tests/e2e/policies/). They become `[policy] files`, in order; `policy`
    adds to that table (timeout, on_error, threads) and every other table
    goes into the config as it is (a policy reads its own via pc.config).
    The daemon gets `policy_files`, the paths in order.
    """
    for name, value in sanitized_python_env().items():
        monkeypatch.setenv(name, value)
    pdir = tmp_path / "policies"
    counter = iter(range(1000))

    def start(upstream_url: str, *policies, policy: dict | None = None, log_level: str | None = None, **tables):
        pdir.mkdir(exist_ok=True)
        files = []
        for p in policies:
            if isinstance(p, Path):
                files.append(p)
            else:
                path = pdir / f"policy{next(counter)}.py"
                path.write_text(textwrap.dedent(p))
                files.append(path)
        d = start_daemon(upstream_url, log_level=log_level, policy={"files": [str(f) for f in files], **(policy or {})},
                         **tables)
        d.policy_files = files
        return d

    return start


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failure the daemon saw (a session it closed, a reply it chose) is
    in its log, not in the test's: a failed test shows the log of each
    daemon it started, so that a failure seen once in CI can be read."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for i, d in enumerate(getattr(item, "portcullis_daemons", [])):
        with contextlib.suppress(OSError):
            report.sections.append((f"portcullis log (daemon {i}, tail)", d.log_text()[-8000:]))


def stop_all(daemons) -> None:
    """Teardown of the daemon fixtures: SIGTERM each one; any exit but 0 fails the test."""
    failures = []
    for d in daemons:
        if d.proc is None:
            continue
        rc = d.stop()
        if rc != 0:
            failures.append(f"daemon exited {rc}; log tail:\n{d.log_text()[-4000:]}")
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)


RECEIVED = re.compile(rb"Received: from \S+ \(\[127\.0\.0\.1\]\)\r\n\tby mx\.test \(Portcullis\) with \w+ id [0-9A-F]{12}\.\d+"
                      rb"(?:\r\n\tfor <[^>]*>)?; [^\r\n]+\r\n")


def exact(r, code: int, status: str, text: str) -> None:
    """The reply is exactly this code, enhanced status and text."""
    assert (r.code, r.status, r.text) == (code, status, text), f"got {r}"


def content_without_received(content: bytes) -> bytes:
    """The message as the upstream got it, less our one Received: header on top."""
    m = RECEIVED.match(content)
    assert m, f"no Received: header of ours on top: {content[:200]!r}"
    return content[m.end():]
