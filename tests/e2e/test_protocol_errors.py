"""What the proxy answers to clients that get SMTP wrong: exact code and
enhanced status (RFC 5321 §4.2/§4.3.2, RFC 3463), and the session goes on."""

from __future__ import annotations

import re
import socket
import time

import pytest

EHLO = ("EHLO client.test", 250)
MAIL = ("MAIL FROM:<a@example.test>", 250)
RCPT = ("RCPT TO:<b@example.test>", 250)

# (id, setup [(command, code)], command, code, status)
CASES = [
    # sequence (RFC 5321 §4.1.4, §3.3)
    ("mail-before-ehlo", [], "MAIL FROM:<a@example.test>", 503, "5.5.1"),
    ("rcpt-before-mail", [EHLO], "RCPT TO:<b@example.test>", 503, "5.5.1"),
    ("data-before-mail", [EHLO], "DATA", 503, "5.5.1"),
    # §3.3 allows 503 or 554 here; we answer as RFC 2920 §3.1 requires for a pipelined DATA.
    ("data-before-rcpt", [EHLO, MAIL], "DATA", 554, "5.5.1"),
    ("nested-mail", [EHLO, MAIL], "MAIL FROM:<c@example.test>", 503, "5.5.1"),
    # syntax
    ("mail-without-from", [EHLO], "MAIL <a@example.test>", 501, "5.5.4"),
    ("sender-space", [EHLO], "MAIL FROM:<a b@example.test>", 501, "5.1.7"),
    ("sender-no-domain", [EHLO], "MAIL FROM:<a@>", 501, "5.1.7"),
    ("sender-no-local", [EHLO], "MAIL FROM:<@example.test>", 501, "5.1.7"),
    ("sender-unclosed", [EHLO], "MAIL FROM:<a@example.test", 501, "5.1.7"),
    ("sender-no-brackets", [EHLO], "MAIL FROM:a@example.test", 501, "5.1.7"),
    ("rcpt-without-to", [EHLO, MAIL], "RCPT <b@example.test>", 501, "5.5.4"),
    ("rcpt-null", [EHLO, MAIL], "RCPT TO:<>", 501, "5.1.3"),
    ("rcpt-no-domain", [EHLO, MAIL], "RCPT TO:<b@>", 501, "5.1.3"),
    ("rcpt-space", [EHLO, MAIL], "RCPT TO:<b c@example.test>", 501, "5.1.3"),
    ("mail-unknown-param", [EHLO], "MAIL FROM:<a@example.test> FOO=BAR", 555, "5.5.4"),
    ("rcpt-unknown-param", [EHLO, MAIL], "RCPT TO:<b@example.test> NOTIFY=NEVER", 555, "5.5.4"),
    # The keyword is named in the reply, cut: the line stays within 512 octets (RFC 5321 §4.5.3.1.5).
    ("mail-long-unknown-param", [EHLO], "MAIL FROM:<a@example.test> " + "X" * 480 + "=1", 555, "5.5.4"),
    ("rcpt-long-unknown-param", [EHLO, MAIL], "RCPT TO:<b@example.test> " + "X" * 480 + "=1", 555, "5.5.4"),
    ("mail-bad-body", [EHLO], "MAIL FROM:<a@example.test> BODY=BINARYMIME", 501, "5.5.4"),
    ("mail-bad-size", [EHLO], "MAIL FROM:<a@example.test> SIZE=12x", 501, "5.5.4"),
    ("mail-duplicate-param", [EHLO], "MAIL FROM:<a@example.test> SIZE=1 SIZE=2", 501, "5.5.4"),
    ("mail-size-over-limit", [EHLO], "MAIL FROM:<a@example.test> SIZE=10001", 552, "5.3.4"),  # RFC 1870 §6
    ("ehlo-no-arg", [], "EHLO", 501, "5.5.4"),
    ("helo-no-arg", [], "HELO", 501, "5.5.4"),
    ("data-with-arg", [EHLO, MAIL, RCPT], "DATA now", 501, "5.5.4"),
    ("rset-with-arg", [EHLO], "RSET now", 501, "5.5.4"),
    # other commands
    ("unknown-command", [EHLO], "FROBNICATE", 500, "5.5.1"),
    ("verb-with-colon", [EHLO], "MAIL:<a@example.test>", 500, "5.5.1"),
    ("vrfy", [EHLO], "VRFY b@example.test", 252, "2.5.0"),  # RFC 5321 §3.5.3
    ("vrfy-no-arg", [EHLO], "VRFY", 501, "5.5.4"),
    ("expn", [EHLO], "EXPN staff", 502, "5.5.1"),
    ("noop", [], "NOOP", 250, "2.0.0"),
    ("noop-lower", [EHLO], "noop", 250, "2.0.0"),
    ("help", [], "HELP", 214, "2.0.0"),
    ("xclient", [EHLO], "XCLIENT ADDR=192.0.2.1 NAME=spoofed.example", 502, "5.5.1"),
    ("xforward", [EHLO], "XFORWARD ADDR=192.0.2.1", 502, "5.5.1"),
    ("starttls-not-offered", [EHLO], "STARTTLS", 502, "5.5.1"),
    ("auth-not-offered", [EHLO], "AUTH PLAIN AGFAYg==", 502, "5.5.1"),
    ("bdat-not-offered", [EHLO, MAIL, RCPT], "BDAT 0 LAST", 502, "5.5.1"),  # (its chunk: test_bdat_chunk_*)
]


