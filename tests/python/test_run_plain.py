"""run_plain: the daemon's policy workers run a stage's hooks in place, on their own thread."""

import asyncio
import threading
import time

from enginehelp import job, tx

from portcullis._engine import EngineHost, result_as_dict


def plain(host, j, forgotten=None):
    return result_as_dict(host.run_plain(j, forgotten))


def test_plain_hooks_in_place_give_what_dispatch_gives(policy_file):
    f = policy_file("""
        import portcullis as pc
        def on_mail(tx, sender):
            if str(sender).startswith("spam"):
                return pc.reject("no spam")
        def on_rcpt(tx, rcpt):
            if rcpt.local == "old":
                return pc.redirect("new@example.test")
        def on_data(tx, message):
            message.add_header("X-Seen", "yes")
    """)
    host = EngineHost([f])
    assert plain(host, job("mail", tx_snapshot=tx()))["verdict"] is None
    r = plain(host, job("mail", tx_snapshot=tx(sender="spam@example.test")))
    assert (r["verdict"]["kind"], r["verdict"]["code"], r["verdict"]["text"]) == ("reject", 550, "no spam")
    r = plain(host, job("rcpt", tx_snapshot=tx(), rcpt="old@example.test", rcpt_params={}))
    assert r["verdict"]["addresses"] == ["new@example.test"]
    r = plain(host, job("data", tx_snapshot=tx(recipients=["b@example.test"]), message=b"Subject: x\r\n\r\nbody\r\n"))
    assert r["message"] is None and r["message_prefix"] == b"X-Seen: yes\r\n"


def test_a_rewrite_by_a_hook_that_then_fails_is_not_kept_for_the_next_job(policy_file):
    f = policy_file("""
        def on_mail(tx, sender):
            tx.sender = "rewritten@example.test"
            raise RuntimeError("oops")
        def on_rcpt(tx, rcpt):
            pass
    """)
    host = EngineHost([f])
    t = tx()
    assert "oops" in plain(host, job("mail", tx_snapshot=t))["error"]
    # The daemon did not take the rewrite: the next job sees its envelope again.
    assert plain(host, job("rcpt", tx_snapshot=t, rcpt="b@example.test", rcpt_params={}))["sender"] is None
    assert host._sessions["S1"].tx.sender.local == "a"


def test_the_message_is_read_only_when_a_hook_looks_at_it(policy_file):
    f = policy_file("def on_data(tx, message):\n    pass\n")
    host = EngineHost([f])
    reads = []

    class Job:  # the daemon's Job, counting reads of the message
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            if name == "message":
                reads.append(name)
            return getattr(self.inner, name)

    j = Job(job("data", tx_snapshot=tx(recipients=["b@example.test"]), message=b"Subject: x\r\n\r\nbody\r\n"))
    assert plain(host, j)["error"] is None
    assert reads == []


def test_forgotten_sessions_are_dropped_and_their_generation_can_go(policy_file):
    f = policy_file("def on_helo(conn, hostname):\n    conn.data['seen'] = hostname\n")
    host = EngineHost([f])
    plain(host, job("helo", sid="A", hostname="a"))
    plain(host, job("helo", sid="B", hostname="b"))
    assert host.session_count == 2
    plain(host, job("helo", sid="C", hostname="c"), ["A", "B", "unknown"])
    assert host.session_count == 1 and host.engine_of("C") is not None


def test_an_async_hook_met_by_a_worker_runs_on_the_event_loop(policy_file):
    f = policy_file("""
        import asyncio, threading
        import portcullis as pc
        def on_helo(conn, hostname):
            pass
        async def on_helo(conn, hostname):
            await asyncio.sleep(0)
            return pc.accept(threading.current_thread().name)
    """)
    host = EngineHost([f])
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="the-loop", daemon=True)
    thread.start()
    host.loop = loop
    try:
        r = plain(host, job("helo", hostname="h"))
        assert r["verdict"]["text"] == "the-loop"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_a_stuck_plain_hook_is_reported_with_where_it_stands(policy_file, core_log):
    f = policy_file("""
        import time
        def on_mail(tx, sender):
            time.sleep(0.5)
    """)
    host = EngineHost([f], timeout=0.1)
    out = {}
    worker = threading.Thread(target=lambda: out.update(r=plain(host, job("mail", sid="S9", tx_snapshot=tx()))))
    worker.start()
    time.sleep(0.2)
    host.report_stuck(worker.ident, "S9")
    worker.join(5)
    lines = [msg for _, sid, msg in core_log if sid == "S9"]
    assert any("ran past policy.timeout (0.1 s) and was abandoned (its thread runs on)" in m for m in lines)
    assert any("time.sleep(0.5)" in m for m in lines)
    # Its late answer says so (the daemon dropped the job already).
    assert "came too late" in out["r"]["error"]
