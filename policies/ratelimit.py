"""Rate limits: messages and recipients per client address, per login and
per sender, over a sliding window.

Configure it in ``[ratelimit]`` (the defaults shown; a limit of 0 is off):

    [ratelimit]
    window = 3600                  # seconds
    messages_per_client = 0        # transactions (MAIL) per client address
    recipients_per_client = 0      # accepted recipients per client address
    messages_per_login = 0         # per AUTH login
    recipients_per_login = 0
    messages_per_sender = 0        # per envelope sender (as a mailbox without its +extension; <> is not limited)
    recipients_per_sender = 0
    recipient_delimiter = "+"      # default: [aliases] recipient_delimiter, else "+"; "" for none
    ipv6_prefix = 64               # IPv6 clients are counted by network
    networks = []                  # clients never limited (CIDR)

Past a limit, MAIL (for messages) or RCPT (for recipients) gets ``450
4.7.1 Rate limit reached for <what>; try again in N seconds``: the client
keeps the mail and retries. The sender is the one the client gave at MAIL
(not the SRS form a forwarding policy such as ``aliases.py`` puts in
``tx.sender`` at an earlier RCPT), counted as a mailbox: lowercased, quotes
undone (``"al\\ice"@x`` is ``alice@x``), the domain in A-labels, and
without its extension (``alice+1@x`` is ``alice@x``; split as aliases.py
splits a recipient, on ``recipient_delimiter``), so that no other spelling
of one address escapes its limit. Counting happens when
the command is let through (a MAIL or RCPT refused here does not count; one
refused later by another policy or the upstream does).

List it before ``aliases.py``: it counts the recipients the client gave,
and a recipient aliases.py expands to several addresses (or an SRS bounce)
is a final ``pc.redirect`` that the policies after it never see.

The window slides: each limit keeps a counter for this window and the one
before, and weighs the one before by how much of it still falls in the last
``window`` seconds (the approximation Redis rate limiters use). Counters
live in ``pc.store``: with Redis, the limits hold across every daemon that
shares it.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress

import portcullis as pc
from portcullis._address import mailbox_key, quote_local
from portcullis.aliases import base_mailbox_key
from portcullis.settings import Settings, client_address

_LIMITS = ("messages_per_client", "recipients_per_client", "messages_per_login", "recipients_per_login",
           "messages_per_sender", "recipients_per_sender")
_DEFAULTS = {"window": 3600, "ipv6_prefix": 64, "networks": [], "recipient_delimiter": "+", **{k: 0 for k in _LIMITS}}


def _settings() -> dict:
    table = Settings("ratelimit", _DEFAULTS)
    s = {"window": table.integer("window", 1, 30 * 86400), "ipv6_prefix": table.integer("ipv6_prefix", 16, 128),
         "networks": table.networks("networks")}
    s.update({key: table.integer(key, 0, 10**9) for key in _LIMITS})
    s["recipient_delimiter"] = table.recipient_delimiter()
    return s


SETTINGS = _settings()


@functools.lru_cache(maxsize=4096)  # asked at every MAIL and RCPT: the address parsed once per client
def _client_shown(ip: str) -> str | None:
    """The client (``conn.client_ip``) as its limits name it: its address, or its IPv6
    network; None for a client of ``networks``, never limited."""
    client = client_address(ip)
    if any(client in network for network in SETTINGS["networks"]):
        return None
    if client.version == 4:
        return str(client)
    return str(ipaddress.ip_network(f"{client}/{SETTINGS['ipv6_prefix']}", strict=False))


# Each unit's limits, (per client, per login, per sender), read once.
_UNIT_LIMITS = {unit: tuple(SETTINGS[f"{unit}_per_{who}"] for who in ("client", "login", "sender"))
                for unit in ("messages", "recipients")}


def _sender_key(sender) -> str:
    """The sender as its limits count it: its mailbox key without its extension, so that
    alice+1@, alice+2@... share alice@'s counter (as greylist.py's triplets do). A plain
    lower-case address without extension is its own key, as before keys were canonical."""
    return base_mailbox_key(sender, SETTINGS["recipient_delimiter"])


def _sender(tx) -> str:
    """The sender the limits count ("" for <>): the one on_mail recorded."""
    sender = tx.data.get("ratelimit_sender")
    if sender is None:  # on_mail did not run (an earlier policy decided MAIL)
        sender = tx.data["ratelimit_sender"] = _sender_key(tx.sender)
    return sender


def _shown(key: str) -> str:
    """A mailbox key as an address again (its local part quoted if it needs it)."""
    local, _, domain = key.rpartition("@")
    return f"{quote_local(local)}@{domain}"


def _subjects(tx, unit: str) -> list[tuple[str, str, int]]:
    """(store key part, what the reply names, limit) for each limit on ``unit`` that applies."""
    conn = tx.conn
    out: list[tuple[str, str, int]] = []
    client = _client_shown(conn.client_ip)
    if client is None:
        return out
    per_client, per_login, per_sender = _UNIT_LIMITS[unit]
    if per_client:
        out.append((f"client:{client}", f"client {client}", per_client))
    if per_login and conn.auth_user is not None:
        out.append((f"login:{conn.auth_user.lower()}", f"login {conn.auth_user}", per_login))
    if per_sender:
        sender = _sender(tx)
        if sender:  # <> is not limited
            # A plain lower-case address is its own key, as before keys were canonical.
            out.append((f"sender:{sender}", f"sender <{_shown(sender)}>", per_sender))
    return out


@functools.lru_cache(maxsize=4096)  # a subject is counted at every MAIL or RCPT of a window
def _store_keys(unit: str, subject: str, bucket: int) -> tuple[str, str]:
    """The store keys of ``subject``'s counters for window ``bucket`` and the one before."""
    digest = hashlib.sha256(subject.encode("utf-8", "surrogateescape")).hexdigest()[:32]  # any length, one key size
    return f"ratelimit:{unit}:{digest}:{bucket}", f"ratelimit:{unit}:{digest}:{bucket - 1}"