@pytest.mark.parametrize("setup,command,code,status", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_reply_and_session_continues(start_daemon, fake_upstream, setup, command, code, status):
    up = fake_upstream()
    d = start_daemon(up.url, server={"max_message_size": 10000})
    with d.connect(ehlo=None) as c:
        for line, want in setup:
            c.exchange(line, want)
        r = c.exchange(command, code, status)
        assert r.text, "a reply needs human-readable text"
        assert all(len(line) + 6 <= 512 for line in r.lines), r  # ("ddd " and CRLF around it)
        # The session is still alive and in a sane state.
        c.exchange("RSET", 250, "2.0.0")
        c.exchange("NOOP", 250, "2.0.0")
    if code >= 400:
        # A refused command never reaches the upstream.
        assert command not in up.commands


def test_bdat_chunk_is_skipped_never_read_as_commands(start_daemon, fake_upstream):
    """CHUNKING is not offered, but a client that sends BDAT sends its chunk
    right behind it (RFC 3030 §3), in later segments too: those octets are
    dropped, and lines in them that look like commands are never run."""
    up = fake_upstream()
    d = start_daemon(up.url)
    chunk = b"RSET\r\nMAIL FROM:<smuggled@example.test>\r\nRCPT TO:<victim@example.test>\r\nQUIT\r\n"
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<b@example.test>", 250, "2.1.5")
        c.send(f"BDAT {len(chunk)} LAST\r\n".encode() + chunk[:20])
        time.sleep(0.1)
        c.send(chunk[20:] + b"NOOP\r\n")  # the rest of the chunk and the next command, pipelined
        r = c.expect(502, "5.5.1")
        assert "DATA" in r.text
        c.expect(250, "2.0.0")  # NOOP's
        # The transaction is as it was: DATA sends the message.
        c.exchange("DATA", 354)
        c.send(b"Subject: after BDAT\r\n\r\nbody\r\n.\r\n")
        r = c.reply()
        assert r.code == 250, str(r)
    d.wait_log(rf"{sid}: BDAT \(CHUNKING is not offered\): its {len(chunk)} octets dropped")
    assert not any("smuggled" in cmd or "victim" in cmd for cmd in up.commands), up.commands
    assert up.wait_for(lambda: len(up.messages) == 1)


@pytest.mark.parametrize("arg,why", [("LAST", "where its chunk ends is unknown"),
                                     ("12x", "where its chunk ends is unknown"),
                                     ("10 MORE", "where its chunk ends is unknown"),
                                     ("10001", "its chunk is over max_message_size")])
def test_bdat_chunk_that_cannot_be_skipped_closes(start_daemon, fake_upstream, arg, why):
    up = fake_upstream()
    d = start_daemon(up.url, server={"max_message_size": 10000})
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.cmd(f"BDAT {arg}")
        c.send(b"MAIL FROM:<smuggled@example.test>\r\n")
        c.expect(421, "4.5.0")
        assert c.closed(), "the connection stays open after BDAT whose chunk cannot be skipped"
    d.wait_log(rf"{sid}: BDAT {re.escape(arg)} \(CHUNKING is not offered\): {why}; closing")
    assert not any("smuggled" in cmd for cmd in up.commands)


def test_line_too_long_then_session_continues(start_daemon, fake_upstream):
    up = fake_upstream()
    d = start_daemon(up.url)  # max_line_length 2048, CRLF included (RFC 5321 §4.5.3.1.4)
    with d.connect() as c:
        c.exchange("NOOP " + "x" * (2048 - 7), 250, "2.0.0")  # exactly at the limit
        c.exchange("NOOP " + "x" * (2048 - 6), 500, "5.5.2")  # one over
        # The tail of an over-long line is skipped, not read as a command:
        # here it is "QUIT", arriving in a later segment.
        c.send(b"MAIL FROM:<a@example.test> " + b"y" * 5000)
        time.sleep(0.05)
        c.send(b"z" * 3000 + b"QUIT\r\n")
        c.expect(500, "5.5.2")
        c.exchange("NOOP", 250, "2.0.0")
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
    assert [cmd for cmd in up.commands if cmd.startswith("MAIL")] == ["MAIL FROM:<a@example.test>"]


@pytest.mark.parametrize(
    "raw",
    [b"NOOP\n", b"RSET\rQUIT\r\n", b"NOOP\x00QUIT\r\n", b"MAIL FROM:<a@example.test>\n"],
    ids=["bare-lf", "bare-cr", "nul", "mail-bare-lf"],
)
def test_bad_line_ending_in_command(start_daemon, fake_upstream, raw):
    up = fake_upstream()
    d = start_daemon(up.url)
    with d.connect() as c:
        c.send(raw)
        c.expect(500, "5.5.2")
        # Nothing hidden behind the bad byte was run (QUIT would close us).
        c.exchange("NOOP", 250, "2.0.0")
    assert not any(cmd.startswith("MAIL") for cmd in up.commands)


def test_max_errors_closes_with_421(start_daemon, fake_upstream):
    up = fake_upstream()
    d = start_daemon(up.url, server={"max_errors": 3})
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("FOO", 500, "5.5.1")
        c.exchange("NOOP", 250, "2.0.0")  # good commands do not reset the count
        c.exchange("RCPT TO:<b@example.test>", 503, "5.5.1")
        c.cmd("BAR")
        c.expect(500, "5.5.1")
        c.expect(421, "4.7.0", "mx.test Too many errors, closing connection")
        assert c.closed()
    d.wait_log(rf"{sid}: too many errors \(3\); closing")
    d.wait_log(rf"{sid}: disconnect from \[127\.0\.0\.1\] transactions=0 errors=3")


def test_a_delivery_forgives_the_errors_and_recipients_past_the_limit_are_none(start_daemon, fake_upstream):
    """As Postfix's smtpd: a message delivered forgives the errors before it (a relay reusing its
    connection was cut off mid-transaction by earlier messages' refused recipients), and a RCPT
    past max_recipients is no error (RFC 5321 §4.5.3.1.10: the client sends those recipients
    in a transaction of their own; counted, a message to more than them never went)."""
    up = fake_upstream({"RCPT bad@example.test": ["550 5.1.1 no such user"] * 10})
    d = start_daemon(up.url, server={"max_errors": 3, "max_recipients": 2})
    with d.connect() as c:
        for i in range(4):  # one refusal each: 4 in all, never 3 since a delivery
            c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
            c.exchange("RCPT TO:<bad@example.test>", 550, "5.1.1")
            c.exchange("RCPT TO:<b@example.test>", 250, "2.1.5")
            c.exchange("DATA", 354)
            c.send(b"Subject: %d\r\n\r\nbody\r\n.\r\n" % i)
            c.expect(250, "2.0.0")
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        for r in ("r1", "r2"):
            c.exchange(f"RCPT TO:<{r}@example.test>", 250, "2.1.5")
        for r in range(5):  # past max_recipients (and past max_errors): the client is still served
            c.exchange(f"RCPT TO:<x{r}@example.test>", 452, "4.5.3")
        c.exchange("DATA", 354)
        c.send(b"Subject: many\r\n\r\nbody\r\n.\r\n")
        c.expect(250, "2.0.0")
    assert len(up.messages) == 5


def test_the_recipients_past_the_limit_that_are_no_error_are_counted_per_transaction(start_daemon, fake_upstream):
    """Postfix's rcpt_overshoot is reset with the transaction: counted for the session, a relay
    sending large list posts on one connection was cut off at the second."""
    up = fake_upstream()
    d = start_daemon(up.url, server={"max_errors": 10, "max_recipients": 1})
    with d.connect() as c:
        for i in range(2):
            lines = ["MAIL FROM:<a@example.test>", "RCPT TO:<b@example.test>"]
            lines += [f"RCPT TO:<x{n}@example.test>" for n in range(1005)]  # 1,000 free, 5 counted
            c.send("".join(line + "\r\n" for line in lines).encode())
            c.expect(250, "2.1.0")
            c.expect(250, "2.1.5")
            for _ in range(1005):
                c.expect(452, "4.5.3")
            c.exchange("DATA", 354)
            c.send(b"Subject: %d\r\n\r\nbody\r\n.\r\n" % i)
            c.expect(250, "2.0.0")
    assert len(up.messages) == 2


def test_trailing_white_space_is_tolerated(start_daemon, fake_upstream):
    """RFC 5321 §4.1.1: a receiver SHOULD tolerate white space before the CRLF ("EHLO host "
    got 501, and such a client could not start a session at all)."""
    up = fake_upstream()
    d = start_daemon(up.url)
    with d.client() as c:
        c.expect(220)
        c.exchange("EHLO client.test ", 250)
        c.exchange("RSET\t", 250, "2.0.0")
        c.exchange("MAIL FROM:<a@example.test>\t", 250, "2.1.0")
        c.exchange("RCPT TO:<b@example.test> ", 250, "2.1.5")
        c.exchange("DATA  ", 354)
        c.send(b"Subject: spaced\r\n\r\nbody\r\n.\r\n")
        c.expect(250, "2.0.0")
    assert len(up.messages) == 1


def test_http_request_closes_connection(start_daemon, fake_upstream):
    up = fake_upstream()
    d = start_daemon(up.url)
    with d.client() as c:
        sid = d.session_id(c.local_port)
        c.expect(220)
        c.send(b"GET / HTTP/1.1\r\nHost: mx.test\r\nUser-Agent: test\r\n\r\n")
        c.expect(221, "2.7.0")
        assert c.closed()
    d.wait_log(rf"{sid}: HTTP command 'GET' on the SMTP port; closing")
    assert up.connections == []


def test_idle_timeout(start_daemon, fake_upstream):
    up = fake_upstream()
    d = start_daemon(up.url, server={"idle_timeout": 1})
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        t0 = time.monotonic()
        c.expect(421, "4.4.2", "mx.test Timeout, closing connection", timeout=5)
        elapsed = time.monotonic() - t0
        assert 0.8 <= elapsed < 3, elapsed
        assert c.closed()
    d.wait_log(rf"{sid}: timeout waiting for a command")


def test_idle_timeout_mid_transaction_delivers_nothing(start_daemon, fake_upstream):
    up = fake_upstream()
    d = start_daemon(up.url, server={"idle_timeout": 1})
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<b@example.test>", 250, "2.1.5")
        c.expect(421, "4.4.2", timeout=5)
        assert c.closed()
    # The upstream transaction is abandoned cleanly.
    assert up.wait_for(lambda: "QUIT" in up.commands)
    assert up.commands[-2:] == ["RSET", "QUIT"]
    assert "DATA" not in up.commands and up.messages == []


def test_partial_command_line_counts_against_idle_timeout(start_daemon, fake_upstream):
    """A client trickling a command without its CRLF (slowloris) is cut off too."""
    up = fake_upstream()
    d = start_daemon(up.url, server={"idle_timeout": 1})
    with d.connect() as c:
        t0 = time.monotonic()
        c.send(b"NO")
        time.sleep(0.4)
        c.send(b"O")
        time.sleep(0.4)
        c.send(b"P")
        c.expect(421, "4.4.2", timeout=5)
        assert time.monotonic() - t0 < 2.5


def test_max_recipients(start_daemon, aiosmtpd_upstream):
    d = start_daemon(aiosmtpd_upstream.url, server={"max_recipients": 2})
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<r1@example.test>", 250, "2.1.5")
        c.exchange("RCPT TO:<r2@example.test>", 250, "2.1.5")
        c.exchange("RCPT TO:<r3@example.test>", 452, "4.5.3")  # RFC 5321 §4.5.3.1.8
        c.exchange("RCPT TO:<r4@example.test>", 452, "4.5.3")
        c.exchange("DATA", 354)
        c.send(b"Subject: limit\r\n\r\n.\r\n")
        c.expect(250, "2.0.0")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["r1@example.test", "r2@example.test"]
    assert [a for a, _ in aiosmtpd_upstream.handler.rcpts] == ["r1@example.test", "r2@example.test"]


def test_message_over_max_size_refused_after_the_dot(start_daemon, aiosmtpd_upstream):
    limit = 1000
    d = start_daemon(aiosmtpd_upstream.url, server={"max_message_size": limit})
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<b@example.test>", 250, "2.1.5")
        c.exchange("DATA", 354)
        c.send(b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 30)
        # RFC 5321 §4.2.5: no reply before the end of the data.
        c.sock.settimeout(0.3)
        with pytest.raises(socket.timeout):
            c.sock.recv(1)
        c.send(b".\r\n")
        c.expect(552, "5.3.4")  # RFC 1870 §6.1
        # The session goes on: a message exactly at the limit is accepted.
        body = b"Subject: fits\r\n\r\n"
        body += b"y" * (limit - len(body) - 2)
        assert len(body + b"\r\n") == limit
        r = c.transaction("a@example.test", ["b@example.test"], body)
        assert (r.code, r.status) == (250, "2.0.0")
        r = c.transaction("a@example.test", ["b@example.test"], body + b"y")
        assert (r.code, r.status) == (552, "5.3.4")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["content"].endswith(b"\r\n" + body + b"\r\n")
    assert len(aiosmtpd_upstream.envelopes) == 1


def test_size_param_at_the_limit_accepted(start_daemon, aiosmtpd_upstream):
    d = start_daemon(aiosmtpd_upstream.url, server={"max_message_size": 10000})
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test> SIZE=10000", 250, "2.1.0")
        c.exchange("RSET", 250, "2.0.0")
        c.exchange("MAIL FROM:<a@example.test> SIZE=10001", 552, "5.3.4")


def test_size_param_of_twenty_digits_is_too_big_not_bad_syntax(start_daemon, fake_upstream):
    d = start_daemon(fake_upstream().url, server={"max_message_size": 10000})
    with d.connect() as c:
        # RFC 1870 §3: size-value ::= 1*20DIGIT; this one is syntactically fine, just too big (§6).
        c.exchange("MAIL FROM:<a@example.test> SIZE=99999999999999999999", 552, "5.3.4")
