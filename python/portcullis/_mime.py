"""The text parts of a MIME message, edited in place: every other byte stays.

A disclaimer or a tag added to the text of a message must not re-encode
its attachments or reflow its other parts (that would break signatures and
bloat the message). So the body is split at its boundaries (RFC 2046 §5.1)
with the offsets kept, only the text parts a caller changes are decoded and
encoded again (their own transfer encoding kept, quoted-printable where 7bit
can no longer hold the text), and the rest is copied as it came.

A part encoded again never holds a line that a reader would take for a
delimiter of a multipart it is in (RFC 2046 §5.1.1): text that decodes to
``--boundary`` (say ``=2D=2Dboundary`` in quoted-printable) would otherwise end
the part there and start one that the policies before the edit never saw.
Its octets that are not valid in its charset (8-bit text labelled us-ascii)
are kept as they came: only what the edit added is encoded.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email.message
import email.policy
import email.utils
import quopri
import re
from dataclasses import dataclass
from email.parser import BytesHeaderParser

from ._message import fold

_HEADER_END = re.compile(rb"\r\n\r\n")
_PARSER = BytesHeaderParser(policy=email.policy.compat32)
#: RFC 5322 §4.5 (obs-optional and the other obsolete fields): white space between a field name and its
#: colon, read as §4 asks.
_OBS_COLON = re.compile(rb"(?m)^([!-9;-~]+)[ \t]+:")
#: RFC 2045 §6.7 (5): an encoded line is at most 76 characters, its soft line break included.
_QP_LINE = 76


def _parse_header(header: bytes) -> email.message.Message:
    """A header section parsed (the stdlib parser does not take a field in obsolete syntax,
    ``Name :``: it reads it without the white space, the bytes staying as they are)."""
    return _PARSER.parsebytes(_OBS_COLON.sub(rb"\1:", header) if header else b"\r\n")


def _keep_octets(error: UnicodeEncodeError, unencodable: str) -> tuple[str | bytes, int]:
    """An encoding error handler: a lone surrogate from ``surrogateescape`` is the octet it
    stands for (the original's, kept), any other character that the charset cannot hold
    becomes ``unencodable`` (``"&#N;"`` formatted with its code point, or ``"?"``)."""
    char = error.object[error.start]
    if "\udc80" <= char <= "\udcff":
        return bytes([ord(char) - 0xDC00]), error.start + 1
    if "\ud800" <= char <= "\udfff":
        return "?", error.start + 1
    return unencodable.replace("N", str(ord(char))), error.start + 1


codecs.register_error("portcullis.html-reference", lambda e: _keep_octets(e, "&#N;"))
codecs.register_error("portcullis.question-mark", lambda e: _keep_octets(e, "?"))


@dataclass
class TextPart:
    """One text part (``text/plain`` or ``text/html``, not an attachment) of a message.

    ``text`` is its content decoded (transfer encoding and charset); assign
    to change it. ``content_type`` is ``"text/plain"`` or ``"text/html"``.
    """

    content_type: str
    charset: str
    encoding: str  # the Content-Transfer-Encoding, lowercased ("7bit" when none)
    _header: bytes  # the part's header section, its blank line included ("" for a single-part message)
    _body: bytes
    _start: int  # offsets of the part (header and body) in the message body
    _end: int
    _content_type_field: str  # its Content-Type value, to set another charset in
    _delimiters: tuple[bytes, ...] = ()  # "--boundary" of each multipart the part is in
    _text: str | None = None
    changed: bool = False

    @property
    def text(self) -> str:
        if self._text is None:
            octets = _decode(self._body, self.encoding)
            try:
                # Octets not valid in the charset are kept as lone surrogates, to be written back as
                # they came (8-bit text labelled us-ascii is common).
                decoded = octets.decode(self.charset, "surrogateescape")
                if any("\udc80" <= c <= "\udcff" for c in decoded) and \
                        decoded.encode(self.charset, "surrogateescape") != octets:
                    raise UnicodeError("not kept by surrogateescape")
            except UnicodeError:  # (a charset that is not ASCII-compatible: utf-16 with an odd octet)
                decoded = octets.decode(self.charset, "replace")
            self._text = decoded.replace("\r\n", "\n")  # Python's line ends; CRLF again when encoded
        return self._text

    @text.setter
    def text(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("text is a str")
        self._text = value
        self.changed = True

    def _encoded(self, top: bool) -> tuple[dict[str, str], bytes]:
        """(header fields to change, the body) with the new text. A part inside a multipart
        ends without its last CRLF (RFC 2046 §5.1.1: that one belongs to the delimiter)."""
        text = self.text.replace("\r\n", "\n").replace("\r", "\n")
        changes: dict[str, str] = {}
        try:  # (the original's octets that its charset does not hold are lone surrogates: kept)
            data = text.encode(self.charset, "surrogateescape")
        except UnicodeEncodeError:
            utf8 = text.encode("utf-8", "surrogateescape")
            try:
                utf8.decode("utf-8")  # the original's octets valid as UTF-8 too (or none not in its charset)
            except UnicodeDecodeError:
                # Octets valid in no charset we could say: they stay as they are, under the charset
                # they came with, and what the edit added that this charset cannot hold is written
                # as a character reference in HTML, "?" in plain text.
                handler = "portcullis.html-reference" if self.content_type == "text/html" else "portcullis.question-mark"
                data = text.encode(self.charset, handler)
            else:
                data = utf8
                changes["Content-Type"] = _with_charset(self._content_type_field, "utf-8")
        encoding = self.encoding
        if encoding in ("7bit", "8bit", "binary") and (
                (encoding == "7bit" and max(data, default=0) > 127) or any(len(l) > 998 for l in data.split(b"\n"))
                or _delimiter_line(data, self._delimiters)):
            encoding = changes["Content-Transfer-Encoding"] = "quoted-printable"
        body = _encode(data, encoding)
        if _delimiter_line(body, self._delimiters):  # (quoted-printable and base64 never make one)
            raise ValueError("the edited text would end its MIME part early: a line of it is a delimiter"
                             " of a multipart it is in (RFC 2046 §5.1.1)")
        if not top and body.endswith(b"\r\n"):
            body = body[:-2]
        return changes, body


def _delimiter_line(data: bytes, delimiters: tuple[bytes, ...]) -> bool:
    """Whether a line of ``data`` begins with one of ``delimiters`` (``--boundary``: a reader
    may take it for a delimiter, RFC 2046 §5.1.1, whatever follows on the line)."""
    return any(data.startswith(d) or b"\n" + d in data for d in delimiters)


def text_parts(body: bytes, top_header: bytes) -> list[TextPart]:
    """The text parts of a message whose header section is ``top_header`` and body ``body``,
    in the message's order, at any depth of nested multiparts."""
    parts: list[TextPart] = []
    # An explicit stack, not recursion: a message of a thousand nested multiparts is only
    # some 70 KB, and a recursive walk raised RecursionError on it.
    stack: list[tuple[bytes, int, int, bool, tuple[bytes, ...]]] = [(top_header, 0, len(body), True, ())]
    while stack:
        header, start, end, top, delimiters = stack.pop()
        inner = _walk(body, header, start, end, parts, top, delimiters)
        stack.extend(reversed(inner))  # the first sub-part next: the message's order
    return parts


def _part_header_end(body: bytes, start: int, end: int) -> int:
    if body.startswith(b"\r\n", start):
        return start + 2  # no header fields: text/plain; charset=us-ascii
    match = _HEADER_END.search(body, start, end)
    return match.end() if match else end  # all header: no body


def rebuilt(body: bytes, parts: list[TextPart]) -> tuple[bytes, dict[str, str]]:
    """(the body with the changed parts spliced in, the fields of the message's own header
    to change: a single-part message's charset or transfer encoding)."""
    out, at, top_changes = [], 0, {}
    for part in sorted((p for p in parts if p.changed), key=lambda p: p._start):
        top = not part._header
        changes, new_body = part._encoded(top)
        out.append(body[at:part._start])
        if top:
            top_changes = changes
        else:
            header = part._header
            for name, value in changes.items():
                header = _with_field(header, name.encode(), value.encode("utf-8", "surrogateescape"))
            out.append(header)
        out.append(new_body)
        at = part._end
    out.append(body[at:])
    return b"".join(out), top_changes


def _walk(body: bytes, header: bytes, start: int, end: int, parts: list[TextPart], top: bool,
          delimiters: tuple[bytes, ...]) -> list[tuple[bytes, int, int, bool, tuple[bytes, ...]]]:
    """One part: a text part goes into ``parts``; a multipart's sub-parts are returned, in
    order, for ``text_parts`` to walk (header, start, end, top, delimiters)."""
    fields = _parse_header(header)
    ctype = (fields.get_content_type() or "text/plain").lower()
    if ctype.startswith("multipart/"):
        boundary = email.utils.collapse_rfc2231_value(fields.get_param("boundary") or "")
        if not boundary:
            return []
        boundary_octets = str(boundary).encode("latin-1", "replace")
        inside = delimiters + (b"--" + boundary_octets,)
        inner = []
        for sub_start, sub_end in _sections(body, start, end, boundary_octets):
            header_end = _part_header_end(body, sub_start, sub_end)
            inner.append((body[sub_start:header_end], header_end, sub_end, False, inside))
        return inner
    disposition = str(fields.get("Content-Disposition") or "").split(";")[0].strip().lower()
    if ctype not in ("text/plain", "text/html") or disposition == "attachment":
        return []
    charset = str(fields.get_content_charset() or "us-ascii")
    try:
        "".encode(charset)
    except LookupError:
        return []  # a charset Python does not know: left alone
    encoding = str(fields.get("Content-Transfer-Encoding") or "7bit").strip().lower()  # (str: a Header for 8-bit)
    if encoding not in ("7bit", "8bit", "binary", "quoted-printable", "base64"):
        return []
    part_start = start if top else start - len(header)
    parts.append(TextPart(ctype, charset, encoding, b"" if top else header, body[start:end], part_start, end,
                          str(fields.get("Content-Type") or "text/plain; charset=us-ascii"), delimiters))
    return []


def _sections(body: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """(start, end) of each body part between ``--boundary`` lines; the CRLF before a
    delimiter belongs to it (RFC 2046 §5.1.1), so a part ends before that CRLF."""
    dash = b"--" + boundary
    delimiter = re.compile(re.escape(dash) + rb"(--)?[ \t]*(?=\r\n|\Z)")
    sections: list[tuple[int, int]] = []
    open_at, pos = None, start
    while True:
        found = delimiter.match(body, pos, end) if body.startswith(dash, pos) else None
        if found:  # a delimiter line: at the start of the body, or after a CRLF
            if open_at is not None:
                sections.append((open_at, max(open_at, pos - 2)))
            if found.group(1):  # the close delimiter
                return sections
            line_end = body.find(b"\r\n", found.end(), end)
            open_at = pos = end if line_end < 0 else line_end + 2
            continue
        following = body.find(b"\r\n" + dash, pos, end)
        if following < 0:
            return sections  # no close delimiter: the open part is left alone
        pos = following + 2


def _decode(data: bytes, encoding: str) -> bytes:
    if encoding == "base64":
        return base64.b64decode(data, validate=False)
    if encoding == "quoted-printable":
        return quopri.decodestring(data)
    return data


def _encode(data: bytes, encoding: str) -> bytes:
    if encoding == "base64":
        raw = base64.b64encode(data)
        return b"\r\n".join(raw[i:i + 76] for i in range(0, len(raw), 76)) + b"\r\n"
    if encoding == "quoted-printable":
        data = _quoted_printable(data.replace(b"\r\n", b"\n"))
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _quoted_printable(data: bytes) -> bytes:
    """``data`` (LF line ends) in quoted-printable, no encoded line starting with ``--``: its
    first ``-`` is written ``=2D`` (RFC 2045 §6.7 (1) allows it), so that no line of the part
    can be a multipart delimiter (RFC 2046 §5.1.1), whatever the text decodes to. Lines are at
    most 76 characters (binascii's encoder makes a few of 78, before white space it encodes)."""
    out: list[bytes] = []
    for line in binascii.b2a_qp(data, quotetabs=False, istext=True, header=False).split(b"\n"):
        while True:
            if line.startswith(b"--"):
                line = b"=2D" + line[1:]
            if len(line) <= _QP_LINE:
                break
            # Too long: a soft line break before the 76th character, not inside an =XX.
            soft = line.endswith(b"=")
            text = line[:-1] if soft else line
            cut = _QP_LINE - 1
            if text[cut - 1:cut] == b"=":
                cut -= 1
            elif text[cut - 2:cut - 1] == b"=":
                cut -= 2
            out.append(text[:cut] + b"=")
            line = text[cut:] + (b"=" if soft else b"")
        out.append(line)
    return b"\n".join(out)


def _with_field(header: bytes, name: bytes, value: bytes) -> bytes:
    """The header section with field ``name`` set to ``value`` (replaced where it stands, else
    added), folded at white space (RFC 5322 §2.1.1: a line is at most 998 octets; ValueError
    when a run without white space is longer)."""
    lines = [line for line in re.split(rb"(?<=\r\n)", header) if line]
    this_field = re.compile(re.escape(name) + rb"[ \t]*:", re.I)  # (obsolete syntax too: WSP before the colon)
    field = fold(name, value)
    out, replaced, skipping = [], False, False
    for line in lines:
        if skipping and line[:1] in (b" ", b"\t"):
            continue
        skipping = False
        if this_field.match(line):
            if not replaced:
                out.append(field)
                replaced = True
            skipping = True
            continue
        out.append(line)
    if not replaced:
        blank = len(out) - 1 if out and out[-1] == b"\r\n" else len(out)
        out.insert(blank, field)
    return b"".join(out)


def _with_charset(content_type: str, charset: str) -> str:
    """A Content-Type value with its charset parameter set."""
    holder = email.message.Message()
    holder["Content-Type"] = content_type
    holder.set_param("charset", charset)
    return " ".join(str(holder["Content-Type"]).split())  # one line: _with_field folds it
