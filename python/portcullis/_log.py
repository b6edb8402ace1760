"""``portcullis.log``: the policies' logger, whose lines carry the session id."""

from __future__ import annotations

import linecache
import logging
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import _portcullis_core as _core

from . import _context

#: The logger name; child loggers (``portcullis.policy.aliases``) go the same way.
LOGGER_NAME = "portcullis.policy"

#: How much of an object's repr a log line about it shows (a repr may be megabytes).
MAX_REPR = 200

#: The LogRecord attribute (``extra={DETAIL: [...]}``) holding lines the engine
#: made itself (a hook's stack, a policy file's problems): each becomes a log
#: line of its own after the message.
DETAIL = "portcullis_detail"


class CoreLogHandler(logging.Handler):
    """Sends each record to the daemon's log (``_portcullis_core.log``).

    One call per line of ``record_lines``, each tagged with the id of the
    session whose hook logged it. The daemon writes each call as one log line,
    its control characters escaped: text a client chose (an AUTH name with LF
    in it) cannot start a line of its own.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            session_id = record_session_id(record)
            for line in record_lines(record):
                _core.log(record.levelno, session_id, log_text(line))
        except Exception:  # a log line must never break a hook
            self.handleError(record)


def log_text(text: str) -> str:
    """``text`` as the daemon's log can take it: a lone surrogate (an undecodable octet of a
    header value, as the API hands those out) is written as that octet's escape
    (``\\xe9``); any other as ``\\udXXX``. (As it was, the text could not cross to C++: the
    line was lost, and Python's own "Logging error" dump went to stderr instead.)"""
    if text.isascii():
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def record_session_id(record: logging.LogRecord) -> str:
    """The session id of a record: set explicitly (``extra=``) or from the hook context."""
    explicit = getattr(record, "session_id", None)
    return explicit if isinstance(explicit, str) else _context.session_id()


def traceback_lines(exc: BaseException, skip: Callable[[str], bool] | None = None) -> list[str]:
    """The traceback of ``exc`` as log lines (chained exceptions included).

    Frames are split into their lines (file names and source lines come from
    the policy's files). The ``Type: message`` part of each exception stays
    one line whatever its message holds: a message may carry a client's text,
    and the daemon escapes the newlines inside it. Leading frames whose file
    name ``skip`` accepts (the engine's own) are left out.
    """
    tb = exc.__traceback__
    while skip is not None and tb is not None and skip(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    te = traceback.TracebackException(type(exc), exc, tb, compact=True)
    whole: set[str] = set()
    pending, seen = [te], set()
    while pending:
        t = pending.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        whole.update(t.format_exception_only())
        pending += [c for c in (t.__cause__, t.__context__) if c is not None]
        pending += list(getattr(t, "exceptions", None) or ())
    lines: list[str] = []
    for chunk in te.format():
        if chunk in whole:
            lines.append(chunk[:-1] if chunk.endswith("\n") else chunk)
        else:
            lines += [line for line in chunk.rstrip("\n").split("\n") if line]
    return lines


def record_lines(record: logging.LogRecord) -> list[str]:
    """The lines a record is written as: its message (one line, whatever it
    holds), then its detail lines, traceback and stack, one per line."""
    lines = [record.getMessage()]
    detail: Sequence[str] | None = getattr(record, DETAIL, None)
    if detail:
        lines += [str(line) for line in detail]
    if record.exc_info and record.exc_info[1] is not None:
        lines += traceback_lines(record.exc_info[1])
    if record.stack_info:
        lines += [line for line in record.stack_info.split("\n") if line]
    return lines


def format_record(record: logging.LogRecord) -> str:
    """The record's message plus its detail, traceback and stack, if any, as one text."""
    return "\n".join(record_lines(record))


def _short_repr(obj: object) -> str:
    try:
        text = repr(obj)
    except Exception:
        return f"<{type(obj).__name__} object: repr() failed>"
    return text if len(text) <= MAX_REPR else text[:MAX_REPR] + "..."


def log_unraisable(unraisable: Any) -> None:
    """``sys.unraisablehook``: an exception Python could not raise (in a ``__del__``, a
    finalizer, a weakref callback) as one error record, "Exception ignored in: <object>"
    then its traceback a line at a time, tagged with the session whose hook was running
    (Python's own hook writes it to stderr as bare lines)."""
    try:
        summary = unraisable.err_msg or "Exception ignored in"
        if unraisable.object is not None:
            summary = f"{summary}: {_short_repr(unraisable.object)}"
        exc = unraisable.exc_value
        if exc is None:
            detail = [getattr(unraisable.exc_type, "__name__", str(unraisable.exc_type))]
        else:
            if exc.__traceback__ is None and unraisable.exc_traceback is not None:
                exc = exc.with_traceback(unraisable.exc_traceback)
            detail = traceback_lines(exc)
        log.error("%s", summary, extra={DETAIL: detail})
    except Exception:
        sys.__unraisablehook__(unraisable)


def _write_warning(file: TextIO | None, message: Warning | str, category: type[Warning], filename: str,
                   lineno: int, line: str | None) -> None:
    # What Python's showwarning writes (warnings._showwarnmsg_impl).
    try:
        if file is not None:
            file.write(warnings.formatwarning(message, category, filename, lineno, line))
    except OSError:
        pass


def log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                file: TextIO | None = None, line: str | None = None) -> None:
    """``warnings.showwarning``: a warning (``RuntimeWarning: coroutine ... was never
    awaited``) as one warning record, "file:line: Category: message" and its source line,
    tagged with the session whose hook was running. One shown to a file of the caller's
    goes there, as Python shows it."""
    if file is not None:
        _write_warning(file, message, category, filename, lineno, line)
        return
    try:
        source = (line if line is not None else linecache.getline(filename, lineno)).strip()
        log.warning("%s:%s: %s: %s", filename, lineno, category.__name__, message,
                    extra={DETAIL: [f"  {source}"] if source else []})
    except Exception:
        _write_warning(sys.stderr, message, category, filename, lineno, line)


def log_stray_errors() -> None:
    """Python's own reports of what no code catches, unraisable exceptions and warnings,
    go to the policy logger (``log_unraisable``, ``log_warning``) instead of stderr."""
    sys.unraisablehook = log_unraisable
    warnings.showwarning = log_warning


def make_logger() -> logging.Logger:
    """The ``portcullis.policy`` logger with the daemon handler installed once.

    In the daemon (the embedded ``_portcullis_core``) the root logger writes
    to the daemon's log too, so that what other libraries log (asyncio's
    "Task exception was never retrieved") is escaped and tagged like the rest,
    and so do Python's reports of unraisable exceptions and of warnings
    (``log_stray_errors``). Elsewhere (tests, a policy's own scripts) Python's
    hooks stay as they are.
    """
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, CoreLogHandler) for h in logger.handlers):
        logger.addHandler(CoreLogHandler())
    if getattr(_core, "embedded", False):
        root = logging.getLogger()
        if not any(isinstance(h, CoreLogHandler) for h in root.handlers):
            root.addHandler(CoreLogHandler())
        logger.propagate = False  # its own handler has written it
        log_stray_errors()
    # Without a level the root's WARNING would hide a policy's info lines; the
    # daemon's own log settings decide what is finally written.
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return logger


log = make_logger()
