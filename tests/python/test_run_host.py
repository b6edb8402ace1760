"""run_host: the exchange with the daemon's policy thread, with a stand-in for the embedded module."""

import asyncio
import os
import queue
import threading
import time

import pytest
from enginehelp import job, tx

from portcullis import _engine


class FakeCore:
    """The embedded `_portcullis_core`'s job plumbing, as python_engine.cpp provides it."""

    def __init__(self):
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.lock = threading.Lock()
        self.jobs = []
        self.completed = queue.Queue()
        self.stop = False
        self.next_id = 1
        self.cancelled = []

    def submit(self, j):
        with self.lock:
            job_id = self.next_id
            self.next_id += 1
            self.jobs.append((job_id, j))
        os.eventfd_write(self.fd, 1)
        return job_id

    def take_all(self):
        with self.lock:
            jobs, self.jobs = self.jobs, []
            ids, self.cancelled = self.cancelled, []
            return [], jobs, ids, [], self.stop

    def abandon(self, job_id):
        """As python_engine::abandon for a job Python already took."""
        with self.lock:
            self.cancelled.append(job_id)
        os.eventfd_write(self.fd, 1)

    def complete(self, job_id, result):
        self.completed.put((job_id, _engine.result_as_dict(result)))

    def request_stop(self):
        self.stop = True
        os.eventfd_write(self.fd, 1)

    def results(self, n, timeout=5):
        return dict(self.completed.get(timeout=timeout) for _ in range(n))


@pytest.fixture
def daemon(monkeypatch, policy_file):
    core = FakeCore()
    errors = []

    def start(files, timeout=2.0):
        def thread_main():
            try:
                _engine.run_host(files, None, timeout, "tempfail", 4, core.fd, core=core)
            except BaseException as e:  # reported to the test
                errors.append(e)

        t = threading.Thread(target=thread_main, daemon=True)
        t.start()
        return t

    yield core, start, errors
    core.request_stop()
    os.close(core.fd)


def test_jobs_in_results_out(daemon, policy_file):
    core, start, errors = daemon
    f = policy_file("""
        import asyncio
        import portcullis as pc
        async def on_mail(tx, sender):
            await asyncio.sleep(0.2)
            return pc.reject(f"no {sender}")
    """)
    thread = start([])
    reload_id = core.submit({"stage": "reload", "files": [f], "config_path": None})
    loaded = core.results(1)[reload_id]
    assert loaded == {**_engine.result_as_dict(None), "generation": loaded["generation"]} and loaded["generation"] > 0
    ids = [core.submit(job("mail", sid=f"S{i}", tx_snapshot=tx(f"S{i}.1", sender=f"u{i}@example.test")))
           for i in range(10)]
    start_time = time.monotonic()
    results = core.results(10)
    assert time.monotonic() - start_time < 1.5  # overlapping, not 10 x 0.2 s
    for i, job_id in enumerate(ids):
        assert results[job_id]["verdict"]["text"] == f"no u{i}@example.test"
    core.request_stop()
    thread.join(5)
    assert not thread.is_alive() and errors == []


def test_broken_reload_is_reported_and_stop_cancels_running_jobs(daemon, policy_file):
    core, start, errors = daemon
    bad = policy_file("def on_connect(conn):\n    return (\n")
    slow = policy_file("import asyncio\nasync def on_connect(conn):\n    await asyncio.sleep(30)\n")
    thread = start([], timeout=60)
    rid = core.submit({"stage": "reload", "files": [bad], "config_path": None})
    assert "SyntaxError" in core.results(1)[rid]["error"]
    rid = core.submit({"stage": "reload", "files": [slow], "config_path": None})
    assert core.results(1)[rid]["error"] is None
    jid = core.submit(job("connect"))
    time.sleep(0.1)
    core.request_stop()
    thread.join(5)
    assert not thread.is_alive()
    assert core.results(1) == {jid: _engine.result_as_dict(_engine.error_result("the policy engine is stopping"))}


def test_every_job_is_completed_even_if_the_result_cannot_be_handed_over(daemon):
    core, start, errors = daemon
    calls = []
    real_complete = core.complete

    def picky_complete(job_id, result):
        calls.append(job_id)
        if len(calls) == 1:
            raise TypeError("cannot convert")
        real_complete(job_id, result)

    core.complete = picky_complete
    thread = start([])
    jid = core.submit(job("connect"))
    result = core.results(1)[jid]
    assert "could not be handed over" in result["error"]
    core.request_stop()
    thread.join(5)
    assert not thread.is_alive()


