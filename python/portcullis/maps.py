"""Postfix lookup table files (the text ``postmap`` reads), for policies.

The format mail operators already keep their aliases, sender logins and
access rules in (postmap(1), virtual(5))::

    # a comment: a line whose first non-blank character is "#"
    alice@example.test      alice@example.test
    team@example.test       alice@example.test, bob@example.test,
                            carol@example.net          (a line starting with blanks continues the one before)
    @example.test           catchall@example.test

A logical line is a key, blanks, and a value; ``read_map`` splits the value
into items at commas and blanks (``values``), as virtual(5) and
smtpd_sender_login_maps read it, but not inside double quotes: a quoted
local part may hold both (``"john smith"@example.test``, as Postfix parses
the value as an RFC 822 address list). Keys are lowercased (as ``postmap`` does
without ``-f``); values keep their case. A key listed twice keeps its first
entry, as Postfix does, and the later line is reported in ``duplicates``.

The key ends at the first blank outside double quotes (a backslash escapes
the next character), as postmap(1) finds it: ``"john smith"@example.test``
is one key. A line postmap skips with a warning (a key with no value, a
continuation line with nothing before it) is skipped with a warning in the
log here too (logger ``portcullis.policy.maps``): one typo does not refuse
the whole file, as it does not for Postfix.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

__all__ = ["MapEntry", "MapError", "PostfixMap", "iter_map", "read_map"]

# An item: runs of anything but blanks, commas and quotes, and quoted strings (a backslash
# escapes the next character in them; one left open runs to the end: the address check says so).
_ITEM = re.compile(r'(?:[^\s,"]+|"(?:[^"\\]|\\.)*(?:"|\\?\Z))+', re.ASCII)

# A key: up to the first blank outside double quotes, a backslash escaping the next
# character (postmap.c and dict_thash.c split a line so). A quote left open ends nothing.
_KEY = re.compile(r'(?:\\.|"[^"]*"|[^\s"\\])+', re.ASCII)

# Postfix's white space: ASCII's (ISSPACE), never U+3000 or a no-break space, which belong
# to a key or a value.
_BLANKS = " \t\n\v\f\r"

_log = logging.getLogger("portcullis.policy.maps")


class MapError(ValueError):
    """A table file that cannot be read, or a line in it that makes no sense; says where."""

    def __init__(self, path: str, line: int | None, why: str) -> None:
        self.path, self.line, self.why = path, line, why
        super().__init__(f"{path}, line {line}: {why}" if line else f"{path}: {why}")


@dataclass(frozen=True)
class MapEntry:
    """One logical line: its key (lowercased), its value's items, and the line it starts on."""

    key: str
    values: tuple[str, ...]
    line: int


@dataclass
class PostfixMap:
    """A table file read: its entries by key (the first of each key), in file order."""

    path: str
    entries: dict[str, MapEntry] = field(default_factory=dict)
    duplicates: list[MapEntry] = field(default_factory=list)  # later lines of a key already seen: ignored


def read_map(path: str | os.PathLike[str], *, lowercase_keys: bool = True) -> PostfixMap:
    """Reads a Postfix table file; raises ``MapError`` (with file and line) for a
    file that cannot be read or is not UTF-8, or a value of commas alone (a key
    with no value at all is skipped with a warning, as postmap does)."""
    table = PostfixMap(os.fspath(path))
    for entry in iter_map(path, lowercase_keys=lowercase_keys):
        if entry.key in table.entries:
            table.duplicates.append(entry)
        else:
            table.entries[entry.key] = entry
    return table


def iter_map(path: str | os.PathLike[str], *, lowercase_keys: bool = True):  # -> Iterator[MapEntry]
    """The entries of a table file in file order, duplicates included (``read_map`` without
    holding them all: a table built from a large file need not hold it twice)."""
    name = os.fspath(path)
    try:
        f = open(name, "rb")
    except OSError as e:
        raise MapError(name, None, f"cannot read it: {e.strerror}") from None
    with f:
        for key, value, line in _logical_lines(name, _decoded_lines(name, f)):
            if lowercase_keys:
                key = key.lower()
            items = tuple(_ITEM.findall(value))
            if not items:  # only commas
                raise MapError(name, line, f"{key!r} has no value")
            yield MapEntry(key, items, line)


def _decoded_lines(name: str, f):  # -> Iterator[str]
    """The file's lines as text, one at a time (a large file is never held whole)."""
    for number, raw in enumerate(f, 1):
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise MapError(name, number, "not UTF-8") from None


def _logical_lines(name: str, lines):  # -> Iterator[tuple[str, str, int]]
    """(key, value, first line number) of each logical line: blank and comment lines
    skipped, lines starting with blanks joined to the one before."""
    key_line: tuple[str, int] | None = None
    parts: list[str] = []
    for number, line in enumerate(lines, 1):
        stripped = line.strip(_BLANKS)
        if not stripped or stripped.startswith("#"):
            continue
        if line[0] in _BLANKS:
            if key_line is None:
                _log.warning("%s, line %d: a continuation line (it starts with blanks) with no line before it:"
                             " skipped, as postmap does", name, number)
                continue
            parts.append(stripped)
            continue
        if key_line is not None:
            yield from _split(name, " ".join(parts), key_line[1])
        key_line, parts = (stripped, number), [stripped]
    if key_line is not None:
        yield from _split(name, " ".join(parts), key_line[1])


def _split(name: str, logical: str, line: int):  # -> Iterator[tuple[str, str, int]] (none for a line skipped)
    found = _KEY.match(logical)
    key = found.group() if found else ""
    value = logical[len(key):]
    if not key or not value or value[0] not in _BLANKS:
        _log.warning("%s, line %d: expected format: key whitespace value: %r skipped, as postmap does",
                     name, line, logical[:80])
        return
    yield key, value.strip(_BLANKS), line
