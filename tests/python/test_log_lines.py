"""pc.log in the daemon: one _portcullis_core.log call per line, so a client's
text (an AUTH name may hold LF, RFC 4616 §2) never starts a log line of its
own; the daemon escapes what a line holds (issue 7, item F)."""

import logging

from portcullis import _log

FORGED = "alice\n2026-12-01T00:00:00.000 info S0: AUTH PLAIN as admin\r"


def test_a_message_is_one_line_whatever_it_holds(core_log):
    _log.log.info("login %s", FORGED, extra={"session_id": "S9"})
    assert core_log == [(logging.INFO, "S9", f"login {FORGED}")]


def test_a_traceback_is_one_call_per_line_and_its_message_stays_whole(core_log):
    try:
        raise ValueError(f"bad user {FORGED}")
    except ValueError:
        _log.log.exception("auth failed", extra={"session_id": "S9"})
    messages = [m for _, _, m in core_log]
    assert messages[0] == "auth failed"
    assert messages[1] == "Traceback (most recent call last):"
    assert messages[-1] == f"ValueError: bad user {FORGED}"  # one call: the daemon escapes its LF
    assert any(m.startswith('  File "') for m in messages)
    assert any(m.strip() == 'raise ValueError(f"bad user {FORGED}")' for m in messages)
    assert {sid for _, sid, _ in core_log} == {"S9"}
    # Apart from the exception's own message, no call holds a line break.
    assert all("\n" not in m for m in messages[:-1])


def test_chained_exceptions_are_split_the_same_way(core_log):
    try:
        try:
            raise KeyError("first\nline")
        except KeyError as e:
            raise RuntimeError("second\nline") from e
    except RuntimeError:
        _log.log.exception("failed", extra={"session_id": "S1"})
    messages = [m for _, _, m in core_log]
    assert "KeyError: 'first\\nline'" in messages
    assert "RuntimeError: second\nline" in messages
    assert "The above exception was the direct cause of the following exception:" in messages


def test_detail_lines_are_lines_of_their_own(core_log):
    _log.log.error("summary", extra={"session_id": "S1", _log.DETAIL: ["  File x, line 1", "    y()"]})
    assert [m for _, _, m in core_log] == ["summary", "  File x, line 1", "    y()"]


def test_format_record_joins_the_lines_for_the_harness():
    record = logging.LogRecord("portcullis.policy", logging.ERROR, __file__, 1, "msg", (), None)
    setattr(record, _log.DETAIL, ["a", "b"])
    assert _log.format_record(record) == "msg\na\nb"


def test_an_undecodable_header_octet_reaches_the_log_as_itself(core_log):
    # A header value carries an undecodable octet as a lone surrogate (surrogateescape): as text
    # it could not cross to the daemon; the line was lost, and Python's "Logging error" dump
    # went to stderr instead, with no time or session id.
    subject = b"caf\xe9 boom".decode("utf-8", "surrogateescape")
    _log.log.info("subject %s", subject, extra={"session_id": "S9"})
    _log.log.info("odd %s", "\ud800", extra={"session_id": "S9"})  # (not an octet: shown as its escape)
    assert core_log == [(logging.INFO, "S9", "subject caf\\xe9 boom"), (logging.INFO, "S9", "odd \\ud800")]
