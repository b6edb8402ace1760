"""Dangerous attachments, by file name extension and MIME type, at the end of DATA.

Configure it in ``[attachments]`` (every key optional; the defaults are in
``EXTENSIONS`` and ``MIME_TYPES`` below):

    [attachments]
    extensions = [...]               # blocked file name extensions, without the dot (replaces the default list)
    extra_extensions = []            # added to the list
    allowed_extensions = []          # taken off it
    mime_types = [...]               # blocked Content-Types (replaces the default list)
    archives = true                  # look at the names inside ZIP archives (and ZIPs in them)
    max_archive_size = 10485760      # bytes of archive looked into; bigger ones are passed unread
    encoded_files = true             # look for files uuencoded or yEnc-encoded in text parts
    ambiguous_parts = true           # refuse a part with two different Content-Type (or -Transfer-Encoding) fields

Every part of the message is looked at: the message itself when it is a
single part that is not text (a bare ``application/zip`` or
``application/x-msdownload`` body), nested multiparts, attached messages
(``message/rfc822``, also when sent base64 or quoted-printable, which RFC 2046
forbids but mail clients decode), their parts, and files uuencoded or
yEnc-encoded in a text part (which Thunderbird shows as attachments). A part is blocked when one of its
file names (``Content-Disposition`` ``filename`` and ``Content-Type``
``name``, both; RFC 2231 and RFC 2047 encoded names decoded) ends in a
blocked extension (``invoice.pdf.exe`` ends in ``exe``; case does not
matter), when its Content-Type is blocked, or when it is a ZIP archive
holding such a name. Only the archive's directory is read (no file is
extracted; a ZIP inside a ZIP is decompressed to read its own), so it is
cheap. An encrypted or broken archive, or a broken member of one, is
passed (and logged) and the other entries are still checked: refusing
every unreadable ZIP is a choice for ``extra_extensions = ["zip"]``.

A part with two different ``Content-Type`` fields, or two different
``Content-Transfer-Encoding`` fields, is ambiguous: mail clients differ in
the one they read (Python's email package reads the first), and a file could
hide behind the other. Such a message is refused with ``550 5.7.1 Message
refused: its MIME structure is ambiguous (two different Content-Type
fields)``; ``ambiguous_parts = false`` checks it as the first fields say.
The same field twice saying the same (type and encoding in any case,
parameters exactly: a boundary is case-sensitive) is not ambiguous.

A MIME structure Python's email package fails on (it raises on some
malformed parameters) is read again with the lenient ``compat32`` policy
and checked; one that cannot be read either way is refused with
``550 5.7.1 Message refused: its MIME structure cannot be read``.

A blocked message gets ``550 5.7.1 Message refused: attachment "NAME" is
of a blocked type (.EXT)`` and a log line.
"""

from __future__ import annotations

import email.errors
import email.header
import email.message
import email.policy
import email.utils
import io
import re
import zipfile
import zlib
from email.parser import BytesParser

import portcullis as pc
from portcullis.settings import Settings

EXTENSIONS = (
    "ade", "adp", "app", "appx", "application", "bas", "bat", "cab", "chm", "cmd", "com", "cpl", "dll", "exe", "gadget",
    "hta", "inf", "ins", "iso", "img", "isp", "jar", "js", "jse", "lnk", "mde", "msc", "msi", "msix", "msp", "mst",
    "one", "pif", "ps1", "psm1", "reg", "scf", "scr", "sct", "shb", "sys", "vb", "vbe", "vbs", "vhd", "vhdx", "vxd",
    "wsc", "wsf", "wsh", "xll",
)
MIME_TYPES = (
    "application/x-msdownload", "application/x-dosexec", "application/x-msdos-program", "application/x-ms-installer",
    "application/x-msi", "application/hta", "application/x-ms-shortcut", "application/java-archive",
    "application/x-sh", "application/x-bat",
)
_KEYS = ("extensions", "extra_extensions", "allowed_extensions", "mime_types", "archives", "max_archive_size",
         "encoded_files", "ambiguous_parts")
_ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/x-zip")
try:
    from lzma import LZMAError as _LZMAError
except ImportError:  # a Python built without lzma: zipfile cannot read such members either
    class _LZMAError(Exception):
        pass
#: What reading a damaged, encrypted or unsupported archive (or member) raises.
_ARCHIVE_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, _LZMAError, NotImplementedError,
                   RuntimeError, EOFError, ValueError, OSError)


def _names(table: dict, key: str, default: tuple) -> set[str]:
    values = table.get(key, list(default))
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"[attachments] {key}: want a list of strings")
    return {v.lower().lstrip(".") for v in values}


def _settings() -> dict:
    table = Settings("attachments", dict.fromkeys(_KEYS)).given  # (each list's default is below)
    extensions = (_names(table, "extensions", EXTENSIONS) | _names(table, "extra_extensions", ())) - _names(
        table, "allowed_extensions", ())
    s = {"extensions": extensions, "mime_types": _names(table, "mime_types", MIME_TYPES),
         "archives": table.get("archives", True), "max_archive_size": table.get("max_archive_size", 10 * 1024 * 1024),
         "encoded_files": table.get("encoded_files", True), "ambiguous_parts": table.get("ambiguous_parts", True)}
    for key in ("archives", "encoded_files", "ambiguous_parts"):
        if not isinstance(s[key], bool):
            raise ValueError(f"[attachments] {key}: want true or false")
    if isinstance(s["max_archive_size"], bool) or not isinstance(s["max_archive_size"], int) or s["max_archive_size"] < 0:
        raise ValueError("[attachments] max_archive_size: want a number of bytes")
    return s


SETTINGS = _settings()


def _blocked_name(name: str) -> str | None:
    """The blocked extension ``name`` ends in, or None."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip().rstrip(". ").lower()  # Windows ignores trailing dots
    if "." not in base:
        return None
    extension = base.rsplit(".", 1)[1]
    return extension if extension in SETTINGS["extensions"] else None


def _in_archive(data: bytes, depth: int = 0) -> tuple[str, str] | None:
    """(name, extension) of a blocked file in a ZIP archive's directory (and in ZIPs inside it)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                extension = _blocked_name(info.filename)
                if extension:
                    return info.filename, extension
                if (depth < 1 and info.filename.lower().endswith(".zip") and not info.flag_bits & 0x1
                        and info.file_size <= SETTINGS["max_archive_size"]):
                    try:
                        inner = archive.read(info)
                    except _ARCHIVE_ERRORS as e:  # a corrupt member: the other entries still count
                        pc.log.info("attachments: archive member %r could not be read (%s): passed", info.filename, e)
                        continue
                    found = _in_archive(inner, depth + 1)
                    if found:
                        return f"{info.filename}/{found[0]}", found[1]
    except _ARCHIVE_ERRORS as e:
        pc.log.info("attachments: an archive could not be read (%s): passed", e)
    return None


def _decoded(value) -> str:
    """A file name parameter as text: RFC 2231 (a tuple from get_param) and RFC 2047 encodings decoded."""
    if isinstance(value, tuple):
        value = email.utils.collapse_rfc2231_value(value)
    value = str(value or "").strip()
    if "=?" in value:  # an encoded-word the parser left as it is (compat32 always, default when unquoted)
        try:
            value = str(email.header.make_header(email.header.decode_header(value)))
        except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
            pass
    return value


