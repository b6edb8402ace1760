"""A policy hook that fails: raises, calls sys.exit, or hangs (plain and
async) past policy.timeout. The client gets 451 4.3.0 (421 4.3.0 at connect)
or, with on_error = "accept", the stage proceeds; the traceback is logged
with the session id; the session and every other session carry on."""

from __future__ import annotations

import re
import threading
import time

import pytest

POLICY_FAILURE = "Temporary policy failure, try again later"

RAISES = """
    import portcullis as pc

    def on_connect(conn):
        if conn.data.setdefault("n", 0) == 0 and pc.config["probe"]["connect"]:
            raise RuntimeError("boom at connect")

    def on_helo(conn, hostname):
        if hostname == "boom.test":
            raise RuntimeError("boom at helo")

    async def on_mail(tx, sender):
        if sender.local == "boom":
            raise KeyError("boom at mail")

    def on_rcpt(tx, rcpt):
        if rcpt.local == "boom":
            {}["boom at rcpt"]

    def on_data(tx, message):
        if message.get("Subject") == "boom":
            raise ValueError("boom at data")

    def on_disconnect(conn):
        raise RuntimeError("boom at disconnect")
"""

# The line of each stage's failing statement in RAISES (dedented, after the first blank line).
RAISE_LINES = {"connect": 6, "helo": 10, "mail": 14, "rcpt": 18, "data": 22}
EXCEPTIONS = {"connect": "RuntimeError: boom at connect", "helo": "RuntimeError: boom at helo",
              "mail": "KeyError: 'boom at mail'", "rcpt": "KeyError: 'boom at rcpt'", "data": "ValueError: boom at data"}


def exact(r, code: int, status: str, text: str) -> None:
    assert (r.code, r.status, r.text) == (code, status, text), f"got {r}"


def failing_stage_reply(c, stage: str):
    """Drives a session to the failing `stage` and returns that stage's reply."""
    if stage == "connect":
        return c.reply()
    c.expect(220)
    c.cmd("EHLO boom.test" if stage == "helo" else "EHLO client.test")
    r = c.reply()
    if stage == "helo":
        return r
    c.cmd("MAIL FROM:<boom@example.test>" if stage == "mail" else "MAIL FROM:<ann@example.test>")
    r = c.reply()
    if stage == "mail":
        return r
    c.cmd("RCPT TO:<boom@example.test>" if stage == "rcpt" else "RCPT TO:<bob@example.test>")
    r = c.reply()
    if stage == "rcpt":
        return r
    c.exchange("DATA", 354)
    c.send(b"Subject: boom\r\n\r\nbody\r\n.\r\n")
    return c.reply()


@pytest.mark.parametrize("stage", ["connect", "helo", "mail", "rcpt", "data"])
def test_a_hook_that_raises_gives_451_and_logs_the_traceback(policy_daemon, aiosmtpd_upstream, stage):
    d = policy_daemon(aiosmtpd_upstream.url, RAISES, probe={"connect": stage == "connect"})
    path = re.escape(str(d.policy_files[0]))
    with d.client() as c:
        sid = d.session_id(c.local_port)
        r = failing_stage_reply(c, stage)
        if stage == "connect":
            assert r.raw == f"421 4.3.0 {POLICY_FAILURE}\r\n".encode()
            assert c.closed()
        else:
            assert r.raw == f"451 4.3.0 {POLICY_FAILURE}\r\n".encode()
            # The session lives on: the client may retry, and other input is fine.
            if stage == "helo":
                c.exchange("EHLO client.test", 250)
            c.exchange("RSET", 250, "2.0.0")
            r = c.transaction("ann@example.test", ["bob@example.test"], b"Subject: fine\r\n\r\nbody")
            exact(r, 250, "2.0.0", "Ok: queued as AIO00001 (aiosmtpd)")
            c.exchange("QUIT", 221)
    d.wait_log(
        rf"^\S+ error {sid}: on_{stage} in {path} raised an exception:\n"
        rf"\S+ error {sid}: Traceback \(most recent call last\):\n"
        rf"\S+ error {sid}:   File \"{path}\", line {RAISE_LINES[stage]}, in on_{stage}\n"
        rf"(?:\S+ error {sid}:     .*\n)+"
        rf"\S+ error {sid}: {re.escape(EXCEPTIONS[stage])}\n"
    )
    d.wait_log(rf"^\S+ warning {sid}: policy error in on_{stage} \(451 4\.3\.0\)")
    # on_disconnect fails too: logged, nothing else.
    d.wait_log(rf"^\S+ error {sid}: on_disconnect in {path} raised an exception:\n(?:.*\n)*?\S+ error {sid}: RuntimeError: boom at disconnect")
    assert d.proc.poll() is None


