"""The C++ stage runner (bindings/stage_runner.cpp): run_plain's hot path.

It binds a job to its session and calls the hooks itself, and hands over to
Python where a hook gives a value, raises, runs late or changes the
transaction. These tests hold it to what the Python path does, hook by hook,
and check what it must leave behind: the scope reset, the running table
empty, no reference kept to a job's objects.
"""

import asyncio
import functools
import gc
import sys
import weakref

import pytest
from enginehelp import job, tx

import _portcullis_core as _core

from portcullis import _context
from portcullis import _engine
from portcullis._engine import EngineHost, _enter_loop, _leave_loop, _stepping, result_as_dict


def plain(host, j):
    return result_as_dict(host.run_plain(j))


def session(host, sid="S1"):
    return host._sessions[sid]


NOOP_EVERYWHERE = """
    def on_connect(conn):
        conn.data.setdefault("calls", []).append("connect")
    def on_helo(conn, hostname):
        conn.data["calls"].append("helo " + hostname)
    def on_mail(tx, sender):
        tx.data["mail"] = str(sender)
    def on_rcpt(tx, rcpt):
        tx.data.setdefault("rcpts", []).append(str(rcpt))
    def on_data(tx, message):
        tx.data["data"] = True
    def on_disconnect(conn):
        pass
"""


def test_a_whole_session_of_hooks_that_return_none(policy_file):
    host = EngineHost([policy_file(NOOP_EVERYWHERE)])
    assert host.run_plain(job("connect")) is None
    assert host.run_plain(job("helo", hostname="client.example")) is None
    # The daemon's view moved (HELO): the same Connection, brought up to date, its data kept.
    assert host.run_plain(job("mail", tx_snapshot=tx(), session={"helo": "client.example"})) is None
    s = session(host)
    conn, t = s.conn, s.tx
    assert conn.helo == "client.example" and conn.data["calls"] == ["connect", "helo client.example"]
    assert host.run_plain(job("rcpt", tx_snapshot=tx(), rcpt="b@example.test", rcpt_params={},
                              session={"helo": "client.example"})) is None
    # The recipient the daemon took: the same Transaction, its data kept.
    assert host.run_plain(job("data", tx_snapshot=tx(recipients=["b@example.test"]), message=b"S: x\r\n\r\nb\r\n",
                              session={"helo": "client.example"})) is None
    assert session(host).tx is t and t.data == {"mail": "a@example.test", "rcpts": ["b@example.test"], "data": True}
    assert [str(r) for r in t.recipients] == ["b@example.test"]
    # Nothing changed: the envelope is taken as the daemon's again (no rebuild at the next job).
    assert session(host).envelope is not None
    assert host.run_plain(job("disconnect", session={"helo": "client.example"})) is None
    assert host.session_count == 0 and not host._running


def test_a_new_transaction_id_makes_a_new_transaction(policy_file):
    host = EngineHost([policy_file(NOOP_EVERYWHERE)])
    host.run_plain(job("mail", tx_snapshot=tx("S1.1")))
    first = session(host).tx
    host.run_plain(job("mail", tx_snapshot=tx("S1.2", sender="c@example.test")))
    second = session(host).tx
    assert second is not first and second.id == "S1.2" and second.data == {"mail": "c@example.test"}


@pytest.mark.parametrize("change, expected", [
    ("tx.sender = 'new@example.test'", {"sender": "new@example.test"}),
    ("tx.recipients.append('more@example.test')", {"recipients": ["b@example.test", "more@example.test"]}),
    ("tx.recipients[0] = 'b@example.test'", {}),  # the same address, a new object: nothing to send
])
def test_a_hook_that_returns_none_but_changed_the_envelope(policy_file, change, expected):
    host = EngineHost([policy_file(f"def on_mail(tx, sender):\n    {change}\n")])
    r = plain(host, job("mail", tx_snapshot=tx(recipients=["b@example.test"])))
    assert {k: r[k] for k in ("sender", "recipients") if r[k] is not None} == expected
    assert r["error"] is None and r["verdict"] is None


def test_at_data_a_changed_message_and_the_signing_choices_go_back(policy_file):
    host = EngineHost([policy_file("""
        def on_data(tx, message):
            if tx.data.get("sign") is False:
                tx.dkim_sign = False
                tx.arc_seal = False
            else:
                message.add_header("X-Seen", "yes")
    """)])
    data = job("data", tx_snapshot=tx(recipients=["b@example.test"]), message=b"Subject: x\r\n\r\nbody\r\n")
    r = plain(host, data)
    assert r["message"] is None and r["message_prefix"] == b"X-Seen: yes\r\n"
    session(host).tx.data["sign"] = False
    raw = host.run_plain(data)
    assert raw.message is None and raw.dkim_sign == "" and raw.arc_seal is False


def test_fields_added_on_top_go_back_alone_and_the_message_is_not_read(policy_file):
    # The commonest edit: the daemon puts the fields above the message it holds; nothing of
    # the message is read into Python (the stage runner says its header section is whole).
    host = EngineHost([policy_file("""
        def on_data(tx, message):
            message.add_header("X-First", "1")
            message.add_header("X-Second", "2")
            tx.data["message"] = message
    """)])
    data = job("data", tx_snapshot=tx(recipients=["b@example.test"]), message=b"Subject: x\r\n\r\nbody\r\n")
    r = host.run_plain(data)
    assert r.message is None and r.message_prefix == b"X-Second: 2\r\nX-First: 1\r\n"
    assert session(host).tx.data["message"]._loader is not None  # never loaded


def edited(policy_file, raw: bytes, hook: str):
    """(host, Result) of an on_data hook running `hook` then adding X-Seen to `raw`, and the
    message a parse of `raw` with the same edits gives (what the upstream must get)."""
    import portcullis as pc

    host = EngineHost([policy_file(f"""
        def on_data(tx, message):
            {hook}
            message.add_header("X-Seen", "yes")
            tx.data["message"] = message
    """)])
    r = host.run_plain(job("data", tx_snapshot=tx(recipients=["b@example.test"]), message=raw))
    expected = pc.Message(raw)
    eval(hook, {"message": expected})
    expected.add_header("X-Seen", "yes")
    return host, r, expected.raw


@pytest.mark.parametrize("hook", ["message.get('Subject')", "message.remove_header('Subject')", "message.body"])
def test_a_change_of_fields_alone_sends_the_new_header_section_over_the_body_kept(policy_file, hook):
    # The daemon puts the new header section over the body it holds (message_keep_from: where
    # that body starts): the body goes neither into Python (unless a hook reads it) nor back.
    raw = b"Subject: x\r\n\r\nbody\r\n"
    host, r, want = edited(policy_file, raw, hook)
    assert r.message is None
    assert r.message_prefix + raw[r.message_keep_from:] == want
    assert r.message_keep_from == raw.index(b"\r\n\r\n") + 4
    loaded = session(host).tx.data["message"]._loader is None
    assert loaded == (hook == "message.body")  # the header section alone was read for the fields


@pytest.mark.parametrize("raw, hook, why", [
    (b"not a field\r\nbody\r\n", "None", "a header section that is not all fields"),
    (b"Subject: x\r\n\r\nbody\r\n", "setattr(message, 'body', b'new\\r\\n')", "a new body"),
])
def test_any_other_change_sends_the_whole_message(policy_file, raw, hook, why):
    _, r, want = edited(policy_file, raw, hook)
    assert r.message_prefix is None, why
    assert r.message == want and r.message.startswith(b"X-Seen: yes\r\n"), why


def test_the_message_is_not_read_for_a_hook_that_does_not_look(policy_file):
    host = EngineHost([policy_file("""
        def on_data(tx, message):
            tx.data["message"] = message
    """)])
    assert host.run_plain(job("data", tx_snapshot=tx(recipients=["b@example.test"]), message=b"S: x\r\n\r\nb\r\n")) is None
    message = session(host).tx.data["message"]
    assert message._loader is not None  # never loaded (reading _original would load it)
    assert message.get("S") == "x"  # and loaded when looked at


