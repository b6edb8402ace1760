"""Portcullis policies: the API a policy file imports (``import portcullis as pc``).

A policy is a Python file with any of the hooks ``on_connect(conn)``,
``on_helo(conn, hostname)``, ``on_auth(conn, mechanism, username, password)``,
``on_mail(tx, sender)``, ``on_rcpt(tx, rcpt)``, ``on_data(tx, message)`` and
``on_disconnect(conn)``, each a plain function or an ``async def``. A hook
returns None (let the next policy decide) or a verdict: ``accept``,
``reject``, ``tempfail``, ``discard`` or ``redirect``.

``dns`` looks names up through the daemon's resolver (``await
pc.dns.resolve(name, "TXT")``, ``pc.dns.resolve_sync`` in plain hooks).

``config`` is the daemon's whole config file as a dict (a policy reads its
own table: ``pc.config["aliases"]``); ``log`` is a ``logging.Logger`` whose
lines carry the id of the session whose hook logged them.

See docs/policy-api.md for the hook order, what each object offers and how
errors are handled; ``portcullis.testing`` runs policies in a unit test.
"""

from __future__ import annotations

from typing import Any

from . import dns
from ._address import Address, AddressList
from ._log import log
from ._message import Message
from ._objects import ArcResult, Connection, DkimSignature, DmarcResult, SpfResult, Transaction
from ._verdicts import Verdict, accept, discard, redirect, reject, tempfail

__version__ = "0.1.0"

__all__ = [
    "Address",
    "AddressList",
    "ArcResult",
    "Connection",
    "DkimSignature",
    "DmarcResult",
    "Message",
    "SpfResult",
    "Transaction",
    "Verdict",
    "accept",
    "config",
    "discard",
    "dns",
    "log",
    "redirect",
    "reject",
    "tempfail",
]

# ``config`` is looked up on every access (PEP 562): inside a hook, or while
# a policy module loads, it is the config of that engine generation, so after
# a SIGHUP reload sessions still on the old policies see the old config.
config: dict[str, Any]


def __getattr__(name: str) -> Any:
    if name == "config":
        from . import _context

        return _context.current_config()
    raise AttributeError(f"module 'portcullis' has no attribute {name!r}")
