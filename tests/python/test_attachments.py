"""policies/attachments.py through the testing harness: names, types,
nested multiparts, attached messages, ZIP archives (and ZIPs in them)."""

from __future__ import annotations

import base64
import io
import quopri
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from portcullis.testing import Harness, PolicyLoadError

POLICY = Path(__file__).resolve().parents[2] / "policies" / "attachments.py"


def zipped(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


def mail(*attachments: tuple[str, bytes, str], nested: bool = False) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "a@example.com", "b@example.test", "files"
    m.set_content("see attached")
    for name, data, ctype in attachments:
        maintype, subtype = ctype.split("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    if nested:  # the whole thing as an attached message inside another
        outer = EmailMessage()
        outer["From"], outer["To"], outer["Subject"] = "a@example.com", "b@example.test", "fwd"
        outer.set_content("forwarded")
        outer.add_attachment(m)
        m = outer
    return m.as_bytes().replace(b"\n", b"\r\n")


def send(h: Harness, message: bytes):
    s = h.connect(helo="client.example")
    s.mail("a@example.com")
    s.rcpt("b@example.test")
    return s.data(message)


@pytest.fixture
def h():
    with Harness([POLICY]) as harness:
        yield harness


def test_harmless_mail_passes(h):
    assert send(h, b"Subject: plain\r\n\r\ntext only\r\n").code == 250
    assert send(h, mail(("report.pdf", b"%PDF-1.4", "application/pdf"),
                        ("data.zip", zipped({"a.txt": b"x", "b.csv": b"y"}), "application/zip"))).code == 250


def test_blocked_names_types_and_hiding_places(h):
    cases = [
        (mail(("invoice.pdf.exe", b"MZ", "application/octet-stream")), 'attachment "invoice.pdf.exe" is of a blocked type (.exe)'),
        (mail(("RUN.SCR", b"MZ", "application/octet-stream")), "(.scr)"),
        (mail(("harmless.txt", b"MZ", "application/x-msdownload")), "(application/x-msdownload)"),
        (mail(("photos.zip", zipped({"img/1.jpg": b"x", "img/view.js": b"y"}), "application/zip")),
         'attachment "photos.zip/img/view.js" is of a blocked type (.js)'),
        (mail(("outer.zip", zipped({"inner.zip": zipped({"setup.msi": b"x"})}), "application/zip")),
         "outer.zip/inner.zip/setup.msi"),
        (mail(("tool.exe", b"MZ", "application/octet-stream"), nested=True), "tool.exe"),
        (mail(("trailing.exe.", b"MZ", "application/octet-stream")), "(.exe)"),
    ]
    for message, why in cases:
        r = send(h, message)
        assert r[:2] == (550, "5.7.1") and why in r.text, (why, r)


def test_rfc2231_names_are_decoded():
    m = EmailMessage()
    m["Subject"] = "x"
    m.set_content("x")
    m.add_attachment(b"MZ", maintype="application", subtype="octet-stream", filename=("utf-8", "", "Rechnung ä.exe"))
    with Harness([POLICY]) as h:
        r = send(h, m.as_bytes().replace(b"\n", b"\r\n"))
        assert r[:2] == (550, "5.7.1") and 'attachment "Rechnung ?.exe"' in r.text


# A part may name its file more than once: plain and RFC 2231 spellings, repeated
# parameters, repeated fields. Mail clients differ in the one they show (a
# client following RFC 6266 shows filename*), so every one is checked.
@pytest.mark.parametrize("fields", [
    ["Content-Disposition: attachment; filename=\"a.txt\"; filename*=UTF-8''a.exe"],
    ["Content-Disposition: attachment; filename=\"a.txt\"; filename*0=\"a.e\"; filename*1=\"xe\""],
    ["Content-Disposition: attachment; filename=\"a.txt\"; filename=\"a.exe\""],
    ["Content-Disposition: attachment; filename=\"a.txt\"", "Content-Disposition: attachment; filename=\"a.exe\""],
    ["Content-Type: application/octet-stream; name=\"a.txt\"; name*=UTF-8''a.exe"],
])
def test_every_name_a_part_gives_its_file_is_checked(fields):
    body = ("From: a@example.com\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
            "--b\r\nContent-Type: text/plain\r\n\r\nsee\r\n"
            "--b\r\n" + "".join(f + "\r\n" for f in fields) +
            ("" if any(f.startswith("Content-Type") for f in fields) else "Content-Type: application/octet-stream\r\n") +
            "Content-Transfer-Encoding: base64\r\n\r\nTVo=\r\n--b--\r\n")
    with Harness([POLICY]) as h:
        r = send(h, body.encode())
        assert r[:2] == (550, "5.7.1") and '"a.exe"' in r.text, r


def test_settings_change_the_lists():
    exe = mail(("tool.exe", b"MZ", "application/octet-stream"))
    with Harness([POLICY], config={"attachments": {"allowed_extensions": ["exe"]}}) as h:
        assert send(h, exe).code == 250
    with Harness([POLICY], config={"attachments": {"extra_extensions": [".PDF"]}}) as h:
        assert send(h, mail(("a.pdf", b"%PDF", "application/pdf")))[:2] == (550, "5.7.1")
    with Harness([POLICY], config={"attachments": {"archives": False}}) as h:
        assert send(h, mail(("p.zip", zipped({"x.js": b"y"}), "application/zip"))).code == 250
    with Harness([POLICY]) as h:  # a broken archive passes, logged
        assert send(h, mail(("broken.zip", b"PK\x03\x04 not really", "application/zip"))).code == 250
        assert any("could not be read" in line.message for line in h.logs)


@pytest.mark.parametrize("table,why", [({"extensions": "exe"}, "list of strings"), ({"archives": 1}, "true or false"), ({"encoded_files": "yes"}, "true or false"),
                                       ({"ambiguous_parts": "no"}, "true or false"),
                                       ({"colour": 1}, "unknown key"), ({"max_archive_size": -1}, "bytes")])
def test_bad_settings(table, why):
    with pytest.raises(PolicyLoadError, match=why):
        Harness([POLICY], config={"attachments": table})


def b64(data: bytes) -> str:
    return base64.encodebytes(data).decode().replace("\n", "\r\n")


HEAD = "From: a@example.com\r\nTo: b@example.test\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
EXE = b64(b"MZ\x90\x00" * 50)


def multipart(*parts: str) -> bytes:
    body = "".join(f"--BB\r\n{part}" for part in parts)
    return (HEAD + "Content-Type: multipart/mixed; boundary=BB\r\n\r\n--BB\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
            + body + "--BB--\r\n").encode()


def test_a_single_part_message_is_checked_like_a_part(h):
    # the message itself is the attachment: it used to go unparsed, as it has no multipart and no name
    exe = HEAD + "Content-Type: application/x-msdownload\r\nContent-Transfer-Encoding: base64\r\n\r\n" + EXE
    assert send(h, exe.encode())[:2] == (550, "5.7.1")
    archive = (HEAD + "Content-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               + b64(zipped({"invoice.exe": b"MZ"})))
    r = send(h, archive.encode())
    assert r[:2] == (550, "5.7.1") and 'attachment "archive/invoice.exe"' in r.text
    for harmless in (HEAD + "\r\ntext\r\n", HEAD + "Content-Type: text/html; charset=utf-8\r\n\r\n<p>x</p>\r\n",
                     HEAD + "Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(b"%PDF")):
        assert send(h, harmless.encode()).code == 250, harmless


def corrupt_member_zip() -> bytes:
    """A ZIP whose member nested.zip has a corrupt deflate stream, with invoice.exe after it."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("nested.zip", b"PK" + bytes(range(256)) * 8)
        z.writestr("invoice.exe", b"MZ" * 100)
    raw = bytearray(out.getvalue())
    start = 30 + len("nested.zip")  # nested.zip's data, after its local header
    for i in range(start, start + 8):
        raw[i] ^= 0xFF
    return bytes(raw)


@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
def test_a_corrupt_member_is_passed_and_the_rest_still_checked(on_error):
    message = multipart('Content-Type: application/zip; name="docs.zip"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
                        + b64(corrupt_member_zip()))
    with Harness([POLICY], on_error=on_error) as h:
        r = send(h, message)
        assert r[:2] == (550, "5.7.1") and 'attachment "docs.zip/invoice.exe"' in r.text, r
        assert any("archive member 'nested.zip' could not be read" in line.message for line in h.logs)


@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
def test_a_malformed_parameter_is_read_leniently(on_error):
    # "name*0*" with nothing after it makes policy.default raise IndexError inside parsebytes()
    bad = "Content-Type: text/plain; name*0*\r\n\r\nhi\r\n"
    exe = f'Content-Type: application/octet-stream; name="invoice.exe"\r\nContent-Transfer-Encoding: base64\r\n\r\n{EXE}'
    with Harness([POLICY], on_error=on_error) as h:
        r = send(h, multipart(bad, exe))
        assert r[:2] == (550, "5.7.1") and 'attachment "invoice.exe"' in r.text, r
        assert send(h, multipart(bad)).code == 250
        assert any("read again leniently" in line.message for line in h.logs)


def test_a_mime_structure_no_parser_reads_is_refused(h):
    class Failing:
        def __init__(self, _class=None, policy=None):
            pass

        def parsebytes(self, raw):
            raise IndexError("string index out of range")

    h.module("attachments.py").BytesParser = Failing
    r = send(h, mail(("report.pdf", b"%PDF-1.4", "application/pdf")))
    assert r[:2] == (550, "5.7.1") and "MIME structure cannot be read" in r.text


@pytest.mark.parametrize("headers", [
    'Content-Type: application/octet-stream; name="evil.exe"\r\nContent-Disposition: attachment; filename="evil.pdf"',
    'Content-Type: application/octet-stream; name="evil.pdf"\r\nContent-Disposition: attachment; filename="evil.exe"',
    "Content-Type: application/octet-stream; name==?UTF-8?B?ZXZpbC5leGU=?=",
])
def test_every_file_name_of_a_part_counts(h, headers):
    r = send(h, multipart(f"{headers}\r\nContent-Transfer-Encoding: base64\r\n\r\n{EXE}"))
    assert r[:2] == (550, "5.7.1") and 'attachment "evil.exe"' in r.text, r


def qp_soft_broken(data: bytes) -> bytes:
    """Quoted-printable with a soft line break every 20 octets or so: the attached message's
    own header lines are cut apart, so only a decoder sees its attachment's name."""
    lines = []
    for line in data.split(b"\r\n"):
        encoded, pieces = quopri.encodestring(line).replace(b"=\n", b"").rstrip(b"\n"), []
        while len(encoded) > 20:
            cut = 20 - (2 if encoded[18:19] == b"=" else 1 if encoded[19:20] == b"=" else 0)
            pieces.append(encoded[:cut] + b"=")
            encoded = encoded[cut:]
        lines.append(b"\r\n".join(pieces + [encoded]))
    return b"\r\n".join(lines)


def forwarded(inner: bytes, encoding: str) -> bytes:
    body = base64.encodebytes(inner).replace(b"\n", b"\r\n") if encoding == "base64" else qp_soft_broken(inner)
    return (b"From: a@example.com\r\nTo: b@example.test\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="XX"\r\n\r\n'
            b"--XX\r\nContent-Type: text/plain\r\n\r\nforwarded\r\n"
            b"--XX\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: " + encoding.encode() +
            b"\r\n\r\n" + body + b"\r\n--XX--\r\n")


@pytest.mark.parametrize("encoding", ["base64", "quoted-printable"])
def test_an_encoded_attached_message_is_looked_into(h, encoding):
    """RFC 2046 §5.2.1 forbids encoding a message/rfc822 part, so the parser reads the encoded
    text as the message; a mail client may decode it all the same: its attachments are checked."""
    r = send(h, forwarded(mail(("tool.exe", b"MZ", "application/octet-stream")), encoding))
    assert r[:2] == (550, "5.7.1") and "tool.exe" in r.text, r
    assert send(h, forwarded(mail(("tool.pdf", b"MZ", "application/octet-stream")), encoding)).code == 250


UUENCODED = "begin 644 invoice.exe\r\n#35H`\r\n`\r\nend\r\n"
YENCODED = "=ybegin line=128 size=2 name=invoice.exe\r\nwx\r\n=yend size=2\r\n"


@pytest.mark.parametrize("block", [UUENCODED, YENCODED, UUENCODED.replace("begin 644", "begin-base64 644")])
def test_a_file_encoded_in_the_text_is_checked(h, block):
    """uuencode and yEnc blocks in a text part: Thunderbird shows them as attachments."""
    single = HEAD + "\r\nhello\r\n" + block
    r = send(h, single.encode())
    assert r[:2] == (550, "5.7.1") and 'attachment "invoice.exe" is of a blocked type (.exe (encoded in the text))' \
        in r.text, r
    r = send(h, multipart("Content-Type: text/plain\r\n\r\n" + block))
    assert r[:2] == (550, "5.7.1") and "invoice.exe" in r.text, r
    # quoted-printable hides "begin" from a search of the raw text, not from the decoded one
    hidden = HEAD + "Content-Transfer-Encoding: quoted-printable\r\n\r\nhello\r\n=" + block.encode().hex()[:2] \
        + block[1:]
    assert send(h, hidden.encode())[:2] == (550, "5.7.1")
    assert send(h, (HEAD + "\r\n" + block.replace("invoice.exe", "invoice.txt")).encode()).code == 250
    assert send(h, (HEAD + "\r\nwe begin 644 times a day.exe\r\n").encode()).code == 250


def test_encoded_files_can_be_left_alone():
    with Harness([POLICY], config={"attachments": {"encoded_files": False}}) as h:
        assert send(h, (HEAD + "\r\n" + UUENCODED).encode()).code == 250


# Two different Content-Type (or Content-Transfer-Encoding) fields: Python's parser reads the
# first, a mail client may read the last. Here the first says plain text (nothing to look
# at), the last a multipart with a program in it.
TWO_TYPES = (HEAD + "Content-Type: text/plain\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\n"
             "--BB\r\nContent-Type: text/plain\r\n\r\nhi\r\n--BB\r\nContent-Type: application/octet-stream\r\n"
             "Content-Disposition: attachment; filename=run.exe\r\nContent-Transfer-Encoding: base64\r\n\r\n"
             + EXE + "--BB--\r\n").encode()
# In a part: read as 7bit, the text holds nothing; read as base64, a uuencoded program.
TWO_ENCODINGS = multipart("Content-Type: text/plain\r\nContent-Transfer-Encoding: 7bit\r\n"
                          "Content-Transfer-Encoding: base64\r\n\r\n"
                          + b64(b"begin 644 setup.exe\r\nM39\r\n`\r\nend\r\n"))


# The same type, and boundaries that differ only in case: two multiparts (RFC 2046 §5.1.1). Python
# reads the first (no part has its boundary: nothing seen), a client the last (run.exe).
TWO_BOUNDARIES = TWO_TYPES.replace(b"Content-Type: text/plain\r\nContent-Type: multipart/mixed; boundary=BB",
                                   b"Content-Type: multipart/mixed; boundary=BB\r\nContent-Type: multipart/mixed; boundary=bb"
                                   ).replace(b"--BB", b"--bb")


def test_a_part_with_two_different_structure_fields_is_refused(h):
    for message, field in ((TWO_TYPES, "Content-Type"), (TWO_ENCODINGS, "Content-Transfer-Encoding"),
                           (TWO_BOUNDARIES, "Content-Type")):
        r = send(h, message)
        assert r[:2] == (550, "5.7.1") and r.text.endswith(
            f"Message refused: its MIME structure is ambiguous (two different {field} fields)"), r
        assert any(f"a part has two different {field} fields" in line.message for line in h.logs)
    # The same value twice (white space and case aside) is no ambiguity.
    same = HEAD + "Content-Type: text/plain; charset=utf-8\r\ncontent-type:  TEXT/plain;  CHARSET=utf-8\r\n\r\nhi\r\n"
    assert send(h, same.encode()).code == 250
    assert send(h, multipart("Content-Type: text/plain\r\nContent-Type: text/plain\r\n\r\nhi\r\n")).code == 250


def test_ambiguous_parts_can_be_read_as_their_first_fields_say():
    with Harness([POLICY], config={"attachments": {"ambiguous_parts": False}}) as h:
        assert send(h, TWO_TYPES).code == 250  # the first: plain text
        assert send(h, TWO_ENCODINGS).code == 250  # the first: 7bit text
