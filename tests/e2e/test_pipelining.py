"""RFC 2920 pipelining over a raw socket: a whole batch in one write, the
replies in order, the upstream's refusals in their place."""

from __future__ import annotations

BATCH = b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n"


def read_replies(c, n):
    return [c.reply() for _ in range(n)]


def test_batch_in_one_write(start_daemon, aiosmtpd_upstream):
    d = start_daemon(aiosmtpd_upstream.url)
    with d.client() as c:
        c.expect(220)
        c.exchange("EHLO pipe.test", 250, text="PIPELINING")
        c.send(BATCH)
        got = [(r.code, r.status, r.text) for r in read_replies(c, 4)]
        assert got == [
            (250, "2.1.0", "Sender ok (aiosmtpd)"),
            (250, "2.1.5", "Recipient ok (aiosmtpd)"),
            (250, "2.1.5", "Recipient ok (aiosmtpd)"),
            (354, "", "End data with <CR><LF>.<CR><LF>"),
        ]
        # The body, its end and the next commands in one write as well.
        c.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n")
        got = [(r.code, r.status, r.text) for r in read_replies(c, 3)]
        assert got == [
            (250, "2.0.0", "Ok: queued as AIO00001 (aiosmtpd)"),
            (250, "2.0.0", "Ok"),
            (221, "2.0.0", "mx.test Bye"),
        ]
        assert c.closed()
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["mail_from"] == "a@example.test"
    assert env["rcpt_tos"] == ["b@example.test", "c@example.test"]
    assert env["content"].endswith(b"\r\nSubject: pipelined\r\n\r\nbody\r\n")


SLOW_RCPT = """
    import time

    def on_rcpt(tx, rcpt):
        time.sleep(0.2)
"""


def test_replies_to_a_batch_come_in_one_write(policy_daemon, aiosmtpd_upstream):
    """RFC 2920 §3.2 lets the server hold replies while pipelined commands
    wait: each batch's replies leave in one write. Each RCPT's hook takes
    0.2 s, so replies written one by one would reach the client apart: the
    first read after the batch must hold them all."""
    d = policy_daemon(aiosmtpd_upstream.url, SLOW_RCPT)
    with d.client() as c:
        c.expect(220)
        c.exchange("EHLO pipe.test", 250, text="PIPELINING")
        c.send(BATCH)
        c.sock.settimeout(10)
        first = c.sock.recv(65536)
        assert [line[:3] for line in first.split(b"\r\n") if line] == [b"250", b"250", b"250", b"354"], first
        c.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n")
        last = c.sock.recv(65536)
        assert [line[:3] for line in last.split(b"\r\n") if line] == [b"250", b"250", b"221"], last
    aiosmtpd_upstream.wait_messages(1)


def test_ehlo_and_everything_in_one_write(start_daemon, aiosmtpd_upstream):
    """A client that pipelines from EHLO to QUIT, body included (what some
    spam engines do): replies still come in order and the mail goes through."""
    d = start_daemon(aiosmtpd_upstream.url)
    with d.client() as c:
        c.expect(220)
        c.send(b"EHLO burst.test\r\n" + BATCH + b"Subject: burst\r\n\r\nx\r\n.\r\nQUIT\r\n")
        codes = [r.code for r in read_replies(c, 7)]
        assert codes == [250, 250, 250, 250, 354, 250, 221]
        assert c.closed()
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["b@example.test", "c@example.test"]


def test_second_rcpt_refused_by_upstream(start_daemon, fake_upstream):
    up = fake_upstream({"RCPT c@example.test": "550 5.1.1 <c@example.test>: no such user"})
    d = start_daemon(up.url)
    with d.connect() as c:
        c.send(BATCH)
        got = [(r.code, r.status, r.text) for r in read_replies(c, 4)]
        assert got == [
            (250, "2.1.0", "Sender ok (fake)"),
            (250, "2.1.5", "Recipient ok (fake)"),
            (550, "5.1.1", "<c@example.test>: no such user"),
            (354, "", "End data with <CR><LF>.<CR><LF>"),
        ]
        c.send(b"Subject: partial\r\n\r\nbody\r\n.\r\n")
        r = c.reply()
        assert (r.code, r.status, r.text) == (250, "2.0.0", "Ok: queued as FAKE1")
    [msg] = up.messages
    assert msg.rcpt_tos == ["b@example.test"]
    assert msg.content.endswith(b"\r\nSubject: partial\r\n\r\nbody\r\n")


def test_all_rcpts_refused_then_data_gets_554(start_daemon, fake_upstream):
    up = fake_upstream({"RCPT": "550 5.1.1 no such user"})
    d = start_daemon(up.url, upstream={"pool_size": 0})  # the whole upstream dialogue of one session, down to its QUIT: no pooled connection
    with d.connect() as c:
        c.send(BATCH)
        got = [(r.code, r.status) for r in read_replies(c, 4)]
        # RFC 2920 §3.1: DATA after no accepted RCPT gets 554, not 354.
        assert got == [(250, "2.1.0"), (550, "5.1.1"), (550, "5.1.1"), (554, "5.5.1")]
        # The client must not send the body now; the session is still usable.
        c.exchange("RSET", 250, "2.0.0")
        c.exchange("NOOP", 250, "2.0.0")
    assert up.wait_for(lambda: "QUIT" in up.commands)
    assert "DATA" not in up.commands
    assert up.messages == []


def test_pipelined_rset_between_transactions(start_daemon, aiosmtpd_upstream):
    d = start_daemon(aiosmtpd_upstream.url)
    with d.connect() as c:
        c.send(
            b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nRSET\r\n"
            b"MAIL FROM:<x@example.test>\r\nRCPT TO:<y@example.test>\r\nDATA\r\n"
        )
        assert [(r.code, r.status) for r in read_replies(c, 6)] == [
            (250, "2.1.0"), (250, "2.1.5"), (250, "2.0.0"), (250, "2.1.0"), (250, "2.1.5"), (354, ""),
        ]
        c.send(b"Subject: after rset\r\n\r\n.\r\n")
        c.expect(250, "2.0.0")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert (env["mail_from"], env["rcpt_tos"]) == ("x@example.test", ["y@example.test"])
