"""``portcullis.Address``: an envelope address (RFC 5321 §4.1.2), parsed by the C++ core."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import SupportsIndex, overload

import _portcullis_core as _core

# RFC 5321 §4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
# esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 under SMTPUTF8 (RFC 6531 §3.3):
# no space, no "=", no control character.
_ESMTP_VALUE = re.compile(r"[^\x00-\x20=\x7f]+\Z")


class Address:
    """An envelope address: ``local@domain``, or the null sender ``""`` (``MAIL FROM:<>``).

    ``Address("x@y")`` parses with the daemon's own parser (RFC 5321 syntax and
    lengths, SMTPUTF8 allowed) and raises ``ValueError`` on bad syntax: no angle
    brackets, no display names, no CR/LF/NUL. ``Address("")`` is the null
    sender; it is falsy, so ``if not sender:`` tests for ``<>``.
    ``Address("Postmaster")`` (any case, no domain) is valid as a recipient
    only (RFC 5321 §4.1.1.3): its ``domain`` is ``""`` and ``str()`` gives it back.

    ``params`` are the ESMTP parameters given with the address (``SIZE``,
    ``BODY``...): keyword (upper-cased) -> value, or None for a keyword
    without value. Equality and hashing use the address only (the domain
    compared case-insensitively, the local part exactly), not the parameters;
    an ``Address`` never equals a ``str``: compare ``str(a)``.
    """

    __slots__ = ("_local", "_domain", "_params")

    _local: str
    _domain: str
    _params: dict[str, str | None]

    def __init__(self, address: str | Address, params: Mapping[str, str | None] | None = None) -> None:
        if isinstance(address, Address):
            self._local, self._domain = address._local, address._domain
            if params is None:
                params = address._params
        elif not isinstance(address, str):
            raise TypeError(f"an address is a str, not {type(address).__name__}")
        elif address == "":
            self._local = self._domain = ""
        elif address.lower() == "postmaster":
            # RFC 5321 §4.1.1.3: "RCPT TO:<Postmaster>" without a domain is valid.
            self._local, self._domain = address, ""
        else:
            self._local, self._domain = _core.parse_address(address)
        self._params = _checked_params(params) if params else {}

    @property
    def local(self) -> str:
        """The local part (before the last ``@``), quotes kept; ``""`` for the null sender."""
        return self._local

    @property
    def domain(self) -> str:
        """The domain or address literal (``[192.0.2.1]``); ``""`` for the null sender."""
        return self._domain

    @property
    def params(self) -> dict[str, str | None]:
        """The ESMTP parameters: keyword -> value or None. A copy: changing it changes nothing."""
        return dict(self._params)

    @property
    def is_postmaster(self) -> bool:
        """True for the domain-less ``Postmaster`` recipient."""
        return bool(self._local) and not self._domain

    @property
    def is_null(self) -> bool:
        """True for the null sender ``<>``."""
        return not self._local and not self._domain

    def __str__(self) -> str:
        return self._local if not self._domain else f"{self._local}@{self._domain}"

    def __repr__(self) -> str:
        if self._params:
            return f"Address({str(self)!r}, params={self._params!r})"
        return f"Address({str(self)!r})"

    def __bool__(self) -> bool:
        return not self.is_null

    def _key(self) -> tuple[str, str]:
        # RFC 5321 §2.4: the local part may be case-sensitive; domains are not.
        if not self._domain:  # "" or Postmaster, which is case-insensitive
            return (self._local.lower(), "")
        return (self._local, self._domain.lower())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Address):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


# -- mailbox keys: the one form tables are looked up with

# RFC 5321 §4.1.2 Dot-string (atext, dots between atoms), with UTF-8 as atext (RFC 6531 §3.3).
_DOT_STRING = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
                         r"(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+)*\Z")
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)


def unquote_local(local: str) -> str:
    """The mailbox a local part names, quotes and backslash escapes removed: ``"ceo"`` and
    ``"c\\eo"`` are ``ceo`` (RFC 5321 §4.1.2: a Quoted-string and the Dot-string it
    spells are the same local part). Postfix's internal form: the form it looks tables
    up with and hands postsrsd. A Dot-string comes back as it is."""
    if len(local) >= 2 and local[0] == '"' and local[-1] == '"':
        return _QUOTED_PAIR.sub(r"\1", local[1:-1])
    return local


def quote_local(local: str) -> str:
    """The written form of an unquoted local part: as it is when it is a Dot-string,
    else a Quoted-string (``john smith`` -> ``"john smith"``); ``unquote_local`` undoes it."""
    if _DOT_STRING.match(local):
        return local
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=4096)  # asked for every address of every command: a domain is converted once
def canonical_domain(domain: str) -> str:
    """A domain in the one form tables are keyed with: lowercased, no trailing dot, and
    an internationalized name in A-labels (``bücher.example`` -> ``xn--bcher-kva.example``,
    RFC 5890: the same name either way), converted as the daemon's SPF and DMARC checks
    convert it (libidn2: IDNA 2008 with UTS #46 non-transitional mapping, so ``straße.de``
    is ``xn--strae-oqa.de``, never ``strasse.de``, another domain). A name IDNA 2008
    refuses, and an address literal (``[192.0.2.1]``), is only lowercased: it matches
    only itself."""
    domain = domain.rstrip(".").lower()
    if domain.isascii():
        return domain
    converted = _core.a_label_domain(domain)
    # (Again once mapped: a full-width or ideographic dot, U+FF0E or U+3002, at the end maps to
    # one, and "example.test。" was another domain than example.test: an unauthenticated
    # client sent as a local domain past senders.py, while the relay guard called it local.)
    return converted.lower().rstrip(".") if converted is not None else domain


def mailbox_key(address: object) -> str:
    """The key an address (a ``str`` or an ``Address``) is looked up with in a table:
    ``unquote_local(local).lower() + "@" + canonical_domain(domain)``, so that every
    spelling of one mailbox (``"Ceo"@Partner.example``, ``c\\eo``, U- or A-label domain)
    finds the same entry, and ``@domain`` for a catch-all key. A text without ``@`` is
    lowercased only."""
    return _text_key(str(address))


@functools.lru_cache(maxsize=4096)  # (mailbox_key's work, once per spelling of an address)
def _text_key(text: str) -> str:
    local, at, domain = text.rpartition("@")
    if not at:
        return text.lower()
    return f"{unquote_local(local).lower()}@{canonical_domain(domain)}"


def _checked_params(params: Mapping[str, str | None]) -> dict[str, str | None]:
    checked: dict[str, str | None] = {}
    for key, value in params.items():
        if not isinstance(key, str) or not _ESMTP_KEYWORD.match(key):
            raise ValueError(f"invalid ESMTP parameter keyword: {key!r}")
        if value is not None and (not isinstance(value, str) or not _ESMTP_VALUE.match(value)):
            raise ValueError(f"invalid value for ESMTP parameter {key}: {value!r}")
        checked[key.upper()] = value
    return checked


def as_sender(value: object) -> Address:
    """``value`` (a str or an Address) as an envelope sender: ``<>`` or ``local@domain``."""
    address = value if isinstance(value, Address) else Address(value)  # type: ignore[arg-type]
    if address.is_postmaster:
        raise ValueError("a sender needs a domain (Postmaster alone is for RCPT only)")
    return address


def as_recipient(value: object) -> Address:
    """``value`` (a str or an Address) as a deliverable address; never the null address."""
    address = value if isinstance(value, Address) else Address(value)  # type: ignore[arg-type]
    if address.is_null:
        raise ValueError("a recipient cannot be the null address <>")
    return address


class AddressList(list[Address]):
    """The list behind ``tx.recipients``: a plain list of ``Address`` that checks on the way in.

    Every way of putting something in (``append``, ``insert``, ``extend``,
    ``+=``, item and slice assignment) turns a ``str`` into an ``Address`` and
    raises ``ValueError`` for bad syntax or the null address, so a bad rewrite
    fails at the line of the hook that made it.
    """

    def __init__(self, items: Iterable[Address | str] = ()) -> None:
        super().__init__(as_recipient(item) for item in items)

    def append(self, item: Address | str) -> None:
        super().append(as_recipient(item))

    def insert(self, index: SupportsIndex, item: Address | str) -> None:
        super().insert(index, as_recipient(item))

    def extend(self, items: Iterable[Address | str]) -> None:
        super().extend([as_recipient(item) for item in items])

    def __iadd__(self, items: Iterable[Address | str]) -> AddressList:  # type: ignore[override, misc]
        self.extend(items)
        return self

    @overload
    def __setitem__(self, index: SupportsIndex, item: Address | str) -> None: ...
    @overload
    def __setitem__(self, index: slice, item: Iterable[Address | str]) -> None: ...
    def __setitem__(self, index, item):  # type: ignore[no-untyped-def]
        if isinstance(index, slice):
            super().__setitem__(index, [as_recipient(i) for i in item])
        else:
            super().__setitem__(index, as_recipient(item))
