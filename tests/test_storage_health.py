"""Write failures of the stores: counted, described with the fix, and cleared by the next good write."""

import errno
import os
import sqlite3

import pytest

from appliance.protocol.distill_log import DistillLog, read_records
from appliance.storage.health import StorageHealth, describe
from appliance.teacher.limits import SpendLedger


def test_a_failure_marks_the_store_until_a_write_succeeds():
    health = StorageHealth(clock=lambda: 123.0)
    assert health.ok and health.snapshot() == {"ok": True, "stores": {}}
    health.wrote("cache")
    health.failed("cache", OSError(errno.ENOSPC, "No space left on device"))
    health.failed("cache", OSError(errno.ENOSPC, "No space left on device"))
    snap = health.snapshot()
    assert not health.ok and snap["ok"] is False
    assert snap["stores"]["cache"]["write_failures"] == 2 and snap["stores"]["cache"]["writes"] == 1
    assert snap["stores"]["cache"]["last_failure_at"] == 123.0
    assert "free space" in snap["stores"]["cache"]["last_error"]
    health.wrote("cache")
    snap = health.snapshot()
    assert snap["ok"] is True and snap["stores"]["cache"]["failing"] is False
    assert snap["stores"]["cache"]["write_failures"] == 2  # the count stays: it is history


@pytest.mark.parametrize("error, fix", [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (sqlite3.OperationalError("database or disk is full"), True),
    (PermissionError(errno.EACCES, "Permission denied"), False),
    ("plain words", False),
])
def test_describe_names_the_fix_for_a_full_disk(error, fix):
    text = describe(error)
    assert ("free space" in text) is fix
    assert str(error).split(";")[0] in text or text == "plain words"


class _Clock:
    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self):
        return self.now


def test_a_ledger_that_cannot_write_still_counts_the_spend(tmp_path):
    health = StorageHealth()
    ledger = SpendLedger(tmp_path / "spend.sqlite3", daily_budget_usd=1.0, health=health)
    ledger.record(0.25)
    # A read-only connection stands in for the full disk: the INSERT fails like SQLITE_FULL does.
    writable = ledger._db
    ledger._db = sqlite3.connect(f"file:{tmp_path / 'spend.sqlite3'}?mode=ro", uri=True, check_same_thread=False,
                                 isolation_level=None)
    ledger.record(0.5)
    assert ledger.spent_today() == pytest.approx(0.75)  # the cap still sees it
    assert health.snapshot()["stores"]["spend_ledger"]["failing"] is True
    ledger._db.close()
    ledger._db = writable
    ledger.record(0.125)  # the next good write carries the unwritten amount
    assert health.ok
    reopened = SpendLedger(tmp_path / "spend.sqlite3", daily_budget_usd=1.0)
    assert reopened.spent_today() == pytest.approx(0.875)


def test_a_failed_distill_append_leaves_no_partial_line(tmp_path):
    log = DistillLog(tmp_path / "distill.jsonl")
    log.append({"n": 1})
    real_write = os.write

    def short_write(fd, data):  # what the kernel does when only part of a write fits on the disk
        return real_write(fd, data[: len(data) // 2])

    os.write = short_write
    try:
        with pytest.raises(OSError, match="short write"):
            log.append({"n": 2, "text": "x" * 100})
    finally:
        os.write = real_write
    log.append({"n": 3})
    assert [r["n"] for r in read_records(tmp_path / "distill.jsonl")] == [1, 3]
    assert (tmp_path / "distill.jsonl").read_bytes().count(b"\n") == 2