def _file_names(part) -> list[str]:
    """The part's file names: every Content-Disposition filename and Content-Type name (either may
    hide .exe), in every field of the two and in every spelling, plain or RFC 2231, repeated or not:
    mail clients differ in the one they show (RFC 6266's, for one, prefers filename* to filename)."""
    names = []

    def add(value) -> None:
        try:
            name = _decoded(value)
        except Exception:  # a value too broken to decode
            name = ""
        if name and name not in names:
            names.append(name)

    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        try:
            add(part.get_param(param, header=header))  # (as the part's own policy reads it)
        except Exception:
            pass
        for raw in (value for key, value in part.raw_items() if key.lower() == header):
            # (compat32: policy.default drops a parameter like name==?UTF-8?B?...?=, and gives one value a name)
            lenient = email.message.Message()
            lenient[header] = raw
            try:
                params = lenient.get_params([], header=header)
            except Exception:  # a header too broken to read
                params = []
            for key, value in params:
                if key.strip().lower() == param:
                    add(value)
    return names


def _problem(part) -> tuple[str, str] | None:
    """(what to name, why) for a blocked part, or None."""
    names = _file_names(part)
    for name in names:
        extension = _blocked_name(name)
        if extension:
            return name, f".{extension}"
    name = names[0] if names else ""
    content_type = part.get_content_type()
    if content_type in SETTINGS["mime_types"]:
        return name or content_type, content_type
    if SETTINGS["archives"] and (content_type in _ZIP_TYPES or any(n.lower().endswith(".zip") for n in names)):
        data = part.get_payload(decode=True) or b""
        if len(data) <= SETTINGS["max_archive_size"]:
            found = _in_archive(data)
            if found:
                return f"{name or 'archive'}/{found[0]}", f".{found[1]}"
    return None


# How deep encoded attached messages are opened (each level is a parse of its own).
_MAX_ENCODED_MESSAGE_DEPTH = 5
_ENCODINGS = ("base64", "quoted-printable")

# A file encoded in the text itself, which mail clients (Thunderbird, for one) show as an
# attachment: uuencode's and sharutils' "begin 644 NAME", yEnc's "=ybegin ... name=NAME".
_ENCODED_FILE = re.compile(rb"^(?:begin(?:-base64)? [0-7]{3,4} +(?P<uu>[^\r\n]+)"
                           rb"|=ybegin [^\r\n]*?\bname=(?P<y>[^\r\n]+))", re.MULTILINE)


def _encoding(part) -> str:
    return str(part.get("Content-Transfer-Encoding") or "").strip().lower()


def _opaque_encoded_messages(base: type) -> type:
    """``base`` (the parser's message class) for which an encoded message/* part is a leaf.

    RFC 2046 §5.2.1 forbids encoding a message/rfc822 part, so the parser would read the
    encoded text as the message itself (quoted-printable's soft line breaks cutting its
    header apart); a mail client may decode it and show what it holds all the same. Seen
    as a leaf, its payload stays the exact encoded text, decoded and parsed below."""
    class Part(base):
        def get_content_maintype(self) -> str:
            maintype = super().get_content_maintype()
            return "application" if maintype == "message" and _encoding(self) in _ENCODINGS else maintype
    return Part


_PARTS = {email.policy.default: _opaque_encoded_messages(email.message.EmailMessage),
          email.policy.compat32: _opaque_encoded_messages(email.message.Message)}


def _encoded_files(part) -> tuple[str, str] | None:
    """(name, why) of a blocked file uuencoded or yEnc-encoded in a text part, or None."""
    for match in _ENCODED_FILE.finditer(part.get_payload(decode=True) or b""):
        name = (match["uu"] or match["y"]).decode("utf-8", "replace").strip()
        extension = _blocked_name(name)
        if extension:
            return name, f".{extension} (encoded in the text)"
    return None


# The fields that say how a part is read: one value each, or the part means different things
# to different mail clients.
_STRUCTURE_FIELDS = ("Content-Type", "Content-Transfer-Encoding")


