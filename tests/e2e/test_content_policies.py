"""policies/header_checks.py and policies/attachments.py through the daemon
and a real upstream: a header rule edits or refuses, an executable in a ZIP
is refused, and the rest of the message reaches the upstream byte for byte."""

from __future__ import annotations

import io
import zipfile
from email.message import EmailMessage
from pathlib import Path

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def test_header_checks_and_attachments(policy_daemon, aiosmtpd_upstream, tmp_path):
    (tmp_path / "header_checks").write_text("/^Subject:.*viagra/  REJECT 5.7.1 No pharmacy spam\n"
                                            "/^X-Spam-Flag:/       IGNORE\n")
    d = policy_daemon(aiosmtpd_upstream.url, POLICIES / "header_checks.py", POLICIES / "attachments.py",
                      header_checks={"file": str(tmp_path / "header_checks")})

    def send(message: bytes):
        with d.connect() as c:
            return c.transaction("a@origin.example", ["b@example.test"], message.rstrip(b"\r\n"))

    r = send(b"Subject: cheap VIAGRA\r\n\r\nbuy")
    assert (r.code, r.status, r.text) == (550, "5.7.1", "No pharmacy spam")
    assert send(b"Subject: fine\r\nX-Spam-Flag: YES\r\nX-Other:  kept  as is\r\n\r\nhello").code == 250
    content = aiosmtpd_upstream.wait_messages(1)[0]["content"]
    assert b"X-Spam-Flag" not in content and b"X-Other:  kept  as is\r\n" in content

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("invoice.pdf.exe", b"MZ")
    m = EmailMessage()
    m["Subject"] = "invoice"
    m.set_content("see attached")
    m.add_attachment(archive.getvalue(), maintype="application", subtype="zip", filename="invoice.zip")
    r = send(m.as_bytes().replace(b"\n", b"\r\n"))
    assert (r.code, r.status) == (550, "5.7.1") and 'attachment "invoice.zip/invoice.pdf.exe"' in r.text
    d.wait_log(r"attachments: refused 'invoice\.zip/invoice\.pdf\.exe' \(\.exe\)")
    assert len(aiosmtpd_upstream.envelopes) == 1


def test_a_message_whose_first_line_continues_nothing_is_refused(policy_daemon, aiosmtpd_upstream, tmp_path):
    """A first line starting with white space is the body's start to the policies (they saw
    no Subject, no attachment), while the upstream read it as a continuation of our Received:
    and the fields after it as the message's: the attachment and the Subject went through."""
    (tmp_path / "header_checks").write_text("/^Subject:.*viagra/  REJECT 5.7.1 No pharmacy spam\n")
    d = policy_daemon(aiosmtpd_upstream.url, POLICIES / "header_checks.py", POLICIES / "attachments.py",
                      header_checks={"file": str(tmp_path / "header_checks")})
    m = EmailMessage()
    m["Subject"] = "cheap viagra"
    m.set_content("see attached")
    m.add_attachment(b"MZ", maintype="application", subtype="octet-stream", filename="invoice.exe")
    message = m.as_bytes().replace(b"\n", b"\r\n").rstrip(b"\r\n")
    for start in (b" ", b"\t", b" x\r\n"):
        with d.connect() as c:
            sid = d.session_id(c.local_port)
            r = c.transaction("a@origin.example", ["b@example.test"], start + message)
        assert (r.code, r.status, r.text) == (550, "5.6.0", "Message refused: its first line starts with white space")
        d.wait_log(rf"{sid}: message refused: its first line starts with white space")
    with d.connect() as c:  # (as sent, the policies refuse it)
        assert c.transaction("a@origin.example", ["b@example.test"], message).code == 550
    assert aiosmtpd_upstream.envelopes == []
