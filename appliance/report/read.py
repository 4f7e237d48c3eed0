"""The report from the files the daemon keeps: the answer ledger and the teacher's spend per day."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from ..protocol.retrain_state import read_state
from ..storage.ledger import LEDGER_FILE, read_rows
from ..paths import RETRAIN_DIR
from .figures import Report, build_report
from ..teacher.factory import LEDGER_FILE as SPEND_FILE
from ..teacher.limits import read_spend, utc_day


def since_timestamp(since: str) -> float:
    """The start of a UTC day given as 2026-11-30; raises ValueError naming the expected form."""
    try:
        return datetime.strptime(since, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        raise ValueError(f"{since!r} is not a date like 2026-11-30") from None


def read_report(state: Path, since: str | None = None) -> Report:
    """`athanor report` and GET /v1/report: every answer since `since` (a UTC day) and the teacher's spend."""
    start = since_timestamp(since) if since is not None else None
    spend = {day: usd for day, usd in read_spend(state / SPEND_FILE).items() if since is None or day >= since}
    report = build_report(read_rows(state / LEDGER_FILE, start), spend, utc_day(time.time()))
    installed = read_state(state / RETRAIN_DIR)
    return replace(report, retention=installed.retention, retention_was=installed.previous_retention,
                   retention_at=installed.installed_at)


def ledger_path(state: Path) -> Path:
    return state / LEDGER_FILE
