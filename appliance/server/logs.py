"""Logging for the daemon: plain lines on a terminal, journald priorities when systemd runs it."""

from __future__ import annotations

import logging
import os
import sys
from typing import Mapping

# syslog priorities (sd-daemon(3)): journald reads a "<N>" prefix as the line's level.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """`<6>name: message`: journald adds the time and the unit, and keeps the level for `journalctl -p`."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        # Every line of a traceback gets the prefix, or journald would store them as INFO.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """True when stderr is connected to journald (systemd sets JOURNAL_STREAM to its device:inode)."""
    environ = os.environ if environ is None else environ
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def configure_logging(verbose: bool) -> None:
    """INFO (one line per request) with `verbose`, else warnings only; journald's format under systemd."""
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True)
