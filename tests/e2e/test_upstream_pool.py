"""Upstream connections kept across client sessions (upstream.pool_size,
upstream.pool_idle_timeout): a client that sends one message per connection
does not cost an upstream connect, EHLO and QUIT per message.

What the pool promises, each checked here against the counting fake upstream:
a connection goes back only clean (its transaction over), never after a
failure or a client that left mid-transaction, nor with anything the upstream
holds against it (a refusal since its last delivery, 50 commands outside a
transaction since then, 100 sessions served); the next session's first
command on it goes with an RSET that must get 250 (pipelined when the upstream
offers PIPELINING), else it is dropped and a fresh connection serves; one the
upstream closed (or spoke on) while idle is replaced without the client noticing; the
client identity sent with XCLIENT is sent again when it differs; idle ones are
QUIT after the idle timeout, all of them at SIGTERM; a reload that changes
[upstream] retires them."""

from __future__ import annotations

import re
import time

import pytest

from sec_helpers import b64, sec_daemon, write_users  # noqa: F401  (sec_daemon is a fixture)

BODY = b"Subject: pooled\r\n\r\none message per connection"


def one_message(d, tag: str = "", **kw) -> None:
    """A client that connects, sends one message and QUITs (as smtp-source does)."""
    with d.connect(**kw) as c:
        r = c.transaction("a@example.test", ["b@example.test"], BODY + tag.encode())
        assert (r.code, r.status) == (250, "2.0.0"), str(r)
        c.exchange("QUIT", 221, "2.0.0")


def rsets(up) -> int:
    return up.commands.count("RSET")


def kept(d, up, n: int) -> None:
    """Waits until the daemon (started with log_level="debug") has put its upstream connection back
    in the pool for the n-th time (a client that comes sooner rightly gets a connection of its own).
    Nothing of it reaches the upstream: the RSET goes with the next session's first command."""
    d.wait_log(r"upstream: connection kept for the next session$", count=n)


def first_then_second(start_daemon, up):
    """A daemon (log_level="debug") and two one-message sessions through it, the second once the
    first has put its upstream connection back in the pool; both messages arrived."""
    d = start_daemon(up.url, log_level="debug")
    one_message(d, "first")
    kept(d, up, 1)
    one_message(d, "second")
    assert up.wait_for(lambda: len(up.messages) == 2)
    return d


def test_one_message_per_connection_shares_one_upstream_connection(start_daemon, fake_upstream):
    up = fake_upstream()
    d = start_daemon(up.url, log_level="debug")
    n = 8
    for i in range(n):
        one_message(d, f"m{i}")
        # The session hands its connection back after the client has gone;
        # the next client comes once it is back in the pool.
        kept(d, up, i + 1)
    assert len(up.messages) == n
    assert rsets(up) == n - 1  # each with the next session's MAIL, in the same write
    assert up.connections[0].pipelined == n - 1, up.connections[0].commands
    assert len(up.connections) == 1, f"{len(up.connections)} upstream connections for {n} sessions"
    cmds = up.connections[0].commands
    assert cmds.count("EHLO mx.test") == 1 and "QUIT" not in cmds
    # Between two sessions' transactions, always an RSET (RFC 5321 §4.1.1.5), right before the MAIL
    # (sent in the same write: the upstream offers PIPELINING).
    mails = [i for i, c in enumerate(cmds) if c.startswith("MAIL")]
    for b in mails[1:]:
        assert cmds[b - 1] == "RSET", cmds
    # SIGTERM: the kept connection gets QUIT.
    assert d.stop() == 0
    assert up.wait_for(lambda: up.connections[0].commands[-1] == "QUIT"), up.connections[0].commands


def test_parallel_sessions_keep_at_most_pool_size(start_daemon, fake_upstream):
    up = fake_upstream()
    d = start_daemon(up.url, upstream={"pool_size": 2})
    clients = [d.connect() for _ in range(5)]
    try:
        for c in clients:  # each holds its own upstream connection, mid-transaction
            c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        assert len(up.connections) == 5
        for i, c in enumerate(clients):
            c.exchange("RCPT TO:<b@example.test>", 250, "2.1.5")
            c.exchange("DATA", 354)
            c.send(BODY + b"\r\n.\r\n")
            c.expect(250, "2.0.0")
            c.exchange("QUIT", 221)
    finally:
        for c in clients:
            c.close()
    quit_sent = lambda: sum(1 for k in up.connections if k.commands and k.commands[-1] == "QUIT")  # noqa: E731
    assert up.wait_for(lambda: quit_sent() == 3), [k.commands[-2:] for k in up.connections]
    time.sleep(0.2)
    assert quit_sent() == 3  # two stay kept
    one_message(d, "after")
    assert len(up.connections) == 5  # served by a kept one