def test_the_hooks_after_a_verdict_are_not_called(policy_file):
    first = policy_file("def on_rcpt(tx, rcpt):\n    tx.data['first'] = True\n")
    second = policy_file("import portcullis as pc\ndef on_rcpt(tx, rcpt):\n    return pc.reject('no', code=550)\n")
    third = policy_file("def on_rcpt(tx, rcpt):\n    tx.data['third'] = True\n")
    host = EngineHost([first, second, third])
    r = plain(host, job("rcpt", tx_snapshot=tx(), rcpt="b@example.test", rcpt_params={}))
    assert r["verdict"]["kind"] == "reject" and session(host).tx.data == {"first": True}
    assert host.run_plain(job("rcpt", tx_snapshot=tx(), rcpt="b@example.test", rcpt_params={})).decided_by == second


def test_a_rewrite_by_the_first_hook_reaches_the_next_one(policy_file):
    first = policy_file("import portcullis as pc\ndef on_rcpt(tx, rcpt):\n    return pc.rewrite('new@example.test')\n")
    second = policy_file("def on_rcpt(tx, rcpt):\n    tx.data['saw'] = str(rcpt)\n")
    host = EngineHost([first, second])
    r = plain(host, job("rcpt", tx_snapshot=tx(), rcpt="old@example.test", rcpt_params={"NOTIFY": "NEVER"}))
    assert r["verdict"]["kind"] == "redirect" and r["verdict"]["addresses"] == ["new@example.test"]
    assert session(host).tx.data == {"saw": "new@example.test"}


def test_a_hook_that_raises_fails_the_stage_and_leaves_nothing_behind(policy_file, core_log):
    host = EngineHost([policy_file(NOOP_EVERYWHERE), policy_file("""
        def on_rcpt(tx, rcpt):
            raise KeyError("no such user")
        def on_disconnect(conn):
            raise RuntimeError("at disconnect")
    """)])
    r = plain(host, job("rcpt", tx_snapshot=tx(), rcpt="b@example.test", rcpt_params={}))
    assert "KeyError" in r["error"] and "no such user" in r["error"]
    assert any('raise KeyError("no such user")' in m for _, _, m in core_log)  # the hook's own frame
    assert not host._running and _context.scope.get()[0] == ""
    # A disconnect hook that raises still ends the session.
    assert host.run_plain(job("disconnect")) is None and host.session_count == 0


def test_system_exit_in_a_hook_is_an_error_not_an_exit(policy_file):
    host = EngineHost([policy_file("import sys\ndef on_helo(conn, hostname):\n    sys.exit(3)\n")])
    assert "the hook called sys.exit(3)" in plain(host, job("helo", hostname="h"))["error"]


def test_a_base_exception_is_the_hook_s_failure_and_the_scope_is_reset(policy_file):
    # (KeyboardInterrupt or a BaseException of the policy's own: its traceback with the
    # session id, as any exception's, not an "internal error" of the engine)
    host = EngineHost([policy_file("def on_helo(conn, hostname):\n    raise KeyboardInterrupt\n")])
    error = plain(host, job("helo", hostname="h"))["error"]
    assert "raised an exception" in error and "KeyboardInterrupt" in error
    assert not host._running and _context.scope.get()[0] == ""


def test_a_hook_that_returns_none_too_late_fails_the_stage(policy_file):
    host = EngineHost([policy_file("import time\ndef on_helo(conn, hostname):\n    time.sleep(0.15)\n")], timeout=0.05)
    r = plain(host, job("helo", hostname="h"))
    assert "came too late" in r["error"]


def test_the_hooks_run_in_their_session_s_scope(policy_file):
    host = EngineHost([policy_file("""
        from portcullis import _context
        def on_helo(conn, hostname):
            conn.data["scope"] = _context.scope.get()[0]
    """)])
    host.run_plain(job("helo", sid="S7", hostname="h"))
    assert session(host, "S7").conn.data["scope"] == "S7" and _context.scope.get()[0] == ""


SCOPES = """
    from portcullis import _context
    def on_helo(conn, hostname):
        conn.data.setdefault("scopes", []).append(_context.scope.get()[0])
    def on_mail(tx, sender):
        tx.conn.data["scopes"].append(_context.scope.get()[0])
        raise RuntimeError("the Python path takes over: still in the session's scope") if sender.local == "boom" else None
"""


def test_interleaved_sessions_each_see_their_own_scope_and_the_thread_keeps_its_own(policy_file):
    # Off the loop the runner enters the session's own context (the scope set in it once).
    host = EngineHost([policy_file(SCOPES)])
    for sid in ("S1", "S2", "S1", "S2"):
        assert host.run_plain(job("helo", sid=sid, hostname="h")) is None
        assert _context.scope.get()[0] == ""
    r = plain(host, job("mail", sid="S1", tx_snapshot=tx(sender="boom@example.test"), session={"helo": "h"}))
    assert "the Python path takes over" in r["error"] and _context.scope.get()[0] == ""
    assert session(host, "S1").conn.data["scopes"] == ["S1", "S1", "S1"]
    assert session(host, "S2").conn.data["scopes"] == ["S2", "S2"]


def test_a_session_whose_context_is_still_entered_runs_in_its_scope_all_the_same(policy_file):
    # A plain hook the daemon abandoned may still run in it on another thread: the scope is then set here.
    host = EngineHost([policy_file(SCOPES)])
    assert host.run_plain(job("helo", sid="S3", hostname="h")) is None
    context = session(host, "S3").context

    def next_job():
        assert host.run_plain(job("helo", sid="S3", hostname="h")) is None
        assert _context.scope.get()[0] == "S3"  # (inside the context entered below)

    context.run(next_job)
    assert session(host, "S3").conn.data["scopes"] == ["S3", "S3"] and _context.scope.get()[0] == ""


def test_a_thread_that_stepped_the_loop_gives_plain_hooks_no_running_loop(policy_file):
    host = EngineHost([policy_file("""
        import asyncio
        def on_helo(conn, hostname):
            try:
                asyncio.get_running_loop()
                conn.data["loop"] = True
            except RuntimeError:
                conn.data["loop"] = False
    """)])
    loop = asyncio.new_event_loop()
    try:
        _enter_loop(loop)
        host.run_plain(job("helo", hostname="h"))
        assert session(host).conn.data["loop"] is False and _stepping.loop is None
    finally:
        if _stepping.loop is not None:
            _leave_loop()
        loop.close()


@pytest.mark.parametrize("bad", [
    {"stage": "rcpt"},  # a transaction stage without a transaction
    {"stage": "helo", "generation": 99},  # a generation no longer loaded
])
def test_a_job_that_cannot_be_bound_is_answered_with_an_error(policy_file, bad):
    host = EngineHost([policy_file("def on_helo(conn, h):\n    pass\ndef on_rcpt(tx, r):\n    pass\n")])
    stage = bad.pop("stage")
    j = job(stage, hostname="h", rcpt="b@example.test", rcpt_params={})
    for key, value in bad.items():
        setattr(j, key, value)
    assert plain(host, j)["error"].startswith(f"malformed {stage} job")


def test_auth_takes_the_python_path(policy_file):
    host = EngineHost([policy_file("def on_auth(conn, mechanism, user, password):\n    return user == 'ok'\n")])
    assert host.run_plain(job("auth", mechanism="PLAIN", username="ok", password="p")).auth is True
    assert host.run_plain(job("auth", mechanism="PLAIN", username="no", password="p")).auth is False


