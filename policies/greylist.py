"""Greylisting (RFC 6647): the first attempt of an unknown (client network,
sender, recipient) triplet is told to try again later; a real mail server
does, most spam engines do not.

Configure it in ``[greylist]`` (the defaults shown):

    [greylist]
    delay = 300                    # seconds before a retry of a new triplet passes
    retry_window = 172800          # a new triplet not retried within this many seconds is forgotten
    lifetime = 3024000             # a triplet that passed is known this long after its last mail (35 days)
    ipv4_prefix = 24               # clients are grouped by network: big senders retry from another address
    ipv6_prefix = 64
    networks = []                  # clients never greylisted (CIDR)
    skip_authenticated = true      # AUTH clients are never greylisted
    skip_spf_pass = false          # mail whose MAIL FROM passed SPF ([checks] spf) is not greylisted
    skip_dkim_pass = false         # mail with a passing DKIM signature is not: the decision waits for the end of DATA
    recipient_delimiter = "+"      # default: [aliases] recipient_delimiter, else "+"; "" for none

Deferred recipients get ``451 4.7.1 Greylisted, try again in N seconds``
(with ``skip_dkim_pass``, the whole message gets it at the end of DATA
unless it carries a passing signature). The sender is the one the client
gave at MAIL (not the SRS form a forwarding policy such as ``aliases.py``
puts in ``tx.sender`` at an earlier RCPT), compared without its
extension (cut at ``recipient_delimiter`` as Postfix's split_addr cuts it). Sender and recipient are compared as mailboxes: lowercased,
quotes undone (``"al\\ice"@x`` is ``alice@x``), the domain in A-labels
(``bücher.example`` is ``xn--bcher-kva.example``); ``<>`` is a sender like
any other.

List it before ``aliases.py``: it judges the recipient the client gave, and
a recipient aliases.py expands to several addresses (or an SRS bounce) is a
final ``pc.redirect`` that the policies after it never see.

The triplets live in ``pc.store`` (``[store] url``): with Redis, every
daemon sharing it knows what any of them has seen.
"""

from __future__ import annotations

import hashlib
import ipaddress

import portcullis as pc
from portcullis._address import mailbox_key
from portcullis.aliases import base_mailbox_key
from portcullis.settings import Settings, client_address, in_networks

_DEFAULTS = {"delay": 300, "retry_window": 172800, "lifetime": 3024000, "ipv4_prefix": 24, "ipv6_prefix": 64,
             "networks": [], "skip_authenticated": True, "skip_spf_pass": False, "skip_dkim_pass": False,
             "recipient_delimiter": "+"}


def _settings() -> dict:
    table = Settings("greylist", _DEFAULTS)
    limits = {"delay": (0, 86400), "retry_window": (60, 30 * 86400), "lifetime": (3600, 400 * 86400),
              "ipv4_prefix": (8, 32), "ipv6_prefix": (16, 128)}
    s = {key: table.integer(key, *bounds) for key, bounds in limits.items()}
    s.update({key: table.boolean(key) for key in ("skip_authenticated", "skip_spf_pass", "skip_dkim_pass")})
    s["networks"] = table.networks("networks")
    s["recipient_delimiter"] = table.recipient_delimiter()
    return s


SETTINGS = _settings()


def _client_network(ip: str) -> str:
    address = client_address(ip)
    prefix = SETTINGS["ipv4_prefix"] if address.version == 4 else SETTINGS["ipv6_prefix"]
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def _exempt(tx) -> bool:
    conn = tx.conn
    if SETTINGS["skip_authenticated"] and conn.auth_user is not None:
        return True
    if in_networks(conn.client_ip, SETTINGS["networks"]):
        return True
    return SETTINGS["skip_spf_pass"] and tx.spf is not None and tx.spf.result == "pass"


def _sender_key(sender) -> str:
    """The sender as a triplet holds it: its mailbox key without its extension (split on
    the unquoted local part). A plain lower-case address is its own key, as it was
    before keys were canonical: triplets stored then are still found."""
    return base_mailbox_key(sender, SETTINGS["recipient_delimiter"])


def on_mail(tx, sender):
    # The sender as the client gave it: a later policy may rewrite tx.sender (aliases.py puts
    # its SRS form there at a forwarded RCPT), and the retry of this mail must find its triplets.
    tx.data["greylist_sender"] = _sender_key(sender)
    return None


def _key(tx, rcpt) -> str:
    sender = tx.data.get("greylist_sender")
    if sender is None:  # on_mail did not run (an earlier policy decided MAIL): the first RCPT's sender
        sender = tx.data["greylist_sender"] = _sender_key(tx.sender)
    triplet = "\0".join((_client_network(tx.conn.client_ip), sender, mailbox_key(rcpt)))
    # Hashed: addresses may be longer than a store key, and the store needs no addresses in clear.
    return "greylist:" + hashlib.sha256(triplet.encode("utf-8", "surrogateescape")).hexdigest()[:32]


async def _wait(key: str) -> int:
    """Seconds the triplet must still wait (0: it passes), recording what this attempt means."""
    now = int(pc.now())
    seen = await pc.store.get(key)
    if seen == "ok":
        await pc.store.set(key, "ok", ttl=SETTINGS["lifetime"])  # known for another lifetime
        return 0
    if seen is not None and seen.isdigit():
        waited = now - int(seen)
        if waited >= SETTINGS["delay"]:
            await pc.store.set(key, "ok", ttl=SETTINGS["lifetime"])
            return 0
        return SETTINGS["delay"] - waited
    await pc.store.set(key, str(now), ttl=SETTINGS["retry_window"] + SETTINGS["delay"])
    return SETTINGS["delay"]


def _greylisted(seconds: int):
    return pc.tempfail(f"Greylisted, try again in {max(seconds, 1)} seconds", code=451, status="4.7.1")


async def _on_rcpt(tx, rcpt):
    if SETTINGS["delay"] == 0 or _exempt(tx):
        return None
    key = _key(tx, rcpt)
    wait = await _wait(key)
    if wait and SETTINGS["skip_dkim_pass"]:
        tx.data.setdefault("greylist_wait", []).append((key, wait))
        return None  # decided at the end of DATA, when DKIM is known
    return _greylisted(wait) if wait else None


async def _on_data(tx, message):
    waits = tx.data.get("greylist_wait")
    if not waits:
        return None
    if any(signature.result == "pass" for signature in tx.dkim or ()):
        for key, _ in waits:  # known from now on, as if it had retried
            await pc.store.set(key, "ok", ttl=SETTINGS["lifetime"])
        return None
    return _greylisted(max(wait for _, wait in waits))


if pc.store.in_memory():
    # The memory store answers at once: plain hooks, no trip to the event loop.
    def on_rcpt(tx, rcpt):
        return pc.store.run_at_once(_on_rcpt(tx, rcpt))

    def on_data(tx, message):
        return pc.store.run_at_once(_on_data(tx, message))
else:
    on_rcpt, on_data = _on_rcpt, _on_data
