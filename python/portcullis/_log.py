"""``portcullis.log``: the policies' logger, whose lines carry the session id."""

from __future__ import annotations

import logging

import _portcullis_core as _core

from . import _context

#: The logger name; child loggers (``portcullis.policy.aliases``) go the same way.
LOGGER_NAME = "portcullis.policy"


class CoreLogHandler(logging.Handler):
    """Sends each record to the daemon's log (``_portcullis_core.log``).

    The line is the formatted message, followed by the traceback when the
    record carries one (``log.exception(...)``), tagged with the id of the
    session whose hook logged it.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _core.log(record.levelno, record_session_id(record), format_record(record))
        except Exception:  # a log line must never break a hook
            self.handleError(record)


def record_session_id(record: logging.LogRecord) -> str:
    """The session id of a record: set explicitly (``extra=``) or from the hook context."""
    explicit = getattr(record, "session_id", None)
    return explicit if isinstance(explicit, str) else _context.session_id.get()


def format_record(record: logging.LogRecord) -> str:
    """The record's message plus its traceback and stack, if any."""
    text = record.getMessage()
    if record.exc_info and record.exc_info[0] is not None:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    if record.stack_info:
        text += "\n" + record.stack_info
    return text


def make_logger() -> logging.Logger:
    """The ``portcullis.policy`` logger with the daemon handler installed once."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, CoreLogHandler) for h in logger.handlers):
        logger.addHandler(CoreLogHandler())
    # Without a level the root's WARNING would hide a policy's info lines; the
    # daemon's own log settings decide what is finally written.
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return logger


log = make_logger()