def test_nothing_of_a_job_is_kept_after_it(policy_file):
    host = EngineHost([policy_file("""
        class Probe:
            pass
        def on_connect(conn):
            conn.data["probe"] = Probe()
        def on_rcpt(tx, rcpt):
            tx.data["rcpt"] = rcpt
            tx.data["probe"] = Probe()
        def on_data(tx, message):
            tx.data["message"] = message
    """)])
    host.run_plain(job("connect"))
    host.run_plain(job("rcpt", tx_snapshot=tx(), rcpt="b@example.test", rcpt_params={}))
    host.run_plain(job("data", tx_snapshot=tx(recipients=["b@example.test"]), message=b"S: x\r\n\r\nb\r\n"))
    data = session(host).tx.data
    # Held by tx.data and by getrefcount's argument only: the runner kept no argument of a hook.
    counts = [sys.getrefcount(data["rcpt"]), sys.getrefcount(data["message"])]  # (not in the assert: pytest keeps its parts)
    assert counts == [2, 2]
    probes = [weakref.ref(data["probe"]), weakref.ref(session(host).conn.data["probe"])]
    del data
    host.run_plain(job("disconnect"))
    gc.collect()
    assert host.session_count == 0 and [p() for p in probes] == [None, None]


def test_each_call_counts_in_the_hook_metrics(policy_file):
    f = policy_file("import portcullis as pc\ndef on_helo(conn, hostname):\n    if hostname == 'no':\n"
                    "        return pc.reject('no')\n")
    host = EngineHost([f])
    for hostname in ("a", "b", "no"):
        host.run_plain(job("helo", hostname=hostname))
    lines = _core.metrics_exposition().splitlines()
    assert f'portcullis_hook_duration_seconds_count{{policy="{f}",hook="on_helo"}} 3' in lines


VERDICTS = [
    ("connect", "pc.accept()"),
    ("helo", "pc.reject('Go away', code=554, status='5.7.1')"),
    ("helo", "pc.accept('Hello there')"),
    ("mail", "pc.tempfail('Slow down')"),
    ("rcpt", "pc.discard()"),
    ("rcpt", "pc.redirect('x@example.test', 'y@example.test')"),
    ("data", "pc.discard()"),
    ("data", "pc.accept()"),
    # Python's, reported there: a verdict not allowed at the stage, a rewrite, not a verdict.
    ("mail", "pc.discard()"),
    ("rcpt", "pc.rewrite('new@example.test')"),
    ("mail", "42"),
    # A Verdict made directly may hold a list of addresses.
    ("rcpt", "pc.Verdict('rewrite', addresses=[pc.Address('n@example.test')])"),
    ("rcpt", "pc.Verdict('redirect', addresses=[pc.Address('n@example.test'), pc.Address('m@example.test')])"),
]
ARGS = {"connect": "conn", "helo": "conn, h", "mail": "tx, s", "rcpt": "tx, r", "data": "tx, m"}
EXTRA = {"helo": {"hostname": "h.example"}, "rcpt": {"rcpt": "r@example.test", "rcpt_params": {}},
         "data": {"message": b"Subject: x\r\n\r\nb\r\n"}}


def _verdict_counts(*files):
    """The counters a call of a hook of these files adds to: series -> count."""
    counts = {}
    for line in _core.metrics_exposition().splitlines():
        if line.startswith("portcullis_verdicts_total") or (
                line.startswith("portcullis_hook_duration_seconds_count") and any(f in line for f in files)):
            series, _, value = line.rpartition(" ")
            counts[series] = float(value)
    return counts


def _outcome(host, files, run):
    """What ``run()`` (one job on ``host``) gave: (its result as a dict, decided_by, whether the
    session's envelope is marked unchanged, the counters it added)."""
    before = _verdict_counts(*files)
    r = run()
    after = _verdict_counts(*files)
    counted = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert not host._running and _context.scope.get()[0] == ""
    return result_as_dict(r), r.decided_by if r is not None else None, session(host).envelope is not None, counted


def _on_the_loop(host, j, in_python):
    """A loop job's result: its first steps by the runner and the rest awaited, or all of it in Python (_drive)."""
    async def main():
        loop = asyncio.get_running_loop()
        if in_python:
            return await host._drive(j, loop)
        work = host._runner.run_async(host, j, loop)
        return work if work is None or isinstance(work, _core.Result) else await work

    return asyncio.run(main())


@pytest.mark.parametrize("stage,expr", VERDICTS)
def test_a_verdict_the_runner_applies_is_the_python_path_s(policy_file, stage, expr):
    # The runner applies the usual verdict itself (stage_runner::decided): the same result,
    # decided_by, envelope state and figures as the whole job in Python (_run_plain_slow).
    f = policy_file(f"import portcullis as pc\ndef on_{stage}({ARGS[stage]}):\n    return {expr}\n")
    t = tx() if stage in ("mail", "rcpt", "data") else None
    outcomes = []
    for way in ("run_plain", "_run_plain_slow"):
        host = EngineHost([f])
        j = job(stage, tx_snapshot=t, **EXTRA.get(stage, {}))
        outcomes.append(_outcome(host, [f], functools.partial(getattr(host, way), j)))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][3], "the call was counted"


@pytest.mark.parametrize("stage,expr", VERDICTS)
def test_an_async_hook_s_verdict_in_its_first_step_is_the_python_path_s(policy_file, stage, expr):
    f = policy_file(f"import portcullis as pc\nasync def on_{stage}({ARGS[stage]}):\n    return {expr}\n")
    t = tx() if stage in ("mail", "rcpt", "data") else None
    outcomes = []
    for in_python in (False, True):
        host = EngineHost([f])
        j = job(stage, tx_snapshot=t, **EXTRA.get(stage, {}))
        outcomes.append(_outcome(host, [f], functools.partial(_on_the_loop, host, j, in_python)))
    assert outcomes[0] == outcomes[1] and outcomes[0][3]


def test_the_runner_applies_a_final_verdict_with_no_python_frame(policy_file, monkeypatch):
    # (So the comparisons here compare two paths.) An exception still goes to Python.
    def resume(*args):
        raise AssertionError("Python's path was taken")

    monkeypatch.setattr(EngineHost, "_resume_plain", resume)
    f = policy_file("import portcullis as pc\ndef on_rcpt(tx, r):\n    if r.local == 'bad':\n"
                    "        raise ValueError('bad')\n"
                    "    return pc.rewrite('n@example.test') if r.local == 'old' else pc.accept()\n")
    host = EngineHost([f])
    r = plain(host, job("rcpt", tx_snapshot=tx(), rcpt="r@example.test", rcpt_params={}))
    assert r["verdict"]["kind"] == "accept" and session(host).envelope is not None
    r = plain(host, job("rcpt", tx_snapshot=tx(), rcpt="old@example.test", rcpt_params={}))
    assert r["verdict"]["kind"] == "redirect" and r["verdict"]["addresses"] == ["n@example.test"]
    with pytest.raises(AssertionError, match="Python's path"):
        host.run_plain(job("rcpt", tx_snapshot=tx(), rcpt="bad@example.test", rcpt_params={}))


# What an on_data hook does to the message and the transaction (both ways alike).
AT_DATA = [
    "message.add_header('X-Seen', 'yes')",
    "message.add_header('X-A', '1'); message.add_header('X-B', '2')",
    "message.add_header('X-Seen', 'yes'); message.get('Subject')",
    "message.add_header('X-Seen', 'yes'); message.remove_header('Subject')",
    "message.add_header('X-Seen', 'yes'); setattr(tx, 'dkim_sign', False)",
    "message.add_header('X-Seen', 'yes'); setattr(tx, 'sender', 'other@example.test')",
    "message.add_header('X-Seen', 'yes'); tx.recipients.append('c@example.test')",
    "setattr(message, 'body', b'new body\\r\\n')",
    "setattr(tx, 'arc_seal', False)",
    "None",
]


