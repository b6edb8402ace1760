"""policies/attachments.py through the testing harness: names, types,
nested multiparts, attached messages, ZIP archives (and ZIPs in them)."""

from __future__ import annotations

import io
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


@pytest.mark.parametrize("table,why", [({"extensions": "exe"}, "list of strings"), ({"archives": 1}, "true or false"),
                                       ({"colour": 1}, "unknown key"), ({"max_archive_size": -1}, "bytes")])
def test_bad_settings(table, why):
    with pytest.raises(PolicyLoadError, match=why):
        Harness([POLICY], config={"attachments": table})