@pytest.mark.parametrize("script", [
    {"DOT": ["250 2.0.0 Ok: queued as Q1|close"]},  # closed right after the message's 250
    {"DOT": [{"send": "250 2.0.0 Ok: queued as Q1", "then": "421 4.4.2 fake.upstream idle timeout", "delay": 0.05}]},
], ids=["closed-while-idle", "421-while-idle"])
def test_stale_pooled_connection_is_replaced_unnoticed(start_daemon, fake_upstream, script):
    up = fake_upstream(script)
    d = start_daemon(up.url, log_level="debug")
    one_message(d, "first")
    kept(d, up, 1)
    time.sleep(0.3)  # the upstream has closed it, or spoken unasked
    one_message(d, "second")  # the client sees nothing of it
    assert up.wait_for(lambda: len(up.messages) == 2)
    assert len(up.connections) == 2
    first = up.connections[0].commands
    assert "RSET" not in first and sum(c.startswith("MAIL") for c in first) == 1, first
    d.wait_log(r"upstream pool: .*closed by the upstream while idle \(or it spoke unasked\); dropped")


def test_connection_dying_at_mail_is_replaced_unnoticed(start_daemon, fake_upstream):
    """Closed between the look and the MAIL: the MAIL is tried once more on a fresh connection."""
    up = fake_upstream({"MAIL": ["250 2.1.0 ok", "close"]})
    first_then_second(start_daemon, up)
    assert len(up.connections) == 2


NO_PIPELINING_EHLO = "250-fake.upstream\r\n250-8BITMIME\r\n250 SIZE 104857600"


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lock-step"])
@pytest.mark.parametrize("rset_reply", ["500 5.5.1 no RSET here", "451 4.3.0 busy", "252 2.0.0 odd",
                                        "421 4.3.2 closing"])
def test_kept_connection_whose_rset_is_not_250_is_dropped_unnoticed(start_daemon, fake_upstream, rset_reply,
                                                                     pipelining):
    script = {"RSET": [rset_reply]}
    if not pipelining:
        script["EHLO"] = NO_PIPELINING_EHLO
    up = fake_upstream(script)
    d = first_then_second(start_daemon, up)  # the second's RSET is refused: a fresh connection serves it unseen
    assert len(up.connections) == 2
    first = up.connections[0].commands
    rset = first.index("RSET")
    # Anything but 250 to RSET (RFC 5321 §4.1.1.5): the connection is dropped. Pipelined, the MAIL
    # that went with the RSET dies with it; in lock step the MAIL never went.
    assert [c.split(" ")[0] for c in first[rset + 1:]] == (["MAIL"] if pipelining else []), first
    assert sum(c.startswith("MAIL") for c in up.connections[1].commands) == 1
    assert b"second" in up.messages[1].content
    d.wait_log(r"upstream: (RSET answered .*not 250; dropping the kept connection|"
               r"a 252 reply does not answer RSET .*; dropping the connection)")  # 252 is out of place


def test_rset_of_a_kept_connection_without_pipelining_goes_first(start_daemon, fake_upstream):
    """An upstream without PIPELINING gets the RSET on its own, its 250 read before the MAIL."""
    up = fake_upstream({"EHLO": NO_PIPELINING_EHLO})
    first_then_second(start_daemon, up)
    assert len(up.connections) == 1
    cmds = up.connections[0].commands
    second_mail = [i for i, c in enumerate(cmds) if c.startswith("MAIL")][1]
    assert cmds[second_mail - 1] == "RSET", cmds
    assert up.connections[0].pipelined == 0, cmds


