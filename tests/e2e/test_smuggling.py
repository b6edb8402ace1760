"""SMTP smuggling (CVE-2023-51764/51765/51766 and friends): an end-of-data
look-alike inside a message, followed by a second transaction, must neither
end the message early nor let the hidden transaction reach the upstream.
The proxy refuses the whole message; the upstream sees no DATA at all."""

from __future__ import annotations

import pytest

# (id, fake ending, enhanced status)
ENDINGS = [
    ("lf-dot-lf", b"\n.\n", "5.5.2"),
    ("lf-dot-crlf", b"\n.\r\n", "5.5.2"),
    ("crlf-dot-lf", b"\r\n.\n", "5.5.2"),
    ("cr-dot-cr", b"\r.\r", "5.5.2"),
    ("crlf-dot-cr", b"\r\n.\r", "5.5.2"),
    ("crlf-nul-dot-crlf", b"\r\n\0.\r\n", "5.6.0"),
    ("crlf-dot-cr-crlf", b"\r\n.\r\r\n", "5.5.2"),
    # a few more seen in the wild
    ("lf-dot-cr", b"\n.\r", "5.5.2"),
    ("cr-dot-crlf", b"\r.\r\n", "5.5.2"),
    ("crlf-dot-nul-crlf", b"\r\n.\0\r\n", "5.6.0"),
]

SMUGGLED = (
    b"MAIL FROM:<evil@x>\r\n"
    b"RCPT TO:<victim@y>\r\n"
    b"DATA\r\n"
    b"From: ceo@bank.example\r\n"
    b"Subject: evil\r\n"
    b"\r\n"
    b"wire the money\r\n"
)


@pytest.mark.parametrize("ending,status", [e[1:] for e in ENDINGS], ids=[e[0] for e in ENDINGS])
def test_smuggled_transaction_is_refused(start_daemon, fake_upstream, ending, status):
    up = fake_upstream()
    d = start_daemon(up.url, upstream={"pool_size": 0})  # the whole upstream dialogue of one session, down to its QUIT: no pooled connection
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("MAIL FROM:<alice@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<bob@example.test>", 250, "2.1.5")
        c.exchange("DATA", 354)
        c.send(b"From: alice@example.test\r\nSubject: innocent\r\n\r\nhello" + ending + SMUGGLED + b"\r\n.\r\n")
        # One reply for the whole thing: not a 250 for the first part, nor
        # replies to the smuggled MAIL/RCPT/DATA.
        r = c.reply()
        assert (r.code, r.status) == (550, status), str(r)
        # The session keeps working: a clean transaction goes through.
        r = c.transaction("alice@example.test", ["bob@example.test"], b"Subject: clean\r\n\r\nall good")
        assert (r.code, r.status, r.text) == (250, "2.0.0", "Ok: queued as FAKE1")
        c.exchange("QUIT", 221, "2.0.0")
        assert c.closed()
    assert up.wait_for(lambda: "QUIT" in up.commands)
    [msg] = up.messages
    assert msg.content.endswith(b"\r\nSubject: clean\r\n\r\nall good\r\n")
    # Exactly one DATA upstream (the clean one); the smuggled text never left the proxy.
    assert up.commands.count("DATA") == 1
    assert b"evil" not in up.received and b"victim" not in up.received and b"innocent" not in up.received
    kind = "NUL byte" if status == "5.6.0" else r"bare CR or LF \(possible SMTP smuggling\)"
    d.wait_log(rf"{sid}: message refused: {kind}$")
    d.wait_log(rf"{sid}: tx={sid}\.1 .* verdict=rejected$")


def test_smuggling_split_across_segments(start_daemon, fake_upstream):
    """The fake ending arrives byte by byte, so a decoder that only looks
    within one read would miss it."""
    up = fake_upstream()
    d = start_daemon(up.url, upstream={"pool_size": 0})  # the whole upstream dialogue of one session, down to its QUIT: no pooled connection
    with d.connect() as c:
        c.exchange("MAIL FROM:<alice@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<bob@example.test>", 250, "2.1.5")
        c.exchange("DATA", 354)
        c.send(b"Subject: split\r\n\r\nhello")
        for b in b"\n.\r\n" + SMUGGLED[:20]:
            c.send(bytes([b]))
        c.send(SMUGGLED[20:] + b"\r\n.\r\n")
        c.expect(550, "5.5.2")
        c.exchange("NOOP", 250, "2.0.0")
    assert up.wait_for(lambda: "QUIT" in up.commands)
    assert "DATA" not in up.commands and up.messages == []
    assert b"evil" not in up.received


def test_proper_crlf_dot_crlf_ends_message_and_rest_are_commands(start_daemon, fake_upstream):
    """Control case: with a *real* end of data, what follows is a second
    transaction from the same client, which is legitimate and goes through."""
    up = fake_upstream()
    d = start_daemon(up.url)
    with d.connect() as c:
        c.exchange("MAIL FROM:<alice@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<bob@example.test>", 250, "2.1.5")
        c.exchange("DATA", 354)
        c.send(b"Subject: one\r\n\r\nhello\r\n.\r\n" + SMUGGLED + b".\r\n")
        assert [(r.code, r.status) for r in (c.reply() for _ in range(5))] == [
            (250, "2.0.0"), (250, "2.1.0"), (250, "2.1.5"), (354, ""), (250, "2.0.0"),
        ]
    assert up.wait_for(lambda: len(up.messages) == 2)
    assert [m.mail_from for m in up.messages] == ["alice@example.test", "evil@x"]
