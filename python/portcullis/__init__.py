"""Portcullis policies: the API a policy file imports (``import portcullis as pc``).

A policy is a Python file with any of the hooks ``on_connect(conn)``,
``on_helo(conn, hostname)``, ``on_auth(conn, mechanism, username, password)``,
``on_mail(tx, sender)``, ``on_rcpt(tx, rcpt)``, ``on_data(tx, message)``,
``on_delivered(tx, reply)``, ``on_reset(tx)`` and ``on_disconnect(conn)``
(notifications), and
``on_unload()``, each a plain function or an ``async def``. A hook
returns None (let the next policy decide) or a verdict: ``accept``,
``reject``, ``tempfail``, ``discard``, ``redirect`` or (not final)
``rewrite``.

``dns`` looks names up through the daemon's resolver (``await
pc.dns.resolve(name, "TXT")``, ``pc.dns.resolve_sync`` in plain hooks).
``store`` keeps state between connections, shared by the worker processes
(and with Redis by several daemons): ``await pc.store.incr(key, ttl=60)``.
``metrics`` declares the policy's own Prometheus counters, gauges and
histograms, served with the daemon's on ``[metrics] listen``.

``config`` is the daemon's whole config file as a dict (a policy reads its
own table: ``pc.config["aliases"]``); ``path(name)`` resolves a file name
from it as the daemon resolves its own (relative to the config file's
folder, ``config_dir``); ``log`` is a ``logging.Logger`` whose lines carry
the id of the session whose hook logged them.

See docs/policy-api.md for the hook order, what each object offers and how
errors are handled; ``portcullis.testing`` runs policies in a unit test.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import _context, dns, metrics, store
from ._address import Address, AddressList
from ._engine import PolicyLoadError
from ._log import log
from ._message import Message
from ._objects import ArcResult, Connection, DkimSignature, DmarcResult, SpfResult, Transaction, UpstreamReply
from ._verdicts import Verdict, accept, discard, redirect, reject, rewrite, tempfail

__version__ = "0.1.0"

__all__ = [
    "Address",
    "AddressList",
    "ArcResult",
    "Connection",
    "DkimSignature",
    "DmarcResult",
    "Message",
    "PolicyLoadError",
    "SpfResult",
    "Transaction",
    "UpstreamReply",
    "Verdict",
    "accept",
    "config",
    "config_dir",
    "discard",
    "dns",
    "log",
    "metrics",
    "now",
    "path",
    "redirect",
    "reject",
    "rewrite",
    "store",
    "tempfail",
]

# ``config`` is looked up on every access (PEP 562): inside a hook, or while
# a policy module loads, it is the config of that engine generation, so after
# a SIGHUP reload sessions still on the old policies see the old config.
config: dict[str, Any]
config_dir: Path


def now() -> float:
    """Seconds since the epoch, as ``time.time()``; a test may set the clock
    (``portcullis.testing.Harness(clock=...)``), so policies read time here."""
    return _context.clock()


def path(name: str | os.PathLike[str]) -> Path:
    """``name`` (a file named in the config) as an absolute path: relative to
    the config file's folder, as the daemon reads its own paths."""
    return _context.config_folder() / Path(name)


def __getattr__(name: str) -> Any:
    if name == "config":
        return _context.current_config()
    if name == "config_dir":
        return _context.config_folder()
    raise AttributeError(f"module 'portcullis' has no attribute {name!r}")
