"""Credentials out of everything the project writes or prints: logs, errors, W&B, the leaderboard.

One function for every layer (the sweep's errors and metadata, the report's header and JSON), so that a
pattern fixed here is fixed everywhere. It hides ``user:password@`` in URLs (a password may contain ``/``; the
user may be empty) and ``password=`` / ``passwd=`` query or DSN parameters.
"""
from __future__ import annotations

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