@pytest.mark.parametrize("edit", AT_DATA)
@pytest.mark.parametrize("raw", [b"Subject: x\r\n\r\nbody\r\n", b"not a field\r\nbody\r\n"])
def test_the_end_of_on_data_is_the_python_path_s(policy_file, edit, raw):
    f = policy_file(f"def on_data(tx, message):\n    {edit}\n")
    outcomes = []
    for way in ("run_plain", "_run_plain_slow"):
        host = EngineHost([f])
        r = getattr(host, way)(job("data", tx_snapshot=tx(recipients=["b@example.test"]), message=raw))
        d = result_as_dict(r)
        outcomes.append((d, r.dkim_sign if r is not None else None, r.arc_seal if r is not None else None,
                         session(host).envelope is not None))
    assert outcomes[0] == outcomes[1]


def test_fields_added_on_top_end_the_job_with_no_python_frame(policy_file, monkeypatch):
    def resume(*args):
        raise AssertionError("Python's path was taken")

    import portcullis as pc

    monkeypatch.setattr(EngineHost, "_resume_plain", resume)
    # Nor a method call: the fields are read from the Message's slots.
    monkeypatch.setattr(pc.Message, "_added_on_top", lambda self: resume())
    host = EngineHost([policy_file("def on_data(tx, message):\n    message.add_header('X-Seen', 'yes')\n"
                                   "    message.add_header('X-Last', 'on top')\n")])
    r = host.run_plain(job("data", tx_snapshot=tx(recipients=["b@example.test"]), message=b"S: x\r\n\r\nb\r\n"))
    assert r.message is None and r.message_prefix == b"X-Last: on top\r\nX-Seen: yes\r\n"
    assert session(host).envelope is not None


# What the hook after a rewrite does, and what the job's result is then (both ways alike).
AFTER_A_REWRITE = [
    "None",
    "pc.accept()",
    "pc.reject('no', code=550, status='5.1.1')",
    "pc.discard()",
    "pc.redirect('z@example.test')",
    "pc.rewrite('second@example.test')",
    "pc.accept() if str(r) == 'new@example.test' else pc.reject('wrong', code=550)",
    "(_ for _ in ()).throw(ValueError('after'))",
    "setattr(tx, 'sender', 'other@example.test')",
    "pc.discard() if tx.data.setdefault('x', 1) else None",
]


@pytest.mark.parametrize("after", AFTER_A_REWRITE)
@pytest.mark.parametrize("is_async", [False, True])
def test_a_rewrite_the_runner_takes_is_the_python_path_s(policy_file, after, is_async):
    d = "async def" if is_async else "def"
    first = policy_file(f"import portcullis as pc\n{d} on_rcpt(tx, r):\n    return pc.rewrite('new@example.test')\n")
    second = policy_file(f"import portcullis as pc\n{d} on_rcpt(tx, r):\n    return {after}\n")
    outcomes = []
    for in_python in (False, True):
        host = EngineHost([first, second])
        j = job("rcpt", tx_snapshot=tx(), rcpt="old@example.test", rcpt_params={})
        if is_async:
            run = functools.partial(_on_the_loop, host, j, in_python)
        else:
            run = functools.partial(host._run_plain_slow if in_python else host.run_plain, j)
        outcomes.append(_outcome(host, [first, second], run))
    assert outcomes[0] == outcomes[1]


def test_a_verdict_from_a_hook_that_changed_the_transaction_goes_to_python(policy_file):
    f = policy_file("import portcullis as pc\ndef on_rcpt(tx, r):\n    tx.sender = 'other@example.test'\n"
                    "    return pc.accept()\n")
    host = EngineHost([f])
    r = plain(host, job("rcpt", tx_snapshot=tx(), rcpt="r@example.test", rcpt_params={}))
    assert r["verdict"]["kind"] == "accept" and r["sender"] == "other@example.test"
    assert session(host).envelope is None  # tx is no longer what the daemon sent


def test_a_verdict_past_the_timeout_is_a_timeout(policy_file):
    f = policy_file("import time, portcullis as pc\ndef on_helo(conn, h):\n    time.sleep(0.1)\n"
                    "    return pc.accept()\n")
    r = plain(EngineHost([f], timeout=0.05), job("helo", hostname="h"))
    assert r["verdict"] is None and "ran past policy.timeout" in r["error"]


@pytest.mark.parametrize("in_python", [False, True])
@pytest.mark.parametrize("value", ["pc.reject('too late', code=550)", "None"])
def test_an_async_hook_s_first_step_past_the_timeout_is_a_timeout(policy_file, in_python, value):
    # It blocked (a synchronous call in an async def): no timer could cancel it, and its
    # answer comes too late, as a plain hook's (test_a_verdict_past_the_timeout_is_a_timeout).
    f = policy_file(f"import time, portcullis as pc\nasync def on_helo(conn, h):\n    time.sleep(0.1)\n"
                    f"    return {value}\n")
    r = result_as_dict(_on_the_loop(EngineHost([f], timeout=0.05), job("helo", hostname="h"), in_python))
    assert r["verdict"] is None and "ran past policy.timeout (0.05 s); its answer came too late" in r["error"]


@pytest.mark.parametrize("in_python", [False, True])
@pytest.mark.parametrize("what", ["raise GeneratorExit", "asyncio.current_task().cancel()\n    await asyncio.sleep(0)",
                                  "await asyncio.sleep(0)\n    raise GeneratorExit"])
def test_a_hook_s_own_generator_exit_or_cancel_is_its_failure_both_ways(policy_file, in_python, what):
    # Not the engine closing or cancelling the job: with on_error = "accept", the next policy decides.
    first = policy_file(f"import asyncio\nasync def on_helo(conn, h):\n    {what}\n")
    second = policy_file("import portcullis as pc\nasync def on_helo(conn, h):\n    return pc.reject('second', code=550)\n")
    r = result_as_dict(_on_the_loop(EngineHost([first, second], on_error="accept"), job("helo", hostname="h"),
                                    in_python))
    assert r["error"] is None and r["verdict"]["text"] == "second"


@pytest.mark.parametrize("in_python", [False, True])
def test_a_cancel_a_hook_left_pending_fails_no_later_hook_both_ways(policy_file, in_python):
    # The first cancels its own task and returns: not a failure; the cancel, due at the task's
    # next wait, was the second hook's CancelledError (its failure, and so no verdict).
    first = policy_file("import asyncio\nasync def on_helo(conn, h):\n    await asyncio.sleep(0)\n"
                        "    asyncio.current_task().cancel()\n")
    second = policy_file("import asyncio\nimport portcullis as pc\nasync def on_helo(conn, h):\n"
                         "    await asyncio.sleep(0)\n    return pc.reject('second', code=550)\n")
    r = result_as_dict(_on_the_loop(EngineHost([first, second], on_error="accept"), job("helo", hostname="h"),
                                    in_python))
    assert r["error"] is None and r["verdict"]["text"] == "second"


# -- on the loop: the first steps of async hooks ---------------------------------


def on_loop(host, j):
    """The loop's way (_JobRunner.start): the first steps here; what is left, awaited here.
    (the result, whether it ended in the first steps)."""

    async def main():
        work = host._runner.run_async(host, j, asyncio.get_running_loop())
        if work is None or isinstance(work, _core.Result):
            return work, True
        return await work, False

    result, at_once = asyncio.run(main())
    return result_as_dict(result), at_once


ASYNC_EVERYWHERE = NOOP_EVERYWHERE.replace("    def ", "    async def ")


def test_async_hooks_that_never_wait_end_in_their_first_steps(policy_file):
    host = EngineHost([policy_file(ASYNC_EVERYWHERE)])
    assert on_loop(host, job("connect"))[1]
    assert on_loop(host, job("mail", tx_snapshot=tx()))[1]
    r, at_once = on_loop(host, job("data", tx_snapshot=tx(recipients=["b@example.test"]), message=b"S: x\r\n\r\nb\r\n"))
    assert at_once and r["error"] is None and r["message"] is None
    assert session(host).tx.data == {"mail": "a@example.test", "data": True}
    assert on_loop(host, job("disconnect"))[1] and host.session_count == 0


