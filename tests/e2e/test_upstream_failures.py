"""Upstream failures injected with the fake upstream, stage by stage. The
client always gets either the upstream's own refusal or a 4xx, never a 250
for mail the upstream did not take (CONTRACT.md, "Relaying"); afterwards the
proxy serves on: the same session (when it is still open) and a new one."""

from __future__ import annotations

import re
import time

import pytest

R1, R2, R3 = "r1@example.test", "r2@example.test", "r3@example.test"
FLOW = ["MAIL FROM:<a@example.test>", f"RCPT TO:<{R1}>", f"RCPT TO:<{R2}>", f"RCPT TO:<{R3}>", "DATA"]
FAILING_BODY = b"Subject: under test\r\n\r\nFAILING-TX\r\n"

OK_MAIL = (250, "2.1.0")
OK_RCPT = (250, "2.1.5")
GO = (354, "")
UNAVAILABLE = (451, "4.4.1", "Upstream server unavailable, try again later")
LOST = (451, "4.4.1", "Upstream connection lost, try again later")
NONSENSE = (451, "4.3.0", "Upstream server error, try again later")
CLOSING = (421, "4.3.2", "fake.upstream closing")
UP_TIMEOUT = 1
DONE_TIMEOUT = 3  # upstream.data_done_timeout: the final dot's reply may take longer than any other

