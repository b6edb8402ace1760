"""ARC (RFC 8617) for the daemon: the chain a message arrives with, verified,
and our own seal on the message as it goes upstream; dkimpy (Debian's
python3-dkim) is the engine, with its key lookups through the daemon's
resolver (``portcullis.dns``). The daemon calls these from its checks'
threads; policies read the result as ``tx.arc``."""

from __future__ import annotations

import time
from collections.abc import Callable

import dkim

from . import dns

#: Seconds one validation may spend on key lookups in all: a chain may hold
#: 50 sets (RFC 8617 §4.2.1), each naming keys of its own on slow servers.
TIME_BUDGET = 20.0


def _txt_until(deadline: float) -> Callable[..., bytes | None]:
    """dkimpy's key lookup: the first TXT record at `name`, None when there is none; past the
    deadline, a timeout without asking."""

    def txt(name: bytes | str, timeout: float = 5) -> bytes | None:
        name = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        if time.monotonic() > deadline:
            raise dns.Timeout(name, "TXT", f"over the {TIME_BUDGET:.0f} s budget of one ARC validation")
        try:
            records = dns.resolve_sync(name.rstrip("."), "TXT")
        except dns.NXDOMAIN:
            return None
        return records[0].encode() if records else None

    return txt


def verify(message: bytes) -> tuple[str, int, str, list[str]]:
    """The chain's validation (RFC 8617 §5.2): ("pass" | "fail" | "none", the number of ARC sets, why,
    the sealers' domains (d= of each ARC-Seal, the first intermediary first))."""
    try:
        cv, results, comment = dkim.arc_verify(message, dnsfunc=_txt_until(time.monotonic() + TIME_BUDGET))
    except dns.Error as e:  # a key lookup timed out or failed: the chain cannot be shown valid
        return "fail", 0, f"DNS: {e}", []
    except Exception as e:  # dkimpy on a malformed set: a broken chain
        return "fail", 0, f"{type(e).__name__}: {e}", []
    instances = max((r.get("instance", 0) for r in results), default=0)
    sealers = [r["as-domain"].decode("ascii", "replace").lower()
               for r in sorted(results, key=lambda r: r.get("instance", 0)) if r.get("as-domain")]
    if cv == dkim.CV_Pass:
        return "pass", instances, "", sealers
    if cv == dkim.CV_None and not results:
        return "none", 0, comment or "", []
    return "fail", instances, comment or "the chain did not validate", sealers


def seal(message: bytes, selector: str, domain: str, key: bytes, authserv_id: str) -> bytes:
    """Our ARC set for the message (which carries our Authentication-Results with its arc= result):
    ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results, CRLF-ended, to go on top; empty
    when dkimpy says the chain ends here (a failed chain is sealed as such)."""
    fields = dkim.arc_sign(message, selector.encode(), domain.encode(), key, authserv_id.encode())
    return b"".join(f if f.endswith(b"\r\n") else f + b"\r\n" for f in fields)