@pytest.mark.parametrize("script,client_gets", [
    ({"DOT": ["stall"]}, (451, "4.4.1")),  # timeout
    ({"DOT": ["garbage"]}, (451, "4.3.0")),  # not a reply
    ({"DOT": ["354 again"]}, (451, "4.3.0")),  # a reply out of place
    ({"DOT": ["250 2.0.0 Ok: queued as Q1\r\n250 2.0.0 again"]}, (250, "2.0.0")),  # unsolicited bytes after the 250
    ({"RCPT": ["close"]}, (451, "4.4.1")),  # lost
], ids=["timeout", "garbage", "out-of-place", "unsolicited-after-250", "lost"])
def test_connection_is_never_kept_after_a_failure(start_daemon, fake_upstream, script, client_gets):
    up = fake_upstream(script)
    d = start_daemon(up.url, upstream={"timeout": 1, "data_done_timeout": 1})
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.cmd("RCPT TO:<b@example.test>")
        r = c.reply()
        if r.code == 250:
            c.exchange("DATA", 354)
            c.send(BODY + b"\r\n.\r\n")
            r = c.reply()
        assert (r.code, r.status) == client_gets, str(r)
        c.exchange("QUIT", 221)
    time.sleep(0.2)
    one_message(d, "next")
    assert up.wait_for(lambda: any(b"next" in m.content for m in up.messages))
    assert len(up.connections) == 2
    assert "RSET" not in up.connections[0].commands  # never readied for another session


def test_client_leaving_mid_transaction_costs_the_connection(start_daemon, fake_upstream):
    up = fake_upstream()
    d = start_daemon(up.url)
    c = d.connect()
    c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
    c.exchange("RCPT TO:<b@example.test>", 250, "2.1.5")
    c.close()  # no QUIT, in the middle of a transaction
    assert up.wait_for(lambda: up.connections[0].commands[-2:] == ["RSET", "QUIT"]), up.connections[0].commands
    one_message(d, "next")
    assert len(up.connections) == 2


def test_a_refusal_costs_the_connection_until_a_delivery(start_daemon, fake_upstream):
    """The upstream counts refusals against the connection (Postfix: smtpd_soft_error_limit,
    smtpd_hard_error_limit), and forgets them only when a message is delivered: a connection that
    got a refusal since its last delivery is not kept, or the next, unrelated client would pay for
    them (delayed replies, then a 421)."""
    up = fake_upstream({"DOT": ["554 5.7.1 no thanks"], "MAIL spam@bad.test": "554 5.7.1 go away"})
    d = start_daemon(up.url, log_level="debug")
    with d.connect() as c:
        r = c.transaction("a@example.test", ["b@example.test"], BODY)
        assert (r.code, r.status) == (554, "5.7.1")
        c.exchange("QUIT", 221)
    assert up.wait_for(lambda: up.connections[0].commands[-1] == "QUIT"), up.connections[0].commands
    assert "RSET" not in up.connections[0].commands
    d.wait_log(r"upstream: connection not kept: the upstream refused a command on it since its last delivery")
    one_message(d, "next")
    assert len(up.connections) == 2
    # A refusal, then a delivery in the same session: forgiven, the connection is kept.
    kept(d, up, 1)
    with d.connect() as c:
        c.exchange("MAIL FROM:<spam@bad.test>", 554, "5.7.1")
        r = c.transaction("a@example.test", ["b@example.test"], BODY + b"delivered")
        assert (r.code, r.status) == (250, "2.0.0"), str(r)
        c.exchange("QUIT", 221)
    kept(d, up, 2)
    one_message(d, "on the same connection")
    assert len(up.connections) == 2
    assert up.wait_for(lambda: len(up.messages) == 3)


def test_sessions_that_deliver_nothing_wear_a_connection_out(start_daemon, fake_upstream):
    """Each reuse costs a RSET, which Postfix counts as a junk command until a message is delivered
    (smtpd_junk_command_limit 100, then every one is an error): a connection is kept only while
    it has sent fewer than 50 commands outside a transaction (RSET, EHLO, XCLIENT, XFORWARD) since its
    last delivery."""
    up = fake_upstream()
    d = start_daemon(up.url, log_level="debug")
    for i in range(30):  # address probes: MAIL, RCPT, RSET, QUIT, no message
        with d.connect() as c:
            c.exchange("MAIL FROM:<probe@example.test>", 250)
            c.exchange("RCPT TO:<b@example.test>", 250)
            c.exchange("RSET", 250)
            c.exchange("QUIT", 221)
        d.wait_log(r"upstream: (connection kept for the next session|connection not kept: .*)$", count=i + 1)
    first = up.connections[0].commands
    junk = [c for c in first if c.split(" ")[0] in ("RSET", "EHLO")]
    # EHLO, then the 25 clients' RSETs and the RSETs readying it for the 24 after the first.
    assert len(junk) == 50 and first[-1] == "QUIT", first
    d.wait_log(r"upstream: connection not kept: 50 commands outside a transaction \(RSET, EHLO, \.\.\.\) since its "
               r"last delivery$")
    assert len(up.connections) == 2


