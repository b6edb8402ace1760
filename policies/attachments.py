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

Every part of the message is looked at: nested multiparts, attached
messages (``message/rfc822``) and their parts. A part is blocked when its
file name (``Content-Disposition`` ``filename``, else ``Content-Type``
``name``; RFC 2231 encoded names decoded) ends in a blocked extension
(``invoice.pdf.exe`` ends in ``exe``; case does not matter), when its
Content-Type is blocked, or when it is a ZIP archive holding such a name.
Only the archive's directory is read (no file is extracted), so it is
cheap. An encrypted or broken archive is passed (and logged): refusing
every unreadable ZIP is a choice for ``extra_extensions = ["zip"]``.

A blocked message gets ``550 5.7.1 Message refused: attachment "NAME" is
of a blocked type (.EXT)`` and a log line.
"""

from __future__ import annotations

import email.policy
import io
import zipfile
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
_KEYS = ("extensions", "extra_extensions", "allowed_extensions", "mime_types", "archives", "max_archive_size")
_ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/x-zip")


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
         "archives": table.get("archives", True), "max_archive_size": table.get("max_archive_size", 10 * 1024 * 1024)}
    if not isinstance(s["archives"], bool):
        raise ValueError("[attachments] archives: want true or false")
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
                    found = _in_archive(archive.read(info), depth + 1)
                    if found:
                        return f"{info.filename}/{found[0]}", found[1]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError, OSError) as e:
        pc.log.info("attachments: an archive could not be read (%s): passed", e)
    return None


def _problem(part) -> tuple[str, str] | None:
    """(what to name, why) for a blocked part, or None."""
    try:
        name = part.get_filename() or ""
    except Exception:  # a header too broken to decode
        name = ""
    content_type = part.get_content_type()
    extension = _blocked_name(name) if name else None
    if extension:
        return name, f".{extension}"
    if content_type in SETTINGS["mime_types"]:
        return name or content_type, content_type
    if SETTINGS["archives"] and (content_type in _ZIP_TYPES or name.lower().endswith(".zip")):
        data = part.get_payload(decode=True) or b""
        if len(data) <= SETTINGS["max_archive_size"]:
            found = _in_archive(data)
            if found:
                return f"{name or 'archive'}/{found[0]}", f".{found[1]}"
    return None


def on_data(tx, message):
    content_type = (message.get("Content-Type") or "").lower()
    if not content_type.startswith(("multipart/", "message/")) and "name" not in content_type and \
            "filename" not in (message.get("Content-Disposition") or "").lower():
        return None  # a single text part: nothing attached, nothing to parse
    parsed = BytesParser(policy=email.policy.default).parsebytes(message.raw)
    for part in parsed.walk():
        if part.is_multipart():
            continue
        problem = _problem(part)
        if problem:
            name, why = problem
            shown = "".join(c if " " <= c < "\x7f" and c != '"' else "?" for c in name)[:100]
            pc.log.info("attachments: refused %r (%s)", name, why)
            return pc.reject(f'Message refused: attachment "{shown}" is of a blocked type ({why})',
                             code=550, status="5.7.1")
    return None