# (id, script, replies to FLOW then to the message's dot, recipients delivered, log line, stalls)
CASES = [
    ("refused-at-mail", {"CONNECT": "refuse"}, [UNAVAILABLE], None,
     r"upstream: cannot connect to 127\.0\.0\.1:\d+: Connection refused", False),
    ("greeting-421", {"GREETING": ["421 4.3.2 fake.upstream closing"]}, [CLOSING], None,
     r"upstream: closing at greeting: 421 4\.3\.2 fake\.upstream closing", False),
    ("greeting-554", {"GREETING": ["554 5.3.2 no service"]}, [UNAVAILABLE], None,
     r"upstream: greeting refused: 554 5\.3\.2 no service", False),
    ("greeting-garbage", {"GREETING": ["garbage"]}, [NONSENSE], None,
     r"upstream: malformed reply to greeting: xyz", False),
    ("greeting-stall", {"GREETING": ["stall"]}, [UNAVAILABLE], None,
     r"upstream: timed out waiting for the reply to greeting", True),
    ("ehlo-and-helo-refused", {"EHLO": ["502 5.5.1 no"], "HELO": ["502 5.5.1 no"]}, [UNAVAILABLE], None,
     r"upstream: EHLO refused: 502 5\.5\.1 no", False),
    ("mail-451", {"MAIL": ["451 4.3.0 busy"]}, [(451, "4.3.0", "busy")], None, r"MAIL FROM:<a@example\.test> refused: 451 4\.3\.0 busy", False),
    ("mail-550", {"MAIL": ["550 5.7.1 sender denied"]}, [(550, "5.7.1", "sender denied")], None, None, False),
    ("mail-no-enhanced-code", {"MAIL": ["452 try later"]}, [(452, "4.0.0", "try later")], None, None, False),
    ("mail-stall", {"MAIL": ["stall"]}, [UNAVAILABLE], None, r"upstream: timed out waiting for the reply to MAIL", True),
    ("mail-close", {"MAIL": ["close"]}, [UNAVAILABLE], None, r"upstream: connection lost waiting for the reply to MAIL", False),
    ("mail-garbage", {"MAIL": ["garbage"]}, [NONSENSE], None, r"upstream: malformed reply to MAIL: xyz", False),
    ("mail-421", {"MAIL": ["421"]}, [CLOSING], None, r"upstream: closing at MAIL: 421 4\.3\.2 fake\.upstream closing", False),
    ("rcpt-550-one-of-three", {f"RCPT {R2}": ["550 5.1.1 no such user"]},
     [OK_MAIL, OK_RCPT, (550, "5.1.1", "no such user"), OK_RCPT, GO, (250, "2.0.0", "Ok: queued as FAKE1")], [R1, R3],
     r"RCPT TO:<r2@example\.test> refused: 550 5\.1\.1 no such user", False),
    ("rcpt-450-one-of-three", {f"RCPT {R2}": ["450 4.2.1 mailbox busy"]},
     [OK_MAIL, OK_RCPT, (450, "4.2.1", "mailbox busy"), OK_RCPT, GO, (250, "2.0.0")], [R1, R3], None, False),
    ("rcpt-stall", {f"RCPT {R2}": ["stall"]}, [OK_MAIL, OK_RCPT, UNAVAILABLE, LOST, LOST], None,
     r"upstream: timed out waiting for the reply to RCPT", True),
    ("rcpt-close", {f"RCPT {R2}": ["close"]}, [OK_MAIL, OK_RCPT, UNAVAILABLE, LOST, LOST], None,
     r"upstream: connection lost waiting for the reply to RCPT", False),
    ("rcpt-garbage", {f"RCPT {R2}": ["garbage"]}, [OK_MAIL, OK_RCPT, NONSENSE, LOST, LOST], None,
     r"upstream: malformed reply to RCPT: xyz", False),
    ("rcpt-421", {f"RCPT {R2}": ["421"]}, [OK_MAIL, OK_RCPT, CLOSING], None, r"upstream: closing at RCPT", False),
    ("data-554", {"DATA": ["554 5.0.0 no"]}, [OK_MAIL, OK_RCPT, OK_RCPT, OK_RCPT, GO, (554, "5.0.0", "no")], None, None, False),
    ("data-451", {"DATA": ["451 4.3.0 not now"]}, [OK_MAIL, OK_RCPT, OK_RCPT, OK_RCPT, GO, (451, "4.3.0", "not now")], None, None, False),
    ("data-250-instead-of-354", {"DATA": ["250 2.0.0 what"]}, [OK_MAIL, OK_RCPT, OK_RCPT, OK_RCPT, GO, NONSENSE], None,
     r"upstream: a 250 reply does not answer DATA \(RFC 5321 §4\.3\.2\): 250 2\.0\.0 what; dropping the connection", False),
    ("data-stall", {"DATA": ["stall"]}, [OK_MAIL, OK_RCPT, OK_RCPT, OK_RCPT, GO, UNAVAILABLE], None,
     r"upstream: timed out waiting for the reply to DATA", True),
    ("body-close", {"BODY": ["close"]}, [OK_MAIL, OK_RCPT, OK_RCPT, OK_RCPT, GO, UNAVAILABLE], None,
     r"upstream: (connection lost waiting for the reply to end of data|write failed while sending the message|"
     r"connection lost while sending the message)", False),
    ("dot-452", {"DOT": ["452 4.3.1 full"]}, [OK_MAIL, OK_RCPT, OK_RCPT, OK_RCPT, GO, (452, "4.3.1", "full")], None, None, False),
    ("dot-554-multiline", {"DOT": ["554-5.7.1 rejected as spam\r\n554 5.7.1 see https://fake.upstream/why"]},
     [OK_MAIL, OK_RCPT, OK_RCPT, OK_RCPT, GO,
      (554, "5.7.1", "rejected as spam", ["5.7.1 rejected as spam", "5.7.1 see https://fake.upstream/why"])], None, None, False),
    ("dot-stall", {"DOT": ["stall"]}, [OK_MAIL, OK_RCPT, OK_RCPT, OK_RCPT, GO, UNAVAILABLE], None,
     r"upstream: timed out waiting for the reply to end of data", True),
    ("dot-close", {"DOT": ["close"]}, [OK_MAIL, OK_RCPT, OK_RCPT, OK_RCPT, GO, UNAVAILABLE], None,
     r"upstream: connection lost waiting for the reply to end of data", False),
    ("dot-garbage", {"DOT": ["garbage"]}, [OK_MAIL, OK_RCPT, OK_RCPT, OK_RCPT, GO, NONSENSE], None,
     r"upstream: malformed reply to end of data: xyz", False),
    ("dot-421", {"DOT": ["421"]}, [OK_MAIL, OK_RCPT, OK_RCPT, OK_RCPT, GO, CLOSING], None,
     r"upstream: closing at end of data", False),
]