class _Ambiguous(Exception):
    """A part has two different values of ``field`` (one of _STRUCTURE_FIELDS)."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def _meaning(field: str, value) -> tuple:
    """What a structure field's value says: its type (or encoding) without case, and each
    parameter's value exactly (a boundary is case-sensitive, RFC 2046 §5.1.1: "BB" and "bb"
    are two multiparts)."""
    text = str(value)
    if field == "Content-Type":
        lenient = email.message.Message()
        lenient[field] = text
        try:
            params = lenient.get_params(header=field) or []
        except Exception:  # too broken to read: as written
            return (text,)
        return tuple((key.strip().lower(), value if i else "") for i, (key, value) in enumerate(params))
    return (" ".join(text.split()).lower(),)


def _check_unambiguous(get_all) -> None:
    """Raises _Ambiguous when ``get_all`` (a part's, or the message's) gives a structure
    field two values that say different things (``_meaning``)."""
    for field in _STRUCTURE_FIELDS:
        values = get_all(field) or ()
        if len(values) > 1 and len({_meaning(field, v) for v in values}) > 1:
            raise _Ambiguous(field)


def _first_problem(raw: bytes, policy, depth: int = 0) -> tuple[str, str] | None:
    """(name, why) of the first blocked part of the message, parsed with ``policy``, or None.
    Raises _Ambiguous (with ``ambiguous_parts``) at the first ambiguous part."""
    for part in BytesParser(_PARTS[policy], policy=policy).parsebytes(raw).walk():
        if SETTINGS["ambiguous_parts"]:
            _check_unambiguous(part.get_all)
        if part.get_content_type().startswith("message/") and _encoding(part) in _ENCODINGS:
            if depth < _MAX_ENCODED_MESSAGE_DEPTH:
                problem = _first_problem(part.get_payload(decode=True) or b"", policy, depth + 1)
                if problem:
                    return problem
            continue
        if part.is_multipart():
            continue
        problem = _problem(part)
        if not problem and SETTINGS["encoded_files"] and part.get_content_maintype() == "text":
            problem = _encoded_files(part)
        if problem:
            return problem
    return None


def _plain_text(message) -> bool:
    """Whether the message is a single text part with no file name and no file encoded in it:
    nothing attached, nothing to parse (the body is searched only when it is not encoded)."""
    content_type = (message.get("Content-Type") or "").lower()
    if content_type and not content_type.startswith("text/") or "name" in content_type or \
            "filename" in (message.get("Content-Disposition") or "").lower():
        return False
    if not SETTINGS["encoded_files"]:
        return True
    return _encoding(message) not in _ENCODINGS and not _ENCODED_FILE.search(message.body)


def _ambiguous(field: str):
    pc.log.info("attachments: refused, a part has two different %s fields", field)
    return pc.reject(f"Message refused: its MIME structure is ambiguous (two different {field} fields)",
                     code=550, status="5.7.1")


def on_data(tx, message):
    if SETTINGS["ambiguous_parts"]:
        try:
            _check_unambiguous(message.get_all)  # (before the plain-text shortcut, which reads the first)
        except _Ambiguous as e:
            return _ambiguous(e.field)
    if _plain_text(message):
        return None
    try:
        problem = _first_problem(message.raw, email.policy.default)
    except _Ambiguous as e:
        return _ambiguous(e.field)
    except Exception as e:  # the email package fails on some malformed headers (an IndexError, ...)
        pc.log.info("attachments: the MIME structure could not be parsed (%s: %s): read again leniently",
                    type(e).__name__, e)
        try:
            problem = _first_problem(message.raw, email.policy.compat32)
        except _Ambiguous as e:
            return _ambiguous(e.field)
        except Exception as e:
            pc.log.warning("attachments: refused, the MIME structure cannot be read (%s: %s)", type(e).__name__, e)
            return pc.reject("Message refused: its MIME structure cannot be read", code=550, status="5.7.1")
    if problem:
        name, why = problem
        shown = "".join(c if " " <= c < "\x7f" and c != '"' else "?" for c in name)[:100]
        pc.log.info("attachments: refused %r (%s)", name, why)
        return pc.reject(f'Message refused: attachment "{shown}" is of a blocked type ({why})',
                         code=550, status="5.7.1")
    return None
