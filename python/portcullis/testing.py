"""``portcullis.testing``: drive policies through the engine in a unit test, no sockets.

``Harness`` loads policy files into the same engine the daemon runs (same
loading, same hook order, timeouts, validation and error handling) and plays
an SMTP dialogue against them; each command returns the ``Reply`` the daemon
would send when its upstream accepts everything, and what would be delivered
is recorded::

    from portcullis.testing import Harness

    def test_rejects_spammer():
        with Harness(["policies/rules.py"], config={"rules": {"block": ["spam.example"]}}) as h:
            s = h.connect(client_ip="192.0.2.1", helo="client.example")
            assert s.mail("x@spam.example") == (550, "5.7.1", "Go away")
            s.mail("a@ok.example")
            assert s.rcpt("b@example.test").code == 250
            assert s.data(b"Subject: hi\\r\\n\\r\\nhello\\r\\n").code == 250
            assert s.delivered[0].recipients == ("b@example.test",)

How it differs from the daemon (the policy side is the same; what is
simulated is the SMTP side around it):

- The upstream accepts everything: MAIL ``250 2.1.0 Ok``, RCPT
  ``250 2.1.5 Ok``, end of data ``250 2.0.0 Ok``.
- No ``Received:`` header is added, and nothing checks SPF, DKIM or DMARC:
  ``tx.spf`` is what ``mail(..., spf=...)`` says, ``tx.dkim``, ``tx.dmarc``
  and ``tx.arc`` what ``data(..., dkim=..., dmarc=..., arc=...)`` says (None
  by default).
- ``data()`` takes the message as it is meant, not as SMTP carries it: lone
  LF or CR become CRLF (as ``smtplib`` does), a final CRLF is added, and
  there is no dot-stuffing to do. A NUL, and a first line that starts with
  white space, give ``550 5.6.0`` as in the daemon.
- Commands check sequence (``503 5.5.1``) and address syntax (``501``) as
  the daemon does, but not ESMTP parameters, line lengths, TLS or
  ``require_auth``; ``tls=`` and ``auth_user=`` of ``connect()`` set the state
  directly. ``auth()`` asks the on_auth hooks only (no ``[auth] users_file``).
  The config's limits and relay guard are the daemon's: ``[server]
  max_recipients`` (``452 4.5.3``; discarded RCPTs count, and so do a
  redirect's targets), ``max_message_size`` (a rewrite past either is a policy
  error, refused for good: ``550 5.5.3`` and ``552 5.3.4``) and ``[relay]`` (``554 5.7.1 Relay access denied`` unless
  ``auth_user=`` or a ``client_ip=`` in ``trusted_networks``).
- Commands run one at a time; use the engine (``h.host.dispatch``, with
  ``_core.Job`` objects) directly to run sessions concurrently.
"""

from __future__ import annotations

import asyncio
import email.message
import email.parser
import email.policy
import itertools
import logging
import os
import sys
import threading
import types
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from ._address import Address
from ._engine import (POLICY_ERROR_REPLY, EngineHost, PolicyLoadError, _PolicyLoop, job_from_dict, load_config,
                      result_as_dict, run_policy_loop)
from ._log import LOGGER_NAME, format_record, record_session_id
from ._objects import ArcResult, DkimSignature, DmarcResult, SpfResult
from .settings import client_address, network

# A message a policy edited past server.max_message_size (unless on_error accepts it).
_TOO_BIG_REPLY = (552, "5.3.4", "Message size exceeds fixed maximum message size")
_TOO_MANY_REPLY = (550, "5.5.3", "Too many recipients")

__all__ = ["Delivery", "Harness", "LogLine", "PolicyLoadError", "Reply", "Session", "SessionClosed"]

T = TypeVar("T")

DEFAULT_HOSTNAME = "mx.example.test"
DEFAULT_MAX_MESSAGE_SIZE = 52428800
DEFAULT_MAX_RECIPIENTS = 1000
# RFC 5321 §4.5.3.1.2: a domain is at most 255 octets.
MAX_DOMAIN = 255


