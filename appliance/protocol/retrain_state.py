"""What the last retrain installed (`<state>/retrain/state.json`): written by `retrain`, read by the next
retrain's plan, `athanor report` and the daemon's `/v1/report`."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "state.json"


@dataclass(frozen=True)
class RetrainState:
    seen: int = 0
    installed_at: str | None = None
    student: str | None = None
    retention: float | None = None
    """The installed student's retention on the held-out set, as the gate measured it."""
    previous_retention: float | None = None
    """The student it replaced, on the same set."""


def read_state(folder: Path) -> RetrainState:
    """The last install's record; a missing or unreadable file means none (the next run starts afresh)."""
    try:
        data = json.loads((folder / STATE_FILE).read_text())
        return RetrainState(seen=int(data.get("seen", 0)), installed_at=data.get("installed_at"),
                            student=data.get("student"), retention=_number(data.get("retention")),
                            previous_retention=_number(data.get("previous_retention")))
    except (OSError, ValueError, TypeError, AttributeError):
        return RetrainState()


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def write_state(folder: Path, seen: int, student: Path, retention: float | None = None,
                previous_retention: float | None = None) -> RetrainState:
    state = RetrainState(seen, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), str(student), retention,
                         previous_retention)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    os.replace(tmp, folder / STATE_FILE)
    return state