def test_a_connection_serves_at_most_100_sessions(start_daemon, fake_upstream):
    """Whatever else an upstream holds per connection, a kept connection serves 100 client sessions
    at most (each delivering: nothing else retires it), then gets QUIT."""
    up = fake_upstream()
    d = start_daemon(up.url, log_level="debug")
    for i in range(101):
        one_message(d, f"m{i}")
        if i < 99:
            kept(d, up, i + 1)
    d.wait_log(r"upstream: connection not kept: it served 100 sessions$")
    assert up.wait_for(lambda: len(up.messages) == 101)
    assert sum(1 for c in up.connections[0].commands if c.startswith("MAIL")) == 100
    assert up.connections[0].commands[-1] == "QUIT"
    assert len(up.connections) == 2


def test_idle_connections_are_closed_after_the_idle_timeout(start_daemon, fake_upstream):
    up = fake_upstream()
    d = start_daemon(up.url, upstream={"pool_idle_timeout": 1})
    one_message(d)
    assert up.wait_for(lambda: len(up.messages) == 1)
    time.sleep(0.2)
    assert "QUIT" not in up.commands  # kept
    assert up.wait_for(lambda: up.commands[-1] == "QUIT", timeout=4), up.commands
    assert "RSET" not in up.commands  # never readied: no client came
    one_message(d, "later")  # a fresh connection then
    assert len(up.connections) == 2


def test_kept_connection_keeps_what_the_upstream_offered_across_idle_checks(start_daemon, fake_upstream):
    """The pool looks at its idle connections every pool_idle_timeout / 4; one it keeps still has the
    upstream's EHLO extensions: an 8-bit message goes through it (it was once refused 554 5.6.3, the
    extensions lost in that look), its RSET still pipelined."""
    up = fake_upstream()
    d = start_daemon(up.url, log_level="debug", upstream={"pool_idle_timeout": 2})
    one_message(d, "first")
    kept(d, up, 1)
    time.sleep(0.8)  # a look at the idle connections (every 500 ms here)
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test> BODY=8BITMIME", 250, "2.1.0")
        c.exchange("RCPT TO:<b@example.test>", 250, "2.1.5")
        c.exchange("DATA", 354)
        c.send("Subject: 8bit\r\n\ncaf\u00e9 au lait\r\n.\r\n".replace("\r\n\n", "\r\n\r\n").encode())
        c.expect(250, "2.0.0")
        c.exchange("QUIT", 221)
    assert up.wait_for(lambda: len(up.messages) == 2)
    assert len(up.connections) == 1
    cmds = up.connections[0].commands
    assert any(c.endswith("BODY=8BITMIME") for c in cmds) and up.connections[0].pipelined == 1, cmds


def test_pool_size_0_keeps_nothing(start_daemon, fake_upstream):
    up = fake_upstream()
    d = start_daemon(up.url, upstream={"pool_size": 0})
    one_message(d, "a")
    one_message(d, "b")
    assert up.wait_for(lambda: len(up.messages) == 2)
    assert len(up.connections) == 2
    for k in up.connections:
        assert up.wait_for(lambda: k.commands[-1] == "QUIT") and "RSET" not in k.commands, k.commands


def test_reload_changing_upstream_retires_kept_connections(start_daemon, fake_upstream):
    old, new = fake_upstream(), fake_upstream()
    d = start_daemon(old.url, log_level="debug")
    one_message(d, "to-old")
    kept(d, old, 1)
    d.reload({"upstream": {"url": new.url}})
    # The old settings' connection is QUIT at once, never reused.
    assert old.wait_for(lambda: old.commands[-1] == "QUIT"), old.commands
    one_message(d, "to-new")
    assert new.wait_for(lambda: len(new.messages) == 1)
    assert len(old.messages) == 1 and len(old.connections) == 1


def test_reload_keeping_upstream_keeps_the_connections(start_daemon, fake_upstream):
    up = fake_upstream()
    d = start_daemon(up.url, log_level="debug")
    one_message(d, "before")
    kept(d, up, 1)
    d.reload({"server": {"max_errors": 7}})
    one_message(d, "after")
    assert up.wait_for(lambda: len(up.messages) == 2)
    assert len(up.connections) == 1 and "QUIT" not in up.commands


