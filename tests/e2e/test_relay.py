"""Relaying through the proxy to a real upstream (aiosmtpd) with real clients
(smtplib, swaks): envelope and bytes arrive exactly, with one Received: on top."""

from __future__ import annotations

import re
import smtplib
import subprocess
from pathlib import Path

import pytest

from conftest import HOSTNAME

BODY = b"Subject: hello\r\nFrom: a@example.test\r\n\r\nline one\r\nline two\r\n"
# RFC 5321 §4.4: our trace header, first in the message.
RECEIVED = (
    rb"Received: from (?P<helo>\S+) \(\[127\.0\.0\.1\]\)\r\n"
    rb"\tby mx\.test \(Portcullis\) with (?P<proto>\w+) id (?P<id>(?P<sid>[0-9A-F]{12})\.(?P<n>\d+))"
    rb"(?:\r\n\tfor <(?P<for>[^>]*)>)?; (?P<date>[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000)\r\n"
)


def split_received(content: bytes) -> tuple[re.Match, bytes]:
    """The proxy's Received: header (which must come first) and the rest."""
    m = re.match(RECEIVED, content)
    assert m, f"no Received: header of ours at the top: {content[:300]!r}"
    rest = content[m.end():]
    assert not re.search(rb"(?m)^Received:", rest), "more than one Received: header was added"
    return m, rest


def smtplib_client(daemon, helo="smtplib.test") -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", daemon.port, local_hostname=helo, timeout=10)
    code, _ = s.ehlo()
    assert code == 250
    return s


def test_smtplib_single_recipient_exact_envelope_and_bytes(start_daemon, aiosmtpd_upstream):
    d = start_daemon(aiosmtpd_upstream.url)
    s = smtplib_client(d)
    sid = d.session_id(s.sock.getsockname()[1])
    assert s.mail("a@example.test") == (250, b"2.1.0 Sender ok (aiosmtpd)")
    assert s.rcpt("b@example.test") == (250, b"2.1.5 Recipient ok (aiosmtpd)")
    code, text = s.data(BODY)
    # The client hears the upstream's own words, queue id included.
    assert (code, text) == (250, b"2.0.0 Ok: queued as AIO00001 (aiosmtpd)")
    s.quit()

    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["mail_from"] == "a@example.test"
    assert env["rcpt_tos"] == ["b@example.test"]
    assert env["mail_options"] == [] and env["rcpt_options"] == []
    assert env["helo"] == HOSTNAME  # our EHLO name upstream defaults to server.hostname
    m, rest = split_received(env["content"])
    assert rest == BODY
    assert m["helo"] == b"smtplib.test"
    assert m["proto"] == b"ESMTP"
    assert m["id"].decode() == f"{sid}.1"
    assert m["for"] == b"b@example.test"
    # One log line per transaction, with the upstream's queue id.
    d.wait_log(
        rf"{sid}: tx={sid}\.1 client=\[127\.0\.0\.1\] helo=smtplib\.test from=<a@example\.test> "
        rf"to=<b@example\.test> rejected_rcpts=0 size={len(BODY)} upstream=\"250 2\.0\.0 Ok: queued as AIO00001 "
        rf"\(aiosmtpd\)\" queue_id=AIO00001 verdict=delivered$"
    )


def test_smtplib_multiple_recipients(start_daemon, aiosmtpd_upstream):
    d = start_daemon(aiosmtpd_upstream.url)
    s = smtplib_client(d)
    rcpts = ["one@example.test", "two@example.test", "three@other.test"]
    refused = s.sendmail("a@example.test", rcpts, BODY)
    assert refused == {}
    s.quit()
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == rcpts
    m, rest = split_received(env["content"])
    assert rest == BODY
    assert m["for"] is None  # several recipients: none named (Bcc privacy)


def test_swaks(start_daemon, aiosmtpd_upstream):
    d = start_daemon(aiosmtpd_upstream.url)
    data = "Subject: via swaks\nX-Test: 1\n\nswaks body\n.leading dot"  # swaks adds CRLF . CRLF
    out = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(d.port), "--helo", "swaks.test",
         "--from", "s@example.test", "--to", "r1@example.test,r2@example.test", "--data", data, "--timeout", "10"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # swaks shows the server's lines as "<-  ..."
    assert "<-  220 mx.test ESMTP Portcullis" in out.stdout
    assert "<-  250 2.1.5 Recipient ok (aiosmtpd)" in out.stdout
    assert "<-  250 2.0.0 Ok: queued as AIO00001 (aiosmtpd)" in out.stdout
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["mail_from"] == "s@example.test"
    assert env["rcpt_tos"] == ["r1@example.test", "r2@example.test"]
    _, rest = split_received(env["content"])
    assert rest == data.replace("\n", "\r\n").encode() + b"\r\n"


