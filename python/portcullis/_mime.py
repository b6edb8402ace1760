"""The text parts of a MIME message, edited in place: every other byte stays.

A disclaimer or a tag added to the text of a message must not re-encode
its attachments or reflow its other parts (that would break signatures and
bloat the message). So the body is split at its boundaries (RFC 2046 §5.1)
with the offsets kept, only the text parts a caller changes are decoded and
encoded again (their own transfer encoding kept, quoted-printable where 7bit
can no longer hold the text), and the rest is copied as it came.
"""

from __future__ import annotations

import base64
import email.message
import email.policy
import email.utils
import quopri
import re
from dataclasses import dataclass
from email.parser import BytesHeaderParser

_HEADER_END = re.compile(rb"\r\n\r\n")
_PARSER = BytesHeaderParser(policy=email.policy.compat32)


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
    _text: str | None = None
    changed: bool = False

    @property
    def text(self) -> str:
        if self._text is None:
            decoded = _decode(self._body, self.encoding).decode(self.charset, "replace")
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
        try:
            data = text.encode(self.charset)
        except UnicodeEncodeError:
            data = text.encode("utf-8")
            changes["Content-Type"] = _with_charset(self._content_type_field, "utf-8")
        encoding = self.encoding
        if encoding in ("7bit", "8bit", "binary") and (
                (encoding == "7bit" and max(data, default=0) > 127) or any(len(l) > 998 for l in data.split(b"\n"))):
            encoding = changes["Content-Transfer-Encoding"] = "quoted-printable"
        body = _encode(data, encoding)
        if not top and body.endswith(b"\r\n"):
            body = body[:-2]
        return changes, body


def text_parts(body: bytes, top_header: bytes) -> list[TextPart]:
    """The text parts of a message whose header section is ``top_header`` and body ``body``."""
    parts: list[TextPart] = []
    _walk(body, top_header, 0, len(body), parts, top=True)
    return parts


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


def _walk(body: bytes, header: bytes, start: int, end: int, parts: list[TextPart], top: bool = False) -> None:
    fields = _PARSER.parsebytes(header) if header else _PARSER.parsebytes(b"\r\n")
    ctype = (fields.get_content_type() or "text/plain").lower()
    if ctype.startswith("multipart/"):
        boundary = email.utils.collapse_rfc2231_value(fields.get_param("boundary") or "")
        if not boundary:
            return
        for sub_start, sub_end in _sections(body, start, end, str(boundary).encode("latin-1", "replace")):
            if body.startswith(b"\r\n", sub_start):
                header_end = sub_start + 2  # no header fields: text/plain; charset=us-ascii
            else:
                match = _HEADER_END.search(body, sub_start, sub_end)
                header_end = match.end() if match else sub_end  # all header: no body

            _walk(body, body[sub_start:header_end], header_end, sub_end, parts)
        return
    disposition = str(fields.get("Content-Disposition") or "").split(";")[0].strip().lower()
    if ctype not in ("text/plain", "text/html") or disposition == "attachment":
        return
    charset = str(fields.get_content_charset() or "us-ascii")
    try:
        "".encode(charset)
    except LookupError:
        return  # a charset Python does not know: left alone
    encoding = str(fields.get("Content-Transfer-Encoding") or "7bit").strip().lower()  # (str: a Header for 8-bit)
    if encoding not in ("7bit", "8bit", "binary", "quoted-printable", "base64"):
        return
    part_start = start if top else start - len(header)
    parts.append(TextPart(ctype, charset, encoding, b"" if top else header, body[start:end], part_start, end,
                          str(fields.get("Content-Type") or "text/plain; charset=us-ascii")))


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
        data = quopri.encodestring(data.replace(b"\r\n", b"\n"))
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _with_field(header: bytes, name: bytes, value: bytes) -> bytes:
    """The header section with field ``name`` set to ``value`` (replaced where it stands, else added)."""
    lines = [line for line in re.split(rb"(?<=\r\n)", header) if line]
    out, replaced, skipping = [], False, False
    for line in lines:
        if skipping and line[:1] in (b" ", b"\t"):
            continue
        skipping = False
        if line.lower().startswith(name.lower() + b":"):
            if not replaced:
                out.append(name + b": " + value + b"\r\n")
                replaced = True
            skipping = True
            continue
        out.append(line)
    if not replaced:
        blank = len(out) - 1 if out and out[-1] == b"\r\n" else len(out)
        out.insert(blank, name + b": " + value + b"\r\n")
    return b"".join(out)


def _with_charset(content_type: str, charset: str) -> str:
    """A Content-Type value with its charset parameter set."""
    holder = email.message.Message()
    holder["Content-Type"] = content_type
    holder.set_param("charset", charset)
    return " ".join(str(holder["Content-Type"]).split())  # one line: generated fields fold themselves
