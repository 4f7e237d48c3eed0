"""A bounded soak on the real socket: many clients mixing cached, student and teacher answers, streams,
clients that leave mid-answer and bad requests. Nothing but the documented answers, and neither memory
nor open files grow once warm. `scripts/soak.py --minutes N` runs the same driver for longer."""

from __future__ import annotations

import asyncio
import sys

import pytest

from .conftest import ROOT
from .fakes import FakeGemini
from .soak_daemon import soak_daemon

sys.path.insert(0, str(ROOT / "scripts"))
from soak import print_report, soak  # noqa: E402

pytestmark = pytest.mark.e2e

SOAK_SECONDS = 75
CLIENTS = 16


def test_soak_serves_everyone_with_flat_memory_and_files(tmp_path):
    with FakeGemini(api_key="soak-key", answer=lambda p: f"Teacher says: {p[-50:]}") as fake, \
            soak_daemon(tmp_path / "home", fake, max_queue=8) as (process, path):
        report = asyncio.run(soak(path, process.pid, SOAK_SECONDS, clients=CLIENTS, seed=1))
        assert process.poll() is None, "the daemon died during the soak"
    print_report(report)
    assert not report.errors, report.errors[:10]
    # Every kind of traffic happened, and every route answered.
    assert report.requests >= 100
    assert set(report.by_route) >= {"cache", "student", "teacher"}, report.by_route
    assert report.by_kind["bad"] > 0 and report.abandoned > 0
    assert set(report.statuses) <= {200, 400, 503}, report.statuses
    # 16 clients against a queue of 8: the overload answer is the documented one (counted, with Retry-After).
    assert report.overloaded == report.statuses.get(503, 0)
    # Flat once warm: a leak of even 20 KiB per request would pass 32 MiB over this many requests.
    assert report.rss_growth_bytes() < 32 * 2**20, report.samples
    assert report.fd_growth() <= 2, report.samples
