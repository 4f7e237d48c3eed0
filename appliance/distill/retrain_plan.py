"""Whether `athanor retrain` retrains, and why: a pure decision over what it found, and its small state file.

The weekly timer runs `retrain --when-due`: a student learns from use when enough new teacher-labelled
records have arrived since the last student was installed, or when it has regressed on the held-out
set. With no held-out set configured, one is drawn from the log once and kept, so the gate measures
the same questions every week and they are never trained on. Not enough data is a reason to wait
(exit 0), never a failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["always", "due", "regressed"]
"""always: a run by hand; due: new records or a regression (the timer); regressed: a regression only."""

MIN_HELDOUT = 20
"""Records drawn from the log to gate on when no held-out set is configured: fewer measure nothing."""
HELDOUT_SHARE = 0.1
MIN_RECORDS = 20
"""Fewer records than this to train on: nothing worth learning yet (`retrain --min-records`)."""
DRAWN_HELDOUT = "heldout.jsonl"


@dataclass(frozen=True)
class RetrainInputs:
    usable: int
    """Teacher-labelled records in the log (and [distill].train_dataset) that pass the filters."""
    seen_at_last: int
    """`usable` when the last student was installed (0: never)."""
    retrain_after: int
    min_records: int
    heldout: int
    """Records in the held-out set (configured, or drawn from the log earlier); 0: none yet."""
    heldout_configured: bool
    regressed: bool | None
    """The current student's retention is under the floor (None: not measured)."""
    mode: Mode


@dataclass(frozen=True)
class RetrainPlan:
    retrain: bool
    reasons: tuple[str, ...]
    draw_heldout: int
    """Records to draw from the log as the held-out set before training (0: use the one there is)."""

    def describe(self) -> str:
        verdict = "retrain" if self.retrain else "nothing to do"
        return f"{verdict}: " + "; ".join(self.reasons)


def new_records(usable: int, seen_at_last: int) -> int:
    """Records since the last install; a log that shrank (rotated, cleared) counts as all new."""
    return usable - seen_at_last if usable >= seen_at_last else usable


def heldout_to_draw(usable: int) -> int:
    return max(MIN_HELDOUT, round(usable * HELDOUT_SHARE))


def plan_retrain(found: RetrainInputs) -> RetrainPlan:
    """Decide from `found`; every reason is a sentence a log reader can act on."""
    reasons: list[str] = []
    fresh = new_records(found.usable, found.seen_at_last)
    draw = 0
    if found.heldout == 0 and not found.heldout_configured:
        draw = heldout_to_draw(found.usable)
        reasons.append(f"no held-out set yet: {draw} log records will be drawn and kept to gate on")
    trainable = found.usable - draw
    if trainable < found.min_records:
        reasons.insert(0, f"{found.usable} teacher-labelled records in the log, {found.min_records} needed to train"
                          f"{f' plus {draw} to hold out' if draw else ''}; the daemon logs the teacher's answers as "
                          "it escalates (a teacher must be configured)")
        return RetrainPlan(False, tuple(reasons), 0)
    due = fresh >= found.retrain_after
    # Retraining on exactly the data that made this student would only make it again: a regression
    # needs something new in the log before it is worth the hours.
    regressed = found.regressed is True and fresh > 0
    if found.mode == "always":
        reasons.insert(0, f"asked to retrain ({trainable} records to train on, {fresh} new)")
        return RetrainPlan(True, tuple(reasons), draw)
    if found.regressed is True:
        reasons.insert(0, "the current student's retention fell under [distill].retention_floor"
                          + ("" if regressed else ", but nothing new has been logged to learn from since it was "
                                                  "installed"))
    if found.mode == "due":
        reasons.insert(0 if found.regressed is not True else 1,
                       f"{fresh} new teacher-labelled records since the last install "
                       f"({'at least' if due else 'under'} [distill].retrain_after = {found.retrain_after})")
    elif not regressed:
        reasons.insert(0, "the current student holds up on the held-out set" if found.regressed is False
                       else "no held-out set to measure a regression on yet")
    go = regressed or (found.mode == "due" and due)
    return RetrainPlan(go, tuple(reasons), draw if go else 0)
