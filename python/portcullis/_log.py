"""``portcullis.log``: the policies' logger, whose lines carry the session id."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence

import _portcullis_core as _core

from . import _context

#: The logger name; child loggers (``portcullis.policy.aliases``) go the same way.
LOGGER_NAME = "portcullis.policy"

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
                _core.log(record.levelno, session_id, line)
        except Exception:  # a log line must never break a hook
            self.handleError(record)


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


def make_logger() -> logging.Logger:
    """The ``portcullis.policy`` logger with the daemon handler installed once.

    In the daemon (the embedded ``_portcullis_core``) the root logger writes
    to the daemon's log too, so that what other libraries log (asyncio's
    "Task exception was never retrieved") is escaped and tagged like the rest.
    """
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, CoreLogHandler) for h in logger.handlers):
        logger.addHandler(CoreLogHandler())
    if getattr(_core, "embedded", False):
        root = logging.getLogger()
        if not any(isinstance(h, CoreLogHandler) for h in root.handlers):
            root.addHandler(CoreLogHandler())
        logger.propagate = False  # its own handler has written it
    # Without a level the root's WARNING would hide a policy's info lines; the
    # daemon's own log settings decide what is finally written.
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return logger


log = make_logger()