def test_startup_failure_propagates(monkeypatch, tmp_path):
    monkeypatch.setattr(_engine, "_core", FakeCore())
    with pytest.raises(_engine.PolicyLoadError):
        _engine.run_host([str(tmp_path / "missing.py")], None, 1.0, "tempfail", 1, 0)


def test_an_abandoned_job_is_cancelled_and_still_completed(daemon, policy_file):
    core, start, errors = daemon
    f = policy_file("""
        import asyncio
        import portcullis as pc
        async def on_mail(tx, sender):
            if sender.local == "slow":
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    pc.log.info("cancelled")
                    raise
            return pc.reject("fast")
    """)
    thread = start([], timeout=60)
    rid = core.submit({"stage": "reload", "files": [f], "config_path": None})
    assert core.results(1)[rid]["error"] is None
    slow = core.submit(job("mail", sid="S1", tx_snapshot=tx("S1.1", sender="slow@example.test")))
    time.sleep(0.2)  # taken and running
    core.abandon(slow)
    assert core.results(1, timeout=2)[slow]["error"] is not None  # answered at once (the daemon drops it)
    fast = core.submit(job("mail", sid="S2", tx_snapshot=tx("S2.1", sender="fast@example.test")))
    assert core.results(1)[fast]["verdict"]["text"] == "fast"
    core.request_stop()
    thread.join(5)
    assert not thread.is_alive() and errors == []


def test_jobs_cancelled_before_their_task_ran_are_still_completed_once(daemon, policy_file):
    # A job abandoned, or caught by the stop, in the very wake-up that brings
    # it: its task is cancelled before its first step and never runs its code;
    # it is answered all the same, exactly once, and the loop still stops.
    core, start, errors = daemon
    thread = start([], timeout=60)
    with core.lock:  # both arrive with one wake-up
        core.jobs.append((101, job("connect", sid="S1")))
        core.cancelled.append(101)
    os.eventfd_write(core.fd, 1)
    assert core.results(1)[101]["error"] == "the job was abandoned"
    with core.lock:
        core.jobs += [(102, job("connect", sid="S2")), (103, job("connect", sid="S3"))]
        core.stop = True
    os.eventfd_write(core.fd, 1)
    stopping = _engine.result_as_dict(_engine.error_result("the policy engine is stopping"))
    assert core.results(2) == {102: stopping, 103: stopping}
    thread.join(5)
    assert not thread.is_alive() and errors == []
    assert core.completed.empty()  # nothing answered twice


def test_a_job_whose_hooks_never_suspend_is_answered_in_the_wake_up_that_brought_it(policy_file):
    # Its task's first step runs in the wake-up (no second turn of the loop
    # per job); a job whose hook suspends is answered on a later turn.
    quick = policy_file("async def on_connect(conn):\n    return None\n")
    waits = policy_file("import asyncio\nasync def on_helo(conn, name):\n    await asyncio.sleep(0)\n")
    core, loop = FakeCore(), asyncio.new_event_loop()
    runner = _engine._JobRunner(_engine.EngineHost([quick, waits]), loop, core, core.fd)
    core.jobs += [(1, job("connect", sid="S1")), (2, job("helo", sid="S2", hostname="client.test"))]
    answered_in_the_wake_up = []

    def wake_up():
        runner.drain()
        answered_in_the_wake_up.extend(job_id for job_id, _ in list(core.completed.queue))

    loop.call_soon(wake_up)
    try:
        loop.run_until_complete(asyncio.sleep(0.05))
    finally:
        loop.close()
        os.close(core.fd)
    assert answered_in_the_wake_up == [1]
    assert sorted(core.results(2)) == [1, 2] and runner.tasks == {} and runner.by_id == {}


def test_run_host_takes_its_core_as_an_argument(policy_file):
    core = FakeCore()
    thread = threading.Thread(target=_engine.run_host, args=([], None, 2.0, "tempfail", 2, core.fd),
                              kwargs={"core": core}, daemon=True)
    thread.start()
    jid = core.submit(job("connect"))
    assert core.results(1)[jid] == _engine.result_as_dict(None)
    core.request_stop()
    thread.join(5)
    assert not thread.is_alive()
    os.close(core.fd)