def test_an_async_hook_that_waits_goes_on_in_a_task_which_ends_the_session(policy_file):
    host = EngineHost([policy_file("""
        import asyncio
        async def on_disconnect(conn):
            await asyncio.sleep(0.01)
            conn.data["done"] = True
    """), policy_file("import portcullis as pc\nasync def on_disconnect(conn):\n    conn.data['second'] = True\n")])
    on_loop(host, job("connect"))
    conn = session(host).conn

    async def main():
        work = host._runner.run_async(host, job("disconnect"), asyncio.get_running_loop())
        assert asyncio.iscoroutine(work) and host.session_count == 1  # not ended at the hand-over
        return await work

    assert asyncio.run(main()) is None
    assert conn.data == {"done": True, "second": True} and host.session_count == 0


def test_a_verdict_in_a_first_step_ends_there_and_an_exception_goes_on_in_python(policy_file):
    host = EngineHost([policy_file("""
        import portcullis as pc
        async def on_rcpt(tx, rcpt):
            if rcpt.local == "bad":
                raise ValueError("bad recipient")
            return pc.reject("no", code=550)
    """), policy_file("async def on_rcpt(tx, rcpt):\n    tx.data['second'] = True\n")])
    r, at_once = on_loop(host, job("rcpt", tx_snapshot=tx(), rcpt="b@example.test", rcpt_params={}))
    assert at_once and r["verdict"]["kind"] == "reject" and "second" not in session(host).tx.data
    r, _ = on_loop(host, job("rcpt", tx_snapshot=tx(), rcpt="bad@example.test", rcpt_params={}))
    assert "ValueError: bad recipient" in r["error"]


def test_an_async_hook_past_the_timeout_is_cancelled(policy_file):
    host = EngineHost([policy_file("import asyncio\nasync def on_helo(conn, h):\n    await asyncio.sleep(5)\n")],
                      timeout=0.05)
    r, at_once = on_loop(host, job("helo", hostname="h"))
    assert not at_once and "ran past policy.timeout (0.05 s) and was cancelled" in r["error"]


def test_a_stage_mixing_plain_and_async_hooks_runs_the_plain_one_in_the_pool(policy_file):
    host = EngineHost([policy_file("async def on_helo(conn, h):\n    conn.data['a'] = 1\n"),
                       policy_file("import threading\ndef on_helo(conn, h):\n"
                                   "    conn.data['thread'] = threading.current_thread().name\n")])
    r, at_once = on_loop(host, job("helo", hostname="h"))
    assert not at_once and r["error"] is None
    assert session(host).conn.data["a"] == 1 and session(host).conn.data["thread"] != "MainThread"
    host.close()


def test_an_async_hook_s_first_step_runs_in_the_job_s_task(policy_file):
    # asyncio.timeout() (and much else) needs the current task, from the first step to the last.
    host = EngineHost([policy_file("""
        import asyncio
        async def on_helo(conn, h):
            conn.data["first"] = asyncio.current_task()
            async with asyncio.timeout(1):
                await asyncio.sleep(0)
            conn.data["last"] = asyncio.current_task()
    """)])
    loop = asyncio.new_event_loop()
    started = []
    try:
        runner = _engine._JobRunner(host, loop, None, -1)
        loop.call_soon(lambda: started.append(runner.start(1, job("helo", hostname="h"))))  # (as drain does)
        loop.run_until_complete(asyncio.sleep(0.05))
        (done, work), = started
        assert not done and work.done() and work.result() is None
    finally:
        loop.close()
    data = session(host).conn.data
    assert data["first"] is work and data["last"] is work


# -- the runner reads the job in place: every field that moves must be seen ----------


SEEN = """
    def on_helo(conn, hostname):
        conn.data["seen"] = (conn.client_ip, conn.client_port, conn.helo, conn.tls, conn.tls_version,
                             conn.tls_cipher, conn.auth_user)
    def on_mail(tx, sender):
        tx.data["seen"] = (tx.id, str(tx.sender), dict(tx.sender.params), [str(r) for r in tx.recipients],
                           tx.smtputf8, tx.body_8bit, tx.spf, tx.dkim, tx.dmarc, tx.arc)
"""


@pytest.mark.parametrize("change", [
    {"client_ip": "192.0.2.9"}, {"client_port": 40001}, {"helo": "other.example"}, {"helo": "é.example"},
    {"tls": True}, {"tls": True, "tls_version": "TLSv1.3"}, {"tls": True, "tls_cipher": "TLS_AES_128_GCM_SHA256"},
    {"auth_user": "alice"}, {"auth_user": ""},
])
def test_each_change_of_the_connection_reaches_the_hooks(policy_file, change):
    host = EngineHost([policy_file(SEEN)])
    base = {"tls": False, "tls_version": "TLSv1.2", "tls_cipher": "X"}
    host.run_plain(job("helo", hostname="h", session=dict(base)))
    before = session(host).conn.data["seen"]
    host.run_plain(job("helo", hostname="h", session={**base, **change}))
    after = session(host).conn.data["seen"]
    now = {"client_ip": "192.0.2.1", "client_port": 40000, "helo": None, "auth_user": None, **base, **change}
    tls = now["tls"]
    expected = (now["client_ip"], now["client_port"], now["helo"], tls, now["tls_version"] if tls else None,
                now["tls_cipher"] if tls else None, now["auth_user"])
    assert after == expected and after != before


@pytest.mark.parametrize("change", [
    {"tid": "S1.2"}, {"sender": "other@example.test"}, {"sender": ""}, {"sender_params": {"SIZE": "10"}},
    {"sender_params": {"RET": None}}, {"recipients": ["b@example.test"]},
    {"recipients": ["b@example.test", "c@example.test"]},
    {"recipients": ["b@example.test", "d@example.test", "e@example.test"]},  # taken since: added to tx
    {"recipients": ["b@example.test", "e@example.test", "d@example.test"]}, {"options": {"smtputf8": True}},
    {"options": {"body_8bit": True}}, {"spf": {"result": "pass", "domain": "example.test"}},
    {"dkim": [{"result": "fail", "domain": "example.test", "selector": "s"}]},
    {"arc": {"result": "none"}},
])
def test_each_change_of_the_envelope_reaches_the_hooks(policy_file, change):
    host = EngineHost([policy_file(SEEN)])
    base = {"sender_params": {"SIZE": "9"}, "recipients": ["b@example.test", "d@example.test"]}
    host.run_plain(job("mail", tx_snapshot=tx(**base)))
    host.run_plain(job("mail", tx_snapshot=tx(**base)))  # (the second time from the envelope kept)
    before = session(host).tx.data["seen"]
    host.run_plain(job("mail", tx_snapshot=tx(**{**base, **change})))
    assert session(host).tx.data["seen"] != before


RECIPIENTS_SEEN = """
    def on_rcpt(tx, rcpt):
        tx.data.setdefault("lists", []).append(tx.recipients)
        if str(rcpt) == "unapplied@example.test":
            tx.recipients.append("unapplied@example.test")  # a change the daemon does not apply
    def on_data(tx, message):
        tx.data["at data"] = [str(r) for r in tx.recipients]
        if tx.data.get("rewrite"):
            tx.recipients[-1] = "rewritten@example.test"
"""


def test_recipients_taken_between_stages_join_the_transaction_which_stays_the_daemons(policy_file):
    host = EngineHost([policy_file(RECIPIENTS_SEEN)])
    b, c, d = "b@example.test", "c@example.test", "d@example.test"
    host.run_plain(job("mail", tx_snapshot=tx()))
    t = session(host).tx
    for taken, rcpt in (([], b), ([b], c), ([b, c], d)):
        assert host.run_plain(job("rcpt", tx_snapshot=tx(recipients=taken), rcpt=rcpt, rcpt_params={})) is None
    assert host.run_plain(job("data", tx_snapshot=tx(recipients=[b, c, d]), message=b"S: x\r\n\r\nb\r\n")) is None
    s = session(host)
    assert s.tx is t and t.data["at data"] == [b, c, d] and s.envelope is not None
    assert [[str(r) for r in seen] for seen in t.data["lists"]] == [[], [b], [b, c]]  # each list as it was
    assert [str(r) for r in s.before[1]] == [b, c, d] and all(x is y for x, y in zip(s.before[1], t.recipients))
    # A rewrite at DATA of a recipient added there goes back as the daemon's list with it changed.
    t.data["rewrite"] = True
    r = plain(host, job("data", tx_snapshot=tx(recipients=[b, c, d]), message=b"S: x\r\n\r\nb\r\n"))
    assert r["recipients"] == [b, c, "rewritten@example.test"]