class Reply(NamedTuple):
    """An SMTP reply: compare it with a tuple, ``r == (250, "2.1.0", "Ok")``.

    ``status`` is ``""`` where the daemon gives none (greeting, EHLO). A
    multi-line reply (EHLO) has its lines joined with ``"\\n"`` in ``text``.
    """

    code: int
    status: str
    text: str

    @property
    def positive(self) -> bool:
        """2xx or 3xx."""
        return 200 <= self.code < 400

    def __str__(self) -> str:
        return " ".join(str(p) for p in (self.code, self.status, self.text) if p != "")


@dataclass(frozen=True)
class Delivery:
    """What the daemon would hand the upstream at the end of a transaction: the
    envelope as text (``sender`` ``""`` for ``<>``), the recipients in order, each
    once, and the message as bytes (CRLF lines, every policy edit applied)."""

    sender: str
    recipients: tuple[str, ...]
    message: bytes

    def as_email(self) -> email.message.EmailMessage:
        """The delivered message parsed as a stdlib ``EmailMessage``."""
        parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(self.message)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed


class LogLine(NamedTuple):
    """A line a policy (or the engine) logged through ``portcullis.log``."""

    session_id: str
    level: int
    message: str


class SessionClosed(RuntimeError):
    """A command on a session that is closed (after QUIT, or a refused greeting)."""


def _ok() -> Reply:
    return Reply(250, "2.0.0", "Ok")


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _mailbox_key(address: str) -> tuple[str, str]:
    # The daemon's smtp::same_mailbox: the local part exactly, the domain
    # without ASCII case (RFC 5321 §2.4).
    local, at, domain = address.rpartition("@")
    return (local, domain.translate(_ASCII_LOWER)) if at else (address, "")


def _once(addresses: Iterable[str], known: Iterable[str] = ()) -> list[str]:
    """Each mailbox once, the first spelling kept, in order (none of ``known``)."""
    seen: set[tuple[str, str]] = {_mailbox_key(a) for a in known}
    out = []
    for a in addresses:
        key = _mailbox_key(a)
        if key not in seen:
            seen.add(key)
            out.append(a)
    return out


class _RelayGuard:
    """The daemon's open-relay guard (proxy/session/relay_guard.cpp; RFC 5321 §3.6.1, §7.1):
    with ``[relay]``, a client neither authenticated nor in ``trusted_networks`` may send
    only to ``local_domains``."""

    def __init__(self, table: Mapping[str, Any]) -> None:
        self.local_domains = {self._canonical(d) for d in table.get("local_domains", [])}
        try:
            self.trusted_networks = [network(n) for n in table.get("trusted_networks", [])]
        except ValueError as e:
            raise ValueError(f"[relay] trusted_networks: {e}") from None

    @staticmethod
    def _canonical(domain: str) -> str:
        return domain.translate(_ASCII_LOWER).removesuffix(".")

    def trusts(self, client_ip: str) -> bool:
        try:
            address = client_address(client_ip)
        except ValueError:  # a test's made-up client: in no network
            return False
        return any(address in network for network in self.trusted_networks)

    def is_local(self, rcpt: Address) -> bool:
        """A recipient in one of our domains with no routing in its local part (a downstream
        MTA could still honour "user%foreign@local", "a!b@local", "\"u@foreign\"@local")."""
        if not rcpt.domain:  # RFC 5321 §4.1.1.3: <Postmaster> alone is always ours.
            return rcpt.local.translate(_ASCII_LOWER) == "postmaster"
        if any(c in rcpt.local for c in "%!@"):
            return False
        return self._canonical(rcpt.domain) in self.local_domains


class _LogCapture(logging.Handler):
    def __init__(self, harness: Harness) -> None:
        super().__init__(logging.DEBUG)
        self._harness = weakref.ref(harness)

    def emit(self, record: logging.LogRecord) -> None:
        harness = self._harness()
        if harness is None:
            return
        session_id = record_session_id(record)
        if not session_id or session_id in harness._session_ids:
            harness.logs.append(LogLine(session_id, record.levelno, format_record(record)))


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread, until: asyncio.Future[None]) -> None:
    if not loop.is_closed():
        loop.call_soon_threadsafe(_done, until)  # (the loop ignores a stop() before that)
        thread.join(timeout=5)