def test_swaks_pipelined(start_daemon, aiosmtpd_upstream):
    d = start_daemon(aiosmtpd_upstream.url)
    out = subprocess.run(
        ["swaks", "--pipeline", "--server", "127.0.0.1", "--port", str(d.port), "--helo", "swaks.test",
         "--from", "s@example.test", "--to", "r@example.test", "--data", "Subject: p\n\npipelined", "--timeout", "10"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "<-  250 2.0.0 Ok: queued as AIO00001 (aiosmtpd)" in out.stdout
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert split_received(env["content"])[1] == b"Subject: p\r\n\r\npipelined\r\n"


def test_two_transactions_on_one_connection_with_rset(start_daemon, aiosmtpd_upstream):
    d = start_daemon(aiosmtpd_upstream.url)
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        r = c.transaction("a@example.test", ["b@example.test"], b"Subject: one\r\n\r\nfirst")
        assert (r.code, r.status, r.text) == (250, "2.0.0", "Ok: queued as AIO00001 (aiosmtpd)")
        c.exchange("RSET", 250, "2.0.0")
        # A transaction begun and abandoned: nothing of it may reach a message.
        c.exchange("MAIL FROM:<abandoned@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<nobody@example.test>", 250, "2.1.5")
        c.exchange("RSET", 250, "2.0.0")
        r = c.transaction("c@example.test", ["d@example.test", "e@example.test"], b"Subject: two\r\n\r\nsecond")
        assert (r.code, r.status, r.text) == (250, "2.0.0", "Ok: queued as AIO00002 (aiosmtpd)")
        c.exchange("QUIT", 221, "2.0.0")
        assert c.closed()
    one, two = aiosmtpd_upstream.wait_messages(2)
    assert (one["mail_from"], one["rcpt_tos"]) == ("a@example.test", ["b@example.test"])
    assert (two["mail_from"], two["rcpt_tos"]) == ("c@example.test", ["d@example.test", "e@example.test"])
    m1, rest1 = split_received(one["content"])
    m2, rest2 = split_received(two["content"])
    assert rest1 == b"Subject: one\r\n\r\nfirst\r\n"
    assert rest2 == b"Subject: two\r\n\r\nsecond\r\n"
    assert m1["id"].decode() == f"{sid}.1"
    assert m2["sid"].decode() == sid and int(m2["n"]) > 2  # every MAIL starts a new transaction id
    # Both transactions went over one upstream connection.
    assert aiosmtpd_upstream.handler.sessions == 1
    d.wait_log(rf"{sid}: disconnect from \[127\.0\.0\.1\] transactions=3 errors=0")


DOT_LINES = [b".", b"..", b".hidden", b"..double", b"a.b", b" .space", b"...", b"."]


def stuff(lines: list[bytes]) -> bytes:
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in lines)


def test_dot_stuffing_round_trip_aiosmtpd(start_daemon, aiosmtpd_upstream):
    d = start_daemon(aiosmtpd_upstream.url)
    body = [b"Subject: dots", b""] + DOT_LINES
    with d.connect() as c:
        r = c.transaction("a@example.test", ["b@example.test"], stuff(body))
        assert (r.code, r.status) == (250, "2.0.0")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert split_received(env["content"])[1] == b"\r\n".join(body) + b"\r\n"


def test_dot_stuffing_on_the_upstream_wire(start_daemon, fake_upstream):
    up = fake_upstream()
    d = start_daemon(up.url)
    body = [b"Subject: dots", b""] + DOT_LINES
    with d.connect() as c:
        r = c.transaction("a@example.test", ["b@example.test"], stuff(body))
        assert (r.code, r.status, r.text) == (250, "2.0.0", "Ok: queued as FAKE1")
    [msg] = up.messages
    _, rest = split_received(msg.wire)
    # Re-stuffed exactly as the client stuffed it.
    assert rest == stuff(body) + b"\r\n"
    assert msg.content.endswith(b"\r\n".join(body) + b"\r\n")


def test_8bitmime_body_passes_through(start_daemon, aiosmtpd_upstream):
    d = start_daemon(aiosmtpd_upstream.url)
    body = "Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße, €uro\r\n".encode() + b"raw \xff\xfe\x80 bytes"
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test> BODY=8BITMIME SIZE=500", 250, "2.1.0")
        c.exchange("RCPT TO:<b@example.test>", 250, "2.1.5")
        c.exchange("DATA", 354)
        c.send(body + b"\r\n.\r\n")
        c.expect(250, "2.0.0")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["mail_options"] == ["SIZE=500", "BODY=8BITMIME"]
    assert split_received(env["content"])[1] == body + b"\r\n"


def test_smtputf8_addresses_pass_through(start_daemon, aiosmtpd_upstream):
    d = start_daemon(aiosmtpd_upstream.url)
    sender, rcpt = "jörg@bücher.example", "δοκιμή@παράδειγμα.δοκιμή"
    body = "Subject: ünïcödé\r\n\r\nhéllo\r\n".encode()
    with d.connect() as c:
        c.exchange(f"MAIL FROM:<{sender}> SMTPUTF8 BODY=8BITMIME", 250, "2.1.0")
        c.exchange(f"RCPT TO:<{rcpt}>", 250, "2.1.5")
        c.exchange("DATA", 354)
        c.send(body + b".\r\n")
        c.expect(250, "2.0.0")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["mail_from"] == sender
    assert env["rcpt_tos"] == [rcpt]
    assert env["smtp_utf8"] is True
    assert sorted(env["mail_options"]) == ["BODY=8BITMIME", "SMTPUTF8"]
    m, rest = split_received(env["content"])
    assert m["proto"] == b"UTF8SMTP"  # RFC 6531 §4.3
    assert m["for"].decode() == rcpt
    assert rest == body


def test_non_ascii_address_without_smtputf8_is_refused(start_daemon, aiosmtpd_upstream):
    d = start_daemon(aiosmtpd_upstream.url)
    with d.connect() as c:
        c.exchange("MAIL FROM:<jörg@bücher.example>", 553, "5.6.7")
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<δοκιμή@example.test>", 553, "5.6.7")
    assert aiosmtpd_upstream.handler.rcpts == []


def test_rcpt_postmaster_without_domain(start_daemon, fake_upstream):
    up = fake_upstream()
    d = start_daemon(up.url)
    with d.connect() as c:
        c.exchange("MAIL FROM:<>", 250, "2.1.0")  # a bounce may be sent to postmaster
        c.exchange("RCPT TO:<Postmaster>", 250, "2.1.5", "Recipient ok (fake)")  # RFC 5321 §4.1.1.3
        c.exchange("DATA", 354)
        c.send(b"Subject: pm\r\n\r\nhi\r\n.\r\n")
        c.expect(250, "2.0.0")
    assert "MAIL FROM:<>" in up.commands
    assert "RCPT TO:<Postmaster>" in up.commands
    [msg] = up.messages
    assert (msg.mail_from, msg.rcpt_tos) == ("", ["Postmaster"])


def test_ehlo_advertises_extensions(start_daemon, aiosmtpd_upstream):
    d = start_daemon(aiosmtpd_upstream.url, server={"max_message_size": 123456})
    with d.client() as c:
        banner = c.expect(220)
        assert banner.lines == [f"{HOSTNAME} ESMTP Portcullis"]
        r = c.exchange("EHLO client.test", 250)
        assert r.lines == [
            f"{HOSTNAME} Hello client.test [127.0.0.1]",
            "PIPELINING",
            "SIZE 123456",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
        ]
        assert r.raw.count(b"\r\n") == 6 and r.raw.startswith(b"250-mx.test Hello") and b"\r\n250 ENHANCEDSTATUSCODES\r\n" in r.raw


def test_helo_gets_no_esmtp(start_daemon, aiosmtpd_upstream):
    d = start_daemon(aiosmtpd_upstream.url)
    with d.connect(ehlo=None) as c:
        r = c.exchange("HELO oldclient.test", 250)
        assert r.raw == b"250 mx.test\r\n"  # one line, no extensions, no enhanced code (RFC 2034 §3)
        # ESMTP parameters are for EHLO sessions only.
        c.exchange("MAIL FROM:<a@example.test> BODY=8BITMIME", 555, "5.5.4")
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<b@example.test>", 250, "2.1.5")
        c.exchange("DATA", 354)
        c.send(b"Subject: helo\r\n\r\nold school\r\n.\r\n")
        c.expect(250, "2.0.0")
    [env] = aiosmtpd_upstream.wait_messages(1)
    m, rest = split_received(env["content"])
    assert (m["helo"], m["proto"]) == (b"oldclient.test", b"SMTP")
    assert rest == b"Subject: helo\r\n\r\nold school\r\n"


def test_maildir_one_file_per_transaction(start_daemon, tmp_path):
    """One Maildir is one mailbox: one file, one Delivered-To per recipient (issue 7 E)."""
    maildir = tmp_path / "Maildir"
    d = start_daemon(f"maildir:{maildir}")
    rcpts = ["one@example.test", "two@example.test"]
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        r = c.transaction("sender@example.test", rcpts, b"Subject: md\r\n\r\nline\r\n..dot line")
        assert (r.code, r.status) == (250, "2.0.0")
        assert re.fullmatch(r"Ok: queued as \S+", r.text), r.text
    [f] = sorted((maildir / "new").iterdir())
    assert list((maildir / "tmp").iterdir()) == []
    content = f.read_bytes()
    m = re.match(
        rb"Return-Path: <sender@example\.test>\nDelivered-To: one@example\.test\nDelivered-To: two@example\.test\n"
        rb"Received: from client\.test \(\[127\.0\.0\.1\]\)\n\tby mx\.test \(Portcullis\) with ESMTP id "
        + sid.encode() + rb"\.1; [^\n]+\n",
        content,
    )
    assert m, content
    # Local line endings; the stuffed dot is gone.
    assert content[m.end():] == b"Subject: md\n\nline\n.dot line\n"


def test_empty_message_and_leading_dot_lines(start_daemon, fake_upstream):
    up = fake_upstream()
    d = start_daemon(up.url)
    with d.connect() as c:
        # An empty message: just our Received: goes upstream.
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<b@example.test>", 250, "2.1.5")
        c.exchange("DATA", 354)
        c.send(b".\r\n")
        c.expect(250, "2.0.0")
        # A message whose very first line is a (stuffed) dot.
        r = c.transaction("a@example.test", ["b@example.test"], b"..\r\n...x")
        assert (r.code, r.status) == (250, "2.0.0")
    empty, dotted = up.messages
    m, rest = split_received(empty.wire)
    assert rest == b""
    _, rest = split_received(dotted.wire)
    assert rest == b"..\r\n...x\r\n"
    assert dotted.content.endswith(b"\r\n.\r\n..x\r\n")


def test_large_message_in_random_segments(start_daemon, aiosmtpd_upstream):
    """A 3 MiB message full of dot lines and CRLFs, written in random-sized
    pieces so that every boundary case of the DATA decoder (CR | LF, CRLF | .,
    . | CR) falls between two reads somewhere; it must arrive byte-exact."""
    import random

    rng = random.Random(20231218)
    lines = [b"Subject: big", b""]
    size = 0
    while size < 3 * 1024 * 1024:
        kind = rng.random()
        if kind < 0.2:
            line = b"." * rng.randint(1, 3) + bytes(rng.choice(b"abc.") for _ in range(rng.randint(0, 5)))
        elif kind < 0.3:
            line = b""
        else:
            line = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz .,:;-0123456789") for _ in range(rng.randint(1, 200)))
        lines.append(line)
        size += len(line) + 2
    stuffed = stuff(lines) + b"\r\n.\r\n"
    d = start_daemon(aiosmtpd_upstream.url)
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<b@example.test>", 250, "2.1.5")
        c.exchange("DATA", 354)
        c.sock.setsockopt(__import__("socket").IPPROTO_TCP, __import__("socket").TCP_NODELAY, 1)
        pos = 0
        while pos < len(stuffed):
            n = rng.choice([1, 2, 3, 5, 7, 64, 1000, 4096, 65535, 65536, 65537, 200000])
            c.send(stuffed[pos:pos + n])
            pos += n
        c.expect(250, "2.0.0")
    [env] = aiosmtpd_upstream.wait_messages(1)
    _, rest = split_received(env["content"])
    assert rest == b"\r\n".join(lines) + b"\r\n"


def test_upstream_without_8bitmime_or_smtputf8(start_daemon, fake_upstream):
    """RFC 6152 §3 / RFC 6531 §3.4: no downgrade, no 8-bit data to a 7-bit
    upstream; the client is told at MAIL and nothing goes upstream."""
    up = fake_upstream({"EHLO": "250-fake.upstream\r\n250 PIPELINING"})
    d = start_daemon(up.url)
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test> BODY=8BITMIME", 554, "5.6.3")
        c.exchange("MAIL FROM:<a@example.test> SMTPUTF8", 553, "5.6.7")
        c.exchange("MAIL FROM:<a@example.test> BODY=7BIT SIZE=100", 250, "2.1.0")
    assert up.wait_for(lambda: "QUIT" in up.commands)
    # SIZE is passed on only to an upstream that advertises it (RFC 1870 §5).
    assert [x for x in up.commands if x.startswith("MAIL")] == ["MAIL FROM:<a@example.test>"]


def test_undeclared_8bit_content_never_goes_to_a_7bit_upstream(start_daemon, fake_upstream):
    """A client that sends 8-bit without BODY=8BITMIME (common, and Postfix takes it) got past the
    MAIL check: the upstream got the 8-bit bytes. Refused at DATA's end instead, nothing sent."""
    up = fake_upstream({"EHLO": "250-fake.upstream\r\n250 PIPELINING"})
    d = start_daemon(up.url)
    with d.connect() as c:
        r = c.transaction("a@example.test", ["b@example.test"], "Subject: café\r\n\r\ndéjà vu".encode())
        assert (r.code, r.status) == (554, "5.6.3"), str(r)
        r = c.transaction("a@example.test", ["b@example.test"], b"Subject: cafe\r\n\r\nplain")
        assert (r.code, r.status) == (250, "2.0.0"), str(r)
    assert len(up.messages) == 1 and b"plain" in up.messages[0].content
    assert "DATA" in up.commands and up.commands.count("DATA") == 1


def test_ehlo_mid_transaction_resets_it(start_daemon, fake_upstream):
    up = fake_upstream()
    d = start_daemon(up.url, upstream={"pool_size": 0})  # the whole upstream dialogue of one session, down to its QUIT: no pooled connection
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<b@example.test>", 250, "2.1.5")
        c.exchange("EHLO again.test", 250)  # RFC 5321 §4.1.4: like RSET
        c.exchange("DATA", 503, "5.5.1")
        r = c.transaction("x@example.test", ["y@example.test"], b"Subject: after ehlo")
        assert (r.code, r.status) == (250, "2.0.0")
    assert up.wait_for(lambda: "QUIT" in up.commands)
    assert up.commands == [
        "EHLO mx.test", "MAIL FROM:<a@example.test>", "RCPT TO:<b@example.test>", "RSET",
        "MAIL FROM:<x@example.test>", "RCPT TO:<y@example.test>", "DATA", "QUIT",
    ]
    [msg] = up.messages
    assert (msg.mail_from, msg.rcpt_tos) == ("x@example.test", ["y@example.test"])
    m, _ = split_received(msg.wire)
    assert m["helo"] == b"again.test"


@pytest.mark.parametrize(
    "client_says,upstream_gets",
    [
        ("MAIL FROM:<Jane.Doe@Example.TEST>", "MAIL FROM:<Jane.Doe@Example.TEST>"),  # case kept (RFC 5321 §2.4)
        ('MAIL FROM:<"john smith"@example.test>', 'MAIL FROM:<"john smith"@example.test>'),
        ('MAIL FROM:<"a\\"b"@example.test>', 'MAIL FROM:<"a\\"b"@example.test>'),
        ("MAIL FROM:<@relay.test,@hop.test:user@example.test>", "MAIL FROM:<user@example.test>"),  # §4.1.1.3 / §C
        ("MAIL FROM:<b@[192.0.2.1]>", "MAIL FROM:<b@[192.0.2.1]>"),
        ("MAIL FROM:<b@[IPv6:2001:db8::1]>", "MAIL FROM:<b@[IPv6:2001:db8::1]>"),
        ("MAIL FROM: <space@example.test>", "MAIL FROM:<space@example.test>"),
        ("mail from:<lower@example.test>", "MAIL FROM:<lower@example.test>"),
        ("MAIL FROM:<>", "MAIL FROM:<>"),
    ],
)
def test_sender_forms_as_relayed(start_daemon, fake_upstream, client_says, upstream_gets):
    up = fake_upstream()
    d = start_daemon(up.url)
    with d.connect() as c:
        c.exchange(client_says, 250, "2.1.0", "Sender ok (fake)")
    assert up.wait_for(lambda: "QUIT" in up.commands)
    assert [x for x in up.commands if x.startswith("MAIL")] == [upstream_gets]


def test_helo_name_cannot_inject_into_received(start_daemon, aiosmtpd_upstream):
    d = start_daemon(aiosmtpd_upstream.url)
    with d.connect(ehlo=None) as c:
        c.exchange("EHLO x(y);by=evil.example", 250)
        r = c.transaction("a@example.test", ["b@example.test"], b"Subject: inj")
        assert r.code == 250
    [env] = aiosmtpd_upstream.wait_messages(1)
    m, _ = split_received(env["content"])
    assert m["helo"] == b"x_y__by_evil.example"
