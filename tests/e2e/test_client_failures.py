"""Clients that go away or go quiet: nothing half-received is ever delivered,
and the daemon's log says what happened, under the session's id."""

from __future__ import annotations

import socket
import struct
import time

import pytest


def start_data(c):
    c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
    c.exchange("RCPT TO:<b@example.test>", 250, "2.1.5")
    c.exchange("DATA", 354)


def hard_close(c):
    """Close with RST (SO_LINGER 0) rather than FIN."""
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_client_disconnects_mid_data_aiosmtpd(start_daemon, aiosmtpd_upstream, how):
    d = start_daemon(aiosmtpd_upstream.url)
    c = d.connect()
    sid = d.session_id(c.local_port)
    start_data(c)
    c.send(b"Subject: half\r\n\r\nthe first half of a message\r\n")
    hard_close(c) if how == "rst" else c.close()
    d.wait_log(rf"{sid}: client lost during DATA; nothing delivered$")
    d.wait_log(rf"{sid}: disconnect from \[127\.0\.0\.1\] transactions=1 errors=0$")
    # The transaction reached aiosmtpd (MAIL, RCPT) but no message did.
    assert [a for a, _ in aiosmtpd_upstream.handler.mails] == ["a@example.test"]
    assert aiosmtpd_upstream.envelopes == []
    # And the daemon serves the next client.
    with d.connect() as c2:
        r = c2.transaction("a@example.test", ["b@example.test"], b"Subject: whole\r\n\r\nok")
        assert (r.code, r.status) == (250, "2.0.0")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert b"the first half" not in env["content"]


def test_client_disconnects_mid_data_upstream_wire(start_daemon, fake_upstream):
    up = fake_upstream()
    d = start_daemon(up.url)
    c = d.connect()
    sid = d.session_id(c.local_port)
    start_data(c)
    c.send(b"Subject: half\r\n\r\nno end of data follows\r\n.")  # not even a complete terminator
    c.close()
    d.wait_log(rf"{sid}: client lost during DATA; nothing delivered$")
    assert up.wait_for(lambda: "QUIT" in up.commands)
    # The upstream never even got DATA: the proxy sends it only after the client's dot.
    assert up.commands == ["EHLO mx.test", "MAIL FROM:<a@example.test>", "RCPT TO:<b@example.test>", "RSET", "QUIT"]
    assert b"no end of data" not in up.received
    assert up.messages == []


def test_client_disconnects_mid_transaction_before_data(start_daemon, fake_upstream):
    up = fake_upstream()
    d = start_daemon(up.url)
    c = d.connect()
    sid = d.session_id(c.local_port)
    c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
    c.exchange("RCPT TO:<b@example.test>", 250, "2.1.5")
    c.close()
    d.wait_log(rf"{sid}: client closed the connection in a transaction; nothing delivered$")
    assert up.wait_for(lambda: "QUIT" in up.commands)
    assert up.commands[-2:] == ["RSET", "QUIT"]
    assert up.messages == []


def test_data_timeout(start_daemon, aiosmtpd_upstream):
    d = start_daemon(aiosmtpd_upstream.url, server={"data_timeout": 1})
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        start_data(c)
        c.send(b"Subject: slow\r\n\r\nthen nothing")
        t0 = time.monotonic()
        c.expect(421, "4.4.2", "mx.test Timeout or lost connection during DATA", timeout=5)
        assert 0.8 <= time.monotonic() - t0 < 3
        assert c.closed()
    d.wait_log(rf"{sid}: timeout during DATA; nothing delivered$")
    d.wait_log(rf"{sid}: disconnect from \[127\.0\.0\.1\]")
    assert aiosmtpd_upstream.envelopes == []


def test_data_timeout_is_per_chunk_not_per_message(start_daemon, aiosmtpd_upstream):
    """RFC 5321 §4.5.3.2.5: the DATA block timeout runs between reads; a slow
    but steady client is not cut off."""
    d = start_daemon(aiosmtpd_upstream.url, server={"data_timeout": 1, "idle_timeout": 1})
    with d.connect() as c:
        start_data(c)
        t0 = time.monotonic()
        c.send(b"Subject: trickle\r\n\r\n")
        for i in range(5):
            time.sleep(0.4)
            c.send(b"line %d\r\n" % i)
        c.send(b".\r\n")
        c.expect(250, "2.0.0")
        assert time.monotonic() - t0 > 1.5
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["content"].endswith(b"\r\nSubject: trickle\r\n\r\nline 0\r\nline 1\r\nline 2\r\nline 3\r\nline 4\r\n")


SLOW_ON_DATA = """
import time

def on_data(tx, message):
    time.sleep(1)  # a slow hook: a DNS lookup, a content scanner
    message.add_header("X-Scanned", "yes")
"""


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_a_client_gone_while_its_message_is_checked_gets_nothing_relayed(policy_daemon, fake_upstream, how):
    """The client sent its dot and went away while on_data ran. It never hears the upstream's
    250, so it sends the message again: relayed anyway, the upstream got it twice."""
    up = fake_upstream()
    d = policy_daemon(up.url, SLOW_ON_DATA, policy={"timeout": 5})
    c = d.connect()
    sid = d.session_id(c.local_port)
    start_data(c)
    c.send(b"Subject: once\r\n\r\nhello\r\n.\r\n")
    time.sleep(0.3)  # the daemon has the whole message; the hook runs
    hard_close(c) if how == "rst" else c.close()
    d.wait_log(rf"{sid}: client lost before the message went upstream; nothing delivered$")
    assert up.wait_for(lambda: "RSET" in up.commands)  # the upstream's transaction ended
    assert "DATA" not in up.commands and up.messages == []


def test_a_client_that_closes_its_side_behind_quit_still_gets_its_message_relayed(policy_daemon, fake_upstream):
    """A FIN behind a pipelined QUIT is a half-close: the client may still read the replies."""
    up = fake_upstream()
    d = policy_daemon(up.url, SLOW_ON_DATA, policy={"timeout": 5})
    c = d.connect()
    start_data(c)
    c.send(b"Subject: once\r\n\r\nhello\r\n.\r\nQUIT\r\n")
    c.sock.shutdown(socket.SHUT_WR)
    c.expect(250, "2.0.0")
    c.expect(221)
    assert len(up.messages) == 1
