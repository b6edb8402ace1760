"""Who may send as whom: Postfix ``smtpd_sender_login_maps`` tables.

Each line of the file names a sender and the logins (AUTH user names) that
own it::

    alice@example.test       alice
    sales@example.test       alice, bob
    @example.org             carol                 (any address of the domain)

``SenderLogins.owners(address)`` looks an address up as Postfix does: as
it is, then without its extension (``alice+tag@`` as ``alice@``), then as
``@domain``. ``owns(login, address)`` compares logins case-insensitively.
Addresses are compared as mailboxes (``mailbox_key``): ``"ceo"@``, ``c\\eo``
in quotes and ``ceo@`` are one sender (RFC 5321 §4.1.2; Postfix unquotes
before every lookup), and an internationalized domain is one domain in
U-labels and A-labels.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ._address import canonical_domain, mailbox_key, unquote_local
from .aliases import split_extension
from .maps import MapError, PostfixMap, read_map

__all__ = ["SenderLogins"]


class SenderLogins:
    """A sender login table, and how to read it."""

    def __init__(self, table: PostfixMap | None = None, *, recipient_delimiter: str = "+",
                 login_is_address: bool = False) -> None:
        self.path = table.path if table is not None else None
        self.delimiters = recipient_delimiter
        self.login_is_address = login_is_address
        self.table: dict[str, frozenset[str]] = {}
        for key, entry in (table.entries.items() if table is not None else ()):
            local, at, domain = key.rpartition("@")
            if not at or not domain:
                raise MapError(table.path, entry.line, f"{key!r}: want address@domain or @domain")
            self.table.setdefault(mailbox_key(key), frozenset(login.lower() for login in entry.values))

    @classmethod
    def read(cls, path: str | os.PathLike[str], **settings: object) -> SenderLogins:
        """Reads a table file; raises ``MapError`` saying where it is wrong."""
        return cls(read_map(path), **settings)  # type: ignore[arg-type]

    def owners(self, address: str) -> frozenset[str]:
        """The logins listed for ``address`` (lowercased; empty when none is)."""
        local, _, domain = str(address).rpartition("@")
        local, domain = unquote_local(local).lower(), canonical_domain(domain)
        found = self.table.get(f"{local}@{domain}")
        if found is None:
            base, extension = split_extension(local, self.delimiters)
            if extension:
                found = self.table.get(f"{base}@{domain}")
        if found is None:
            found = self.table.get("@" + domain)
        return found or frozenset()

    def owns(self, login: str, address: str) -> bool:
        """Whether ``login`` may use ``address``: listed for it, or (with
        ``login_is_address``) the login is that very address."""
        login = login.lower()
        if self.login_is_address and "@" in login:
            local, _, domain = mailbox_key(address).rpartition("@")
            if mailbox_key(login) in (f"{local}@{domain}", f"{split_extension(local, self.delimiters)[0]}@{domain}"):
                return True
        return login in self.owners(address)

    def owns_any(self, login: str, addresses: Iterable[str]) -> bool:
        return any(self.owns(login, a) for a in addresses)