def test_recipients_taken_after_a_change_the_daemon_did_not_apply_remake_the_transaction(policy_file):
    host = EngineHost([policy_file(RECIPIENTS_SEEN)])
    b = "b@example.test"
    host.run_plain(job("mail", tx_snapshot=tx()))
    r = plain(host, job("rcpt", tx_snapshot=tx(), rcpt="unapplied@example.test", rcpt_params={}))
    assert r["recipients"] == ["unapplied@example.test"]  # sent; the daemon ignores it (a rcpt stage)
    host.run_plain(job("data", tx_snapshot=tx(recipients=[b]), message=b"S: x\r\n\r\nb\r\n"))
    assert session(host).tx.data["at data"] == [b]  # the daemon's envelope, not the hook's


# -- the job starter (bindings/job_tasks.cpp): _JobRunner's start and run_here, in C ----------


class _Daemon:
    """The daemon's side of a _JobRunner, as far as run_here reaches it: the jobs it completes."""

    def __init__(self):
        self.completed = []

    def complete(self, job_id, result):
        self.completed.append((job_id, result))


@pytest.fixture
def lent_loop():
    """A policy loop whose turn this thread holds, as a daemon I/O thread does in run_here."""
    loop = _engine._PolicyLoop()
    yield loop
    _leave_loop()
    loop.close()


def _runner(host, loop):
    daemon = _Daemon()
    return _engine._JobRunner(host, loop, daemon, -1), daemon


def test_run_here_answers_a_job_that_ended_in_its_first_step_and_leaves_the_loop_nothing(policy_file, lent_loop):
    host = EngineHost([policy_file(ASYNC_EVERYWHERE)])
    runner, daemon = _runner(host, lent_loop)
    assert runner.run_here(1, job("connect")) is None
    assert runner.run_here(2, job("mail", tx_snapshot=tx())) is None
    assert session(host).tx.data == {"mail": "a@example.test"}
    assert not lent_loop._ready and not lent_loop._scheduled and not runner.tasks and daemon.completed == []
    assert asyncio.current_task(lent_loop) is None  # the task's step is over
    assert _stepping.loop is lent_loop  # kept between jobs (setting it costs a system call)


def test_run_here_hands_a_job_that_waits_to_the_loop_which_completes_it(policy_file, lent_loop):
    host = EngineHost([policy_file("""
        import asyncio
        async def on_helo(conn, h):
            conn.data["task"] = asyncio.current_task()
            await asyncio.sleep(0.01)
            return "not a verdict"
    """)])
    runner, daemon = _runner(host, lent_loop)
    assert runner.run_here(1, job("helo", hostname="h")) is True  # a timer: the loop's thread must look
    (task, job_id), = runner.tasks.items()
    assert job_id == 1 and runner.by_id[1] is task and session(host).conn.data["task"] is task
    _leave_loop()  # the loop's own thread takes over
    lent_loop.run_until_complete(asyncio.sleep(0.1))
    (job_id, result), = daemon.completed
    assert job_id == 1 and "returned 'not a verdict'" in result_as_dict(result)["error"]
    assert not runner.tasks and not runner.by_id


def test_a_job_left_waiting_is_cancelled_through_its_coroutine_into_the_hook(policy_file, lent_loop):
    host = EngineHost([policy_file("""
        import asyncio
        async def on_helo(conn, h):
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                conn.data["cancelled"] = True
                raise
    """)])
    runner, daemon = _runner(host, lent_loop)
    assert runner.run_here(1, job("helo", hostname="h")) is True
    _engine._cancel(runner.by_id[1])  # as drain does with a job the daemon abandoned
    _leave_loop()
    lent_loop.run_until_complete(asyncio.sleep(0.05))
    assert session(host).conn.data["cancelled"] is True
    (job_id, result), = daemon.completed
    assert job_id == 1 and result_as_dict(result)["error"] == "the job was abandoned"


def test_run_here_completes_a_finished_job_itself_when_it_left_the_loop_work(policy_file, lent_loop):
    host = EngineHost([policy_file("""
        import asyncio
        async def on_helo(conn, h):
            asyncio.get_running_loop().call_soon(conn.data.setdefault("later", []).append, "ran")
    """)])
    runner, daemon = _runner(host, lent_loop)
    assert runner.run_here(1, job("helo", hostname="h")) is True  # the loop's thread must look
    assert daemon.completed == [(1, None)] and not runner.tasks
    _leave_loop()
    lent_loop.run_until_complete(asyncio.sleep(0))
    assert session(host).conn.data["later"] == ["ran"]


# Each job's task, seen through a weak reference: a task a hook keeps is not
# given to the next job (below), and the tests look at the ones that are.
CARRIED = """
    import asyncio, contextvars, weakref
    seen = contextvars.ContextVar("seen", default=None)
    async def on_helo(conn, h):
        conn.data.setdefault("tasks", []).append(weakref.ref(asyncio.current_task()))
        conn.data.setdefault("seen", []).append(seen.get())
        seen.set(h)  # in this job's context only, as if its task were its own
        if h == "wait":
            await asyncio.sleep(0.01)
            conn.data["waited in"] = weakref.ref(asyncio.current_task())
        if h == "wait long":
            await asyncio.sleep(0.05)
            return "550 5.7.1 waited"
        if h == "keep":
            conn.data["kept"] = asyncio.current_task()
        if h == "cancel it soon":
            asyncio.get_running_loop().call_later(0.01, asyncio.current_task().cancel)
        if h == "watch":
            asyncio.current_task().add_done_callback(lambda t: conn.data.setdefault("ended", []).append(t.result()))
"""


def _tasks(host, sid="S1"):
    """The tasks the CARRIED hook ran in, in order (None for one gone)."""
    return [ref() for ref in session(host, sid).conn.data["tasks"]]


def test_jobs_that_end_in_their_first_steps_share_one_waiting_task_each_in_a_context_of_its_own(policy_file,
                                                                                                lent_loop):
    host = EngineHost([policy_file(CARRIED)])
    runner, daemon = _runner(host, lent_loop)
    for i, name in enumerate(("a", "b", "c")):
        assert runner.run_here(i, job("helo", hostname=name)) is None
    data = session(host).conn.data
    first = _tasks(host)[0]
    assert _tasks(host) == [first] * 3 and data["seen"] == [None, None, None]
    assert not first.done() and not runner.tasks and daemon.completed == []
    assert not lent_loop._ready and not lent_loop._scheduled  # woken in place: nothing queued
    assert asyncio.current_task(lent_loop) is None
    runner.starter.end_idle()  # (the runner's, when it stops: at the loop's next turn)
    _leave_loop()
    lent_loop.run_until_complete(asyncio.sleep(0))
    assert first.done() and first.result() is None


def test_a_job_that_waits_keeps_the_waiting_task_and_the_next_job_gets_a_new_one(policy_file, lent_loop):
    host = EngineHost([policy_file(CARRIED)])
    runner, daemon = _runner(host, lent_loop)
    assert runner.run_here(1, job("helo", hostname="a")) is None
    assert runner.run_here(2, job("helo", hostname="wait")) is True  # a timer: the loop's thread must look
    assert runner.run_here(3, job("helo", hostname="b")) is None
    data = session(host).conn.data
    carrier, _, second = _tasks(host)
    assert _tasks(host)[1] is carrier and second is not carrier and runner.by_id[2] is carrier
    _leave_loop()
    lent_loop.run_until_complete(asyncio.sleep(0.05))
    assert daemon.completed == [(2, None)] and not runner.tasks and data["waited in"]() is carrier
    assert carrier.done() and not second.done()  # the job's task ended with it; the new one waits
    assert data["seen"] == [None, None, None]


