"""Hooks of different sessions overlap (issue 3, "Concurrency"): eight
sessions whose async hooks each await one second, and eight whose plain
hooks each sleep one second (the thread pool), all finish in well under two
seconds, and each message arrives with its own envelope."""

from __future__ import annotations

import threading
import time

import pytest

SESSIONS = 8

SLOW = {
    "async-rcpt": """
        import asyncio
        import portcullis as pc

        async def on_rcpt(tx, rcpt):
            tx.data["slept"] = True
            await asyncio.sleep(1)
            return pc.accept(f"waited for {rcpt.local}")
    """,
    "async-mail": """
        import asyncio
        import portcullis as pc

        async def on_mail(tx, sender):
            await asyncio.sleep(1)
            return pc.accept(f"waited for {sender.local}")
    """,
    "sync-rcpt": """
        import time
        import portcullis as pc

        def on_rcpt(tx, rcpt):
            time.sleep(1)
            return pc.accept(f"waited for {rcpt.local}")
    """,
    "sync-mail": """
        import time
        import portcullis as pc

        def on_mail(tx, sender):
            time.sleep(1)
            return pc.accept(f"waited for {sender.local}")
    """,
}


@pytest.mark.parametrize("kind", list(SLOW))
def test_eight_sessions_with_one_second_hooks_overlap(policy_daemon, aiosmtpd_upstream, kind):
    d = policy_daemon(aiosmtpd_upstream.url, SLOW[kind])
    stage = kind.split("-")[1]
    clients = [d.connect(f"c{i}.test") for i in range(SESSIONS)]  # connected before the clock starts
    errors: list[str] = []
    hook_replies: dict[int, tuple] = {}
    barrier = threading.Barrier(SESSIONS + 1)

    def session(i: int) -> None:
        c = clients[i]
        try:
            barrier.wait()
            c.cmd(f"MAIL FROM:<s{i}@example.test>")
            r = c.expect(250, "2.1.0")
            c.cmd(f"RCPT TO:<r{i}@example.test>")
            r2 = c.expect(250, "2.1.5")
            hook_replies[i] = (r if stage == "mail" else r2).raw
            c.exchange("DATA", 354)
            c.send(f"Subject: session {i}\r\n\r\nbody {i}\r\n.\r\n")
            c.expect(250, "2.0.0")
            c.exchange("QUIT", 221)
        except Exception as e:  # reported below
            errors.append(f"session {i}: {e!r}")
        finally:
            c.close()

    threads = [threading.Thread(target=session, args=(i,)) for i in range(SESSIONS)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join(10)
    elapsed = time.monotonic() - t0
    assert not errors, errors
    assert 1.0 <= elapsed < 1.8, f"{SESSIONS} sessions with 1 s {kind} hooks took {elapsed:.2f} s"
    code_status = "250 2.1.0" if stage == "mail" else "250 2.1.5"
    who = "s" if stage == "mail" else "r"
    assert hook_replies == {i: f"{code_status} waited for {who}{i}\r\n".encode() for i in range(SESSIONS)}
    envs = aiosmtpd_upstream.wait_messages(SESSIONS)
    assert sorted((e["mail_from"], tuple(e["rcpt_tos"])) for e in envs) == sorted(
        (f"s{i}@example.test", (f"r{i}@example.test",)) for i in range(SESSIONS))
    for e in envs:
        i = int(e["mail_from"][1:].split("@")[0])
        assert e["content"].endswith(f"Subject: session {i}\r\n\r\nbody {i}\r\n".encode())


# -- where each kind of stage runs ------------------------------------------------

THREAD_NAME = """
    import threading

    import portcullis as pc

    def thread_name():
        with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
            return f.read().strip()
"""

PLAIN = THREAD_NAME + """
    def on_helo(conn, hostname):          # every hook plain: on the I/O thread itself
        pc.log.info("helo ran on %s", thread_name())

    def on_mail(tx, sender):              # with the async one below: a policy worker
        pc.log.info("mail ran on %s", thread_name())
"""

ASYNC = THREAD_NAME + """
    import asyncio

    async def on_mail(tx, sender):
        pass

    async def on_rcpt(tx, rcpt):          # every hook async: the event loop's task, started on the I/O
        pc.log.info("rcpt ran on %s", thread_name())  # thread while the loop waits,
        await asyncio.sleep(0.01)
        pc.log.info("rcpt went on on %s", thread_name())  # and on the loop's thread once it waited
"""


def test_each_kind_of_stage_runs_where_it_costs_least(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, PLAIN, ASYNC, server={"threads": 1})
    with d.connect() as c:
        r = c.transaction("ann@example.test", ["bob@example.test"], b"Subject: x\r\n\r\nbody")
        assert r.code == 250, r
        c.exchange("QUIT", 221)
    d.wait_log(r"helo ran on pc-io$")
    d.wait_log(r"mail ran on pc-policy$")
    d.wait_log(r"rcpt ran on pc-io$")
    d.wait_log(r"rcpt went on on pc-loop$")


# -- async hooks of many sessions are tasks of the one loop -------------------------

LOOP_AWARE = """
    import asyncio

    import portcullis as pc

    LOCK = asyncio.Lock()  # bound to the loop at first use: every hook must be on that one
    calls = 0

    async def on_mail(tx, sender):
        global calls
        assert asyncio.current_task() is not None
        async with asyncio.timeout(5):    # needs the current task
            async with LOCK:
                calls += 1
                if calls % 2:
                    await asyncio.sleep(0.001)  # every other one suspends holding the lock: others queue on it
        if sender.local == "timer":
            # Scheduled by a hook that does not suspend: the loop's thread must
            # see it although nothing else wakes it.
            asyncio.get_running_loop().call_later(0.2, pc.log.info, "timer fired")
            asyncio.create_task(background())

    async def background():
        await asyncio.sleep(0.1)
        pc.log.info("background task done")
"""


def test_async_hooks_of_many_sessions_share_the_one_loop(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, LOOP_AWARE, server={"threads": 2})
    sessions, per_session = 12, 10
    errors: list[str] = []

    def session(i: int) -> None:
        try:
            with d.connect(f"c{i}.test") as c:
                for k in range(per_session):
                    r = c.transaction(f"s{i}.{k}@example.test", [f"r{i}@example.test"], b"Subject: x\r\n\r\nbody")
                    if r.code != 250:
                        errors.append(f"session {i}: {r}")
        except Exception as e:  # reported below
            errors.append(f"session {i}: {e!r}")

    threads = [threading.Thread(target=session, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    aiosmtpd_upstream.wait_messages(sessions * per_session)
    with d.connect() as c:
        assert c.transaction("timer@example.test", ["r@example.test"], b"Subject: x\r\n\r\nbody").code == 250
        d.wait_log(r"timer fired$", timeout=2)
        d.wait_log(r"background task done$", timeout=2)
    assert "Traceback" not in d.log_text()


# -- a plain hook that computes on the only I/O thread ------------------------------

COMPUTING = THREAD_NAME + """
    import time

    def on_helo(conn, hostname):
        if hostname == "busy.test":
            # On a CPU the whole time (state R, never blocked): the engine
            # waits a little longer before it calls this slow (a preempted
            # hook looks the same), but not a second.
            pc.log.info("computing on %s", thread_name())
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                pass
"""


def another_client_waits(d, busy, hook_started: str) -> float:
    """Seconds a second client waits for its greeting, EHLO and NOOP while ``busy``'s
    command is in a hook holding the only I/O thread (its log line ``hook_started``)."""
    d.wait_log(hook_started)
    t0 = time.monotonic()
    with d.connect("other.test") as other:  # greeted and EHLO answered by a spare thread
        other.exchange("NOOP", 250)
    elapsed = time.monotonic() - t0
    busy.expect(250)
    return elapsed


def test_a_hook_computing_on_the_only_io_thread_does_not_hold_up_other_sessions(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, COMPUTING, server={"threads": 1})
    with d.connect(ehlo=None) as busy:
        busy.cmd("EHLO busy.test")
        elapsed = another_client_waits(d, busy, r"computing on pc-io$")
    assert elapsed < 1.0, f"a second client waited {elapsed:.2f} s for a hook computing on the I/O thread"


# -- an async hook that blocks in the first step an I/O thread runs ------------------

BLOCKING_ASYNC = THREAD_NAME + """
    import time

    async def on_mail(tx, sender):
        if sender.local == "block":
            # Looks async, is not: its first step runs on the I/O thread (the
            # loop waits), and holds that thread for 1.5 s.
            pc.log.info("blocking on %s", thread_name())
            time.sleep(1.5)
"""


def test_an_async_hook_blocking_on_the_only_io_thread_does_not_hold_up_other_sessions(policy_daemon,
                                                                                       aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, BLOCKING_ASYNC, server={"threads": 1})
    with d.connect() as busy:
        busy.cmd("MAIL FROM:<block@example.test>")
        elapsed = another_client_waits(d, busy, r"blocking on pc-io$")
    assert elapsed < 1.0, f"a second client waited {elapsed:.2f} s for an async hook blocking the I/O thread"
    # The loop has its turn back: async jobs run again.
    with d.connect() as c:
        r = c.transaction("ann@example.test", ["bob@example.test"], b"Subject: x\r\n\r\nbody")
        assert r.code == 250, r


# -- what an I/O thread that stepped an async job leaves to the next hooks -------------

STEPPED_THEN_PLAIN = THREAD_NAME + """
    import asyncio

    async def numbers():
        try:
            for n in range(10):
                yield n
        finally:
            await asyncio.sleep(0)  # only a loop can close it: the loop's async generator hooks
            pc.log.info("numbers closed on %s", thread_name())

    async def on_mail(tx, sender):   # stepped on the only I/O thread
        pc.log.info("mail ran on %s", thread_name())
        async for n in numbers():
            break                     # left suspended: finalized by the loop

    async def answer():
        return 42

    def on_rcpt(tx, rcpt):           # plain, on that I/O thread next: no running loop there
        pc.log.info("rcpt ran on %s, asyncio.run gave %s", thread_name(), asyncio.run(answer()))
"""


def test_a_plain_hook_after_an_async_one_on_the_same_io_thread_has_no_running_loop(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, STEPPED_THEN_PLAIN, server={"threads": 1})
    with d.connect() as c:
        for _ in range(2):
            r = c.transaction("ann@example.test", ["bob@example.test"], b"Subject: x\r\n\r\nbody")
            assert r.code == 250, r
    d.wait_log(r"mail ran on pc-io$", count=2)
    d.wait_log(r"rcpt ran on pc-io, asyncio.run gave 42$", count=2)
    d.wait_log(r"numbers closed on pc-(io|loop)$", count=2)
    assert "Traceback" not in d.log_text()
    assert "ignored GeneratorExit" not in d.log_text()