# --------------------------------------------------------------------------
# Who the client is (XCLIENT): sent again on a kept connection when it differs.

XCLIENT_EHLO = "250-fake.upstream\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-XCLIENT ADDR HELO LOGIN\r\n250 SIZE 1000000"
PASSWORD = "Pass-Word-1"


@pytest.fixture
def xclient_daemon(sec_daemon, fake_upstream, tmp_path):
    up = fake_upstream({"EHLO": XCLIENT_EHLO, "XCLIENT": "220 fake.upstream ESMTP (after XCLIENT)"})
    users = write_users(tmp_path / "users", {"alice": PASSWORD})
    d = sec_daemon(up.url, log_level="debug", upstream={"client_info": "xclient"},
                   auth={"users_file": str(users), "allow_plaintext": True})
    return d, up


def xclients(up) -> list[str]:
    return [c for c in up.commands if c.startswith("XCLIENT")]


def test_xclient_is_sent_again_for_another_client(xclient_daemon):
    d, up = xclient_daemon
    # alice logs in; the next client, from the same address, does not: the
    # upstream must not go on seeing LOGIN=alice.
    with d.connect(ehlo="c.test", source="127.0.0.5") as c:
        c.exchange("AUTH PLAIN " + b64("\0alice\0" + PASSWORD), 235)
        r = c.transaction("a@example.test", ["b@example.test"], BODY)
        assert r.code == 250, str(r)
    kept(d, up, 1)
    one_message(d, "anonymous", ehlo="c.test", source="127.0.0.5")
    kept(d, up, 2)
    one_message(d, "same-again", ehlo="c.test", source="127.0.0.5")  # the same identity: nothing to send
    kept(d, up, 3)
    one_message(d, "elsewhere", ehlo="d.test", source="127.0.0.6")
    assert up.wait_for(lambda: len(up.messages) == 4)
    assert len(up.connections) == 1
    assert xclients(up) == ["XCLIENT ADDR=127.0.0.5 HELO=c.test LOGIN=alice",
                            "XCLIENT ADDR=127.0.0.5 HELO=c.test LOGIN=[UNAVAILABLE]",
                            "XCLIENT ADDR=127.0.0.6 HELO=d.test LOGIN=[UNAVAILABLE]"]
    # Each message went with the identity of the client that sent it.
    order = [c.split(" ")[0] if c.startswith("MAIL") else c.split(" ", 1)[1] for c in up.commands
             if c.startswith(("XCLIENT", "MAIL"))]
    assert order == ["ADDR=127.0.0.5 HELO=c.test LOGIN=alice", "MAIL",
                     "ADDR=127.0.0.5 HELO=c.test LOGIN=[UNAVAILABLE]", "MAIL",
                     "MAIL",
                     "ADDR=127.0.0.6 HELO=d.test LOGIN=[UNAVAILABLE]", "MAIL"], order


# --------------------------------------------------------------------------
# A real Postfix: one kept STARTTLS connection serves two clients, and
# XCLIENT makes Postfix see each of them (it takes XCLIENT again on a connection).

from test_postfix_upstream import deliver, postfix_tls  # noqa: E402,F401  (postfix_tls is a fixture)


def test_postfix_sees_each_client_on_one_kept_tls_connection(sec_daemon, postfix_tls):  # noqa: F811
    d = sec_daemon(postfix_tls.url, upstream={"client_info": "xclient", "starttls": "required"})
    before = postfix_tls.log_text().count("connect from localhost[127.0.0.1]")
    first = deliver(d, "127.0.0.5", helo="first.test")
    time.sleep(0.3)  # the first session has handed its connection back
    second = deliver(d, "127.0.0.6", helo="second.test")
    postfix_tls.wait_log(rf"postfix/smtpd\[\d+\]: {first}: client=unknown\[127\.0\.0\.5\]$")
    postfix_tls.wait_log(rf"postfix/smtpd\[\d+\]: {second}: client=unknown\[127\.0\.0\.6\]$")
    log = postfix_tls.log_text()
    assert log.count("connect from localhost[127.0.0.1]") - before == 1, log[-3000:]
    assert re.search(r"Anonymous TLS connection established from localhost\[127\.0\.0\.1\]|"
                     r"TLS connection established from localhost\[127\.0\.0\.1\]", log), log[-3000:]
