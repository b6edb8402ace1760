"""Alias tables in Postfix virtual(5) form: lookup and recursive expansion.

``policies/aliases.py`` runs this at RCPT; a policy of your own may use it
too (``AliasTable.read(path, local_domains=...)``). The rules are
virtual(5)'s:

- A key is ``user@domain`` (exact), ``@domain`` (catch-all: used when no
  exact entry matches) or a bare ``domain`` (declares a local domain; its
  value is ignored, as Postfix ignores it).
- A first target ``@otherdomain`` is the same user in otherdomain (a
  domain alias: ``@example.net @example.com``); the user is the local part
  as given, less an extension matched away (which then goes back on every
  target, as below).
- An address is looked up as it is, then, when its local part has the
  recipient delimiter, without its extension (``alice+tag@`` as ``alice@``;
  never ``owner-*`` or ``*-request`` with ``-`` as a delimiter, nor
  ``postmaster`` or ``MAILER-DAEMON``: see ``split_extension``),
  then as its domain's catch-all. An extension matched away by the
  extension-less entry is put back on every target (``alice+tag@`` ->
  ``alice.smith+tag@``), as Postfix's ``propagate_unmatched_extensions``
  does by default; ``propagate_extension = False`` turns that off. A
  catch-all's targets get no extension (``x+tag@`` -> ``catchall@``), as in
  Postfix, where only a ``user@domain`` match hands the extension back.
- Targets are expanded again, recursively. A target equal to the address
  being expanded is that address's own mailbox: delivered, not expanded;
  and an address that expanded into itself is final wherever it is met
  again (Postfix's cleanup_map1n lets an address expand into itself once),
  so ``alice@ -> alice@, bob@`` with ``bob@ -> bob@, alice@`` is alice and
  bob, not a loop.
  Each final address is delivered once, and each address expanded once
  (a sub-group shared by several groups is looked up once, not once a path).
- Bounds: a loop (a way back to an address being expanded on which no
  address expanded into itself: ``a@ -> b@``, ``b@ -> a@``), nesting
  deeper than ``max_depth``, or more than ``max_targets`` final addresses
  raise ``AliasError`` (the mail should wait while the operator fixes the
  table, not bounce). Loops among exact
  entries are found when the table is read (``AliasTable.loops``).

- Keys are mailboxes (``mailbox_key``): case-insensitive, a quoted local
  part the same as the dot-atom it spells (``"alice"@`` is ``alice@``,
  RFC 5321 §4.1.2; Postfix unquotes before every lookup), an
  internationalized domain the same in U-labels and A-labels.

Lookups are dictionary lookups: the size of the table does not slow a RCPT.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ._address import Address, canonical_domain, mailbox_key, quote_local, unquote_local
from .maps import MapEntry, MapError, PostfixMap, iter_map

__all__ = ["AliasError", "AliasTable", "split_extension"]


class AliasError(Exception):
    """An expansion that cannot finish: a loop, too deep, or too many targets."""


class AliasTable:
    """An alias table and the domains it answers for."""

    def __init__(
        self,
        table: PostfixMap | Iterable[MapEntry],
        *,
        path: str = "",
        local_domains: Iterable[str] = (),
        recipient_delimiter: str = "+",
        propagate_extension: bool = True,
        max_depth: int = 20,
        max_targets: int = 1000,
    ) -> None:
        if isinstance(table, PostfixMap):
            path, table = table.path, list(table.entries.values()) + table.duplicates
        self.path = path
        self.delimiters = recipient_delimiter
        self.propagate_extension = propagate_extension
        self.max_depth = max_depth
        self.max_targets = max_targets
        self.domains: set[str] = {canonical_domain(d) for d in local_domains}
        self.exact: dict[str, tuple[str, ...]] = {}
        self.catchall: dict[str, tuple[str, ...]] = {}
        #: Lines of a key listed again (the first entry counts, as in Postfix): (key, line).
        self.duplicates: list[tuple[str, int]] = []
        lines: dict[str, int] = {}  # key -> its line, for messages
        for entry in table:
            local, at, domain = entry.key.rpartition("@")
            if not at:
                if not _is_domain(entry.key):
                    raise MapError(path, entry.line, f"{entry.key!r} is neither user@domain, @domain nor a domain"
                                                     " (a bare user needs a domain here)")
                key = canonical_domain(entry.key)
            else:
                key = mailbox_key(entry.key)  # "alice"@ and alice@ are one key
            if key in lines:
                self.duplicates.append((entry.key, entry.line))
                continue
            lines[key] = entry.line
            if not at:
                self.domains.add(key)  # a virtual alias domain: the value does not matter
                continue
            targets = tuple(_checked_target(path, entry.line, t, first=i == 0) for i, t in enumerate(entry.values))
            domain = canonical_domain(domain)
            if local:
                _checked_target(path, entry.line, entry.key)
                self.exact[key] = targets
            elif _is_domain(domain):
                self.catchall[domain] = targets
            else:
                raise MapError(path, entry.line, f"{entry.key!r}: no domain after the @")
            self.domains.add(domain)
        #: Loops among exact entries, each as the keys around it (a -> b -> a): empty when there are none.
        self.loops = self._find_loops()
        #: The line of each key in a loop, for messages (the others' are not kept: a large table's memory).
        self.lines = {key: lines[key] for loop in self.loops for key in loop}

    @classmethod
    def read(cls, path: str | os.PathLike[str], **settings: object) -> AliasTable:
        """Reads a virtual(5) file; raises ``MapError`` saying where it is wrong."""
        return cls(iter_map(path), path=os.fspath(path), **settings)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.exact) + len(self.catchall)

    def is_local(self, domain: str) -> bool:
        """Whether mail for ``domain`` is ours to expand (listed local, or named in the table)."""
        return canonical_domain(domain) in self.domains

    def lookup(self, address: str, use_catchall: bool = True) -> tuple[str, tuple[str, ...]] | None:
        """The entry ``address`` matches, as (key, targets with any extension put back), or None.
        ``use_catchall=False``: exact entries only."""
        local, _, domain = address.rpartition("@")
        local, domain = unquote_local(local), canonical_domain(domain)
        key = f"{local.lower()}@{domain}"
        targets = self.exact.get(key)
        if targets is not None:
            return key, _with_user(targets, local)
        base, extension = split_extension(local, self.delimiters)
        if extension:
            key = f"{base.lower()}@{domain}"
            targets = self.exact.get(key)
            if targets is not None:
                # As Postfix's mail_addr_map: "@otherdomain" gets the user without the extension
                # matched away, then the extension goes back on every target.
                targets = _with_user(targets, base)
                if self.propagate_extension:
                    targets = tuple(_with_extension(t, extension) for t in targets)
                return key, targets
        # The catch-all's targets as they are: Postfix (mail_addr_find) hands the extension back
        # only when user@domain matched, not @domain; so "@otherdomain" gets the whole local part.
        targets = self.catchall.get(domain) if use_catchall else None
        return None if targets is None else ("@" + domain, _with_user(targets, local))

    def expand(self, address: str, use_catchall: bool = True) -> list[str] | None:
        """The final addresses mail for ``address`` goes to, each once, in
        table order; None when the table has no entry for it. Raises
        ``AliasError`` for a loop or when a bound is passed. ``use_catchall=False``:
        exact entries only, at every level."""
        final: list[str] = []
        seen: set[str] = set()
        # Each address is expanded once, as Postfix's cleanup does: groups that share sub-groups
        # would otherwise cost a lookup per path (2 ** depth of them, nested pairwise). An address
        # met again off its own path is done (depth first: all below it was expanded before
        # anything else); one met on its path is a loop, found by its parent.
        expanded: set[str] = set()
        # Addresses that expanded into themselves (alice@ -> alice@, bob@): met again anywhere, they
        # are final, as Postfix's cleanup_map1n lets an address expand into itself once. So
        # alice@ -> alice@, bob@ with bob@ -> bob@, alice@ is alice and bob, not a loop.
        selfed: set[str] = set()
        # Depth first, in table order: (address, the keys on its path).
        stack: list[tuple[str, tuple[str, ...]]] = [(address, ())]
        while stack:
            current, path = stack.pop()
            here = mailbox_key(current)
            own = bool(path) and (here == path[-1] or here in selfed)  # its own mailbox: final, not expanded
            if not own and here in expanded:
                continue
            found = None if own else self.lookup(current, use_catchall)
            if found is None and not path:
                return None  # no entry for the address itself
            if found is None:  # no entry, or its own mailbox
                if here not in seen:
                    seen.add(here)
                    final.append(current)
                    if len(final) > self.max_targets:
                        raise AliasError(f"{address} expands to more than {self.max_targets} addresses (max_targets)")
                continue
            if len(path) >= self.max_depth:
                raise AliasError(f"{address} nests deeper than {self.max_depth} levels (max_depth): "
                                 + " -> ".join(path + (current,)))
            expanded.add(here)
            below = path + (here,)
            folded_targets = [mailbox_key(target) for target in found[1]]
            if here in folded_targets:
                selfed.add(here)
            for folded in folded_targets:
                # Back to an address on the path: a loop, unless an address on the way round expanded
                # into itself (Postfix stops there: the way round adds nothing). Equal to here: its own mailbox.
                if folded != here and folded in path:
                    if not any(key in selfed for key in below[below.index(folded):]):
                        raise AliasError(f"alias loop: {' -> '.join(below + (folded,))}")
            for target in reversed(found[1]):  # (a loop: a generator costs more than it saves here)
                stack.append((target, below))
        return final

    # -- the pieces

    def _find_loops(self) -> list[list[str]]:
        """Cycles among exact entries (a target that is itself an exact key, not the entry's own
        key) on which no entry expands into itself: one that does ends the way round (see expand),
        so alice@ -> alice@, bob@ with bob@ -> bob@, alice@ is no loop; a -> b, b -> a is."""
        # An entry that lists its own key is final when met again: no cycle goes through it.
        selfed = {key for key, targets in self.exact.items() if any(mailbox_key(t) == key for t in targets)}
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        loops: list[list[str]] = []
        for start in self.exact:
            if state.get(start):
                continue
            path: list[str] = [start]
            iters = [iter(self.exact[start])]
            state[start] = 1
            while iters:
                target = next(iters[-1], None)
                if target is None:
                    state[path.pop()] = 2
                    iters.pop()
                    continue
                key = mailbox_key(target)
                if key.startswith("@"):  # "@otherdomain": the same user there
                    key = path[-1].rpartition("@")[0] + key
                if key == path[-1] or key not in self.exact or key in selfed:
                    continue
                if state.get(key) == 1:
                    loops.append(path[path.index(key):] + [key])
                elif not state.get(key):
                    state[key] = 1
                    path.append(key)
                    iters.append(iter(self.exact[key]))
        return loops


# Local parts Postfix's split_addr never splits, whatever the delimiter (the last is
# double_bounce_sender's default): MAILER-DAEMON is no "MAILER" with extension "-DAEMON".
_NEVER_SPLIT = frozenset(("postmaster", "mailer-daemon", "double-bounce"))


def split_extension(local: str, delimiters: str) -> tuple[str, str]:
    """(base, extension with its delimiter) of a local part: ``alice+tag`` ->
    (``alice``, ``+tag``), cut at the first character of ``delimiters`` (each
    character is a delimiter). The extension is "", as in Postfix's
    split_addr, when there is no delimiter, when the local part starts with
    one (``-x+y`` with ``"+-"``: the base would be empty), for
    ``postmaster``, ``MAILER-DAEMON`` and ``double-bounce``, and, when ``-``
    is a delimiter, for ``owner-*`` and ``*-request`` (mailing-list
    addresses, kept whole for compatibility)."""
    cut = -1
    for delimiter in delimiters:  # a loop, not min() over a generator: this runs for every address looked up
        i = local.find(delimiter)
        if i >= 0 and (cut < 0 or i < cut):
            cut = i
    if cut <= 0:  # none, or the first character
        return local, ""
    lowered = local.lower()
    if lowered in _NEVER_SPLIT:
        return local, ""
    if "-" in delimiters and (lowered.startswith("owner-") or (len(lowered) > 8 and lowered.endswith("-request"))):
        return local, ""
    return local[:cut], local[cut:]


def base_mailbox_key(address: object, delimiters: str) -> str:
    """``mailbox_key`` of an address without its extension (``split_extension``):
    alice+1@, alice+2@... are all alice@. A key with no extension is unchanged."""
    key = mailbox_key(address)
    local, at, domain = key.rpartition("@")
    base, extension = split_extension(local, delimiters)
    return f"{base}@{domain}" if at and extension else key


def _is_domain(text: str) -> bool:
    # A bare key needs a dot to be a domain: "alice" alone is a user with its domain left out.
    labels = text.rstrip(".").split(".")
    return "@" not in text and len(labels) > 1 and all(labels)


def _checked_target(path: str, line: int, target: str, first: bool = False) -> str:
    if target.startswith("#"):
        raise MapError(path, line, f"{target!r} is not an address: a '#' after a value is not a comment"
                                   " (only a line that starts with '#' is, as for postmap)")
    if target.startswith("@"):
        # virtual(5): "@otherdomain" is the same user in otherdomain, and only as the first address
        # of a result (Postfix makes nothing of it further on: it would be an address with no user).
        if not first:
            raise MapError(path, line, f"{target!r}: an @otherdomain target must be the first of its line")
        if not _is_domain(target[1:]):
            raise MapError(path, line, f"{target!r}: no domain after the @")
        return target
    if "@" not in target:
        raise MapError(path, line, f"{target!r} has no domain")
    try:
        address = Address(target)
    except ValueError as e:
        raise MapError(path, line, f"{target!r} is not an address: {e}") from None
    return target


def _with_user(targets: tuple[str, ...], local: str) -> tuple[str, ...]:
    """``targets`` with a first target ``@otherdomain`` made ``local@otherdomain`` (``local`` unquoted)."""
    if not targets[0].startswith("@"):
        return targets
    return (quote_local(local) + targets[0],) + targets[1:]


def _with_extension(target: str, extension: str) -> str:
    # On the unquoted local part, quoted again if it needs it ("john smith"@ + "+x": "john smith+x"@).
    local, _, domain = target.rpartition("@")
    return f"{quote_local(unquote_local(local) + extension)}@{domain}"
