"""The Sender Rewriting Scheme, as libsrs2 and postsrsd make and read it.

A forwarder that relays ``alice@example.com``'s mail to another domain
cannot keep her address as the envelope sender: SPF at the next hop would
fail. SRS rewrites it into an address of the forwarder's own domain that
carries the original, a day stamp and a keyed hash, so that a bounce to it
can be routed home and nobody can make the forwarder relay to an address of
their choosing::

    srs = SRS(["a long random secret"], "fwd.example.test")
    srs.forward("alice@example.com")   # 'SRS0=HHHH=TT=example.com=alice@fwd.example.test'
    srs.reverse("SRS0=HHHH=TT=example.com=alice@fwd.example.test")   # 'alice@example.com'

The forms (the "guarded" scheme of libsrs2, which postsrsd uses):

- ``SRS0=HASH=TT=domain=local@srs_domain``: HASH is the first
  ``hash_length`` characters of the base64 HMAC-SHA1, keyed with the first
  secret, of ``TT``, ``domain`` and ``local`` lowercased; TT is the day
  (days since the epoch, modulo 1024) in two base32 characters.
- ``SRS1=HASH=hop=<rest of an SRS0 local part>@srs_domain``: what a second
  forwarder makes of an SRS0 address of ``hop``, hashed over ``hop`` and
  that rest; its reverse is the SRS0 address again, to go back to ``hop``.

A sender whose local part needs quotes (``"john smith"@example.com``) is
rewritten from its unquoted form, as Postfix hands it to postsrsd, and the
SRS local part is quoted when it is not a dot-atom
(``"SRS0=HHHH=TT=example.com=john smith"@fwd.example.test``; so is one with
an address literal, ``user@[192.0.2.1]``); ``reverse`` undoes both. An SRS
address longer than RFC 5321 allows (64 octets of local part: a long sender,
as ESPs' VERP addresses are) cannot be made: ``forward`` raises ``SRSError``
and the caller keeps the original sender (``policies/aliases.py`` does).

Reading one checks the hash (case-insensitively, and treating ``+``/``-``
and ``/``/``_`` alike: the hash may have passed through systems that fold
case, and postsrsd 2 writes the URL-safe alphabet) with every secret in turn
(so a secret can be rotated: put the new one first and keep the old one
until ``max_age`` days have passed), and the day stamp against ``max_age``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable

from ._address import Address, quote_local, unquote_local

__all__ = ["SRS", "SRSError", "is_srs"]

_DAY = 24 * 60 * 60
_STAMP_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # base32: 5 bits a character, 2 characters
_STAMP_SLOTS = 1 << 10
_SEPARATORS = "=+-"  # after SRS0/SRS1; the later separators are always "="
_HASH_TEXT = re.compile(r"[A-Za-z0-9+/_-]+\Z")  # base64, either alphabet (ASCII only: compared as bytes)


class SRSError(ValueError):
    """An address that is not a valid SRS address of ours: not SRS, forged, or too old."""


def is_srs(address: str) -> bool:
    """Whether ``address`` (or its local part) has the form of an SRS address (not whether it is valid)."""
    local = unquote_local(address.rpartition("@")[0] if "@" in address else address)
    return len(local) > 5 and local[:3].upper() == "SRS" and local[3] in "01" and local[4] in _SEPARATORS


def _fold(hash_text: str) -> str:
    # What base64_equivalent() of postsrsd compares: case and the two alphabets' last characters folded.
    return hash_text.lower().replace("+", "-").replace("/", "_")


class SRS:
    """Makes and reads SRS addresses of ``domain`` with ``secrets`` (the first signs; all verify)."""

    def __init__(
        self,
        secrets: str | bytes | Iterable[str | bytes],
        domain: str,
        *,
        max_age: int = 21,
        hash_length: int = 4,
        hash_min: int | None = None,
        separator: str = "=",
        always_rewrite: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(secrets, (str, bytes)):
            secrets = [secrets]
        self._secrets = [s.encode() if isinstance(s, str) else bytes(s) for s in secrets]
        if not self._secrets or not all(self._secrets):
            raise ValueError("SRS needs at least one secret, and no empty one")
        domain = domain.strip().rstrip(".").lower()
        if not domain or "@" in domain:
            raise ValueError(f"SRS domain {domain!r}: want a domain name")
        if separator not in _SEPARATORS:
            raise ValueError(f"SRS separator {separator!r}: want one of {', '.join(_SEPARATORS)}")
        if not 1 <= hash_length <= 27:  # an HMAC-SHA1 is 160 bits: 27 base64 characters
            raise ValueError(f"SRS hash_length {hash_length}: want 1 to 27")
        hash_min = hash_length if hash_min is None else hash_min
        if not 1 <= hash_min <= hash_length:
            raise ValueError(f"SRS hash_min {hash_min}: want 1 to hash_length")
        if not 0 <= max_age < _STAMP_SLOTS:
            raise ValueError(f"SRS max_age {max_age}: want 0 to {_STAMP_SLOTS - 1} days")
        self.domain = domain
        self.max_age = max_age
        self.hash_length = hash_length
        self.hash_min = hash_min
        self.separator = separator
        self.always_rewrite = always_rewrite
        self._clock = clock

    # -- making

    def forward(self, sender: object) -> str:
        """The SRS address for ``sender`` (a ``str`` or ``pc.Address``).

        A sender of our own SRS domain is returned unchanged (unless
        ``always_rewrite``); an SRS0 or SRS1 address of another domain
        becomes an SRS1 address (the hop is kept, the original is not
        wrapped twice). A quoted local part is rewritten unquoted and the
        result quoted when it needs it. Raises ``SRSError`` for an address
        without a domain, and for one whose SRS form would not be a valid
        address (over 64 octets of local part): keep the sender as it is then.
        """
        address = str(sender)
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain:
            raise SRSError(f"{address!r} has no local part and domain to rewrite")
        if not self.always_rewrite and domain.lower().rstrip(".") == self.domain:
            return address
        local = unquote_local(local)  # the mailbox, as Postfix hands it to postsrsd
        tag = local[:4].upper()
        if len(local) > 5 and local[4] in _SEPARATORS and tag in ("SRS0", "SRS1"):
            if tag == "SRS1":
                # SRS1=HASH=hop=rest: keep hop and rest, hash them anew as ours.
                _, _, rest = local[5:].partition("=")
                hop, sep, rest = rest.partition("=")
                if not sep or not hop:
                    raise SRSError(f"{address!r} is a malformed SRS1 address")
            else:
                hop, rest = domain, local[4:]  # "=HASH=TT=domain=local": the hop is whoever made it
            return self._made(address, f"SRS1{self.separator}{self._hash(hop, rest)}={hop}={rest}")
        stamp = self._stamp(self._clock())
        return self._made(address, f"SRS0{self.separator}{self._hash(stamp, domain, local)}={stamp}={domain}={local}")

    # -- reading

    def reverse(self, address: object) -> str:
        """The address an SRS address of ours stands for: the original sender
        (from SRS0) or the SRS0 address of the previous hop (from SRS1).

        The domain of ``address`` is not checked here (the caller routes by
        it). Raises ``SRSError`` when it is not SRS, is malformed, its hash
        does not verify with any secret, or its day stamp is older than
        ``max_age`` days.
        """
        text = str(address)
        local = unquote_local(text.rpartition("@")[0] if "@" in text else text)
        if not is_srs(local):
            raise SRSError(f"{text!r} is not an SRS address")
        tag, body = local[:4].upper(), local[5:]
        if tag == "SRS1":
            given, _, rest = body.partition("=")
            hop, sep, rest = rest.partition("=")
            if not given or not sep or not hop or not rest:
                raise SRSError(f"{text!r} is a malformed SRS1 address")
            self._check_hash(text, given, hop, rest)
            return self._original(text, f"SRS0{rest}", hop)
        parts = body.split("=", 3)
        if len(parts) != 4 or not all(parts):
            raise SRSError(f"{text!r} is a malformed SRS0 address")
        given, stamp, domain, original_local = parts
        self._check_stamp(text, stamp)
        self._check_hash(text, given, stamp, domain, original_local)
        return self._original(text, original_local, domain)

    # -- the pieces

    def _made(self, sender: str, local: str) -> str:
        made = f"{quote_local(local)}@{self.domain}"
        try:
            Address(made)  # the daemon's own check: RFC 5321 syntax and lengths
        except ValueError:
            octets = len(quote_local(local).encode("utf-8", "surrogateescape"))
            why = f"{octets} octets of local part; RFC 5321 allows 64" if octets > 64 else "too long"
            raise SRSError(f"the SRS form of {sender!r} would not be a valid address ({why})") from None
        return made

    @staticmethod
    def _original(address: str, local: str, domain: str) -> str:
        original = f"{quote_local(local)}@{domain}"
        try:
            Address(original)
        except ValueError:
            raise SRSError(f"{address!r} stands for {original!r}, which is not a valid address") from None
        return original

    def _hash(self, *parts: str, secret: bytes | None = None) -> str:
        mac = hmac.new(self._secrets[0] if secret is None else secret, digestmod=hashlib.sha1)
        for part in parts:
            # libsrs2 lowercases ASCII letters only, byte by byte.
            mac.update(part.encode("utf-8", "surrogateescape").translate(_ASCII_LOWER))
        return base64.b64encode(mac.digest()).decode()[: self.hash_length]

    def _check_hash(self, address: str, given: str, *parts: str) -> None:
        if not _HASH_TEXT.match(given):  # (a client's text: compare_digest() refuses non-ASCII str)
            raise SRSError(f"{address!r}: its hash is malformed")
        if len(given) < self.hash_min:
            raise SRSError(f"{address!r}: its hash is too short")
        folded = _fold(given[: self.hash_length]).encode("ascii")
        for secret in self._secrets:
            if hmac.compare_digest(_fold(self._hash(*parts, secret=secret)[: len(folded)]).encode("ascii"), folded):
                return
        raise SRSError(f"{address!r}: its hash is not ours (forged, or made with a secret we no longer have)")

    @staticmethod
    def _stamp(now: float) -> str:
        day = int(now // _DAY)
        return _STAMP_CHARS[(day >> 5) & 31] + _STAMP_CHARS[day & 31]

    def _check_stamp(self, address: str, stamp: str) -> None:
        if len(stamp) != 2 or any(c.upper() not in _STAMP_CHARS for c in stamp):
            raise SRSError(f"{address!r}: its day stamp {stamp!r} is malformed")
        then = (_STAMP_CHARS.index(stamp[0].upper()) << 5) | _STAMP_CHARS.index(stamp[1].upper())
        today = int(self._clock() // _DAY) % _STAMP_SLOTS
        age = (today - then) % _STAMP_SLOTS  # stamps wrap every 1024 days
        if age > self.max_age:
            raise SRSError(f"{address!r} has expired ({age} days old; max_age is {self.max_age})")


_ASCII_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
