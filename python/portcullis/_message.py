"""``portcullis.Message``: the message at on_data, with edits that keep untouched bytes intact.

A header field the hook did not touch is written back exactly as it came
(its raw bytes, folding and 8-bit octets included), so DKIM signatures over
it still verify. Only added or replaced fields are generated, folded per
RFC 5322 §2.2.3.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import email.message  # imported by as_email() only: the email package costs each worker ~4 MiB

import _portcullis_core as _core

CRLF = b"\r\n"
_WSP = b" \t"

#: RFC 5322 §2.1.1: lines SHOULD be at most 78 characters; generated fields fold there.
FOLD_SOFT_LIMIT = 78
#: RFC 5322 §2.1.1: lines MUST be at most 998 characters (excluding CRLF).
FOLD_HARD_LIMIT = 998
#: RFC 2047 §2: an encoded-word is at most 75 characters.
ENCODED_WORD_LIMIT = 75
#: RFC 2047 §5 (3): in a phrase, Q-encoded text may hold only these as they are
#: (the strictest of the three contexts, so one encoding fits every header).
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
#: RFC 5322 §3.6.8: a field name is ftext, printable US-ASCII but ":"; §4.5 (obs-optional and the
#: other obsolete fields): white space may stand between the name and the colon, and §4 says a reader
#: MUST take that syntax. (Such a field is written back as it came: only its name is read without it.)
_FIELD_NAME = re.compile(rb"[!-9;-~]+[ \t]*")
#: An </body> tag (any case, ASCII only: a search that keeps the text's length, unlike lower()).
_BODY_END_TAG = re.compile(r"</body[ \t\r\n]*>", re.IGNORECASE | re.ASCII)
#: Text that a reader would take for an encoded-word: encoded too when in a non-ASCII value.
_LOOKS_ENCODED = re.compile(r"=\?.*\?=")
#: A line over FOLD_HARD_LIMIT octets (its CRLF not counted).
_LONG_LINE = re.compile(rb"[^\r\n]{%d,}" % (FOLD_HARD_LIMIT + 1))


class _Field:
    """One header field: its name, unfolded value, and the bytes it is written as."""

    __slots__ = ("name", "value", "raw")

    def __init__(self, name: str, value: str, raw: bytes) -> None:
        self.name = name
        self.value = value
        self.raw = raw  # ends with CRLF, except a last field of a message that has no final CRLF

    @classmethod
    def parsed(cls, raw: bytes, colon: int) -> _Field:
        # RFC 5322 §2.2.3: unfolding removes each CRLF that precedes WSP.
        unfolded = raw[colon + 1 :].replace(CRLF, b"").strip(_WSP)
        return cls(raw[:colon].rstrip(_WSP).decode("ascii"), unfolded.decode("utf-8", "surrogateescape"), raw)

    @classmethod
    def generated(cls, name: str, value: str, utf8: bool) -> _Field:
        """A new field. ``utf8``: the transaction is SMTPUTF8, so a non-ASCII
        value goes out as UTF-8 (RFC 6532 §3.2); otherwise as RFC 2047
        encoded-words, so the header stays ASCII (RFC 5322 §2.2)."""
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError("header names and values are str")
        _core.check_header_name(name)
        try:
            encoded = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as e:
            raise ValueError(f"header value cannot be encoded: {e}") from None
        # The octets are what goes on the wire; as Latin-1 text they reach the
        # C++ validator one to one (a value read from an 8-bit header holds
        # surrogates, which the binding could not pass as UTF-8).
        _core.check_header_value(encoded.decode("latin-1"))
        if not utf8 and not value.isascii():
            encoded = encode_words(value, len(name) + 2).encode("ascii")
        return cls(name, value, fold(name.encode("ascii"), encoded))

    @property
    def key(self) -> str:
        return self.name.lower()


def fold(name: bytes, value: bytes) -> bytes:
    """``name: value`` as header lines ending in CRLF, folded at whitespace.

    Folding inserts CRLF before a run of whitespace (RFC 5322 §2.2.3), so
    unfolding gives the value back unchanged. Lines are packed up to
    FOLD_SOFT_LIMIT octets where the value allows; a run without whitespace
    that cannot fit in FOLD_HARD_LIMIT octets raises ValueError.
    """
    line = name + b":" + (b" " + value if value else b"")
    if len(line) <= FOLD_SOFT_LIMIT:
        return line + CRLF
    # Fold points: the start of a whitespace run that follows a non-whitespace
    # octet of the value and is followed by more non-whitespace, so no line is
    # whitespace only (§3.2.2) and "Name:" never stands alone.
    starts = [0]
    last_text = len(line.rstrip(_WSP))
    for i in range(len(name) + 3, last_text):
        if line[i] in _WSP and line[i - 1] not in _WSP:
            starts.append(i)
    starts.append(len(line))
    chunks = [line[a:b] for a, b in zip(starts, starts[1:])]
    lines: list[bytes] = []
    current = chunks[0]
    for chunk in chunks[1:]:
        if len(current) + len(chunk) <= FOLD_SOFT_LIMIT:
            current += chunk
        else:
            lines.append(current)
            current = chunk
    lines.append(current)
    for folded_line in lines:
        if len(folded_line) > FOLD_HARD_LIMIT:
            raise ValueError(
                f"header {name.decode()} has {len(folded_line)} octets without whitespace to fold at;"
                f" lines are limited to {FOLD_HARD_LIMIT} (RFC 5322 §2.1.1)"
            )
    return CRLF.join(lines) + CRLF


def encode_words(value: str, start: int = 0) -> str:
    """``value`` with its non-ASCII words as RFC 2047 encoded-words; ASCII words stay as they are.

    Consecutive words to encode are encoded together, the whitespace between
    them inside (RFC 2047 §6.2: whitespace between adjacent encoded-words is
    not displayed), as few encoded-words of at most ENCODED_WORD_LIMIT
    characters as they need, each holding whole characters (§5), separated
    by a space where ``fold`` may break the line. Charset ``utf-8``; octets
    that are not UTF-8 (surrogates, from a field read as it came) are labelled
    ``unknown-8bit``, as Python's email package does. Q or B, whichever is
    shorter; Q uses only the characters a phrase allows (§5 (3)), so a display
    name is encoded right too. An address or a quoted string is not a place
    for encoded-words (§5): non-ASCII there needs an SMTPUTF8 transaction.
    ``start``: the octets before the value on its first line (``Name: ``);
    an encoded-word that begins the value is kept short enough to fit after
    them, since ``fold`` does not break between the name and the value.
    """
    parts = re.split(r"([ \t]+)", value)  # words at even indexes, whitespace at odd ones
    out: list[str] = []
    i = 0
    while i < len(parts):
        word = parts[i]
        if not _needs_encoding(word):
            out.append(word)
            if i + 1 < len(parts):
                out.append(parts[i + 1])
            i += 2
            continue
        # The run: this word, and the following ones that need encoding too.
        j = i
        while j + 2 < len(parts) and _needs_encoding(parts[j + 2]):
            j += 2
        first_room = FOLD_SOFT_LIMIT - start if i == 0 else ENCODED_WORD_LIMIT
        out.append(" ".join(_encoded_words("".join(parts[i:j + 1]), first_room)))
        if j + 1 < len(parts):
            out.append(parts[j + 1])
        i = j + 2
    return "".join(out)


def _needs_encoding(word: str) -> bool:
    return not word.isascii() or _LOOKS_ENCODED.search(word) is not None


def _q_octet(octet: int) -> str:
    if octet in _Q_SAFE:
        return chr(octet)
    return "_" if octet == 0x20 else f"={octet:02X}"


def _encoded_words(text: str, first_limit: int = ENCODED_WORD_LIMIT) -> list[str]:
    """``text`` as encoded-words of at most ENCODED_WORD_LIMIT characters (the
    first at most ``first_limit``, where it leaves room for one character),
    split between characters."""
    charset = "utf-8" if not any("\udc80" <= c <= "\udcff" for c in text) else "unknown-8bit"
    chars = [c.encode("utf-8", "surrogateescape") for c in text]
    q_size = sum(len(_q_octet(b)) for octets in chars for b in octets)
    b_size = (sum(len(octets) for octets in chars) + 2) // 3 * 4
    kind = "q" if q_size <= b_size else "b"
    prefix, suffix = f"=?{charset}?{kind}?", "?="
    room = ENCODED_WORD_LIMIT - len(prefix) - len(suffix)
    # Room for the first word: at least one character in either encoding (4 octets as B or Q).
    first_room = max(min(first_limit, ENCODED_WORD_LIMIT) - len(prefix) - len(suffix), 12)

    def size(octets: bytes) -> int:
        if kind == "q":
            return sum(len(_q_octet(b)) for b in octets)
        return (len(octets) + 2) // 3 * 4

    def encode(octets: bytes) -> str:
        if kind == "q":
            return "".join(_q_octet(b) for b in octets)
        return base64.b64encode(octets).decode("ascii")

    words: list[str] = []
    chunk = b""
    for octets in chars:
        if chunk and size(chunk + octets) > (room if words else first_room):
            words.append(prefix + encode(chunk) + suffix)
            chunk = b""
        chunk += octets
    if chunk:
        words.append(prefix + encode(chunk) + suffix)
    return words


def _check_line_endings(raw: bytes) -> None:
    if b"\0" in raw:
        raise ValueError("message holds a NUL byte")
    crlf = raw.count(CRLF)
    if raw.count(b"\r") != crlf or raw.count(b"\n") != crlf:
        raise ValueError("message holds a bare CR or LF; lines must end with CRLF")


def _message_bytes(raw: Any) -> bytes:
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise TypeError(f"a message is bytes, not {type(raw).__name__}")
    return bytes(raw)


def _head_is_whole(raw: bytes) -> bool:
    """Whether ``raw``'s header section is all fields (each line a field or its continuation), up
    to an empty line or the end: fields put on top of it then give what a parse would. (In C++:
    a regular expression took a tenth of a hook's time on a 5 KB header section.)"""
    return _core.head_is_whole(raw)


def _header_name_end(line: bytes) -> int:
    """The index of the colon ending a well-formed field name in ``line`` (white space between
    them allowed: RFC 5322 §4.5, obsolete syntax), or -1."""
    colon = line.find(b":")
    if colon <= 0:
        return -1
    return colon if _FIELD_NAME.fullmatch(line, 0, colon) else -1


def _parse(raw: bytes) -> tuple[list[_Field], bool, int]:
    """Splits ``raw`` into header fields, whether a blank line ends them, and where the body starts.

    The header section ends at the first empty line, or at the first line that
    is neither a field nor a continuation of one (what follows is body, as
    mail readers treat it).
    """
    fields: list[_Field] = []
    pos, size = 0, len(raw)
    field_start, colon = -1, -1
    blank_line = False
    while pos < size:
        end = raw.find(CRLF, pos)
        line_end = size if end < 0 else end + 2
        if end == pos:
            blank_line = True
            break
        if raw[pos] in _WSP:
            if field_start < 0:
                break  # a continuation with nothing to continue: body
        else:
            name_end = _header_name_end(raw[pos : line_end if end < 0 else end])
            if name_end < 0:
                break
            if field_start >= 0:
                fields.append(_Field.parsed(raw[field_start:pos], colon))
            field_start, colon = pos, name_end
        pos = line_end
    if field_start >= 0:
        fields.append(_Field.parsed(raw[field_start:pos], colon))
    return fields, blank_line, pos + 2 if blank_line else pos


#: A lazy message's slots filled when its header section is parsed.
_PARSED_SLOTS = frozenset({"_fields", "_blank_line", "_body_start", "_body", "_body_set"})


class Message:
    """The whole message at on_data: header fields in order, and the body.

    Reading: ``headers`` (a list of ``(name, value)`` pairs, values unfolded),
    ``get(name)``, ``get_all(name)``, ``body``, ``raw``, ``as_email()``.

    Changing: ``add_header``, ``remove_header``, ``replace_header``, and
    assigning ``body``. Names and values are checked by the daemon's own
    validators: a name must be printable ASCII without colon or space, a value
    must not hold CR, LF or NUL (``ValueError``), so a hook cannot inject
    header lines. Fields the hook does not touch are written back byte for
    byte; new values are folded at whitespace, lines kept within 78 octets
    where possible and never over 998 (RFC 5322 §2.1.1).

    Header values are ``str``: 8-bit octets that are not UTF-8 come through
    as lone surrogates (``surrogateescape``) and are written back as the same
    octets.

    ``smtputf8``: whether the transaction is SMTPUTF8 (the engine sets it from
    the MAIL command). Outside one, a value added or replaced that is not
    ASCII is written as RFC 2047 encoded-words (``get`` still returns the
    value as set); inside, as UTF-8 (RFC 6532).
    """

    __slots__ = ("_original", "_fields", "_blank_line", "_body_start", "_body", "_body_set", "_changed", "_smtputf8",
                 "_loader", "_prepended", "_is_parsed", "_head_whole", "_head_loader", "_head")

    def __init__(self, raw: bytes, *, smtputf8: bool = False) -> None:
        """Parses ``raw``: the message as received (CRLF line ends, no NUL), ``ValueError`` otherwise."""
        self._loader = None
        self._head_loader = None
        self._prepended: list[_Field] = []
        self._changed = False
        self._smtputf8 = bool(smtputf8)
        self._original = _message_bytes(raw)
        _check_line_endings(self._original)
        self._parse_original()

    @classmethod
    def _lazy(cls, loader: Callable[[], bytes], *, smtputf8: bool = False, head_whole: bool | None = None,
              head_loader: Callable[[], bytes] | None = None) -> Message:
        """A message read from ``loader()`` the first time a hook looks at it (the engine's: the
        daemon's bytes are not copied for a hook that never reads them), and parsed the first
        time a hook needs its fields (fields added on top need no parsing: the commonest edit).
        ``head_loader()``: its header section alone (up to and with the empty line, or all of
        it without one), read for the fields when the body is not needed yet: a hook that reads
        or edits fields of a 50 MiB message reads its header, and an edit of fields alone goes
        back as a new header section over the body the daemon holds (``_new_head``).
        ``head_whole``: whether its header section is all fields (``_head_is_whole``), when the
        daemon knows; None: found out from the bytes when needed. The engine's jobs get theirs
        from ``_core.JobObjects.lazy_message``, which makes the same in C."""
        message = cls.__new__(cls)
        message._loader = loader
        message._head_loader = head_loader
        message._prepended = []
        message._changed = False
        message._smtputf8 = bool(smtputf8)
        message._is_parsed = False
        message._head_whole = head_whole
        return message

    def _parse_original(self) -> None:
        self._fields, self._blank_line, self._body_start = _parse(self._received_head())
        self._body: bytes | None = None  # sliced from _original when first read
        self._body_set = False
        # Fields added before the parse go on top, the last added first.
        self._fields[:0] = self._prepended[::-1]
        self._prepended = []
        self._is_parsed = True

    def _received_head(self) -> bytes:
        """The message as received, or (read alone while the rest is not needed) its header
        section: all a parse and a comparison of fields need."""
        try:
            return object.__getattribute__(self, "_original")
        except AttributeError:
            pass
        try:
            return object.__getattribute__(self, "_head")
        except AttributeError:
            pass
        head_loader = self._head_loader
        if head_loader is None:
            return self._original  # (read whole)
        self._head_loader = None
        head = head_loader()
        if head is None:  # (no empty line, or a header section too big to read alone)
            return self._original  # (read whole)
        self._head = head = _message_bytes(head)
        return head

    def _parsed(self) -> bool:
        # (A flag: asking the slot itself raised an AttributeError each time, dearer than the rest.)
        return self._is_parsed

    def __getattr__(self, name: str) -> Any:
        # Only for a lazy message's slots not yet filled: read or parse, then read as usual.
        if name == "_original":
            loader = object.__getattribute__(self, "_loader")
            if loader is not None:
                self._loader = None
                # The daemon's own bytes: it refused a bare CR or LF and a NUL at DATA.
                self._original = _message_bytes(loader())
                return self._original
        elif name in _PARSED_SLOTS:
            self._parse_original()
            return object.__getattribute__(self, name)
        raise AttributeError(name)

    @property
    def smtputf8(self) -> bool:
        """Whether generated header values may be UTF-8 (an SMTPUTF8 transaction) or are RFC 2047 encoded."""
        return self._smtputf8

    # -- reading -----------------------------------------------------------

    @property
    def headers(self) -> list[tuple[str, str]]:
        """``(name, value)`` of every header field, top to bottom; values unfolded.

        A new list each time: change the message with the methods below.
        """
        return [(f.name, f.value) for f in self._fields]

    def get(self, name: str) -> str | None:
        """The value of the first field called ``name`` (any case), or None."""
        key = name.lower()
        return next((f.value for f in self._fields if f.key == key), None)

    def get_all(self, name: str) -> list[str]:
        """The values of every field called ``name`` (any case), top to bottom."""
        key = name.lower()
        return [f.value for f in self._fields if f.key == key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    @property
    def body(self) -> bytes:
        """The body: everything after the empty line that ends the header section.

        Assignable (bytes): CR, LF and CRLF line ends all become CRLF, a
        final CRLF is added when missing, and a NUL raises ``ValueError``, as
        does a line over 998 octets that the client did not send (RFC 5321
        §4.5.3.1.6: an upstream refuses it, or breaks it on the way and any
        DKIM signature with it).
        """
        if self._body is None:
            self._body = self._original[self._body_start :]
        return self._body

    @body.setter
    def body(self, value: bytes) -> None:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"body is bytes, not {type(value).__name__}")
        data = bytes(value)
        if b"\0" in data:
            raise ValueError("body holds a NUL byte")
        # RFC 5321 §2.3.8: lines end with CRLF, and only there.
        data = data.replace(CRLF, b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)
        if data and not data.endswith(CRLF):
            data += CRLF
        self._fields  # a lazy message loads now, or loading later would undo this
        # A long line passes when the client sent it, whole: the client's long lines are found
        # once, in one pass (a search of the message per long line was quadratic).
        sent: set[bytes] | None = None
        for line in _LONG_LINE.finditer(data):
            if sent is None:
                sent = set(_LONG_LINE.findall(self._original, self._body_start))
            if line.group() not in sent:
                raise ValueError(f"a line of the new body has {len(line.group())} octets; lines are limited to"
                                 f" {FOLD_HARD_LIMIT} (RFC 5322 §2.1.1, RFC 5321 §4.5.3.1.6)")
        self._body = data
        self._body_set = True
        self._changed = True

    @property
    def raw(self) -> bytes:
        """The whole message as bytes (CRLF line ends), with every change applied."""
        if not self._changed:
            return self._original
        if self._on_top_only():  # fields added on top, and nothing else
            return self._prepended_bytes() + self._original
        parts = self._head_parts()
        parts.append(self._body_bytes())
        return b"".join(parts)

    def _head_parts(self, fields_as: Callable[[_Field], bytes] = lambda f: f.raw) -> list[bytes]:
        """The header section as written: each field's bytes, CRLF-ended, and the empty line
        when the message has one or a body."""
        parts = []
        for f in self._fields:
            field = fields_as(f)
            parts.append(field if field.endswith(CRLF) else field + CRLF)
        if self._blank_line or self._body_bytes():
            parts.append(CRLF)
        return parts

    def _body_bytes(self) -> bytes | memoryview:
        """The body, not copied from the message as received when nobody read or set it."""
        if self._body is not None:
            return self._body
        return memoryview(self._original)[self._body_start :]

    def __bytes__(self) -> bytes:
        return self.raw

    def _on_top_only(self) -> bool:
        # Unparsed, with the header section all fields: what was added on top of it (if anything)
        # is all that changed, and gives what a parse would.
        if self._parsed():
            return False
        whole = self._head_whole  # (a lazy message's: only one is ever unparsed)
        return whole if whole is not None else _head_is_whole(self._received_head())

    def _added_on_top(self) -> bytes | None:
        """The fields added on top of a message otherwise unchanged and unread, as the bytes the
        daemon puts above its own copy of the message (so that the message is neither read into
        Python nor copied back); None for any other change."""
        if not self._changed or not self._prepended or not self._on_top_only():
            return None
        return self._prepended_bytes()

    def _prepended_bytes(self) -> bytes:
        return b"".join(f.raw for f in reversed(self._prepended))  # the last added on top

    def _new_head(self) -> tuple[bytes, int] | None:
        """A message whose fields changed and whose body did not: its new header section (with
        the empty line) and where the body as received starts, for the daemon to put the one
        over the other (``Result.message_keep_from``), checked as ``_checked_raw`` checks it.
        The body is then neither read into Python nor copied back, however big. None for any
        other change (a new body, or no empty line to keep the body after)."""
        if not self._changed or not self._parsed() or self._body_set or not self._blank_line:
            return None
        head = b"".join(self._head_parts())
        _core.check_message(head)
        return head, self._body_start

    def _checked_raw(self) -> bytes:
        """``raw``, checked as the daemon checks a message it relays (``ValueError``). The
        body as received was checked already: with only header fields changed, only the
        header section is checked again (a 1 MiB body is not scanned for one added field)."""
        raw = self.raw
        if not self._parsed():
            return raw  # the daemon's message under fields checked as they were made
        if not self._body_set and self._blank_line:
            _core.check_message(raw[: len(raw) - (len(self._original) - self._body_start)])
        else:
            _core.check_message(raw)  # (a new body's lines were checked as it was set)
        return raw

    def as_email(self) -> email.message.EmailMessage:
        """The message as a stdlib ``EmailMessage`` (a parsed copy: changing it changes nothing here)."""
        import email.message
        import email.parser
        import email.policy

        raw = self.raw
        if any(f.raw[len(f.name) : len(f.name) + 1] != b":" for f in self._fields):
            # A field in obsolete syntax (``Name :``, RFC 5322 §4.5), which the stdlib parser
            # takes for the start of the body: given to it without the white space.
            parts = self._head_parts(lambda f: f.name.encode("ascii") + f.raw[len(f.name) :].lstrip(_WSP))
            parts.append(self._body_bytes())
            raw = b"".join(parts)
        parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed

    # -- changing ----------------------------------------------------------

    def add_header(self, name: str, value: str) -> None:
        """Adds ``name: value`` at the top of the header section (above every other field,
        so the last one added is first, as trace fields are)."""
        field = _Field.generated(name, value, self._smtputf8)
        if self._parsed():
            self._fields.insert(0, field)
        else:
            self._prepended.append(field)
        self._changed = True

    def remove_header(self, name: str) -> int:
        """Removes every field called ``name`` (any case); returns how many there were."""
        key = name.lower()
        kept = [f for f in self._fields if f.key != key]
        removed = len(self._fields) - len(kept)
        if removed:
            self._fields = kept
            self._changed = True
        return removed

    def replace_header(self, name: str, value: str) -> None:
        """Replaces the value of the first field called ``name`` (any case) where it stands,
        keeping any later fields of that name; adds the field at the top if there is none."""
        new = _Field.generated(name, value, self._smtputf8)
        key = name.lower()
        for i, f in enumerate(self._fields):
            if f.key == key:
                self._fields[i] = new
                break
        else:
            self._fields.insert(0, new)
        self._changed = True

    # The text of the message: its text/plain and text/html parts, the other parts untouched.

    def edit_text(self, edit: Callable[[str, str], str | None]) -> int:
        """Calls ``edit(content_type, text)`` for each text part (``text/plain`` or
        ``text/html``, not an attachment; in a multipart message, at any depth, but not
        inside attached messages), with its text decoded; a ``str`` it returns replaces
        that text, ``None`` leaves it. Only the parts changed are encoded again (their own
        transfer encoding and charset kept where they can hold the new text, else
        quoted-printable and UTF-8); every other byte of the message stays as it was.
        Returns how many parts changed."""
        from . import _mime

        body = self.body
        parts = _mime.text_parts(body, b"".join(self._head_parts()))  # (not raw: a copy of the body)
        changed = 0
        for part in parts:
            new = edit(part.content_type, part.text)
            if new is not None and new != part.text:
                part.text = new
                changed += 1
        if changed:
            new_body, header_changes = _mime.rebuilt(body, parts)
            for name, value in header_changes.items():
                self.replace_header(name, value)
            self.body = new_body
        return changed

    def append_text(self, text: str, html: str | None = None) -> int:
        """Adds ``text`` at the end of every ``text/plain`` part (on a line of its own) and
        ``html`` (default: ``text`` escaped, in a ``<p>``) before ``</body>`` of every
        ``text/html`` part, or at its end: a disclaimer or a footer. Returns how many parts changed."""
        import html as html_module

        block = html if html is not None else "<p>" + html_module.escape(text).replace("\n", "<br>\n") + "</p>"

        def append(content_type: str, current: str) -> str:
            if content_type == "text/html":
                last = None
                for last in _BODY_END_TAG.finditer(current):
                    pass
                return current + block if last is None else current[:last.start()] + block + current[last.start():]
            return current + ("" if not current or current.endswith("\n") else "\n") + text

        return self.edit_text(append)

    def set_content(self, content: email.message.EmailMessage) -> None:
        """Makes the body and the MIME fields (``Content-*``, ``MIME-Version``) those of
        ``content`` (an ``EmailMessage``, e.g. from ``as_email()``, changed), keeping every
        other header field of this message as it is: write a restructured message back
        without copying its MIME fields by hand."""
        import email.policy

        new = Message(content.as_bytes(policy=email.policy.SMTP), smtputf8=self._smtputf8)
        mime = [(name, value) for name, value in new.headers if _is_mime_field(name)]
        for name in {name.lower() for name, _ in self.headers if _is_mime_field(name)}:
            self.remove_header(name)
        for name, value in mime:
            self.insert_header(len(self._fields), name, value)
        self.body = new.body

    # Fields by position (the index into ``headers``), for edits of one field among several of a name.

    def insert_header(self, index: int, name: str, value: str) -> None:
        """Inserts ``name: value`` before the field at ``index`` of ``headers`` (``len(headers)``: at the bottom)."""
        if not 0 <= index <= len(self._fields):
            raise IndexError(f"header index {index} out of range")
        self._fields.insert(index, _Field.generated(name, value, self._smtputf8))
        self._changed = True

    def replace_header_at(self, index: int, name: str, value: str) -> None:
        """Replaces the field at ``index`` of ``headers`` with ``name: value``, where it stands."""
        if not 0 <= index < len(self._fields):
            raise IndexError(f"header index {index} out of range")
        self._fields[index] = _Field.generated(name, value, self._smtputf8)
        self._changed = True

    def remove_header_at(self, index: int) -> None:
        """Removes the field at ``index`` of ``headers``."""
        if not 0 <= index < len(self._fields):
            raise IndexError(f"header index {index} out of range")
        del self._fields[index]
        self._changed = True

    @property
    def changed(self) -> bool:
        """Whether a hook changed the message (a header or the body)."""
        if self._changed and not self._parsed():
            return bool(self._prepended)
        return self._changed and not self._is_original()

    def _is_original(self) -> bool:
        """Whether ``raw`` would be the message as received (compared piece by piece: not joined
        into a copy of the message, which the engine then asks for again)."""
        original, at = self._received_head(), 0
        for part in self._head_parts():
            if not original.startswith(part, at):
                return False
            at += len(part)
        if self._body is None:
            return at == self._body_start
        original = self._original
        return len(original) - at == len(self._body) and original.endswith(self._body)

    def __repr__(self) -> str:
        return f"<Message {len(self._fields)} header fields, {len(self._body_bytes())} bytes of body>"


def _is_mime_field(name: str) -> bool:
    key = name.lower()
    return key.startswith("content-") or key == "mime-version"