def test_a_waiting_task_cancelled_between_jobs_ends_and_the_next_job_runs_in_a_new_one(policy_file, lent_loop):
    host = EngineHost([policy_file(CARRIED)])
    runner, daemon = _runner(host, lent_loop)
    errors = []
    lent_loop.set_exception_handler(lambda loop, context: errors.append(context))
    assert runner.run_here(1, job("helo", hostname="a")) is None
    idle = _tasks(host)[0]
    assert idle.cancel("shutting down")  # by a policy's clean-up that cancels every task, say
    assert runner.run_here(2, job("helo", hostname="b")) is True  # (the cancelled one's wakeup is queued)
    second = _tasks(host)[1]
    assert second is not idle
    _leave_loop()
    lent_loop.run_until_complete(asyncio.sleep(0))
    assert idle.cancelled() and not second.done() and errors == [] and daemon.completed == [(2, None)]
    with pytest.raises(asyncio.CancelledError, match="shutting down"):  # the message kept, as a Future keeps it
        idle.result()


@pytest.mark.parametrize("how", ["keep", "cancel it soon"])
def test_a_task_a_hook_keeps_is_not_given_to_another_session_s_job_which_its_cancel_would_hit(policy_file, lent_loop,
                                                                                            how):
    # S1's hook keeps its task, or leaves a timer to cancel it; its job ends at once. S2's next
    # job, which waits, must not run in that task: S1's cancel would end S2's job.
    host = EngineHost([policy_file(CARRIED)])
    runner, daemon = _runner(host, lent_loop)
    answered = runner.run_here(1, job("helo", hostname=how))
    assert answered is None or daemon.completed == [(1, None)]  # (a timer set: the loop's thread must look)
    first = _tasks(host)[0]
    assert first.done() and first.result() is None  # ended with its job, as a task of its own would
    assert runner.run_here(2, job("helo", sid="S2", hostname="wait long")) is True
    assert _tasks(host, "S2")[0] is not first
    if how == "keep":
        session(host).conn.data["kept"].cancel()  # S1 cancels what it kept
    _leave_loop()
    lent_loop.run_until_complete(asyncio.sleep(0.1))
    (job_id, result), = [c for c in daemon.completed if c[0] == 2]
    assert "550 5.7.1 waited" in str(result_as_dict(result))  # S2's job ran to its end


def test_a_done_callback_a_hook_adds_to_its_task_runs_when_its_job_ends(policy_file, lent_loop):
    host = EngineHost([policy_file(CARRIED)])
    runner, daemon = _runner(host, lent_loop)
    assert runner.run_here(1, job("helo", hostname="watch")) is True  # the callback is queued: the loop looks
    assert daemon.completed == [(1, None)]
    _leave_loop()
    lent_loop.run_until_complete(asyncio.sleep(0))
    assert session(host).conn.data["ended"] == [None]


def test_a_task_factory_is_asked_for_each_job_s_task_and_asyncio_s_python_task_steps_the_jobs(policy_file,
                                                                                               lent_loop):
    # A policy's task factory makes every job's task (none is passed on to the next job);
    # asyncio's pure-Python Task steps the coroutine with send() and throw() (the C Task
    # uses the C protocol): the same jobs, the same ends. (The factory keeps no task: one
    # kept is never passed on anyway.)
    made = []

    def factory(loop, coro, **kw):
        task = asyncio.tasks._PyTask(coro, loop=loop, **kw)
        made.append(type(coro).__name__)
        return task

    lent_loop.set_task_factory(factory)
    host = EngineHost([policy_file(CARRIED)])
    runner, daemon = _runner(host, lent_loop)
    assert runner.run_here(1, job("helo", hostname="a")) is None
    assert runner.run_here(2, job("helo", hostname="b")) is None
    assert made == ["JobCoroutine"] * 2
    assert runner.run_here(3, job("helo", hostname="wait")) is True
    waiting = runner.by_id[3]
    assert type(waiting) is asyncio.tasks._PyTask
    assert runner.run_here(4, job("helo", hostname="wait long")) is True
    _engine._cancel(runner.by_id[4])  # as drain does
    _leave_loop()
    lent_loop.run_until_complete(asyncio.sleep(0.1))
    completed = dict(daemon.completed)
    assert completed.keys() == {3, 4} and completed[3] is None and waiting.result() is None
    assert result_as_dict(completed[4])["error"] == "the job was abandoned"
    assert made.count("JobCoroutine") == 4  # (the test's sleep has a task too)


def test_a_hook_that_cancels_its_own_task_ends_its_job_with_its_value_and_the_task_with_the_cancel(
        policy_file, lent_loop):
    host = EngineHost([policy_file("""
        import asyncio
        async def on_helo(conn, h):
            conn.data["task"] = asyncio.current_task()
            if h == "cancel":
                asyncio.current_task().cancel()
    """)])
    runner, daemon = _runner(host, lent_loop)
    assert runner.run_here(1, job("helo", hostname="cancel")) is True  # its wakeup is queued: the loop looks
    cancelled = session(host).conn.data["task"]
    assert daemon.completed == [(1, None)]  # the hook returned: its value (the cancel ends the task, not the job)
    assert runner.run_here(2, job("helo", hostname="b")) is True  # (its wakeup still queued)
    assert session(host).conn.data["task"] is not cancelled and daemon.completed == [(1, None), (2, None)]
    _leave_loop()
    lent_loop.run_until_complete(asyncio.sleep(0))
    assert cancelled.cancelled()


def test_a_first_step_the_loop_takes_later_ends_its_task_with_its_job(policy_file, lent_loop):
    # A task factory whose task's first step is not the last thing queued: the starter
    # cannot take that step itself, and the loop takes it later. The job must then end
    # with its task (as a task of its own would), not leave it waiting for a next job.
    def factory(loop, coro, **kw):
        task = asyncio.Task(coro, loop=loop, **kw)
        loop.call_soon(lambda: None)
        return task

    lent_loop.set_task_factory(factory)
    host = EngineHost([policy_file(CARRIED)])
    runner, daemon = _runner(host, lent_loop)
    assert runner.run_here(1, job("helo", hostname="a")) is True  # its first step is queued: the loop looks
    (task, job_id), = runner.tasks.items()
    _leave_loop()
    lent_loop.run_until_complete(asyncio.sleep(0))
    assert daemon.completed == [(1, None)] and task.done() and not runner.tasks


def test_a_waiting_task_left_on_a_closed_loop_is_dropped_without_a_word(policy_file):
    loop = _engine._PolicyLoop()
    errors = []
    loop.set_exception_handler(lambda loop, context: errors.append(context))
    try:
        host = EngineHost([policy_file(CARRIED)])
        runner, _ = _runner(host, loop)
        assert runner.run_here(1, job("helo", hostname="a")) is None
        task = _tasks(host)[0]
        assert not task.done()
    finally:
        _leave_loop()
        loop.close()
    del runner, task
    host.run_plain(job("disconnect"))
    gc.collect()
    assert errors == []


def _started_by_drain(runner, loop, job_id, j):
    """runner.start(job_id, j) from a plain callback of the running loop, as drain calls it."""
    started = []
    loop.call_soon(lambda: started.append(runner.start(job_id, j)))
    loop.run_until_complete(asyncio.sleep(0))
    (done, value), = started
    return value if done else loop.run_until_complete(value)