def test_a_hook_error_quoting_an_undecodable_header_octet_is_told_as_it_is(policy_daemon, aiosmtpd_upstream):
    """A header value carries an undecodable octet as a lone surrogate: quoted in a log line or in
    the hook's error, the text could not cross to C++. The log line was lost (Python's "Logging
    error" dump on stderr instead), and the hook's ValueError became an internal engine error."""
    d = policy_daemon(aiosmtpd_upstream.url, """
        import portcullis as pc
        def on_data(tx, message):
            subject = message.get("Subject")
            pc.log.info("subject %s", subject)
            raise ValueError(f"bad {subject}")
    """)
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        r = c.transaction("ann@example.test", ["bob@example.test"], b"Subject: caf\xe9 boom\r\n\r\nbody")
        assert (r.code, r.status) == (451, "4.3.0")
    d.wait_log(rf"^\S+ info {sid}: subject caf\\xe9 boom$")
    d.wait_log(rf"^\S+ error {sid}: ValueError: bad caf\\(xe9|udce9) boom$")
    text = d.log_text()
    assert "Logging error" not in text and "internal error" not in text, text


@pytest.mark.parametrize("stage", ["connect", "helo", "mail", "rcpt", "data"])
def test_on_error_accept_proceeds(policy_daemon, aiosmtpd_upstream, stage):
    d = policy_daemon(aiosmtpd_upstream.url, RAISES, probe={"connect": stage == "connect"},
                      policy={"on_error": "accept"})
    with d.client() as c:
        sid = d.session_id(c.local_port)
        r = failing_stage_reply(c, stage)
        expected = {
            "connect": b"220 mx.test ESMTP Portcullis\r\n",
            "mail": b"250 2.1.0 Sender ok (aiosmtpd)\r\n",
            "rcpt": b"250 2.1.5 Recipient ok (aiosmtpd)\r\n",
            "data": b"250 2.0.0 Ok: queued as AIO00001 (aiosmtpd)\r\n",
        }
        if stage == "helo":
            assert r.raw.startswith(b"250-mx.test Hello boom.test [127.0.0.1]\r\n")
        else:
            assert r.raw == expected[stage]
    d.wait_log(rf"^\S+ error {sid}: on_{stage} in \S+ raised an exception:\n(?:.*\n)*?\S+ error {sid}: {re.escape(EXCEPTIONS[stage])}$")
    d.wait_log(rf"^\S+ warning {sid}: policy error in on_{stage} \(accepting, per policy\.on_error\)")
    if stage == "data":
        [env] = aiosmtpd_upstream.wait_messages(1)
        assert env["mail_from"] == "ann@example.test"


def test_on_error_accept_still_asks_the_next_policy(policy_daemon, aiosmtpd_upstream):
    """A failing hook with on_error = "accept" is skipped as if it had returned None: a policy
    after it (a blocklist, say) still decides. The daemon used to end the stage at the failure,
    so a broken first policy let through what the second refused. What the stage rewrote is
    dropped (the failed hook may have left the transaction half-changed)."""
    broken = """
        def on_rcpt(tx, rcpt):
            tx.recipients.append("added@example.test")
            raise RuntimeError("broken at rcpt")

        def on_data(tx, message):
            message.add_header("X-Broken", "yes")
            raise RuntimeError("broken at data")
    """
    blocklist = """
        import portcullis as pc

        def on_rcpt(tx, rcpt):
            if rcpt.local == "blocked":
                return pc.reject("blocked by the second policy", code=550, status="5.7.1")

        def on_data(tx, message):
            if message.get("Subject") == "blocked":
                return pc.reject("message blocked by the second policy", code=550, status="5.7.1")
    """
    d = policy_daemon(aiosmtpd_upstream.url, broken, blocklist, policy={"on_error": "accept"})
    with d.client() as c:
        c.expect(220)
        c.exchange("EHLO client.test", 250)
        c.exchange("MAIL FROM:<ann@example.test>", 250)
        c.exchange("RCPT TO:<blocked@example.test>", 550, "5.7.1", "blocked by the second policy")
        c.exchange("RCPT TO:<bob@example.test>", 250)
        c.exchange("DATA", 354)
        c.send(b"Subject: blocked\r\n\r\nbody\r\n.\r\n")
        c.expect(550, "5.7.1", "message blocked by the second policy")
        c.exchange("MAIL FROM:<ann@example.test>", 250)
        c.exchange("RCPT TO:<bob@example.test>", 250)
        c.exchange("DATA", 354)
        c.send(b"Subject: fine\r\n\r\nbody\r\n.\r\n")
        c.expect(250)
        sid = d.session_id(c.local_port)
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["bob@example.test"] and b"X-Broken" not in env["content"], env
    d.wait_log(rf"^\S+ warning {sid}: policy error in on_rcpt \(accepting, per policy\.on_error\): "
               rf".*the next hooks are asked")