def check(r, want):
    got = (r.code, r.status, r.text, r.lines)[: len(want)]
    assert got == tuple(want), f"want {want}, got {r}"


def full_transaction(c, tag: str):
    r = c.transaction("a@example.test", [R1], b"Subject: " + tag.encode() + b"\r\n\r\nfollow-up")
    assert (r.code, r.status) == (250, "2.0.0"), str(r)


@pytest.mark.parametrize(
    "script,replies,delivered,log,stalls", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_upstream_failure(start_daemon, fake_upstream, script, replies, delivered, log, stalls):
    up = fake_upstream(script)
    d = start_daemon(up.url, upstream={"timeout": UP_TIMEOUT, "data_done_timeout": DONE_TIMEOUT})
    refused = script.get("CONNECT") == "refuse"
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        for i, want in enumerate(replies):
            t0 = time.monotonic()
            if i < len(FLOW):
                c.cmd(FLOW[i])
            else:
                c.send(FAILING_BODY + b".\r\n")
            r = c.reply()
            check(r, want)
            if stalls and want == UNAVAILABLE:
                # The stall was cut off by upstream.timeout (the final dot's: data_done_timeout), not by anything else.
                limit = DONE_TIMEOUT if "DOT" in script else UP_TIMEOUT
                elapsed = time.monotonic() - t0
                assert limit * 0.8 <= elapsed < limit + 3, elapsed
        assert r.code != 250 or delivered, "a 250 for mail the upstream did not take"
        if r.code == 421:
            # RFC 5321 §3.8: the upstream is going away, and so do we.
            assert c.closed()
        else:
            # The same session goes on.
            c.exchange("RSET", 250, "2.0.0")
            if refused:
                c.exchange("MAIL FROM:<a@example.test>", *UNAVAILABLE[:2])
            else:
                full_transaction(c, "same-session")
            c.exchange("QUIT", 221, "2.0.0")
            assert c.closed()
    if log:
        d.wait_log(rf"{sid}: .*{log}")
    # The failure left no harm: a new client is served normally.
    with d.connect() as c2:
        if refused:
            c2.exchange("MAIL FROM:<a@example.test>", *UNAVAILABLE[:2])
            c2.exchange("NOOP", 250, "2.0.0")
        else:
            full_transaction(c2, "new-session")
    if refused:
        assert up.connections == []
        return
    assert up.stages_hit, "the scripted fault never fired"
    expect_msgs = (1 if delivered else 0) + (2 if r.code != 421 else 1)
    assert up.wait_for(lambda: len(up.messages) == expect_msgs), up.messages
    failing = [m for m in up.messages if b"FAILING-TX" in m.content]
    if delivered:
        [m] = failing
        assert m.rcpt_tos == delivered
    else:
        assert failing == []
    assert [m.rcpt_tos for m in up.messages if b"follow-up" in m.content] == [[R1]] * (expect_msgs - len(failing))


def test_upstream_recovers_after_restart_of_a_dead_port(start_daemon, fake_upstream, aiosmtpd_upstream):
    """Connection refused, then (after a reload pointing at a live upstream)
    mail flows again without restarting the daemon."""
    dead = fake_upstream({"CONNECT": "refuse"})
    d = start_daemon(dead.url)
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", *UNAVAILABLE[:2])
    d.reload({"upstream": {"url": aiosmtpd_upstream.url}})
    with d.connect() as c:
        full_transaction(c, "after-reload")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == [R1]


@pytest.mark.parametrize(
    "goodbye",
    ["250 2.0.0 Ok: queued as IDLE1\r\n421 4.4.2 fake.upstream Error: timeout exceeded|close",
     "250 2.0.0 Ok: queued as IDLE1|close"],
    ids=["idle-421-then-close", "silent-close"],
)
def test_upstream_closed_between_transactions_is_reconnected(start_daemon, fake_upstream, goodbye):
    up = fake_upstream({"DOT": [goodbye]})
    d = start_daemon(up.url)
    with d.connect() as c:
        r = c.transaction("a@example.test", [R1], b"Subject: first\r\n\r\none")
        check(r, (250, "2.0.0", "Ok: queued as IDLE1"))
        # The upstream has hung up on its idle connection before the client's next MAIL.
        assert up.wait_for(lambda: len(up.connections) == 1 and up.connections[0].commands[-1] == "DATA")
        time.sleep(0.2)  # let the close reach the proxy's socket
        # No transaction was open upstream: a fresh connection loses nothing.
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange(f"RCPT TO:<{R1}>", 250, "2.1.5")
        c.exchange("DATA", 354)
        c.send(b"Subject: second\r\n\r\ntwo\r\n.\r\n")
        c.expect(250, "2.0.0")
    assert up.wait_for(lambda: len(up.messages) == 2)


def test_the_final_reply_may_take_longer_than_any_other(start_daemon, fake_upstream):
    """RFC 5321 §4.5.3.2.6: the reply to the final dot may take 10 minutes (a
    content filter runs first). Cut at upstream.timeout, the upstream queues
    the message while the client hears 451 and sends it again (RFC 1047).
    upstream.data_done_timeout (Postfix's 600 s) waits; and nothing of the
    session's own (idle_timeout, data_timeout: 1 s here) cuts the client off
    while it waits for that reply."""
    up = fake_upstream({"DOT": [{"wait": 2.5, "send": "250 2.0.0 Ok: queued as SLOW1"}]})
    d = start_daemon(up.url, upstream={"timeout": UP_TIMEOUT, "data_done_timeout": 600},
                     server={"idle_timeout": 1, "data_timeout": 1})
    with d.connect() as c:
        t0 = time.monotonic()
        r = c.transaction("a@example.test", [R1], b"Subject: slow\r\n\r\nonce")
        check(r, (250, "2.0.0", "Ok: queued as SLOW1"))
        assert time.monotonic() - t0 >= 2.4
        full_transaction(c, "after-the-slow-one")  # the connection was not dropped as out of step
        c.exchange("QUIT", 221)
    assert [m.content.count(b"once") for m in up.messages if b"Subject: slow" in m.content] == [1]
    assert len(up.connections) == 1


def test_an_upstream_timeout_given_holds_for_the_final_reply_too(start_daemon, fake_upstream):
    """CONTRACT.md: [upstream] timeout is "seconds per upstream reply". Given, and no
    data_done_timeout, the final dot's reply waited 600 s all the same."""
    up = fake_upstream({"DOT": ["stall"]})
    d = start_daemon(up.url, upstream={"timeout": 2})
    with d.connect() as c:
        t0 = time.monotonic()
        r = c.transaction("a@example.test", [R1], FAILING_BODY.rstrip(b"\r\n"))
        elapsed = time.monotonic() - t0
        check(r, UNAVAILABLE)
        assert 1.8 <= elapsed < 5, elapsed


def test_the_final_reply_is_awaited_data_done_timeout_then_451(start_daemon, fake_upstream):
    """Past upstream.data_done_timeout the reply to the final dot is given up on: 451 4.4.1."""
    up = fake_upstream({"DOT": ["stall"]})
    d = start_daemon(up.url, upstream={"timeout": UP_TIMEOUT, "data_done_timeout": 2})
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        t0 = time.monotonic()
        r = c.transaction("a@example.test", [R1], FAILING_BODY.rstrip(b"\r\n"))
        elapsed = time.monotonic() - t0
        check(r, UNAVAILABLE)
        assert 1.8 <= elapsed < 5, elapsed
    d.wait_log(rf"{sid}: upstream: timed out waiting for the reply to end of data$")


# -- the upstream ends the transaction while it waits for the client's message ----------
# (its own command timeout: Postfix's smtpd_timeout, 300 s, 10 s under stress). Nothing of the
# message has gone, so the transaction is given again on a new connection.

IDLE_421 = "421 4.4.2 fake.upstream Error: timeout exceeded|close"


def slow_message(c, rcpts, body: bytes, pause: float = 0.8):
    """MAIL, RCPTs, DATA, then the message `pause` seconds later (a slow client)."""
    c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
    for r in rcpts:
        c.exchange(f"RCPT TO:<{r}>", 250, "2.1.5")
    c.exchange("DATA", 354)
    c.send(body[:10])
    time.sleep(pause)
    c.send(body[10:] + b"\r\n.\r\n")
    return c.reply()


@pytest.mark.parametrize("goodbye", [IDLE_421, "close"], ids=["idle-421", "silent-close"])
def test_a_transaction_the_upstream_closed_while_the_client_sent_is_given_again(start_daemon, fake_upstream,
                                                                                 goodbye):
    up = fake_upstream({f"RCPT {R2}": [{"send": "250 2.1.5 ok", "then": goodbye, "delay": 0.3}]})
    d = start_daemon(up.url, upstream={"timeout": UP_TIMEOUT})
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        r = slow_message(c, [R1, R2], b"Subject: slow client\r\n\r\nonce")
        check(r, (250, "2.0.0", "Ok: queued as FAKE1"))
        full_transaction(c, "after")
    [m, _] = up.messages
    assert m.rcpt_tos == [R1, R2] and m.content.count(b"once") == 1
    assert "DATA" not in up.connections[0].commands
    assert up.connections[1].commands[1:4] == ["MAIL FROM:<a@example.test>", f"RCPT TO:<{R1}>", f"RCPT TO:<{R2}>"]
    seen = (r"closing while the transaction waited for the client: 421 4\.4\.2 fake\.upstream Error: timeout exceeded"
            if goodbye == IDLE_421 else r"closed the connection while the transaction waited for the client")
    d.wait_log(rf"{sid}: upstream: {seen}$")
    d.wait_log(rf"{sid}: upstream: giving the transaction again on a new connection: from=<a@example\.test> "
               rf"to=<{R1}>,<{R2}>$")


@pytest.mark.parametrize("goodbye", [IDLE_421, "close"], ids=["idle-421", "silent-close"])
def test_a_transaction_the_upstream_closed_before_a_rcpt_is_given_again(start_daemon, fake_upstream, goodbye):
    # A client that paused between RCPTs heard the stale 421 at its next RCPT and lost its session.
    up = fake_upstream({f"RCPT {R1}": [{"send": "250 2.1.5 ok", "then": goodbye, "delay": 0.3}]})
    d = start_daemon(up.url, upstream={"timeout": UP_TIMEOUT})
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange(f"RCPT TO:<{R1}>", 250, "2.1.5")
        time.sleep(0.8)
        c.exchange(f"RCPT TO:<{R2}>", 250, "2.1.5")
        c.exchange("DATA", 354)
        c.send(b"Subject: paused\r\n\r\nonce\r\n.\r\n")
        check(c.reply(), (250, "2.0.0", "Ok: queued as FAKE1"))
    [m] = up.messages
    assert m.rcpt_tos == [R1, R2] and m.content.count(b"once") == 1
    assert up.connections[1].commands[1:4] == ["MAIL FROM:<a@example.test>", f"RCPT TO:<{R1}>", f"RCPT TO:<{R2}>"]
    d.wait_log(rf"{sid}: upstream: giving the transaction again on a new connection: from=<a@example\.test> "
               rf"to=<{R1}>$")


@pytest.mark.parametrize("second,want", [
    ("550 5.1.1 no such user now", (451, "4.4.1", "Upstream connection lost, try again later")),
    ("450 4.2.1 mailbox busy", (450, "4.2.1", "mailbox busy")),
], ids=["now-refused", "now-tempfailed"])
def test_a_transaction_given_again_and_answered_otherwise_is_refused_for_now(start_daemon, fake_upstream, second,
                                                                             want):
    """The client was told both recipients were taken: if the upstream now refuses one, the message
    goes to nobody (never to fewer recipients than the client was told) and the client tries it again
    later, when the refusal reaches it at its RCPT (a 5xx now would bounce it for the other one too)."""
    up = fake_upstream({f"RCPT {R2}": [{"send": "250 2.1.5 ok", "then": IDLE_421, "delay": 0.3}, second]})
    d = start_daemon(up.url, upstream={"timeout": UP_TIMEOUT})
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        r = slow_message(c, [R1, R2], FAILING_BODY.rstrip(b"\r\n"))
        check(r, want)
        full_transaction(c, "same-session")
    assert not [m for m in up.messages if b"FAILING-TX" in m.content]
    assert up.connections[1].commands[1:5] == ["MAIL FROM:<a@example.test>", f"RCPT TO:<{R1}>", f"RCPT TO:<{R2}>",
                                               "RSET"]
    d.wait_log(rf"{sid}: upstream: the transaction given again was refused \({re.escape(second)}\); the message is "
               rf"refused for now$")


def test_a_transaction_closed_while_a_hook_ran_is_given_again(policy_daemon, fake_upstream):
    """The same while on_data runs (a slow content check): the message goes once, to both."""
    up = fake_upstream({f"RCPT {R2}": [{"send": "250 2.1.5 ok", "then": IDLE_421, "delay": 0.3}]})
    d = policy_daemon(up.url, """
        import asyncio
        async def on_data(tx, message):
            await asyncio.sleep(1)
    """, upstream={"timeout": UP_TIMEOUT})
    with d.connect() as c:
        r = c.transaction("a@example.test", [R1, R2], b"Subject: hooked\r\n\r\nonce")
        check(r, (250, "2.0.0"))
    [m] = up.messages
    assert m.rcpt_tos == [R1, R2] and m.content.count(b"once") == 1


def test_slow_but_steady_upstream_gets_a_big_message(start_daemon, fake_upstream):
    """RFC 5321 §4.5.3.2.5/6: the DATA timeouts are per block sent and for the
    final reply; progress resets them. The upstream here reads ~6 MB/s, so the
    28 MB message takes ~4.7 s in all, each 16 KiB in under 3 ms, with
    timeout = 3 (a margin for a machine busy with parallel tests)."""
    up = fake_upstream({"BODY": ["slow:6000000"], "RCVBUF": 65536})
    d = start_daemon(up.url, upstream={"timeout": 3})
    line = b"x" * 998 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (28 * 1024 * 1024 // len(line))
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange(f"RCPT TO:<{R1}>", 250, "2.1.5")
        c.exchange("DATA", 354)
        c.send(body + b".\r\n")
        r = c.reply(timeout=30)
        assert (r.code, r.status) == (250, "2.0.0"), str(r)
    [msg] = up.messages
    assert msg.content.endswith(body)


def test_maildir_delivery_failure_is_a_tempfail(start_daemon, tmp_path):
    """A Maildir that cannot be written (here: a file where the folder should
    be) gives 451 4.3.0, never 250, and leaves nothing behind."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("in the way\n")
    d = start_daemon(f"maildir:{blocker}")
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        r = c.transaction("a@example.test", [R1, R2], b"Subject: nowhere")
        assert (r.code, r.status, r.text) == (451, "4.3.0", "Local delivery failed, try again later")
        c.exchange("NOOP", 250, "2.0.0")
    d.wait_log(rf"{sid}: maildir: open {blocker}/tmp/\S+: Not a directory$")
    d.wait_log(rf"{sid}: tx={sid}\.1 .* verdict=tempfail$")
    assert blocker.read_text() == "in the way\n"
