"""XCLIENT says who the client is once per upstream connection; when that
changes (an AUTH after the first transaction, a STARTTLS that forgets the
login, a new HELO), the next MAIL is preceded by a fresh XCLIENT and EHLO, or
the upstream would decide relaying on a stale LOGIN= (issue 7, item 2).
The fake upstream records every command; a real Postfix, when installed,
shows that the fresh LOGIN= is what its restrictions see."""

from __future__ import annotations

import pytest

import postfix_instance
from postfix_instance import PostfixInstance
from sec_helpers import b64, certs, client_context, sec_daemon, write_users  # noqa: F401  (fixtures)

BODY = b"Subject: who\r\n\r\nidentity"
EHLO = "250-fake.upstream\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-XCLIENT ADDR HELO LOGIN\r\n250 SIZE 1000000"
PASSWORD = "Pass-Word-1"


@pytest.fixture
def xclient_daemon(sec_daemon, fake_upstream, certs, tmp_path):
    up = fake_upstream({"EHLO": EHLO, "XCLIENT": "220 fake.upstream ESMTP (after XCLIENT)"})
    users = write_users(tmp_path / "users", {"alice": PASSWORD})
    cert, key = certs["mx"]
    d = sec_daemon(up.url, upstream={"client_info": "xclient"}, tls={"cert": str(cert), "key": str(key)},
                   auth={"users_file": str(users), "allow_plaintext": True})
    return d, up


def xclients(up) -> list[str]:
    return [c for c in up.commands if c.startswith("XCLIENT")]


def send(c, tag: str) -> None:
    r = c.transaction("a@example.test", ["b@example.test"], BODY + tag.encode())
    assert r.code == 250, str(r)


def test_auth_after_first_transaction_sends_a_fresh_xclient(xclient_daemon):
    d, up = xclient_daemon
    with d.connect(ehlo="c.test", source="127.0.0.5") as c:
        send(c, "before")
        c.exchange("AUTH PLAIN " + b64("\0alice\0" + PASSWORD), 235)
        send(c, "after")
        send(c, "again")
    assert len(up.connections) == 1
    assert xclients(up) == ["XCLIENT ADDR=127.0.0.5 HELO=c.test LOGIN=[UNAVAILABLE]",
                            "XCLIENT ADDR=127.0.0.5 HELO=c.test LOGIN=alice"]
    cmds = up.commands
    # Each XCLIENT is followed by EHLO (Postfix greets anew), then the MAIL it was sent for.
    for i, cmd in enumerate(cmds):
        if cmd.startswith("XCLIENT"):
            assert cmds[i + 1] == "EHLO c.test" and cmds[i + 2].startswith("MAIL FROM:"), cmds
    assert len([c for c in cmds if c.startswith("MAIL")]) == 3


def test_starttls_forgets_the_login_upstream_too(xclient_daemon):
    d, up = xclient_daemon
    with d.connect(ehlo="c.test", source="127.0.0.5") as c:
        c.exchange("AUTH PLAIN " + b64("\0alice\0" + PASSWORD), 235)
        send(c, "as alice")
        c.starttls(client_context())
        c.exchange("EHLO c.test", 250)
        send(c, "after starttls")
    assert xclients(up) == ["XCLIENT ADDR=127.0.0.5 HELO=c.test LOGIN=alice",
                            "XCLIENT ADDR=127.0.0.5 HELO=c.test LOGIN=[UNAVAILABLE]"]


def test_new_helo_sends_a_fresh_xclient(xclient_daemon):
    d, up = xclient_daemon
    with d.connect(ehlo="first.test", source="127.0.0.5") as c:
        send(c, "one")
        c.exchange("EHLO second.test", 250)
        send(c, "two")
        c.exchange("HELO second.test", 250)  # the same name: nothing new to say
        send(c, "three")
    assert xclients(up) == ["XCLIENT ADDR=127.0.0.5 HELO=first.test LOGIN=[UNAVAILABLE]",
                            "XCLIENT ADDR=127.0.0.5 HELO=second.test LOGIN=[UNAVAILABLE]"]
    assert "EHLO second.test" in up.commands


def test_xclient_refused_on_the_second_time_fails_closed(sec_daemon, fake_upstream, tmp_path):
    up = fake_upstream({"EHLO": EHLO, "XCLIENT": ["220 fake.upstream ESMTP", "550 5.7.0 insufficient authorization"]})
    users = write_users(tmp_path / "users", {"alice": PASSWORD})
    d = sec_daemon(up.url, upstream={"client_info": "xclient"},
                   auth={"users_file": str(users), "allow_plaintext": True})
    with d.connect(ehlo="c.test", source="127.0.0.5") as c:
        sid = d.session_of(c.local_port, ip="127.0.0.5")
        send(c, "before")
        c.exchange("AUTH PLAIN " + b64("\0alice\0" + PASSWORD), 235)
        # Never relayed under the old identity.
        c.exchange("MAIL FROM:<a@example.test>", 451, "4.3.0")
    assert len([x for x in up.commands if x.startswith("MAIL")]) == 1
    d.wait_log(rf"{sid}: upstream: XCLIENT refused: 550 5\.7\.0 insufficient authorization$")


# --------------------------------------------------------------------------
# A real Postfix: relaying for an authenticated client is decided on the fresh LOGIN=

NO_POSTFIX = postfix_instance.available()


@pytest.fixture(scope="module")
def postfix_sasl():
    """Postfix that relays for mynetworks (the proxy itself, 127.0.0.1) and for
    SASL-authenticated clients, and takes XCLIENT from 127.0.0.0/8."""
    if NO_POSTFIX:
        pytest.skip(NO_POSTFIX)
    pf = PostfixInstance({
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
    }, name="pf-sasl")
    try:
        pf.start()
        yield pf
    finally:
        pf.stop()


def test_postfix_relays_after_auth_in_the_same_session(sec_daemon, postfix_sasl, tmp_path):
    users = write_users(tmp_path / "users", {"alice": PASSWORD})
    d = sec_daemon(postfix_sasl.url, upstream={"client_info": "xclient"},
                   auth={"users_file": str(users), "allow_plaintext": True})
    with d.connect(ehlo="c.test", source="127.0.0.5") as c:
        # As 127.0.0.5 without a login, Postfix refuses to relay ...
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<victim@foreign.test>", 554, "5.7.1")
        c.exchange("RSET", 250)
        c.exchange("AUTH PLAIN " + b64("\0alice\0" + PASSWORD), 235)
        # ... and relays once it has been told of the login.
        r = c.transaction("a@example.test", ["friend@foreign.test"], BODY)
        assert r.code == 250, str(r)
    postfix_sasl.wait_log(r"client=\S*\[127\.0\.0\.5\].*sasl_username=alice")