async def _check_and_count(tx, unit: str):
    window = SETTINGS["window"]
    bucket, into = divmod(pc.now(), window)
    bucket = int(bucket)
    counted: list[str] = []
    for subject, shown, limit in _subjects(tx, unit):
        # Counted first, then checked: two workers at the limit at once cannot both pass.
        key, key_before = _store_keys(unit, subject, bucket)
        current = await pc.store.incr(key, ttl=2 * window + 60)
        counted.append(key)
        previous = int(await pc.store.get(key_before) or 0)
        if previous * (1 - into / window) + current <= limit:
            continue
        for key in counted:  # refused: this attempt does not count
            # With the counter's ttl: a counter gone meanwhile (evicted from a full memory
            # store) is made again at -1, and must not then live forever.
            await pc.store.incr(key, ttl=2 * window + 60, by=-1)
        # When enough of the previous window has slid out. If this one alone is full, that is
        # in the next one, where this one's count (less this attempt) is the previous and the
        # attempt the first: (current - 1) * (1 - f) + 1 <= limit, f its part gone by.
        if current <= limit and previous:
            wait = window * (1 - (limit - current) / previous) - into
        elif current > limit and current > 1:
            wait = (window - into) + window * (1 - (limit - 1) / (current - 1))
        else:
            wait = window - into
        return pc.tempfail(f"Rate limit reached for {shown} ({limit} {unit} per {window} s); "
                           f"try again in {max(1, int(wait + 0.999))} seconds", code=450, status="4.7.1")
    return None


def _record_sender(tx, sender) -> None:
    # The sender as the client gave it: a later policy may rewrite tx.sender (aliases.py puts
    # its SRS form there at a forwarded RCPT), and one sender must stay one counter.
    tx.data["ratelimit_sender"] = _sender_key(sender)


if pc.store.in_memory():
    # The memory store answers at once: plain hooks, no trip to the event loop.
    def on_mail(tx, sender):
        _record_sender(tx, sender)
        return pc.store.run_at_once(_check_and_count(tx, "messages"))

    def on_rcpt(tx, rcpt):
        return pc.store.run_at_once(_check_and_count(tx, "recipients"))
else:
    async def on_mail(tx, sender):
        _record_sender(tx, sender)
        return await _check_and_count(tx, "messages")

    async def on_rcpt(tx, rcpt):
        return await _check_and_count(tx, "recipients")
