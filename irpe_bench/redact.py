"""Credentials out of everything the project writes or prints: logs, errors, W&B, the leaderboard.

One function for every layer (the sweep's errors and metadata, the report's header and JSON), so that a
pattern fixed here is fixed everywhere. It hides ``user:password@`` in URLs (a password may contain ``/``; the
user may be empty) and ``password=`` / ``passwd=`` query or DSN parameters. :class:`RedactingFilter` does the
same to log records (message, arguments and traceback), for handlers that print what others raise.
"""
from __future__ import annotations

import logging
import re
from typing import Optional

_PATTERNS = ((re.compile(r"(://[^:/@\s]*):[^@\s]*@"), r"\1:***@"),
             (re.compile(r"(?i)\b(password|passwd)=[^&\s'\"]*"), r"\1=***"))


def redact(text: Optional[str]) -> Optional[str]:
    """``postgresql://u:secret@h/db?password=x`` → ``postgresql://u:***@h/db?password=***``; None stays None."""
    if text is None:
        return None
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactingFilter(logging.Filter):
    """A handler filter that redacts each record's formatted message and traceback before it is written.

    NOTE: on the handler, not the logger: a logger's filters do not see records of its children, and a failing
    trial's exception (its message, possibly a storage URL) reaches Optuna's and the root logger's handlers
    with ``exc_info``. ``keep_traceback=False`` drops the traceback (the sweep writes it to the trial's log file).
    """

    def __init__(self, keep_traceback: bool = True) -> None:
        super().__init__()
        self.keep_traceback = keep_traceback

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info and self.keep_traceback:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text and self.keep_traceback:
            record.exc_text = redact(record.exc_text)
        else:
            record.exc_text = None
        record.exc_info = None
        record.stack_info = redact(record.stack_info)
        return True


def redact_handlers(logger: logging.Logger, keep_traceback: bool = True) -> None:
    """Add a :class:`RedactingFilter` to every handler of ``logger`` (once)."""
    for handler in logger.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(keep_traceback))