def test_sys_exit_in_a_hook_does_not_stop_the_daemon(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, """
        import sys

        def on_rcpt(tx, rcpt):
            if rcpt.local == "exit":
                sys.exit(3)

        async def on_data(tx, message):
            raise SystemExit("bye")
    """)
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("MAIL FROM:<ann@example.test>", 250, "2.1.0")
        exact(c.exchange("RCPT TO:<exit@example.test>", 451), 451, "4.3.0", POLICY_FAILURE)
        c.exchange("RCPT TO:<bob@example.test>", 250, "2.1.5")
        c.exchange("DATA", 354)
        c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        exact(c.reply(), 451, "4.3.0", POLICY_FAILURE)
        c.exchange("NOOP", 250, "2.0.0")
    d.wait_log(rf"{sid}: on_rcpt in \S+ raised an exception:\n(?:.*\n)*?.*the hook called sys\.exit\(3\)")
    d.wait_log(rf"{sid}: on_data in \S+ raised an exception:\n(?:.*\n)*?.*the hook called sys\.exit\('bye'\)")
    time.sleep(0.1)
    assert d.proc.poll() is None
    with d.connect() as c:
        exact(c.transaction("ann@example.test", ["bob@example.test"], b"Subject: x\r\n\r\nbody"), 451, "4.3.0",
              POLICY_FAILURE)


# -- hangs -------------------------------------------------------------------------

HANGS = """
    import asyncio
    import time

    import portcullis as pc

    def on_mail(tx, sender):
        if sender.local == "hang":
            pc.log.info("on_mail hangs")
            time.sleep(2.5)  # past the timeout; then its thread is free again
            pc.log.info("on_mail woke up")
            return pc.reject("Too late to matter")

    async def on_data(tx, message):
        if message.get("Subject") == "hang":
            pc.log.info("on_data hangs")
            try:
                await asyncio.sleep(100)
            except asyncio.CancelledError:
                pc.log.info("on_data was cancelled")
                raise
"""


def deliver_meanwhile(d, n: int) -> float:
    """A second client delivers a message while the first one's hook hangs; returns how long it took."""
    t0 = time.monotonic()
    with d.connect("other.test") as c:
        r = c.transaction("other@example.test", [f"meanwhile{n}@example.test"], b"Subject: meanwhile\r\n\r\nx")
        exact(r, 250, "2.0.0", f"Ok: queued as AIO{n:05d} (aiosmtpd)")
        c.exchange("QUIT", 221)
    return time.monotonic() - t0