def _done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Harness:
    """Policies loaded into the daemon's engine, and a scripted SMTP dialogue against them.

    ``files``: the policy files, in ``[policy] files`` order; a relative name
    is relative to the folder of the file that makes the harness (your test
    file), whatever the current folder. Without ``files``, those of the
    config's ``[policy]`` table are used, relative to the config file's folder.
    ``config``: the config as a dict (what ``pc.config`` is), or
    ``config_path``: a TOML file to read it from (relative like ``files``;
    with both, the tables of ``config`` replace those of the file). ``timeout`` and ``on_error``
    default to the config's ``[policy]`` values (10 s, ``"tempfail"``);
    ``hostname`` to ``[server] hostname``. ``clock``: what ``pc.now()``
    returns while the harness lives (``lambda: now[0]`` over a list the test
    moves), to test policies that count time without waiting.

    A policy that does not load raises ``PolicyLoadError`` here. Use it as a
    context manager (or call ``close()``) to stop its event loop thread.
    """

    def __init__(
        self,
        files: Iterable[str | os.PathLike[str]] | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        config_path: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        on_error: str | None = None,
        hostname: str | None = None,
        threads: int = 4,
        clock: Callable[[], float] | None = None,
    ) -> None:
        here = Path(sys._getframe(1).f_code.co_filename).resolve().parent  # the test file's folder
        if clock is not None:  # what pc.now() reads while this harness lives
            from . import _context

            self._clock_before, _context.clock = _context.clock, clock
        if config_path is not None:
            config_path = here / Path(config_path)
        merged: dict[str, Any] = load_config(config_path) if config_path is not None else {}
        merged.update(config or {})
        policy = merged.get("policy", {})
        server = merged.get("server", {})
        if files is None:
            base = Path(config_path).resolve().parent if config_path is not None else Path.cwd()
            paths = [str(base / f) for f in policy.get("files", [])]
        else:
            paths = [str((here / Path(f)).resolve()) for f in files]
        self.hostname: str = hostname or server.get("hostname", DEFAULT_HOSTNAME)
        self.max_message_size: int = server.get("max_message_size", DEFAULT_MAX_MESSAGE_SIZE)
        self.max_recipients: int = server.get("max_recipients", DEFAULT_MAX_RECIPIENTS)
        relay = merged.get("relay")
        # [relay]: absent, the upstream decides relaying (and the harness's takes everything).
        self._relay = _RelayGuard(relay) if relay is not None else None
        self.on_error: str = on_error or policy.get("on_error", "tempfail")
        #: Every message delivered in any session of this harness, in order.
        self.deliveries: list[Delivery] = []
        #: Lines logged through ``portcullis.log`` by this harness's sessions (and by none).
        self.logs: list[LogLine] = []
        self._session_ids: set[str] = set()
        self._sessions: list[Session] = []
        self._ids = itertools.count(1)
        self._ports = itertools.count(40000)

        # The engine is built here, so a policy that does not load raises at once.
        self.host = EngineHost(
            paths,
            config_path,
            timeout if timeout is not None else policy.get("timeout", 10),
            self.on_error,
            threads,
            config=merged,
        )
        # The daemon's loop and its way of running it: a hook's stop() is ignored, a KeyboardInterrupt
        # out of a callback logged (on a loop of asyncio's own, either stopped the harness for good).
        self._loop = _PolicyLoop()
        until: asyncio.Future[None] = self._loop.create_future()  # done at close()
        self._thread = threading.Thread(target=run_policy_loop, args=(self._loop, until), name="portcullis-testing",
                                        daemon=True)
        self._thread.start()
        self._finalizer = weakref.finalize(self, _stop_loop, self._loop, self._thread, until)
        self._capture = _LogCapture(self)
        logging.getLogger(LOGGER_NAME).addHandler(self._capture)

    # -- the engine ------------------------------------------------------------

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs a coroutine on the harness's event loop (the one hooks run on) and returns its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def ask(self, job: dict[str, Any]) -> dict[str, Any]:
        """Hands one job, in the dict form of docs/policy-engine.md, to the engine and returns its result dict."""
        return result_as_dict(self.run(self.host.dispatch(job_from_dict(job))))

    def reload(self, files: Iterable[str | os.PathLike[str]] | None = None,
               config: Mapping[str, Any] | None = None) -> None:
        """Loads the policies anew, as SIGHUP does: sessions already connected keep the
        old code, new ones get the new. Raises ``PolicyLoadError`` (the old stay) on failure."""
        changes: dict[str, Any] = {}
        if files is not None:
            changes["files"] = [str(Path(f).resolve()) for f in files]
        if config is not None:
            changes["config"] = dict(config)
        self.run(self.host.areload(**changes))

    @property
    def config(self) -> dict[str, Any]:
        """The config the current policies see as ``pc.config``."""
        return self.host.engine.config

    def module(self, name: str) -> types.ModuleType:
        """The loaded module of the current policies whose file is ``name`` (or ends with it:
        ``"aliases.py"``), to read or patch its state in a test; ``KeyError`` if none is."""
        for module in self.host.engine.modules:
            path = Path(module.__file__ or "")
            if path.name == name or str(path).endswith(name):
                return module
        raise KeyError(f"no loaded policy file {name!r}")

    def close(self) -> None:
        """Ends the sessions still open (their on_disconnect runs), stops the loop, drops the engine."""
        if self._loop.is_closed():
            return
        for session in self._sessions:
            session.close()
        logging.getLogger(LOGGER_NAME).removeHandler(self._capture)
        if hasattr(self, "_clock_before"):
            from . import _context

            _context.clock = self._clock_before
        self._finalizer()
        self.host.close()
        self._loop.close()

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sessions ----------------------------------------------------------------

    def connect(
        self,
        client_ip: str = "192.0.2.1",
        client_port: int | None = None,
        helo: str | None = None,
        tls: bool = False,
        auth_user: str | None = None,
    ) -> Session:
        """Opens a session: on_connect runs, its reply is ``session.greeting``.

        With ``helo``, ``EHLO helo`` follows at once (its reply in
        ``session.last_reply``). ``tls`` and ``auth_user`` set the connection's
        state as though STARTTLS / AUTH had succeeded (no hook is asked).
        """
        session = Session(self, f"T{next(self._ids):05d}", client_ip,
                          client_port if client_port is not None else next(self._ports), tls, auth_user)
        self._session_ids.add(session.id)
        self._sessions.append(session)
        session._open()
        if helo is not None and not session.closed:
            session.ehlo(helo)
        return session


