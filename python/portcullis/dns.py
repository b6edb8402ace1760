"""DNS lookups for policies (``pc.dns``), through the daemon's own resolver.

The daemon's SPF, DKIM and DMARC checks ask the same resolver: one
nameserver (``[dns] nameserver``), one timeout (``[dns] timeout``) and one
cache by TTL, so a policy needs no resolver of its own::

    import portcullis as pc

    async def on_rcpt(tx, rcpt):
        try:
            listed = await pc.dns.resolve(f"{reversed_ip}.zen.example", "A")
        except pc.dns.NXDOMAIN:
            listed = []

    def on_mail(tx, sender):             # a plain hook: the blocking twin
        mx = pc.dns.resolve_sync(sender.domain, "MX")

``resolve`` and ``resolve_sync`` return a list: addresses as text for ``A``
and ``AAAA``, host names (no final dot) for ``PTR``, ``(preference, host)``
sorted by preference for ``MX``, and for ``TXT`` each record's strings
joined (bytes that are not UTF-8 survive as surrogates). A name that exists
without records of the type gives ``[]``. They raise ``NXDOMAIN`` (no such
name, or a name that cannot exist), ``Timeout`` (no answer within ``[dns]
timeout``) or ``Failure`` (SERVFAIL, REFUSED, ...); all three are ``Error``.

Outside the daemon (policy unit tests) the system resolver is used, or the
nameserver given to ``configure``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import weakref
from typing import Any

import _portcullis_core as _core

__all__ = ["Error", "Failure", "NXDOMAIN", "Timeout", "configure", "resolve", "resolve_sync"]

TYPES = ("A", "AAAA", "MX", "TXT", "PTR")


class Error(Exception):
    """A lookup that gave no records: ``name`` and ``type`` say which."""

    def __init__(self, name: str, type: str, detail: str = "") -> None:
        self.name, self.type, self.detail = name, type, detail
        super().__init__(f"{type} {name}: {self.what}" + (f" ({detail})" if detail else ""))

    what = "lookup failed"


class NXDOMAIN(Error):
    """The name does not exist."""

    what = "no such name"


class Timeout(Error):
    """No answer within ``[dns] timeout``."""

    what = "timed out"


class Failure(Error):
    """The nameserver failed (SERVFAIL, REFUSED) or its answer was unusable."""

    what = "failed"


def configure(nameserver: str = "", timeout: float = 5.0) -> None:
    """Outside the daemon: the nameserver (``"IP:PORT"``; ``""``: /etc/resolv.conf) and timeout to use.

    In the daemon, ``[dns]`` decides and this is not needed.
    """
    _core.dns_configure(nameserver, timeout)


def _checked_type(type: str) -> str:
    upper = type.upper()
    if upper not in TYPES:
        raise ValueError(f"unsupported record type {type!r} (one of {', '.join(TYPES)})")
    return upper


def _records(name: str, type: str, answer: tuple[str, list[Any], int, str]) -> list[Any]:
    status, records, _ttl, error = answer
    if status == "ok":
        return records
    if status == "nxdomain":
        raise NXDOMAIN(name, type)
    if status == "timeout":
        raise Timeout(name, type, error)
    raise Failure(name, type, error)


def resolve_sync(name: str, type: str = "A") -> list[Any]:
    """The records of ``type`` at ``name``; blocks this thread (other sessions go on)."""
    type = _checked_type(type)
    return _records(name, type, _core.dns_lookup_sync(name, type))


# Async lookups: the answers wait in the core's queue and its eventfd wakes
# the loops that asked (each watches it while it has lookups out).
_tokens = itertools.count(1)
_waiting: dict[int, tuple[asyncio.Future[Any], str, str]] = {}
_watching: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def _take_answers() -> None:
    try:
        os.read(_core.dns_wakeup_fd(), 8)  # reset it first: an answer after this read writes it again
    except (BlockingIOError, InterruptedError):
        pass
    for token, answer in _core.dns_take():
        waiting = _waiting.pop(token, None)
        if waiting is None:
            continue
        future, name, type = waiting
        loop = future.get_loop()
        if loop.is_closed():
            continue
        try:
            outcome: Any = _records(name, type, answer)
        except Error as e:
            outcome = e
        loop.call_soon_threadsafe(_settle, future, outcome)
    for loop in list(_watching):
        if not loop.is_closed() and not any(f.get_loop() is loop for f, _, _ in _waiting.values()):
            loop.remove_reader(_core.dns_wakeup_fd())
            _watching.discard(loop)


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():
        return  # cancelled meanwhile (the hook timed out)
    if isinstance(outcome, Error):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


async def resolve(name: str, type: str = "A") -> list[Any]:
    """The records of ``type`` at ``name``, without blocking the event loop."""
    type = _checked_type(type)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    token = next(_tokens)
    _waiting[token] = (future, name, type)
    if loop not in _watching:
        loop.add_reader(_core.dns_wakeup_fd(), _take_answers)
        _watching.add(loop)
    try:
        _core.dns_lookup(name, type, token)
    except BaseException:
        _waiting.pop(token, None)
        raise
    try:
        return await future
    finally:
        _waiting.pop(token, None)