# A plain hook runs on the I/O thread that took its job: with one I/O thread,
# the spare that stands in for it while it hangs serves the other sessions.
@pytest.mark.parametrize("kind,io_threads", [("sync", 1), ("sync", 2), ("async", 2)])
def test_a_hanging_hook_gives_451_within_the_timeout_while_others_flow(policy_daemon, aiosmtpd_upstream, kind,
                                                                       io_threads):
    d = policy_daemon(aiosmtpd_upstream.url, HANGS, policy={"timeout": 1}, server={"threads": io_threads})
    path = re.escape(str(d.policy_files[0]))
    stage = "mail" if kind == "sync" else "data"
    outcome: dict = {}

    c = d.connect()
    sid = d.session_id(c.local_port)
    if stage == "data":
        c.exchange("MAIL FROM:<ann@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<bob@example.test>", 250, "2.1.5")
        c.exchange("DATA", 354)

    def hang():
        t0 = time.monotonic()
        if stage == "mail":
            c.cmd("MAIL FROM:<hang@example.test>")
        else:
            c.send(b"Subject: hang\r\n\r\nbody\r\n.\r\n")
        outcome["reply"] = c.reply(timeout=10)
        outcome["elapsed"] = time.monotonic() - t0
        outcome["done_at"] = time.monotonic()

    t = threading.Thread(target=hang)
    t.start()
    d.wait_log(rf"{sid}: on_{stage} hangs$")
    # Other sessions keep flowing while the hook hangs.
    meanwhile = [deliver_meanwhile(d, n) for n in (1, 2)]
    delivered_at = time.monotonic()
    t.join(10)
    assert "reply" in outcome, "no reply to the hanging session"
    assert delivered_at < outcome["done_at"], "the other sessions waited for the hanging hook"
    assert max(meanwhile) < 0.5, meanwhile
    assert outcome["reply"].raw == f"451 4.3.0 {POLICY_FAILURE}\r\n".encode()
    assert 0.9 < outcome["elapsed"] < 1.8, outcome["elapsed"]
    fate = "abandoned \\(its thread runs on\\)" if kind == "sync" else "cancelled"
    statement = "time\\.sleep\\(2\\.5\\).*" if kind == "sync" else "await asyncio\\.sleep\\(100\\)"
    d.wait_log(rf"^\S+ error {sid}: on_{stage} in {path} ran past policy\.timeout \(1 s\) and was {fate}; "
               # (one record a line: another thread's, even the session's own refusal, may come between)
               rf"it was at:\n(?:.*\n)*?\S+ error {sid}:   File \"{path}\", line \d+, in on_{stage}\n"
               rf"(?:.*\n)*?\S+ error {sid}:     {statement}\n")
    if kind == "async":
        d.wait_log(rf"{sid}: on_data was cancelled$")
    # The session itself carries on.
    c.exchange("RSET", 250, "2.0.0")
    r = c.transaction("ann@example.test", ["bob@example.test"], b"Subject: after\r\n\r\nbody")
    exact(r, 250, "2.0.0", "Ok: queued as AIO00003 (aiosmtpd)")
    rcpts = [["meanwhile1@example.test"], ["meanwhile2@example.test"], ["bob@example.test"]]
    if kind == "sync":
        # The abandoned hook returns in the end: its verdict is dropped, its thread serves again.
        d.wait_log(rf"{sid}: on_mail woke up$")
        r = c.transaction("ann@example.test", ["late@example.test"], b"Subject: late\r\n\r\nbody")
        exact(r, 250, "2.0.0", "Ok: queued as AIO00004 (aiosmtpd)")
        rcpts.append(["late@example.test"])
    c.exchange("QUIT", 221)
    c.close()
    envs = aiosmtpd_upstream.wait_messages(len(rcpts))
    assert [e["rcpt_tos"] for e in envs] == rcpts


def test_an_async_on_connect_that_hangs_gives_421(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, """
        import asyncio

        async def on_connect(conn):
            await asyncio.sleep(100)
    """, policy={"timeout": 1})
    t0 = time.monotonic()
    with d.client() as c:
        assert c.reply(timeout=5).raw == f"421 4.3.0 {POLICY_FAILURE}\r\n".encode()
        assert 0.9 < time.monotonic() - t0 < 1.8
        assert c.closed()


def test_a_slow_on_disconnect_does_not_hold_the_client(policy_daemon, aiosmtpd_upstream):
    """on_disconnect is a notification: the client's connection is closed right
    after 221, not held open while the hook runs (fixed in 0c58ac1)."""
    d = policy_daemon(aiosmtpd_upstream.url, """
        import time
        import portcullis as pc

        def on_disconnect(conn):
            time.sleep(1.5)
            pc.log.info("on_disconnect done")
    """, policy={"timeout": 5})
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("QUIT", 221, "2.0.0")
        t0 = time.monotonic()
        closed = c.closed(timeout=3)
        assert closed and time.monotonic() - t0 < 0.5, f"closed after {time.monotonic() - t0:.2f} s"
    d.wait_log(rf"{sid}: on_disconnect done$")