class Session:
    """One scripted SMTP session; each command returns the daemon's ``Reply``."""

    def __init__(self, harness: Harness, id: str, client_ip: str, client_port: int, tls: bool,
                 auth_user: str | None) -> None:
        self.harness = harness
        self.id = id
        self.client_ip = client_ip
        self.client_port = client_port
        self.tls = tls
        self.auth_user = auth_user
        self.helo_name: str | None = None
        self.greeting: Reply = Reply(0, "", "")
        self.last_reply: Reply = Reply(0, "", "")
        #: Messages delivered in this session, in order.
        self.delivered: list[Delivery] = []
        self.closed = False
        self._transactions = 0
        self._tx: dict[str, Any] | None = None

    # -- plumbing ----------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        return {"id": self.id, "client_ip": self.client_ip, "client_port": self.client_port,
                "helo": self.helo_name, "tls": self.tls, "auth_user": self.auth_user}

    def _ask(self, stage: str, **arguments: Any) -> dict[str, Any]:
        tx = None
        if self._tx is not None:
            params = {k.upper(): v for k, v in self._tx["params"].items()}
            options = {"smtputf8": "SMTPUTF8" in params,
                       "body_8bit": (params.get("BODY") or "").upper() == "8BITMIME"}
            tx = {"id": self._tx["id"], "sender": self._tx["sender"], "sender_params": dict(self._tx["params"]),
                  "recipients": list(self._tx["recipients"]), "options": options}
            spf = self._tx.get("spf")
            if spf is not None:
                tx["spf"] = {"result": spf.result, "domain": spf.domain, "explanation": spf.explanation}
            dkim = self._tx.get("dkim")
            if dkim is not None:
                tx["dkim"] = [{"result": d.result, "domain": d.domain, "selector": d.selector} for d in dkim]
            dmarc = self._tx.get("dmarc")
            if dmarc is not None:
                tx["dmarc"] = dataclasses.asdict(dmarc)
            arc = self._tx.get("arc")
            if arc is not None:
                tx["arc"] = dataclasses.asdict(arc)
        return self.harness.ask({"stage": stage, "session": self._snapshot(), "tx": tx, **arguments})

    def _outcome(self, result: dict[str, Any]) -> tuple[Reply | None, dict[str, Any]]:
        """Applies policy.on_error as the daemon does: (a refusal reply or None, the usable result)."""
        if result["error"] is None:
            return None, result
        if self.harness.on_error == "accept":
            return None, {"verdict": None, "auth": None, "sender": None, "recipients": None, "message": None}
        return Reply(*result.get("error_reply", POLICY_ERROR_REPLY)), result

    def _checked(self, stage: str, result: dict[str, Any], received: bytes | None = None) -> dict[str, Any]:
        """The daemon's checks of a result against the server's limits (python_policy.cpp
        verdict_of and on_data; the engine checked the rest): past one, the stage fails as a
        hook error does, logged, then policy.on_error."""
        if result["error"] is not None:
            return result
        past = self._past_limits(stage, result, received)
        if past is None:
            return result
        why, reply = past
        logging.getLogger(LOGGER_NAME).error("policy error in on_%s: %s", stage, why, extra={"session_id": self.id})
        return {**result, "error": why, "error_reply": reply}

    def _past_limits(self, stage: str, result: dict[str, Any],
                     received: bytes | None) -> tuple[str, tuple[int, str, str]] | None:
        """(why, the refusal) of the first limit the result passes, or None. Each is refused for
        good: the rewrite would be the same at every try (python_policy.cpp too_big, too_many)."""
        max_recipients, max_size = self.harness.max_recipients, self.harness.max_message_size

        def too_many(what: str) -> tuple[str, tuple[int, str, str]]:
            return f"{what}; server.max_recipients is {max_recipients}", _TOO_MANY_REPLY

        def too_big(size: int) -> tuple[str, tuple[int, str, str]]:
            return f"the message from policy has {size} octets; server.max_message_size is {max_size}", _TOO_BIG_REPLY

        if result["recipients"] is not None:
            count = len(_once(result["recipients"]))
            if count > max_recipients:
                return too_many(f"policy set {count} recipients")
        if stage == "data" and result["message"] is not None and len(result["message"]) > max_size:
            return too_big(len(result["message"]))
        verdict = result["verdict"]
        if stage == "rcpt" and verdict and verdict["kind"] == "redirect":
            count = len(_once(verdict["addresses"]))
            if count > max_recipients:
                return too_many(f"redirect to {count} addresses")
        prefix = result.get("message_prefix")
        if stage == "data" and prefix is not None and received is not None:
            # Fields on top of the message as received, or a new header section over its body.
            size = len(prefix) + len(received) - result.get("message_keep_from", 0)
            if size > max_size:
                return too_big(size)
        return None

    def _apply_envelope(self, result: dict[str, Any]) -> None:
        if self._tx is None:
            return
        if result.get("sender") is not None:
            self._tx["sender"] = result["sender"]
        if result.get("recipients") is not None:
            self._tx["recipients"] = _once(result["recipients"])

    @staticmethod
    def _verdict_reply(verdict: dict[str, Any]) -> Reply:
        return Reply(verdict["code"], verdict["status"], verdict["text"])

    @staticmethod
    def _with_policy_text(reply: Reply, verdict: dict[str, Any] | None) -> Reply:
        # pc.accept(text): on success the client reads the policy's text with the upstream's code.
        if verdict and verdict["kind"] == "accept" and verdict["text"] and reply.positive:
            return reply._replace(text=verdict["text"])
        return reply

    def _reply(self, reply: Reply) -> Reply:
        self.last_reply = reply
        return reply

    def _check_open(self) -> None:
        if self.closed:
            raise SessionClosed(f"session {self.id} is closed (greeting: {self.greeting})")

    @staticmethod
    def _stops(verdict: dict[str, Any] | None) -> bool:
        return verdict is not None and verdict["kind"] in ("reject", "tempfail")

    # -- the dialogue --------------------------------------------------------------

    def _open(self) -> None:
        refused, result = self._outcome(self._ask("connect"))
        verdict = result["verdict"]
        if refused or self._stops(verdict):
            reply = refused or self._verdict_reply(verdict)
            # RFC 5321 §3.1/§4.2: a refused greeting is 554 (or RFC 7504's 521 when asked), or 421 when temporary.
            reply = reply._replace(code=(reply.code if reply.code == 521 else 554) if reply.code >= 500 else 421)
            self.greeting = self._reply(reply)
            self._disconnect()
            return
        own_text = verdict["text"] if verdict and verdict["kind"] == "accept" and verdict["text"] else None
        self.greeting = self._reply(Reply(220, "", f"{self.harness.hostname} {own_text or 'ESMTP Portcullis'}"))

    def ehlo(self, hostname: str) -> Reply:
        """EHLO: on_helo runs; the reply lists the extensions the daemon advertises."""
        return self._helo(hostname, extended=True)

    def helo(self, hostname: str) -> Reply:
        """HELO: on_helo runs."""
        return self._helo(hostname, extended=False)

    def _helo(self, hostname: str, extended: bool) -> Reply:
        self._check_open()
        if not hostname:
            return self._reply(Reply(501, "5.5.4", "Syntax: EHLO hostname" if extended else "Syntax: HELO hostname"))
        if len(hostname) > MAX_DOMAIN or any(c <= " " or c >= "\x7f" for c in hostname):
            return self._reply(Reply(501, "5.5.2", "Invalid hostname"))
        refused, result = self._outcome(self._ask("helo", hostname=hostname))
        if refused or self._stops(result["verdict"]):
            return self._reply(refused or self._verdict_reply(result["verdict"]))
        # RFC 5321 §4.1.4: EHLO/HELO ends any transaction in progress.
        self._end_transaction()
        self.helo_name = hostname
        host = self.harness.hostname
        if not extended:
            return self._reply(Reply(250, "", host))
        literal = f"[IPv6:{self.client_ip}]" if ":" in self.client_ip else f"[{self.client_ip}]"
        lines = [f"{host} Hello {hostname} {literal}", "PIPELINING", f"SIZE {self.harness.max_message_size}",
                 "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
        return self._reply(Reply(250, "", "\n".join(lines)))

    def auth(self, username: str, password: str, mechanism: str = "PLAIN") -> Reply:
        """AUTH: on_auth decides (True/False/None or a verdict); no decision fails.

        Success sets ``auth_user`` (and ``conn.auth_user`` in later hooks).
        """
        self._check_open()
        if self.helo_name is None:
            return self._reply(Reply(503, "5.5.1", "Send EHLO first"))
        if self.auth_user is not None:
            return self._reply(Reply(503, "5.5.1", "Already authenticated"))  # RFC 4954 §4
        if self._tx is not None:
            return self._reply(Reply(503, "5.5.1", "AUTH not allowed during a mail transaction"))
        refused, result = self._outcome(
            self._ask("auth", mechanism=mechanism, username=username, password=password))
        if refused:
            return self._reply(refused)
        verdict = result["verdict"]
        if self._stops(verdict):
            return self._reply(self._verdict_reply(verdict))
        if result["auth"]:
            self.auth_user = username
            return self._reply(self._with_policy_text(Reply(235, "2.7.0", "Authentication successful"), verdict))
        return self._reply(Reply(535, "5.7.8", "Authentication credentials invalid"))  # RFC 4954 §6

    def mail(self, sender: str, params: Mapping[str, str | None] | None = None,
             spf: SpfResult | str | None = None) -> Reply:
        """MAIL FROM:<sender>: on_mail runs (``""`` is the null sender).

        ``spf`` is the SPF check the daemon would have made (``tx.spf``): an
        ``SpfResult``, or a result name ("pass", "fail", ...) for the sender's
        domain (the HELO name for ``""``).
        """
        self._check_open()
        if self.helo_name is None:
            return self._reply(Reply(503, "5.5.1", "Send EHLO or HELO first"))
        if self._tx is not None:
            return self._reply(Reply(503, "5.5.1", "Nested MAIL command"))
        try:
            address = Address(sender, params)
            if address.is_postmaster:
                raise ValueError(sender)
        except ValueError:
            return self._reply(Reply(501, "5.1.7", "Bad sender address syntax"))
        self._transactions += 1
        if isinstance(spf, str):
            spf = SpfResult(spf, address.domain if sender else (self.helo_name or ""))
        self._tx = {"id": f"{self.id}.{self._transactions}", "sender": str(address), "params": address.params,
                    "recipients": [], "accepted": 0, "spf": spf}
        refused, result = self._outcome(self._checked("mail", self._ask("mail")))
        verdict = result["verdict"]
        if refused or self._stops(verdict):
            self._tx = None
            return self._reply(refused or self._verdict_reply(verdict))
        self._apply_envelope(result)
        return self._reply(self._with_policy_text(Reply(250, "2.1.0", "Ok"), verdict))

    def rcpt(self, recipient: str, params: Mapping[str, str | None] | None = None) -> Reply:
        """RCPT TO:<recipient>: on_rcpt runs; discard and redirect as the daemon does them."""
        self._check_open()
        if self._tx is None:
            return self._reply(Reply(503, "5.5.1", "Need MAIL before RCPT"))
        try:
            address = Address(recipient)
            if address.is_null:
                raise ValueError(recipient)
        except ValueError:
            return self._reply(Reply(501, "5.1.3", "Bad recipient address syntax"))
        if params:
            return self._reply(Reply(555, "5.5.4", f"Unsupported parameter {next(iter(params)).upper()}"))
        relay = self.harness._relay
        # Not an open relay: decided before the policy hears of it.
        if (relay is not None and self.auth_user is None and not relay.trusts(self.client_ip)
                and not relay.is_local(address)):
            return self._reply(Reply(554, "5.7.1", "Relay access denied"))
        # Accepted RCPTs count, discarded ones too, and so does every mailbox to deliver to.
        max_recipients = self.harness.max_recipients
        if self._tx["accepted"] >= max_recipients or len(self._tx["recipients"]) >= max_recipients:
            return self._reply(Reply(452, "4.5.3", "Too many recipients"))  # RFC 5321 §4.5.3.1.8
        refused, result = self._outcome(
            self._checked("rcpt", self._ask("rcpt", rcpt=str(address), rcpt_params={})))
        if refused:
            return self._reply(refused)
        self._apply_envelope(result)  # rewrites accumulate whatever the verdict
        verdict = result["verdict"]
        if self._stops(verdict):
            return self._reply(self._verdict_reply(verdict))
        if verdict and verdict["kind"] == "discard":
            # Accepted, never delivered: the client must not learn the difference.
            self._tx["accepted"] += 1
            return self._reply(Reply(250, "2.1.5", "Ok"))
        targets = verdict["addresses"] if verdict and verdict["kind"] == "redirect" else [str(address)]
        # A mailbox is delivered once (the domain compared without case, as the daemon does).
        targets = _once(targets, known=self._tx["recipients"])
        if len(self._tx["recipients"]) + len(targets) > max_recipients:
            return self._reply(Reply(452, "4.5.3", "Too many recipients"))
        self._tx["recipients"] += targets
        self._tx["accepted"] += 1
        return self._reply(self._with_policy_text(Reply(250, "2.1.5", "Ok"), verdict))

    def data(self, message: bytes | str, dkim: Iterable[DkimSignature | tuple[str, str, str]] | None = None,
             dmarc: DmarcResult | None = None, arc: ArcResult | None = None) -> Reply:
        """DATA and the message: on_data runs; the final reply is returned (on_delivered
        and on_reset are told before, as the daemon tells them).

        ``message`` is the message itself (a ``str`` is UTF-8 encoded); line
        ends are made CRLF. ``dkim`` is the verification the daemon would
        have made (``tx.dkim``): ``DkimSignature``s or ``(result, domain,
        selector)`` tuples; ``dmarc`` its DMARC evaluation (``tx.dmarc``), a
        ``DmarcResult``; ``arc`` its ARC validation (``tx.arc``), an ``ArcResult``.
        """
        tx = self._tx
        reply = self._data(message, dkim, dmarc, arc)
        if tx is not None and self._tx is None:  # it ended, whatever the reply (not at 554: no recipients yet)
            self._end_transaction(self._ended or tx)
        self._ended = None
        return reply

    _ended: dict[str, Any] | None = None  # the envelope as delivered, for on_reset

    def _data(self, message: bytes | str, dkim: Iterable[DkimSignature | tuple[str, str, str]] | None = None,
              dmarc: DmarcResult | None = None, arc: ArcResult | None = None) -> Reply:
        """``data`` up to its reply."""
        if self._tx is not None and dkim is not None:
            self._tx["dkim"] = [d if isinstance(d, DkimSignature) else DkimSignature(*d) for d in dkim]
        if self._tx is not None and dmarc is not None:
            self._tx["dmarc"] = dmarc
        if self._tx is not None and arc is not None:
            self._tx["arc"] = arc
        self._check_open()
        if self._tx is None:
            return self._reply(Reply(503, "5.5.1", "Need MAIL before DATA"))
        if self._tx["accepted"] == 0:
            return self._reply(Reply(554, "5.5.1", "No valid recipients"))  # RFC 2920 §3.1
        raw = message.encode() if isinstance(message, str) else bytes(message)
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if raw and not raw.endswith(b"\r\n"):
            raw += b"\r\n"
        tx, self._tx = self._tx, None  # the transaction ends with this reply, whatever it is
        if b"\0" in raw:
            return self._reply(Reply(550, "5.6.0", "Message refused: NUL byte in message"))
        if raw[:1] in (b" ", b"\t"):  # (a first line that continues nothing: session.cpp)
            return self._reply(Reply(550, "5.6.0", "Message refused: its first line starts with white space"))
        if len(raw) > self.harness.max_message_size:
            return self._reply(Reply(552, "5.3.4", "Message size exceeds fixed maximum message size"))
        self._tx = tx
        try:
            refused, result = self._outcome(self._checked("data", self._ask("data", message=raw), raw))
        finally:
            self._tx = None
        if refused:
            return self._reply(refused)
        sender = result["sender"] if result["sender"] is not None else tx["sender"]
        recipients = _once(result["recipients"]) if result["recipients"] is not None else tx["recipients"]
        verdict = result["verdict"]
        if self._stops(verdict):
            return self._reply(self._verdict_reply(verdict))
        if (verdict and verdict["kind"] == "discard") or not recipients:
            return self._reply(Reply(250, "2.0.0", "Ok: discarded"))
        if result["message"] is not None:
            delivered = result["message"]
        else:  # fields put on top (or a new header section over its body), as the daemon does it
            delivered = result.get("message_prefix", b"") + raw[result.get("message_keep_from", 0):]
        delivery = Delivery(sender, tuple(recipients), delivered)
        self.delivered.append(delivery)
        self.harness.deliveries.append(delivery)
        # on_delivered: the transaction as delivered, and the upstream's 250 (the harness's upstream takes all).
        self._tx = self._ended = {**tx, "sender": sender, "recipients": list(recipients)}
        try:
            self._ask("delivered", reply=(250, "2.0.0", "Ok"))
        finally:
            self._tx = None
        return self._reply(self._with_policy_text(Reply(250, "2.0.0", "Ok"), verdict))

    def rset(self) -> Reply:
        """RSET: the transaction is dropped (on_reset is told)."""
        self._check_open()
        self._end_transaction()
        return self._reply(_ok())

    def _end_transaction(self, tx: dict[str, Any] | None = None) -> None:
        """The transaction in progress (or ``tx``, as it ended) is over: on_reset is told."""
        tx = tx if tx is not None else self._tx
        self._tx = tx
        try:
            if tx is not None:
                self._ask("reset")
        finally:
            self._tx = None

    def noop(self) -> Reply:
        """NOOP."""
        self._check_open()
        return self._reply(_ok())

    def quit(self) -> Reply:
        """QUIT: ``221``, then on_disconnect runs and the session is closed."""
        self._check_open()
        reply = self._reply(Reply(221, "2.0.0", f"{self.harness.hostname} Bye"))
        self._disconnect()
        return reply

    def close(self) -> None:
        """The client goes away without QUIT: on_disconnect runs. Does nothing if already closed."""
        if not self.closed:
            self._disconnect()

    def _disconnect(self) -> None:
        self._tx = None
        self.closed = True
        self._ask("disconnect")

    @property
    def conn(self) -> Any:
        """The ``pc.Connection`` the hooks see (while the session is open), e.g. to check ``conn.data``."""
        session = self.harness.host._sessions.get(self.id)
        return session.conn if session else None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Session {self.id} from {self.client_ip} {'closed' if self.closed else 'open'}>"