IN_PLACE = """
    import asyncio
    import portcullis as pc
    async def on_helo(conn, h):
        if h == "sleep 0":
            await asyncio.sleep(0)
            return pc.tempfail("slept")
        if h == "wait":
            await asyncio.sleep(0.01)
            return pc.tempfail("waited")
        if h == "cancel and return":
            asyncio.current_task().cancel()
            return pc.reject("cancelled itself")
        if h == "cancel and wait":
            asyncio.current_task().cancel("by itself")
            await asyncio.sleep(0.01)
            return pc.reject("not reached")
        if h == "cancel, wait and catch":
            asyncio.current_task().cancel()
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                return pc.reject("caught")
        if h == "current":
            return pc.reject("current" if asyncio.current_task() is not None else "none")
        if h == "interrupt":
            raise KeyboardInterrupt
"""


def _ended(policy, first_jobs, j):
    """How job 2 (`j`) ends on a fresh policy loop after `first_jobs` (helo host names) ran: its
    result (as a dict, or None), or the error run_here raised; and what the loop's handler saw."""
    loop = _engine._PolicyLoop()
    errors = []
    loop.set_exception_handler(lambda loop, context: errors.append(context.get("message")))
    try:
        host = EngineHost([policy])
        runner, daemon = _runner(host, loop)
        for i, name in enumerate(first_jobs):
            assert runner.run_here(10 + i, job("helo", hostname=name)) is None
        try:
            answered = runner.run_here(2, j)
        except (Exception, KeyboardInterrupt) as e:  # (a task re-raises KeyboardInterrupt, as asyncio's do)
            return ("raised", type(e).__name__), errors
        _leave_loop()
        loop.run_until_complete(asyncio.sleep(0.05))
        result = dict(daemon.completed).get(2, "never") if answered in (True, False) else answered
        return (result_as_dict(result) if result not in (None, "never") else result), errors
    finally:
        _leave_loop()
        loop.close()


@pytest.mark.parametrize("what", ["sleep 0", "wait", "cancel and return", "cancel and wait", "cancel, wait and catch",
                                  "current", "interrupt", "not a job"])
def test_first_steps_taken_in_a_waiting_task_end_as_in_a_task_s_own_step(policy_file, what):
    # The first job makes a task, which it leaves waiting; the next job's first steps
    # run in that task's stead, not in a step of its own (bindings/job_tasks.cpp,
    # step_in_place). Whatever those steps do, the job must end as it does in a new task.
    j = object() if what == "not a job" else job("helo", hostname=what)
    policy = policy_file(IN_PLACE)
    new_task = _ended(policy, [], j)
    waiting_task = _ended(policy, ["a"], j)
    assert waiting_task == new_task
    assert new_task[0] not in ("never", None)


def test_a_reload_job_runs_in_a_task_of_its_own(policy_file, lent_loop):
    host = EngineHost([policy_file(ASYNC_EVERYWHERE)])
    runner, _ = _runner(host, lent_loop)
    reload = {"stage": "reload", "files": [policy_file("async def on_helo(conn, h):\n    pass\n")]}
    before = host.engine.generation
    assert _started_by_drain(runner, lent_loop, 7, reload).error is None and host.engine.generation > before


def test_the_job_coroutine_is_a_coroutine_to_asyncio_and_leaves_nothing_behind(policy_file, lent_loop):
    host = EngineHost([policy_file("""
        import asyncio
        async def on_helo(conn, h):
            conn.data["repr"] = repr(asyncio.current_task())
            conn.data["coro"] = asyncio.iscoroutine(asyncio.current_task().get_coro())
            await asyncio.sleep(0)
    """)])
    runner, _ = _runner(host, lent_loop)

    def coroutines():
        gc.collect()
        return {id(o) for o in gc.get_objects() if type(o) is _core.JobCoroutine}

    before = coroutines()
    assert _started_by_drain(runner, lent_loop, 1, job("helo", hostname="h")) is None
    data = session(host).conn.data
    assert data["coro"] is True and "coro=<JobCoroutine()" in data["repr"]
    del data["repr"]
    assert coroutines() <= before


VERSIONED = """
import portcullis as pc
def on_connect(conn):
    pass
def on_helo(conn, hostname):
    return pc.accept(pc.config["version"])
def on_disconnect(conn):
    pass
"""


def test_sessions_made_here_bind_to_their_generation_and_the_last_one_closes_a_retired_engine(policy_file, tmp_path):
    # The runner makes and ends sessions itself (EngineHost._new_session, _end_session): under the
    # host's lock, counted on the engine of the generation the daemon names.
    path = tmp_path / "v.py"
    path.write_text(VERSIONED)
    host = EngineHost([])
    for v in ("v1", "v2"):
        (tmp_path / f"{v}.toml").write_text(f'version = "{v}"\n')
        host.reload(files=[str(path)], config_path=str(tmp_path / f"{v}.toml"))
        if v == "v1":
            old = host.engine
            old.held = True  # as after the daemon's reload job: it may still bind sessions to it
    first, second = old.generation, host.engine.generation
    assert host.run_plain(job("connect", sid="late", generation=first)) is None
    assert host.run_plain(job("connect", sid="new", generation=second)) is None
    assert host.run_plain(job("connect", sid="current")) is None  # generation 0: the current engine
    assert session(host, "late").engine is old and session(host, "new").engine is host.engine
    assert session(host, "current").engine is host.engine
    assert (old.sessions, host.engine.sessions) == (1, 2)
    assert result_as_dict(host.run_plain(job("helo", sid="late", hostname="h", generation=first)))["verdict"]["text"] == "v1"
    host.release(first)
    assert not old.closed, "dropped under a session still bound to it"
    assert host.run_plain(job("disconnect", sid="late", generation=first)) is None
    assert old.closed and "late" not in host._sessions and old.sessions == 0
    assert host.run_plain(job("disconnect", sid="new", generation=second)) is None
    assert host.engine.sessions == 1 and not host.engine.closed
    r = plain(host, job("connect", sid="ghost", generation=first))
    assert "no longer loaded" in r["error"] and "ghost" not in host._sessions


def test_the_host_lock_is_released_whatever_happens():
    host = EngineHost([])
    with pytest.raises(LookupError):
        host._runner.new_session(host, 12345, ("S9", "192.0.2.1", 25, None, False, None, None, None))
    with pytest.raises(TypeError):
        host._runner.new_session(host, 0, ("S9", "too short"))
    assert host._lock.acquire(blocking=False)
    host._lock.release()
    assert host._sessions == {} and host.engine.sessions == 0


NO_DISCONNECT = """
def on_connect(conn):
    conn.data["note"] = Note()
class Note:
    host = None
    def __del__(self):
        # Freed once its session is forgotten: the host's lock must not be held then.
        assert Note.host._lock.acquire(blocking=False), "freed under the host's lock"
        Note.host._lock.release()
        Note.freed += 1
Note.freed = 0
"""


def test_forgotten_sessions_leave_the_table_their_engines_count_down_and_a_retired_one_closes(tmp_path):
    # Sessions whose policies have no on_disconnect end by EngineHost.forget (the daemon hands the
    # ids over with a later job): the runner's, as _end_session, keyed by id.
    path = tmp_path / "p.py"
    path.write_text(NO_DISCONNECT)
    host = EngineHost([str(path)])
    old = host.engine
    assert host.run_plain(job("connect", sid="A")) is None
    assert host.run_plain(job("connect", sid="B")) is None
    host.reload(files=[str(path)])
    assert host.run_plain(job("connect", sid="C")) is None
    assert (old.sessions, host.engine.sessions) == (2, 1)
    notes = {type(session(host, sid).conn.data["note"]) for sid in "AC"}  # each load's own class
    for note in notes:
        note.host = host
    host.forget(["A", "nobody"])  # an id not in the table is skipped
    assert "A" not in host._sessions and old.sessions == 1 and not old.closed
    host.forget(iter(["B", "C"]))  # any iterable, as the event loop's thread hands them over
    assert host._sessions == {} and old.sessions == 0 and host.engine.sessions == 0
    assert old.closed, "a retired engine goes with its last session"
    assert not host.engine.closed
    gc.collect()
    assert sorted(note.freed for note in notes) == [1, 2]
    assert host._lock.acquire(blocking=False)
    host._lock.release()
