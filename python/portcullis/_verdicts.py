"""Verdicts: what a hook returns to decide a stage. A verdict is a value; C++ writes the reply."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from ._address import Address

VerdictKind = Literal["accept", "reject", "tempfail", "discard", "redirect", "rewrite"]

#: RFC 5321 §4.5.3.1.5: a reply line, code and CRLF included, is at most 512 octets.
MAX_REPLY_LINE = 512

# RFC 5321 §4.2: three digits, the first 2-5, the second 0-5.
_REPLY_CODE = re.compile(r"[2-5][0-5][0-9]\Z")
# RFC 3463 §2: class "." subject "." detail, subject and detail 1-3 digits.
_ENHANCED_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z")

#: Which stages each kind of verdict may decide (docs/policy-api.md, "Verdicts").
STAGES_ALLOWED: dict[str, frozenset[str]] = {
    "accept": frozenset({"connect", "helo", "auth", "mail", "rcpt", "data"}),
    "reject": frozenset({"connect", "helo", "auth", "mail", "rcpt", "data"}),
    "tempfail": frozenset({"connect", "helo", "auth", "mail", "rcpt", "data"}),
    "discard": frozenset({"rcpt", "data"}),
    "redirect": frozenset({"rcpt"}),
    "rewrite": frozenset({"rcpt"}),  # not final: the next policies decide on the new recipient
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """An immutable verdict. Make one with ``accept``, ``reject``, ``tempfail``,
    ``discard`` or ``redirect``; it is validated when it is made (``ValueError``).

    ``code`` and ``status`` are None where the stage decides them (``accept``,
    ``discard``, ``redirect``: the daemon's usual positive reply, e.g.
    ``250 2.1.5`` at RCPT). ``text`` None means the daemon's own text.
    ``addresses`` is set for ``redirect`` (the targets) and ``rewrite`` (one address) only.
    """

    kind: VerdictKind
    code: int | None = None
    status: str | None = None
    text: str | None = None
    addresses: tuple[Address, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in STAGES_ALLOWED:
            raise ValueError(f"unknown verdict kind {self.kind!r}")
        if self.kind in ("reject", "tempfail"):
            _check_reply(self.kind, self.code, self.status, self.text)
        else:
            if self.code is not None or self.status is not None:
                raise ValueError(f"{self.kind} takes no code or status: the stage decides them")
            if self.text is not None:
                if self.kind != "accept":
                    raise ValueError(f"{self.kind} takes no text")
                _check_text(self.text, "250 2.0.0 ")
        if self.kind in ("redirect", "rewrite"):
            if not self.addresses or (self.kind == "rewrite" and len(self.addresses) != 1):
                raise ValueError("redirect needs at least one address" if self.kind == "redirect"
                                 else "rewrite takes one address")
            for a in self.addresses:
                if not isinstance(a, Address) or a.is_null:
                    raise ValueError(f"{self.kind} addresses must be non-null pc.Address values")
        elif self.addresses:
            raise ValueError(f"{self.kind} takes no addresses")

    def allowed_at(self, stage: str) -> bool:
        """Whether this verdict may decide ``stage`` (discard: rcpt/data; redirect: rcpt)."""
        return stage in STAGES_ALLOWED[self.kind]

    def __repr__(self) -> str:
        if self.kind in ("reject", "tempfail"):
            return f"{self.kind}({self.text!r}, code={self.code}, status={self.status!r})"
        if self.kind in ("redirect", "rewrite"):
            return f"{self.kind}(" + ", ".join(repr(str(a)) for a in self.addresses) + ")"
        if self.kind == "accept" and self.text is not None:
            return f"accept({self.text!r})"
        return f"{self.kind}()"


def _check_reply(kind: str, code: object, status: object, text: object) -> None:
    want = "5" if kind == "reject" else "4"
    if isinstance(code, bool) or not isinstance(code, int) or not _REPLY_CODE.match(str(code)) or str(code)[0] != want:
        raise ValueError(f"{kind} needs a {want}xx reply code (RFC 5321 §4.2), not {code!r}")
    if not isinstance(status, str) or not _ENHANCED_STATUS.match(status) or status[0] != want:
        raise ValueError(f"{kind} needs an enhanced status {want}.x.x (RFC 3463), not {status!r}")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{kind} needs a reply text")
    _check_text(text, f"{code} {status} ")


def _check_text(text: object, prefix: str) -> None:
    if not isinstance(text, str):
        raise ValueError(f"reply text must be a str, not {type(text).__name__}")
    # isprintable() refuses CR, LF, NUL, every other control character and
    # lone surrogates: nothing that could end or forge a reply line.
    if not text.isprintable():
        raise ValueError(f"reply text must be printable, without CR, LF or NUL: {text[:80]!r}")
    length = len(prefix.encode()) + len(text.encode()) + 2  # + CRLF
    if length > MAX_REPLY_LINE:
        raise ValueError(f"reply text too long: the line would be {length} octets, at most {MAX_REPLY_LINE}")


def accept(text: str | None = None) -> Verdict:
    """Accept at this stage; later policies are not asked. ``text`` replaces the reply text."""
    return _ACCEPT if text is None else Verdict("accept", text=text)


def reject(text: str, code: int = 550, status: str = "5.7.1") -> Verdict:
    """Refuse permanently: the client gets ``code status text`` exactly (5xx, 5.x.x)."""
    return Verdict("reject", code=code, status=status, text=text)


def tempfail(text: str, code: int = 451, status: str = "4.7.1") -> Verdict:
    """Refuse for now: the client gets ``code status text`` exactly (4xx, 4.x.x) and retries later."""
    return Verdict("tempfail", code=code, status=status, text=text)


def discard() -> Verdict:
    """Accept but deliver nothing: in on_rcpt that recipient, in on_data the whole message."""
    return _DISCARD


# A verdict is a value: the ones that take no argument are made once.
_ACCEPT, _DISCARD = Verdict("accept"), Verdict("discard")


def rewrite(address: Address | str) -> Verdict:
    """on_rcpt only: the recipient becomes ``address``, and the policies after this
    one (and the upstream) decide on it; not final, unlike ``redirect``."""
    parsed = address if isinstance(address, Address) else Address(address)
    if parsed.is_null:
        raise ValueError("cannot rewrite to the null address <>")
    return Verdict("rewrite", addresses=(parsed,))


def redirect(*addresses: Address | str) -> Verdict:
    """on_rcpt only: accept the recipient and deliver to ``addresses`` instead."""
    parsed = []
    for a in addresses:
        address = a if isinstance(a, Address) else Address(a)
        if address.is_null:
            raise ValueError("cannot redirect to the null address <>")
        parsed.append(address)
    return Verdict("redirect", addresses=tuple(parsed))
