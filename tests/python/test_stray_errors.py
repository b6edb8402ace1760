"""What no code catches, in the daemon's log: an exception in a policy object's
__del__ (sys.unraisablehook) and a warning such as "coroutine ... was never
awaited" (warnings.showwarning) are one log record each, tagged with the
session whose hook was running, not bare lines on stderr."""

from __future__ import annotations

import gc
import io
import logging
import sys
import types
import warnings

import pytest

from portcullis import _log
from portcullis.testing import Harness

POLICY = """
    import portcullis as pc

    class Doomed:
        def __del__(self):
            raise RuntimeError("in __del__")

    async def forgotten():
        pass

    def on_mail(tx, sender):
        forgotten()

    def on_rcpt(tx, rcpt):
        Doomed()
"""


def route(monkeypatch) -> None:
    """The daemon's hooks installed (as make_logger does there), pytest's back after. In the
    test itself: pytest puts its own unraisablehook back at the end of each phase."""
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    _log.log_stray_errors()


def test_the_daemon_routes_them_through_the_policy_logger(monkeypatch):
    root, logger = logging.getLogger(), logging.getLogger(_log.LOGGER_NAME)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    _log.make_logger()  # not embedded: Python's hooks are left alone
    assert sys.unraisablehook is not _log.log_unraisable and warnings.showwarning is not _log.log_warning
    monkeypatch.setattr(_log._core, "embedded", True, raising=False)
    _log.make_logger()
    assert sys.unraisablehook is _log.log_unraisable and warnings.showwarning is _log.log_warning


def test_an_exception_in_del_and_a_coroutine_never_awaited_are_one_record_each(monkeypatch, policy_file, core_log):
    route(monkeypatch)
    path = policy_file(POLICY)
    with Harness([path]) as h:
        s = h.connect(helo="client.test")
        assert s.mail("a@example.test") == (250, "2.1.0", "Ok")
        assert s.rcpt("b@example.test") == (250, "2.1.5", "Ok")
        ours = [line for line in h.logs if line.session_id == s.id]
    assert len(ours) == 2, ours
    warning, error = ours
    assert warning.level == logging.WARNING
    first, source = warning.message.split("\n")
    assert first == f"{path}:12: RuntimeWarning: coroutine 'forgotten' was never awaited"
    assert source == "  forgotten()"
    assert error.level == logging.ERROR
    lines = error.message.split("\n")
    assert lines[0].startswith("Exception ignored in: <function Doomed.__del__ at 0x")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: in __del__"
    # The daemon's log: a line per call, each tagged with the session.
    calls = [(level, sid, message) for level, sid, message in core_log if sid == s.id]
    assert [m for _, _, m in calls] == [*warning.message.split("\n"), *lines]


def test_outside_any_hook_the_record_has_no_session(monkeypatch, core_log):
    route(monkeypatch)
    class Doomed:
        def __del__(self):
            raise ValueError("late")

    Doomed()
    gc.collect()
    (level, sid, summary), *rest = core_log
    assert (level, sid) == (logging.ERROR, "")
    assert summary.startswith("Exception ignored in: <function test_outside_any_hook_the_record_has_no_session.")
    assert rest[-1] == (logging.ERROR, "", "ValueError: late")


def test_a_huge_or_failing_repr_is_cut_short(monkeypatch, core_log):
    route(monkeypatch)
    class Unprintable:
        def __repr__(self):
            raise RuntimeError("no repr")

    class Huge:
        def __repr__(self):
            return "x" * 1_000_000

    for obj in (Unprintable(), Huge()):
        sys.unraisablehook(types.SimpleNamespace(exc_type=RuntimeError, exc_value=RuntimeError("boom"),
                                                 exc_traceback=None, err_msg=None, object=obj))
    summaries = [m for _, _, m in core_log if m.startswith("Exception ignored in")]
    assert summaries == ["Exception ignored in: <Unprintable object: repr() failed>",
                         "Exception ignored in: " + "x" * _log.MAX_REPR + "..."]


def test_a_warning_shown_to_a_file_still_goes_there(monkeypatch, core_log):
    route(monkeypatch)
    out = io.StringIO()
    warnings.showwarning(UserWarning("to a file"), UserWarning, "f.py", 3, out, "x = 1")
    assert out.getvalue() == "f.py:3: UserWarning: to a file\n  x = 1\n"
    assert core_log == []
