"""policies/senders.py through the daemon: smtplib clients that log in over
implicit TLS (users file) or do not, a real upstream (aiosmtpd), and the
aliases table for ownership through aliases."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from conftest import sanitized_python_env
from sec_helpers import (  # noqa: F401  (certs, sec_daemon are fixtures)
    certs,
    client_context,
    sec_daemon,
    write_users,
)

POLICIES = Path(__file__).resolve().parents[2] / "policies"
BODY = b"Subject: senders\r\n\r\nwho sends this?"


@pytest.fixture
def senders_daemon(sec_daemon, aiosmtpd_upstream, certs, tmp_path, monkeypatch):
    for name, value in sanitized_python_env().items():
        monkeypatch.setenv(name, value)
    (tmp_path / "senders").write_text("alice@example.test alice\nsales@example.test alice, bob\n")
    (tmp_path / "aliases").write_text("alice@example.test alice@example.test\nbob@example.test bob@example.test\n"
                                      "team@example.test alice@example.test, bob@example.test\n")
    users = write_users(tmp_path / "users.txt", {"alice": "alice-pw-1", "bob": "bob-pw-2"})
    cert, key = certs["mx"]
    return sec_daemon(aiosmtpd_upstream.url, tls_port=True, tls={"cert": str(cert), "key": str(key)},
                      auth={"users_file": str(users)},
                      policy={"files": [str(POLICIES / "aliases.py"), str(POLICIES / "senders.py")]},
                      aliases={"file": str(tmp_path / "aliases"), "local_domains": ["example.test"]},
                      senders={"file": str(tmp_path / "senders"), "owns_aliases": True})


def send(d, sender: str, login: tuple[str, str] | None):
    s = smtplib.SMTP_SSL("127.0.0.1", d.tls_port, local_hostname="client.test", timeout=10, context=client_context())
    try:
        if login:
            s.login(*login)
        return s.sendmail(sender, ["alice@example.test"], BODY)
    finally:
        s.close()


def test_logged_in_clients_send_only_as_what_they_own(senders_daemon, aiosmtpd_upstream):
    d = senders_daemon
    alice, bob = ("alice", "alice-pw-1"), ("bob", "bob-pw-2")
    for n, (sender, login) in enumerate((("alice@example.test", alice), ("sales@example.test", bob),
                                         ("team@example.test", alice), ("", bob)), 1):
        assert send(d, sender, login) == {}
        assert aiosmtpd_upstream.wait_messages(n)[-1]["mail_from"] == (sender or "<>")
    with pytest.raises(smtplib.SMTPSenderRefused) as e:
        send(d, "alice@example.test", bob)
    assert (e.value.smtp_code, e.value.smtp_error) == (
        553, b"5.7.1 <alice@example.test>: Sender address rejected: not owned by user bob")
    with pytest.raises(smtplib.SMTPSenderRefused):
        send(d, "someone@elsewhere.example", alice)


def test_clients_that_did_not_log_in_may_not_use_local_senders(senders_daemon, aiosmtpd_upstream):
    d = senders_daemon
    with pytest.raises(smtplib.SMTPSenderRefused) as e:
        send(d, "alice@example.test", None)
    assert (e.value.smtp_code, e.value.smtp_error) == (
        553, b"5.7.1 <alice@example.test>: Sender address rejected: not logged in")
    assert send(d, "stranger@elsewhere.example", None) == {}  # inbound mail
    assert aiosmtpd_upstream.wait_messages(1)[0]["mail_from"] == "stranger@elsewhere.example"


def test_a_quoted_spelling_of_a_local_sender_needs_a_login_too(senders_daemon, aiosmtpd_upstream):
    # "alice"@ and "al\ice"@ are alice@ (RFC 5321 §4.1.2): they passed without a login.
    d = senders_daemon
    for sender in ('"alice"@example.test', '"al\\ice"@example.test'):
        s = smtplib.SMTP_SSL("127.0.0.1", d.tls_port, local_hostname="client.test", timeout=10,
                             context=client_context())
        try:
            s.ehlo()
            assert s.docmd(f"MAIL FROM:<{sender}>") == (
                553, f"5.7.1 <{sender}>: Sender address rejected: not logged in".encode())
            s.login("alice", "alice-pw-1")
            assert s.docmd(f"MAIL FROM:<{sender}>")[0] == 250  # hers once she logged in
        finally:
            s.close()
